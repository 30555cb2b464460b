"""The released Safer-Instruct CSV layout (``instruction, rejected, chosen, label``), both ways.

An empty ``rejected`` makes an SFT-only row (``rejected == []``); ``label`` is the category.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from safer_instruct.pipeline.clean import normalise
from safer_instruct.pipeline.records import now, stable_id
from safer_instruct.readers import read_rows, text_field

COLUMNS = ("instruction", "rejected", "chosen", "label")


def import_released(path: str | Path, source: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(where, preference row) per CSV row; the row is None when instruction or chosen is empty."""
    rows = []
    for number, row in enumerate(read_rows(path, COLUMNS), start=1):
        instruction, chosen = (
            normalise(text_field(row, "instruction", False)),
            normalise(text_field(row, "chosen", False)),
        )
        rejected = normalise(text_field(row, "rejected", False))
        category = normalise(text_field(row, "label", False)) or "unlabelled"
        if not instruction or not chosen:
            rows.append((row.where, None))
            continue
        rows.append(
            (
                row.where,
                {
                    "id": stable_id(source, str(number), instruction),
                    "prompt": [{"role": "user", "content": instruction}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}] if rejected else [],
                    "category": category,
                    "kind": "safety",
                    "source": source,
                    "source_id": str(number),
                    "provenance": json.dumps({"import": {"file": Path(path).name, "row": number, "time": now()}}),
                },
            )
        )
    return rows


def export_released(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write safety rows in the released layout; returns the number written."""
    path = Path(path)
    count = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            if row["kind"] != "safety":
                continue
            rejected = row["rejected"][0]["content"] if row["rejected"] else ""
            writer.writerow([row["prompt"][-1]["content"], rejected, row["chosen"][0]["content"], row["category"]])
            count += 1
    return count
