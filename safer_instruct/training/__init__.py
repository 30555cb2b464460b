"""Training: reversed-instruction SFT, SFT and DPO with TRL (full, LoRA, QLoRA).

``train`` is imported lazily so that importing a submodule (``training.data``, ``training.modeling``) loads no TRL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safer_instruct.training.run import TrainResult, main, train

__all__ = ["METHODS", "TrainResult", "main", "train"]

# the training methods, each with its script (training/reverse_sft.py, ...) and recipes (recipes/<model>/sft.yaml, ...)
METHODS = ("reverse-sft", "sft", "dpo")


def __getattr__(name: str) -> Any:
    if name in {"train", "TrainResult", "main"}:
        from safer_instruct.training import run

        return getattr(run, name)
    raise AttributeError(name)
