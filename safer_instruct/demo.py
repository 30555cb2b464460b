"""The main job: the whole kit end to end, offline, on the embedded default model.

prepare model → build dataset (reverse-tune, induce, filter, respond, self-evaluate, assemble) →
SFT → DPO (LoRA) → evaluate base vs aligned → write (or push) the release folders → summary.
Every step resumes: the pipeline from its state store, training from its last checkpoint, the
evaluation from the response cache; a finished step is skipped on rerun.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from rich.console import Console
from rich.table import Table

from safer_instruct.errors import SaferInstructError
from safer_instruct.models import DEFAULT_MODEL_HUB_ID, prepare_default_model
from safer_instruct.resources import local_or_kit, use_kit_files

# as in the checkout; read from the working directory when it has them, else from the installed kit
PIPELINE_CONFIG = "builders/configs/demo.yaml"
RECIPES = "training/recipes/smollm2-135m"
EVAL_CONFIG = Path(__file__).parent / "evaluate" / "configs" / "demo.yaml"
TINY_STEPS = ["--max_steps", "2", "--save_steps", "1", "--logging_steps", "1"]
OVER_REFUSAL_BOUND = 0.15  # the aligned checkpoint may decline at most this share of held-out helpfulness prompts
VALIDATION_TOKENS = 48  # enough to tell a decline from an answer
ANSWER_ROWS = 128  # greedy answers decoding together: 1.4-1.5x faster than 32 on 2 cores (bench/local_generation.py)
RUN_OPTIONS_FILE = "demo.json"  # what the run folder was made with (a rerun asking for other settings is refused)
Precision = Literal["auto", "float32", "bfloat16"]


@dataclass
class DemoOptions:
    """What ``safer-instruct demo`` was asked for."""

    run_dir: Path = Path("runs/demo")
    tiny: bool = False
    seed: int = 0
    dtype: Precision = "auto"
    over_refusal_bound: float = OVER_REFUSAL_BOUND
    push: bool = False
    org: str | None = None


@dataclass
class DemoSummary:
    """Where each artefact is, and the headline numbers."""

    run_dir: Path
    artefacts: dict[str, Path] = field(default_factory=dict)
    rows_per_category: dict[str, int] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    pushed: dict[str, str] = field(default_factory=dict)


def repo_ids(org: str | None) -> dict[str, str]:
    """The three release repos; ``your-org`` stands in until ``--org`` is given."""
    owner = org or "your-org"
    return {
        "dataset": f"{owner}/safer-instruct-demo",
        "model": f"{owner}/smollm2-135m-safer-instruct",
        "space": f"{owner}/safer-instruct-compare",
    }


def artefact_options(options: DemoOptions) -> dict[str, Any]:
    """The options that shape the run's artefacts (``--push`` and ``--org`` only decide where the release goes)."""
    return {
        "seed": options.seed,
        "dtype": options.dtype,
        "tiny": options.tiny,
        "over_refusal_bound": options.over_refusal_bound,
    }


def claim_run_dir(options: DemoOptions) -> None:
    """Record the run folder's options; refuse a rerun that asks for others.

    The pipeline would redo its stages for a new seed, but training, the choice and the evaluation are skipped
    once finished: the folder would mix a new dataset with the old models and report the old figures.
    """
    path = options.run_dir / RUN_OPTIONS_FILE
    wanted = artefact_options(options)
    if not path.is_file():
        options.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        recorded = None
    if not isinstance(recorded, dict):
        raise SaferInstructError(f"{path}: not the options a demo run records; give a new --run-dir")
    changed = [key for key in wanted if recorded.get(key) != wanted[key]]
    if changed:
        was = ", ".join(f"{_as_flag(key, recorded.get(key))} (now {_as_flag(key, wanted[key])})" for key in changed)
        raise SaferInstructError(
            f"{options.run_dir} was made with {was}: its finished steps would be reused; "
            "rerun with its settings to resume it, or give a new --run-dir"
        )


