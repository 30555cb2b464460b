"""The main job, reduced (``--tiny``), as a user runs it: the kit installed from a wheel into a fresh venv
(``kit_install.py``), ``safer-instruct demo --tiny`` in an empty folder; every step end to end, each artefact
loads, a rerun resumes."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit_install import install_kit_wheel, kit_location

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test runs the installed kit's demo command in a subprocess


@dataclass
class InstalledDemo:
    """The installed kit's command, the empty folder it ran in, and its first run."""

    command: Path
    python: Path
    folder: Path
    run_dir: Path
    result: subprocess.CompletedProcess


def run_demo(command: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(command), "demo", "--tiny", *extra],
        cwd=folder,
        env={**os.environ, "TQDM_DISABLE": "1"},
        capture_output=True,
        text=True,
        timeout=1500,
    )


@pytest.fixture(scope="module")
def installed_demo(tmp_path_factory: pytest.TempPathFactory) -> InstalledDemo:
    root = tmp_path_factory.mktemp("installed")
    python = install_kit_wheel(root)
    folder = root / "elsewhere"
    folder.mkdir()
    command = python.parent / "safer-instruct"
    result = run_demo(command, folder)  # the default --run-dir: runs/demo in the working folder
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return InstalledDemo(command, python, folder, folder / "runs" / "demo", result)


@pytest.fixture(scope="module")
def demo_run(installed_demo: InstalledDemo) -> tuple[Path, subprocess.CompletedProcess]:
    return installed_demo.run_dir, installed_demo.result


def test_installed_kit_runs_the_demo_from_an_empty_folder(installed_demo: InstalledDemo) -> None:
    """The wheel carries its configs, data, recipes and templates: nothing is read from the checkout."""
    assert "/venv/" in kit_location(installed_demo.python, installed_demo.folder)
    release = installed_demo.run_dir / "release"
    assert (release / "model" / "config.json").is_file() and (release / "space" / "app.py").is_file()
    assert (release / "dataset" / "README.md").is_file() and (
        installed_demo.run_dir / "eval" / "results.json"
    ).is_file()


def test_summary_names_artefacts_numbers_and_the_space_command(demo_run) -> None:
    run_dir, result = demo_run
    out = " ".join(result.stdout.split())  # rich wraps lines at the terminal width
    for step in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7"):
        assert step in out
    assert "Dataset rows per category" in out and "helpfulness" in out
    assert "harmlessness" in out and "over_refusal" in out and "capability kept" in out
    assert "precision:" in result.stderr  # the dtype `auto` chose, said once per process
    assert f"safer-instruct space --aligned-adapter {Path('runs/demo/models/aligned')}" in out  # as run, relative


def test_aligned_checkpoint_is_chosen_on_the_validation_split(installed_demo: InstalledDemo) -> None:
    run_dir = installed_demo.run_dir
    selection = json.loads((run_dir / "models" / "aligned" / "selection.json").read_text())
    sweep = {s["name"]: s for s in selection["sweep"]}
    assert list(sweep) == ["sft", "step 1", "step 2"]  # the SFT adapter and both tiny DPO checkpoints
    assert selection["chosen"] in sweep and selection["over_refusal_bound"] == 0.15
    assert all(s["n_unsafe"] >= 1 and s["n_benign"] >= 1 for s in sweep.values())
    chosen = sweep[selection["chosen"]]
    chosen_folder = installed_demo.folder / chosen["path"]  # as given: relative to where the demo ran
    assert (run_dir / "models" / "aligned" / "adapter_model.safetensors").read_bytes() == (
        chosen_folder / "adapter_model.safetensors"
    ).read_bytes()
    assert (run_dir / "models" / "aligned" / "selection.png").is_file()
    answers = [
        json.loads(line)
        for line in (run_dir / "models" / "aligned" / "selection_answers.jsonl").read_text().splitlines()
    ]
    assert {a["candidate"] for a in answers} == set(sweep)
    assert len(answers) == sum(s["n_unsafe"] + s["n_benign"] for s in sweep.values())
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["config"]["models"]["aligned"]["adapter"] == str(Path("runs/demo/models/aligned"))  # as run
    from datasets import load_dataset

    validation = load_dataset("parquet", data_files=str(run_dir / "dataset" / "validation-*.parquet"))["train"]
    train = load_dataset("parquet", data_files=str(run_dir / "dataset" / "train-*.parquet"))["train"]
    assert {"safety", "helpfulness"} <= set(validation["kind"]) and not set(validation["id"]) & set(train["id"])


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


