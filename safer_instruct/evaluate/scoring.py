"""Scoring a user's own answers: a CSV/JSONL/JSON/parquet file in, the same rows out as CSV with ``refusal_label``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from safer_instruct.errors import SaferInstructError
from safer_instruct.readers import read_rows, text_field
from safer_instruct.refusal import label_shares, refusal_labels

LABEL_COLUMN = "refusal_label"
BATCH = 256


def score_file(
    path: str | Path, text_column: str, out: str | Path, prompt_column: str | None = None, progress: bool = True
) -> dict:
    """Label every answer in ``text_column`` (the request in ``prompt_column`` helps spot deflections) and write
    the rows with a ``refusal_label`` column (replaced if present) to the CSV ``out``; returns the count and shares."""
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise SaferInstructError(f"--out {out}: the scored rows are written as CSV; give a .csv path")
    rows = read_rows(path, required=[text_column] + ([prompt_column] if prompt_column else []))
    texts = [text_field(row, text_column, required=False) for row in rows]
    prompts = [text_field(row, prompt_column, required=False) for row in rows] if prompt_column else None
    labels: list[str] = []
    with tqdm(total=len(texts), unit="answer", desc="scoring", disable=not progress) as bar:
        for start in range(0, len(texts), BATCH):
            labels += refusal_labels(texts[start : start + BATCH], prompts[start : start + BATCH] if prompts else None)
            bar.update(min(BATCH, len(texts) - start))
    columns = list(dict.fromkeys(name for row in rows for name in row.values if name != LABEL_COLUMN)) + [LABEL_COLUMN]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row, label in zip(rows, labels):
            writer.writerow([_cell(row.values.get(name)) for name in columns[:-1]] + [label])
    return {"n": len(labels), "shares": label_shares(labels), "out": str(out)}


def summary_line(result: dict) -> str:
    """``scored 120 answers: full_compliance 61.7%, full_refusal 30.0%, partial_refusal 8.3% -> out.csv``."""
    shares = ", ".join(f"{label} {100 * share:.1f}%" for label, share in result["shares"].items())
    return f"scored {result['n']} answers: {shares} -> {result['out']}"


def _cell(value: Any) -> str:
    """A CSV cell: text as is, lists and dicts (parquet, JSON) as JSON, nothing as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
