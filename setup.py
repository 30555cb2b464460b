"""Build hook: a wheel carries the checkout's demo data, configs, recipes, card templates and Space.

They stay where they are in the checkout; ``build_py`` copies them into ``safer_instruct/_kit/`` of the
build (the list is ``safer_instruct.resources.KIT_FILES``), where ``safer_instruct.resources.kit_path``
finds them once installed. Editable installs skip the copy: they read the checkout itself.
"""

import ast
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def kit_patterns() -> tuple[str, ...]:
    """``KIT_FILES`` from safer_instruct/resources.py, read without importing the kit (its deps may be missing)."""
    tree = ast.parse((ROOT / "safer_instruct" / "resources.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "KIT_FILES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("safer_instruct/resources.py defines no KIT_FILES")


class BuildWithKitFiles(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "safer_instruct" / "_kit"
        for pattern in kit_patterns():
            for path in sorted(ROOT.glob(pattern)):
                if path.is_file() and "__pycache__" not in path.parts:
                    (target / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.relative_to(ROOT))


setup(cmdclass={"build_py": BuildWithKitFiles})
