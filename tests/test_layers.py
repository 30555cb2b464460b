"""The package's imports point down its layers only: a module never imports a sibling layer or one above it.

The layers, from the bottom: the shared modules (config, errors, device, models, resources, prompts,
readers, refusal), then ``llm``, then ``pipeline``, ``training`` and ``evaluate`` side by side, then
``hub``, ``space``, ``demo`` and ``cli``. Every import counts, function-level ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "safer_instruct"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
SHARED = 0
LAYERS = {
    "": SHARED,
    "config": SHARED,
    "errors": SHARED,
    "device": SHARED,
    "models": SHARED,
    "resources": SHARED,
    "prompts": SHARED,
    "readers": SHARED,
    "refusal": SHARED,
    "llm": 1,
    "pipeline": 2,
    "training": 2,
    "evaluate": 2,
    "hub": 3,
    "space": 4,
    "demo": 5,
    "cli": 6,
}
# (importing file, imported module): the build trains the reversed model, so that stage runs training
ALLOWED = {("pipeline/reverse_model.py", "safer_instruct.training")}


def part_of(module: str) -> str:
    """The top-level part of the package a dotted module name belongs to ('' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from`` import names, a relative one resolved against the importing file's package."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    return ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))


def imported_modules(path: Path, package_dir: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of the package in a file; ``from safer_instruct import X`` counts as X."""
    package = ".".join((PACKAGE, *path.relative_to(package_dir).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and absolute(node, package).split(".")[0] == PACKAGE:
            base = absolute(node, package)
            if base != PACKAGE:
                found.append((node.lineno, base))
                continue
            for alias in node.names:  # a part (`models`) or a name of the package itself (`__version__`)
                found.append((node.lineno, f"{PACKAGE}.{alias.name}" if alias.name in LAYERS else PACKAGE))
    return found


def violations(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every import that points sideways or up, as ``file:line imports module (layer a -> layer b)``."""
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir).as_posix()
        own = relative.split("/")[0].removesuffix(".py").removeprefix("__init__")
        if own not in LAYERS:
            problems.append(f"{relative}: part {own!r} has no layer in tests/test_layers.py")
            continue
        for line, module in imported_modules(path, package_dir):
            target = part_of(module)
            if target not in LAYERS:
                problems.append(f"{relative}:{line} imports {module}: part {target!r} has no layer")
            elif target == own or LAYERS[target] < LAYERS[own] or (LAYERS[target] == LAYERS[own] == SHARED):
                continue
            elif not any(relative == file and (module + ".").startswith(allowed + ".") for file, allowed in ALLOWED):
                problems.append(
                    f"{relative}:{line} imports {module} ({own or PACKAGE} layer {LAYERS[own]}"
                    f" -> {target} layer {LAYERS[target]})"
                )
    return problems


def test_imports_point_down_the_layers() -> None:
    problems = violations()
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_each_kind_of_wrong_import_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    """Function-level and relative imports count; shared modules may import each other; the one exception holds."""
    files = {
        "pipeline/stage.py": "def run():\n    from safer_instruct.evaluate import judge\n",
        "pipeline/induce.py": "from safer_instruct.training.data import shape_rows\n",
        "pipeline/reverse_model.py": "def train():\n    from safer_instruct.training import train\n",
        "llm.py": "from safer_instruct import demo\nfrom safer_instruct import errors\n",
        "errors.py": "from safer_instruct.config import StrictModel\n",
        "readers.py": "from safer_instruct.evaluate.sets import read_records\n",
        "hub/space.py": "from ..space import app\nfrom .. import cli\n",
        "extra.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert violations(tmp_path) == [
        "extra.py: part 'extra' has no layer in tests/test_layers.py",
        "hub/space.py:1 imports safer_instruct.space (hub layer 3 -> space layer 4)",
        "hub/space.py:2 imports safer_instruct.cli (hub layer 3 -> cli layer 6)",
        "llm.py:1 imports safer_instruct.demo (llm layer 1 -> demo layer 5)",
        "pipeline/induce.py:1 imports safer_instruct.training.data (pipeline layer 2 -> training layer 2)",
        "pipeline/stage.py:2 imports safer_instruct.evaluate (pipeline layer 2 -> evaluate layer 2)",
        "readers.py:1 imports safer_instruct.evaluate.sets (readers layer 0 -> evaluate layer 2)",
    ]
