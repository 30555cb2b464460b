"""Prompts that begin alike: their shared start through the model once per batch vs once per row, in one run.

Three workloads of the demo, on the default model: the pairwise helpfulness judge (``decide`` over the eval's benign
prompts with two answers each, the judge's instructions first), the expert's few-shot answers (greedy ``generate``
with ``expert_fewshot_v1``: its examples first) and the filter's probe (``hidden_states`` of layer 17 for requests in
the chat template: its system prompt first). Each side runs ``--repeats`` times, interleaved; the
"per row" side sets ``MIN_SHARED_PREFIX`` out of reach. Printed: median seconds per side, their ratio, and how far
the sides' results are apart (largest difference of a probability or a hidden-state value; answers that differ).

    python bench/shared_prefix.py --json bench/results/shared_prefix.json
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

import safer_instruct.llm.local as local
from safer_instruct.config import LLMConfig
from safer_instruct.evaluate.judge import PAIR_LABELS, judge_template
from safer_instruct.llm import SamplingParams, make_llm
from safer_instruct.prompts import load_template

DATA = Path(__file__).resolve().parents[1] / "safer_instruct" / "evaluate" / "data"


def workloads(count: int) -> dict:
    """Each workload's call on ``count`` benign prompts (reference answers stand in for the two models' answers)."""
    rows = [json.loads(line) for line in (DATA / "benign.jsonl").read_text(encoding="utf-8").splitlines()][:count]
    pairwise = judge_template("pairwise_v1")
    judge = [
        pairwise.render(
            instruction=r["prompt"], answer_a=r["reference"], answer_b=r["reference"][: len(r["reference"]) // 2]
        )
        for r in rows
    ]
    expert = load_template("expert_fewshot_v1")
    return {
        "pairwise judge (decide)": lambda llm: [d.probability for d in llm.decide(judge, PAIR_LABELS)],
        "filter probe (hidden_states)": lambda llm: [
            float(x)
            for x in llm.hidden_states([[{"role": "user", "content": r["prompt"]}] for r in rows], [17]).ravel()
        ],
        "expert few-shot (generate)": lambda llm: [
            g.text
            for g in llm.generate(
                [expert.render(instruction=r["prompt"]) for r in rows], SamplingParams(max_new_tokens=40)
            )
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    llm = make_llm(LLMConfig(model="default", dtype=args.dtype, batch_size=16), show_progress=False)
    shared_from = local.MIN_SHARED_PREFIX
    report: dict = {
        "bench": "shared_prefix",
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", "default"),
        "dtype": args.dtype,
        "prompts": args.prompts,
        "workloads": {},
    }
    for name, call in workloads(args.prompts).items():
        seconds: dict[str, list[float]] = {"per row": [], "shared": []}
        results: dict[str, list] = {}
        for repeat in range(args.repeats):
            for side in ("per row", "shared") if repeat % 2 == 0 else ("shared", "per row"):
                local.MIN_SHARED_PREFIX = shared_from if side == "shared" else 10**9
                start = time.perf_counter()
                results[side] = call(llm)
                seconds[side].append(time.perf_counter() - start)
        local.MIN_SHARED_PREFIX = shared_from
        a, b = results["per row"], results["shared"]
        numeric = all(isinstance(x, float) for x in a)
        report["workloads"][name] = {
            "median_s": {side: round(statistics.median(s), 2) for side, s in seconds.items()},
            "per_row_vs_shared": round(
                statistics.median(seconds["per row"]) / statistics.median(seconds["shared"]), 2
            ),
            "max_difference" if numeric else "answers_that_differ": (
                round(max(abs(x - y) for x, y in zip(a, b)), 5) if numeric else sum(x != y for x, y in zip(a, b))
            ),
        }
        print(name, report["workloads"][name], flush=True)
    report["load_average"] = os.getloadavg()[0]
    write_report(report, args.json)


if __name__ == "__main__":
    main()
