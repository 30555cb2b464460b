"""Generation backends behind one interface, and the response cache."""

from __future__ import annotations

from pathlib import Path

from safer_instruct.config import LLMConfig
from safer_instruct.llm.base import (
    LLM,
    Decision,
    Generation,
    Loglikelihood,
    Message,
    Prompt,
    SamplingParams,
    Unsupported,
    Usage,
)
from safer_instruct.llm.batch import BatchLedger
from safer_instruct.llm.cache import CachedLLM, ResponseCache, model_fingerprint

__all__ = [
    "LLM",
    "CachedLLM",
    "Decision",
    "Generation",
    "Loglikelihood",
    "Message",
    "Prompt",
    "ResponseCache",
    "SamplingParams",
    "Unsupported",
    "Usage",
    "make_llm",
]


def make_llm(
    config: LLMConfig,
    cache: ResponseCache | Path | str | None = None,
    show_progress: bool = True,
    ledger: BatchLedger | None = None,
) -> LLM:
    """Build the backend a config names, wrapped in the response cache when one is given.

    ``ledger`` keeps Batch API ids (``batch_api``) where a rerun finds them: a build passes its run state.
    Replicas of one model share its cache entries (the first replica's URL names them).
    """
    if config.backend == "local":
        from safer_instruct.llm.local import LocalLLM

        llm: LLM = LocalLLM(config, show_progress=show_progress)
        identity = (
            "local:"
            + ":".join(model_fingerprint(p) for p in (llm.model.name_or_path, config.adapter or "") if p)
            + f":4bit={config.load_in_4bit}"
        )
    else:
        from safer_instruct.llm.openai import OpenAILLM

        llm = OpenAILLM(config, show_progress=show_progress, ledger=ledger)
        identity = f"openai:{config.base_urls[0]}:{config.model}"
    if cache is None:
        return llm
    if not isinstance(cache, ResponseCache):
        cache = ResponseCache(cache)
    return CachedLLM(llm, cache, identity=identity)
