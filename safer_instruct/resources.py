"""The kit's files outside the Python package: demo data, pipeline configs, recipes, card templates, the Space.

In a checkout they live at the repository root (``builders/``, ``training/``, ``cards/``, ``spaces/``). A built
wheel carries copies of them in ``safer_instruct/_kit/`` (``setup.py`` puts them there), so an installed kit
finds them wherever it runs. Paths are written as in the checkout (``builders/data/reverse_pairs.jsonl``);
``kit_path`` looks in the checkout (or, for ``safer_instruct/...``, the installed package), then in the
wheel's copy; ``local_or_kit`` first in the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT_DIR = PACKAGE_DIR.parent  # the checkout's root, or site-packages when installed
KIT_DIR = PACKAGE_DIR / "_kit"
# what a wheel carries into _kit/, as glob patterns relative to the checkout's root (setup.py reads this)
KIT_FILES = (
    "builders/configs/*.yaml",
    "builders/data/*",
    "training/*.py",
    "training/recipes/*/*.yaml",
    "training/accelerate/*.yaml",
    "training/chat_templates/*",
    "cards/*.j2",
    "spaces/compare/*",
)


def kit_path(relative: str | Path) -> Path:
    """A kit file written as in the checkout: the checkout's (or the installed package's) copy, else the wheel's.

    One found nowhere comes back as the checkout's path (the caller's error then names it).
    """
    for root in (ROOT_DIR, KIT_DIR):
        if (root / relative).exists():
            return root / relative
    return ROOT_DIR / relative


def local_or_kit(relative: str | Path) -> Path:
    """A path as given when it exists here (or is absolute), else the kit's copy when it has one."""
    path = Path(relative)
    if path.is_absolute() or path.exists():
        return path
    found = kit_path(path)
    return found if found.exists() else path


def use_kit_files(config: BaseModel) -> BaseModel:
    """Point every relative path in a config that is missing here at the kit's copy, in place.

    A string with a ``/`` that is no path here but names a kit file is replaced by that file's path; anything
    else (model names, Hub ids, run folders) stays as it is. Returns ``config``.
    """
    for name in type(config).model_fields:
        setattr(config, name, _resolved(getattr(config, name)))
    return config


def _resolved(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return use_kit_files(value)
    if isinstance(value, list):
        return [_resolved(item) for item in value]
    if isinstance(value, dict):
        return {key: _resolved(item) for key, item in value.items()}
    if isinstance(value, str) and "/" in value:
        found = local_or_kit(value)
        return value if found == Path(value) else str(found)
    return value
