"""A 100,000-response build against ``InstantOpenAIServer`` (a loopback stand-in for a fast vLLM fleet, written for this bench).

Every model role goes over HTTP (the reversed model too), so what is measured is the kit: the OpenAI
backend, the response cache, the run state, each stage's per-item work. Each build runs in its own
process (its peak RSS is its own). Reported:

- per size (``--sizes``): wall time, items/s per stage, model requests/s, peak RSS, and the kit's share of
  the wall time (outside backend calls); ``rss_mb_by_items`` and ``peak_rss_mb`` (at the largest size);
- the rerun of the largest finished build: its wall time against the first run's (the build call, and the whole
  process with interpreter start and imports), and its model requests;
- ``same_dataset_after_kill``: a build killed with SIGKILL halfway through its model stages (at ``--kill-items``)
  and rerun gives the same dataset, row for row, as the uninterrupted build.

    python bench/scale.py [--sizes 10000,30000,100000] [--kill-items 10000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from safer_instruct.pipeline.runner import MODEL_STAGES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CATEGORIES = ("hate", "dangerous", "illegal", "self-harm")
VOCABULARY = [
    f"{stem}{suffix}"
    for stem in (
        "walk",
        "rock",
        "mean",
        "fire",
        "knife",
        "steal",
        "lock",
        "yell",
        "pill",
        "road",
        "money",
        "phone",
        "car",
        "door",
        "smoke",
        "glass",
        "rope",
        "shop",
        "card",
        "sign",
    )
    for suffix in ("", "s", "ed", "ing", "er", "y", "ly", "ness", "ish", "able", "ful", "less", "ward", "ster", "ment")
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_responses(path: Path, count: int, seed: int = 0) -> None:
    """``count`` distinct synthetic raw responses (random word runs: no two are near-duplicates)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for n in range(count):
            text = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(18, 40))).capitalize() + "."
            handle.write(json.dumps({"id": f"r{n}", "text": text, "category": CATEGORIES[n % len(CATEGORIES)]}) + "\n")


def bench_config(data: Path, items: int, base_url: str, batch_size: int) -> dict[str, Any]:
    """The pipeline config: every model a served one, on the instant server."""

    def served(name: str) -> dict[str, Any]:
        return {"backend": "openai", "model": name, "base_url": base_url, "max_concurrency": 8, "max_retries": 2}

    return {
        "name": "scale",
        "seed": 0,
        "batch_size": batch_size,
        "sources": [{"name": "synthetic", "path": str(data), "category_column": "category", "limit": items}],
        "decontaminate": {
            "eval_sets": [
                str(ROOT / "safer_instruct/evaluate/data" / f"{name}.jsonl")
                for name in ("unsafe", "benign_risky", "benign")
            ]
        },
        "reverse_model": {"llm": served("reverse")},
        "induce": {"candidates": 1},
        "judge": served("judge"),
        "filter": {"threshold": 0.5},
        "expert": served("expert"),
        "respond": {"sampling": {"max_new_tokens": 64}},
        "self_evaluate": {"threshold": 0.5},
        "assemble": {"test_fraction": 0.05},
    }


# -- one build, in a child process ------------------------------------------------------------------
def child(config_path: str, run_dir: str) -> None:
    """Build once; print one JSON line: wall time, peak RSS, the funnel's per-stage figures."""
    from common import rss_mb

    from safer_instruct.pipeline import build, load_pipeline_config

    start = time.perf_counter()
    result = build(load_pipeline_config(config_path), run_dir)
    wall = time.perf_counter() - start
    stages = result.funnel["stages"]
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "peak_rss_mb": round(rss_mb("VmHWM"), 1),
                "splits": result.splits,
                "stages": {
                    name: {key: s[key] for key in ("in", "out", "failed", "wall_s", "model_s", "load_s")}
                    | {"requests": sum(u["requests"] for u in s["usage"].values())}
                    for name, s in stages.items()
                },
            }
        )
    )


def requests_made(run: dict[str, Any]) -> int:
    return sum(stage["requests"] for stage in run["stages"].values())


def run_child(config_path: Path, run_dir: Path) -> dict[str, Any]:
    """One build in its own process; ``process_s``: its whole life, interpreter start and imports included."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(config_path), str(run_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if done.returncode:
        raise RuntimeError(f"the build of {run_dir} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": round(time.perf_counter() - start, 2)}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Items/s per stage, requests/s through the model stages, the kit's share of wall time."""
    stages = run["stages"]
    requests = sum(stages[name]["requests"] for name in MODEL_STAGES)
    model_wall = sum(stages[name]["wall_s"] for name in MODEL_STAGES)
    backend_s = sum(stages[name]["model_s"] + stages[name]["load_s"] for name in MODEL_STAGES)
    return {
        "wall_s": run["wall_s"],
        "peak_rss_mb": run["peak_rss_mb"],
        "requests": requests,
        "requests_per_s": round(requests / model_wall, 1) if model_wall else None,
        "kit_share_of_wall": round(max(0.0, run["wall_s"] - backend_s) / run["wall_s"], 4),
        "items_per_s": {name: round(s["in"] / s["wall_s"], 1) if s["wall_s"] else None for name, s in stages.items()},
        "funnel": {
            name: f"{s['in']} -> {s['out']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
            for name, s in stages.items()
        },
        "splits": run["splits"],
    }


