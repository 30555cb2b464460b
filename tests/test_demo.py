"""The main job, reduced (``--tiny``): every step end to end, each artefact loads, a rerun resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_demo(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "safer_instruct.cli", "demo", "--tiny", "--run-dir", str(run_dir), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=1500,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    result = run_demo(run_dir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run_dir, result


def test_summary_names_artefacts_numbers_and_the_space_command(demo_run) -> None:
    run_dir, result = demo_run
    out = " ".join(result.stdout.split())  # rich wraps lines at the terminal width
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert step in out
    assert "Dataset rows per category" in out and "helpfulness" in out
    assert "harmlessness" in out and "over_refusal" in out
    assert f"safer-instruct space --aligned-adapter {run_dir / 'models' / 'dpo'}" in out


def test_dataset_release_loads_with_its_gated_card(demo_run) -> None:
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    folder = demo_run[0] / "release" / "dataset"
    data = load_dataset(str(folder))
    assert data["train"].num_rows > 0
    assert {"prompt", "chosen", "rejected", "category", "kind", "provenance"} <= set(data["train"].column_names)
    card = DatasetCard.load(folder / "README.md")
    assert card.data.extra_gated_fields and "content warning" in card.text.lower()


def test_model_release_loads_and_carries_the_eval_numbers(demo_run) -> None:
    from huggingface_hub import ModelCard
    from peft import AutoPeftModelForCausalLM

    run_dir = demo_run[0]
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert {"base", "aligned"} <= set(results["models"])
    for name in ("base", "aligned"):
        assert {"unsafe", "benign_risky", "benign"} <= set(results["models"][name])
    folder = run_dir / "release" / "model"
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results, "model-index is missing"
    local = AutoPeftModelForCausalLM.from_pretrained(run_dir / "models" / "dpo")
    assert local.peft_config


def test_space_release_folder_is_complete(demo_run) -> None:
    folder = demo_run[0] / "release" / "space"
    assert {"app.py", "requirements.txt", "README.md"} <= {p.name for p in folder.iterdir()}


def test_rerun_resumes_without_redoing_finished_steps(demo_run) -> None:
    run_dir, _ = demo_run
    dataset_before = sorted(p.read_bytes() for p in (run_dir / "dataset").glob("*.parquet"))
    adapter_mtime = (run_dir / "models" / "dpo" / "adapter_model.safetensors").stat().st_mtime
    rerun = run_demo(run_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(p.read_bytes() for p in (run_dir / "dataset").glob("*.parquet")) == dataset_before
    assert (run_dir / "models" / "dpo" / "adapter_model.safetensors").stat().st_mtime == adapter_mtime


def test_push_needs_an_org(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "run", "--push")
    assert result.returncode == 2 and "--push needs --org ORG" in result.stderr
