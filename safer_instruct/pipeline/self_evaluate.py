"""Stage 6, self-evaluate: the expert judges its own response; only responses it finds safe are kept."""

from __future__ import annotations

from typing import Any

from safer_instruct.llm import LLM
from safer_instruct.pipeline.config import SelfEvaluateConfig
from safer_instruct.pipeline.filter import judge
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.prompts import load_template

STAGE = "self_evaluate"


def process(batch: list[tuple[int, dict[str, Any]]], llm: LLM, config: SelfEvaluateConfig, model_id: str) -> list[ItemResult]:
    template = load_template(config.template)
    prompts = [template.render(instruction=record["instruction"], response=record["expert"]) for _, record in batch]
    provenance = {"model": model_id, "template": template.name, "template_sha": template.sha}
    return judge(batch, llm, prompts, "safe", config.threshold, STAGE, "self_judged_unsafe", provenance)
