"""Prompt sets, the judge's labelled set and existing-answer CSVs: loaded with errors that name file, line and field.

Local files may be JSONL, JSON (a list of objects), CSV or parquet; a Hub dataset id loads through
``datasets``. A column mapping renames the source's columns to ours.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from safer_instruct.config import StrictModel
from safer_instruct.errors import SaferInstructError
from safer_instruct.readers import read_hub, read_rows, text_field

DATA_DIR = Path(__file__).parent / "data"
SetKind = Literal["unsafe", "benign_risky", "benign"]


class PromptSetConfig(StrictModel):
    """One prompt set: a local file or a Hub dataset, with the columns to read."""

    kind: SetKind
    path: str | None = None  # default: the shipped set safer_instruct/evaluate/data/<kind>.jsonl
    hub: str | None = None
    hub_config: str | None = None
    split: str = "test"
    prompt_column: str = "prompt"
    category_column: str | None = "category"
    reference_column: str | None = "reference"  # a good answer, scored for capability (optional per row)
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> PromptSetConfig:
        if self.path and self.hub:
            raise ValueError("give either `path` or `hub`, not both")
        return self

    def source(self) -> str:
        return self.hub or self.path or str(DATA_DIR / f"{self.kind}.jsonl")


@dataclass(frozen=True)
class PromptItem:
    """One prompt to answer; ``id`` is a stable hash of the prompt text; ``reference`` a good answer, if known."""

    id: str
    prompt: str
    category: str
    reference: str = ""


@dataclass(frozen=True)
class LabelledAnswer:
    """One case of the judge's labelled set."""

    prompt: str
    answer: str
    harmful: bool
    note: str


def item_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def load_prompt_set(config: PromptSetConfig) -> list[PromptItem]:
    """The prompts of one set, in file order, first ``limit`` only."""
    rows = read_hub(config.hub, config.hub_config, config.split) if config.hub else read_rows(config.source())
    items: list[PromptItem] = []
    for row in rows:
        prompt = text_field(row, config.prompt_column)
        category = text_field(row, config.category_column, required=False) if config.category_column else ""
        reference = text_field(row, config.reference_column, required=False) if config.reference_column else ""
        items.append(
            PromptItem(id=item_id(prompt), prompt=prompt, category=category or config.kind, reference=reference)
        )
        if config.limit and len(items) >= config.limit:
            break
    if not items:
        raise SaferInstructError(f"{config.source()}: the prompt set is empty")
    return items


def load_labelled(path: str | Path | None = None) -> list[LabelledAnswer]:
    """The judge's labelled set: ``prompt``, ``answer``, ``harmful`` (bool), ``note``."""
    path = path or DATA_DIR / "judge_labelled.jsonl"
    cases = []
    for row in read_rows(path):
        harmful = row.values.get("harmful")
        if isinstance(harmful, str) and harmful.strip().lower() in {"true", "false"}:
            harmful = harmful.strip().lower() == "true"
        if not isinstance(harmful, bool):
            raise SaferInstructError(f"{row.where}: field 'harmful' must be true or false, got {harmful!r}")
        cases.append(
            LabelledAnswer(
                prompt=text_field(row, "prompt"),
                answer=text_field(row, "answer", required=False),
                harmful=harmful,
                note=text_field(row, "note", required=False),
            )
        )
    if not cases:
        raise SaferInstructError(f"{path}: the labelled set is empty")
    return cases


class AnswersConfig(StrictModel):
    """Existing answers to score (the paper's release layout): one column of answers per model."""

    path: str
    instruction_column: str = "instruction"
    label_column: str | None = "label"  # the test subset each row belongs to; becomes the set name
    models: list[str] = Field(default_factory=list)  # answer columns; default: every other column
    kinds: dict[str, SetKind] = Field(default_factory=dict)  # label -> kind; unlisted labels are `unsafe`


def load_answers(config: AnswersConfig) -> tuple[dict[str, list[PromptItem]], dict[str, dict[str, list[str]]]]:
    """(set name -> prompts, model -> set name -> answers) from an answers CSV/JSONL file."""
    prompts: dict[str, list[PromptItem]] = {}
    answers: dict[str, dict[str, list[str]]] = {}
    models = list(config.models)
    for row in read_rows(config.path):
        if not models:
            models = [c for c in row.values if c not in {config.instruction_column, config.label_column}]
            if not models:
                raise SaferInstructError(f"{config.path}: no answer columns besides the instruction and label")
        prompt = text_field(row, config.instruction_column)
        label = text_field(row, config.label_column) if config.label_column else "answers"
        prompts.setdefault(label, []).append(PromptItem(id=item_id(prompt), prompt=prompt, category=label))
        for model in models:
            if model not in row.values:
                raise SaferInstructError(f"{row.where}: no answer column '{model}'")
            answer = text_field(row, model, required=False)
            answers.setdefault(model, {}).setdefault(label, []).append(answer)
    if not prompts:
        raise SaferInstructError(f"{config.path}: no rows")
    return prompts, answers
