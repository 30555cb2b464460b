"""Stage 4, filter: the judge keeps instructions that are unsafe to answer (as the paper: only those flagged unsafe)."""

from __future__ import annotations

from typing import Any

from safer_instruct.llm import LLM, Decision
from safer_instruct.pipeline.config import FilterConfig
from safer_instruct.pipeline.records import with_stage
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.prompts import load_template

STAGE = "filter"
LABELS = ("unsafe", "safe")


def probability_of(decision: Decision, label: str) -> float:
    """P(label) from a two-way decision; without a probability, the verdict counts as certain."""
    if decision.probability is None:
        return 1.0 if decision.label == label else 0.0
    return decision.probability if decision.label == label else 1.0 - decision.probability


def judge(batch: list[tuple[int, dict[str, Any]]], llm: LLM, prompts: list, keep_label: str, threshold: float,
          stage: str, drop_reason: str, provenance: dict[str, Any]) -> list[ItemResult]:
    """Ask ``llm`` for unsafe/safe on each prompt; keep records whose P(keep_label) >= threshold."""
    decisions = llm.decide(prompts, LABELS)
    results = []
    for (seq, record), decision in zip(batch, decisions):
        result = ItemResult(key=record["key"], seq=seq, category=record["category"])
        if not decision.ok:
            result.error = f"unparseable verdict: {decision.error}"
        elif (p := probability_of(decision, keep_label)) >= threshold:
            entry = {**provenance, "verdict": decision.label, "probability": round(p, 4), "kept_if": f"P({keep_label}) >= {threshold}"}
            result.outputs.append(with_stage(record, stage, {}, entry))
        else:
            result.drops.append(drop_reason)
        results.append(result)
    return results


def process(batch: list[tuple[int, dict[str, Any]]], llm: LLM, config: FilterConfig, model_id: str) -> list[ItemResult]:
    template = load_template(config.template)
    prompts = [template.render(instruction=record["instruction"]) for _, record in batch]
    provenance = {"model": model_id, "template": template.name, "template_sha": template.sha}
    return judge(batch, llm, prompts, "unsafe", config.threshold, STAGE, "judged_safe", provenance)
