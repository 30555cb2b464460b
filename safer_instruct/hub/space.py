"""The Space release: ``spaces/compare/`` with README YAML naming the two models and the dataset.

The Space runs the kit, which no package index has: the kit's own Python package is copied into the
Space repo (``safer_instruct/`` next to ``app.py``, first on the app's import path), and
``requirements.txt`` lists the kit's dependencies, all from the package index. (A wheel required by
relative path would not do: the Hub installs ``requirements.txt`` before the repo's files are in place.)
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData

from safer_instruct.errors import SaferInstructError
from safer_instruct.hub.cards import markdown_table, template_path
from safer_instruct.hub.release_dir import fresh_release_dir
from safer_instruct.resources import PACKAGE_DIR, kit_path

SPACE_SOURCE = kit_path("spaces/compare")
SKIPPED_PARTS = {"__pycache__", ".gradio", "flagged", "runs"}
KIT_PACKAGE = "safer_instruct"
KIT_SKIPPED = {"__pycache__", "_kit"}  # _kit: the wheel's demo data, recipes and templates; the app needs none
SDK_PROVIDED = {"gradio"}  # the Space's SDK installs gradio at the README's sdk_version
REQUIREMENTS = "requirements.txt"


def space_variables(base_model: str, aligned_model: str) -> dict[str, str]:
    """The Space variables the comparison app reads its models from."""
    return {"BASE_MODEL": base_model, "ALIGNED_MODEL": aligned_model}


def write_space_repo(
    repo_id: str,
    local_dir: str | Path,
    *,
    base_model: str,
    aligned_model: str,
    dataset_id: str | None = None,
    source_dir: str | Path = SPACE_SOURCE,
) -> Path:
    """Copy the Space's files and the kit's package, write requirements.txt and the README; returns the folder.

    The README's YAML comes from ``cards/space_readme.md.j2``; the source's requirements.txt lines (beyond
    the kit itself) follow the kit's dependencies.
    """
    source = Path(source_dir)
    if not (source / "app.py").is_file():
        raise SaferInstructError(f"{source}: not a Space folder (no app.py)")
    for name, value in (("base model", base_model), ("aligned model", aligned_model)):
        if not value or Path(value).exists() or value.count("/") != 1:
            raise SaferInstructError(
                f"the Space loads models from the Hub: give the {name} as ORG/NAME, not {value!r}"
            )
    folder = fresh_release_dir(local_dir, repo_id)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if (
            path.is_dir()
            or relative.as_posix() in ("README.md", REQUIREMENTS)
            or relative.parts[0] == KIT_PACKAGE
            or SKIPPED_PARTS & set(relative.parts)
            or path.suffix == ".pyc"
        ):
            continue
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / relative)
    shutil.copytree(PACKAGE_DIR, folder / KIT_PACKAGE, ignore=shutil.ignore_patterns(*KIT_SKIPPED, "*.pyc"))
    (folder / REQUIREMENTS).write_text(space_requirements(source / REQUIREMENTS), encoding="utf-8")
    _space_card(source / "README.md", repo_id, base_model, aligned_model, dataset_id).save(folder / "README.md")
    return folder


def space_requirements(source: Path | None = None) -> str:
    """The kit's dependencies (extras and the SDK's gradio left out), then the source file's requirements."""
    try:
        declared = importlib.metadata.requires("safer-instruct") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise SaferInstructError("the kit's package metadata is missing: install the kit (pip install .)") from err
    kept = [req for req in declared if "extra ==" not in req and _requirement_name(req) not in SDK_PROVIDED]
    lines = ["# The kit's own package is in safer_instruct/ next to app.py; these are its dependencies.", *kept]
    if source is not None and source.is_file():
        lines += [
            line
            for line in source.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#") and _requirement_name(line) != "safer-instruct"
        ]
    lines += [
        "# On CPU hardware the CPU build of torch is much smaller: add",
        "# --extra-index-url https://download.pytorch.org/whl/cpu",
    ]
    return "\n".join(lines) + "\n"


def _requirement_name(line: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    return match.group(1).lower().replace("_", "-") if match else ""


def _space_card(
    source_readme: Path, repo_id: str, base_model: str, aligned_model: str, dataset_id: str | None
) -> SpaceCard:
    """The source README's YAML and text, with the models, the dataset and the gradio SDK set for this release."""
    metadata, body = {}, None
    if source_readme.is_file():
        source = SpaceCard.load(source_readme)
        metadata, body = source.data.to_dict(), source.text.strip()
    metadata.update(
        title=metadata.get("title") or repo_id.split("/")[-1],
        sdk="gradio",
        app_file=metadata.get("app_file") or "app.py",
        models=[base_model, aligned_model] if base_model != aligned_model else [base_model],
        datasets=[dataset_id] if dataset_id else metadata.get("datasets"),
        tags=sorted({*(metadata.get("tags") or []), "safer-instruct", "safety"}),
    )
    variables = space_variables(base_model, aligned_model)
    return SpaceCard.from_template(
        SpaceCardData(**metadata),
        template_path=template_path("space_readme.md.j2"),
        body=body,
        variables_table=markdown_table(["variable", "value"], [(f"`{k}`", f"`{v}`") for k, v in variables.items()]),
        base_model=base_model,
        aligned_model=aligned_model,
        dataset_id=dataset_id,
    )
