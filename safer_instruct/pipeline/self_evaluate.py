"""Stage 6, self-evaluate: the expert judges its own response; only responses it finds safe are kept."""

from __future__ import annotations

from typing import Any

from safer_instruct.llm import LLM
from safer_instruct.pipeline.config import SelfEvaluateConfig
from safer_instruct.pipeline.contract import prompted_stage
from safer_instruct.pipeline.filter import LABELS, judge
from safer_instruct.pipeline.records import with_stage
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.prompts import load_template
from safer_instruct.refusal import is_clean_decline

STAGE = "self_evaluate"


def process(
    batch: list[tuple[int, dict[str, Any]]], llm: LLM, config: SelfEvaluateConfig, model_id: str
) -> list[ItemResult]:
    template = load_template(config.template)
    provenance = {"model": model_id, "template": template.name, "template_sha": template.sha}
    declined = {seq for seq, record in batch if config.accept_refusals and is_clean_decline(record["expert"])}
    to_judge = [(seq, record) for seq, record in batch if seq not in declined]
    prompts = [template.render(instruction=record["instruction"], response=record["expert"]) for _, record in to_judge]
    judged = (
        judge(
            to_judge,
            llm.decide(prompts, LABELS),
            "safe",
            [config.threshold] * len(to_judge),
            STAGE,
            "self_judged_unsafe",
            provenance,
        )
        if to_judge
        else []
    )
    accepted = [accept_refusal(seq, record) for seq, record in batch if seq in declined]
    return sorted(judged + accepted, key=lambda result: result.seq)


def accept_refusal(seq: int, record: dict[str, Any]) -> ItemResult:
    """A clean decline is safe by rule: kept without asking the judge."""
    result = ItemResult(key=record["key"], seq=seq, category=record["category"])
    entry = {"verdict": "safe", "by": "refusal detector (accept_refusals)", "probability": None}
    result.outputs.append(with_stage(record, STAGE, {}, entry))
    return result


CONTRACT = prompted_stage(
    STAGE,
    upstream="respond",
    reads=("key", "category", "instruction", "expert"),
    writes=(),
    model="expert",
    process=process,
)
