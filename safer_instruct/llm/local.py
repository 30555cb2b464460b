"""In-process transformers backend: batched, left-padded, length-sorted; 4-bit and PEFT adapters.

Greedy generation decodes continuously: a row that finishes leaves the batch and a waiting prompt takes its
place, so short answers (declines stop after a dozen tokens) do not wait for the batch's longest one.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from safer_instruct.config import LLMConfig
from safer_instruct.device import configure_threads, pick_device, pick_dtype
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm.base import LLM, Decision, Generation, Loglikelihood, Prompt, SamplingParams, check_labels
from safer_instruct.models import explain_load_failure, resolve_model


def adapter_base(adapter_dir: str) -> str:
    """The base model an adapter folder was trained on."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise SaferInstructError(f"{config_file}: no base_model_name_or_path; pass the base model as `model`")
    return base


def load_model_and_tokenizer(config: LLMConfig):
    """Load (base model [+ adapter], tokenizer) as the config says; tokenizer pads on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    adapter = resolve_model(config.adapter) if config.adapter else None
    model_path = resolve_model(config.model)
    if adapter is None and (Path(model_path) / "adapter_config.json").is_file():
        adapter, model_path = model_path, resolve_model(adapter_base(model_path))
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    configure_threads()
    kwargs: dict = {"dtype": dtype}
    if config.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    try:
        has_own_tokenizer = adapter and (Path(adapter) / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(adapter if has_own_tokenizer else model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    except OSError as err:
        raise explain_load_failure(config.model, err) from err
    if not config.load_in_4bit:
        model.to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if not config.load_in_4bit:  # inference only: fold the adapter in, so each step costs what the base does
            model = model.merge_and_unload()
    model.eval()
    project_in_one_product(model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def project_in_one_product(model) -> None:
    """Make the LM head's input contiguous, so its projection stays one matrix product.

    ``torch.matmul`` folds a ``[rows, positions, hidden]`` input into one matrix only when those dimensions are
    laid out contiguously or the weight requires grad. The last position sliced out of a prompt pass
    (``logits_to_keep``) is not contiguous, and a merged adapter's weights are frozen: torch then broadcasts the
    whole head to ``[rows, hidden, vocabulary]`` and copies it (120 rows of the default model: 6.8 GB and 18 s in
    bfloat16, against milliseconds for the product; ``bench/head_projection.py``).
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_first_input)


def _contiguous_first_input(module: torch.nn.Module, args: tuple) -> tuple | None:
    """A forward pre-hook: the positional input made contiguous (None, no change, when it came by keyword)."""
    return (args[0].contiguous(), *args[1:]) if args else None


