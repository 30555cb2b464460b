"""The build: stage order, resume, model loading, timing, and the funnel.

Every input is read and checked before any model is loaded. Each model stage walks its input in
fixed batches of ``batch_size`` items (fixed by position, so a resumed run batches, and therefore
samples, exactly as an uninterrupted one) and commits each batch's results to ``state.sqlite``.
"""

from __future__ import annotations

import functools
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
from safer_instruct.pipeline.funnel import build_funnel, funnel_table, write_funnel
from safer_instruct.pipeline.records import fingerprint
from safer_instruct.pipeline.released import import_released
from safer_instruct.pipeline.store import ItemResult, RunStore, run_lock
from safer_instruct.prompts import load_template
from safer_instruct.readers import file_digest, read_hub, read_rows, text_field

log = logging.getLogger(__name__)
ITEM_STAGES = ("collect", "induce", "filter", "respond", "self_evaluate", "assemble")
MODEL_STAGES = ITEM_STAGES[1:-1]
COLLECT_CHUNK = 5000  # collect's results per committed write
FUNNEL_FILES = ("funnel.json", "funnel.png")  # written next to the dataset on every build
Batch = list[tuple[int, dict[str, Any]]]


@dataclass
class Inputs:
    """Everything read from disk (or the Hub), checked, before any model time is spent."""

    responses: list[collect_stage.RawResponse]
    decontaminator: Decontaminator
    helpfulness: list[dict[str, Any] | None]
    released: list[dict[str, Any] | None]
    digest: dict[str, Any]
    benign_prompts: list[str] = field(default_factory=list)  # the filter's calibration set
    judge_requests: list[judge_probe.LabelledRequest] = field(default_factory=list)  # the filter probe's labelled set


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
        config = self.config
        fp = fingerprint(
            "collect",
            inputs.digest["sources"],
            inputs.digest["eval_sets"],
            [s.model_dump(exclude={"path"}) for s in config.sources],
            config.clean.model_dump(),
            config.decontaminate.model_dump(exclude={"eval_sets"}),
        )
        self._collect(fp, inputs)
        reverse_fp = fingerprint(
            "reverse", config.reverse_model.train.model_dump() if config.reverse_model.train else None
        )
        start = time.perf_counter()
        reverse_llm = reverse_stage.reverse_llm(config.reverse_model, self.run_dir, self.store, reverse_fp)
        train_s = time.perf_counter() - start if config.reverse_model.train else 0.0
        if config.reverse_model.train:
            self.store.add_cost(reverse_stage.STAGE, train_s, 0.0, 0.0, {})
        fp = fingerprint(
            fp,
            "induce",
            llm_identity(reverse_llm),
            config.induce.model_dump(),
            *reverse_stage.served_weights(config.reverse_model),
        )
        self._model_stage(
            "induce",
            fp,
            "collect",
            reverse_llm,
            lambda b, llm: induce_stage.process(b, llm, config.induce, inputs.decontaminator, llm.model_id),
        )
        fp = fingerprint(
            fp,
            "filter",
            llm_identity(config.judge),
            config.filter.model_dump(),
            load_template(config.filter.template).sha,
            inputs.digest.get("filter_calibration"),
            inputs.digest.get("filter_probe"),
        )
        probe = functools.cache(
            lambda llm: (
                judge_probe.train_probe(llm, config.filter.probe, inputs.judge_requests)
                if config.filter.probe
                else None
            )
        )
        threshold = functools.cache(
            lambda llm: filter_stage.calibrated_threshold(llm, config.filter, inputs.benign_prompts, probe(llm))
        )
        induced = functools.cache(
            lambda: self.store.outputs(induce_stage.STAGE)
        )  # read once, when the filter first runs
        match = functools.cache(lambda llm: filter_stage.response_match(llm, config.filter, induced()))
        category_bars = functools.cache(
            lambda llm: filter_stage.category_thresholds(
                llm, config.filter, filter_stage.matched(induced(), match(llm)), threshold(llm), probe(llm)
            )
        )
        self._model_stage(
            "filter",
            fp,
            "induce",
            config.judge,
            lambda b, llm: filter_stage.process(
                b, llm, config.filter, llm.model_id, threshold(llm), category_bars(llm), match(llm), probe(llm)
            ),
            info=lambda llm: {"probe": probe(llm).figures} if config.filter.probe else None,
        )
        fp = fingerprint(
            fp,
            "respond",
            llm_identity(config.expert),
            config.respond.model_dump(),
            load_template(config.respond.template).sha,
        )
        self._model_stage(
            "respond",
            fp,
            "filter",
            config.expert,
            lambda b, llm: respond_stage.process(b, llm, config.respond, llm.model_id),
        )
        fp = fingerprint(
            fp,
            "self_evaluate",
            llm_identity(config.expert),
            config.self_evaluate.model_dump(),
            load_template(config.self_evaluate.template).sha,
        )
        self._model_stage(
            "self_evaluate",
            fp,
            "respond",
            config.expert,
            lambda b, llm: self_evaluate_stage.process(b, llm, config.self_evaluate, llm.model_id),
        )
        fp = fingerprint(
            fp,
            "assemble",
            inputs.digest.get("helpfulness"),
            inputs.digest["released"],
            config.helpfulness.model_dump(exclude={"path"}) if config.helpfulness else None,
            config.assemble.model_dump(),
            config.seed,
        )
        return self._assemble(fp, inputs)

    def _collect(self, fp: str, inputs: Inputs) -> None:
        start = time.perf_counter()
        if not self.store.open_stage(collect_stage.STAGE, fp).complete:
            results = collect_stage.iter_collect(inputs.responses, self.config.clean, inputs.decontaminator)
            while chunk := list(itertools.islice(results, COLLECT_CHUNK)):  # stored as they come: memory stays flat
                self.store.record(collect_stage.STAGE, chunk)
            self.store.add_cost(collect_stage.STAGE, time.perf_counter() - start, 0.0, 0.0, {})
            self.store.finish_stage(collect_stage.STAGE, True, settled=True)

    def _model_stage(
        self,
        name: str,
        fp: str,
        upstream: str,
        llm_config: LLMConfig,
        process: Callable[[Batch, TimedLLM], list[ItemResult]],
        info: Callable[[TimedLLM], dict[str, Any] | None] = lambda llm: None,
    ) -> None:
        """Run ``process`` over the upstream outputs not yet done, one committed batch at a time; ``info`` describes the work done.

        A stage that finished on a complete upstream (and whose fingerprint still matches) is skipped without reading its input.
        """
        if self.store.open_stage(name, fp).settled:
            return
        done = self.store.done_keys(name)
        size = sys.maxsize if llm_config.batch_api else self.config.batch_size  # the Batch API: one batch per stage
        start, load_before = time.perf_counter(), self.models.load_s
        llm: TimedLLM | None = None
        model_before, usage_before = 0.0, {}
        total = 0
        progress = tqdm(desc=name, unit="item", disable=None)
        for chunk in positioned_batches(self.store.iter_outputs(upstream), size):  # read as it goes: memory stays flat
            total += len(chunk)
            progress.update(len(chunk))
            batch = [(s, r) for s, r in chunk if r["key"] not in done]
            if not batch:
                continue
            if llm is None:
                llm = self.models.get(llm_config)
                model_before, usage_before = llm.seconds, llm.usage
            try:
                results = process(batch, llm)
            except (DamagedFileError, Unsupported):
                raise  # a damaged cache, or a model that cannot do what the config asks: the run stops, saying why
            except (
                Exception
            ) as err:  # a model error fails the batch's items, kept and retried next run; the run goes on
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
            info(llm) if llm is not None else None,
            settled=self._upstream_complete(name),
        )

    def _upstream_complete(self, name: str) -> bool:
        """Whether every stage before ``name`` is complete (its input can no longer change without a new fingerprint)."""
        return all(self.store.stage(s).complete for s in ITEM_STAGES[: ITEM_STAGES.index(name)])

    def _assemble(self, fp: str, inputs: Inputs) -> BuildResult:
        start = time.perf_counter()
        if not self.store.open_stage(assemble_stage.STAGE, fp).complete:
            safety = [
                assemble_stage.safety_row(r) for r in self.store.outputs(self_evaluate_stage.STAGE)
            ] + inputs.released
            ratio = self.config.helpfulness.ratio if self.config.helpfulness else 0.0
            results = assemble_stage.assemble(
                safety, inputs.helpfulness, ratio, self.config.seed, inputs.decontaminator
            )
            self.store.record(assemble_stage.STAGE, results)
            del safety, results  # the rows are read back below: two copies at once would double the peak memory
            self.store.add_cost(assemble_stage.STAGE, time.perf_counter() - start, 0.0, 0.0, {})
            upstream_complete = self._upstream_complete(assemble_stage.STAGE)
            self.store.finish_stage(assemble_stage.STAGE, upstream_complete, settled=upstream_complete)
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
    """``safer-instruct build CONFIG [--run-dir DIR] [KEY=VALUE ...]``."""
    from safer_instruct.pipeline.config import load_pipeline_config

    return build(load_pipeline_config(config_path, overrides), run_dir, console)
