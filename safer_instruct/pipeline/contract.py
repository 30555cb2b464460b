"""The stage contract: what a pipeline stage declares, so that the runner can run, resume and count any stage alike.

A stage reads the records its ``upstream`` stage passed on (the first stage reads the source rows) and passes
records on. It declares the record fields it ``reads`` and ``writes`` (``records.py`` holds the schema; every stage
also adds an entry of its own to ``provenance``, which is not listed), and what its fingerprint ``covers``: a stage's
fingerprint is its upstream's, its name, its model's identity (when it has a ``model``) and the parts it covers,
so a change anywhere up the chain redoes it. Two kinds:

- a **batched** stage has ``process``: the runner hands it one batch of not-yet-done records at a time and commits
  its results, so a killed build resumes at its last batch. Its optional ``whole_set`` pass runs once, before its
  first batch, with its model, over what every batch shares (the filter's probe fit, calibrated threshold, response
  match and category bars); what it returns goes to each ``process`` call and to ``describe`` (the funnel's info).
- a **whole-set** stage has no ``process`` and no model: its ``whole_set`` pass makes all its results at once
  (collect's deduplication and assemble's helpfulness ratio need the whole set).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from safer_instruct.prompts import load_template

if TYPE_CHECKING:
    from safer_instruct.config import LLMConfig
    from safer_instruct.llm import LLM
    from safer_instruct.pipeline.clean import Decontaminator
    from safer_instruct.pipeline.collect import RawResponse
    from safer_instruct.pipeline.config import PipelineConfig
    from safer_instruct.pipeline.judge_probe import LabelledRequest
    from safer_instruct.pipeline.store import ItemResult, RunStore

Batch = list[tuple[int, dict[str, Any]]]  # (position in the stage's input, record)


@dataclass
class Inputs:
    """Everything read from disk (or the Hub), checked, before any model time is spent."""

    responses: list[RawResponse]
    decontaminator: Decontaminator
    helpfulness: list[dict[str, Any] | None]
    released: list[dict[str, Any] | None]
    digest: dict[str, Any]
    benign_prompts: list[str] = field(default_factory=list)  # the filter's calibration set
    judge_requests: list[LabelledRequest] = field(default_factory=list)  # the filter probe's labelled set


@dataclass
class Context:
    """What a stage's functions are given: the config, the checked inputs, the run dir and its state."""

    config: PipelineConfig
    inputs: Inputs
    run_dir: Path
    store: RunStore


class Covers(NamedTuple):
    """One thing a stage's fingerprint covers: what it is (for the docs), and its parts (usually one value)."""

    what: str
    parts: Callable[[Context], Sequence[Any]]


def setting(what: str, value: Callable[[Context], Any]) -> Covers:
    """A ``Covers`` of one value."""
    return Covers(what, lambda ctx: [value(ctx)])


class Model(NamedTuple):
    """The model a stage calls: its role (for the docs) and its LLM config (resolved once per build)."""

    what: str
    config: Callable[[Context], LLMConfig]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, as the runner sees it."""

    name: str
    upstream: str | None  # the stage whose records it reads; None: the source rows
    reads: tuple[str, ...]
    writes: tuple[str, ...]  # fields it adds or replaces (assemble: the preference row's columns)
    covers: tuple[Covers, ...]
    model: Model | None = None
    process: Callable[[Context, Batch, LLM, Any], list[ItemResult]] | None = None
    whole_set: Callable[[Context, LLM | None], Any] | None = None  # whole-set stage: returns its results
    describe: Callable[[Any], dict[str, Any] | None] = lambda prepared: None

    def __post_init__(self) -> None:
        if (self.process is None) != (self.model is None) or (self.process is None and self.whole_set is None):
            raise ValueError(f"stage {self.name}: give `process` and `model`, or `whole_set` alone")

    def fingerprint_parts(self, ctx: Context, identity: Any = None) -> list[Any]:
        """The stage's name, its model's identity (when it has a model) and every part it covers."""
        own = [part for covers in self.covers for part in covers.parts(ctx)]
        return [self.name, *([identity] if self.model else []), *own]


def role(name: str) -> Model:
    """The model of the config's section ``name`` (``judge``, ``expert``)."""
    return Model(f"the {name} (`{name}`)", lambda ctx: getattr(ctx.config, name))


def section_and_template(section: str) -> tuple[Covers, Covers]:
    """A config section's settings and the text of the template it names: a prompted stage's fingerprint covers both."""
    return (
        setting(f"`{section}`", lambda ctx: getattr(ctx.config, section).model_dump()),
        setting(
            f"the `{section}.template` text", lambda ctx: load_template(getattr(ctx.config, section).template).sha
        ),
    )


def prompted_stage(
    name: str,
    upstream: str,
    reads: tuple[str, ...],
    writes: tuple[str, ...],
    model: str,
    process: Callable[[Batch, LLM, Any, str], list[ItemResult]],
) -> Stage:
    """A batched stage that prompts the model of section ``model`` with the template of its own config section;
    ``process(batch, llm, section, model_id)``."""
    return Stage(
        name=name,
        upstream=upstream,
        reads=reads,
        writes=writes,
        model=role(model),
        covers=section_and_template(name),
        process=lambda ctx, batch, llm, _: process(batch, llm, getattr(ctx.config, name), llm.model_id),
    )
