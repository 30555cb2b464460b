"""The build: read and check every input, then run the declared stages in order, resumably, and write the funnel.

Every input is read and checked before any model is loaded. The stages (``STAGES``) declare what they read, write
and cover (``contract.py``); the runner treats them alike. A batched stage walks its input in fixed batches of
``batch_size`` items (fixed by position, so a resumed run batches, and therefore samples, exactly as an
uninterrupted one) and commits each batch's results to ``state.sqlite``.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from safer_instruct.config import LLMConfig, dump_config
from safer_instruct.errors import DamagedFileError, SaferInstructError
from safer_instruct.llm import LLM, Unsupported, make_llm
from safer_instruct.llm.batch import BatchLedger
from safer_instruct.llm.cache import model_fingerprint
from safer_instruct.pipeline import assemble as assemble_stage
from safer_instruct.pipeline import collect as collect_stage
from safer_instruct.pipeline import filter as filter_stage
from safer_instruct.pipeline import induce as induce_stage
from safer_instruct.pipeline import judge_probe
from safer_instruct.pipeline import respond as respond_stage
from safer_instruct.pipeline import reverse_model as reverse_stage
from safer_instruct.pipeline import self_evaluate as self_evaluate_stage
from safer_instruct.pipeline.clean import Decontaminator
from safer_instruct.pipeline.config import PipelineConfig
from safer_instruct.pipeline.contract import Batch, Context, Inputs, Stage
from safer_instruct.pipeline.funnel import build_funnel, funnel_table, write_funnel
from safer_instruct.pipeline.records import fingerprint
from safer_instruct.pipeline.released import import_released
from safer_instruct.pipeline.store import ItemResult, RunStore, run_lock
from safer_instruct.prompts import load_template
from safer_instruct.readers import file_digest, read_hub, read_rows, text_field

log = logging.getLogger(__name__)
STAGES: tuple[Stage, ...] = tuple(
    module.CONTRACT
    for module in (collect_stage, induce_stage, filter_stage, respond_stage, self_evaluate_stage, assemble_stage)
)
ITEM_STAGES = tuple(stage.name for stage in STAGES)
MODEL_STAGES = tuple(stage.name for stage in STAGES if stage.model)
RESULT_CHUNK = 5000  # a whole-set stage's results per committed write
FUNNEL_FILES = ("funnel.json", "funnel.png")  # written next to the dataset on every build
NOT_YET = object()  # a batched stage's whole-set pass before it ran


@dataclass
class BuildResult:
    """Where the dataset went, its split sizes and the funnel document; ``problem`` when nothing usable came out."""

    run_dir: Path
    dataset_dir: Path
    splits: dict[str, int]
    funnel: dict[str, Any]
    problem: str | None = None


class TimedLLM:
    """An LLM whose model calls are timed (the funnel's model time)."""

    def __init__(self, llm: LLM, display_id: str) -> None:
        self.llm, self.model_id, self.seconds = llm, display_id, 0.0

    @property
    def usage(self) -> dict[str, float]:
        return self.llm.usage.as_dict()

    def generate(self, prompts, params):
        return self._timed(self.llm.generate, prompts, params)

    def decide(self, prompts, labels):
        return self._timed(self.llm.decide, prompts, labels)

    def loglikelihood(self, prompts, continuations):
        return self._timed(self.llm.loglikelihood, prompts, continuations)

    def hidden_states(self, prompts, layers=None):
        return self._timed(self.llm.hidden_states, prompts, layers)

    def _timed(self, call: Callable, *args: Any):
        start = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.seconds += time.perf_counter() - start


@dataclass
class Models:
    """Each distinct LLM config is loaded once, lazily, behind the run's response cache."""

    run_dir: Path
    cache_path: Path
    ledger: BatchLedger | None = None  # where Batch API ids are kept (the run state)
    loaded: dict[str, TimedLLM] = field(default_factory=dict)
    load_s: float = 0.0

    def get(self, config: LLMConfig) -> TimedLLM:
        key = config.model_dump_json()
        if key not in self.loaded:
            start = time.perf_counter()
            self.loaded[key] = TimedLLM(
                make_llm(config, cache=self.cache_path, ledger=self.ledger), display_id(config, self.run_dir)
            )
            self.load_s += time.perf_counter() - start
        return self.loaded[key]

    def close(self) -> None:
        for timed in self.loaded.values():
            timed.llm.close()


def positioned_batches(records: Iterable[dict[str, Any]], size: int) -> Iterator[Batch]:
    """``(seq, record)`` batches of ``size`` by input position, so a resumed run batches as an uninterrupted one."""
    numbered = enumerate(records)
    while chunk := list(itertools.islice(numbered, size)):
        yield chunk


def display_id(config: LLMConfig, run_dir: Path) -> str:
    """The model id for provenance: paths inside the run dir are shown relative to it."""

    def short(name: str) -> str:
        path = Path(name)
        return str(path.relative_to(run_dir)) if path.is_absolute() and path.is_relative_to(run_dir) else name

    name = short(str(Path(config.model).resolve())) if Path(config.model).is_dir() else config.model
    return name + (f"+{short(config.adapter)}" if config.adapter else "")


def llm_identity(config: LLMConfig) -> dict[str, Any]:
    """What decides a model's answers (not how to reach it): part of stage fingerprints."""
    fields = config.model_dump(include={"backend", "model", "adapter", "load_in_4bit", "dtype"})
    fields["weights"] = [model_fingerprint(p) for p in (config.model, config.adapter or "") if p and Path(p).is_dir()]
    return fields


def read_inputs(config: PipelineConfig) -> Inputs:
    """Read and check every source, eval set, helpfulness file, released CSV and template."""
    for template in (config.filter.template, config.respond.template, config.self_evaluate.template):
        load_template(template).render(instruction="an instruction", response="a response")  # fails here, not per item
    reverse_stage.check(config.reverse_model)
    responses = [r for source in config.sources for r in collect_stage.load_source(source)]
    prompts: list[str] = []
    digests: dict[str, Any] = {"eval_sets": [file_digest(path) for path in config.decontaminate.eval_sets]}
    for path in config.decontaminate.eval_sets:
        rows = read_rows(path, [config.decontaminate.prompt_column])
        prompts += [text_field(row, config.decontaminate.prompt_column, False) for row in rows]
    helpful: list[dict[str, Any] | None] = []
    if config.helpfulness and (config.helpfulness.path or config.helpfulness.hub):
        spec = config.helpfulness
        columns = [spec.prompt_column, spec.chosen_column, spec.rejected_column]
        rows = read_rows(spec.path, columns) if spec.path else read_hub(spec.hub, spec.hub_config, spec.split, columns)
        source = Path(spec.path).name if spec.path else spec.hub
        helpful = [assemble_stage.helpfulness_row(row, n, spec, source) for n, row in enumerate(rows, start=1)]
        digests["helpfulness"] = file_digest(spec.path) if spec.path else f"{spec.hub}:{spec.split}"
    released = [row for item in config.released for _, row in import_released(item.path, item.source)]
    digests["released"] = [file_digest(item.path) for item in config.released]
    digests["sources"] = [collect_stage.source_digest(source) for source in config.sources]
    benign: list[str] = []
    if calibration := config.filter.calibration:
        benign = [
            text_field(row, calibration.column, False) for row in read_rows(calibration.path, [calibration.column])
        ]
        digests["filter_calibration"] = file_digest(calibration.path)
    requests: list[judge_probe.LabelledRequest] = []
    if probe := config.filter.probe:
        requests = judge_probe.load_requests(probe)
        digests["filter_probe"] = file_digest(probe.path)
    return Inputs(
        responses, Decontaminator(prompts, config.decontaminate.ngram), helpful, released, digests, benign, requests
    )


class Build:
    """One build of one run directory."""

    def __init__(self, config: PipelineConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, run_dir
        self.store = RunStore(run_dir / "state.sqlite")
        self.models = Models(run_dir.resolve(), run_dir / "cache.sqlite", ledger=self.store)

    def close(self) -> None:
        self.models.close()
        self.store.close()

    def run(self, inputs: Inputs) -> BuildResult:
        """Each stage in order, skipped when it settled with the fingerprint it has now; then the dataset and funnel."""
        ctx = Context(self.config, inputs, self.run_dir, self.store)
        upstream_fp: list[str] = []  # fingerprints chain: each stage's starts with its upstream's
        for stage in STAGES:
            model = stage.model.config(ctx) if stage.model else None
            fp = fingerprint(*upstream_fp, *stage.fingerprint_parts(ctx, llm_identity(model) if model else None))
            upstream_fp = [fp]
            if self.store.open_stage(stage.name, fp).settled:
                continue  # settled on a complete upstream: skipped without reading its input
            if stage.process is None:
                self._whole_set(stage, ctx)
            else:
                self._batched(stage, ctx, model)
        return self._write_dataset()

    def _whole_set(self, stage: Stage, ctx: Context) -> None:
        """Run a whole-set stage, storing its results as they come (memory stays flat)."""
        start = time.perf_counter()
        results = iter(stage.whole_set(ctx, None))
        while True:
            chunk = list(itertools.islice(results, RESULT_CHUNK))
            self.store.record(stage.name, chunk)
            if len(chunk) < RESULT_CHUNK:
                break
        del results  # the rows are read back later: two copies at once would double the peak memory
        self.store.add_cost(stage.name, time.perf_counter() - start, 0.0, 0.0, {})
        upstream_complete = self._upstream_complete(stage.name)
        self.store.finish_stage(stage.name, upstream_complete, settled=upstream_complete)

    def _batched(self, stage: Stage, ctx: Context, llm_config: LLMConfig) -> None:
        """Run ``stage.process`` over the upstream records not yet done, one committed batch at a time.

        The whole-set pass runs before the first batch that has work; a model error fails the batch's items (kept,
        and retried next run) and the run goes on.
        """
        name = stage.name
        done = self.store.done_keys(name)
        size = sys.maxsize if llm_config.batch_api else self.config.batch_size  # the Batch API: one batch per stage
        start, load_before = time.perf_counter(), self.models.load_s
        llm: TimedLLM | None = None
        model_before, usage_before = 0.0, {}
        prepared: Any = NOT_YET  # the whole-set pass's result, once it ran
        total = 0
        progress = tqdm(desc=name, unit="item", disable=None)
        for chunk in positioned_batches(self.store.iter_outputs(stage.upstream), size):  # memory stays flat
            total += len(chunk)
            progress.update(len(chunk))
            batch = [(s, r) for s, r in chunk if r["key"] not in done]
            if not batch:
                continue
            if llm is None:
                llm = self.models.get(llm_config)
                model_before, usage_before = llm.seconds, llm.usage
            try:
                if prepared is NOT_YET:
                    prepared = stage.whole_set(ctx, llm) if stage.whole_set else None
                results = stage.process(ctx, batch, llm, prepared)
            except (DamagedFileError, Unsupported):
                raise  # a damaged cache, or a model that cannot do what the config asks: the run stops, saying why
            except Exception as err:  # a model error fails the batch's items, kept and retried next run
                log.warning("%s: batch failed: %s", name, err, exc_info=log.isEnabledFor(logging.DEBUG))
                results = [
                    ItemResult(r["key"], s, r["category"], error=f"{type(err).__name__}: {err}") for s, r in batch
                ]
            self.store.record(name, results)
        usage = {}
        if llm is not None:
            usage = {llm.model_id: {k: v - usage_before.get(k, 0) for k, v in llm.usage.items()}}
        model_s = llm.seconds - model_before if llm else 0.0
        self.store.add_cost(name, time.perf_counter() - start, model_s, self.models.load_s - load_before, usage)
        progress.close()
        stored, failed = self.store.counts(name)
        self.store.finish_stage(
            name,
            not failed and stored == total,
            None if prepared is NOT_YET else stage.describe(prepared),
            settled=self._upstream_complete(name),
        )

    def _upstream_complete(self, name: str) -> bool:
        """Whether every stage before ``name`` is complete (its input can no longer change without a new fingerprint)."""
        return all(self.store.stage(s).complete for s in ITEM_STAGES[: ITEM_STAGES.index(name)])

    def _write_dataset(self) -> BuildResult:
        """The dataset files (rewritten when assemble's rows changed, or the files on disk did) and the funnel."""
        dataset_dir = self.run_dir / assemble_stage.DATASET_DIR
        written = self.store.stage(assemble_stage.STAGE).written
        if written is None or written["files"] != dataset_files(dataset_dir):  # unwritten, or changed on disk since
            rows = self.store.outputs(assemble_stage.STAGE)
            splits = assemble_stage.write_dataset(rows, self.run_dir, self.config.assemble, self.config.seed)
            written = {
                "splits": splits,
                "rows": {kind: sum(r["kind"] == kind for r in rows) for kind in ("safety", "helpfulness")},
                "files": dataset_files(dataset_dir),
            }
            del rows
            self.store.set_written(assemble_stage.STAGE, written)
        extra: dict[str, Any] = {"splits": written["splits"], "rows": written["rows"]}
        if self.config.reverse_model.train:
            extra["reverse_model"] = {
                **self.store.stage(reverse_stage.STAGE).info,
                "wall_s": round(self.store.stage(reverse_stage.STAGE).wall_s, 2),
            }
        funnel = build_funnel(self.store, ITEM_STAGES, extra)
        write_funnel(funnel, dataset_dir)
        return BuildResult(self.run_dir, dataset_dir, written["splits"], funnel)


def dataset_files(folder: Path) -> dict[str, list[int]]:
    """The dataset files in ``folder`` (the funnel aside), each with its size and modification time: a rerun rewrites
    the dataset when these differ from what it last wrote (a file deleted, replaced or edited)."""
    if not folder.is_dir():
        return {}
    stats = {path.name: path.stat() for path in folder.iterdir() if path.is_file() and path.name not in FUNNEL_FILES}
    return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in sorted(stats.items())}


def build(config: PipelineConfig, run_dir: str | Path | None = None, console=None) -> BuildResult:
    """Run (or resume) the whole pipeline into ``run_dir`` (default ``runs/<config.name>``)."""
    run_dir = Path(run_dir or Path("runs") / config.name)
    inputs = read_inputs(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise SaferInstructError(f"{run_dir}: exists and is not a folder; choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        runner = Build(config, run_dir)  # a damaged state.sqlite stops here, before anything is written
        try:
            dump_config(config, run_dir / "config.yaml")
            result = runner.run(inputs)
        finally:
            runner.close()
    result.problem = run_problem(result.funnel, result.dataset_dir)
    if console is not None:
        console.print(funnel_table(result.funnel))
        for stage, messages in result.funnel["failures"].items():
            console.print(f"[red]{stage}: {len(messages)} item(s) failed; rerun to retry them.[/] e.g. {messages[0]}")
    return result


def run_problem(funnel: dict[str, Any], dataset_dir: Path) -> str | None:
    """Why a finished build gave nothing usable: a model stage all of whose items failed, or an empty dataset."""
    where = f"the funnel is in {dataset_dir / 'funnel.json'}"
    for stage in MODEL_STAGES:
        entry = funnel["stages"][stage]
        if entry["in"] and entry["failed"] == entry["in"]:
            example = funnel["failures"][stage][0].splitlines()[0]
            return (
                f"every {stage} batch failed ({entry['failed']} items; e.g. {example}); fix the cause and rerun "
                f"to retry them ({where})"
            )
    if not sum(funnel["splits"].values()):
        return f"the dataset is empty: no row was kept ({where})"
    return None


def build_from_file(
    config_path: str | Path, run_dir: str | Path | None = None, overrides: Sequence[str] = (), console=None
) -> BuildResult:
    """``safer-instruct build --config CONFIG [--run-dir DIR] [KEY=VALUE ...]``."""
    from safer_instruct.pipeline.config import load_pipeline_config

    return build(load_pipeline_config(config_path, overrides), run_dir, console)
