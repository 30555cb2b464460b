"""The pipeline config (``builders/configs/*.yaml``): one typed section per stage."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from safer_instruct.config import LLMConfig, SamplingConfig, StrictModel, load_config


class SourceConfig(StrictModel):
    """One source of raw responses: a local file/folder or a Hub dataset, with its column mapping."""

    name: str
    path: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    split: str = "train"
    text_column: str = "text"
    id_column: str | None = "id"  # None: the row number is the id
    category: str | None = None  # one category for every row ...
    category_column: str | None = None  # ... or a column holding it
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_of_each(self) -> SourceConfig:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of `path` or `hub`")
        if (self.category is None) == (self.category_column is None):
            raise ValueError("give exactly one of `category` or `category_column`")
        return self


class CleanConfig(StrictModel):
    """Collect's filters: length bounds, near-duplicate threshold, personal-data scrubbing."""

    min_chars: int = Field(10, ge=1)
    max_chars: int = Field(2000, ge=1)
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1)
    shingle_chars: int = Field(5, ge=2)
    scrub_pii: bool = True


class DecontaminateConfig(StrictModel):
    """Evaluation sets whose prompts must not leak into the data (exact and word n-gram overlap)."""

    eval_sets: list[str] = Field(default_factory=list)
    prompt_column: str = "prompt"
    ngram: int = Field(8, ge=3)


class ReverseTrainConfig(StrictModel):
    """Train the reversed model with the training kit's reverse SFT."""

    recipe: str
    dataset: str
    overrides: list[str] = Field(default_factory=list)  # TRL-style: ["--max_steps", "20"]


class ReverseModelConfig(StrictModel):
    """Train a reversed model (``train``), take an already trained one (``path``), or the one ``llm.model``/``llm.adapter`` names.

    ``path`` is a folder that ``training/reverse_sft.py`` wrote (full weights or a LoRA adapter). With the
    local backend, induce loads it; with the openai backend, a server (e.g. vLLM) serves it as ``llm.model``,
    and ``path`` identifies the weights, so retrained weights redo induce.
    """

    train: ReverseTrainConfig | None = None
    path: str | None = None
    llm: LLMConfig = Field(default_factory=LLMConfig)

    @model_validator(mode="after")
    def _one_model(self) -> ReverseModelConfig:
        if self.train and self.path:
            raise ValueError("give either `train` (train a reversed model) or `path` (a trained one), not both")
        if self.path and self.llm.backend == "local" and (self.llm.model != "default" or self.llm.adapter):
            raise ValueError(
                "with `path`, the local backend loads that folder: leave `llm.model` and `llm.adapter` unset"
            )
        return self


class InduceConfig(StrictModel):
    """Instruction candidates per response from the reversed model (the paper's template, verbatim)."""

    candidates: int = Field(2, ge=1)
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(max_new_tokens=64, temperature=0.7, top_p=0.9, stop=["###"])
    )
    min_chars: int = Field(8, ge=1)
    max_chars: int = Field(400, ge=1)
    echo_threshold: float = Field(0.6, gt=0, le=1)  # shingle Jaccard with the response at or above: an echo


class FilterCalibration(StrictModel):
    """Known-benign prompts that set the bar for an over-eager judge: at most ``max_pass_rate`` of them may pass."""

    path: str
    column: str = "prompt"
    max_pass_rate: float = Field(0.1, ge=0, lt=1)


class ResponseMatchConfig(StrictModel):
    """Keep only the instruction candidates that best explain their response.

    An instruction's gain is the judge model's log P(response | instruction) minus log P(response |
    ``neutral_instruction``), per response token (pointwise mutual information, in nats): a candidate
    that lost the response's intent ("Give me some reasons to eat chicken." for advice to eat raw
    chicken) explains it less well than one that kept it. Needs a judge that scores given text: the local
    backend, or a server that returns prompt log-probabilities (vLLM, SGLang; not the OpenAI API).
    """

    keep_per_response: int = Field(1, ge=1)
    min_gain: float = 0.0
    neutral_instruction: str = Field("Say something.", min_length=1)


class FilterProbeConfig(StrictModel):
    """A trained judge: logistic regression on one of the judge model's hidden states, fitted on labelled requests.

    ``path`` holds rows with ``id``, the request (``prompt_column``) and ``unsafe``/``safe`` (``label_column``).
    A quarter of the rows (by a hash of the id) measure it; below ``min_agreement`` there, the build stops.
    """

    path: str
    prompt_column: str = "prompt"
    label_column: str = "label"
    layer: int | None = (
        None  # which hidden state (0: the embeddings); None: the one that separates best on the development part
    )
    l2: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0], min_length=1)  # chosen by cross-validation
    min_agreement: float = Field(0.75, gt=0, le=1)

    @field_validator("l2")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(value <= 0 for value in values):
            raise ValueError("every L2 strength must be > 0")
        return values


