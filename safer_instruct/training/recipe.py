"""Recipes: TRL-style dataclass arguments from a YAML file (or dict) plus command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from trl import DPOConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

from safer_instruct.config import read_yaml
from safer_instruct.errors import SaferInstructError

CONFIG_CLASSES = {"reverse-sft": SFTConfig, "sft": SFTConfig, "dpo": DPOConfig}


@dataclass
class TrainScriptArguments(ScriptArguments):
    """TRL's script arguments plus what the kit adds."""

    merge: bool = field(
        default=False,
        metadata={"help": "Also save the base model with the adapter merged in, to <output_dir>/merged (with tokenizer)."},
    )
    chat_template_file: str | None = field(
        default=None,
        metadata={"help": "A Jinja chat template file for models without one (e.g. Alpaca); saved with the tokenizer."},
    )
    lm_head_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Vocabulary columns per tile of TRL's fused LM head (None: TRL's 32768). On CPU each tile "
                  "makes several float32 tokens x columns temporaries: 4096 lowers peak memory and speeds steps up."},
    )

    def __post_init__(self):
        if self.lm_head_chunk_size is not None and self.lm_head_chunk_size < 1:
            raise ValueError(f"lm_head_chunk_size must be a positive number of columns, not {self.lm_head_chunk_size}")


class RecipeParser(TrlParser):
    """A TrlParser whose errors are ``SaferInstructError`` instead of ``SystemExit``."""

    def error(self, message: str):  # type: ignore[override]
        raise SaferInstructError(f"training arguments: {message}")


def with_cpu_autocast(values: dict[str, Any]) -> dict[str, Any]:
    """``bf16: true`` where no GPU has bf16 means bf16 autocast on the CPU, which transformers wants said (``use_cpu``)."""
    from transformers.utils import is_torch_bf16_gpu_available

    if values.get("bf16") and "use_cpu" not in values and not is_torch_bf16_gpu_available():
        return {**values, "use_cpu": True}
    return values


def parse_recipe(
    method: str, recipe: str | Path | dict[str, Any] | None, overrides: Sequence[str] = ()
) -> tuple[TrainScriptArguments, SFTConfig | DPOConfig, ModelConfig]:
    """Recipe values become defaults; ``overrides`` (``--key value`` pairs) win over them."""
    if method not in CONFIG_CLASSES:
        raise SaferInstructError(f"unknown training method {method!r}; choose one of {', '.join(CONFIG_CLASSES)}")
    origin = "recipe" if isinstance(recipe, dict) or recipe is None else str(recipe)
    values = dict(recipe) if isinstance(recipe, dict) else read_yaml(recipe) if recipe else {}
    values = with_cpu_autocast(values)
    parser = RecipeParser((TrainScriptArguments, CONFIG_CLASSES[method], ModelConfig))
    unknown = parser.set_defaults_with_config(**values)
    if unknown:
        keys = sorted({item[2:] for item in unknown[::2]})
        raise SaferInstructError(f"{origin}: unknown key(s) for {method}: {', '.join(keys)}")
    try:
        script_args, training_args, model_args = parser.parse_args_into_dataclasses(args=list(overrides))
    except (ValueError, TypeError) as err:
        raise SaferInstructError(f"{origin}: invalid training arguments: {err}") from err
    if not script_args.dataset_name:
        raise SaferInstructError(f"{origin}: dataset_name is required (a .jsonl/.csv/.parquet file, a folder or a Hub id)")
    if not model_args.model_name_or_path:
        raise SaferInstructError(f"{origin}: model_name_or_path is required ('default', a folder or a Hub id)")
    return script_args, training_args, model_args
