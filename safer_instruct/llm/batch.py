"""The OpenAI Batch API: one JSONL request file up, one batch, poll, answers down.

A batch is known by the SHA-256 of its request file. The ledger (the run's state in a build)
remembers which batch answers which file; the batch also carries the hash in its metadata, so a run
killed between creating a batch and recording it finds the batch again instead of paying twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any, Protocol

import openai

from safer_instruct.errors import SaferInstructError

log = logging.getLogger(__name__)
METADATA_KEY = "safer_instruct_requests"
PENDING = {"validating", "in_progress", "finalizing", "cancelling"}
USABLE = {"completed", "expired", "cancelled"}  # their output file holds whatever was answered
LOOKBACK = 100  # recent batches searched for one already submitted


class BatchLedger(Protocol):
    """Where a run keeps its batch ids, by request-file hash."""

    def batch_id(self, request_sha: str) -> str | None: ...

    def remember(self, request_sha: str, batch_id: str) -> None: ...

    def forget(self, request_sha: str) -> None: ...


class MemoryLedger:
    """A ledger for one process (outside a build)."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def batch_id(self, request_sha: str) -> str | None:
        return self.ids.get(request_sha)

    def remember(self, request_sha: str, batch_id: str) -> None:
        self.ids[request_sha] = batch_id

    def forget(self, request_sha: str) -> None:
        self.ids.pop(request_sha, None)


def request_file(endpoint: str, bodies: list[dict[str, Any]]) -> tuple[bytes, str]:
    """The JSONL request file (``custom_id`` = line number) and its SHA-256."""
    lines = [
        json.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": endpoint, "body": body}, sort_keys=True, ensure_ascii=False
        )
        for i, body in enumerate(bodies)
    ]
    payload = ("\n".join(lines) + "\n").encode("utf-8")
    return payload, hashlib.sha256(payload).hexdigest()


async def submit_batch(client: openai.AsyncOpenAI, payload: bytes, sha: str) -> str:
    """The id of the batch for this request file: one already submitted (by metadata), else a new one."""
    recent = await client.batches.list(limit=LOOKBACK)  # the first page: the most recent batches
    for batch in recent.data:
        if (batch.metadata or {}).get(METADATA_KEY) == sha and batch.status != "failed":
            log.info("batch %s already holds these requests (%s); not submitting again", batch.id, batch.status)
            return batch.id
    upload = await client.files.create(file=("requests.jsonl", payload, "application/jsonl"), purpose="batch")
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={METADATA_KEY: sha}
    )
    log.info("submitted batch %s (%d requests)", batch.id, payload.count(b"\n"))
    return batch.id


async def collect_batch(
    client: openai.AsyncOpenAI, batch_id: str, count: int, poll_s: float
) -> list[dict[str, Any] | None]:
    """Wait for the batch to end; each request's response body in order (None where it has none)."""
    batch = await client.batches.retrieve(batch_id)
    while batch.status in PENDING:
        counts = batch.request_counts
        log.info("batch %s: %s (%s of %d done)", batch_id, batch.status, counts.completed if counts else "?", count)
        await asyncio.sleep(poll_s)
        batch = await client.batches.retrieve(batch_id)
    if batch.status not in USABLE:
        errors = "; ".join(e.message or e.code or "" for e in (batch.errors.data or [])) if batch.errors else ""
        raise SaferInstructError(f"batch {batch_id} {batch.status}" + (f": {errors}" if errors else ""))
    answers: list[dict[str, Any] | None] = [None] * count
    if batch.output_file_id:
        text = (await client.files.content(batch.output_file_id)).text
        for line in filter(None, text.splitlines()):
            entry = json.loads(line)
            response = entry.get("response") or {}
            index = int(str(entry["custom_id"]).removeprefix("r"))
            if response.get("status_code") == 200 and 0 <= index < count:
                answers[index] = response["body"]
    return answers
