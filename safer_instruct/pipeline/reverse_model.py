"""Stage 2, reverse model: train one with the training kit's reverse SFT, or use the one the config names."""

from __future__ import annotations

import shutil
from pathlib import Path

from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm.cache import model_fingerprint
from safer_instruct.pipeline.config import ReverseModelConfig
from safer_instruct.pipeline.store import RunStore

STAGE = "reverse_model"
MODEL_DIR = Path("models") / "reverse"
MARKER = ".pipeline_fingerprint"


def check(config: ReverseModelConfig) -> None:
    """Fail before any model time when the trained model, the training data or the recipe is missing."""
    if config.path:
        folder = Path(config.path).expanduser()
        if not folder.is_dir():
            raise SaferInstructError(f"reverse_model.path: {config.path}: no such folder")
        if not any((folder / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise SaferInstructError(
                f"reverse_model.path: {config.path}: not a trained model "
                "(no config.json or adapter_config.json; training/reverse_sft.py writes them)"
            )
    train = config.train
    if train is None:
        return
    if not Path(train.recipe).is_file():
        raise SaferInstructError(f"reverse_model.train.recipe: {train.recipe}: file not found")
    looks_local = (
        train.dataset.startswith((".", "/", "~")) or Path(train.dataset).suffix or train.dataset.count("/") != 1
    )
    if looks_local and not Path(train.dataset).expanduser().exists():
        raise SaferInstructError(f"reverse_model.train.dataset: {train.dataset}: no such file or folder")


def reverse_llm(config: ReverseModelConfig, run_dir: Path, store: RunStore, fingerprint: str) -> LLMConfig:
    """The LLM config induce uses; trains the model into ``<run>/models/reverse`` first when asked."""
    if config.path and config.llm.backend == "local":
        return config.llm.model_copy(update={"model": str(Path(config.path).expanduser())})
    if config.train is None:
        return config.llm
    record = store.open_stage(STAGE, fingerprint)
    if not record.complete:
        output_dir = run_dir / MODEL_DIR
        marker = output_dir / MARKER
        if output_dir.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
            shutil.rmtree(output_dir)  # trained with other settings: start over rather than resume it
        output_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
        from safer_instruct.training import train

        overrides = [*config.train.overrides, "--dataset_name", config.train.dataset, "--output_dir", str(output_dir)]
        result = train("reverse-sft", config.train.recipe, overrides)
        info = {"model": str(result.output_dir), "train_loss": result.metrics.get("summary", {}).get("train_loss")}
        store.finish_stage(STAGE, True, info)
    return config.llm.model_copy(update={"model": store.stage(STAGE).info["model"], "adapter": None})


def served_weights(config: ReverseModelConfig) -> list[str]:
    """A fingerprint of ``path``'s weights when a server runs them (the local backend fingerprints its own folder)."""
    if config.path and config.llm.backend != "local":
        return [model_fingerprint(str(Path(config.path).expanduser()))]
    return []
