"""What the stages share: the row schema (source rows, records, preference rows), stable ids, timestamps,
fingerprints."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


def stable_id(*parts: str) -> str:
    """A short, stable hash of its parts (ids of responses, instructions and rows)."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def fingerprint(*parts: Any) -> str:
    """A hash of settings (JSON-serialisable) for the stage-invalidation chain."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def now() -> str:
    """UTC time, ISO 8601, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def with_stage(
    record: dict[str, Any], stage: str, fields: dict[str, Any], provenance: dict[str, Any]
) -> dict[str, Any]:
    """A copy of ``record`` with new fields and the stage's provenance entry."""
    return {**record, **fields, "provenance": {**record.get("provenance", {}), stage: {**provenance, "time": now()}}}


# -- the row schema: the one place the fields are written down (docs/records.md is generated from it) ----------------
@dataclass(frozen=True)
class Field:
    """One field of a row: its name, its type (``string``, ``messages``: ``[{role, content}]``, ``object``, or
    ``json``: an object as a JSON string) and what it holds."""

    name: str
    type: str
    what: str


SOURCE = (  # a source row, as collect reads it (``sources:`` in the config)
    Field("source", "string", "the source's `name` in the config"),
    Field("source_id", "string", "the row's id in its source (`id_column`; else its line number)"),
    Field("category", "string", "the harm category (`category`, or the row's `category_column`)"),
    Field("text", "string", "the (harmful) response (`text_column`)"),
)
RECORD = (  # a record, as one stage passes it to the next (stored in state.sqlite)
    Field("key", "string", "stable hash of source and source id; from induce on, and of the instruction"),
    Field("source", "string", "as in the source row"),
    Field("source_id", "string", "as in the source row"),
    Field("category", "string", "as in the source row"),
    Field("response", "string", "the source text, normalised, personal data scrubbed: the rejected answer"),
    Field("instruction", "string", "the instruction the reversed model induced from the response"),
    Field("expert", "string", "the expert's safe answer: the chosen one"),
    Field("provenance", "object", "per stage: model id, template hash, verdict, probability, time"),
)
ROW = (  # a preference row: the dataset's columns (TRL's conversational preference format)
    Field("id", "string", "stable hash of the source and the instruction"),
    Field("prompt", "messages", "the (induced) user instruction, `[{role: user, content}]`"),
    Field("chosen", "messages", "the preferred, safe answer, `[{role: assistant, content}]`"),
    Field(
        "rejected",
        "messages",
        "the dispreferred answer: the raw harmful response for safety rows; empty for SFT-only rows",
    ),
    Field("category", "string", "`hate`, `self-harm`, `illegal`, `dangerous`, ... or `helpfulness`"),
    Field("kind", "string", "`safety` or `helpfulness`"),
    Field("source", "string", "where the raw response (or the helpfulness pair) came from"),
    Field("source_id", "string", "its id there"),
    Field("provenance", "json", "per stage: model id, template hash, verdict, probability, time"),
)
IMPLICIT = "provenance"  # every stage adds its own entry; stage contracts do not list it


def names(fields: Sequence[Field]) -> tuple[str, ...]:
    return tuple(f.name for f in fields)


def schema_markdown(stages: Sequence[Any]) -> str:
    """The docs page of the row schema and of what each stage (a ``contract.Stage``) reads, writes and covers."""

    def codes(items: Sequence[str]) -> str:
        return ", ".join(f"`{item}`" for item in items) or "-"

    def table(fields: Sequence[Field], extra: dict[str, Callable[[str], str]] | None = None) -> list[str]:
        extra = extra or {}
        head = ["field", "type", "what", *extra]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for f in fields:
            lines.append(
                "| " + " | ".join([f"`{f.name}`", f.type, f.what, *(c(f.name) for c in extra.values())]) + " |"
            )
        return lines

    readers = [s for s in stages if s.upstream]  # the stages that read records (the first reads source rows)
    writers = [s for s in stages if any(t.upstream == s.name for t in stages)]  # the last writes preference rows

    def by(field: str, group: Sequence[Any], attribute: str) -> str:
        return "every stage" if field == IMPLICIT else codes([s.name for s in group if field in getattr(s, attribute)])

    lines = [
        "# Pipeline rows",
        "",
        "Generated from `safer_instruct/pipeline/records.py` (the fields) and the stage contracts",
        "(`safer_instruct/pipeline/contract.py`, one `CONTRACT` per stage module) by",
        "`python -m safer_instruct.pipeline.records > docs/records.md`; `tests/test_pipeline_contract.py` fails",
        "when this page is out of date.",
        "",
        "## A source row (what collect reads)",
        "",
        *table(SOURCE),
        "",
        "## A record (what one stage passes to the next)",
        "",
        *table(
            RECORD, {"written by": lambda n: by(n, writers, "writes"), "read by": lambda n: by(n, readers, "reads")}
        ),
        "",
        "## The stages",
        "",
        "A stage's fingerprint is its upstream's, its name, its model's identity and what it covers: a change",
        "redoes it and every stage after it. A whole-set pass runs once over the stage's whole input.",
        "",
        "| stage | reads from | reads | writes | model | fingerprint covers | whole-set pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        whole = (s.whole_set.__doc__ or "").strip().split("\n")[0] if s.whole_set else "-"
        lines.append(
            f"| {s.name} | {s.upstream or 'the sources'} | {codes(s.reads)} | {codes(s.writes)} | "
            f"{s.model.what if s.model else '-'} | {'; '.join(c.what for c in s.covers)} | {whole} |"
        )
    lines += ["", "## A preference row (the dataset's columns)", "", *table(ROW), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from safer_instruct.pipeline.runner import STAGES

    print(schema_markdown(STAGES), end="")
