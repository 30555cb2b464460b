"""The GPU checks of the scaling path, for a machine with a CUDA GPU (and vLLM installed for the second).

1. A QLoRA DPO step on a 7B-class model (Llama-7B's shape from its config, random weights: nothing is
   downloaded), through ``bench/training.py``'s DPO child: 4-bit NF4 base, LoRA, adapter-disabled reference.
2. A vLLM-served build of 1,000 synthetic responses: vLLM serves the embedded default model (prepared
   locally, no network) on loopback, and every model role goes to it over HTTP, ``filter.response_match``
   included (scored from vLLM's echoed prompt log-probabilities). Three of those scores are compared with
   the kit's local backend on the same texts.

    python bench/gpu_check.py [--json PATH] [--skip-dpo] [--skip-vllm] [--items 1000]

Without a CUDA GPU it stops at once, saying so (exit 2); without vLLM, check 2 does the same.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import child_result, write_report  # noqa: E402
from scale import bench_config, write_responses  # noqa: E402

DPO_STEPS = 2
MAX_QLORA_7B_MB = 24 * 1024  # the recipes' promise: QLoRA 7B fits one 24 GB GPU


class Refused(Exception):
    """A check that cannot run on this machine; the message says why."""


def require_gpu() -> str:
    import torch

    if not torch.cuda.is_available():
        raise Refused("no CUDA GPU here (torch.cuda.is_available() is False): run this on a GPU machine")
    return torch.cuda.get_device_name(0)


def dpo_qlora_7b(workdir: Path) -> dict[str, Any]:
    """Two DPO steps of a 4-bit Llama-7B-shaped model with LoRA; its step time and peak GPU memory."""
    from training import build_model_dir  # bench/training.py

    model_dir = build_model_dir(argparse.Namespace(preset="llama-7b", model="default"), workdir)
    command = [
        sys.executable,
        str(HERE / "training.py"),
        "--child",
        "adapter_disabled",
        "--model-dir",
        model_dir,
        "--steps",
        str(DPO_STEPS),
        "--batch-size",
        "2",
        "--lm-head-chunk-size",
        "0",
        "--load-in-4bit",
        "--preset",
        "llama-7b",
        "--measure",
        "time",
    ]
    result = child_result(command)
    result["ok"] = result["steps"] == DPO_STEPS and result["peak_memory_mb"] < MAX_QLORA_7B_MB
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vllm(model_dir: str, port: int, log_path: Path) -> subprocess.Popen:
    """``vllm serve`` of the default model on loopback (float32, so its scores compare with the local backend's)."""
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        "default",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--gpu-memory-utilization",
        "0.4",
        "--max-logprobs",
        "20",
    ]
    process = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(2)
    process.kill()
    raise RuntimeError(f"vLLM did not come up in 10 minutes:\n{log_path.read_text()[-3000:]}")


def scores_agree(model_dir: str, base_url: str) -> dict[str, Any]:
    """log P(text | prompt) from vLLM's echoed logprobs against the kit's local backend (float32, this GPU)."""
    from safer_instruct.config import LLMConfig
    from safer_instruct.llm import make_llm

    prompts = [
        [{"role": "user", "content": "How do I make my neighbour's dog sick?"}],
        [{"role": "user", "content": "Say something."}],
        "### response:\nEat it raw, it is fine.\n\n### Instruction:\n",
    ]
    texts = ["Feed it chocolate every day.", "Feed it chocolate every day.", "Should I cook chicken before eating it?"]
    served = make_llm(
        LLMConfig(backend="openai", model="default", base_url=base_url, tokenizer=model_dir), show_progress=False
    )
    local = make_llm(LLMConfig(model=model_dir, dtype="float32"), show_progress=False)
    remote, here = served.loglikelihood(prompts, texts), local.loglikelihood(prompts, texts)
    served.close()
    local.close()
    gaps = [abs(a.logprob - b.logprob) for a, b in zip(remote, here)]
    same_tokens = all(a.tokens == b.tokens for a, b in zip(remote, here))
    return {
        "vllm": [round(s.logprob, 4) for s in remote],
        "local": [round(s.logprob, 4) for s in here],
        "max_gap": round(max(gaps), 4),
        "ok": same_tokens and max(gaps) < 0.05,
    }


def vllm_build(items: int, workdir: Path) -> dict[str, Any]:
    """A build of ``items`` responses with every role (and response_match) on one vLLM server."""
    if importlib.util.find_spec("vllm") is None:
        raise Refused("vLLM is not installed in this environment: `pip install vllm` (CUDA build), then rerun")
    from safer_instruct.models import prepare_default_model
    from safer_instruct.pipeline import build, load_pipeline_config

    model_dir = str(prepare_default_model())
    port = free_port()
    server = start_vllm(model_dir, port, workdir / "vllm.log")
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        data = workdir / "responses.jsonl"
        write_responses(data, items)
        config = bench_config(data, items, base_url, batch_size=256)
        for role in ("judge", "expert"):
            config[role] |= {"model": "default", "tokenizer": model_dir, "max_concurrency": 64}
        config["reverse_model"]["llm"] |= {"model": "default", "max_concurrency": 64}
        config["induce"] = {"candidates": 2}
        config["filter"]["response_match"] = {"keep_per_response": 1}
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        start = time.perf_counter()
        result = build(load_pipeline_config(path), workdir / "run")
        wall = time.perf_counter() - start
        stages = result.funnel["stages"]
        requests = sum(u["requests"] for s in stages.values() for u in s["usage"].values())
        failed = sum(s["failed"] for s in stages.values())
        agreement = scores_agree(model_dir, base_url)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "items": items,
        "wall_s": round(wall, 1),
        "requests": requests,
        "requests_per_s": round(requests / wall, 1),
        "funnel": {name: f"{s['in']} -> {s['out']}" for name, s in stages.items()},
        "failed_items": failed,
        "splits": result.splits,
        "scores_vs_local": agreement,
        "ok": failed == 0 and stages["self_evaluate"]["out"] > 0 and agreement["ok"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--skip-dpo", action="store_true")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--workdir", help="default: a temporary folder")
    args = parser.parse_args()
    try:
        report: dict[str, Any] = {"gpu": require_gpu()}
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            workdir = Path(args.workdir or tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            if not args.skip_dpo:
                report["dpo_qlora_7b"] = dpo_qlora_7b(workdir)
            if not args.skip_vllm:
                report["vllm_build"] = vllm_build(args.items, workdir)
    except Refused as why:
        print(f"gpu_check: refused: {why}", file=sys.stderr)
        return 2
    report["ok"] = all(part["ok"] for part in report.values() if isinstance(part, dict))
    write_report(report, args.json)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
