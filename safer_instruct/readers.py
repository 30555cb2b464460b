"""Reading rows from local CSV / JSONL / JSON / parquet files or a Hub dataset, strictly.

Every problem is a ``SaferInstructError`` naming the file, the line (or row) and the field, raised
before any model time is spent: non-UTF-8 bytes, a malformed line, a missing column, a wrong type.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from safer_instruct.errors import SaferInstructError

FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Row:
    """One input row; ``where`` says where it came from (``file, line N``) for error messages."""

    where: str
    values: dict[str, Any]


def read_rows(path: str | Path, required: Iterable[str] = ()) -> list[Row]:
    """All rows of a local file, or of every supported file in a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FORMATS)
        if not files:
            raise SaferInstructError(f"{path}: folder has no .csv, .jsonl, .json or .parquet file")
        return [row for file in files for row in read_rows(file, required)]
    if not path.is_file():
        raise SaferInstructError(f"{path}: file not found")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise SaferInstructError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .jsonl, .json or .parquet")
    rows = _read_parquet(path) if kind == "parquet" else _READERS[kind](path, _text(path))
    if not rows:
        raise SaferInstructError(f"{path}: no rows (empty file)")
    check_columns(rows, required, str(path))
    return rows


def read_hub(dataset_id: str, config: str | None, split: str, required: Iterable[str] = ()) -> list[Row]:
    """Rows of one split of a Hub dataset (needs the network or the local datasets cache)."""
    from datasets import load_dataset

    try:
        data = load_dataset(dataset_id, config, split=split)
    except Exception as err:  # datasets raises many types; the user needs the id and the reason
        raise SaferInstructError(f"Hub dataset {dataset_id!r} (split {split!r}) could not be loaded: {err}") from err
    rows = [Row(f"{dataset_id}[{split}], row {i}", dict(values)) for i, values in enumerate(data, start=1)]
    if not rows:
        raise SaferInstructError(f"Hub dataset {dataset_id!r} split {split!r} has no rows")
    check_columns(rows, required, f"Hub dataset {dataset_id!r}")
    return rows


def check_columns(rows: list[Row], required: Iterable[str], origin: str) -> None:
    """Every required column must exist (checked on the first row: files have one schema)."""
    missing = [column for column in required if column not in rows[0].values]
    if missing:
        have = ", ".join(sorted(rows[0].values)) or "none"
        raise SaferInstructError(f"{origin}: missing column(s) {', '.join(missing)} (has {have})")


def text_field(row: Row, column: str, required: bool = True) -> str:
    """A text value (an int becomes text); a missing, null or blank field is '' (an error when required), another
    type an error."""
    value = row.values.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise SaferInstructError(f"{row.where}: field {column!r} is missing or empty")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SaferInstructError(f"{row.where}: field {column!r} must be text, got {type(value).__name__}")
    return str(value)


def file_digest(path: str | Path) -> str:
    """A content hash of a file or folder of files (part of a stage's fingerprint)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SaferInstructError(
            f"{path}, line {line}: not UTF-8 (byte {data[err.start]:#04x} at offset {err.start})"
        ) from None


def _read_jsonl(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as err:
            raise SaferInstructError(
                f"{path}, line {number}: malformed JSON: {err.msg} (column {err.colno})"
            ) from None
        if not isinstance(values, dict):
            raise SaferInstructError(f"{path}, line {number}: expected a JSON object, got {type(values).__name__}")
        rows.append(Row(f"{path}, line {number}", values))
    return rows


def _read_json(path: Path, text: str) -> list[Row]:
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise SaferInstructError(f"{path}, line {err.lineno}: malformed JSON: {err.msg}") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise SaferInstructError(f"{path}: expected a JSON list of objects")
    return [Row(f"{path}, item {i}", item) for i, item in enumerate(data, start=1)]


def _read_csv(path: Path, text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Row] = []
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [name.strip() for name in header]
        for cells in reader:
            where = f"{path}, line {reader.line_num}"
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise SaferInstructError(
                    f"{where}: expected {len(header)} fields ({', '.join(header)}), got {len(cells)}"
                )
            rows.append(Row(where, dict(zip(header, cells))))
    except csv.Error as err:
        raise SaferInstructError(f"{path}, line {reader.line_num}: malformed CSV: {err}") from None
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid and OSError variants
        raise SaferInstructError(f"{path}: not a readable parquet file: {err}") from err
    return [Row(f"{path}, row {i}", values) for i, values in enumerate(table.to_pylist(), start=1)]


_READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}
