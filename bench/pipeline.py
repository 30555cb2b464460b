"""The pipeline on the demo data, both sides in one run: a cold build, then a rerun of the same command.

The cold build reports items/s per stage and ``overhead_share``: the share of wall time spent outside
model calls, model loading and reverse-model training (target < 0.05). The rerun shows what resuming
costs when every item is done: its wall time and the model requests it made (should be 0).

    python bench/pipeline.py [--config builders/configs/demo.yaml] [--json PATH] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from safer_instruct.pipeline import build, load_pipeline_config


def requests(funnel: dict) -> int:
    return sum(u["requests"] for stage in funnel["stages"].values() for u in stage["usage"].values())


def measure(config_path: str, overrides: list[str], run_dir: Path) -> dict:
    config = load_pipeline_config(config_path, overrides)
    start = time.perf_counter()
    cold = build(config, run_dir)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = build(config, run_dir)
    rerun_s = time.perf_counter() - start
    stages = cold.funnel["stages"]
    train_s = cold.funnel.get("reverse_model", {}).get("wall_s", 0.0)
    model_s = sum(s["model_s"] + s["load_s"] for s in stages.values()) + train_s
    return {
        "config": config_path,
        "overrides": overrides,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "cold_wall_s": round(cold_s, 1),
        "reverse_train_s": train_s,
        "model_s": round(model_s, 1),
        "overhead_share": round(max(0.0, cold_s - model_s) / cold_s, 4),
        "stages": {
            name: {
                "in": s["in"],
                "out": s["out"],
                "wall_s": s["wall_s"],
                "model_s": s["model_s"],
                "load_s": s["load_s"],
                "items_per_s": round(s["in"] / s["wall_s"], 2) if s["wall_s"] else None,
            }
            for name, s in stages.items()
        },
        "rows": cold.funnel["rows"],
        "splits": cold.splits,
        "rerun_wall_s": round(rerun_s, 2),
        "rerun_model_requests": requests(warm.funnel) - requests(cold.funnel),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="builders/configs/demo.yaml")
    parser.add_argument("--run-dir", help="default: a fresh temporary folder (cold cache)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        result = measure(args.config, args.overrides, Path(args.run_dir or Path(tmp) / "run"))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