class LocalLLM(LLM):
    """transformers in-process; one lock serialises use of the model across threads."""

    backend = "local"

    def __init__(self, config: LLMConfig, show_progress: bool = True) -> None:
        super().__init__()
        self.config = config
        self.model_id = config.model + (f"+{config.adapter}" if config.adapter else "")
        self.model, self.tokenizer = load_model_and_tokenizer(config)
        self.device = next(self.model.parameters()).device
        self.show_progress = show_progress
        self._lock = threading.Lock()

    def render(self, prompt: Prompt) -> str:
        """Chat messages through the chat template (with the generation prompt); raw text as is."""
        if isinstance(prompt, str):
            return prompt
        if not self.tokenizer.chat_template:
            raise SaferInstructError(f"model {self.model_id!r} has no chat template; give it raw text prompts")
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def _pad_left(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=self.device)
        return {"input_ids": ids, "attention_mask": mask}

    def _batches(self, encoded: list[list[int]], desc: str) -> Iterator[list[int]]:
        """Indices in length-sorted batches (longest first), so padding stays small."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        size = self.config.batch_size
        chunks = [order[start : start + size] for start in range(0, len(order), size)]
        show = self.show_progress and len(chunks) > 1
        yield from tqdm(chunks, desc=desc, unit="batch", disable=not show, leave=False)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        configure_threads()  # the cores free now: another job may have started or ended
        encoded = self._encode([self.render(p) for p in prompts])
        with self._lock, torch.inference_mode():
            if params.greedy and self._plain_decoding():
                results = self._generate_continuous(encoded, params)
            else:
                results = self._generate_batched(encoded, params)
        for generation in results:
            self.usage.add(generation.prompt_tokens, generation.completion_tokens)
        return results

    def _generate_batched(self, encoded: list[list[int]], params: SamplingParams) -> list[Generation]:
        """``model.generate`` on each length-sorted batch (sampling: its random stream is HF's)."""
        results: list[Generation | None] = [None] * len(encoded)
        for batch in self._batches(encoded, f"generate [{self.model_id}]"):
            for index, generation in zip(batch, self._generate_batch([encoded[i] for i in batch], params)):
                results[index] = generation
        return results  # type: ignore[return-value]

    def _plain_decoding(self) -> bool:
        """Can greedy decoding be an argmax over a plain KV cache (what the continuous loop does)?

        Not when the generation config asks for logits processing (penalties, banned words...) or the
        model's cache is not a plain dynamic one (sliding windows, linear attention): those keep ``model.generate``.
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        config = self.model.generation_config.to_diff_dict()
        if set(config) - _PLAIN_GENERATION_KEYS:
            return False
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=self.model.config).layers)

    def _generate_continuous(self, encoded: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Greedy decoding with a batch that refills, with HF's inputs per row (prefill with ``logits_to_keep=1``,
        positions from the attention mask, argmax in float32): the answers ``model.generate`` gives, with less waste.

        Prompts enter longest first; a finished row (EOS, stop string, ``max_new_tokens``) stays until a quarter
        of the batch is finished, then the finished rows and their KV cache leave and waiting prompts, prefilled
        together, join on the left-padded cache.
        """
        waiting = deque(sorted(range(len(encoded)), key=lambda i: -len(encoded[i])))
        rows = _Rows(self.model, self.tokenizer.pad_token_id, self.device)
        done = _Finisher(self, params)
        results: list[Generation | None] = [None] * len(encoded)
        size = self.config.decode_batch_size or self.config.batch_size
        show = self.show_progress and len(encoded) > size
        with tqdm(
            total=len(encoded), desc=f"generate [{self.model_id}]", unit="prompt", disable=not show, leave=False
        ) as bar:
            while waiting or rows.live:
                if 4 * (len(rows.index) - len(rows.live)) >= len(rows.index) or not rows.live:
                    rows.compact()
                    admit = [waiting.popleft() for _ in range(min(size - len(rows.index), len(waiting)))]
                    if admit:
                        rows.add(admit, [encoded[i] for i in admit])
                        done.check(rows, admit, encoded, results, bar)
                        continue
                stepped = list(rows.live)
                rows.step()
                done.check(rows, stepped, encoded, results, bar)
        return results  # type: ignore[return-value]

    def _generate_batch(self, rows: list[list[int]], params: SamplingParams) -> list[Generation]:
        inputs = self._pad_left(rows)
        torch.manual_seed(params.seed)
        output = self.model.generate(**inputs, **self._decoding_kwargs(params))
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [self._to_generation(row, tokens, params) for row, tokens in zip(rows, new_tokens)]

    def _decoding_kwargs(self, params: SamplingParams) -> dict:
        """``model.generate`` arguments for these sampling params."""
        kwargs: dict = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs |= {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        if params.stop:
            kwargs |= {"stop_strings": list(params.stop), "tokenizer": self.tokenizer}
        return kwargs

    def _to_generation(
        self, prompt_ids: list[int], tokens: torch.Tensor | list[int], params: SamplingParams, stopped: bool = False
    ) -> Generation:
        """The answer in ``tokens`` (cut at the first EOS and stop string); ``stopped``: a stop string ended it."""
        eos_ids = self._eos_ids()
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        end = next((i for i, tok in enumerate(ids) if tok in eos_ids), None)
        finish = "stop" if end is not None or stopped else "length"
        ids = ids[:end] if end is not None else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in params.stop:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return Generation(
            text=text.strip(), prompt_tokens=len(prompt_ids), completion_tokens=len(ids), finish_reason=finish
        )

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[str]:
        """Yield one answer's text piece by piece as it is generated (holds the model lock meanwhile).

        Closing the iterator early stops the generation at the next token. Stop strings end the
        answer and are not yielded; leading whitespace is dropped, like ``generate``'s strip.
        """
        from transformers import TextIteratorStreamer

        ids = self._encode([self.render(prompt)])[0]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()
        outcome: dict = {}

        def run() -> None:
            try:
                inputs = self._pad_left([ids])
                torch.manual_seed(params.seed)
                with torch.inference_mode():
                    output = self.model.generate(
                        **inputs,
                        **self._decoding_kwargs(params),
                        streamer=streamer,
                        stopping_criteria=_stop_when_set(cancelled),
                    )
                outcome["tokens"] = output.shape[1] - inputs["input_ids"].shape[1]
            except BaseException as err:  # surfaced in the consuming thread below
                outcome["error"] = err
                streamer.end()

        with self._lock:
            worker = threading.Thread(target=run, name=f"stream [{self.model_id}]", daemon=True)
            worker.start()
            try:
                yield from _until_stop(streamer, params.stop)
            finally:
                cancelled.set()
                worker.join()
                if "tokens" in outcome:
                    self.usage.add(len(ids), outcome["tokens"])
        if "error" in outcome:
            raise outcome["error"]

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        return ids | {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}

    def decide(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[Decision]:
        """Compare each label's log-probability as the answer's continuation; softmax over labels."""
        configure_threads()  # the cores free now: another job may have started or ended
        labels = check_labels(labels)
        rendered = [self.render(p) for p in prompts]
        prompt_ids = self._encode(rendered)
        label_ids = [
            [self._continuation(text, ids, label) for label in labels] for text, ids in zip(rendered, prompt_ids)
        ]
        decisions: list[Decision | None] = [None] * len(prompts)
        with self._lock, torch.inference_mode():
            for batch in self._batches(prompt_ids, f"decide [{self.model_id}]"):
                scores = self._label_logprobs([prompt_ids[i] for i in batch], [label_ids[i] for i in batch])
                for index, row in zip(batch, scores):
                    probs = torch.softmax(torch.tensor(row), dim=0)
                    best = int(probs.argmax())
                    decisions[index] = Decision(label=labels[best], probability=float(probs[best]), raw=labels[best])
                    self.usage.add(len(prompt_ids[index]), 1)
        return decisions  # type: ignore[return-value]

    def loglikelihood(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Loglikelihood]:
        """Each continuation's summed log-probability after its rendered prompt (one pass, KV cache)."""
        configure_threads()  # the cores free now: another job may have started or ended
        rendered = [self.render(p) for p in prompts]
        prompt_ids = self._encode(rendered)
        cont_ids = [
            self._continuation(text, ids, cont)
            for text, ids, cont in zip(rendered, prompt_ids, continuations, strict=True)
        ]
        results: list[Loglikelihood | None] = [None] * len(prompts)
        with self._lock, torch.inference_mode():
            for batch in self._batches(prompt_ids, f"score [{self.model_id}]"):
                scores = self._label_logprobs([prompt_ids[i] for i in batch], [[cont_ids[i]] for i in batch])
                for index, (score,) in zip(batch, scores):
                    results[index] = Loglikelihood(logprob=score, tokens=len(cont_ids[index]))
                    self.usage.add(len(prompt_ids[index]) + len(cont_ids[index]), 0)
        return results  # type: ignore[return-value]

    def hidden_states(self, prompts: Sequence[Prompt], layers: Sequence[int] | None = None) -> np.ndarray:
        """Each rendered prompt's hidden states at its last token (prompts are left-padded), as float32.

        Layers below the last are read where the next decoder layer takes them in, and the pass stops there:
        a probe on layer 17 of 30 costs 17 layers, not 30.
        """
        configure_threads()  # the cores free now: another job may have started or ended
        prompt_ids = self._encode([self.render(p) for p in prompts])
        count = self.model.config.num_hidden_layers + 1
        layers = list(range(count)) if layers is None else list(layers)
        if outside := [layer for layer in layers if not -count <= layer < count]:
            raise SaferInstructError(
                f"layer {outside[0]} is outside model {self.model_id!r}'s hidden states 0..{count - 1}"
            )
        wanted = [layer % count for layer in layers]
        states = np.zeros((len(prompts), len(layers), self.model.config.hidden_size), dtype=np.float32)
        early = max(wanted) < count - 1 and self._decoder_layers() is not None
        run = (lambda i: self._layer_inputs(i, wanted)) if early else self._last_layer_pass
        pad = self.tokenizer.pad_token_id
        with self._lock, torch.inference_mode():
            for batch in self._batches(prompt_ids, f"hidden states [{self.model_id}]"):
                inputs = _after_shared_start([prompt_ids[i] for i in batch], pad, self.device, self.model.config, run)
                found = run(inputs)
                found = found if early else {layer: found.hidden_states[layer][:, -1] for layer in wanted}
                states[batch] = torch.stack([found[layer] for layer in wanted], dim=1).float().cpu().numpy()
                for index in batch:
                    self.usage.add(len(prompt_ids[index]), 0)
        return states

    def _last_layer_pass(self, inputs: dict):
        return self.model(**inputs, output_hidden_states=True, logits_to_keep=1)

    def _decoder_layers(self) -> torch.nn.ModuleList | None:
        """The decoder's layers, in order; None when the model does not expose them as expected."""
        blocks = getattr(self.model.get_decoder(), "layers", None)
        if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) != self.model.config.num_hidden_layers:
            return None
        return blocks

    def _layer_inputs(self, inputs: dict, wanted: list[int]) -> dict[int, torch.Tensor]:
        """Hidden state ``k`` at the last position as decoder layer ``k`` takes it in, stopping before the deepest
        wanted layer runs."""
        blocks = self._decoder_layers()
        found: dict[int, torch.Tensor] = {}

        def keep(index: int):
            def hook(module, args, kwargs) -> None:
                found[index] = (args[0] if args else kwargs["hidden_states"])[:, -1]
                if len(found) == len(set(wanted)):
                    raise _Enough

            return hook

        handles = [blocks[index].register_forward_pre_hook(keep(index), with_kwargs=True) for index in set(wanted)]
        try:
            self.model.get_decoder()(**inputs)
        except _Enough:
            return found
        finally:
            for handle in handles:
                handle.remove()
        raise SaferInstructError(f"model {self.model_id!r}: its decoder never reached layer {max(wanted)}")

    def _continuation(self, text: str, prompt_ids: list[int], label: str) -> list[int]:
        """The token ids ``label`` adds after the prompt."""
        full = self.tokenizer(text + label, add_special_tokens=False)["input_ids"]
        if full[: len(prompt_ids)] == prompt_ids:
            return full[len(prompt_ids) :]
        return self.tokenizer(label, add_special_tokens=False)["input_ids"]

    def _label_logprobs(self, prompts: list[list[int]], labels: list[list[list[int]]]) -> list[list[float]]:
        """Sum of log-probs of each label's tokens after its prompt.

        The prompts go through the model once (the tokens they all begin with, once for all: ``_prefill``); each
        label's later tokens continue from that KV cache. Only the positions that predict label tokens go through
        the LM head (``logits_to_keep``): over a 49k vocabulary, full-sequence logits would cost more than the
        transformer itself.
        """
        filled = _prefill(self.model, prompts, self.tokenizer.pad_token_id, self.device)
        first = torch.log_softmax(filled.last_logits.float(), dim=-1)
        scores = [[float(first[i, lab[0]]) for lab in per_prompt] for i, per_prompt in enumerate(labels)]
        for j in range(len(labels[0])):
            feeds = [per_prompt[j][:-1] for per_prompt in labels]  # label tokens whose next-token logits we need
            width = max(len(feed) for feed in feeds)
            if not width:
                continue
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([feed + [pad] * (width - len(feed)) for feed in feeds], device=self.device)
            mask = torch.cat([filled.mask, torch.ones_like(ids)], dim=1)  # right pads follow what we read
            positions = filled.positions[:, None] + torch.arange(width, device=self.device)
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=filled.cache, use_cache=True
            ).logits
            filled.cache.crop(-width)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, per_prompt in enumerate(labels):
                scores[i][j] += sum(float(logprobs[i, t - 1, tok]) for t, tok in enumerate(per_prompt[j][1:], start=1))
        return scores

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_PLAIN_GENERATION_KEYS = {
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "transformers_version",
    "_from_model_config",
    "max_length",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
}  # generation-config keys that leave greedy decoding a plain argmax


class _Enough(Exception):
    """Raised by a hook once every wanted hidden state is read: the rest of the forward pass is not needed."""


class _Rows:
    """The rows decoding together: their prompts' indices, tokens so far, KV cache, attention mask and positions.

    Rows are right-aligned (left padding), so each step appends one column for all. Finished rows stay (their
    tokens are ignored) until ``compact`` drops them, with the leading columns only padding fills.
    """

    def __init__(self, model, pad_id: int, device: torch.device) -> None:
        self.model, self.pad_id, self.device = model, pad_id, device
        self.index: list[int] = []  # prompt index per row
        self.live: list[int] = []  # the rows' prompt indices still decoding
        self.tokens: dict[int, list[int]] = {}
        self.cache = None
        self.mask = self.positions = self.last = None

    def add(self, index: list[int], prompts: list[list[int]]) -> None:
        """Prefill ``prompts`` together (``_prefill``); each gets its first token and joins the batch."""
        filled = _prefill(self.model, prompts, self.pad_id, self.device)
        first = filled.last_logits.float().argmax(dim=-1)
        if self.cache is None:
            self.cache, self.mask, self.positions, self.last = filled.cache, filled.mask, filled.positions, first
        else:
            self.cache, self.mask = _join_caches(self.cache, self.mask, filled.cache, filled.mask)
            self.positions = torch.cat([self.positions, filled.positions])
            self.last = torch.cat([self.last, first])
        for i, token in zip(index, first.tolist()):
            self.tokens[i] = [token]
        self.index += index
        self.live += index

    def step(self) -> None:
        """One decoding step for every row: feed each row's last token, append its argmax."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(
            input_ids=self.last[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            cache=self.cache,
            use_cache=True,
        )
        self.positions = self.positions + 1
        self.last = out.logits[:, -1].float().argmax(dim=-1)
        live = set(self.live)
        for i, token in zip(self.index, self.last.tolist()):
            if i in live:
                self.tokens[i].append(token)

    def finish(self, i: int) -> list[int]:
        """Take row ``i`` out of decoding; its tokens."""
        self.live.remove(i)
        return self.tokens.pop(i)

    def compact(self) -> None:
        """Drop the finished rows, their cache and the leading columns left with only padding."""
        if self.cache is None or len(self.live) == len(self.index):
            return
        if not self.live:
            self.cache = self.mask = self.positions = self.last = None
            self.index = []
            return
        live = set(self.live)
        keep = torch.tensor([j for j, i in enumerate(self.index) if i in live], device=self.mask.device)
        mask = self.mask[keep]
        start = int((mask.sum(dim=0) > 0).nonzero()[0])  # first column some row still reads
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[keep, :, start:]
            layer.values = layer.values[keep, :, start:]
        self.positions, self.last = self.positions[keep], self.last[keep]
        self.index = [i for i in self.index if i in live]


MIN_SHARED_PREFIX = 8  # tokens every prompt of a batch begins with, from which they go through the model once


@dataclass
class _Prefilled:
    """Prompts after one pass: their KV cache and attention mask, each row's next position and last logits."""

    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor
    last_logits: torch.Tensor


def _prefill(model, prompts: list[list[int]], pad_id: int, device: torch.device) -> _Prefilled:
    """One pass over ``prompts`` (``_after_shared_start``), keeping only the last position's logits."""
    inputs = _after_shared_start(
        prompts, pad_id, device, model.config, lambda shared: model(**shared, logits_to_keep=1)
    )
    out = model(**inputs, logits_to_keep=1)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    return _Prefilled(inputs["cache"], inputs["attention_mask"], lengths, out.logits[:, -1])


def _after_shared_start(
    prompts: list[list[int]], pad_id: int, device: torch.device, model_config, run: Callable[[dict], object]
) -> dict:
    """The model inputs of ``prompts`` once the tokens they all begin with have gone through ``run`` once.

    That shared start (the chat template's system prompt, a judge's or an expert's instructions: often most of the
    prompt) runs for one row, and its keys and values are copied to every row; the returned inputs hold the rest,
    left-padded, at positions counted from the attention mask, so each row sees what it would alone.
    """
    from safer_instruct.llm.growing_cache import growing_cache

    shared = _shared_prefix(prompts)
    if len(shared) < MIN_SHARED_PREFIX or len(prompts) == 1:
        shared = []
    cache = growing_cache(model_config)
    if shared:
        run({"input_ids": torch.tensor([shared], device=device), "cache": cache, "use_cache": True})
        for layer in cache.layers:
            if layer.is_initialized:  # a pass that stopped early filled only the layers it ran
                layer.keys = layer.keys.expand(len(prompts), -1, -1, -1).contiguous()
                layer.values = layer.values.expand(len(prompts), -1, -1, -1).contiguous()
    rest = [p[len(shared) :] for p in prompts]
    width = max(len(p) for p in rest)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in rest], device=device)
    rest_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rest], device=device)
    mask = torch.cat([torch.ones(len(prompts), len(shared), dtype=rest_mask.dtype, device=device), rest_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -width:]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "cache": cache, "use_cache": True}


