"""Stage 5, respond: the expert writes the preferred (safe) response; the source response is the rejected one."""

from __future__ import annotations

import re
from typing import Any

from safer_instruct.llm import LLM, SamplingParams
from safer_instruct.pipeline.clean import normalise
from safer_instruct.pipeline.config import RespondConfig
from safer_instruct.pipeline.contract import prompted_stage
from safer_instruct.pipeline.records import with_stage
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.prompts import load_template

STAGE = "respond"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentences(text: str, count: int | None) -> str:
    """The first ``count`` sentences of ``text`` (all of it when ``count`` is None)."""
    return text if count is None else " ".join(SENTENCE_END.split(text)[:count])


def process(
    batch: list[tuple[int, dict[str, Any]]], llm: LLM, config: RespondConfig, model_id: str
) -> list[ItemResult]:
    template = load_template(config.template)
    params = SamplingParams.from_config(config.sampling)
    generations = llm.generate([template.render(instruction=record["instruction"]) for _, record in batch], params)
    results = []
    for (seq, record), generation in zip(batch, generations):
        result = ItemResult(key=record["key"], seq=seq, category=record["category"])
        full = normalise(generation.text)
        text = first_sentences(full, config.max_sentences)
        truncated = generation.finish_reason == "length" and text == full  # cut off inside what we keep
        if not text:
            result.drops.append("empty")
        elif truncated and config.drop_truncated:
            result.drops.append("truncated")
        else:
            provenance = {
                "model": model_id,
                "template": template.name,
                "template_sha": template.sha,
                "sampling": config.sampling.model_dump(),
                "max_sentences": config.max_sentences,
                "completion_tokens": generation.completion_tokens,
            }
            result.outputs.append(with_stage(record, STAGE, {"expert": text}, provenance))
        results.append(result)
    return results


CONTRACT = prompted_stage(
    STAGE,
    upstream="filter",
    reads=("key", "category", "instruction"),
    writes=("expert",),
    model="expert",
    process=process,
)
