"""The command line: every --help says what the command does and documents its arguments; user errors exit 2
without a traceback."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safer_instruct.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
KIT_PATH = re.compile(r"\b(?:builders|safer_instruct|spaces|training|bench|cards)/[\w./-]*\w")  # an example file


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``safer-instruct ARGV --help`` prints, its whitespace collapsed (argparse wraps lines to the terminal)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def subcommand(name: str) -> argparse.ArgumentParser:
    (commands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return commands.choices[name]


def test_top_level_help_lists_every_command_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text([], capsys)
    assert text.startswith("usage: safer-instruct") and "--debug" in text
    for name, (summary, _, _) in COMMANDS.items():
        assert f"{name} {' '.join(summary.split())}" in text, f"`safer-instruct --help` does not list {name!r}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_says_what_it_does_and_documents_its_arguments(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text([command], capsys)
    assert text.startswith("usage: safer-instruct " + command)
    assert " ".join(COMMANDS[command][0].split()) in text  # what the command does
    for action in subcommand(command)._actions:
        choices = "{" + ",".join(action.choices) + "}" if action.choices else None
        if action.option_strings:
            names = [*action.option_strings, *filter(None, [choices])]
        else:
            names = [action.metavar or choices or action.dest]
        assert all(name in text for name in names), f"{command} --help does not show {names}"
        for documented in (action, *getattr(action, "_choices_actions", ())):  # a sub-subcommand's help is its own
            if documented.help and documented.help != argparse.SUPPRESS and "%(" not in documented.help:
                assert " ".join(documented.help.split()) in text, f"{command} --help lost the help of {names[0]}"
    for example in KIT_PATH.findall(text):
        assert (ROOT / example).exists(), f"{command} --help names {example}, which does not exist"


def test_user_error_exits_2_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "safer_instruct.cli", "models", "resolve", "no-such-model"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error: unknown model 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_resolve_prints_the_folder(default_model_dir, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resolve", "default"]) == 0
    assert capsys.readouterr().out.strip() == str(default_model_dir)