def _shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt begins with, leaving each at least its last token to run on its own."""
    shortest = min(len(p) for p in prompts) - 1
    first = prompts[0]
    length = 0
    while length < shortest and all(p[length] == first[length] for p in prompts):
        length += 1
    return first[:length]


def _join_caches(cache, mask: torch.Tensor, other, other_mask: torch.Tensor):
    """Stack two right-aligned batches (cache and mask), left-padding the narrower one to the other's width."""
    width = max(mask.shape[1], other_mask.shape[1])

    def pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - tensor.shape[dim]
        if not missing:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    for layer, new in zip(cache.layers, other.layers):
        layer.keys = torch.cat([pad(layer.keys, 2), pad(new.keys, 2)])
        layer.values = torch.cat([pad(layer.values, 2), pad(new.values, 2)])
    return cache, torch.cat([pad(mask, 1), pad(other_mask, 1)])


class _Finisher:
    """Decides when a row is done, as ``model.generate`` would: EOS, a stop string, or ``max_new_tokens``."""

    def __init__(self, llm: LocalLLM, params: SamplingParams) -> None:
        from transformers import StopStringCriteria

        self.llm, self.params = llm, params
        self.eos = llm._eos_ids()
        self.stop = (
            StopStringCriteria(tokenizer=llm.tokenizer, stop_strings=list(params.stop)) if params.stop else None
        )

    def check(self, rows: _Rows, index: list[int], encoded: list[list[int]], results: list, bar) -> None:
        """Finish those of ``index``'s rows that are done: their generation goes into ``results``."""
        stopped = self._stop_strings(rows, index, encoded)
        for i, by_string in zip(index, stopped):
            tokens = rows.tokens[i]
            if tokens[-1] in self.eos or len(tokens) >= self.params.max_new_tokens or by_string:
                tokens = rows.finish(i)
                results[i] = self.llm._to_generation(encoded[i], tokens, self.params, stopped=by_string)
                bar.update(1)

    def _stop_strings(self, rows: _Rows, index: list[int], encoded: list[list[int]]) -> list[bool]:
        """Has a stop string just ended in each row's prompt + answer (HF's criterion, on each row's tail)?"""
        if self.stop is None:
            return [False] * len(index)
        width, pad = self.stop.maximum_token_len, rows.pad_id
        tails = [(encoded[i] + rows.tokens[i])[-width:] for i in index]
        ids = torch.tensor([[pad] * (width - len(tail)) + tail for tail in tails])
        return self.stop(ids, None).tolist()


def _stop_when_set(event: threading.Event):
    """Stopping criteria that end generation once ``event`` is set (a closed stream)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])


def _until_stop(pieces: Iterator[str], stops: Sequence[str]) -> Iterator[str]:
    """Re-chunk streamed text: no leading whitespace, nothing from the first stop string on.

    A tail that could still become a stop string is held back until the next piece decides it.
    """
    text, sent = "", 0
    for piece in pieces:
        text += piece
        if not text.strip():
            continue
        text = text.lstrip()
        cut = min((text.index(s) for s in stops if s in text), default=None)
        if cut is not None:
            if cut > sent:
                yield text[sent:cut]
            return
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        if len(text) - hold > sent:
            yield text[sent : len(text) - hold]
            sent = len(text) - hold
    if len(text) > sent:
        yield text[sent:]
