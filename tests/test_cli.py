"""The command line: every subcommand has --help; user errors exit 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from safer_instruct.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: safer-instruct " + command in capsys.readouterr().out


def test_user_error_exits_2_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "safer_instruct.cli", "models", "resolve", "no-such-model"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "error: unknown model 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_resolve_prints_the_folder(default_model_dir, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resolve", "default"]) == 0
    assert capsys.readouterr().out.strip() == str(default_model_dir)
