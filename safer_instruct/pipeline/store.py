"""Run state in ``<run>/state.sqlite``: per stage, one row per input item, committed per batch.

An item is ``done`` (with its outputs and drop reasons) or ``failed`` (with its error; retried on the
next run). A finished stage keeps its counts (the funnel's figures), and whether it finished on a complete
upstream (``settled``: a rerun skips it without reading its items); any new result of the stage resets both.
A stage's fingerprint chains the settings of every stage up to it: when it changes, that stage's rows are
cleared and recomputed (the response cache makes unchanged model calls free).
One build at a time holds a run directory (``run_lock``); a damaged store stops the run before anything
in the run directory is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from safer_instruct.errors import DamagedFileError, SaferInstructError

SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, complete INTEGER NOT NULL DEFAULT 0,
    wall_s REAL NOT NULL DEFAULT 0, model_s REAL NOT NULL DEFAULT 0, load_s REAL NOT NULL DEFAULT 0,
    usage TEXT NOT NULL DEFAULT '{}', info TEXT NOT NULL DEFAULT '{}',
    settled INTEGER NOT NULL DEFAULT 0, counts TEXT, written TEXT
);
CREATE TABLE IF NOT EXISTS items (
    stage TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, category TEXT NOT NULL,
    status TEXT NOT NULL, outputs TEXT NOT NULL, drops TEXT NOT NULL, error TEXT,
    PRIMARY KEY (stage, key)
);
CREATE INDEX IF NOT EXISTS items_in_order ON items (stage, seq, key);
CREATE TABLE IF NOT EXISTS batches (request_sha TEXT PRIMARY KEY, batch_id TEXT NOT NULL);
"""
ADDED_COLUMNS = {  # stage columns newer than the first store: added to an older state.sqlite when it is opened
    "settled": "INTEGER NOT NULL DEFAULT 0",
    "counts": "TEXT",
    "written": "TEXT",
}
PAGE = 1000  # results read per query when a stage is walked in order
USAGE_KEYS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")
LOCK_FILE = "build.lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``<run>/build.lock`` for one build; a second build of the same run dir is refused, naming the holder.

    The lock is the operating system's (``flock``): it goes with the process, so a killed build leaves none behind.
    """
    handle = (run_dir / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = "; ".join(handle.read().split("\n")).strip("; ") or "a process that is just starting"
        handle.close()
        raise SaferInstructError(
            f"{run_dir}: another build is running in this run dir ({holder}); "
            "wait for it to finish, or use another --run-dir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        yield
    finally:
        handle.close()


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
    settled: bool = False  # complete, and finished when every stage before it was complete: nothing left to redo
    counts: dict[str, dict[str, Any]] | None = None  # per category: in, out, failed, dropped (None: count the items)
    written: dict[str, Any] | None = None  # what the stage last wrote to disk (assemble: the dataset files)


class RunStore:
    """The per-run SQLite store; every write is one committed transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            damage = [row[0] for row in self.db.execute("PRAGMA quick_check")]  # every page, before any write
            if damage != ["ok"]:
                raise sqlite3.DatabaseError(damage[0])
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(
                "PRAGMA synchronous=NORMAL"
            )  # WAL: a killed process loses no committed batch; no fsync per commit
            self.db.executescript(SCHEMA)
            self._add_columns()
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
                raise
            raise DamagedFileError(
                f"{self.path}: the run state is unreadable, the file is damaged ({err}); move it aside "
                f"(mv {self.path} {self.path}.damaged) and rerun: the run starts over, with the model answers "
                "it already has served from cache.sqlite"
            ) from None

    def close(self) -> None:
        self.db.close()

    def _add_columns(self) -> None:
        """Bring a state.sqlite from an older version up to date (the new columns start empty)."""
        present = {row[1] for row in self.db.execute("PRAGMA table_info(stages)")}
        with self.db:
            for name, kind in ADDED_COLUMNS.items():
                if name not in present:
                    self.db.execute(f"ALTER TABLE stages ADD COLUMN {name} {kind}")

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
            "SELECT name, fingerprint, complete, wall_s, model_s, load_s, usage, info, settled, counts, written "
            "FROM stages WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise KeyError(name)
        loaded = lambda text: None if text is None else json.loads(text)  # noqa: E731
        return StageRecord(
            row[0],
            row[1],
            bool(row[2]),
            row[3],
            row[4],
            row[5],
            json.loads(row[6]),
            json.loads(row[7]),
            bool(row[8]),
            loaded(row[9]),
            loaded(row[10]),
        )

    def finish_stage(
        self, name: str, complete: bool, info: dict[str, Any] | None = None, settled: bool = False
    ) -> None:
        """Mark the stage (in)complete and keep its counts; ``settled``: every stage before it is complete."""
        counts = json.dumps(self.tally(name))
        with self.db:
            self.db.execute(
                "UPDATE stages SET complete = ?, settled = ?, counts = ? WHERE name = ?",
                (int(complete), int(complete and settled), counts, name),
            )
            if info is not None:
                self.db.execute("UPDATE stages SET info = ? WHERE name = ?", (json.dumps(info), name))

    def set_written(self, name: str, written: dict[str, Any]) -> None:
        """Remember what the stage wrote to disk (reset by the stage's next new result)."""
        with self.db:
            self.db.execute("UPDATE stages SET written = ? WHERE name = ?", (json.dumps(written), name))

    def add_cost(
        self, name: str, wall_s: float, model_s: float, load_s: float, usage: dict[str, dict[str, float]]
    ) -> None:
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
            (
                stage,
                r.key,
                r.seq,
                r.category,
                r.status,
                json.dumps(r.outputs, ensure_ascii=False),
                json.dumps(r.drops),
                r.error,
            )
            for r in results
        ]
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO items (stage, key, seq, category, status, outputs, drops, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self.db.execute("UPDATE stages SET settled = 0, counts = NULL, written = NULL WHERE name = ?", (stage,))

    def done_keys(self, stage: str) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM items WHERE stage = ? AND status = 'done'", (stage,))}

    def iter_results(self, stage: str) -> Iterator[ItemResult]:
        """Every stored result of a stage, in input order, read a page at a time: memory stays flat, and
        writes may come between pages (no query stays open across them)."""
        after: tuple[int, str] = (-1, "")
        while rows := self.db.execute(
            "SELECT key, seq, category, outputs, drops, error FROM items WHERE stage = ? AND (seq, key) > (?, ?) "
            "ORDER BY seq, key LIMIT ?",
            (stage, *after, PAGE),
        ).fetchall():
            yield from (ItemResult(k, s, c, json.loads(o), json.loads(d), e) for k, s, c, o, d, e in rows)
            after = (rows[-1][1], rows[-1][0])

    def outputs(self, stage: str) -> list[dict[str, Any]]:
        """The records a stage passed on, in input order (the next stage's input)."""
        return list(self.iter_outputs(stage))

    def iter_outputs(self, stage: str) -> Iterator[dict[str, Any]]:
        """``outputs``, a page at a time."""
        return (record for result in self.iter_results(stage) if not result.error for record in result.outputs)

    def counts(self, stage: str) -> tuple[int, int]:
        """How many results a stage has stored, and how many of them failed."""
        total, failed = self.db.execute(
            "SELECT count(*), coalesce(sum(status = 'failed'), 0) FROM items WHERE stage = ?", (stage,)
        ).fetchone()
        return total, failed

    def tally(self, stage: str) -> dict[str, dict[str, Any]]:
        """Per category: items in, records out, items failed, drop reasons counted (of done items); counted in SQLite."""
        per_category = {
            category: {"in": n, "out": out, "failed": failed, "dropped": {}}
            for category, n, failed, out in self.db.execute(
                "SELECT category, count(*), coalesce(sum(status = 'failed'), 0), "
                "coalesce(sum(CASE WHEN status = 'done' THEN json_array_length(outputs) ELSE 0 END), 0) "
                "FROM items WHERE stage = ? GROUP BY category ORDER BY category",
                (stage,),
            )
        }
        for category, reason, n in self.db.execute(
            "SELECT category, drop_reason.value, count(*) FROM items, json_each(items.drops) AS drop_reason "
            "WHERE stage = ? AND status = 'done' GROUP BY category, drop_reason.value ORDER BY category, drop_reason.value",
            (stage,),
        ):
            per_category[category]["dropped"][reason] = n
        return per_category

    def failures(self, stage: str, limit: int) -> list[tuple[str, str]]:
        """``(key, error)`` of the first ``limit`` failed items of a stage, in input order."""
        return self.db.execute(
            "SELECT key, error FROM items WHERE stage = ? AND status = 'failed' ORDER BY seq, key LIMIT ?",
            (stage, limit),
        ).fetchall()

    # -- Batch API ids (the ledger an OpenAI backend with ``batch_api`` keeps them in) -------------
    def batch_id(self, request_sha: str) -> str | None:
        row = self.db.execute("SELECT batch_id FROM batches WHERE request_sha = ?", (request_sha,)).fetchone()
        return row[0] if row else None

    def remember(self, request_sha: str, batch_id: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO batches (request_sha, batch_id) VALUES (?, ?)", (request_sha, batch_id)
            )

    def forget(self, request_sha: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM batches WHERE request_sha = ?", (request_sha,))
