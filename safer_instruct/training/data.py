"""Training data: load a dataset, check every row, and shape it for TRL.

Three shapes, one per method:

- ``reverse-sft``: instruction data (Alpaca's ``instruction``/``input``/``output``, or ShareGPT-style
  ``conversations`` with from/value, or ``messages`` with role/content) becomes prompt-completion rows:
  the prompt is the paper's reversed template (``safer_instruct.prompts.reverse``) filled with the response,
  the completion is the instruction.
- ``sft``: the ``chosen`` side of a preference dataset, conversational prompt-completion rows.
- ``dpo``: ``prompt``/``chosen``/``rejected`` rows (rows whose ``rejected`` is empty are SFT-only and skipped).

Every problem is reported before training starts, naming the dataset, split, row (1-based) and column.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable

from safer_instruct.errors import SaferInstructError
from safer_instruct.prompts.reverse import reverse_prompt
from safer_instruct.training import METHODS

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# -- loading --------------------------------------------------------------------------------------
def load_splits(dataset_name: str, dataset_config: str | None = None):
    """A DatasetDict from a local file (jsonl/json/csv/parquet), a local folder, or a Hub id."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(dataset_name).expanduser()
    try:
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise SaferInstructError(f"{path}: unsupported file type; use .jsonl, .json, .csv or .parquet")
            return load_dataset(builder, data_files={"train": str(path)})
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
                loaded = load_from_disk(str(path))
                return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
            parquet = _parquet_splits(path)
            if parquet:
                return load_dataset("parquet", data_files=parquet)
            return load_dataset(str(path))
        if path.is_absolute() or dataset_name.startswith((".", "~")) or dataset_name.count("/") != 1:
            raise SaferInstructError(f"dataset {dataset_name!r}: no such file or folder (nor a Hub id ORG/NAME)")
        return load_dataset(dataset_name, name=dataset_config)
    except SaferInstructError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the name and the reason
        raise SaferInstructError(
            f"dataset {dataset_name!r}: could not be loaded: {type(err).__name__}: {err}"
        ) from err


def _parquet_splits(folder: Path) -> dict[str, list[str]]:
    """``<split>-*.parquet`` files grouped by split (a run's ``dataset/`` folder); a lone file is ``train``."""
    splits: dict[str, list[str]] = {}
    for file in sorted(folder.glob("*.parquet")):
        split = file.stem.split("-", 1)[0] if "-" in file.stem else "train"
        splits.setdefault(split, []).append(str(file))
    return splits


# -- checking -------------------------------------------------------------------------------------
class RowError(SaferInstructError):
    """A bad row: raised with the column; the caller adds dataset, split and row."""

    def __init__(self, column: str, problem: str) -> None:
        super().__init__(f"column {column!r}: {problem}")
        self.column, self.problem = column, problem


def _text(row: dict[str, Any], column: str, required: bool = True) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(column, "empty")
        return ""
    if not isinstance(value, str):
        raise RowError(column, f"expected text, got {type(value).__name__}")
    return value.strip()


def _messages(row: dict[str, Any], column: str, only_role: str | None = None) -> list[dict[str, str]]:
    """A non-empty list of {role, content} messages (roles checked; ``only_role`` when given)."""
    value = row.get(column)
    if isinstance(value, str):
        if not value.strip():
            raise RowError(column, "empty")
        return [{"role": only_role or "user", "content": value}]
    if not value:
        raise RowError(column, "empty (no messages)")
    messages = []
    for turn, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RowError(column, f"message {turn} is not a {{role, content}} mapping with text content")
        role = message.get("role")
        if role not in ROLES or (only_role and role != only_role):
            expected = only_role or "/".join(sorted(ROLES))
            raise RowError(column, f"message {turn} has role {role!r}, expected {expected}")
        if not message["content"].strip():
            raise RowError(column, f"message {turn} has empty content")
        messages.append({"role": role, "content": message["content"]})
    return messages


def _sharegpt_pair(row: dict[str, Any], column: str) -> tuple[str, str]:
    """(first user turn, the assistant turn after it) from ``conversations`` or ``messages``."""
    turns = row.get(column) or []
    if not turns:
        raise RowError(column, "empty (no turns)")
    normalised = []
    for turn, message in enumerate(turns, start=1):
        if not isinstance(message, dict):
            raise RowError(column, f"turn {turn} is not a mapping")
        role = SHAREGPT_ROLES.get(str(message.get("from", message.get("role", ""))).lower())
        content = message.get("value", message.get("content"))
        if role is None or not isinstance(content, str):
            raise RowError(column, f"turn {turn} lacks a known speaker (from/role) or its text (value/content)")
        normalised.append((role, content.strip()))
    for index, (role, content) in enumerate(normalised[:-1]):
        if role == "user" and normalised[index + 1][0] == "assistant":
            instruction, output = content, normalised[index + 1][1]
            if not instruction or not output:
                raise RowError(column, f"turn {index + 1 if not instruction else index + 2} is empty")
            return instruction, output
    raise RowError(column, "no user turn followed by an assistant turn")


