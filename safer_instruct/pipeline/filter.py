"""Stage 4, filter: the judge keeps instructions that are unsafe to answer (as the paper: only those flagged unsafe).

Optionally (``response_match``) only the candidates that best explain their response reach the judge, and
(``probe``) P(unsafe) comes from a probe on the judge model's hidden states (``judge_probe``) instead of its words.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from safer_instruct.llm import LLM, Decision, Unsupported
from safer_instruct.pipeline.config import FilterConfig, ResponseMatchConfig
from safer_instruct.pipeline.contract import Context, Stage, role, section_and_template, setting
from safer_instruct.pipeline.judge_probe import Probe, as_prompt, train_probe
from safer_instruct.pipeline.records import with_stage
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.prompts import load_template

STAGE = "filter"
LABELS = ("unsafe", "safe")


@dataclass(frozen=True)
class ResponseMatch:
    """Each instruction's gain (by record key) and the keys among the best candidates for their response."""

    gains: dict[str, float]
    best: frozenset[str]


def kept_by(match: ResponseMatch | None, record: dict[str, Any]) -> bool:
    """Whether ``match`` lets the record through to the judge (every record, without one)."""
    return match is None or record["key"] in match.best


def matched(records: Sequence[dict[str, Any]], match: ResponseMatch | None) -> list[dict[str, Any]]:
    """The records ``match`` keeps."""
    return [record for record in records if kept_by(match, record)]


def judge(
    batch: list[tuple[int, dict[str, Any]]],
    decisions: Sequence[Decision],
    keep_label: str,
    thresholds: Sequence[float],
    stage: str,
    drop_reason: str,
    provenance: dict[str, Any],
) -> list[ItemResult]:
    """Keep the records whose unsafe/safe decision gives P(keep_label) >= their threshold."""
    results = []
    for (seq, record), decision, threshold in zip(batch, decisions, thresholds, strict=True):
        result = ItemResult(key=record["key"], seq=seq, category=record["category"])
        if not decision.ok:
            result.error = f"unparseable verdict: {decision.error}"
        elif (p := decision.probability_of(keep_label)) >= threshold:
            entry = {
                **provenance,
                "verdict": decision.label,
                "probability": round(p, 4),
                "kept_if": f"P({keep_label}) >= {threshold}",
            }
            result.outputs.append(with_stage(record, stage, {}, entry))
        else:
            result.drops.append(drop_reason)
        results.append(result)
    return results


def probe_decisions(probe: Probe, llm: LLM, instructions: Sequence[str]) -> list[Decision]:
    """The probe's verdict on each instruction, read from the judge model's hidden states."""
    if not instructions:
        return []
    p_unsafe = probe.p_unsafe(llm.hidden_states([as_prompt(text) for text in instructions], [probe.layer])[:, 0])
    return [
        Decision(label="unsafe", probability=float(p))
        if p >= 0.5
        else Decision(label="safe", probability=float(1 - p))
        for p in p_unsafe
    ]


def verdicts(
    llm: LLM, config: FilterConfig, instructions: Sequence[str], probe: Probe | None = None
) -> tuple[list[Decision], dict[str, Any]]:
    """The judge's unsafe/safe decision on each instruction (the probe's when given), and what decided them."""
    if probe is not None:
        return probe_decisions(probe, llm, instructions), {"probe": probe.figures}
    template = load_template(config.template)
    prompts = [template.render(instruction=text) for text in instructions]
    return (llm.decide(prompts, LABELS) if prompts else []), {"template": template.name, "template_sha": template.sha}


def unsafe_scores(
    llm: LLM, config: FilterConfig, instructions: Sequence[str], probe: Probe | None = None
) -> list[float | None]:
    """The judge's P(unsafe) for each instruction; None where its verdict could not be parsed."""
    decisions, _ = verdicts(llm, config, instructions, probe)
    return [d.probability_of("unsafe") if d.ok else None for d in decisions]


def calibrated_threshold(
    llm: LLM, config: FilterConfig, benign_prompts: Sequence[str], probe: Probe | None = None
) -> float:
    """The configured threshold, raised until at most ``max_pass_rate`` of the known-benign prompts would pass."""
    if config.calibration is None or not benign_prompts:
        return config.threshold
    scores = sorted((p for p in unsafe_scores(llm, config, benign_prompts, probe) if p is not None), reverse=True)
    allowed = int(config.calibration.max_pass_rate * len(scores))  # this many may still reach the bar
    bar = scores[allowed] + 1e-6 if allowed < len(scores) else 0.0  # just above the first benign prompt that must fail
    return round(max(config.threshold, min(bar, 1.0)), 6)


