"""Run state in ``<run>/state.sqlite``: per stage, one row per input item, committed per batch.

An item is ``done`` (with its outputs and drop reasons) or ``failed`` (with its error; retried on the
next run). A stage's fingerprint chains the settings of every stage up to it: when it changes, that
stage's rows are cleared and recomputed (the response cache makes unchanged model calls free).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from safer_instruct.errors import SaferInstructError

SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, complete INTEGER NOT NULL DEFAULT 0,
    wall_s REAL NOT NULL DEFAULT 0, model_s REAL NOT NULL DEFAULT 0, load_s REAL NOT NULL DEFAULT 0,
    usage TEXT NOT NULL DEFAULT '{}', info TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS items (
    stage TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, category TEXT NOT NULL,
    status TEXT NOT NULL, outputs TEXT NOT NULL, drops TEXT NOT NULL, error TEXT,
    PRIMARY KEY (stage, key)
);
"""
USAGE_KEYS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


@dataclass
class ItemResult:
    """What a stage made of one input item: outputs (records) and drop reasons, or an error."""

    key: str
    seq: int
    category: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error else "done"


@dataclass
class StageRecord:
    """A stage's bookkeeping row."""

    name: str
    fingerprint: str
    complete: bool
    wall_s: float
    model_s: float
    load_s: float
    usage: dict[str, dict[str, float]]
    info: dict[str, Any]


class RunStore:
    """The per-run SQLite store; every write is one committed transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise SaferInstructError(f"{self.path}: the run state is unreadable ({err}); use a new --run-dir") from err

    def close(self) -> None:
        self.db.close()

    # -- stages -----------------------------------------------------------------------------------
    def open_stage(self, name: str, fingerprint: str) -> StageRecord:
        """The stage's record; its rows are cleared first if its fingerprint changed."""
        row = self.db.execute("SELECT fingerprint FROM stages WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] != fingerprint:
            with self.db:
                self.db.execute("DELETE FROM items WHERE stage = ?", (name,))
                self.db.execute("DELETE FROM stages WHERE name = ?", (name,))
                self.db.execute("INSERT INTO stages (name, fingerprint) VALUES (?, ?)", (name, fingerprint))
        return self.stage(name)

    def stage(self, name: str) -> StageRecord:
        row = self.db.execute(
            "SELECT name, fingerprint, complete, wall_s, model_s, load_s, usage, info FROM stages WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise KeyError(name)
        return StageRecord(row[0], row[1], bool(row[2]), row[3], row[4], row[5], json.loads(row[6]), json.loads(row[7]))

    def finish_stage(self, name: str, complete: bool, info: dict[str, Any] | None = None) -> None:
        with self.db:
            self.db.execute("UPDATE stages SET complete = ? WHERE name = ?", (int(complete), name))
            if info is not None:
                self.db.execute("UPDATE stages SET info = ? WHERE name = ?", (json.dumps(info), name))

    def add_cost(self, name: str, wall_s: float, model_s: float, load_s: float, usage: dict[str, dict[str, float]]) -> None:
        """Add one run's time and per-model usage to the stage's totals (summed over resumed runs)."""
        totals = self.stage(name).usage
        for model, spent in usage.items():
            entry = totals.setdefault(model, dict.fromkeys(USAGE_KEYS, 0))
            for key in USAGE_KEYS:
                entry[key] = round(entry.get(key, 0) + spent.get(key, 0), 6)
        with self.db:
            self.db.execute(
                "UPDATE stages SET wall_s = wall_s + ?, model_s = model_s + ?, load_s = load_s + ?, usage = ? WHERE name = ?",
                (wall_s, model_s, load_s, json.dumps(totals), name),
            )

    # -- items ------------------------------------------------------------------------------------
    def record(self, stage: str, results: Iterable[ItemResult]) -> None:
        """Store one batch of results in a single transaction."""
        rows = [
            (stage, r.key, r.seq, r.category, r.status, json.dumps(r.outputs, ensure_ascii=False), json.dumps(r.drops), r.error)
            for r in results
        ]
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO items (stage, key, seq, category, status, outputs, drops, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def done_keys(self, stage: str) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM items WHERE stage = ? AND status = 'done'", (stage,))}

    def results(self, stage: str) -> list[ItemResult]:
        """Every stored result of a stage, in input order."""
        rows = self.db.execute(
            "SELECT key, seq, category, outputs, drops, error FROM items WHERE stage = ? ORDER BY seq, key", (stage,)
        )
        return [ItemResult(k, s, c, json.loads(o), json.loads(d), e) for k, s, c, o, d, e in rows]

    def outputs(self, stage: str) -> list[dict[str, Any]]:
        """The records a stage passed on, in input order (the next stage's input)."""
        return [record for result in self.results(stage) if not result.error for record in result.outputs]