# -- shaping --------------------------------------------------------------------------------------
def reverse_row(row: dict[str, Any], eos_token: str) -> dict[str, str]:
    """Instruction data -> {prompt: reversed template(response), completion: instruction [+ input] + EOS}."""
    if "instruction" in row or "output" in row:
        instruction, output = _text(row, "instruction"), _text(row, "output")
        extra = _text(row, "input", required=False)
        if extra:
            instruction = f"{instruction}\n\n{extra}"
    elif "conversations" in row or "messages" in row:
        instruction, output = _sharegpt_pair(row, "conversations" if "conversations" in row else "messages")
    else:
        raise RowError(
            "instruction", "missing: expected instruction/output (Alpaca) or conversations/messages (ShareGPT)"
        )
    return {"prompt": reverse_prompt(output), "completion": instruction + eos_token}


def sft_row(row: dict[str, Any], eos_token: str) -> dict[str, list]:
    """Preference row -> conversational {prompt, completion: chosen}; or a ``messages`` row as is."""
    if "prompt" not in row and "messages" in row:
        return {"messages": _messages(row, "messages")}
    return {"prompt": _messages(row, "prompt"), "completion": _messages(row, "chosen", only_role="assistant")}


def dpo_row(row: dict[str, Any], eos_token: str) -> dict[str, list] | None:
    """Preference row -> {prompt, chosen, rejected}; None for an SFT-only row (empty ``rejected``)."""
    prompt = _messages(row, "prompt")
    chosen = _messages(row, "chosen", only_role="assistant")
    if "rejected" not in row:
        raise RowError("rejected", "missing")
    if not row["rejected"]:
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": _messages(row, "rejected", only_role="assistant")}


SHAPERS: dict[str, Callable[[dict[str, Any], str], dict | None]] = {
    "reverse-sft": reverse_row,
    "sft": sft_row,
    "dpo": dpo_row,
}
REQUIRED_COLUMNS = {
    "reverse-sft": [{"instruction", "output"}, {"conversations"}, {"messages"}],
    "sft": [{"prompt", "chosen"}, {"messages"}],
    "dpo": [{"prompt", "chosen", "rejected"}],
}


def check_columns(method: str, columns: Iterable[str], where: str) -> None:
    """The dataset must have one of the column sets the method reads."""
    columns = set(columns)
    options = REQUIRED_COLUMNS[method]
    if not any(option <= columns for option in options):
        best = min(options, key=lambda option: len(option - columns))
        wanted = " or ".join("+".join(sorted(option)) for option in options)
        raise SaferInstructError(
            f"{where}: missing column(s) {', '.join(sorted(best - columns))} for {method} "
            f"(needs {wanted}; has {', '.join(sorted(columns)) or 'none'})"
        )


def shape_rows(method: str, dataset, where: str, tokenizer) -> list[dict]:
    """Check and shape every row; conversational rows must render with the tokenizer's chat template."""
    check_columns(method, dataset.column_names, where)
    shaper = SHAPERS[method]
    eos = tokenizer.eos_token or ""
    shaped, skipped = [], 0
    for number, row in enumerate(dataset, start=1):
        try:
            example = shaper(row, eos)
        except RowError as err:
            raise SaferInstructError(f"{where}, row {number}, column {err.column!r}: {err.problem}") from None
        if example is None:
            skipped += 1
            continue
        _check_renders(example, tokenizer, f"{where}, row {number}")
        shaped.append(example)
    if skipped:
        logger.warning("%s: skipped %d SFT-only row(s) with an empty 'rejected' for DPO", where, skipped)
    if not shaped:
        raise SaferInstructError(f"{where}: no usable rows for {method}")
    return shaped


def _check_renders(example: dict, tokenizer, where: str) -> None:
    """A conversational example must render through the chat template (prompt + each answer)."""
    if "messages" in example:
        conversations = {"messages": example["messages"]}
    elif isinstance(example.get("prompt"), list):
        conversations = {
            col: example["prompt"] + example[col] for col in ("completion", "chosen", "rejected") if col in example
        }
    else:
        return
    for column, messages in conversations.items():
        if not tokenizer.chat_template:
            raise SaferInstructError(
                f"{where}, column {column!r}: conversational data needs a chat template, and the tokenizer has none "
                "(set chat_template_file in the recipe)"
            )
        try:
            tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as err:  # jinja2 raises TemplateError and friends
            raise SaferInstructError(
                f"{where}, column {column!r}: the chat template cannot render this row: {type(err).__name__}: {err}"
            ) from err


def prepare_datasets(
    method: str, dataset_name: str, dataset_config: str | None, splits: dict[str, str], tokenizer, loaded=None
):
    """Load, check and shape the requested splits: ``{"train": "train", "eval": "test"}`` -> Datasets.

    ``loaded``: a DatasetDict loaded already (e.g. TRL's dataset mixture), named ``dataset_name`` in errors."""
    from datasets import Dataset

    if method not in METHODS:
        raise SaferInstructError(f"unknown training method {method!r}; choose one of {', '.join(METHODS)}")
    loaded = load_splits(dataset_name, dataset_config) if loaded is None else loaded
    prepared = {}
    for role, split in splits.items():
        if split not in loaded:
            if role == "train":
                raise SaferInstructError(
                    f"dataset {dataset_name!r}: no split {split!r} (has {', '.join(loaded) or 'none'})"
                )
            continue
        rows = shape_rows(method, loaded[split], f"dataset {dataset_name!r}, split {split!r}", tokenizer)
        prepared[role] = Dataset.from_list(rows)
    return prepared
