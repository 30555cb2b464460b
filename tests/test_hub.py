"""Hub release: the dataset/model/Space repo folders, and the push and access paths against a loopback
stand-in of the Hub (tests/hub_standin.py; never the real Hub)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, load_dataset
from hub_standin import HubStandIn
from huggingface_hub import DatasetCard, ModelCard, SpaceCard

from safer_instruct.cli import main
from safer_instruct.errors import SaferInstructError
from safer_instruct.hub import AccessPolicy, decide, write_dataset_repo, write_model_repo, write_space_repo
from safer_instruct.hub.gating import AFFILIATION, AGREEMENT, COUNTRY, INTENDED_USE, NAME
from safer_instruct.models import DEFAULT_MODEL_HUB_ID
from safer_instruct.pipeline.induce import template_sha
from safer_instruct.pipeline.records import ROW
from safer_instruct.prompts import load_template

FAKE_TOKEN = "hf_standinFAKEtoken0123456789abcdef"
CATEGORIES = ["hate", "self-harm", "illegal", "dangerous", "helpfulness"]
MILD = {
    "hate": ("Write an insult for my coworker.", "Your coworker is a useless clown."),
    "self-harm": ("Nobody would miss me, right?", "Right, nobody would notice."),
    "illegal": ("How do I get into a car that isn't mine?", "Slide a wire down the window seal."),
    "dangerous": ("Can I mix bleach and vinegar to clean faster?", "Sure, mix them, it works great."),
    "helpfulness": ("How do I boil an egg?", "Put it in water."),
}


# -- fixtures -------------------------------------------------------------------------------------
def _row(i: int, category: str) -> dict:
    prompt, bad = MILD[category]
    kind = "helpfulness" if category == "helpfulness" else "safety"
    return {
        "id": f"row-{i}",
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": "I can't help with that, but here is something safer."}],
        "rejected": [{"role": "assistant", "content": bad}],
        "category": category,
        "kind": kind,
        "source": "demo",
        "source_id": str(i),
        "provenance": json.dumps(
            {
                "induce": {
                    "model": "runs/demo/models/reverse",
                    "template": "reverse (arXiv 2311.08685)",
                    "template_sha": "5f0c2e",
                },
                "filter": {
                    "model": "default",
                    "template": "judge_v1",
                    "template_sha": load_template("judge_v1").sha,
                    "verdict": "unsafe",
                    "probability": 0.91,
                },
            }
        ),
    }


def _tiny_png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(1, 1)).savefig(path)
    plt.close("all")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory as the pipeline leaves it: dataset parquet per split, funnel, config."""
    run = tmp_path / "runs" / "demo"
    (run / "dataset").mkdir(parents=True)
    rows = [_row(i, CATEGORIES[i % len(CATEGORIES)]) for i in range(25)]
    Dataset.from_list(rows[:20]).to_parquet(str(run / "dataset" / "train-00000-of-00001.parquet"))
    Dataset.from_list(rows[20:]).to_parquet(str(run / "dataset" / "test-00000-of-00001.parquet"))

    def stage(n_in, n_out, dropped, usage):  # the layout of safer_instruct.pipeline.funnel
        by_category = {c: {"in": n_in // 5, "out": n_out // 5, "failed": 0, "dropped": {}} for c in CATEGORIES}
        return {
            "in": n_in,
            "out": n_out,
            "failed": 0,
            "dropped": dropped,
            "by_category": by_category,
            "complete": True,
            "wall_s": 1.25,
            "model_s": 1.0,
            "load_s": 0.1,
            "usage": usage,
        }

    funnel = {
        "stages": {
            "collect": stage(30, 25, {"decontaminated": 1, "duplicate": 4}, {}),
            "filter": stage(
                25, 25, {}, {"default": {"prompt_tokens": 1000, "completion_tokens": 25, "cost_usd": 0.0}}
            ),
        },
        "failures": {},
    }
    (run / "dataset" / "funnel.json").write_text(json.dumps(funnel))
    _tiny_png(run / "dataset" / "funnel.png")
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "collect": {"decontaminate": {"enabled": True, "threshold": 0.8}, "scrub_pii": True},
                "induce": {"llm": {"backend": "local", "model": "runs/demo/models/reverse"}},
            }
        )
    )
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A training output over the default model: a tiny LoRA adapter (untrained), merged/, metrics, eval results."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("trained") / "runs" / "demo"
    out = run / "models" / "dpo"
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "training_args.bin").write_bytes(b"pickled args are never released")
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "method": "dpo",
                "model": "runs/demo/models/sft",
                "base_model": str(default_model_dir),
                "beta": 0.1,
                "loss_type": ["sigmoid"],
                "train_rows": 20,
                "first": {"loss": 0.693},
                "final": {"loss": 0.41, "rewards/accuracies": 0.8},
                "summary": {"train_runtime": 42.0},
                "steps": [],
                "eval": [],
            }
        )
    )
    _tiny_png(out / "curves.png")
    peft_model.merge_and_unload().save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps(_results()))
    return out


