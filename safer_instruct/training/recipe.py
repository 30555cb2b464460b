"""Recipes: TRL-style dataclass arguments from a YAML file (or dict) plus command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

from safer_instruct.config import read_yaml
from safer_instruct.device import resolve_bf16
from safer_instruct.errors import SaferInstructError
from safer_instruct.resources import local_or_kit
from safer_instruct.training import METHODS

CONFIG_CLASSES = dict(zip(METHODS, (SFTConfig, SFTConfig, DPOConfig)))


@dataclass
class TrainScriptArguments(ScriptArguments):
    """TRL's script arguments plus what the kit adds."""

    merge: bool = field(
        default=False,
        metadata={
            "help": "Also save the base model with the adapter merged in, to <output_dir>/merged (with tokenizer)."
        },
    )
    chat_template_file: str | None = field(
        default=None,
        metadata={
            "help": "A Jinja chat template file for models without one (e.g. Alpaca); saved with the tokenizer."
        },
    )
    lm_head_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Vocabulary columns per tile of TRL's fused LM head (None: TRL's 32768). On CPU each tile "
            "makes several float32 tokens x columns temporaries: 4096 lowers peak memory and speeds steps up."
        },
    )

    def __post_init__(self):
        if self.lm_head_chunk_size is not None and self.lm_head_chunk_size < 1:
            raise ValueError(f"lm_head_chunk_size must be a positive number of columns, not {self.lm_head_chunk_size}")


class RecipeParser(TrlParser):
    """A TrlParser whose errors are ``SaferInstructError`` instead of ``SystemExit``, and whose recipe values
    pass through the kit's own resolution (``with_cpu_autocast``) before they become defaults."""

    def error(self, message: str):  # type: ignore[override]
        raise SaferInstructError(f"training arguments: {message}")

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        return super().set_defaults_with_config(**with_cpu_autocast(kwargs))


def make_parser(method: str) -> RecipeParser:
    """The parser of ``training/<method>.py``, as TRL's own scripts make theirs: script arguments, the method's
    TRL config, ``ModelConfig`` and TRL's dataset mixture (``datasets:``)."""
    if method not in METHODS:
        raise SaferInstructError(f"unknown training method {method!r}; choose one of {', '.join(METHODS)}")
    return RecipeParser((TrainScriptArguments, CONFIG_CLASSES[method], ModelConfig, DatasetMixtureConfig))


def with_cpu_autocast(values: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``bf16: auto`` (bfloat16 autocast only where the device runs it natively); ``bf16`` where no GPU
    has bf16 means autocast on the CPU, which transformers wants said (``use_cpu``)."""
    from transformers.utils import is_torch_bf16_gpu_available

    if "bf16" in values:
        values = {**values, "bf16": resolve_bf16(values["bf16"], "cpu" if values.get("use_cpu") else None)}
    if values.get("bf16") and "use_cpu" not in values and not is_torch_bf16_gpu_available():
        return {**values, "use_cpu": True}
    return values


def resolve_bf16_override(overrides: Sequence[str]) -> list[str]:
    """``--bf16 auto`` on the command line, resolved like the recipe's value."""
    args = list(overrides)
    for index, arg in enumerate(args[:-1]):
        if arg == "--bf16" and args[index + 1].lower() == "auto":
            args[index + 1] = str(resolve_bf16("auto"))
    return args


def config_args(args: Sequence[str]) -> list[str]:
    """``--config=PATH`` as ``--config PATH`` (the form TrlParser reads), the path found here or in the kit."""
    out: list[str] = []
    for arg in args:
        out += ["--config", arg.split("=", 1)[1]] if arg.startswith("--config=") else [arg]
    if "--config" in out:
        index = out.index("--config")
        if index + 1 >= len(out):
            raise SaferInstructError("--config needs a recipe path")
        if out.count("--config") > 1:
            raise SaferInstructError("give one recipe (--config) per run")
        path = local_or_kit(out[index + 1])
        if not path.is_file():
            raise SaferInstructError(f"--config {out[index + 1]}: recipe not found")
        out[index + 1] = str(path)
    return out


def parse_recipe(
    method: str, recipe: str | Path | dict[str, Any] | None, overrides: Sequence[str] = ()
) -> tuple[TrainScriptArguments, SFTConfig | DPOConfig, ModelConfig, DatasetMixtureConfig]:
    """Recipe values become defaults; ``overrides`` (``--key value`` pairs, or ``--config RECIPE`` and pairs, as
    TRL's scripts take them) win over them. The YAML's ``env:`` sets environment variables, as in TRL."""
    parser = make_parser(method)
    args = config_args(overrides)
    if isinstance(recipe, dict):
        unknown = parser.set_defaults_with_config(**recipe)
    else:
        unknown = []
        if recipe is not None:
            args = config_args(["--config", str(recipe), *args])
    origin = args[args.index("--config") + 1] if "--config" in args else "recipe"
    if "--config" in args:
        read_yaml(origin)  # a broken YAML file is named with its line, before TRL reads it
    try:
        *parsed, from_config, from_args = parser.parse_args_and_config(
            resolve_bf16_override(args), return_remaining_strings=True, separate_remaining_strings=True
        )
    except (ValueError, TypeError) as err:
        raise SaferInstructError(f"{origin}: invalid training arguments: {err}") from err
    unknown += from_config
    if unknown:
        keys = sorted({item[2:] for item in unknown[::2]})
        raise SaferInstructError(f"{origin}: unknown key(s) for {method}: {', '.join(keys)}")
    if from_args:
        raise SaferInstructError(f"unknown training argument(s) for {method}: {' '.join(from_args)}")
    script_args, training_args, model_args, dataset_args = parsed
    if not script_args.dataset_name and not dataset_args.datasets:
        raise SaferInstructError(
            f"{origin}: dataset_name is required (a .jsonl/.csv/.parquet file, a folder or a Hub id), "
            "or a `datasets:` mixture"
        )
    if not model_args.model_name_or_path:
        raise SaferInstructError(f"{origin}: model_name_or_path is required ('default', a folder or a Hub id)")
    return script_args, training_args, model_args, dataset_args
