"""A persistent response cache (SQLite), and an LLM wrapper that asks the model only on a miss.

Keys hash the backend, model (with a fingerprint of local weights), prompt and sampling params,
so rerunning the same work makes zero model calls. Failed decisions are never cached.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from safer_instruct.errors import DamagedFileError
from safer_instruct.llm.base import LLM, Decision, Generation, Loglikelihood, Prompt, SamplingParams, check_labels

SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"


HASHED_BYTES = 128 * 2**20  # LoRA adapters and configs; full weights go by size and mtime


def model_fingerprint(path: str) -> str:
    """Names, sizes and mtimes of a local model folder's weight files, and the content of the small ones (adapters):
    retrained weights change the key, and two adapter checkpoints saved in the same second never share one."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    stats = sorted(
        (
            f.name,
            f.stat().st_size,
            int(f.stat().st_mtime),
            _content_hash(f) if f.stat().st_size <= HASHED_BYTES else "",
        )
        for f in folder.iterdir()
        if f.suffix in {".safetensors", ".bin", ".json"}
    )
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def _content_hash(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class ResponseCache:
    """Thread-safe key → JSON store; every ``put_many`` is one committed transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._readable():
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)
            self._db.execute("SELECT count(*) FROM responses").fetchone()

    @contextmanager
    def _readable(self) -> Iterator[None]:
        """A damaged database (at open or in any page read later) stops the run with the file and the way out."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
                raise
            raise DamagedFileError(
                f"{self.path}: the response cache is corrupt ({err}). Delete it (or move it aside) and rerun; "
                "finished pipeline results live in the run's state.sqlite and are not affected, "
                "only answers not stored there are asked again."
            ) from None

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with self._lock, self._readable():
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for key, value in self._db.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(value)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        now = time.time()
        with self._lock, self._readable(), self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                [(key, json.dumps(value), now) for key, value in items.items()],
            )

    def __len__(self) -> int:
        with self._lock, self._readable():
            return self._db.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CachedLLM(LLM):
    """Wraps a backend; ``misses`` counts prompts that reached the model."""

    def __init__(self, inner: LLM, cache: ResponseCache, identity: str | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.backend = inner.backend
        self.model_id = inner.model_id
        self.usage = inner.usage
        self.identity = identity or f"{inner.backend}:{inner.model_id}"
        self.hits = 0
        self.misses = 0

    def _lookup(self, keys: list[str]) -> tuple[dict[str, Any], list[int]]:
        found = self.cache.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        return found, missing

    def _through_cache(
        self,
        keys: list[str],
        compute: Callable[[list[int]], list[Any]],
        storable: Callable[[dict[str, Any]], bool] = lambda value: True,
    ) -> list[dict[str, Any]]:
        """Each key's value from the cache; ``compute(indices)`` makes the missing ones, the storable of which are kept."""
        found, missing = self._lookup(keys)
        if missing:
            fresh = {keys[i]: asdict(value) for i, value in zip(missing, compute(missing))}
            self.cache.put_many({key: value for key, value in fresh.items() if storable(value)})
            found.update(fresh)
        return [found[key] for key in keys]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        keys = [cache_key(self.identity, "generate", p, params.as_dict()) for p in prompts]
        values = self._through_cache(keys, lambda missing: self.inner.generate([prompts[i] for i in missing], params))
        return [Generation(**value) for value in values]

    def decide(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[Decision]:
        labels = check_labels(labels)
        keys = [cache_key(self.identity, "decide", p, list(labels)) for p in prompts]
        values = self._through_cache(
            keys,
            lambda missing: self.inner.decide([prompts[i] for i in missing], labels),
            storable=lambda value: value["label"] is not None,
        )  # failed decisions are retried
        return [Decision(**value) for value in values]

    def loglikelihood(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Loglikelihood]:
        keys = [cache_key(self.identity, "loglikelihood", p, c) for p, c in zip(prompts, continuations, strict=True)]
        values = self._through_cache(
            keys,
            lambda missing: self.inner.loglikelihood(
                [prompts[i] for i in missing], [continuations[i] for i in missing]
            ),
        )
        return [Loglikelihood(**value) for value in values]

    def hidden_states(self, prompts: Sequence[Prompt], layers: Sequence[int] | None = None):
        """Not cached: vectors are cheap to recompute and bulky to store."""
        return self.inner.hidden_states(prompts, layers)

    def close(self) -> None:
        self.inner.close()
