"""A scripted, deterministic stand-in for a model, for the fast tests of stage, runner, filter and assembly logic.

``FakeLLM`` implements the kit's LLM interface (``safer_instruct.llm.base.LLM``). A test scripts it with rules that
map a substring of the prompt (a raw prompt, or a chat's last message) to an answer; the first matching rule wins
(rules are tried in the order given). Where no rule matches, the answer is derived from a hash of the whole prompt,
so it is the same on every run and in every process. Every call is recorded in ``calls``, and ``usage`` counts one
request per prompt, as the real backends do.

``use_fakes(monkeypatch, ...)`` makes a build load fakes instead of models: the seam is the ``make_llm`` the
pipeline runner calls for each distinct LLM config (``Models.get``). A build's model roles are told apart by the
config's ``model`` field (``reverse_model.llm.model``, ``judge.model``, ``expert.model``), which the fake never
resolves to a folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pytest

from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm import (
    LLM,
    CachedLLM,
    Decision,
    Generation,
    Loglikelihood,
    Prompt,
    ResponseCache,
    SamplingParams,
)
from safer_instruct.llm.base import check_labels, parse_label
from safer_instruct.pipeline import runner

Verdict = str | tuple[str, float]  # a raw answer (read strictly, as a text-only backend reads it) or (label, P(label))


class ScriptedFailure(RuntimeError):
    """What a fake raises for a prompt the test said must fail (a model error: the runner fails the batch)."""


def prompt_text(prompt: Prompt) -> str:
    """What rules match: a raw prompt, or a chat's last message (a template's few-shot turns come before it)."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def unit(*parts: Any) -> float:
    """A number in [0, 1) that depends only on ``parts``."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


WORDS = (
    "amber birch cedar delta ember fjord grove heath inlet juniper kestrel lagoon maple nectar orchid pebble "
    "quartz raven sorrel thistle umber violet willow yarrow"
).split()


def hashed_words(*parts: Any, count: int = 4) -> str:
    """``count`` words that depend only on ``parts`` (no digits: the PII scrubber takes digit runs for phones)."""
    return " ".join(WORDS[int(unit(*parts, n) * len(WORDS))] for n in range(count))


def first_match(rules: Mapping[str, Any], text: str) -> Any | None:
    return next((value for needle, value in rules.items() if needle in text), None)


@dataclass
class Call:
    """One call to a fake: the method, its prompts, and what else it got (params, labels, continuations, layers)."""

    method: str
    prompts: list[Prompt]
    extra: Any = None

    @property
    def texts(self) -> list[str]:
        return [prompt_text(p) for p in self.prompts]


@dataclass
class FakeLLM(LLM):
    """A model whose answers a test scripts; deterministic where it does not.

    - ``answers``: prompt substring -> generated text, or a ``Generation`` (to script ``finish_reason``).
      Default: ``"<model_id> says <four words from the hash>."``; when sampling (temperature > 0), the seed too.
      ``params.stop`` cuts the text at the first stop string, as the real backends do.
    - ``verdicts``: prompt substring -> a ``Verdict``. Default: P(first label) from the hash; the more likely
      label is chosen, with its probability.
    - ``scores``: substring of prompt + "\\n" + continuation -> summed log-probability. Default: between -2 and -1
      per continuation word (``tokens`` is the number of words).
    - ``features``: prompt substring -> a shift along the first axis of the hidden states in ``feature_layers``
      (all layers when None); the rest is unit noise from the hash. ``layers`` hidden states (0: the embeddings)
      of ``width`` numbers each.
    - ``fail``: prompt substrings for which any call raises ``ScriptedFailure``.
    - ``supports``: the optional methods it has; the others raise ``Unsupported`` as a backend without them does.
    """

    model_id: str = "fake"
    answers: Mapping[str, str | Generation] = field(default_factory=dict)
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)
    features: Mapping[str, float] = field(default_factory=dict)
    feature_layers: Sequence[int] | None = None
    layers: int = 5
    width: int = 6
    fail: Sequence[str] = ()
    supports: frozenset[str] = frozenset({"loglikelihood", "hidden_states"})
    calls: list[Call] = field(default_factory=list)
    backend: str = "fake"

    def __post_init__(self) -> None:
        super().__init__()

    # -- what a test reads back -------------------------------------------------------------------
    def prompts(self, method: str) -> list[str]:
        """The text of every prompt ``method`` was called with, in order."""
        return [text for call in self.calls if call.method == method for text in call.texts]

    # -- the interface ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        self._called("generate", prompts, params)
        return [self._generation(p, params) for p in prompts]

    def decide(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[Decision]:
        labels = check_labels(labels)
        self._called("decide", prompts, labels)
        return [self._decision(p, labels) for p in prompts]

    def loglikelihood(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Loglikelihood]:
        if "loglikelihood" not in self.supports:
            return super().loglikelihood(prompts, continuations)
        self._called("loglikelihood", prompts, list(continuations))
        return [self._score(p, c) for p, c in zip(prompts, continuations, strict=True)]

    def hidden_states(self, prompts: Sequence[Prompt], layers: Sequence[int] | None = None) -> np.ndarray:
        if "hidden_states" not in self.supports:
            return super().hidden_states(prompts, layers)
        chosen = list(range(self.layers)) if layers is None else list(layers)
        if outside := [layer for layer in chosen if not -self.layers <= layer < self.layers]:
            raise SaferInstructError(
                f"layer {outside[0]} is outside model {self.model_id!r}'s hidden states 0..{self.layers - 1}"
            )
        self._called("hidden_states", prompts, chosen)
        states = np.zeros((len(prompts), len(chosen), self.width), dtype=np.float32)
        for row, prompt in enumerate(prompts):
            states[row] = self._states(prompt)[chosen]
        return states

    # -- the script -------------------------------------------------------------------------------
    def _called(self, method: str, prompts: Sequence[Prompt], extra: Any) -> None:
        self.calls.append(Call(method, list(prompts), extra))
        for text in map(prompt_text, prompts):
            if any(needle in text for needle in self.fail):
                raise ScriptedFailure(f"{self.model_id}: scripted failure for {text[:60]!r}")
        for text in map(prompt_text, prompts):
            self.usage.add(len(text.split()), 1 if method in ("generate", "decide") else 0)

    def _generation(self, prompt: Prompt, params: SamplingParams) -> Generation:
        text = prompt_text(prompt)
        scripted = first_match(self.answers, text)
        if isinstance(scripted, Generation):
            return scripted
        seed = None if params.greedy else params.seed
        answer = (
            scripted if scripted is not None else f"{self.model_id} says {hashed_words(self.model_id, prompt, seed)}."
        )
        for stop in params.stop:
            answer = answer.split(stop)[0] if stop else answer
        return Generation(answer, len(text.split()), len(answer.split()))

    def _decision(self, prompt: Prompt, labels: tuple[str, ...]) -> Decision:
        scripted = first_match(self.verdicts, prompt_text(prompt))
        if isinstance(scripted, str):
            return parse_label(scripted, labels)
        if scripted is not None:
            label, probability = scripted
            return Decision(label=label, probability=probability, raw=label)
        p_first = unit(self.model_id, "decide", prompt)
        label, probability = (labels[0], p_first) if p_first >= 0.5 else (labels[1], 1 - p_first)
        return Decision(label=label, probability=probability, raw=label)

    def _score(self, prompt: Prompt, continuation: str) -> Loglikelihood:
        tokens = max(len(continuation.split()), 1)
        scripted = first_match(self.scores, f"{prompt_text(prompt)}\n{continuation}")
        logprob = (
            scripted if scripted is not None else -tokens * (1 + unit(self.model_id, "score", prompt, continuation))
        )
        return Loglikelihood(logprob=float(logprob), tokens=tokens)

    def _states(self, prompt: Prompt) -> np.ndarray:
        seed = int(unit(self.model_id, "states", prompt) * 2**32)
        states = np.random.default_rng(seed).standard_normal((self.layers, self.width))
        shift = first_match(self.features, prompt_text(prompt))
        if shift is not None:
            states[list(range(self.layers)) if self.feature_layers is None else list(self.feature_layers), 0] += shift
        return states


@dataclass
class FakeModels:
    """The fakes a build loads, by the config's ``model`` name; a name without one gets an unscripted ``FakeLLM``."""

    fakes: dict[str, FakeLLM]
    cached: bool = False
    loaded: list[LLMConfig] = field(default_factory=list)

    def __getitem__(self, name: str) -> FakeLLM:
        return self.fakes.setdefault(name, FakeLLM(model_id=name))

    def make(self, config: LLMConfig, cache: ResponseCache | Path | str | None = None, **_: Any) -> LLM:
        """``make_llm``'s signature: the fake for ``config.model``, behind the run's response cache when ``cached``."""
        self.loaded.append(config)
        fake = self[config.model]
        if not (self.cached and cache is not None):
            return fake
        return CachedLLM(
            fake, cache if isinstance(cache, ResponseCache) else ResponseCache(cache), identity=f"fake:{config.model}"
        )


def use_fakes(monkeypatch: pytest.MonkeyPatch, *fakes: FakeLLM, cached: bool = False) -> FakeModels:
    """From here on, a build in this test loads ``fakes`` (``model_id``: the config's ``model``) instead of models."""
    models = FakeModels({fake.model_id: fake for fake in fakes}, cached)
    monkeypatch.setattr(runner, "make_llm", models.make)
    return models
