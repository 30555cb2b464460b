"""The Space release: ``spaces/compare/`` with README YAML naming the two models and the dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData

from safer_instruct.errors import SaferInstructError
from safer_instruct.hub.cards import markdown_table, template_path
from safer_instruct.hub.release_dir import fresh_release_dir

SPACE_SOURCE = Path(__file__).resolve().parents[2] / "spaces" / "compare"
SKIPPED_PARTS = {"__pycache__", ".gradio", "flagged", "runs"}


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
    """Copy the Space's files and write its README (YAML from ``cards/space_readme.md.j2``); returns the folder."""
    source = Path(source_dir)
    if not (source / "app.py").is_file():
        raise SaferInstructError(f"{source}: not a Space folder (no app.py)")
    for name, value in (("base model", base_model), ("aligned model", aligned_model)):
        if not value or Path(value).exists() or value.count("/") != 1:
            raise SaferInstructError(f"the Space loads models from the Hub: give the {name} as ORG/NAME, not {value!r}")
    folder = fresh_release_dir(local_dir, repo_id)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or relative.as_posix() == "README.md" or SKIPPED_PARTS & set(relative.parts) or path.suffix == ".pyc":
            continue
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / relative)
    _space_card(source / "README.md", repo_id, base_model, aligned_model, dataset_id).save(folder / "README.md")
    return folder


def _space_card(source_readme: Path, repo_id: str, base_model: str, aligned_model: str,
                dataset_id: str | None) -> SpaceCard:
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
