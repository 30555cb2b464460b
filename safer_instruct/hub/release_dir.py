"""The local repo folder a release is written into before anything is pushed.

The kit replaces only a folder it wrote itself: ``fresh_release_dir`` leaves a marker file whose
manifest (``seal_release_dir``) lists every file of the finished folder with its size and
modification time. A folder holding any other file or a changed file is refused, naming the folder
and the files; so is the current working folder and any folder above it. A marked folder whose files
were never recorded (an interrupted write, or an older kit's release) is moved aside, not deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from safer_instruct.errors import SaferInstructError

MARKER = ".safer-instruct-release"  # marks a folder this module wrote (and may rewrite); never uploaded
SHOWN = 5  # foreign files named in an error
logger = logging.getLogger(__name__)


def fresh_release_dir(local_dir: str | Path, repo_id: str) -> Path:
    """An empty folder for the release; only a sealed folder of an earlier release, unchanged, is replaced."""
    folder = Path(local_dir)
    if folder.exists():
        if not folder.is_dir():
            raise SaferInstructError(f"{folder}: exists and is not a folder; choose another --local-dir")
        here = Path.cwd().resolve()
        if here == folder.resolve() or folder.resolve() in here.parents:
            raise SaferInstructError(
                f"{folder}: is the current folder or holds it; the kit replaces a release folder "
                "whole, so run from elsewhere or choose another --local-dir"
            )
        if any(folder.iterdir()):
            if _recorded(folder):
                shutil.rmtree(folder)
            else:
                aside = _free_name(folder.with_name(f"{folder.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}"))
                folder.rename(aside)
                logger.warning(
                    "%s: an interrupted or older release whose files the kit did not record; moved it to %s "
                    "(delete that once nothing in it is yours)",
                    folder,
                    aside,
                )
    folder.mkdir(parents=True, exist_ok=True)
    _write_marker(folder, {"repo_id": repo_id, "files": None})
    return folder


def seal_release_dir(folder: Path) -> None:
    """Record every file of the finished release folder in its marker, so a later release may replace it."""
    marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    marker["files"] = {path: list(stat) for path, stat in _files(folder).items()}
    _write_marker(folder, marker)


def _recorded(folder: Path) -> bool:
    """True when the marker's manifest matches the files exactly, False for a marked folder without a manifest;
    an error for any other folder."""
    try:
        manifest = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("files")
    except FileNotFoundError:
        raise SaferInstructError(
            f"{folder}: not empty and not written by `safer-instruct publish`; choose another --local-dir"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        manifest = None
    if manifest is None:
        return False
    foreign = sorted(path for path, stat in _files(folder).items() if manifest.get(path) != list(stat))
    if foreign:
        shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
        raise SaferInstructError(
            f"{folder}: holds files the kit did not write or that changed since ({shown}); "
            "nothing was deleted: move them away or choose another --local-dir"
        )
    return True


def _free_name(path: Path) -> Path:
    number, free = 1, path
    while free.exists():
        free, number = path.with_name(f"{path.name}-{number}"), number + 1
    return free


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` but the marker: relative path -> (size, mtime in ns); links count as files."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        relative = path.relative_to(folder).as_posix()
        if relative not in (MARKER, f"{MARKER}.partial"):
            stat = path.lstat()
            found[relative] = (stat.st_size, stat.st_mtime_ns)
    return found


def _write_marker(folder: Path, content: dict) -> None:
    partial = folder / f"{MARKER}.partial"
    partial.write_text(json.dumps(content, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, folder / MARKER)


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
