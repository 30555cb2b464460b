"""Greedy local generation: ``model.generate`` per length-sorted batch vs the continuous (refilling) batch.

Both sides run in one process on the same prompts (drawn evenly from the eval sets: unsafe, benign but
risky, benign), interleaved, ``--repeats`` times; the medians and the ratio ``continuous_vs_generate`` per
batch size are printed, with the load average (the CPU may be shared). On a shared CPU the ratios that count
are the paired ones (``paired_ratios``: each repeat's sides ran back to back; their median) and the work that
does not depend on load: ``row_steps``, the rows fed through one-token forwards, summed, and ``forwards``,
the model calls. Every side's answers are compared
with the ``model.generate`` side at the first batch size: ``mismatches`` counts answers that differ.
Use ``--adapter`` with an aligned model's folder to get its mix of short declines and full answers.
``--sides continuous --batch-sizes 32,64,128`` times the rows decoding together alone (``decode_batch_size``);
``--sides concatenating,continuous --batch-sizes 128`` times the continuous batch on transformers' own KV cache,
which concatenates at every step, against the kit's, which grows in place (``llm/growing_cache.py``).
``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from common import write_report
from transformers import DynamicCache

import safer_instruct.llm.growing_cache as growing_cache
from safer_instruct.config import LLMConfig
from safer_instruct.llm import SamplingParams, make_llm
from safer_instruct.llm.base import Generation
from safer_instruct.llm.local import LocalLLM

DATA = Path(__file__).resolve().parents[1] / "safer_instruct" / "evaluate" / "data"
SETS = ("unsafe", "benign_risky", "benign")
GROWING_CACHE = growing_cache.growing_cache  # the kit's; the concatenating side puts transformers' own in its place


def eval_prompts(count: int) -> list[list[dict[str, str]]]:
    """``count`` chat prompts, taken in turn from the three eval sets."""
    per_set = [
        [json.loads(line)["prompt"] for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        for name in SETS
    ]
    texts = [rows[k] for k in range(max(map(len, per_set))) for rows in per_set if k < len(rows)][:count]
    return [[{"role": "user", "content": text}] for text in texts]


def run_side(llm: LocalLLM, encoded: list[list[int]], params: SamplingParams, side: str, batch_size: int):
    """One side's answers, seconds and work (``row_steps``, ``forwards``): ``generate`` (HF, batch by batch),
    ``continuous`` or ``concatenating`` (continuous on transformers' ``DynamicCache``)."""
    llm.config = llm.config.model_copy(update={"batch_size": batch_size})
    work = {"row_steps": 0, "forwards": 0}

    def count(module, args, kwargs) -> None:
        work["forwards"] += 1
        if kwargs["input_ids"].shape[1] == 1:
            work["row_steps"] += kwargs["input_ids"].shape[0]

    handle = llm.model.register_forward_pre_hook(count, with_kwargs=True)
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            if side == "generate":
                answers = llm._generate_batched(encoded, params)
            else:
                if side == "concatenating":
                    growing_cache.growing_cache = lambda config: DynamicCache(config=config)
                answers = llm._generate_continuous(encoded, params)
    finally:
        handle.remove()
        growing_cache.growing_cache = GROWING_CACHE
    return answers, time.perf_counter() - start, work


def paired(base: list[float], other: list[float]) -> dict:
    """Speed-up of ``other`` over ``base``: each repeat's and their median."""
    ratios = [b / o for b, o in zip(base, other, strict=True)]
    return {"median": round(statistics.median(ratios), 2), "runs": [round(r, 2) for r in ratios]}


def mismatches(answers: list[Generation], reference: list[Generation]) -> int:
    return sum(a != b for a, b in zip(answers, reference, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-sizes", default="16,32", help="comma-separated; the first is the reference")
    parser.add_argument("--sides", default="generate,continuous")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapter", help="a PEFT adapter folder on the default model (e.g. models/aligned)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    llm = make_llm(LLMConfig(model="default", adapter=args.adapter, dtype=args.dtype), show_progress=False)
    assert isinstance(llm, LocalLLM)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    prompts = eval_prompts(args.prompts)
    encoded = llm._encode([llm.render(p) for p in prompts])
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    sides = [(side, b) for b in sizes for side in args.sides.split(",")]
    print(
        f"{len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, torch threads={torch.get_num_threads()}, "
        f"adapter={args.adapter}, load {os.getloadavg()}",
        flush=True,
    )
    run_side(llm, encoded[:2], params, "generate", 2)  # warm-up
    seconds: dict[str, list[float]] = {f"{side} {b}": [] for side, b in sides}
    work: dict[str, dict] = {}
    wrong: dict[str, int] = {name: 0 for name in seconds}
    reference: list[Generation] | None = None
    loads = []
    for repeat in range(args.repeats):
        loads.append(os.getloadavg()[0])
        for side, b in sides:
            answers, took, work[f"{side} {b}"] = run_side(llm, encoded, params, side, b)
            reference = reference or answers
            name = f"{side} {b}"
            seconds[name].append(took)
            wrong[name] = max(wrong[name], mismatches(answers, reference))
            tokens = sum(a.completion_tokens for a in answers)
            print(
                f"  [{repeat}] {name:<16} {tokens:6d} tokens in {took:7.1f} s, {work[name]}, mismatches {wrong[name]}",
                flush=True,
            )
    tokens = sum(a.completion_tokens for a in reference)  # type: ignore[union-attr]
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    report: dict = {
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "adapter": args.adapter,
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": loads,
        "answer_tokens": tokens,
        "sides": {
            name: {
                "median_s": round(medians[name], 2),
                "runs_s": [round(s, 2) for s in seconds[name]],
                "tokens_per_s": round(tokens / medians[name], 1),
                "mismatches": wrong[name],
                **work[name],
            }
            for name in seconds
        },
    }
    baseline = next(iter(seconds))  # the first side at the first batch size
    report["paired_ratios"] = {
        f"{name}_vs_{baseline}": paired(seconds[baseline], seconds[name]) for name in seconds if name != baseline
    }
    for b in sizes:
        if f"generate {b}" in seconds and f"continuous {b}" in seconds and b != sizes[0]:
            report["paired_ratios"][f"continuous {b}_vs_generate {b}"] = paired(
                seconds[f"generate {b}"], seconds[f"continuous {b}"]
            )
        if f"concatenating {b}" in seconds and f"continuous {b}" in seconds and b != sizes[0]:
            report["paired_ratios"][f"continuous {b}_vs_concatenating {b}"] = paired(
                seconds[f"concatenating {b}"], seconds[f"continuous {b}"]
            )
    write_report(report, args.json)


if __name__ == "__main__":
    main()