def _as_flag(key: str, value: Any) -> str:
    """``seed, 1`` as ``--seed 1``; ``tiny, False`` as ``no --tiny``."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {value}"


def check_options(options: DemoOptions) -> None:
    """Raise on a seed or bound that would only fail, or mislead, deep inside a step."""
    if not 0 <= options.seed < 2**32:
        raise SaferInstructError(f"--seed {options.seed}: expected an integer from 0 to 2**32 - 1")
    if not 0 <= options.over_refusal_bound <= 1:
        raise SaferInstructError(
            f"--over-refusal-bound {options.over_refusal_bound}: expected a share from 0 to 1 (0.15 for 15%)"
        )


def check_kit_files() -> None:
    """Raise when the demo's configs and data are in neither the working directory nor the installed kit."""
    missing = [p for p in (PIPELINE_CONFIG, RECIPES) if not local_or_kit(p).exists()]
    if missing:
        raise SaferInstructError(f"the kit's demo files are missing (reinstall the kit): {', '.join(missing)}")


def pipeline_config(options: DemoOptions) -> Any:
    """The build's config: the kit's demo config with the run's seed and precision (``--tiny``: shrunk)."""
    from safer_instruct.pipeline.config import load_pipeline_config

    config = use_kit_files(load_pipeline_config(local_or_kit(PIPELINE_CONFIG)))
    apply_seed_and_precision(config, options)
    if options.tiny:
        shrink_pipeline(config)
    return config


def build_dataset(options: DemoOptions, console: Console) -> Path:
    from safer_instruct.pipeline.runner import build

    result = build(pipeline_config(options), options.run_dir, console)
    failed = {stage: len(messages) for stage, messages in result.funnel["failures"].items() if messages}
    if result.problem or failed:  # never train on a partial dataset: the rerun retries the failed items
        raise SaferInstructError(
            result.problem
            or "items failed in "
            + ", ".join(f"{s} ({n})" for s, n in failed.items())
            + "; rerun the same command to retry them"
        )
    if not result.funnel["rows"].get("safety"):
        raise SaferInstructError(
            f"no safety pair survived the pipeline (see {result.dataset_dir / 'funnel.json'}); "
            "training on helpfulness pairs alone would not align anything"
        )
    return result.dataset_dir


def training_overrides(options: DemoOptions) -> list[str]:
    """The seed and, unless ``auto``, the precision of every training run."""
    overrides = ["--seed", str(options.seed)]
    if options.dtype != "auto":
        overrides += ["--bf16", str(options.dtype == "bfloat16").lower()]
    return overrides


def apply_seed_and_precision(config: Any, options: DemoOptions) -> None:
    """The demo's ``--seed`` and ``--dtype`` reach the pipeline's sampling, its models and the reversed model's training."""
    config.seed = options.seed
    config.induce.sampling.seed = options.seed
    for llm in (config.reverse_model.llm, config.judge, config.expert):
        llm.dtype = options.dtype
    if config.reverse_model.train:
        config.reverse_model.train.overrides = [*config.reverse_model.train.overrides, *training_overrides(options)]


def shrink_pipeline(config: Any) -> None:
    """A few items and steps: the same code paths, quickly."""
    for source in config.sources:
        source.limit = 24
    if config.reverse_model.train:
        config.reverse_model.train.overrides = [*config.reverse_model.train.overrides, *TINY_STEPS]
    config.induce.candidates = 1
    # the probe's fit reads hundreds of labelled requests through the judge: the prompted judge's verdict instead
    config.filter.probe = None
    if (
        config.filter.response_match
    ):  # ranked as in the full demo, without the floor: a 2-step reverse model's requests match loosely
        config.filter.response_match.min_gain = -math.inf
    config.induce.sampling.max_new_tokens = 32
    config.respond.sampling.max_new_tokens = 24


def train_step(method: str, options: DemoOptions) -> Path:
    """SFT or DPO with the smollm2-135m recipe, into ``<run>/models/<method>``; skipped when finished."""
    from safer_instruct.training import train

    models = options.run_dir / "models"
    output_dir = models / method
    if (output_dir / "metrics.json").is_file():
        return output_dir
    overrides = [
        "--dataset_name",
        str(options.run_dir / "dataset"),
        "--output_dir",
        str(output_dir),
        *training_overrides(options),
    ]
    if method == "dpo":
        overrides += ["--model_name_or_path", str(models / "sft")]
    if options.tiny:
        overrides += TINY_STEPS
    return train(method, local_or_kit(f"{RECIPES}/{method}.yaml"), overrides).output_dir


