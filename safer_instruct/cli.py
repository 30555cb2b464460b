"""The ``safer-instruct`` command: parses arguments, calls library functions, prints. No logic here.

Each subcommand has a ``_add_<name>`` (its arguments) and a ``_run_<name>`` (the call into the
library). A ``SaferInstructError`` is printed without a traceback (unless ``--debug``), exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from safer_instruct import __version__
from safer_instruct.errors import SaferInstructError

Handler = Callable[[argparse.Namespace], int]


# -- models -------------------------------------------------------------------------------------
def _add_models(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the model names the kit knows and their status")
    resolve = sub.add_parser("resolve", help="print the folder or Hub id a model name loads from")
    resolve.add_argument("name")
    prepare = sub.add_parser("prepare", help="convert the embedded default model into a cached HF folder")
    prepare.add_argument("name", nargs="?", default="default")
    prepare.add_argument("--force", action="store_true", help="convert again even if cached")


def _run_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from safer_instruct import models

    console = Console()
    if args.action == "list":
        table = Table("name", "resolves to", "status")
        for info in models.list_models():
            table.add_row(info.name, info.resolves_to, info.status)
        console.print(table)
    elif args.action == "resolve":
        print(models.resolve_model(args.name))
    else:
        if args.name not in models.DEFAULT_MODEL_ALIASES:
            raise SaferInstructError(f"only the embedded default model needs preparing, not {args.name!r}")
        print(models.prepare_default_model(force=args.force))
    return 0


# -- subcommands filled by their own issues --------------------------------------------------------
def _add_build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline config YAML, e.g. builders/configs/demo.yaml")
    parser.add_argument("--run-dir", help="run directory (default: runs/<config name>)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. induce.candidates=2")


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=["reverse-sft", "sft", "dpo"])
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and TRL-style overrides")


def _add_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="evaluation config YAML")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def _add_publish(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["dataset", "model", "space"])
    parser.add_argument("source", nargs="?", help="run dir (dataset) or checkpoint folder (model)")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--local-dir", help="where to write the repo folder first")
    parser.add_argument("--dry-run", action="store_true", help="write the folder, push nothing")


def _add_access(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "accept", "reject", "grant", "review"])
    parser.add_argument("repo", help="gated dataset repo id")


def _add_space(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=7860)


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--tiny", action="store_true", help="a reduced demo: few items and steps")


def _not_yet(name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        raise SaferInstructError(f"`safer-instruct {name}` is not part of this version yet")

    return run


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {
    "build": ("build the safety preference dataset (collect → induce → filter → respond → self-evaluate → assemble)", _add_build, _not_yet("build")),
    "train": ("train the reversed model, SFT or DPO (TRL; LoRA/QLoRA/full)", _add_train, _not_yet("train")),
    "eval": ("evaluate models: harmlessness, over-refusal, helpfulness", _add_eval, _not_yet("eval")),
    "publish": ("write and push the gated dataset, model or Space repo", _add_publish, _not_yet("publish")),
    "access": ("review access requests to the gated dataset", _add_access, _not_yet("access")),
    "space": ("run the side-by-side comparison Space locally", _add_space, _not_yet("space")),
    "demo": ("the whole kit end to end, offline, on the default model", _add_demo, _not_yet("demo")),
    "models": ("list, resolve and prepare models", _add_models, _run_models),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safer-instruct",
        description="Safer-Instruct (arXiv 2311.08685): build a safety preference dataset, align a model, release both.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_arguments, handler) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        add_arguments(command)
        command.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except SaferInstructError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