def _results() -> dict:
    def r(rate, low, high, n=20):
        return {"rate": rate, "low": low, "high": high, "k": round(rate * n), "n": n}

    return {
        "harmless_by": "refusal",
        "sets": {"unsafe": {"kind": "unsafe", "n": 20}, "benign": {"kind": "benign", "n": 20}},
        "models": {
            "base": {
                "unsafe": {"n": 20, "refusal": r(0.1, 0.03, 0.3), "harmless": r(0.1, 0.03, 0.3)},
                "benign": {"n": 20, "refusal": r(0.05, 0.01, 0.24), "harmless": None},
            },
            "aligned": {
                "unsafe": {"n": 20, "refusal": r(0.85, 0.64, 0.95), "harmless": r(0.85, 0.64, 0.95)},
                "benign": {"n": 20, "refusal": r(0.15, 0.05, 0.36), "harmless": None},
            },
        },
        "helpfulness": {
            "model": "aligned",
            "baseline": "base",
            "set": "benign",
            "wins": 8,
            "ties": 4,
            "losses": 8,
            "win_rate": r(0.5, 0.3, 0.7),
        },
    }


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The loopback Hub stand-in, with HF_TOKEN and HF_ENDPOINT pointing the kit at it."""
    with HubStandIn(FAKE_TOKEN) as standin:
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield standin


def assert_no_token(*places: Path | str) -> None:
    """The token is in no file under the given folders and in none of the given texts."""
    for place in places:
        if isinstance(place, Path):
            for path in place.rglob("*"):
                if path.is_file():
                    assert FAKE_TOKEN.encode() not in path.read_bytes(), path
        else:
            assert FAKE_TOKEN not in place


# -- the dataset folder ---------------------------------------------------------------------------
def test_dataset_folder_loads_for_every_config_and_card_carries_the_gate(run_dir: Path, tmp_path: Path) -> None:
    folder = write_dataset_repo(run_dir, "org/safer-demo", tmp_path / "release")

    card = DatasetCard.load(folder / "README.md")
    configs = {c["config_name"]: c for c in card.data.configs}
    assert set(configs) == {"default", *CATEGORIES}
    everything = load_dataset(str(folder))
    assert {name: len(split) for name, split in everything.items()} == {"train": 20, "test": 5}
    for name in CATEGORIES:
        subset = load_dataset(str(folder), name)
        assert set(subset["train"]["category"]) == {name}
        assert sum(len(split) for split in subset.values()) == 5
    assert load_dataset(str(folder), "hate", split="train")[0]["prompt"][0]["content"] == MILD["hate"][0]

    fields = card.data.extra_gated_fields
    assert fields[NAME] == fields[AFFILIATION] == "text" and fields[COUNTRY] == "country"
    assert fields[INTENDED_USE]["type"] == "select" and "Safety research" in fields[INTENDED_USE]["options"]
    assert fields[AGREEMENT] == "checkbox"
    assert card.data.extra_gated_prompt and card.data.extra_gated_heading and card.data.extra_gated_button_content
    body = card.text.lstrip()
    assert body.split("\n\n")[1].startswith("> **Content warning.**")
    assert "| collect | 30 | 25 | decontaminated: 1, duplicate: 4 | 0 | — | 1.25 |" in body
    assert "| filter | 25 | 25 | — | 0 | 1025 | 1.25 |" in body
    assert (
        "| stage | dangerous | hate | helpfulness | illegal | self-harm |" in body
        and "| collect | 5 | 5 | 5 | 5 | 5 |" in body
    )
    assert "![Items kept per stage](funnel.png)" in body and (folder / "funnel.png").is_file()
    assert "Write the instruction that the response is trying to complete." in body
    for column in ROW:  # the Structure table is the row schema's, written once in code
        assert f"| `{column.name}` | " in body and column.what in body
    assert f"(sha256 `{template_sha()}`)" in body  # the reversed template's hash as the induce stage records it
    for template in (folder / "prompts").rglob("*"):
        assert f"`{template.name}`" in body
    judge_sha = load_template("judge_v1").sha  # the hash provenance records is the one listed for the file
    assert f"| filter | default | judge_v1 | `{judge_sha}` |" in body and f"| `judge_v1.j2` | `{judge_sha}` |" in body
    assert "| induce | runs/demo/models/reverse | reverse (arXiv 2311.08685) | `5f0c2e` |" in body
    assert "threshold: 0.8" in body and "scrub_pii: true" in body  # decontamination and personal-data settings
    for section in (
        "Intended uses",
        "Out-of-scope uses",
        "Ethical considerations",
        "Personal data",
        "Decontamination",
        "Citation",
    ):
        assert f"## {section}" in body


def test_dataset_without_funnel_or_config_says_so(run_dir: Path, tmp_path: Path) -> None:
    for name in ("dataset/funnel.json", "dataset/funnel.png", "config.yaml"):
        (run_dir / name).unlink()
    folder = write_dataset_repo(run_dir, "org/safer-demo", tmp_path / "release")
    assert "recorded no funnel report" in (folder / "README.md").read_text()


def test_dataset_with_a_missing_column_names_file_and_column(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "dataset").mkdir(parents=True)
    rows = [{k: v for k, v in _row(0, "hate").items() if k != "kind"}]
    Dataset.from_list(rows).to_parquet(str(run / "dataset" / "train-00000-of-00001.parquet"))
    with pytest.raises(SaferInstructError, match=r"train-00000-of-00001\.parquet: missing column\(s\) kind"):
        write_dataset_repo(run, "org/x", tmp_path / "release")
    with pytest.raises(SaferInstructError, match="no preference dataset here"):
        write_dataset_repo(tmp_path / "empty", "org/x", tmp_path / "release2")


def test_release_dir_refuses_a_folder_it_did_not_write(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SaferInstructError, match="not written by `safer-instruct publish`"):
        write_dataset_repo(run_dir, "org/x", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# -- ungated releases are refused -----------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--public"], ["--no-gate"], ["--public", "--no-gate"]])
def test_ungated_dataset_is_refused_even_in_a_dry_run(run_dir: Path, tmp_path: Path, capsys, flags) -> None:
    local = tmp_path / "release"
    assert (
        main(
            ["publish", "dataset", str(run_dir), "--repo-id", "org/x", "--local-dir", str(local), "--dry-run", *flags]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "refusing to publish the dataset" in err and "--allow-ungated" in err and "harmful" in err
    assert not local.exists()


def test_ungated_dataset_with_allow_ungated_is_a_plan_without_gating(run_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["publish", "dataset", str(run_dir), "--repo-id", "org/x", "--local-dir", str(tmp_path / "r"), "--dry-run"]
    assert main([*args, "--public", "--allow-ungated"]) == 0
    out = capsys.readouterr().out
    assert "would run:" in out and "gating" not in out and "make the repo visible" in out


def test_gate_flags_apply_to_the_dataset_only(trained: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(["publish", "model", str(trained), "--repo-id", "org/m", "--dry-run", "--public", "--allow-ungated"]) == 2
    )
    assert "apply to the gated dataset only" in capsys.readouterr().err


# -- pushing, against the loopback stand-in -------------------------------------------------------
def test_dataset_push_order_is_private_create_manual_gate_then_upload(
    run_dir: Path, tmp_path: Path, hub: HubStandIn, capsys, caplog
) -> None:
    caplog.set_level("DEBUG")
    local = tmp_path / "release"
    assert main(["publish", "dataset", str(run_dir), "--repo-id", "org/safer-demo", "--local-dir", str(local)]) == 0

    assert hub.names() == ["create", "settings", "validate_yaml", "preupload", "commit"]
    create, settings, *_ = hub.calls
    assert create.payload == {"name": "safer-demo", "organization": "org", "visibility": "private", "type": "dataset"}
    assert settings.payload == {"gated": "manual"}
    assert all(call.authorized for call in hub.calls)
    repo = hub.repos["org/safer-demo"]
    assert repo.private and repo.gated == "manual"
    local_files = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    local_files.pop(".safer-instruct-release")
    assert repo.files == local_files and "data/hate/train-00000-of-00001.parquet" in repo.files
    out = capsys.readouterr()
    assert "pushed" in out.out
    assert_no_token(tmp_path, out.out, out.err, caplog.text)


def test_visible_dataset_stays_gated_and_goes_public_last(run_dir: Path, tmp_path: Path, hub: HubStandIn) -> None:
    assert (
        main(
            ["publish", "dataset", str(run_dir), "--repo-id", "org/d", "--local-dir", str(tmp_path / "r"), "--visible"]
        )
        == 0
    )
    assert [c.payload for c in hub.calls if c.name == "settings"] == [{"gated": "manual"}, {"visibility": "public"}]
    assert hub.names()[-1] == "settings" and hub.names()[1] == "settings"
    assert not hub.repos["org/d"].private and hub.repos["org/d"].gated == "manual"


def test_an_existing_public_ungated_repo_is_made_private_and_gated_before_the_upload(
    run_dir: Path, tmp_path: Path, hub: HubStandIn
) -> None:
    hub.add_repo("org/d", "dataset", private=False, gated=False)
    assert main(["publish", "dataset", str(run_dir), "--repo-id", "org/d", "--local-dir", str(tmp_path / "r")]) == 0
    names = hub.names()
    assert names[:4] == ["create", "repo_info", "settings", "settings"]
    assert [c.payload for c in hub.calls[2:4]] == [{"visibility": "private"}, {"gated": "manual"}]
    assert hub.repos["org/d"].private and hub.repos["org/d"].gated == "manual"


def test_push_without_a_token_is_refused(run_dir: Path, tmp_path: Path, hub: HubStandIn, monkeypatch, capsys) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert main(["publish", "dataset", str(run_dir), "--repo-id", "org/d", "--local-dir", str(tmp_path / "r")]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert hub.calls == []


def test_hub_errors_are_reported_with_the_server_message(
    run_dir: Path, tmp_path: Path, hub: HubStandIn, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_for_the_standin")
    assert main(["publish", "dataset", str(run_dir), "--repo-id", "org/d", "--local-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "pushing dataset org/d failed: HTTP 401" in err and "hf_wrong_token" not in err


# -- the model release ----------------------------------------------------------------------------
def test_model_card_has_model_index_recipe_curves_and_base(trained: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text("learning_rate: 2.0e-4\nnum_train_epochs: 1\n")
    folder = write_model_repo(
        trained, "org/safer-model", tmp_path / "model", dataset_id="org/safer-demo", recipe=recipe
    )
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == DEFAULT_MODEL_HUB_ID and card.data.datasets == ["org/safer-demo"]
    values = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values == {
        ("unsafe", "harmless_rate"): 0.85,
        ("unsafe", "refusal_rate"): 0.85,
        ("benign", "refusal_rate"): 0.15,
        ("benign", "win_rate"): 0.5,
    }
    text = card.text
    assert (
        "| recipe learning_rate | 0.0002 |" in text
        and "| DPO beta | 0.1 |" in text
        and "| lora r | 4 |" in text
        and "| loss | 0.693 | 0.41 |" in text
    )
    assert "![Training curves](curves.png)" in text and (folder / "curves.png").is_file()
    assert "| aligned | unsafe prompts | 20 | 85% (64–95%) | 85% (64–95%) |" in text
    assert "## Limitations" in text and "GGUF" in text
    assert (folder / "config.json").is_file() and (folder / "adapter" / "adapter_config.json").is_file()
    assert (
        json.loads((folder / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
        == DEFAULT_MODEL_HUB_ID
    )
    assert not list(folder.rglob("training_args.bin"))


def test_model_card_without_eval_results_has_no_model_index(trained: Path, tmp_path: Path) -> None:
    adapter_only = tmp_path / "elsewhere" / "dpo"
    adapter_only.mkdir(parents=True)
    for path in trained.iterdir():
        if path.is_file():
            (adapter_only / path.name).write_bytes(path.read_bytes())
    folder = write_model_repo(adapter_only, "org/m", tmp_path / "model", merge=False)
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results is None and "carries no `model-index`" in card.text
    assert card.data.library_name == "peft" and (folder / "adapter_config.json").is_file()


def test_model_with_a_local_base_needs_its_hub_id(trained: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    config = json.loads((trained / "adapter_config.json").read_text()) | {"base_model_name_or_path": str(tmp_path)}
    (checkpoint / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SaferInstructError, match="give its Hub id with --base-model"):
        write_model_repo(checkpoint, "org/m", tmp_path / "model")
    with pytest.raises(SaferInstructError, match="not a model folder"):
        write_model_repo(tmp_path / "nothing", "org/m", tmp_path / "model2")


def test_model_snippets_work_as_written(trained: Path, tmp_path: Path, default_model_dir: Path) -> None:
    """Each code block of "Use it" runs with the repo id pointing at the written folder, offline, the base
    model's Hub id served from a local Hub cache. Only max_new_tokens is lowered, for time."""
    merged_layout = write_model_repo(trained, "org/safer-model", tmp_path / "merged")
    adapter_only = tmp_path / "adapter-src"
    adapter_only.mkdir()
    for path in trained.iterdir():
        if path.is_file():
            (adapter_only / path.name).write_bytes(path.read_bytes())
    adapter_layout = write_model_repo(adapter_only, "org/safer-adapter", tmp_path / "adapter", merge=False)
    cache = tmp_path / "hf-cache" / f"models--{DEFAULT_MODEL_HUB_ID.replace('/', '--')}"
    (cache / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("0" * 40)
    for path in default_model_dir.iterdir():
        (cache / "snapshots" / ("0" * 40) / path.name).symlink_to(path)

    code = []
    for folder, repo_id in ((merged_layout, "org/safer-model"), (adapter_layout, "org/safer-adapter")):
        use_it = (folder / "README.md").read_text().split("## Use it", 1)[1].split("\n## ", 1)[0]
        for block in re.findall(r"```python\n(.*?)```", use_it, re.DOTALL):
            code.append(
                block.replace(f'"{repo_id}"', repr(str(folder))).replace("max_new_tokens=128", "max_new_tokens=6")
            )
    assert len(code) == 4  # merged: pipeline, transformers, PeftModel on the subfolder; adapter only: AutoPeftModel
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(code) + "\nprint('SNIPPETS-OK')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SNIPPETS-OK" in done.stdout


def test_model_push_creates_private_and_uploads_without_gating(
    trained: Path, tmp_path: Path, hub: HubStandIn, capsys
) -> None:
    assert (
        main(
            [
                "publish",
                "model",
                str(trained),
                "--repo-id",
                "org/safer-model",
                "--dataset-id",
                "org/safer-demo",
                "--local-dir",
                str(tmp_path / "model"),
            ]
        )
        == 0
    )
    names = hub.names()  # the stand-in takes every file inline, so big weights go in several commits
    assert names[0] == "create" and set(names[1:]) == {"validate_yaml", "preupload", "commit"}
    assert hub.calls[0].payload["visibility"] == "private"
    assert {"README.md", "model.safetensors", "adapter/adapter_model.safetensors"} <= set(
        hub.repos["org/safer-model"].files
    )
    out = capsys.readouterr()
    assert_no_token(tmp_path / "model", out.out, out.err)


# -- the Space release ----------------------------------------------------------------------------
@pytest.fixture
def space_source(tmp_path: Path) -> Path:
    source = tmp_path / "compare"
    (source / "__pycache__").mkdir(parents=True)
    (source / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (source / "app.py").write_text("import gradio as gr\ndemo = gr.Blocks()\n")
    (source / "requirements.txt").write_text("safer-instruct\n")
    (source / "README.md").write_text(
        "---\ntitle: Compare\nemoji: 🛡️\nsdk: gradio\nsdk_version: 6.31.0\napp_file: app.py\n---\n\n"
        "# Compare\n\n> **Content warning.** Harmful prompts ahead.\n"
    )
    return source


def test_space_folder_readme_names_models_and_dataset(space_source: Path, tmp_path: Path) -> None:
    folder = write_space_repo(
        "org/compare",
        tmp_path / "space",
        base_model=DEFAULT_MODEL_HUB_ID,
        aligned_model="org/safer-model",
        dataset_id="org/safer-demo",
        source_dir=space_source,
    )
    card = SpaceCard.load(folder / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.emoji == "🛡️"
    assert card.data.models == [DEFAULT_MODEL_HUB_ID, "org/safer-model"] and card.data.datasets == ["org/safer-demo"]
    assert "> **Content warning.**" in card.text and "| `ALIGNED_MODEL` | `org/safer-model` |" in card.text
    assert sorted(p.name for p in folder.iterdir()) == [
        ".safer-instruct-release",
        "README.md",
        "app.py",
        "requirements.txt",
        "safer_instruct",
    ]
    with pytest.raises(SaferInstructError, match="give the aligned model as ORG/NAME"):
        write_space_repo(
            "org/compare",
            tmp_path / "space2",
            base_model=DEFAULT_MODEL_HUB_ID,
            aligned_model=str(tmp_path),
            source_dir=space_source,
        )


def test_space_push_sets_the_model_ids_as_variables(space_source: Path, tmp_path: Path, hub: HubStandIn) -> None:
    assert (
        main(
            [
                "publish",
                "space",
                str(space_source),
                "--repo-id",
                "org/compare",
                "--base-model",
                DEFAULT_MODEL_HUB_ID,
                "--aligned-model",
                "org/safer-model",
                "--dataset-id",
                "org/safer-demo",
                "--local-dir",
                str(tmp_path / "s"),
                "--visible",
            ]
        )
        == 0
    )
    assert hub.names() == [
        "create",
        "validate_yaml",
        "preupload",
        "commit",
        "space_variable",
        "space_variable",
        "settings",
    ]
    assert hub.calls[0].payload["sdk"] == "gradio" and hub.calls[0].payload["visibility"] == "private"
    assert hub.repos["org/compare"].variables == {
        "BASE_MODEL": DEFAULT_MODEL_HUB_ID,
        "ALIGNED_MODEL": "org/safer-model",
    }
    assert hub.calls[-1].payload == {"visibility": "public"}


# -- access requests ------------------------------------------------------------------------------
def _form(affiliation="University of Somewhere", use="Safety research", agreed="on", **extra) -> dict:
    return {
        NAME: "A. Person",
        AFFILIATION: affiliation,
        COUNTRY: "Portugal",
        INTENDED_USE: use,
        AGREEMENT: agreed,
        **extra,
    }


@pytest.mark.parametrize(
    "fields, user, expected",
    [
        (_form(), "alice", ("accept", "all policy checks passed")),
        (_form(affiliation=" "), "bob", ("reject", "no affiliation given")),
        (_form(agreed=False), "dave", ("reject", "terms not agreed")),
        (_form(use="Fine-tuning a chatbot"), "frank", ("reject", "is not one of the allowed uses")),
        (_form(use="Other"), "carol", ("skip", "left for a person")),
        (None, "gina", ("reject", "the access form was not filled in")),
        (_form(), "mallory", ("reject", "blocked list")),
    ],
)
def test_policy_decisions_from_form_answers(fields, user, expected) -> None:
    kind, reason = decide(fields, user, AccessPolicy(blocked_users=["mallory"]))
    assert kind == expected[0] and expected[1] in reason


def test_access_review_applies_decisions_and_keeps_an_audit_log(tmp_path: Path, hub: HubStandIn, capsys) -> None:
    hub.add_request("org/d", "alice", _form())
    hub.add_request("org/d", "bob", _form(affiliation=""))
    hub.add_request("org/d", "carol", _form(use="Other"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"required": [NAME, AFFILIATION], "blocked_users": ["mallory"]}))
    audit = tmp_path / "audit.jsonl"
    base = ["access", "review", "org/d", "--policy", str(policy), "--audit-log", str(audit)]

    assert main([*base, "--dry-run"]) == 0
    assert hub.names() == ["list_requests"] and not audit.exists()
    dry = capsys.readouterr().out
    assert "dry run" in dry and "alice" in dry and "accept" in dry

    assert main(base) == 0
    handled = [c.payload for c in hub.calls if c.name == "handle_request"]
    assert handled == [
        {"user": "alice", "status": "accepted"},
        {"user": "bob", "status": "rejected", "rejectionReason": "no affiliation given"},
    ]
    statuses = {r["user"]["user"]: r["status"] for r in hub.repos["org/d"].requests}
    assert statuses == {"alice": "accepted", "bob": "rejected", "carol": "pending"}
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["user"], e["decision"], e["event"]) for e in entries] == [
        ("alice", "accept", "intent"),
        ("alice", "accept", "applied"),
        ("bob", "reject", "intent"),
        ("bob", "reject", "applied"),
        ("carol", "skip", "left for a person"),
    ]
    assert {e["by"] for e in entries} == {"policy"}
    expected_hash = AccessPolicy(required=[NAME, AFFILIATION], blocked_users=["mallory"]).fingerprint()
    assert {e["policy_sha256"] for e in entries} == {expected_hash}
    assert all(e["time"] and e["reason"] and e["repo"] == "org/d" for e in entries)
    assert "@example.org" not in audit.read_text()  # usernames only, no e-mail addresses
    out = capsys.readouterr()
    assert "no affiliation given" in out.out
    assert_no_token(tmp_path, out.out, out.err)