def validation_prompts(options: DemoOptions) -> dict[str, list[str]]:
    """The prompts the checkpoints are chosen on, by kind (``safety``: should be declined; ``helpfulness``: should not).

    The dataset's validation split is a fifth of a small dataset: a handful of prompts of each kind, where one
    prompt moves a rate by several points and the choice is noise. With a filter probe, the test part of its
    labelled requests (never fitted on, kept apart from the eval sets) joins them: unsafe requests, and safe ones,
    most of which only look risky, as the benign prompts an over-cautious model declines.
    """
    from safer_instruct.pipeline.assemble import load_preferences
    from safer_instruct.pipeline.judge_probe import test_part_prompts

    validation = load_preferences(options.run_dir).get("validation")
    if validation is None:
        raise SaferInstructError(
            f"{options.run_dir / 'dataset'}: no validation split (assemble.validation_fraction is 0)"
        )
    prompts = {
        kind: [row["prompt"][-1]["content"] for row in validation if row["kind"] == kind]
        for kind in ("safety", "helpfulness")
    }
    probe = pipeline_config(options).filter.probe
    if probe:
        requests = test_part_prompts(probe)
        prompts["safety"] += requests["decline"]
        prompts["helpfulness"] += requests["answer"]
    return prompts


def select_aligned(options: DemoOptions, console: Console) -> Path:
    """Of the SFT adapter and the DPO checkpoints, keep the one the validation prompts prefer (``models/aligned``)."""
    from safer_instruct.config import LLMConfig
    from safer_instruct.evaluate.select import SELECTION_FILE, checkpoints, choose, install, score_candidates
    from safer_instruct.llm import ResponseCache, SamplingParams

    models = options.run_dir / "models"
    target = models / "aligned"
    if (target / SELECTION_FILE).is_file():
        return target
    prompts = validation_prompts(options)
    cache = ResponseCache(options.run_dir / "cache.sqlite")
    try:
        scored = score_candidates(
            checkpoints(models / "sft", models / "dpo"),
            prompts["safety"],
            prompts["helpfulness"],
            LLMConfig(model="default", dtype=options.dtype, decode_batch_size=ANSWER_ROWS),
            SamplingParams(max_new_tokens=VALIDATION_TOKENS),
            cache,
        )
    finally:
        cache.close()
    selection = choose(scored, options.over_refusal_bound)
    for s in selection.sweep:
        console.print(
            f"  {s.name:>9}: harmless {s.harmless:.0%} ({s.n_unsafe}), over-refusal {s.over_refusal:.0%} ({s.n_benign})"
            + ("  [green]<- chosen[/]" if s.name == selection.chosen else "")
        )
    if not selection.within_bound:
        console.print(
            f"[yellow]no checkpoint kept over-refusal within {selection.over_refusal_bound:.0%}; "
            "kept the one that declines benign prompts least"
        )
    return install(selection, target, reports=[models / "dpo" / "metrics.json", models / "dpo" / "curves.png"])


def evaluate(options: DemoOptions, console: Console) -> dict[str, Any]:
    from safer_instruct.evaluate import load_eval_config, run_eval, write_report

    out_dir = options.run_dir / "eval"
    if (out_dir / "results.json").is_file():
        return json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    overrides = [
        f"out_dir={out_dir}",
        f"cache={options.run_dir / 'cache.sqlite'}",
        f"models.aligned.adapter={options.run_dir / 'models' / 'aligned'}",
        *(f"{role}.dtype={options.dtype}" for role in ("models.base", "models.aligned", "judge.llm")),
    ]
    if options.tiny:
        overrides += ["sampling.max_new_tokens=16", "judge_agreement=null"]
        overrides += [f"sets.{name}.limit=4" for name in ("unsafe", "benign_risky", "benign")]
    results = run_eval(load_eval_config(EVAL_CONFIG, overrides), console)
    write_report(results, out_dir, console)
    return results


def release(options: DemoOptions, summary: DemoSummary) -> None:
    """Write the three repo folders; push them only with ``--push`` (token and network needed)."""
    from safer_instruct.hub import publish_dataset, publish_model, publish_space

    ids = repo_ids(options.org)
    target = options.run_dir / "release"
    dry_run = not options.push
    dataset = publish_dataset(options.run_dir, ids["dataset"], local_dir=target / "dataset", dry_run=dry_run)
    model = publish_model(
        options.run_dir / "models" / "aligned",
        ids["model"],
        local_dir=target / "model",
        dry_run=dry_run,
        dataset_id=ids["dataset"],
        eval_dataset_id=ids["dataset"],
        eval_results=options.run_dir / "eval" / "results.json",
    )
    space = publish_space(
        ids["space"],
        base_model=DEFAULT_MODEL_HUB_ID,
        aligned_model=ids["model"],
        dataset_id=ids["dataset"],
        local_dir=target / "space",
        dry_run=dry_run,
    )
    for kind, result in {"dataset": dataset, "model": model, "space": space}.items():
        summary.artefacts[f"release/{kind}"] = result.folder
        if result.url:
            summary.pushed[kind] = result.url


