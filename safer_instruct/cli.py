"""The ``safer-instruct`` command: parses arguments, calls library functions, prints. No logic here.

Each subcommand has a ``_add_<name>`` (its arguments) and a ``_run_<name>`` (the call into the
library). A ``SaferInstructError`` is printed without a traceback (unless ``--debug``), exit code 2.
A subcommand that reads a config file takes it one way, ``--config PATH``, then overrides (``CONFIG_WAY``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from safer_instruct import __version__
from safer_instruct.errors import SaferInstructError
from safer_instruct.resources import local_or_kit
from safer_instruct.training import METHODS

Handler = Callable[[argparse.Namespace], int]
CONFIG_WAY = (
    "A subcommand that reads a config file (build, eval, train) takes it as --config PATH, followed by "
    "overrides of its fields: dotted KEY=VALUE for build and eval (induce.candidates=2), TRL's --flag VALUE "
    "for train's recipe (--max_steps 10, as the training/sft.py script takes them)."
)


def _add_config(parser: argparse.ArgumentParser, what: str, example: str) -> None:
    """``--config PATH`` and dotted ``KEY=VALUE`` overrides: how build and eval take their pydantic config."""
    parser.add_argument("--config", required=True, metavar="PATH", help=f"{what} YAML, e.g. {example}")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the config's fields by dotted path"
    )


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
        print(models.available_model(args.name))
    else:
        if args.name not in models.DEFAULT_MODEL_ALIASES:
            raise SaferInstructError(f"only the embedded default model needs preparing, not {args.name!r}")
        print(models.prepare_default_model(force=args.force))
    return 0


# -- build, train, eval, score, publish, access, space, demo ---------------------------------------
def _add_build(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "e.g. safer-instruct build --config builders/configs/demo.yaml induce.candidates=2"
    _add_config(parser, "pipeline config", "builders/configs/demo.yaml")
    parser.add_argument("--run-dir", help="run directory (default: runs/<config name>)")


def _run_build(args: argparse.Namespace) -> int:
    from rich.console import Console

    from safer_instruct.pipeline import build_from_file

    result = build_from_file(local_or_kit(args.config), args.run_dir, args.overrides, console=Console())
    if result.problem:  # the funnel is written; exit 1: the build ran but gave nothing usable
        print(f"error: {result.problem}", file=sys.stderr)
        return 1
    print(
        f"dataset: {result.dataset_dir} ({', '.join(f'{k} {v}' for k, v in result.splits.items())}); funnel: {result.dataset_dir / 'funnel.json'}"
    )
    return 0


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "e.g. safer-instruct train sft --config training/recipes/smollm2-135m/sft.yaml --max_steps 10"
    parser.add_argument("method", choices=METHODS)
    parser.add_argument(
        "script_args",
        nargs=argparse.REMAINDER,
        metavar="--config PATH [--flag VALUE ...]",
        help="the recipe YAML, then TRL's overrides of its fields (parsed by TRL, as the training/*.py scripts do)",
    )


def _run_train(args: argparse.Namespace) -> int:
    from safer_instruct.training import main as train_main

    return train_main(args.method, args.script_args)


def _add_eval(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "e.g. safer-instruct eval --config safer_instruct/evaluate/configs/demo.yaml sets.unsafe.limit=5"
    _add_config(parser, "evaluation config", "safer_instruct/evaluate/configs/demo.yaml")


def _run_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from safer_instruct.evaluate import load_eval_config, run_eval, write_report

    config = load_eval_config(local_or_kit(args.config), args.overrides)
    results = run_eval(config)
    paths = write_report(results, config.out_dir, console=Console())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _add_score(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="answers to score: .csv, .jsonl, .json or .parquet")
    parser.add_argument("--text-column", required=True, help="the column holding the answers")
    parser.add_argument(
        "--prompt-column", help="the column holding the requests (helps spot answers that change the subject)"
    )
    parser.add_argument("--out", required=True, help="CSV to write: the rows with a refusal_label column")


def _run_score(args: argparse.Namespace) -> int:
    from safer_instruct.evaluate.scoring import score_file, summary_line

    print(summary_line(score_file(args.file, args.text_column, args.out, args.prompt_column)))
    return 0


def _add_publish(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Every repo is made private (an existing public one too) and a dataset gated (manual review) "
        "before any file is uploaded. "
        "The token comes from HF_TOKEN or `hf auth login` and is never printed or written."
    )
    parser.add_argument("what", choices=["dataset", "model", "space"])
    parser.add_argument(
        "source",
        nargs="?",
        help="run dir (dataset), checkpoint folder (model), Space folder (space; default spaces/compare)",
    )
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--local-dir", help="where to write the repo folder first (default: <run>/release/<what>)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder and show the steps, push nothing")
    parser.add_argument(
        "--visible", action="store_true", help="make the repo visible after the upload (the dataset stays gated)"
    )
    parser.add_argument("--public", action="store_true", help="dataset: visible AND ungated (needs --allow-ungated)")
    parser.add_argument("--no-gate", action="store_true", help="dataset: no access review (needs --allow-ungated)")
    parser.add_argument("--allow-ungated", action="store_true", help="confirm --public / --no-gate for the dataset")
    parser.add_argument("--license", help="licence id (default: cc-by-nc-4.0 for the dataset, apache-2.0 for a model)")
    parser.add_argument("--dataset-id", help="model, space: the gated dataset repo the card links to")
    parser.add_argument(
        "--eval", dest="eval_results", help="model: eval results.json (default: <run>/eval/results.json)"
    )
    parser.add_argument(
        "--eval-dataset-id",
        help="model: the dataset release holding the local eval sets (eval_* configs), named in the model-index",
    )
    parser.add_argument(
        "--base-model", help="model: the base model's Hub id (default: read from the adapter); space: BASE_MODEL"
    )
    parser.add_argument("--recipe", help="model: the training recipe YAML, listed in the card")
    parser.add_argument("--aligned-model", help="space: ALIGNED_MODEL, the published aligned model repo")


def _run_publish(args: argparse.Namespace) -> int:
    from safer_instruct.hub import check_release_flags, publish_dataset, publish_model, publish_space

    check_release_flags(args.what, public=args.public, no_gate=args.no_gate, allow_ungated=args.allow_ungated)
    if args.what != "space" and not args.source:
        raise SaferInstructError(
            f"publish {args.what} needs a {'run dir' if args.what == 'dataset' else 'checkpoint folder'}"
        )
    common = {"local_dir": args.local_dir, "dry_run": args.dry_run, "visible": args.visible}
    if args.license and args.what != "space":
        common["license"] = args.license
    if args.what == "dataset":
        release = publish_dataset(
            args.source,
            args.repo_id,
            public=args.public,
            no_gate=args.no_gate,
            allow_ungated=args.allow_ungated,
            **common,
        )
    elif args.what == "model":
        release = publish_model(
            args.source,
            args.repo_id,
            dataset_id=args.dataset_id,
            eval_results=args.eval_results,
            base_model=args.base_model,
            recipe=args.recipe,
            eval_dataset_id=args.eval_dataset_id,
            **common,
        )
    else:
        if not (args.base_model and args.aligned_model):
            raise SaferInstructError("publish space needs --base-model and --aligned-model (Hub ids)")
        source = {"source_dir": args.source} if args.source else {}
        release = publish_space(
            args.repo_id,
            base_model=args.base_model,
            aligned_model=args.aligned_model,
            dataset_id=args.dataset_id,
            **source,
            **common,
        )
    print(f"wrote {release.folder}")
    print(
        ("would run:" if args.dry_run else "ran:")
        + "".join(f"\n  {i}. {step}" for i, step in enumerate(release.steps, 1))
    )
    if release.url:
        print(f"pushed {release.url}")
    return 0


def _add_access(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "review decides pending requests from their form answers by --policy (default: the card's form)."
    parser.add_argument("action", choices=["list", "accept", "reject", "grant", "review"])
    parser.add_argument("repo", help="gated dataset repo id")
    parser.add_argument("user", nargs="?", help="accept, reject, grant: the Hub username")
    parser.add_argument("--reason", help="reject: why (the requester sees it; required)")
    parser.add_argument(
        "--status", choices=["pending", "accepted", "rejected"], default="pending", help="list: which requests"
    )
    parser.add_argument("--policy", help="review: policy YAML (required answers, allowed uses, agreements)")
    parser.add_argument("--dry-run", action="store_true", help="review: show the decisions, apply and log nothing")
    parser.add_argument("--audit-log", help="JSONL audit log (default: runs/access/<org>--<name>.jsonl)")
    parser.add_argument("--repo-type", choices=["dataset", "model"], default="dataset")


def _run_access(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from safer_instruct.hub import access
    from safer_instruct.hub.gating import AFFILIATION, INTENDED_USE

    console = Console()
    audit_log = args.audit_log or access.default_audit_log(args.repo)
    if args.action == "list":
        table = Table(
            "user", "status", "requested", "affiliation", "intended use", title=f"{args.status} requests: {args.repo}"
        )
        for request in access.list_requests(args.repo, args.status, repo_type=args.repo_type):
            fields = request.fields or {}
            table.add_row(
                request.username or request.request_id,
                request.status,
                f"{request.timestamp:%Y-%m-%d %H:%M}",
                str(fields.get(AFFILIATION, "")),
                str(fields.get(INTENDED_USE, "")),
            )
        console.print(table)
    elif args.action == "review":
        policy = access.load_policy(args.policy)
        decisions = access.review(
            args.repo, policy, audit_log=audit_log, dry_run=args.dry_run, repo_type=args.repo_type
        )
        table = Table(
            "user",
            "decision",
            "reason",
            title=f"access review of {args.repo}" + (" (dry run: nothing applied)" if args.dry_run else ""),
        )
        for decision in decisions:
            table.add_row(decision.user or decision.request_id, decision.decision, decision.reason)
        console.print(table if decisions else f"no pending requests on {args.repo}")
        if decisions and not args.dry_run:
            print(f"audit log: {audit_log}")
    else:
        if not args.user:
            raise SaferInstructError(f"access {args.action} needs the Hub username")
        decision = access.handle(
            args.repo, args.user, args.action, reason=args.reason, audit_log=audit_log, repo_type=args.repo_type
        )
        print(f"{decision.decision}: {decision.user} ({decision.reason}); audit log: {audit_log}")
    return 0


def _add_space(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Any setting can also come from its environment variable (BASE_MODEL, ALIGNED_ADAPTER, JUDGE_MODEL, ...)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 to share on the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--base", help="base model (default: BASE_MODEL or the embedded default model)")
    parser.add_argument(
        "--aligned", help="aligned model folder or Hub id (default: ALIGNED_MODEL or runs/demo/models/aligned)"
    )
    parser.add_argument("--aligned-adapter", help="PEFT adapter over the base model, as the aligned model")
    parser.add_argument("--judge", help="harm judge model whose verdict joins each badge (default: none)")
    parser.add_argument("--votes", help="JSONL file the votes are appended to (default: runs/space/votes.jsonl)")


def _run_space(args: argparse.Namespace) -> int:
    from safer_instruct.space import SpaceSettings, build_app, launch

    settings = SpaceSettings.from_env(
        base_model=args.base,
        aligned_model=args.aligned,
        aligned_adapter=args.aligned_adapter,
        judge_model=args.judge,
        votes_path=args.votes,
    )
    print(
        f"loading models: base {settings.base_model!r}, aligned {settings.aligned_model or 'none yet'!r}", flush=True
    )
    launch(build_app(settings), server_name=args.host, server_port=args.port)
    return 0


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--tiny", action="store_true", help="a reduced demo: few items and steps")
    parser.add_argument("--push", action="store_true", help="push the release repos (needs a Hub token and network)")
    parser.add_argument("--org", help="Hub user or organisation to publish under (with --push)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and training (default 0)")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="precision of every model; auto: bfloat16 only where the CPU/GPU runs it natively",
    )
    parser.add_argument(
        "--over-refusal-bound",
        type=float,
        default=0.15,
        metavar="RATE",
        help="the chosen checkpoint declines at most this share of held-out helpfulness prompts (default 0.15)",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safer_instruct.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            run_dir=Path(args.run_dir),
            tiny=args.tiny,
            push=args.push,
            org=args.org,
            seed=args.seed,
            dtype=args.dtype,
            over_refusal_bound=args.over_refusal_bound,
        )
    )
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {
    "build": (
        "build the safety preference dataset (collect → induce → filter → respond → self-evaluate → assemble)",
        _add_build,
        _run_build,
    ),
    "train": ("train the reversed model, SFT or DPO (TRL; LoRA/QLoRA/full)", _add_train, _run_train),
    "eval": ("evaluate models: harmlessness, over-refusal, helpfulness", _add_eval, _run_eval),
    "score": ("label your own answers: full_compliance, full_refusal or partial_refusal", _add_score, _run_score),
    "publish": ("write and push the gated dataset, model or Space repo", _add_publish, _run_publish),
    "access": ("review access requests to the gated dataset", _add_access, _run_access),
    "space": ("run the side-by-side comparison Space locally", _add_space, _run_space),
    "demo": ("the whole kit end to end, offline, on the default model", _add_demo, _run_demo),
    "models": ("list, resolve and prepare models", _add_models, _run_models),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safer-instruct",
        description="Safer-Instruct (arXiv 2311.08685): build a safety preference dataset, align a model, release both.",
        epilog=CONFIG_WAY,
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
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
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
