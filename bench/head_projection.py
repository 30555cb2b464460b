"""A merged adapter's LM head on a prompt pass's last position: one matrix product vs torch's broadcast copy.

A model loaded with an adapter (the reversed model, every checkpoint the demo chooses among, the aligned model)
has frozen weights after the merge. ``torch.matmul`` then folds the head's ``[rows, 1, hidden]`` input (the last
position of a prompt pass, not contiguous) into one matrix product no more: it broadcasts the head to
``[rows, hidden, vocabulary]`` and copies it. The kit makes that input contiguous first
(``llm.local.project_in_one_product``). Both sides run in one process on the same prompts, interleaved,
``--repeats`` times: greedy answers to eval prompts (every prompt pass projects its last position) and the
evaluation's likelihood of reference answers; medians, paired ratios and answer mismatches are printed.

    python bench/head_projection.py [--adapter DIR] [--prompts 120] [--max-new-tokens 48] [--dtype auto] [--json PATH]

Without ``--adapter`` a LoRA adapter with random weights on every projection stands in for a trained one
(what matters is that its merged weights are frozen).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import write_report
from local_generation import eval_prompts, paired

from safer_instruct.config import LLMConfig
from safer_instruct.evaluate.sets import PromptSetConfig, load_prompt_set
from safer_instruct.llm import SamplingParams, make_llm
from safer_instruct.llm.local import LocalLLM
from safer_instruct.models import resolve_model

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapter(folder: Path) -> Path:
    """A rank-16 LoRA adapter on the default model's projections, random weights (as trained ones, not zeros)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = resolve_model("default")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS, init_lora_weights=False),
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    return folder


def references(count: int) -> tuple[list[list[dict[str, str]]], list[str]]:
    """The benign eval set's prompts and reference answers (what the evaluation scores for capability kept)."""
    items = load_prompt_set(PromptSetConfig(kind="benign", limit=count))
    return [[{"role": "user", "content": item.prompt}] for item in items], [item.reference for item in items]


def run_side(llm: LocalLLM, side: str, prompts, params: SamplingParams, scored) -> tuple[list, dict[str, float]]:
    """One side's answers and seconds (generation, likelihood); ``copying`` takes the kit's contiguity hook off."""
    head = llm.model.get_output_embeddings()
    hooks = dict(head._forward_pre_hooks)
    if side == "copying":
        head._forward_pre_hooks.clear()
    try:
        start = time.perf_counter()
        answers = llm.generate(prompts, params)
        generated = time.perf_counter()
        llm.loglikelihood(*scored)
        done = time.perf_counter()
    finally:
        head._forward_pre_hooks.update(hooks)
    return answers, {"generate": generated - start, "loglikelihood": done - generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", help="a PEFT adapter folder on the default model (default: a random one)")
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or str(random_adapter(Path(tmp) / "adapter"))
        config = LLMConfig(model="default", adapter=adapter, dtype=args.dtype, batch_size=32, decode_batch_size=128)
        llm = make_llm(config, show_progress=False)
        assert isinstance(llm, LocalLLM)
        prompts, params = eval_prompts(args.prompts), SamplingParams(max_new_tokens=args.max_new_tokens)
        scored = references(args.prompts)
        print(f"{len(prompts)} prompts, adapter={args.adapter or 'random'}, load {os.getloadavg()}", flush=True)
        seconds: dict[str, dict[str, list[float]]] = {
            side: {"generate": [], "loglikelihood": []} for side in ("copying", "one_product")
        }
        reference_answers, mismatches = None, 0
        for repeat in range(args.repeats):
            for side in seconds:
                answers, took = run_side(llm, side, prompts, params, scored)
                reference_answers = reference_answers or answers
                mismatches = max(mismatches, sum(a != b for a, b in zip(answers, reference_answers, strict=True)))
                for part, value in took.items():
                    seconds[side][part].append(value)
                print(f"  [{repeat}] {side:<12} {took}", flush=True)
        dtype = str(llm.model.dtype).removeprefix("torch.")
        llm.close()
    report = {
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "adapter": args.adapter or "random LoRA, rank 16, every projection",
        "dtype": dtype,
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "median_s": {
            side: {k: round(statistics.median(v), 2) for k, v in parts.items()} for side, parts in seconds.items()
        },
        "one_product_vs_copying": {
            part: paired(seconds["copying"][part], seconds["one_product"][part])
            for part in ("generate", "loglikelihood")
        },
        "answer_mismatches": mismatches,
    }
    write_report(report, args.json)


if __name__ == "__main__":
    main()