def response_gains(llm: LLM, config: ResponseMatchConfig, records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per record key: log P(response | instruction) - log P(response | neutral instruction), per response token."""
    responses = sorted({record["response"] for record in records})
    neutral = llm.loglikelihood([as_prompt(config.neutral_instruction)] * len(responses), responses)
    baseline = {response: score.logprob for response, score in zip(responses, neutral)}
    given = llm.loglikelihood(
        [as_prompt(record["instruction"]) for record in records],
        [record["response"] for record in records],
    )
    return {
        record["key"]: (score.logprob - baseline[record["response"]]) / max(score.tokens, 1)
        for record, score in zip(records, given)
    }


def response_match(llm: LLM, config: FilterConfig, records: Sequence[dict[str, Any]]) -> ResponseMatch | None:
    """The top ``keep_per_response`` candidates of each response by gain, those with at least ``min_gain``."""
    if config.response_match is None:
        return None
    settings = config.response_match
    try:
        gains = response_gains(llm, settings, records)
    except Unsupported as err:
        raise Unsupported(f"filter.response_match scores text with the judge (section `judge`): {err}") from None
    by_response: dict[str, list[str]] = defaultdict(list)
    for record in records:
        by_response[record["response"]].append(record["key"])
    best = set()
    for keys in by_response.values():
        top = sorted(keys, key=gains.__getitem__, reverse=True)[: settings.keep_per_response]
        best.update(key for key in top if gains[key] >= settings.min_gain)
    return ResponseMatch(gains, frozenset(best))


def category_thresholds(
    llm: LLM, config: FilterConfig, records: Sequence[dict[str, Any]], threshold: float, probe: Probe | None = None
) -> dict[str, float]:
    """Per source category: ``threshold``, lowered where it keeps less than ``min_keep_per_category`` of the category."""
    if config.min_keep_per_category is None:
        return {}
    scores: dict[str, list[float]] = defaultdict(list)
    for record, p in zip(records, unsafe_scores(llm, config, [record["instruction"] for record in records], probe)):
        if p is not None:
            scores[record["category"]].append(p)
    bars = {}
    for category, values in scores.items():
        values.sort(reverse=True)
        share_bar = values[math.ceil(config.min_keep_per_category * len(values)) - 1]
        floored = math.floor(share_bar * 1e6) / 1e6  # floored: the share's last item still passes
        bars[category] = min(threshold, floored)
    return bars


def process(
    batch: list[tuple[int, dict[str, Any]]],
    llm: LLM,
    config: FilterConfig,
    model_id: str,
    threshold: float,
    category_bars: dict[str, float],
    match: ResponseMatch | None,
    probe: Probe | None = None,
) -> list[ItemResult]:
    """Judge a batch; ``threshold`` is ``config.threshold`` or its calibrated value, ``category_bars`` lower it per category.

    With ``match``, a candidate that is not among the best for its response is dropped before the judge;
    with ``probe``, the probe judges instead of the judge's prompted verdict.
    """
    to_judge = [(seq, record) for seq, record in batch if kept_by(match, record)]
    decisions, decided_by = verdicts(llm, config, [record["instruction"] for _, record in to_judge], probe)
    provenance = {"model": model_id, **decided_by}
    thresholds = [category_bars.get(record["category"], threshold) for _, record in to_judge]
    judged = judge(to_judge, decisions, "unsafe", thresholds, STAGE, "judged_safe", provenance)
    if match:
        for output in (output for result in judged for output in result.outputs):
            output["provenance"][STAGE]["response_gain"] = round(match.gains[output["key"]], 4)
    mismatched = [
        ItemResult(key=record["key"], seq=seq, category=record["category"], drops=["response_mismatch"])
        for seq, record in batch
        if not kept_by(match, record)
    ]
    return sorted(judged + mismatched, key=lambda result: result.seq)


@dataclass(frozen=True)
class Bars:
    """What every filter batch shares: the bar (calibrated or as configured), the category bars, the match, the probe."""

    threshold: float
    category_bars: dict[str, float]
    match: ResponseMatch | None
    probe: Probe | None


def whole_set(ctx: Context, llm: LLM) -> Bars:
    """The probe fit, the calibrated threshold, the response match and the per-category bars."""
    config = ctx.config.filter
    probe = train_probe(llm, config.probe, ctx.inputs.judge_requests) if config.probe else None
    threshold = calibrated_threshold(llm, config, ctx.inputs.benign_prompts, probe)
    induced = ctx.store.outputs(CONTRACT.upstream)
    match = response_match(llm, config, induced)
    return Bars(threshold, category_thresholds(llm, config, matched(induced, match), threshold, probe), match, probe)


CONTRACT = Stage(
    name=STAGE,
    upstream="induce",
    reads=("key", "category", "instruction", "response"),
    writes=(),
    model=role("judge"),
    covers=(
        *section_and_template(STAGE),
        setting("the calibration file's contents", lambda ctx: ctx.inputs.digest.get("filter_calibration")),
        setting("the probe's labelled file's contents", lambda ctx: ctx.inputs.digest.get("filter_probe")),
    ),
    whole_set=whole_set,
    process=lambda ctx, batch, llm, bars: process(
        batch, llm, ctx.config.filter, llm.model_id, bars.threshold, bars.category_bars, bars.match, bars.probe
    ),
    describe=lambda bars: {"probe": bars.probe.figures} if bars.probe else None,
)
