"""Release in one call: check the flags, write the repo folder locally, then push it (unless a dry run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from safer_instruct.hub.client import PushPlan, check_release_flags, check_repo_id, push
from safer_instruct.hub.dataset import DEFAULT_LICENSE, write_dataset_repo
from safer_instruct.hub.model import write_model_repo
from safer_instruct.hub.release_dir import default_local_dir, seal_release_dir
from safer_instruct.hub.space import SPACE_SOURCE, space_variables, write_space_repo

# a model release uploads these files (at its root and in its adapter/ folder) and nothing else of the folder
MODEL_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.bin",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "README.md",
    "*.png",
)
MODEL_ALLOW = [*MODEL_FILES, *(f"adapter/{name}" for name in MODEL_FILES)]


@dataclass
class Release:
    """The folder written, the pushes planned (in order), and the repo URL once pushed."""

    folder: Path
    steps: list[str]
    url: str | None


def publish_dataset(
    run_dir: str | Path,
    repo_id: str,
    *,
    local_dir: str | Path | None = None,
    dry_run: bool = False,
    visible: bool = False,
    public: bool = False,
    no_gate: bool = False,
    allow_ungated: bool = False,
    license: str = DEFAULT_LICENSE,
    api: HfApi | None = None,
) -> Release:
    """The gated dataset release: private repo, upload, manual gating, visible only if asked.

    ``public`` (visible and ungated) and ``no_gate`` are refused unless ``allow_ungated`` is also set,
    before anything is written.
    """
    check_release_flags("dataset", public=public, no_gate=no_gate, allow_ungated=allow_ungated)
    check_repo_id(repo_id, "--repo-id")
    run_dir = Path(run_dir)
    folder = write_dataset_repo(
        run_dir, repo_id, local_dir or default_local_dir("dataset", run_dir, repo_id), license=license
    )
    plan = PushPlan(
        folder, repo_id, "dataset", gated=None if (no_gate or public) else "manual", visible=visible or public
    )
    return _finish(plan, dry_run, api)


def publish_model(
    checkpoint: str | Path,
    repo_id: str,
    *,
    local_dir: str | Path | None = None,
    dry_run: bool = False,
    visible: bool = False,
    dataset_id: str | None = None,
    eval_results: str | Path | None = None,
    base_model: str | None = None,
    recipe: str | Path | None = None,
    license: str = "apache-2.0",
    eval_dataset_id: str | None = None,
    api: HfApi | None = None,
) -> Release:
    """The model release: adapter and/or merged weights with their card; private unless ``visible``.

    ``eval_dataset_id``: the dataset release that holds the local evaluation sets as ``eval_<set>`` configs,
    named in the ``model-index``."""
    check_repo_id(repo_id, "--repo-id")
    for value, flag in ((dataset_id, "--dataset-id"), (eval_dataset_id, "--eval-dataset-id")):
        if value:
            check_repo_id(value, flag)
    checkpoint = Path(checkpoint)
    folder = write_model_repo(
        checkpoint,
        repo_id,
        local_dir or default_local_dir("model", checkpoint, repo_id),
        dataset_id=dataset_id,
        eval_results=eval_results,
        base_model=base_model,
        recipe=recipe,
        license=license,
        eval_dataset_id=eval_dataset_id,
    )
    return _finish(
        PushPlan(folder, repo_id, "model", gated=None, visible=visible, allow_patterns=MODEL_ALLOW), dry_run, api
    )


def publish_space(
    repo_id: str,
    *,
    base_model: str,
    aligned_model: str,
    dataset_id: str | None = None,
    source_dir: str | Path = SPACE_SOURCE,
    local_dir: str | Path | None = None,
    dry_run: bool = False,
    visible: bool = False,
    api: HfApi | None = None,
) -> Release:
    """The comparison Space: its files, README YAML, and the model ids as Space variables."""
    check_repo_id(repo_id, "--repo-id")
    if dataset_id:
        check_repo_id(dataset_id, "--dataset-id")
    folder = write_space_repo(
        repo_id,
        local_dir or default_local_dir("space", None, repo_id),
        base_model=base_model,
        aligned_model=aligned_model,
        dataset_id=dataset_id,
        source_dir=source_dir,
    )
    plan = PushPlan(
        folder,
        repo_id,
        "space",
        gated=None,
        visible=visible,
        space_variables=space_variables(base_model, aligned_model),
    )
    return _finish(plan, dry_run, api)


def _finish(plan: PushPlan, dry_run: bool, api: HfApi | None) -> Release:
    seal_release_dir(plan.folder)
    url = None if dry_run else push(plan, api)
    return Release(folder=plan.folder, steps=plan.steps(), url=url)
