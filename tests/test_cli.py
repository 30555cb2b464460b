"""The command line: every --help says what the command does and documents its arguments; user errors exit 2
without a traceback."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safer_instruct.cli import COMMANDS, CONFIG_WAY, build_parser, main

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


def test_top_level_help_says_the_one_way_to_pass_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text([], capsys)
    assert " ".join(CONFIG_WAY.split()) in text
    takes_config = {
        name
        for name in COMMANDS
        if any("--config" in f"{action.option_strings} {action.metavar}" for action in subcommand(name)._actions)
    }
    assert takes_config == {"build", "eval", "train"} and "(build, eval, train)" in text  # the help names them all


@pytest.mark.parametrize("command", ["build", "train", "eval"])
def test_every_config_taking_subcommand_shows_config_path_and_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text([command], capsys)
    assert "--config PATH" in text and f"e.g. safer-instruct {command}" in text


def test_config_and_overrides_parse_the_same_way_in_build_and_eval() -> None:
    for command in ("build", "eval"):
        args = build_parser().parse_args([command, "--config", "c.yaml", "induce.candidates=2", "seed=1"])
        assert args.config == "c.yaml" and args.overrides == ["induce.candidates=2", "seed=1"]
    args = build_parser().parse_args(["train", "sft", "--config", "r.yaml", "--max_steps", "1"])
    assert args.method == "sft" and args.script_args == ["--config", "r.yaml", "--max_steps", "1"]
    with pytest.raises(SystemExit) as exit_info:  # a config is never positional
        build_parser().parse_args(["build", "c.yaml"])
    assert exit_info.value.code == 2


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
