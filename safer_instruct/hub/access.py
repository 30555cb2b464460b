"""Access requests to the gated dataset: list, accept, reject, grant, and a policy-driven review.

Every decision is written to a JSONL audit log before it is sent to the Hub (``event: intent``) and
again after (``applied`` or ``failed``, with the error); a request a review leaves for a person is
logged once (``left for a person``). Each entry holds the time, repo, user, request id, decision,
reason, who decided (policy or manual) and the SHA-256 of the policy, and is flushed to disk
(``fsync``) before the kit goes on: a log that cannot be written stops the command before any
decision reaches the Hub. The log holds Hub usernames only, no e-mail addresses or form answers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

from huggingface_hub import HfApi
from pydantic import Field

from safer_instruct.config import StrictModel, load_config
from safer_instruct.errors import SaferInstructError
from safer_instruct.hub.client import check_repo_id, hub_api, hub_errors
from safer_instruct.hub.gating import AFFILIATION, AGREEMENT, ALLOWED_USES, COUNTRY, INTENDED_USE, NAME

Status = Literal["pending", "accepted", "rejected"]
DecisionKind = Literal["accept", "reject", "skip", "grant"]
TICKED = {"true", "on", "yes", "1", "checked", "agreed"}


class AccessPolicy(StrictModel):
    """How ``access review`` decides a pending request from its form answers (field names as in the form)."""

    required: list[str] = Field(default_factory=lambda: [NAME, AFFILIATION, COUNTRY])
    min_chars: int = Field(2, ge=1, description="a required answer needs at least this many non-space characters")
    allowed: dict[str, list[str]] = Field(default_factory=lambda: {INTENDED_USE: list(ALLOWED_USES)})
    agreements: list[str] = Field(default_factory=lambda: [AGREEMENT])
    for_a_person: dict[str, list[str]] = Field(default_factory=lambda: {INTENDED_USE: ["Other"]})
    blocked_users: list[str] = Field(default_factory=list)
    on_failure: Literal["reject", "skip"] = "reject"

    def fingerprint(self) -> str:
        """SHA-256 of the policy's content (not its formatting), recorded with each decision."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


@dataclass
class Decision:
    """What happens to one access request, and why."""

    user: str | None
    request_id: str | None
    decision: DecisionKind
    reason: str


def load_policy(path: str | Path | None) -> AccessPolicy:
    """The policy from a YAML file (unknown keys are errors), or the default one matching the card's form."""
    return load_config(AccessPolicy, path) if path else AccessPolicy()


def decide(fields: dict[str, Any] | None, user: str | None, policy: AccessPolicy) -> tuple[DecisionKind, str]:
    """The decision for one request's form answers: accept, reject, or skip (leave it to a person)."""
    if user and user in policy.blocked_users:
        return "reject", "user is on the blocked list"
    answers = {str(key).strip().lower(): value for key, value in (fields or {}).items()}

    def answer(name: str) -> Any:
        return answers.get(name.strip().lower())

    failures = []
    if not answers:
        failures.append("the access form was not filled in")
    else:
        failures += [
            f"no {name.lower()} given"
            for name in policy.required
            if len(str(answer(name) or "").strip()) < policy.min_chars
        ]
        failures += [
            f"terms not agreed ({name[:40]}...)"
            for name in policy.agreements
            if str(answer(name)).strip().lower() not in TICKED
        ]
        for name, allowed in policy.allowed.items():
            value = str(answer(name) or "").strip()
            if value not in allowed and value not in policy.for_a_person.get(name, []):
                failures.append(
                    f"{name.lower()} {value!r} is not one of the allowed uses" if value else f"no {name.lower()} given"
                )
    if failures:
        return policy.on_failure, "; ".join(failures)
    for name, values in policy.for_a_person.items():
        if str(answer(name) or "").strip() in values:
            return "skip", f"{name.lower()} is {answer(name)!r}: left for a person to review"
    return "accept", "all policy checks passed"


def list_requests(
    repo_id: str, status: Status = "pending", *, repo_type: str = "dataset", api: HfApi | None = None
) -> list[Any]:
    """The access requests of ``repo_id`` with ``status`` (``huggingface_hub.AccessRequest`` objects)."""
    check_repo_id(repo_id)
    api = api or hub_api()
    method = {
        "pending": api.list_pending_access_requests,
        "accepted": api.list_accepted_access_requests,
        "rejected": api.list_rejected_access_requests,
    }[status]
    with hub_errors(f"listing {status} access requests of {repo_id}"):
        return list(method(repo_id, repo_type=repo_type))


