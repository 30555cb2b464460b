"""Stage 3, induce: instruction candidates per response from the reversed model (the paper's template, verbatim).

Candidate ``k`` of a batch is sampled with seed ``sampling.seed + k``, so candidates differ, are cached
apart, and a resumed run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import replace
from typing import Any

from safer_instruct.config import LLMConfig
from safer_instruct.llm import LLM, SamplingParams
from safer_instruct.pipeline import reverse_model
from safer_instruct.pipeline.clean import Decontaminator, exact_key, jaccard, normalise, scrub_pii, words
from safer_instruct.pipeline.config import InduceConfig
from safer_instruct.pipeline.contract import Context, Covers, Model, Stage, setting
from safer_instruct.pipeline.records import fingerprint, stable_id, with_stage
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.prompts.reverse import REVERSE_TEMPLATE, reverse_prompt

STAGE = "induce"
_LABEL = re.compile(r"^(?:#+\s*)?(?:instruction|request|prompt)\s*:\s*", re.IGNORECASE)


def template_sha() -> str:
    return hashlib.sha256(REVERSE_TEMPLATE.encode("utf-8")).hexdigest()[:12]


def clean_instruction(text: str) -> str:
    """The first block of the output, without a leading ``Instruction:`` label or wrapping quotes."""
    text = normalise(text).split("\n\n")[0]
    text = _LABEL.sub("", text).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def reject_reason(
    instruction: str, finish_reason: str, response: str, config: InduceConfig, decontaminator: Decontaminator
) -> str | None:
    """Why a candidate is unusable, or None."""
    if len(instruction) < config.min_chars or not words(instruction):
        return "empty"
    if finish_reason == "length" or len(instruction) > config.max_chars:
        return "too_long"
    if jaccard(instruction, response) >= config.echo_threshold or " ".join(words(response)) in " ".join(
        words(instruction)
    ):
        return "echo"
    if decontaminator.overlap(instruction):
        return "contaminated"
    return None


def process(
    batch: list[tuple[int, dict[str, Any]]],
    llm: LLM,
    config: InduceConfig,
    decontaminator: Decontaminator,
    model_id: str,
) -> list[ItemResult]:
    """Sample ``config.candidates`` instructions for each response and keep the usable, distinct ones."""
    prompts = [reverse_prompt(record["response"]) for _, record in batch]
    base = SamplingParams.from_config(config.sampling)
    rounds = [llm.generate(prompts, replace(base, seed=base.seed + k)) for k in range(config.candidates)]
    results = []
    for i, (seq, record) in enumerate(batch):
        result = ItemResult(key=record["key"], seq=seq, category=record["category"])
        seen: set[str] = set()
        for k, generations in enumerate(rounds):
            generation = generations[i]
            instruction, pii = scrub_pii(clean_instruction(generation.text))
            reason = reject_reason(instruction, generation.finish_reason, record["response"], config, decontaminator)
            if reason is None and exact_key(instruction) in seen:
                reason = "duplicate"
            if reason:
                result.drops.append(reason)
                continue
            seen.add(exact_key(instruction))
            key = stable_id(record["source"], record["source_id"], instruction)
            provenance = {
                "model": model_id,
                "template": "reverse (arXiv 2311.08685)",
                "template_sha": template_sha(),
                "candidate": k,
                "seed": base.seed + k,
                "pii_scrubbed": dict(pii),
            }
            result.outputs.append(with_stage(record, STAGE, {"key": key, "instruction": instruction}, provenance))
        results.append(result)
    return results


def reversed_model(ctx: Context) -> LLMConfig:
    """The reversed model induce samples from; trained first, into the run dir, when the config asks."""
    config = ctx.config.reverse_model
    trained = fingerprint("reverse", config.train.model_dump() if config.train else None)
    start = time.perf_counter()
    llm = reverse_model.reverse_llm(config, ctx.run_dir, ctx.store, trained)
    if config.train:
        ctx.store.add_cost(reverse_model.STAGE, time.perf_counter() - start, 0.0, 0.0, {})
    return llm


CONTRACT = Stage(
    name=STAGE,
    upstream="collect",
    reads=("key", "source", "source_id", "category", "response"),
    writes=("key", "instruction"),
    model=Model("the reversed model (`reverse_model`)", reversed_model),
    covers=(
        setting("`induce`", lambda ctx: ctx.config.induce.model_dump()),
        Covers(
            "the reversed model's weights when a server runs them",
            lambda ctx: reverse_model.served_weights(ctx.config.reverse_model),
        ),
    ),
    process=lambda ctx, batch, llm, _: process(batch, llm, ctx.config.induce, ctx.inputs.decontaminator, llm.model_id),
)
