"""A demo training stage with TRL's fused LM head over every position vs only the labelled ones, in one run.

On CPU, TRL's fused LM head projects every position (prompt and padding too) and masks the result afterwards; the
kit's ``labelled_positions_only`` (``safer_instruct.training.modeling``) projects only the positions that have a
label. Both sides train the same recipe on the same data for ``--steps`` steps, interleaved, ``--repeats`` times
each; printed: TRL's ``train_runtime`` per side (best of the repeats), their ratio, and the train losses (equal:
the labelled positions' log-probs are the same).

    python bench/labelled_positions.py --method reverse-sft
    python bench/labelled_positions.py --method sft --dataset runs/demo/dataset
    python bench/labelled_positions.py --method dpo --dataset runs/demo/dataset --start runs/demo/models/sft
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile

import torch
from common import write_report

import safer_instruct.training.modeling as modeling
from safer_instruct.training import train

RECIPES = "training/recipes/smollm2-135m"
LABELLED = modeling.labelled_positions_only  # the kit's; the other side puts a no-op in its place


def run_side(args, labelled: bool) -> dict:
    """Train once; its runtime and loss."""
    modeling.labelled_positions_only = LABELLED if labelled else contextlib.nullcontext
    overrides = ["--save_strategy", "no", "--max_steps", str(args.steps), "--report_to", "none"]
    if args.dataset:
        overrides += ["--dataset_name", args.dataset]
    if args.start:
        overrides += ["--model_name_or_path", args.start]
    with tempfile.TemporaryDirectory() as out:
        result = train(
            args.method, f"{RECIPES}/{args.method.replace('-', '_')}.yaml", ["--output_dir", out, *overrides]
        )
    summary = result.metrics["summary"]
    return {"train_runtime": summary["train_runtime"], "train_loss": summary["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("reverse-sft", "sft", "dpo"), default="reverse-sft")
    parser.add_argument("--dataset", help="the dataset folder (sft, dpo): a demo run's dataset")
    parser.add_argument("--start", help="dpo: the SFT adapter to start from")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    sides: dict[str, list[dict]] = {"every position": [], "labelled only": []}
    for _ in range(args.repeats):
        for name, labelled in (("every position", False), ("labelled only", True)):
            sides[name].append(run_side(args, labelled))
            print(name, sides[name][-1], flush=True)
    best = {name: min(run["train_runtime"] for run in runs) for name, runs in sides.items()}
    write_report(
        {
            "bench": "labelled_positions",
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", "default"),
            "method": args.method,
            "steps": args.steps,
            "sides": sides,
            "best_train_runtime_s": best,
            "speedup_labelled_vs_every": round(best["every position"] / best["labelled only"], 2),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
