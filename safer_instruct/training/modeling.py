"""Models for training: resolve names, load the tokenizer, LoRA/QLoRA set-up, continue an adapter, merge."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from safer_instruct.errors import SaferInstructError
from safer_instruct.llm.local import adapter_base
from safer_instruct.models import resolve_model

TRL_LM_HEAD_TILE = "_CHUNKED_LOGPROB_CHUNK_SIZE"  # trl.trainer.utils: vocabulary columns per fused LM-head tile
TRL_LM_HEAD_COMPACT = "_use_triton"  # trl.trainer.utils: its fused LM head scores only labelled positions where True


@dataclass
class ModelSource:
    """Where training starts: a base model, optionally with an adapter to keep training."""

    base: str
    adapter: str | None = None

    @property
    def tokenizer_source(self) -> str:
        return self.adapter or self.base


def locate(model_name_or_path: str) -> ModelSource:
    """``default``/folder/Hub id -> a base; an adapter folder -> its base plus the adapter."""
    path = resolve_model(model_name_or_path)
    if (Path(path) / "adapter_config.json").is_file():
        return ModelSource(base=resolve_model(adapter_base(path)), adapter=path)
    return ModelSource(base=path)


def load_tokenizer(source: ModelSource, chat_template_file: str | None):
    """The tokenizer (pad = EOS when missing); a chat template file replaces the model's template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_source)
    if chat_template_file:
        template = Path(chat_template_file)
        if not template.is_file():
            raise SaferInstructError(f"chat_template_file {template}: not found")
        tokenizer.chat_template = template.read_text(encoding="utf-8")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def init_kwargs(model_args, quantized: bool) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments from TRL's ModelConfig (4-bit models go to this process's device)."""
    kwargs: dict[str, Any] = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quantized:
        kwargs["device_map"] = kbit_device_map()
    return kwargs


def kbit_device_map() -> dict[str, Any]:
    """Each process loads its quantized copy onto its own device (GPU index, or the CPU)."""
    import torch
    from accelerate import PartialState

    state = PartialState()
    return {"": state.local_process_index if torch.cuda.is_available() else "cpu"}


def build(source: ModelSource, model_args, training_args):
    """(model, quantization_config, peft_config) for a TRL trainer.

    A fresh start passes the path and lets TRL load it (it applies LoRA from ``peft_config``). Starting
    from an adapter (DPO after SFT) loads base + adapter as trainable: training continues that adapter.
    """
    from trl import get_peft_config, get_quantization_config

    quantization = get_quantization_config(model_args)
    if source.adapter is None:
        training_args.model_init_kwargs = {
            **init_kwargs(model_args, quantization is not None),
            **(training_args.model_init_kwargs or {}),
        }
        return source.base, quantization, get_peft_config(model_args)
    if not model_args.use_peft:
        raise SaferInstructError(
            f"{source.adapter} is an adapter: full fine-tuning needs a full model. Train on with use_peft: true, "
            "or point model_name_or_path at the merged folder (merge: true on the earlier run)"
        )
    return load_adapter_for_training(source, model_args, quantization), None, None


def load_adapter_for_training(source: ModelSource, model_args, quantization):
    """Base (4-bit when asked) with the adapter loaded trainable."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs = {**init_kwargs(model_args, quantization is not None), "dtype": _dtype(model_args.dtype)}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    base = AutoModelForCausalLM.from_pretrained(source.base, **kwargs)
    return PeftModel.from_pretrained(base, source.adapter, is_trainable=True)


def _dtype(name: str | None):
    import torch

    return "auto" if name in (None, "auto") else getattr(torch, name)


def save_merged(adapter_dir: Path, target: Path, tokenizer, dtype: str | None) -> Path:
    """Load base + adapter unquantized in ``dtype`` (None or ``auto``: the checkpoint's), merge, save with the tokenizer.

    The merged folder loads with AutoModelForCausalLM.
    """
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), dtype=_dtype(dtype))
    merged = model.merge_and_unload()
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@contextmanager
def lm_head_tile(columns: int | None) -> Iterator[None]:
    """Within: TRL's fused LM head scores ``columns`` vocabulary entries per tile (``None``: TRL's own width).

    TRL's trainers compute per-token log-probs tile by tile instead of building the full logits. Without
    Triton (on CPU) each tile is folded by torch ops that make several float32 temporaries of
    ``tokens x columns``, so a narrower tile lowers peak memory (``bench/lm_head_tile.py``).
    """
    if columns is None:
        yield
        return
    from trl.trainer import utils as trl_utils

    if not hasattr(trl_utils, TRL_LM_HEAD_TILE):
        raise SaferInstructError(
            "lm_head_chunk_size: this TRL version has no fused LM-head tile to set; remove lm_head_chunk_size"
        )
    previous = getattr(trl_utils, TRL_LM_HEAD_TILE)
    setattr(trl_utils, TRL_LM_HEAD_TILE, columns)
    try:
        yield
    finally:
        setattr(trl_utils, TRL_LM_HEAD_TILE, previous)


@contextmanager
def labelled_positions_only() -> Iterator[None]:
    """Within: TRL's fused LM head projects only the positions that have a label, on every device.

    TRL scores only those where Triton runs; elsewhere it scores every position (prompt and padding too) and
    masks the result, to keep tile shapes fixed for compilers that would recompile per shape. Eager CPU has no
    such compiler: the prompt positions (three quarters of a reversed pair's tokens) cost an LM-head projection
    forward and backward for nothing (``bench/lm_head_tile.py``). The log-probs of labelled positions are the same.
    """
    from trl.trainer import utils as trl_utils

    if not hasattr(trl_utils, TRL_LM_HEAD_COMPACT):
        raise SaferInstructError(
            f"this TRL version has no {TRL_LM_HEAD_COMPACT} switch for its fused LM head; pin the TRL the kit was tested with"
        )
    previous = getattr(trl_utils, TRL_LM_HEAD_COMPACT)
    setattr(trl_utils, TRL_LM_HEAD_COMPACT, lambda device: True)
    try:
        yield
    finally:
        setattr(trl_utils, TRL_LM_HEAD_COMPACT, previous)
