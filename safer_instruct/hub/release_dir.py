"""The local repo folder a release is written into before anything is pushed."""

from __future__ import annotations

import shutil
from pathlib import Path

from safer_instruct.errors import SaferInstructError

MARKER = ".safer-instruct-release"  # marks a folder this module wrote (and may rewrite); never uploaded


def fresh_release_dir(local_dir: str | Path, repo_id: str) -> Path:
    """An empty folder for the release; a folder written by an earlier release is replaced, any other refused."""
    folder = Path(local_dir)
    if folder.exists():
        if not folder.is_dir():
            raise SaferInstructError(f"{folder}: exists and is not a folder")
        if any(folder.iterdir()) and not (folder / MARKER).is_file():
            raise SaferInstructError(f"{folder}: not empty and not written by `safer-instruct publish`; choose another --local-dir")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(f"{repo_id}\n", encoding="utf-8")
    return folder


def default_local_dir(kind: str, source: Path | None, repo_id: str) -> Path:
    """``<run>/release/<kind>`` when ``source`` lies in a run directory, else ``release/<kind>-<name>``."""
    run_dir = find_run_dir(source) if source else None
    if run_dir:
        return run_dir / "release" / kind
    return Path("release") / f"{kind}-{repo_id.split('/')[-1]}"


def find_run_dir(path: Path) -> Path | None:
    """The run directory holding ``path``: the folder itself when it has ``dataset/``, or the parent of ``models/``."""
    path = path.resolve()
    if (path / "dataset").is_dir():
        return path
    for parent in path.parents:
        if parent.name == "models":
            return parent.parent
    return None