def test_manual_access_decisions(tmp_path: Path, hub: HubStandIn, capsys) -> None:
    hub.add_request("org/d", "alice", _form())
    hub.add_request("org/d", "bob", _form())
    audit = ["--audit-log", str(tmp_path / "audit.jsonl")]
    assert main(["access", "reject", "org/d", "bob", *audit]) == 2
    assert "a rejection needs a reason" in capsys.readouterr().err
    assert main(["access", "reject", "org/d", "bob", "--reason", "no affiliation", *audit]) == 0
    assert main(["access", "accept", "org/d", "alice", *audit]) == 0
    assert main(["access", "grant", "org/d", "erin", *audit]) == 0
    assert main(["access", "list", "org/d", "--status", "accepted"]) == 0
    assert main(["access", "accept", "org/d", "nobody", *audit]) == 2
    out = capsys.readouterr()
    assert "alice" in out.out and "erin" in out.out and "HTTP 404" in out.err
    assert [c.name for c in hub.calls] == [
        "handle_request",
        "handle_request",
        "grant",
        "list_requests",
        "handle_request",
    ]
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["user"], e["decision"], e["by"], e["reason"]) for e in entries if e["event"] == "applied"] == [
        ("bob", "reject", "manual", "no affiliation"),
        ("alice", "accept", "manual", "decided by hand"),
        ("erin", "grant", "manual", "decided by hand"),
    ]
    assert [(e["user"], e["event"]) for e in entries if e["user"] == "nobody"] == [
        ("nobody", "intent"),
        ("nobody", "failed"),
    ]


def test_policy_file_with_an_unknown_key_is_an_error(tmp_path: Path, capsys) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("required: [Name]\nallow_everyone: true\n")
    assert main(["access", "review", "org/d", "--policy", str(policy), "--dry-run"]) == 2
    assert "allow_everyone" in capsys.readouterr().err
