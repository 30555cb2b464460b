"""Generation throughput, both sides in one run, on the same 64 prompts and the default model.

(a) the batched local backend vs one prompt at a time with plain ``model.generate`` (how the
    paper's Alpaca-repo inference ran);
(b) the OpenAI backend at concurrency 8 vs sequential, against ``transformers serve --continuous-batching``.

Prints tokens/s of each side and the ratios ``local_batched_vs_naive`` and
``openai_concurrent_vs_sequential``; ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_server  # noqa: E402  (the same loopback server the tests use)

from safer_instruct.config import LLMConfig  # noqa: E402
from safer_instruct.llm import SamplingParams, make_llm  # noqa: E402
from safer_instruct.llm.local import LocalLLM  # noqa: E402
from safer_instruct.models import prepare_default_model  # noqa: E402

TOPICS = [
    "saving money",
    "learning a language",
    "sleeping better",
    "writing an essay",
    "growing tomatoes",
    "running a meeting",
    "baking bread",
    "cleaning a laptop",
    "studying for exams",
    "planning a trip",
    "staying focused",
    "reading more books",
    "making friends",
    "cooking rice",
    "painting a room",
    "starting to run",
    "caring for a cat",
    "keeping a journal",
    "public speaking",
    "learning guitar",
    "taking notes",
    "drinking more water",
    "packing a suitcase",
    "writing emails",
]
FORMS = [
    "Give me one short tip about {}.",
    "In two sentences, explain why {} matters.",
    "List three mistakes people make when {}.",
]


def bench_prompts(count: int) -> list[list[dict[str, str]]]:
    """``count`` distinct benign chat prompts of varied length."""
    texts = [form.format(topic) for form in FORMS for topic in TOPICS][:count]
    return [[{"role": "user", "content": text}] for text in texts]


def timed(label: str, run) -> dict:
    start = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - start
    print(f"  {label:<28} {tokens:6d} tokens in {seconds:7.2f} s = {tokens / seconds:8.1f} tokens/s", flush=True)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 2)}


def naive_generate(llm: LocalLLM, prompts: list, max_new_tokens: int) -> int:
    """One prompt at a time through plain ``model.generate``, greedy."""
    tokens = 0
    with torch.inference_mode():
        for prompt in prompts:
            inputs = llm.tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            output = llm.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id
            )
            tokens += output.shape[1] - inputs["input_ids"].shape[1]
    return tokens


def local_side(prompts: list, params: SamplingParams, batch_size: int) -> dict:
    llm = make_llm(LLMConfig(model="default", batch_size=batch_size), show_progress=False)
    assert isinstance(llm, LocalLLM)
    llm.generate(prompts[:2], params)  # warm-up
    naive = timed("local naive (1 at a time)", lambda: naive_generate(llm, prompts, params.max_new_tokens))
    before = llm.usage.completion_tokens
    batched = timed(
        f"local batched (batch {batch_size})", lambda: sum(g.completion_tokens for g in llm.generate(prompts, params))
    )
    assert llm.usage.completion_tokens - before == batched["tokens"]
    return {
        "naive": naive,
        "batched": batched,
        "local_batched_vs_naive": round(batched["tokens_per_s"] / naive["tokens_per_s"], 2),
    }


def openai_side(prompts: list, params: SamplingParams, concurrency: int, serve_args: list[str]) -> dict:
    model_dir = prepare_default_model()
    with tempfile.TemporaryDirectory() as tmp:
        process, base_url = start_server(model_dir, Path(tmp) / "serve.log", *serve_args)
        try:

            def client(max_concurrency: int):
                return make_llm(
                    LLMConfig(
                        backend="openai", model=str(model_dir), base_url=base_url, max_concurrency=max_concurrency
                    ),
                    show_progress=False,
                )

            client(1).generate(prompts[:2], params)  # warm-up
            sequential = timed(
                "openai sequential", lambda: sum(g.completion_tokens for g in client(1).generate(prompts, params))
            )
            concurrent = timed(
                f"openai concurrency {concurrency}",
                lambda: sum(g.completion_tokens for g in client(concurrency).generate(prompts, params)),
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
    ratio = round(concurrent["tokens_per_s"] / sequential["tokens_per_s"], 2)
    return {
        "serve_args": serve_args,
        "sequential": sequential,
        "concurrent": concurrent,
        "openai_concurrent_vs_sequential": ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument(
        "--serve-args", default="--continuous-batching", help="extra `transformers serve` flags (one string)"
    )
    args = parser.parse_args()

    prompts = bench_prompts(args.prompts)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    print(f"{len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, torch threads={torch.get_num_threads()}")
    results: dict = {
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if not args.skip_local:
        results["local"] = local_side(prompts, params, args.batch_size)
        results["local_batched_vs_naive"] = results["local"]["local_batched_vs_naive"]
    if not args.skip_openai:
        results["openai"] = openai_side(prompts, params, args.concurrency, shlex.split(args.serve_args))
        results["openai_concurrent_vs_sequential"] = results["openai"]["openai_concurrent_vs_sequential"]
    print(json.dumps({k: v for k, v in results.items() if k.endswith("_vs_naive") or k.endswith("_vs_sequential")}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