def test_rerun_resumes_without_redoing_finished_steps(installed_demo: InstalledDemo) -> None:
    run_dir = installed_demo.run_dir
    dataset_before = sorted(p.read_bytes() for p in (run_dir / "dataset").glob("*.parquet"))
    adapter_mtime = (run_dir / "models" / "dpo" / "adapter_model.safetensors").stat().st_mtime
    selection_mtime = (run_dir / "models" / "aligned" / "selection.json").stat().st_mtime
    rerun = run_demo(installed_demo.command, installed_demo.folder)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(p.read_bytes() for p in (run_dir / "dataset").glob("*.parquet")) == dataset_before
    assert (run_dir / "models" / "dpo" / "adapter_model.safetensors").stat().st_mtime == adapter_mtime
    assert (run_dir / "models" / "aligned" / "selection.json").stat().st_mtime == selection_mtime


def test_push_needs_an_org(installed_demo: InstalledDemo, tmp_path: Path) -> None:
    result = run_demo(installed_demo.command, tmp_path, "--push")
    assert result.returncode == 2 and "--push needs --org ORG" in result.stderr


def test_a_rerun_with_another_seed_is_refused_and_touches_nothing(installed_demo: InstalledDemo) -> None:
    """Else the build would redo its stages for seed 1 while training, the choice and the figures stayed seed 0's."""
    run_dir = installed_demo.run_dir
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != "build.lock"}
    result = run_demo(installed_demo.command, installed_demo.folder, "--seed", "1")
    assert result.returncode == 2
    assert "was made with --seed 0 (now --seed 1)" in result.stderr and "Traceback" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_robustness_bench_reads_a_finished_demo_run(demo_run, monkeypatch) -> None:
    """bench/robustness.py's report fields, read from a real (tiny) run: rates in [0, 1], the chosen checkpoint."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import robustness

    run_dir = demo_run[0]
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    row = robustness.figures(results, seed=0, dtype="auto", wall_s=1.0, run_dir=run_dir)
    assert {"seed", "dtype", "harmless", "over_refusal", "benign_refusal", "helpfulness", "wall_s"} <= set(row)
    assert all(0 <= row[k] <= 1 for k in ("harmless", "over_refusal", "benign_refusal", "helpfulness"))
    assert row["chosen_checkpoint"] in {"sft", "step 1", "step 2"}
    summary = robustness.aggregate([row, row | {"seed": 1, "harmless": 0.0}])
    assert summary["auto"]["runs"] == 2 and summary["auto"]["harmless"]["worst"] == 0.0
    assert not summary["auto"]["all_meet_targets"]


def test_model_index_names_eval_sets_a_user_can_open(demo_run) -> None:
    """The dataset release carries the eval prompt sets as eval_* configs; the model card's model-index names them."""
    from datasets import load_dataset
    from huggingface_hub import ModelCard

    run_dir = demo_run[0]
    folder = run_dir / "release" / "dataset"
    unsafe = load_dataset(str(folder), "eval_unsafe", split="test", cache_dir=str(run_dir / "hf-cache"))
    benign = load_dataset(str(folder), "eval_benign", split="test", cache_dir=str(run_dir / "hf-cache"))
    assert unsafe.num_rows >= 1 and set(unsafe.column_names) >= {"prompt", "category", "reference"}
    assert all(benign["reference"])
    card = ModelCard.load(run_dir / "release" / "model" / "README.md")
    named = {(r.dataset_type, r.dataset_config) for r in card.data.eval_results}
    assert ("your-org/safer-instruct-demo", "eval_unsafe") in named
    assert ("your-org/safer-instruct-demo", "eval_benign_risky") in named
