"""Talking to the Hub: the token, the release policy, and the push sequence every release follows.

The token comes from the usual Hugging Face sources (``HF_TOKEN`` or the token store written by
``hf auth login``) through ``huggingface_hub.get_token``; it is handed to ``HfApi`` and never
printed, logged or written. ``HF_ENDPOINT`` is read at call time, so a private Hub mirror works.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from safer_instruct.errors import SaferInstructError
from safer_instruct.hub.release_dir import MARKER

logger = logging.getLogger(__name__)
RepoType = Literal["dataset", "model", "space"]
UNGATED_REFUSAL = (
    "refusing to publish the dataset {what}: it holds harmful text (hate, self-harm, illegal and dangerous "
    "how-tos), and the method reverses easily into a harmful model, so access is reviewed by default "
    "(a private repo, then manual gating). Pass --allow-ungated as well if you really mean to let anyone "
    "download it without review; --visible makes the gated repo visible while keeping the review."
)


def hub_api() -> HfApi:
    """An ``HfApi`` holding the user's token; a clear error when there is none."""
    token = get_token()
    if not token:
        raise SaferInstructError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (needs write access)")
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


# never uploaded, whatever the allow-list: every dotfile (``.env``, ``.git*``, the kit's own marker, ...)
NEVER_UPLOADED = [".*", "*/.*"]


def check_repo_id(repo_id: str, what: str = "repo id") -> str:
    """``repo_id`` as ORG/NAME by huggingface_hub's own rules, checked before anything is written or sent."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise SaferInstructError(
            f"{what} {repo_id!r} is not a valid Hub repo id: {str(err).splitlines()[0]}"
        ) from None
    if repo_id.count("/") != 1:
        raise SaferInstructError(
            f"{what} {repo_id!r}: give it as ORG/NAME (your user name or an organisation, then the repo name)"
        )
    return repo_id


def check_release_flags(kind: RepoType, *, public: bool, no_gate: bool, allow_ungated: bool) -> None:
    """Refuse an ungated dataset release unless it is asked for twice; only datasets are gated."""
    if kind != "dataset":
        if public or no_gate or allow_ungated:
            raise SaferInstructError(
                f"--public, --no-gate and --allow-ungated apply to the gated dataset only; "
                f"a {kind} repo is created private, and --visible makes it public"
            )
        return
    if (public or no_gate) and not allow_ungated:
        what = "publicly without a gate" if public else "without a gate"
        raise SaferInstructError(UNGATED_REFUSAL.format(what=what))


@dataclass
class PushPlan:
    """What a push does, in order: create private, gate, upload, set variables, make visible."""

    folder: Path
    repo_id: str
    repo_type: RepoType
    gated: Literal["manual"] | None = "manual"
    visible: bool = False
    space_variables: dict[str, str] = field(default_factory=dict)
    allow_patterns: list[str] | None = None  # None: every file of the folder but NEVER_UPLOADED

    def steps(self) -> list[str]:
        """The operations in the order they run (printed by ``--dry-run``)."""
        steps = [
            f"create {self.repo_type} repo {self.repo_id} (private; an existing public repo is made private first)"
        ]
        if self.gated:
            steps.append(f"set gating to {self.gated} (every download request is reviewed), before any file lands")
        uploaded, left_out = self.files()
        steps.append(
            f"upload {len(uploaded)} files from {self.folder}"
            + (f" (left out, not on the release's allow-list: {', '.join(left_out)})" if left_out else "")
        )
        steps += [f"set Space variable {key}={value}" for key, value in self.space_variables.items()]
        steps.append("make the repo visible" if self.visible else "keep the repo private (--visible to show it)")
        return steps

    def files(self) -> tuple[list[str], list[str]]:
        """The folder's files that the upload sends, and those it leaves out (the marker aside)."""
        every = sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())
        uploaded = list(filter_repo_objects(every, allow_patterns=self.allow_patterns, ignore_patterns=NEVER_UPLOADED))
        return uploaded, [path for path in every if path not in uploaded and not path.startswith(MARKER)]


def push(plan: PushPlan, api: HfApi | None = None) -> str:
    """Run ``plan`` against the Hub; returns the repo URL. Errors name the repo and the server's message.

    The repo is private (and a dataset gated) before the first file lands, so an interrupted push never
    leaves anything public; running it again finishes the release.
    """
    api = api or hub_api()
    with hub_errors(f"pushing {plan.repo_type} {plan.repo_id}"):
        url = _create_private(api, plan)
        if plan.gated:
            api.update_repo_settings(plan.repo_id, repo_type=plan.repo_type, gated=plan.gated)
        api.upload_folder(
            folder_path=str(plan.folder),
            repo_id=plan.repo_id,
            repo_type=plan.repo_type,
            commit_message="Release with safer-instruct",
            allow_patterns=plan.allow_patterns,
            ignore_patterns=NEVER_UPLOADED,
        )
        for key, value in plan.space_variables.items():
            api.add_space_variable(plan.repo_id, key, value)
        if plan.visible:
            api.update_repo_settings(plan.repo_id, repo_type=plan.repo_type, private=False)
    return url


@contextmanager
def hub_errors(doing: str) -> Iterator[None]:
    """Turn a Hub HTTP error into a ``SaferInstructError`` saying what was being done and what the server said."""
    try:
        yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        message = (err.server_message or str(err).splitlines()[0]).strip()
        raise SaferInstructError(f"{doing} failed: HTTP {status}: {message}") from err


def _create_private(api: HfApi, plan: PushPlan) -> str:
    """Create the repo private; an existing public repo is made private (and says so) before anything is uploaded."""
    sdk = "gradio" if plan.repo_type == "space" else None
    try:
        return str(api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=True, space_sdk=sdk))
    except HfHubHTTPError as err:
        if err.response is None or err.response.status_code != 409:
            raise
    info = api.repo_info(plan.repo_id, repo_type=plan.repo_type)
    if not info.private:
        api.update_repo_settings(plan.repo_id, repo_type=plan.repo_type, private=True)
        logger.warning(
            "%s %s existed and was public: made it private before the upload%s",
            plan.repo_type,
            plan.repo_id,
            "" if plan.visible else " (it stays private; --visible shows it again once the release is in)",
        )
    else:
        logger.info("%s %s exists already (private); updating it", plan.repo_type, plan.repo_id)
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[plan.repo_type]
    return f"{api.endpoint}/{prefix}{plan.repo_id}"
