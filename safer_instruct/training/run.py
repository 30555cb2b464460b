"""``train(method, recipe, overrides)``: check the data, build the TRL trainer, train (resuming), save."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from safer_instruct.device import configure_threads
from safer_instruct.errors import SaferInstructError
from safer_instruct.training import modeling
from safer_instruct.training.data import prepare_datasets
from safer_instruct.training.metrics import build_metrics, plot_curves, write_metrics
from safer_instruct.training.recipe import parse_recipe

logger = logging.getLogger(__name__)
REFERENCE_ADAPTER = "ref"  # the frozen copy TRL adds when DPO continues an adapter


@dataclass
class TrainResult:
    """What a training run left: the adapter (or full model) folder, the merged folder, the metrics."""

    output_dir: Path
    merged_dir: Path | None
    metrics: dict[str, Any]


def train(method: str, recipe: str | Path | dict[str, Any] | None, overrides: Sequence[str] = ()) -> TrainResult:
    """Train ``reverse-sft``, ``sft`` or ``dpo`` from a recipe (YAML path or dict) with ``--key value`` overrides."""
    script_args, training_args, model_args, dataset_args = parse_recipe(method, recipe, overrides)
    _refuse_hub_push(training_args)
    configure_threads()
    if Path(training_args.output_dir).exists() and not Path(training_args.output_dir).is_dir():
        raise SaferInstructError(
            f"--output_dir {training_args.output_dir}: exists and is not a folder; choose another"
        )
    source = modeling.locate(model_args.model_name_or_path)
    tokenizer = modeling.load_tokenizer(source, script_args.chat_template_file)
    splits = {"train": script_args.dataset_train_split}
    if training_args.eval_strategy != "no":
        splits["eval"] = script_args.dataset_test_split
    dataset_name, mixture = _dataset(script_args, dataset_args)
    data = prepare_datasets(method, dataset_name, script_args.dataset_config, splits, tokenizer, loaded=mixture)
    with modeling.lm_head_tile(script_args.lm_head_chunk_size), modeling.labelled_positions_only():
        trainer = _make_trainer(method, source, model_args, training_args, tokenizer, data)
        output_dir = Path(training_args.output_dir)
        resume = training_args.resume_from_checkpoint or _last_checkpoint(output_dir)
        reference = _reference_kind(method, trainer, training_args)
        trainer.train(resume_from_checkpoint=resume)
    _drop_reference_adapter(trainer.model)
    _full_state_dict_for_saving(trainer)
    trainer.save_model(str(output_dir))
    info = {
        "method": method,
        "model": model_args.model_name_or_path,
        "base_model": source.base,
        "start_adapter": source.adapter,
        "dataset": dataset_name,
        "train_rows": len(data["train"]),
        "peft": bool(model_args.use_peft),
        "load_in_4bit": bool(model_args.load_in_4bit),
        "loss_type": getattr(training_args, "loss_type", None),
        "beta": getattr(training_args, "beta", None),
        "reference": reference,
        "resumed_from": resume,
    }
    metrics = build_metrics(trainer.state.log_history, info)
    merged_dir = None
    if trainer.is_world_process_zero():
        write_metrics(metrics, output_dir)
        plot_curves(metrics, output_dir)
        if script_args.merge and model_args.use_peft:
            del trainer
            merged_dir = modeling.save_merged(output_dir, output_dir / "merged", tokenizer, model_args.dtype)
    return TrainResult(output_dir=output_dir, merged_dir=merged_dir, metrics=metrics)


def _dataset(script_args, dataset_args) -> tuple[str, Any]:
    """The dataset's name, and TRL's dataset mixture loaded when the recipe has ``datasets:`` (it wins, as in TRL)."""
    if not dataset_args.datasets:
        return script_args.dataset_name, None
    from trl import get_dataset

    name = " + ".join(d.path + (f"[{d.split}]" if d.split != "train" else "") for d in dataset_args.datasets)
    if script_args.dataset_name:
        logger.warning("both `datasets` and `dataset_name` are set: the `datasets` mixture is used")
    try:
        return name, get_dataset(dataset_args)
    except Exception as err:  # datasets raises many types; the user needs the mixture and the reason
        raise SaferInstructError(f"dataset mixture {name}: could not be loaded: {type(err).__name__}: {err}") from err


def _make_trainer(method, source, model_args, training_args, tokenizer, data):
    from trl import DPOTrainer, SFTTrainer

    model, quantization, peft_config = modeling.build(source, model_args, training_args)
    trainer_cls = DPOTrainer if method == "dpo" else SFTTrainer
    try:
        return trainer_cls(
            model=model,
            args=training_args,
            train_dataset=data["train"],
            eval_dataset=data.get("eval"),
            processing_class=tokenizer,
            quantization_config=quantization,
            peft_config=peft_config,
        )
    except (ValueError, TypeError) as err:
        raise SaferInstructError(f"{method}: the trainer rejected the recipe: {err}") from err


def _reference_kind(method: str, trainer, training_args) -> str | None:
    """How DPO's reference is computed (recorded in metrics.json, e.g. for the model card)."""
    if method != "dpo":
        return None
    if getattr(trainer, "ref_model", None) is not None:
        kind = "separate model copy"
    elif REFERENCE_ADAPTER in (getattr(trainer.model, "peft_config", None) or {}):
        kind = "frozen copy of the starting adapter on the same base"
    elif getattr(trainer.model, "peft_config", None):
        kind = "base model with the adapter disabled"
    else:
        kind = "the initial model"
    return kind + (" (log-probs precomputed)" if training_args.precompute_ref_log_probs else "")


def _refuse_hub_push(training_args) -> None:
    """Publishing goes through ``safer-instruct publish``; no token ever reaches the training arguments."""
    if training_args.push_to_hub:
        raise SaferInstructError("push_to_hub is not used here: publish with `safer-instruct publish model`")
    training_args.hub_token = None


def _last_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` (resume point), if any."""
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    last = get_last_checkpoint(str(output_dir))
    if last:
        logger.warning("resuming from %s", last)
        print(f"resuming from {last}", file=sys.stderr)
    return last


def _full_state_dict_for_saving(trainer) -> None:
    """Under FSDP a sharded state dict (fast, resumable checkpoints) makes ``save_model`` write no weights at all:
    gather a full state dict for the final save, as the alignment-handbook does."""
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")


def _drop_reference_adapter(model) -> None:
    """Only the trained adapter is saved: remove DPO's frozen reference copy."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and REFERENCE_ADAPTER in peft_config:
        model.delete_adapter(REFERENCE_ADAPTER)


def main(method: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``training/<method>.py`` and ``safer-instruct train``: ``--config RECIPE`` + overrides,
    parsed by TRL's ``TrlParser.parse_args_and_config`` (``--config=RECIPE`` too)."""
    result = train(method, None, list(sys.argv[1:] if argv is None else argv))
    print(f"saved {result.output_dir}" + (f" and {result.merged_dir}" if result.merged_dir else ""))
    return 0
