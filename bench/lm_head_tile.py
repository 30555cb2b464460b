"""A demo training stage with TRL's fused LM-head tile (32768 vocabulary columns) vs ``lm_head_chunk_size``, in one run.

Each side trains the same recipe on the same data in its own process (so the peak resident set is its own):
training time (TRL's ``train_runtime``) and peak RSS, and their ratios. Needs a finished demo run's dataset
(and, for ``sft``/``dpo`` from SFT, its ``models/sft`` adapter):

    python bench/lm_head_tile.py --run-dir runs/demo --method dpo --json bench/results/lm_head_tile.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

from common import child_result, rss_mb, write_report

from safer_instruct.training import METHODS

RECIPES = Path("training/recipes/smollm2-135m")


def run_side(args) -> dict:
    """Train once with the given tile (0: TRL's); the numbers as a dict."""
    from safer_instruct.training import train

    with tempfile.TemporaryDirectory() as out:
        overrides = ["--output_dir", out, "--save_strategy", "no", "--report_to", "none"]
        if args.method != "reverse-sft":
            overrides += ["--dataset_name", str(Path(args.run_dir) / "dataset")]
        if args.method == "dpo":
            overrides += ["--model_name_or_path", str(Path(args.run_dir) / "models" / "sft")]
        if args.child:
            overrides += ["--lm_head_chunk_size", str(args.child)]
        result = train(args.method, RECIPES / f"{args.method.replace('-', '_')}.yaml", overrides)
    summary = result.metrics["summary"]
    return {
        "lm_head_chunk_size": args.child or "TRL default",
        "train_runtime_s": summary["train_runtime"],
        "train_loss": summary["train_loss"],
        "peak_rss_mb": round(rss_mb("VmHWM"), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/demo", help="a finished demo run (its dataset and SFT adapter)")
    parser.add_argument("--method", choices=METHODS, default="dpo")
    parser.add_argument("--lm-head-chunk-size", type=int, default=4096)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_side(args)))
        return 0
    sides = {}
    for name, tile in (("trl_tile", 0), ("narrow_tile", args.lm_head_chunk_size)):
        command = [sys.executable, __file__, "--child", str(tile), "--run-dir", args.run_dir, "--method", args.method]
        sides[name] = child_result(command)
        print(f"{name}: {sides[name]}", file=sys.stderr)
    narrow, wide = sides["narrow_tile"], sides["trl_tile"]
    report = {
        "bench": "lm_head_tile",
        "recipe": str(RECIPES / f"{args.method.replace('-', '_')}.yaml"),
        "run_dir": args.run_dir,
        "machine": platform.machine(),
        **sides,
        "speedup_narrow_vs_trl": round(wide["train_runtime_s"] / narrow["train_runtime_s"], 3),
        "peak_rss_ratio_narrow_vs_trl": round(narrow["peak_rss_mb"] / wide["peak_rss_mb"], 3),
    }
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
