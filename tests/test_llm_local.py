"""The local transformers backend on the real default model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from safer_instruct.config import LLMConfig
from safer_instruct.llm import CachedLLM, ResponseCache, SamplingParams, make_llm
from safer_instruct.llm.local import LocalLLM

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is 2 + 2?",
]
CHATS = [[{"role": "user", "content": q}] for q in QUESTIONS]


@pytest.fixture(scope="module")
def local_llm(default_model_dir: Path) -> LocalLLM:
    # float32: the exactness checks below compare batched and single passes, which bfloat16 rounds apart
    return make_llm(LLMConfig(model="default", batch_size=4, dtype="float32"), show_progress=False)  # type: ignore[return-value]


def test_batched_greedy_matches_one_at_a_time(local_llm: LocalLLM) -> None:
    params = SamplingParams(max_new_tokens=24)
    batched = local_llm.generate(CHATS, params)
    single = [local_llm.generate([chat], params)[0] for chat in CHATS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert "Paris" in batched[0].text
    for generation in batched:
        assert generation.prompt_tokens > 10 and 0 < generation.completion_tokens <= 24
        assert generation.finish_reason in {"stop", "length"}
    assert local_llm.usage.requests >= 8


MIXED = CHATS + [
    [{"role": "user", "content": "Say yes."}],
    [{"role": "user", "content": "List the days of the week, one per line, with a fact about each."}],
    [{"role": "user", "content": "Explain in detail how a bicycle gear works and why it helps on hills."}],
]


def _decode_row_steps(llm: LocalLLM, run) -> int:
    """Rows fed through one-token forwards (the decoding steps' batch sizes, summed) while ``run()`` generates."""
    rows: list[int] = []

    def hook(module, args, kwargs) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            rows.append(ids.shape[0])

    handle = llm.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return sum(rows)


@pytest.mark.parametrize("stop", [(), ("\n",), ("the", ".")])
def test_continuous_greedy_matches_generate_token_for_token(
    local_llm: LocalLLM, monkeypatch: pytest.MonkeyPatch, stop: tuple[str, ...]
) -> None:
    """The refilling batch (2 rows for 7 prompts of mixed answer lengths) answers as ``model.generate`` does."""
    monkeypatch.setattr(local_llm, "config", local_llm.config.model_copy(update={"batch_size": 2}))
    params = SamplingParams(max_new_tokens=24, stop=stop)
    encoded = local_llm._encode([local_llm.render(p) for p in MIXED])
    with torch.inference_mode():
        expected = local_llm._generate_batched(encoded, params)
    assert local_llm._plain_decoding()
    answers = local_llm.generate(MIXED, params)
    assert answers == expected  # text, token counts and finish reasons
    assert "stop" in {g.finish_reason for g in answers}


def test_continuous_batch_drops_finished_rows(local_llm: LocalLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Short answers leave the batch: fewer row-steps than ``model.generate``, which runs every row to the longest."""
    monkeypatch.setattr(local_llm, "config", local_llm.config.model_copy(update={"batch_size": 4}))
    params = SamplingParams(max_new_tokens=32)
    encoded = local_llm._encode([local_llm.render(p) for p in MIXED])
    answers: list = []
    with torch.inference_mode():
        generate_rows = _decode_row_steps(local_llm, lambda: local_llm._generate_batched(encoded, params))
    continuous_rows = _decode_row_steps(local_llm, lambda: answers.extend(local_llm.generate(MIXED, params)))
    lengths = [g.completion_tokens for g in answers]
    assert min(lengths) < 16 and max(lengths) == 32
    assert continuous_rows < generate_rows
    assert continuous_rows <= sum(lengths) * 5 // 4  # few idle row-steps


def test_decoding_steps_write_the_cache_in_place(local_llm: LocalLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoding step writes its keys and values into room behind the cache: no new storage per step."""
    from safer_instruct.llm import local

    monkeypatch.setattr(local_llm, "config", local_llm.config.model_copy(update={"batch_size": 7}))
    storages: list[int] = []
    step = local._Rows.step

    def recording_step(rows) -> None:
        step(rows)
        storages.append(rows.cache.layers[0].keys.untyped_storage().data_ptr())

    monkeypatch.setattr(local._Rows, "step", recording_step)
    local_llm.generate(MIXED, SamplingParams(max_new_tokens=40))
    assert len(storages) >= 39  # the first token comes from the prefill
    assert len(set(storages)) <= len(storages) // 8  # a new room only every ROOM steps and after a compaction


def test_growing_layer_holds_what_a_dynamic_layer_holds() -> None:
    """Updates, crops, row selections and replaced tensors leave a ``GrowingLayer`` as they leave a ``DynamicLayer``."""
    from transformers.cache_utils import DynamicLayer

    from safer_instruct.llm.growing_cache import GrowingLayer

    torch.manual_seed(0)
    grown, plain = GrowingLayer(), DynamicLayer()

    def update(positions: int) -> None:
        keys, values = torch.randn(3, 2, positions, 4), torch.randn(3, 2, positions, 4)
        for layer in (grown, plain):
            out = layer.update(keys, values)
        assert torch.equal(out[0], grown.keys) and torch.equal(grown.keys, plain.keys)
        assert torch.equal(grown.values, plain.values)

    update(5)
    for _ in range(GrowingLayer.ROOM + 3):  # past the first room
        update(1)
    for layer in (grown, plain):
        layer.crop(-4)
    update(2)  # over the cropped positions
    for layer in (grown, plain):  # what a compaction does: other tensors in place of the keys and values
        layer.keys, layer.values = layer.keys[[0, 2], :, 3:], layer.values[[0, 2], :, 3:]
    keys, values = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    for layer in (grown, plain):
        layer.update(keys, values)
    assert torch.equal(grown.keys, plain.keys) and torch.equal(grown.values, plain.values)


def test_decoding_rows_apart_from_scoring_rows(local_llm: LocalLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """``decode_batch_size`` rows decode together; scoring passes keep to ``batch_size`` rows."""
    config = local_llm.config.model_copy(update={"batch_size": 2, "decode_batch_size": 5})
    monkeypatch.setattr(local_llm, "config", config)
    rows: list[tuple[int, int]] = []  # (rows, tokens) of each forward pass

    def hook(module, args, kwargs) -> None:
        rows.append(tuple(kwargs["input_ids"].shape))

    handle = local_llm.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        local_llm.generate(MIXED, SamplingParams(max_new_tokens=8))
        decoding = max(n for n, width in rows if width == 1)
        rows.clear()
        local_llm.loglikelihood(MIXED, ["Yes."] * len(MIXED))
    finally:
        handle.remove()
    assert decoding == 5
    assert max(n for n, _ in rows) == 2


def test_generation_config_with_processors_keeps_hf_generate(
    local_llm: LocalLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repetition penalty (or any logits processing) is HF's job: greedy then goes through ``model.generate``."""
    monkeypatch.setattr(local_llm.model.generation_config, "repetition_penalty", 5.0)
    assert not local_llm._plain_decoding()
    penalised = local_llm.generate(CHATS[2:3], SamplingParams(max_new_tokens=24))[0]
    monkeypatch.undo()
    assert local_llm._plain_decoding()
    assert penalised.text != local_llm.generate(CHATS[2:3], SamplingParams(max_new_tokens=24))[0].text


def test_stop_strings_and_raw_prompts(local_llm: LocalLLM) -> None:
    raw = "Below is a response to a certain instruction. Write the instruction that the response is trying to complete.\n\n### response:\nParis is the capital of France.\n\n### Instruction:\n"
    free = local_llm.generate([raw], SamplingParams(max_new_tokens=30))[0]
    stopped = local_llm.generate([raw], SamplingParams(max_new_tokens=30, stop=("France",)))[0]
    assert "France" not in stopped.text and stopped.finish_reason == "stop"
    assert len(stopped.text) < len(free.text)


def test_sampling_is_seeded(local_llm: LocalLLM) -> None:
    def sample(seed: int) -> list[str]:
        params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=seed)
        return [g.text for g in local_llm.generate(CHATS[1:3], params)]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_decide_returns_a_label_with_a_probability(local_llm: LocalLLM) -> None:
    prompts = [
        [{"role": "user", "content": f"Is this a colour: {word}? Answer yes or no."}] for word in ["red", "blue"]
    ]
    decisions = local_llm.decide(prompts, ["yes", "no"])
    for decision in decisions:
        assert decision.ok and decision.label in {"yes", "no"}
        assert 0.5 <= decision.probability <= 1.0
    with pytest.raises(ValueError, match="prefix"):
        local_llm.decide(prompts, ["safe", "safest"])


@pytest.mark.parametrize("labels", [["yes", "no"], ["unsafe to answer", "safe to answer"]])
def test_decide_matches_full_sequence_scoring(local_llm: LocalLLM, labels: list[str]) -> None:
    """Batched, padded, last-positions-only scoring equals scoring each prompt + label alone."""
    prompts = [[{"role": "user", "content": q + " Reply with one label."}] for q in QUESTIONS]
    decisions = local_llm.decide(prompts, labels)
    for prompt, decision in zip(prompts, decisions):
        text = local_llm.render(prompt)
        scores = []
        for label in labels:
            ids = local_llm.tokenizer(text + label, add_special_tokens=False, return_tensors="pt")["input_ids"]
            n_label = ids.shape[1] - len(local_llm.tokenizer(text, add_special_tokens=False)["input_ids"])
            with torch.inference_mode():
                logprobs = torch.log_softmax(local_llm.model(ids).logits[0].float(), dim=-1)
            scores.append(
                sum(float(logprobs[pos - 1, ids[0, pos]]) for pos in range(ids.shape[1] - n_label, ids.shape[1]))
            )
        probs = torch.softmax(torch.tensor(scores), dim=0)
        assert decision.label == labels[int(probs.argmax())]
        assert decision.probability == pytest.approx(float(probs.max()), abs=1e-3)


def test_loglikelihood_matches_full_sequence_scoring(local_llm: LocalLLM, tmp_path: Path) -> None:
    """Batched, padded scoring of given answers equals scoring each prompt + answer alone."""
    answers = ["Paris.", "Red, green and blue are three colours.", "The sea is calm tonight.", "4"]
    scores = local_llm.loglikelihood(CHATS, answers)
    for chat, answer, score in zip(CHATS, answers, scores):
        text = local_llm.render(chat)
        ids = local_llm.tokenizer(text + answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_answer = ids.shape[1] - len(local_llm.tokenizer(text, add_special_tokens=False)["input_ids"])
        with torch.inference_mode():
            logprobs = torch.log_softmax(local_llm.model(ids).logits[0].float(), dim=-1)
        expected = sum(float(logprobs[pos - 1, ids[0, pos]]) for pos in range(ids.shape[1] - n_answer, ids.shape[1]))
        assert score.tokens == n_answer and score.logprob == pytest.approx(expected, abs=0.05)
    assert (
        scores[0].logprob > local_llm.loglikelihood([CHATS[1]], ["Paris."])[0].logprob
    )  # the answer fits its question
    cached = CachedLLM(local_llm, ResponseCache(tmp_path / "cache.sqlite"))
    assert cached.loglikelihood(CHATS, answers) == scores and cached.misses == len(CHATS)
    assert cached.loglikelihood(CHATS, answers) == scores and cached.hits == len(
        CHATS
    )  # the second time from the cache


def test_shared_prompt_start_runs_once_and_scores_as_alone(local_llm: LocalLLM) -> None:
    """A judge's instructions, which every prompt of a batch begins with, go through the model once per batch."""
    instructions = "You read a question and an answer and judge whether the answer is correct. " * 3
    prompts = [[{"role": "user", "content": f"{instructions}Question: {q} Answer: yes."}] for q in QUESTIONS]
    fed: list[tuple[int, int]] = []
    handle = local_llm.model.register_forward_pre_hook(
        lambda _, args, kwargs: fed.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        together = local_llm.loglikelihood(prompts, [" Correct."] * len(prompts))
    finally:
        handle.remove()
    alone = [local_llm.loglikelihood([p], [" Correct."])[0] for p in prompts]
    start = len(local_llm.tokenizer(local_llm.render(prompts[0]).split("Question:")[0])["input_ids"])
    assert fed[0][0] == 1 and fed[0][1] >= start - 1  # the shared start, once
    assert (
        fed[1][0] == len(prompts)
        and fed[1][1] <= max(len(local_llm._encode([local_llm.render(p)])[0]) for p in prompts) - start + 1
    )
    for t, a in zip(together, alone):
        assert t.tokens == a.tokens and t.logprob == pytest.approx(a.logprob, abs=1e-3)


def test_hidden_states_stop_at_the_deepest_layer_and_match_a_full_pass(local_llm: LocalLLM) -> None:
    """Layers below the last are read as the next decoder layer takes them in; the pass runs no further."""
    calls: list[int] = []
    blocks = local_llm.model.get_decoder().layers
    handles = [block.register_forward_pre_hook(lambda *_, i=i: calls.append(i)) for i, block in enumerate(blocks)]
    try:
        early = local_llm.hidden_states(CHATS[:3], [0, 17, 5])
    finally:
        for handle in handles:
            handle.remove()
    assert max(calls) == 17  # layers 0..16 ran; layer 17 was stopped as it began
    encoded = local_llm._encode([local_llm.render(p) for p in CHATS[:3]])
    with torch.inference_mode():
        full = local_llm.model(**local_llm._pad_left(encoded), output_hidden_states=True, use_cache=False)
    expected = torch.stack([full.hidden_states[k][:, -1] for k in (0, 17, 5)], dim=1).float().numpy()
    # the shared chat start runs once for the batch: the same sums in another order, so equal to float rounding
    assert np.allclose(early, expected, atol=1e-4)
    last = local_llm.hidden_states(CHATS[:3], [-1])  # the last (normed) state needs the whole pass
    assert np.allclose(last[:, 0], full.hidden_states[-1][:, -1].float().numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def adapter_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the default model with weights large enough to change its answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("lora") / "adapter"
    base = AutoModelForCausalLM.from_pretrained(default_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(50)
    peft_model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    return folder


def test_peft_adapter_folder_loads_and_changes_answers(adapter_dir: Path, local_llm: LocalLLM) -> None:
    params = SamplingParams(max_new_tokens=12)
    with_adapter = make_llm(LLMConfig(model="default", adapter=str(adapter_dir)), show_progress=False)
    adapter_as_model = make_llm(LLMConfig(model=str(adapter_dir)), show_progress=False)
    expected = with_adapter.generate(CHATS[:1], params)[0].text
    assert adapter_as_model.generate(CHATS[:1], params)[0].text == expected
    assert expected != local_llm.generate(CHATS[:1], params)[0].text


def test_merged_adapter_projects_the_last_position_without_copying_the_head(adapter_dir: Path) -> None:
    """A merged adapter's frozen head, fed the last position of a prompt pass, stays one matrix product: torch
    would otherwise broadcast the head to every row and copy it (rows x hidden x vocabulary numbers)."""
    from torch.profiler import ProfilerActivity, profile

    llm = make_llm(LLMConfig(model="default", adapter=str(adapter_dir), dtype="float32"), show_progress=False)
    head = llm.model.get_output_embeddings().weight  # type: ignore[attr-defined]
    assert not head.requires_grad  # the case torch does not fold
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as run:
        answers = llm.generate(CHATS, SamplingParams(max_new_tokens=2))
        llm.loglikelihood(CHATS[:2], ["Paris.", "Red, green and blue."])
    assert all(a.completion_tokens for a in answers)
    operands = [math.prod(shape) for event in run.events() for shape in event.input_shapes if shape]
    assert max(operands) <= head.numel()


def test_4bit_loading_generates(default_model_dir: Path) -> None:
    llm = make_llm(LLMConfig(model="default", load_in_4bit=True), show_progress=False)
    assert "Linear4bit" in {type(m).__name__ for m in llm.model.modules()}  # type: ignore[attr-defined]
    generation = llm.generate(CHATS[:1], SamplingParams(max_new_tokens=8))[0]
    assert generation.text and generation.completion_tokens > 0
