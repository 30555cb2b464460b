"""Helpers shared by the stages: stable ids, timestamps, fingerprints."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any


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