# -- kill -9 halfway, rerun, compare -----------------------------------------------------------------
def items_done(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            marks = ",".join("?" * len(MODEL_STAGES))
            return db.execute(
                f"SELECT count(*) FROM items WHERE status = 'done' AND stage IN ({marks})", MODEL_STAGES
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


def kill_halfway(config_path: Path, run_dir: Path, total_items: int) -> int:
    """Start a build; SIGKILL it once half of its model-stage items are done; the count it was killed at."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", str(config_path), str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    while process.poll() is None:
        done = items_done(run_dir / "state.sqlite")
        if done >= total_items // 2:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return done
        time.sleep(0.05)
    raise RuntimeError("the build finished before it could be killed halfway")


def dataset_rows(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Each split's rows with the provenance's timestamps taken out (the only field a rerun may change)."""
    import pyarrow.parquet as pq

    splits = {}
    for path in sorted((run_dir / "dataset").glob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            provenance = json.loads(row["provenance"])
            row["provenance"] = {
                stage: {k: v for k, v in entry.items() if k != "time"} for stage, entry in provenance.items()
            }
        splits[path.name] = rows
    return splits


# -- the whole bench ----------------------------------------------------------------------------------
def measure(
    sizes: list[int], kill_items: int, workdir: Path, batch_size: int, save: Path | None = None
) -> dict[str, Any]:
    """The kill check first (it is the shortest), then each size, smallest first, then the rerun of the largest.

    With ``save``, the report so far is written there after each step (a long run leaves its figures as it goes).
    """
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "instant_server.py"), "--port", str(port)])
    base_url = f"http://127.0.0.1:{port}/v1"
    from safer_instruct.llm.openai import direct_http

    report: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "server": "InstantOpenAIServer (bench/instant_server.py), one process on loopback, every model role",
        "request_path": "jsonhttp (pooled keep-alive HTTP/1.1)"
        if direct_http(base_url)
        else "the openai SDK (a proxy is set)",
        "batch_size": batch_size,
        "by_items": {},
    }

    def step(**figures: Any) -> None:
        report.update(figures, load_avg_1m=round(os.getloadavg()[0], 2))
        if save:
            save.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    try:
        time.sleep(1.0)
        configs: dict[int, Path] = {}
        for size in sorted(set(sizes + [kill_items])):  # a file per size: reading the input grows with it too
            data = workdir / f"responses-{size}.jsonl"
            write_responses(data, size)
            configs[size] = workdir / f"config-{size}.yaml"
            configs[size].write_text(yaml.safe_dump(bench_config(data, size, base_url, batch_size)), encoding="utf-8")
        reference = run_child(configs[kill_items], workdir / f"kill-reference-{kill_items}")
        total = sum(reference["stages"][name]["in"] for name in MODEL_STAGES)
        killed_at = kill_halfway(configs[kill_items], workdir / "run-killed", total)
        resumed = run_child(configs[kill_items], workdir / "run-killed")
        same = dataset_rows(workdir / "run-killed") == dataset_rows(workdir / f"kill-reference-{kill_items}")
        step(
            kill={
                "items": kill_items,
                "killed_at_model_items": killed_at,
                "of_model_items": total,
                "resumed_wall_s": resumed["wall_s"],
            },
            same_dataset_after_kill=same,
        )
        runs: dict[int, dict[str, Any]] = {}
        for size in sorted(sizes):
            runs[size] = run_child(configs[size], workdir / f"run-{size}")
            report["by_items"][str(size)] = summarise(runs[size])
            step(
                requests_per_s=summarise(runs[size])["requests_per_s"],
                peak_rss_mb=runs[size]["peak_rss_mb"],
                rss_mb_by_items={str(n): runs[n]["peak_rss_mb"] for n in sorted(runs)},
            )
            print(f"{size} items: {json.dumps(report['by_items'][str(size)])}", file=sys.stderr)
        largest = max(sizes)
        rerun = run_child(configs[largest], workdir / f"run-{largest}")
        step(
            rerun={
                "items": largest,
                "wall_s": rerun["wall_s"],
                "first_wall_s": runs[largest]["wall_s"],
                "share_of_first": round(rerun["wall_s"] / runs[largest]["wall_s"], 4),
                "process_s": rerun["process_s"],
                "first_process_s": runs[largest]["process_s"],
                "process_share_of_first": round(rerun["process_s"] / runs[largest]["process_s"], 4),
                "requests": requests_made(rerun) - requests_made(runs[largest]),
            }
        )  # the funnel's usage sums over runs
    finally:
        server.kill()
        server.wait()
    return report


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.path.insert(0, str(HERE))
        child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000", help="response counts to build (comma-separated)")
    parser.add_argument("--kill-items", type=int, default=10000, help="the size of the kill -9 / resume check")
    parser.add_argument("--batch-size", type=int, default=256, help="pipeline batch_size: items per committed batch")
    parser.add_argument("--workdir", help="default: a temporary folder, removed afterwards")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = measure(sizes, args.kill_items, workdir, args.batch_size, Path(args.json) if args.json else None)
    sys.path.insert(0, str(HERE))
    from common import write_report

    write_report(report, args.json)


if __name__ == "__main__":
    main()
