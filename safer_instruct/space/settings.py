"""What the comparison Space runs, read from environment variables (Space variables on the Hub).

Every field's variable is its name in upper case: ``BASE_MODEL``, ``ALIGNED_ADAPTER``,
``REQUESTS_PER_MINUTE``, ... Secrets are never settings: an OpenAI-compatible judge reads its key
from the variable ``JUDGE_API_KEY_ENV`` names, the Hub vote upload uses the ``HF_TOKEN`` secret.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field

from safer_instruct.config import LLMConfig, StrictModel, validate

DEMO_ALIGNED = "runs/demo/models/aligned"
MAKE_ALIGNED_HINT = (
    f"No aligned model yet. Make one with `make demo` (it leaves the chosen checkpoint in `{DEMO_ALIGNED}`), "
    "or point `ALIGNED_MODEL` (a model folder or Hub id) or `ALIGNED_ADAPTER` (a PEFT adapter over "
    "`BASE_MODEL`) at one, then restart."
)


def default_proxy_hops(environ: Mapping[str, str]) -> int:
    """On a Hugging Face Space (``SPACE_ID`` set) the Hub's proxy is trusted; elsewhere no proxy is, unless configured."""
    return 1 if environ.get("SPACE_ID") else 0


class SpaceSettings(StrictModel):
    """Models, limits and vote storage of the comparison app."""

    base_model: str = "default"
    base_adapter: str | None = None
    aligned_model: str | None = (
        None  # default: BASE_MODEL when ALIGNED_ADAPTER is set, else the demo's DPO adapter if present
    )
    aligned_adapter: str | None = None
    load_in_4bit: bool = False
    judge_model: str | None = None  # a harm judge's verdict joins each badge when set
    judge_backend: Literal["local", "openai"] = "local"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_style: Literal["instructed", "llama-guard", "wildguard"] = "instructed"
    votes_path: str = "runs/space/votes.jsonl"
    votes_repo: str | None = None  # a Hub dataset repo; votes are pushed there every few minutes
    votes_every_minutes: float = Field(10.0, gt=0)
    max_prompt_chars: int = Field(2000, ge=1)
    max_turns: int = Field(4, ge=1)  # earlier turns are dropped from what the models see
    default_new_tokens: int = Field(200, ge=1)
    max_new_tokens: int = Field(512, ge=1)
    requests_per_minute: int = Field(10, ge=1)  # per client
    queue_max_size: int = Field(32, ge=1)
    model_concurrency: int = Field(1, ge=1)  # requests each model serves at once
    examples_per_set: int = Field(6, ge=0)
    # proxies in front of the app whose X-Forwarded-For entries are trusted; default 1 on Spaces (SPACE_ID set), else 0
    trusted_proxy_hops: int | None = Field(None, ge=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SpaceSettings:
        """Settings from the environment; keyword overrides (e.g. from the CLI) win when not None."""
        environ = os.environ if environ is None else environ
        data: dict[str, Any] = {name: environ[name.upper()] for name in cls.model_fields if environ.get(name.upper())}
        data.update({name: value for name, value in overrides.items() if value is not None})
        settings = validate(cls, data, "space settings (environment variables named as the fields, in upper case)")
        if settings.trusted_proxy_hops is None:
            settings = settings.model_copy(update={"trusted_proxy_hops": default_proxy_hops(environ)})
        if settings.aligned_model is None and settings.aligned_adapter:
            return settings.model_copy(update={"aligned_model": settings.base_model})
        if settings.aligned_model is None and Path(DEMO_ALIGNED).is_dir():
            return settings.model_copy(update={"aligned_model": DEMO_ALIGNED})
        return settings

    def proxy_hops(self) -> int:
        return self.trusted_proxy_hops or 0

    def base_llm(self) -> LLMConfig:
        return LLMConfig(
            model=self.base_model, adapter=self.base_adapter, load_in_4bit=self.load_in_4bit, batch_size=1
        )

    def aligned_llm(self) -> LLMConfig | None:
        """None when no aligned model is configured or made yet (the page then says how to make one)."""
        if self.aligned_model is None:
            return None
        return LLMConfig(
            model=self.aligned_model, adapter=self.aligned_adapter, load_in_4bit=self.load_in_4bit, batch_size=1
        )

    def judge_llm(self) -> LLMConfig | None:
        if self.judge_model is None:
            return None
        if self.judge_backend == "openai":
            return LLMConfig(
                backend="openai",
                model=self.judge_model,
                base_url=self.judge_base_url,
                api_key_env=self.judge_api_key_env,
            )
        return LLMConfig(model=self.judge_model, load_in_4bit=self.load_in_4bit)
