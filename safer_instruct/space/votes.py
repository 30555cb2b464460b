"""Votes on "which answer is better?": one JSON line each, optionally pushed to a Hub dataset."""

from __future__ import annotations

import json
import threading
import uuid
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CHOICES = {"base": "Base is better", "aligned": "Aligned is better", "tie": "Tie", "both_bad": "Both are bad"}


class VoteLog:
    """Append votes to a JSONL file; with ``repo_id``, a ``CommitScheduler`` uploads its folder.

    On the Hub every app instance writes its own ``<stem>-<id>.jsonl`` so that a restarted Space
    never overwrites the votes an earlier instance pushed. The token (``HF_TOKEN``, a Space secret)
    goes from huggingface_hub's token lookup straight to ``HfApi``; it is never shown or written.
    """

    def __init__(self, path: str | Path, repo_id: str | None = None, every_minutes: float = 10.0) -> None:
        path = Path(path)
        if repo_id:
            path = path.with_name(f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.repo_id = repo_id
        self._lock = threading.Lock()
        self.scheduler = None
        if repo_id:
            from huggingface_hub import CommitScheduler

            from safer_instruct.hub.client import hub_api

            self.scheduler = CommitScheduler(
                repo_id=repo_id,
                repo_type="dataset",
                folder_path=path.parent,
                path_in_repo="votes",
                every=every_minutes,
                private=True,
                allow_patterns=[path.name],
                hf_api=hub_api(),
            )

    def append(self, choice: str, turn: dict[str, Any]) -> dict[str, Any]:
        """Write one vote on ``turn`` (prompt, answers, settings, models); return the record."""
        if choice not in CHOICES:
            raise ValueError(f"unknown vote {choice!r}; expected one of {sorted(CHOICES)}")
        record = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "choice": choice, **turn}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        upload_lock = self.scheduler.lock if self.scheduler else nullcontext()
        with self._lock, upload_lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
        return record