def handle(
    repo_id: str,
    user: str,
    decision: Literal["accept", "reject", "grant"],
    *,
    reason: str | None = None,
    audit_log: str | Path,
    repo_type: str = "dataset",
    api: HfApi | None = None,
) -> Decision:
    """Accept, reject (a reason is required) or grant access for ``user`` by hand; logged as a manual decision."""
    check_repo_id(repo_id)
    if decision == "reject" and not (reason and reason.strip()):
        raise SaferInstructError('a rejection needs a reason (--reason "..."); the requester sees it')
    result = Decision(user=user, request_id=None, decision=decision, reason=reason or "decided by hand")
    with AuditLog(audit_log, repo_id, by="manual", policy_sha256=None) as log:
        api = api or hub_api()

        def apply() -> None:
            with hub_errors(f"{decision} access of {user} to {repo_id}"):
                if decision == "accept":
                    api.accept_access_request(repo_id, user, repo_type=repo_type)
                elif decision == "reject":
                    api.reject_access_request(repo_id, user, repo_type=repo_type, rejection_reason=reason)
                else:
                    api.grant_access(repo_id, user, repo_type=repo_type)

        log.apply(result, apply)
    return result


def review(
    repo_id: str,
    policy: AccessPolicy,
    *,
    audit_log: str | Path,
    dry_run: bool = False,
    repo_type: str = "dataset",
    api: HfApi | None = None,
) -> list[Decision]:
    """Decide every pending request by ``policy``; unless ``dry_run``, log and apply each decision."""
    check_repo_id(repo_id)
    log = None if dry_run else AuditLog(audit_log, repo_id, by="policy", policy_sha256=policy.fingerprint())
    try:
        api = api or hub_api()
        decisions = []
        for request in list_requests(repo_id, "pending", repo_type=repo_type, api=api):
            kind, reason = decide(request.fields, request.username, policy)
            decision = Decision(user=request.username, request_id=request.request_id, decision=kind, reason=reason)
            decisions.append(decision)
            if log is not None:
                log.apply(decision, _applier(api, repo_id, repo_type, request, decision))
        return decisions
    finally:
        if log is not None:
            log.close()


def _applier(api: HfApi, repo_id: str, repo_type: str, request: Any, decision: Decision) -> Callable[[], None] | None:
    """The Hub call that applies a policy decision (None for a request left to a person)."""
    if decision.decision == "skip":
        return None
    who = {"user": request.username} if request.username else {"request_id": request.request_id}

    def apply() -> None:
        with hub_errors(f"{decision.decision} access request {request.request_id} on {repo_id}"):
            if decision.decision == "accept":
                api.accept_access_request(repo_id, repo_type=repo_type, **who)
            else:
                api.reject_access_request(repo_id, repo_type=repo_type, rejection_reason=decision.reason, **who)

    return apply


class AuditLog:
    """The JSONL audit log of one command, opened before any Hub call; every entry is flushed and fsynced."""

    def __init__(self, path: str | Path, repo_id: str, *, by: str, policy_sha256: str | None) -> None:
        self.path, self.repo_id, self.by, self.policy_sha256 = Path(path), repo_id, by, policy_sha256
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as err:
            raise SaferInstructError(
                f"{self.path}: the audit log cannot be written ({err.strerror or err}); nothing was sent to the Hub"
            ) from None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # every entry was already flushed and fsynced (or its failure reported)

    def apply(self, decision: Decision, apply: Callable[[], None] | None) -> None:
        """Log the intent, run ``apply`` (the Hub call), log its outcome; None: nothing to apply (left to a person)."""
        if apply is None:
            self.write(decision, "left for a person", "nothing was sent to the Hub for this request")
            return
        self.write(decision, "intent", "nothing was sent to the Hub for this decision")
        try:
            apply()
        except Exception as err:
            self.write(
                decision, "failed", "the decision failed on the Hub as well", error=str(err) or type(err).__name__
            )
            raise
        self.write(
            decision,
            "applied",
            f"the {decision.decision} of {decision.user or decision.request_id} WAS applied "
            "on the Hub; only its intent is in the log",
        )

    def write(self, decision: Decision, event: str, consequence: str, **extra: str) -> None:
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "repo": self.repo_id,
            **asdict(decision),
            "by": self.by,
            "policy_sha256": self.policy_sha256,
            "event": event,
            **extra,
        }
        try:
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise SaferInstructError(
                f"{self.path}: the audit log cannot be written ({err.strerror or err}); {consequence}"
            ) from None


def default_audit_log(repo_id: str) -> Path:
    return Path("runs") / "access" / f"{repo_id.replace('/', '--')}.jsonl"
