"""Typed configs: YAML files with ``key.sub=value`` command-line overrides.

A bad field is reported with its file and dotted path, before any model time is spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safer_instruct.errors import SaferInstructError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Prices(StrictModel):
    """US dollars per million tokens, for cost accounting."""

    prompt_per_million: float = Field(0.0, ge=0)
    completion_per_million: float = Field(0.0, ge=0)


class LLMConfig(StrictModel):
    """Which model answers, through which backend."""

    backend: Literal["local", "openai"] = "local"
    model: str = "default"
    # local backend
    adapter: str | None = None
    load_in_4bit: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_size: int = Field(16, ge=1)
    # Greedy answers decoding together (default: batch_size). A decoding step reads every weight once for all its
    # rows and keeps only their KV cache, so on CPU more rows cost little more per step; scoring passes, bounded by
    # batch_size, hold logits over the vocabulary for every position they read and grow with their rows.
    decode_batch_size: int | None = Field(None, ge=1)
    # openai backend
    base_url: str | list[str] | None = None  # a list: data-parallel replicas of one model
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(8, ge=1)  # requests in flight per replica
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    replica_cooldown_s: float = Field(30.0, gt=0)  # a failing replica rests this long, then is tried again
    logprobs: Literal["auto", "on", "off"] = "auto"
    tokenizer: str | None = None  # whose chat template renders chat prompts for scoring text (default: `model`)
    batch_api: bool = False  # the OpenAI Batch API for generate/decide: half the price, answers within 24 h
    batch_poll_s: float = Field(30.0, gt=0)
    prices: Prices = Field(default_factory=Prices)

    @model_validator(mode="after")
    def _backend_options(self) -> LLMConfig:
        if self.backend == "openai" and (self.adapter or self.load_in_4bit or self.decode_batch_size):
            raise ValueError("adapter, load_in_4bit and decode_batch_size apply to the local backend only")
        if self.backend == "local" and (isinstance(self.base_url, list) or self.batch_api):
            raise ValueError("replica lists and batch_api apply to the openai backend only")
        if isinstance(self.base_url, list) and (not self.base_url or len(set(self.base_url)) != len(self.base_url)):
            raise ValueError("base_url: a list of replicas must be non-empty and without repeats")
        return self

    @property
    def base_urls(self) -> list[str | None]:
        """The replicas' base URLs (``[None]``: the SDK's default, OpenAI's own endpoint)."""
        return list(self.base_url) if isinstance(self.base_url, list) else [self.base_url]


class SamplingConfig(StrictModel):
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, naming the file in any error."""
    path = Path(path)
    if not path.is_file():
        raise SaferInstructError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SaferInstructError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SaferInstructError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars/lists."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise SaferInstructError(f"override {override!r}: expected KEY=VALUE, e.g. llm.batch_size=8")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SaferInstructError(f"override {override!r}: {part!r} is not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            raise SaferInstructError(
                f"override {override!r}: the value is not valid YAML ({problem}); quote it as a string"
            ) from None
    return data


def validate(model_cls: type[T], data: dict[str, Any], origin: str) -> T:
    """Validate ``data`` into ``model_cls``; errors name ``origin`` and each field's path."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
            got = f" (got {problem['input']!r})" if problem["type"] != "missing" else ""
            lines.append(f"  field `{where}`: {problem['msg']}{got}")
        raise SaferInstructError(f"{origin}: invalid config\n" + "\n".join(lines)) from None


def load_config(model_cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Load a YAML config (or defaults when ``path`` is None) with overrides applied."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    return validate(model_cls, data, str(path) if path else "config")


def dump_config(config: BaseModel, path: str | Path) -> None:
    """Write the resolved config as YAML (no secrets are held in configs)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
