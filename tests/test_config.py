"""Configs: YAML plus overrides; a bad field is named with its file and path."""

from __future__ import annotations

from pathlib import Path

import pytest

from safer_instruct.config import LLMConfig, StrictModel, load_config
from safer_instruct.errors import SaferInstructError


class RunConfig(StrictModel):
    judge: LLMConfig = LLMConfig()
    name: str = "run"


def test_yaml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("judge:\n  backend: openai\n  base_url: http://127.0.0.1:9/v1\n")
    config = load_config(RunConfig, path, ["judge.max_concurrency=3", "name=demo"])
    assert config.judge.backend == "openai" and config.judge.max_concurrency == 3 and config.name == "demo"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("judge:\n  max_concurrency: lots\n", r"field `judge.max_concurrency`: .*integer.*'lots'"),
        ("judge:\n  backend: llamacpp\n", r"field `judge.backend`"),
        ("judge:\n  temprature: 0.5\n", r"field `judge.temprature`: Extra inputs"),
        ("judge:\n  backend: openai\n  adapter: x\n", r"local backend only"),
        ("judge:\n  backend: openai\n  decode_batch_size: 64\n", r"local backend only"),
        ("judge:\n  decode_batch_size: 0\n", r"field `judge.decode_batch_size`"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("judge: [unclosed\n", r"not valid YAML"),
    ],
)
def test_bad_configs_name_file_and_field(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SaferInstructError, match=expected) as err:
        load_config(RunConfig, path)
    assert str(path) in str(err.value)


def test_bad_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SaferInstructError, match="expected KEY=VALUE"):
        load_config(RunConfig, None, ["judge.batch_size"])
    with pytest.raises(SaferInstructError, match="config file not found"):
        load_config(RunConfig, tmp_path / "nope.yaml")
