"""Stage 5, respond: the expert writes the preferred (safe) response; the source response is the rejected one."""

from __future__ import annotations

from typing import Any

from safer_instruct.llm import LLM, SamplingParams
from safer_instruct.pipeline.clean import normalise
from safer_instruct.pipeline.config import RespondConfig
from safer_instruct.pipeline.records import with_stage
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.prompts import load_template

STAGE = "respond"


def process(batch: list[tuple[int, dict[str, Any]]], llm: LLM, config: RespondConfig, model_id: str) -> list[ItemResult]:
    template = load_template(config.template)
    params = SamplingParams(**{**config.sampling.model_dump(), "stop": tuple(config.sampling.stop)})
    generations = llm.generate([template.render(instruction=record["instruction"]) for _, record in batch], params)
    results = []
    for (seq, record), generation in zip(batch, generations):
        result = ItemResult(key=record["key"], seq=seq, category=record["category"])
        text = normalise(generation.text)
        if not text:
            result.drops.append("empty")
        elif generation.finish_reason == "length" and config.drop_truncated:
            result.drops.append("truncated")
        else:
            provenance = {"model": model_id, "template": template.name, "template_sha": template.sha,
                          "sampling": config.sampling.model_dump(), "completion_tokens": generation.completion_tokens}
            result.outputs.append(with_stage(record, STAGE, {"expert": text}, provenance))
        results.append(result)
    return results
