"""Fresh virtualenvs and the kit installed into one from a wheel, as a user gets it.

A fresh virtualenv here sees the project venv's site-packages through a plain ``.pth`` path line (so torch and
the rest need no download; the index stays reachable for anything missing). Such a line processes no ``.pth``
of that folder, so the project's editable install of the kit is NOT importable there: the kit comes only from
what a test installs or copies.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fresh_venv(where: Path) -> Path:
    """A new virtualenv that sees the project venv's packages, but not its editable kit; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def kit_location(python: Path, cwd: Path) -> str:
    """Where ``import safer_instruct`` finds the kit for ``python`` run in ``cwd`` ('' when it does not)."""
    done = subprocess.run(
        [str(python), "-c", "import safer_instruct; print(safer_instruct.__file__)"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def install_kit_wheel(root: Path) -> Path:
    """Build a wheel of the checkout and install it (no deps) into a fresh venv under ``root``; returns its python."""
    source, wheels = root / "source", root / "wheels"  # a copy: the build leaves no build/ in the checkout
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "release"
        ),
    )
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    built = subprocess.run([*pip_wheel, str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    python = fresh_venv(root / "venv")
    wheel = next(wheels.glob("safer_instruct-*.whl"))
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python
