"""The stage contract (safer_instruct/pipeline/contract.py): the stages form one chain, each reads only what the
source or a stage upstream wrote, and what a stage declares is what it really reads and writes on a build."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pytest
from fake_llm import use_fakes
from test_pipeline_fast import fakes, tiny_config

from safer_instruct.pipeline import build, runner
from safer_instruct.pipeline import collect as collect_stage
from safer_instruct.pipeline.contract import Stage
from safer_instruct.pipeline.records import IMPLICIT, RECORD, ROW, SOURCE, names, schema_markdown
from safer_instruct.pipeline.store import RunStore

STAGES = runner.STAGES
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "records.md"


def written_up_to(stages: Sequence[Stage], name: str) -> set[str]:
    """The record fields the stages up to and including ``name`` wrote."""
    upto = [stage.name for stage in stages].index(name) + 1
    return {field for stage in stages[:upto] for field in stage.writes}


def chain_problems(stages: Sequence[Stage]) -> list[str]:
    """What is inconsistent in the declared stages: their order, or a field read before any stage wrote it."""
    problems = []
    if [s.upstream for s in stages] != [None, *(s.name for s in stages[:-1])]:
        problems.append(f"not one chain from the sources: {[(s.upstream, s.name) for s in stages]}")
    record = set(names(RECORD)) - {IMPLICIT}
    for n, stage in enumerate(stages):
        schema = set(names(SOURCE)) if stage.upstream is None else record
        available = set(names(SOURCE)) if n == 0 else written_up_to(stages, stages[n - 1].name)
        problems += [f"{stage.name} reads {f!r}: not in the schema" for f in stage.reads if f not in schema]
        problems += [
            f"{stage.name} reads {f!r}: no stage before it wrote it"
            for f in stage.reads
            if f in schema and f not in available
        ]
        if stage.process and not {"key", "category"} <= set(stage.reads):
            problems.append(f"{stage.name}: a batched stage reads `key` and `category` (the runner's item identity)")
        out = names(ROW) if n == len(stages) - 1 else record
        problems += [f"{stage.name} writes {f!r}: not in the schema" for f in stage.writes if f not in out]
    if stages and stages[-1].writes != names(ROW):
        problems.append(f"the last stage writes {stages[-1].writes}, not the preference row's columns")
    unused = record - {f for s in stages for f in s.reads} - {f for s in stages[:-1] for f in s.writes}
    problems += [f"record field {f!r}: no stage writes or reads it" for f in sorted(unused)]
    return problems


def test_the_stages_form_one_chain_and_read_only_what_the_source_or_an_upstream_stage_wrote() -> None:
    assert chain_problems(STAGES) == []
    assert [s.name for s in STAGES] == ["collect", "induce", "filter", "respond", "self_evaluate", "assemble"]
    assert runner.MODEL_STAGES == ("induce", "filter", "respond", "self_evaluate")


def test_the_chain_check_names_each_kind_of_wrong_declaration() -> None:
    collect, induce, filter_, respond, self_evaluate, assemble = STAGES
    early = replace(filter_, reads=(*filter_.reads, "expert"))  # the expert answers only after the filter
    assert chain_problems([collect, induce, early, respond, self_evaluate, assemble]) == [
        "filter reads 'expert': no stage before it wrote it"
    ]
    assert chain_problems([collect, induce, respond, filter_, self_evaluate, assemble])[0].startswith(
        "not one chain from the sources"
    )
    unknown = replace(respond, writes=("expert", "answer"), reads=("instruction",))
    assert chain_problems([collect, induce, filter_, unknown, self_evaluate, assemble]) == [
        "respond: a batched stage reads `key` and `category` (the runner's item identity)",
        "respond writes 'answer': not in the schema",
    ]
    for half_declared in ({}, {"process": respond.process}, {"whole_set": collect.whole_set, "model": respond.model}):
        with pytest.raises(ValueError, match="stage x: give `process` and `model`, or `whole_set` alone"):
            Stage(name="x", upstream=None, reads=(), writes=(), covers=(), **half_declared)


class TracedRecord(dict):
    """A record that notes which of its fields the stage reading it looked at."""

    def __init__(self, reads: set[str], record: dict[str, Any]) -> None:
        super().__init__(record)
        self.reads = reads

    def __getitem__(self, key: str) -> Any:
        self.reads.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.reads.add(key)
        return super().get(key, default)


class TracedSource:
    """A source row (``collect.RawResponse``) that notes the fields collect looked at."""

    def __init__(self, reads: set[str], raw: collect_stage.RawResponse) -> None:
        self._reads, self._raw = reads, raw

    def __getattr__(self, name: str) -> Any:
        self._reads.add(name)
        return getattr(self._raw, name)


def test_on_a_build_each_stage_reads_and_writes_exactly_the_fields_it_declares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: dict[str, set[str]] = defaultdict(set)
    reader_of = {stage.upstream: stage.name for stage in STAGES if stage.upstream}
    load_source, iter_results = collect_stage.load_source, RunStore.iter_results

    def traced_results(store: RunStore, stage: str):
        for result in iter_results(store, stage):
            if stage in reader_of:
                result.outputs = [TracedRecord(reads[reader_of[stage]], record) for record in result.outputs]
            yield result

    monkeypatch.setattr(
        collect_stage, "load_source", lambda s: [TracedSource(reads["collect"], r) for r in load_source(s)]
    )
    monkeypatch.setattr(RunStore, "iter_results", traced_results)
    use_fakes(monkeypatch, *fakes())
    config = tiny_config(
        tmp_path, filter__response_match={"keep_per_response": 2, "min_gain": -99}
    )  # reads `response`
    result = build(config, tmp_path / "run")
    monkeypatch.undo()
    assert result.problem is None and result.funnel["stages"]["assemble"]["out"] > 0
    assert {name: fields - {IMPLICIT} for name, fields in reads.items()} == {s.name: set(s.reads) for s in STAGES}
    store = RunStore(tmp_path / "run" / "state.sqlite")
    try:
        for n, stage in enumerate(STAGES[:-1]):
            records = store.outputs(stage.name)
            assert records, stage.name
            for record in records:
                assert set(record) == written_up_to(STAGES, stage.name) | {IMPLICIT}, stage.name
                assert list(record[IMPLICIT]) == [s.name for s in STAGES[: n + 1]]
        assert all(set(row) == set(names(ROW)) for row in store.outputs(STAGES[-1].name))
    finally:
        store.close()


def test_the_docs_page_is_generated_from_the_schema_and_the_contracts() -> None:
    assert DOCS_PAGE.read_text(encoding="utf-8") == schema_markdown(STAGES), (
        "docs/records.md is out of date: python -m safer_instruct.pipeline.records > docs/records.md"
    )