class FilterConfig(StrictModel):
    """The judge keeps instructions it finds unsafe to answer with P(unsafe) >= threshold.

    With ``calibration``, the threshold rises (never falls) to the judge's P(unsafe) quantile on the
    known-benign prompts, so that no more than ``max_pass_rate`` of them would be kept. With
    ``min_keep_per_category``, each source category keeps at least that share of its instructions.
    With ``response_match``, only the candidates that best explain their response reach the judge.
    With ``probe``, P(unsafe) comes from a probe on the judge model's hidden states instead of its words.
    """

    template: str = "judge_v1"
    threshold: float = Field(0.5, ge=0, le=1)
    calibration: FilterCalibration | None = None
    # a source category where the bar keeps less than this share of its instructions gets its own, lower bar:
    # its top share by P(unsafe) (a weak judge under-rates whole categories, e.g. plainly worded illegal how-tos)
    min_keep_per_category: float | None = Field(None, gt=0, le=1)
    response_match: ResponseMatchConfig | None = None
    probe: FilterProbeConfig | None = None


class RespondConfig(StrictModel):
    """The expert writes the preferred (safe) response."""

    template: str = "expert_v1"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_new_tokens=160))
    drop_truncated: bool = True
    # keep only the answer's first N sentences: for a weak expert whose later sentences drift
    max_sentences: int | None = Field(None, ge=1)


class SelfEvaluateConfig(StrictModel):
    """The expert judges its own response; kept when P(safe) >= threshold.

    ``accept_refusals``: a response the kit's refusal detector reads as a clean decline is safe by rule and
    skips the judge (for a weak expert that cannot tell declining a harmful request from complying with it).
    Feigned confusion ("I'm not sure what you're asking") is not a clean decline: it goes to the judge.
    """

    template: str = "self_eval_v1"
    threshold: float = Field(0.5, ge=0, le=1)
    accept_refusals: bool = False


class HelpfulnessMixConfig(StrictModel):
    """Helpfulness preference pairs mixed in at ``ratio`` helpfulness rows per safety row."""

    path: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    split: str = "train"
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    ratio: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> HelpfulnessMixConfig:
        if self.path and self.hub:
            raise ValueError("give either `path` or `hub`, not both")
        return self


class ReleasedConfig(StrictModel):
    """A file in the released Safer-Instruct CSV layout (instruction, rejected, chosen, label) to import."""

    path: str
    source: str = "safer-instruct-release"


class AssembleConfig(StrictModel):
    """Split and export."""

    test_fraction: float = Field(0.1, ge=0, lt=1)
    validation_fraction: float = Field(
        0.0, ge=0, lt=1
    )  # held out to choose settings/checkpoints (never the eval sets)
    export_csv: bool = True  # also write dataset/safer_instruct.csv in the released layout

    @model_validator(mode="after")
    def _room_to_train(self) -> AssembleConfig:
        if self.test_fraction + self.validation_fraction >= 1:
            raise ValueError("test_fraction + validation_fraction must leave rows to train on (sum < 1)")
        return self


class PipelineConfig(StrictModel):
    """Everything ``safer-instruct build`` needs."""

    name: str = "run"
    seed: int = 0
    batch_size: int = Field(16, ge=1)  # items per committed batch (the resume granularity)
    sources: list[SourceConfig] = Field(default_factory=list)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    reverse_model: ReverseModelConfig = Field(default_factory=ReverseModelConfig)
    induce: InduceConfig = Field(default_factory=InduceConfig)
    judge: LLMConfig = Field(default_factory=LLMConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    expert: LLMConfig = Field(default_factory=LLMConfig)
    respond: RespondConfig = Field(default_factory=RespondConfig)
    self_evaluate: SelfEvaluateConfig = Field(default_factory=SelfEvaluateConfig)
    helpfulness: HelpfulnessMixConfig | None = None
    released: list[ReleasedConfig] = Field(default_factory=list)
    assemble: AssembleConfig = Field(default_factory=AssembleConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """The run goes to ``runs/<name>``: a plain folder name, never a path out of ``runs/``."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
            raise ValueError(
                "a plain folder name (letters, digits, '.', '_' and '-'; no '/' and not starting with '.'): "
                "the run goes to runs/<name>; use --run-dir for another place"
            )
        return name

    @model_validator(mode="after")
    def _has_input(self) -> PipelineConfig:
        if not self.sources and not self.released:
            raise ValueError("give at least one entry in `sources` (raw responses) or `released` (CSV imports)")
        names = [source.name for source in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique: {names}")
        if (
            self.filter.response_match
            and self.judge.backend == "openai"
            and any(url is None or urlparse(url).hostname == "api.openai.com" for url in self.judge.base_urls)
        ):
            raise ValueError(
                "filter.response_match scores responses with the judge's own log-probabilities, which the "
                "OpenAI API does not return: serve the judge with vLLM or SGLang (`judge.base_url`) "
                "or use `judge.backend: local`"
            )
        if self.filter.probe and self.judge.backend != "local":
            raise ValueError(
                "filter.probe reads the judge model's hidden states, which only `judge.backend: local` exposes"
            )
        return self


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Load and validate a pipeline config; relative data paths stay relative to the working directory."""
    return load_config(PipelineConfig, path, overrides)
