"""Card rendering helpers: the templates in ``cards/``, Markdown tables, file hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from safer_instruct.errors import SaferInstructError
from safer_instruct.resources import kit_path

CARDS_DIR = kit_path("cards")
PAPER_URL = "https://arxiv.org/abs/2311.08685"
CITATION = """@inproceedings{shi2024saferinstruct,
  title     = {Safer-Instruct: Aligning Language Models with Automated Preference Data},
  author    = {Shi, Taiwei and Chen, Kai and Zhao, Jieyu},
  booktitle = {Proceedings of the 2024 Conference of the North American Chapter of the Association for Computational Linguistics (NAACL)},
  year      = {2024},
  url       = {https://arxiv.org/abs/2311.08685}
}"""


def template_path(name: str) -> str:
    """The path of a card template in ``cards/``, checked to exist."""
    path = CARDS_DIR / name
    if not path.is_file():
        raise SaferInstructError(f"{path}: card template not found (the kit's install lacks its cards/)")
    return str(path)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells are escaped for pipes and newlines."""

    def cell(value: Any) -> str:
        return "—" if value is None or value == "" else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def sha256_short(path: Path, length: int = 12) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:length]


def percent(entry: dict[str, Any] | None) -> str:
    """``{rate, low, high}`` as ``83% (71–91%)``; a dash when there is no rate."""
    if not entry or entry.get("rate") is None:
        return "—"
    text = f"{100 * entry['rate']:.0f}%"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" ({100 * entry['low']:.0f}–{100 * entry['high']:.0f}%)"
    return text


def read_json(path: Path | None) -> Any:
    """A JSON file's content; None when the file is missing, an error naming the file when it is broken."""
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaferInstructError(f"{path}: not valid JSON: {err}") from err
