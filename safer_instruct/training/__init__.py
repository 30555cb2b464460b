"""Training: reversed-instruction SFT, SFT and DPO with TRL (full, LoRA, QLoRA).

``train`` is imported lazily so that ``safer_instruct.training.data.REVERSE_TEMPLATE`` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safer_instruct.training.data import REVERSE_TEMPLATE, reverse_prompt

if TYPE_CHECKING:
    from safer_instruct.training.run import TrainResult, main, train

__all__ = ["REVERSE_TEMPLATE", "TrainResult", "main", "reverse_prompt", "train"]


def __getattr__(name: str) -> Any:
    if name in {"train", "TrainResult", "main"}:
        from safer_instruct.training import run

        return getattr(run, name)
    raise AttributeError(name)