def run_demo(options: DemoOptions, console: Console | None = None) -> DemoSummary:
    """Run (or resume) every step, timing each; return the summary."""
    console = console or Console()
    if options.push and not options.org:
        raise SaferInstructError("--push needs --org ORG (the Hub user or organisation to publish under)")
    check_options(options)
    check_kit_files()
    claim_run_dir(options)
    summary = DemoSummary(options.run_dir)
    steps: list[tuple[str, Callable[[], Any]]] = [
        (
            "1/7 prepare the default model",
            lambda: summary.artefacts.__setitem__("default model", prepare_default_model()),
        ),
        (
            "2/7 build the preference dataset",
            lambda: summary.artefacts.__setitem__("dataset", build_dataset(options, console)),
        ),
        ("3/7 SFT (LoRA)", lambda: summary.artefacts.__setitem__("sft adapter", train_step("sft", options))),
        ("4/7 DPO (LoRA)", lambda: summary.artefacts.__setitem__("dpo checkpoints", train_step("dpo", options))),
        (
            "5/7 choose the checkpoint on validation",
            lambda: summary.artefacts.__setitem__("aligned adapter", select_aligned(options, console)),
        ),
        (
            "6/7 evaluate base vs aligned (test sets)",
            lambda: summary.headline.update(evaluate(options, console).get("summary", {})),
        ),
        ("7/7 write the release folders", lambda: release(options, summary)),
    ]
    for title, step in steps:
        console.rule(f"[bold]{title}")
        started = time.perf_counter()
        step()
        summary.step_seconds[title] = round(time.perf_counter() - started, 1)
        console.print(f"[green]done[/] in {summary.step_seconds[title]:.1f} s")
    summary.artefacts["eval"] = options.run_dir / "eval" / "results.json"
    summary.rows_per_category = rows_per_category(options.run_dir)
    print_summary(summary, console)
    return summary


def rows_per_category(run_dir: Path) -> dict[str, int]:
    from safer_instruct.pipeline.assemble import load_preferences

    counts: dict[str, int] = {}
    for split in load_preferences(run_dir).values():
        for category in split["category"]:
            counts[category] = counts.get(category, 0) + 1
    return dict(sorted(counts.items()))


def _rate(entry: dict[str, Any] | None) -> str:
    """``{rate, low, high, k, n}`` as ``80% [62%, 91%] (32/40)``."""
    if not entry:
        return "n/a"
    return f"{entry['rate']:.0%} [{entry['low']:.0%}, {entry['high']:.0%}] ({entry['k']}/{entry['n']})"


def print_summary(summary: DemoSummary, console: Console) -> None:
    console.rule("[bold]summary")
    where = Table("artefact", "where", title="Artefacts")
    for name, path in summary.artefacts.items():
        where.add_row(name, str(path))
    console.print(where)
    rows = Table("category", "rows", title="Dataset rows per category")
    for category, count in summary.rows_per_category.items():
        rows.add_row(category, str(count))
    console.print(rows)
    numbers = Table("metric", "base", "aligned", title="Before → after (held-out prompts)")
    for metric in ("harmlessness", "over_refusal", "benign_refusal", "helpfulness_win_rate"):
        base, aligned = (summary.headline.get(model, {}).get(metric) for model in ("base", "aligned"))
        if base or aligned:  # no win rate when the judge failed its control check (the eval's tables say why)
            numbers.add_row(metric, _rate(base), _rate(aligned))
    kept = summary.headline.get("aligned", {}).get("capability_kept")
    numbers.add_row("capability kept (reference answers)", "100%", f"{kept['value']:.1%}" if kept else "n/a")
    console.print(numbers)
    total = sum(summary.step_seconds.values())
    console.print(
        f"Total {total / 60:.1f} min. "
        + (
            "Pushed: " + ", ".join(summary.pushed.values())
            if summary.pushed
            else "Nothing pushed (dry run): add --push --org ORG with a Hub token to publish."
        )
    )
    console.print(
        f"Compare the models: [bold]safer-instruct space --aligned-adapter {summary.run_dir / 'models' / 'aligned'}[/]"
    )
