"""The generation interface every backend implements.

Chat messages (or a raw text prompt) in; text plus token counts out. Judges use ``decide``: a
constrained choice among labels with a probability where the backend allows it. An answer that
cannot be read as one of the labels is an explicit failure (``Decision.error``), never a default.
Backends that can read their own log-probabilities also score given text (``loglikelihood``), and
in-process backends expose the hidden state a prompt leaves where the answer starts (``hidden_states``).
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

from safer_instruct.errors import SaferInstructError

if TYPE_CHECKING:
    import numpy as np

    from safer_instruct.config import SamplingConfig

Message = dict[str, str]
Prompt = str | list[Message]  # a raw text prompt, or chat messages


class Unsupported(SaferInstructError):
    """A backend cannot do what is asked of it (e.g. score given text): no retry would fare better."""


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. ``temperature == 0`` is greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: SamplingConfig) -> SamplingParams:
        """The decoding settings of a config's ``sampling`` section."""
        return cls(**{**config.model_dump(), "stop": tuple(config.stop)})


@dataclass(frozen=True)
class Generation:
    """One answer."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Decision:
    """A judge's choice among labels; ``label`` is None exactly when ``error`` says why."""

    label: str | None
    probability: float | None = None
    raw: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.label is not None

    def probability_of(self, label: str) -> float:
        """P(``label``) in a two-label decision: the backend's probability, or the verdict as certain (1 or 0)
        where it gave none (check ``probability`` to tell the two apart). A failed decision has none to give."""
        if not self.ok:
            raise ValueError(f"a failed decision has no probability: {self.error}")
        if self.probability is None:
            return 1.0 if self.label == label else 0.0
        return self.probability if self.label == label else 1.0 - self.probability


@dataclass(frozen=True)
class Loglikelihood:
    """The summed log-probability of a given text's ``tokens`` tokens."""

    logprob: float
    tokens: int


@dataclass
class Usage:
    """Running totals of what a backend spent."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int, completion_tokens: int, cost_usd: float = 0.0) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost_usd += cost_usd

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


class LLM(ABC):
    """A backend. Subclasses set ``backend`` and ``model_id`` and implement the two methods."""

    backend: str
    model_id: str

    def __init__(self) -> None:
        self.usage = Usage()

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        """Answer every prompt, in order."""

    @abstractmethod
    def decide(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[Decision]:
        """Pick one of ``labels`` for every prompt, in order."""

    def loglikelihood(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Loglikelihood]:
        """log P(continuation | prompt) for each pair, the continuation read as the answer's start."""
        raise Unsupported(f"the {self.backend} backend cannot score given text; use a local model")

    def hidden_states(self, prompts: Sequence[Prompt], layers: Sequence[int] | None = None) -> np.ndarray:
        """Each prompt's hidden states at its last position, where the answer starts: (prompts, layers, width), float32.

        ``layers`` index the model's hidden states (0: the embeddings; negative: from the top); None: all of them.
        """
        raise Unsupported(f"the {self.backend} backend does not expose hidden states; use a local model")

    def close(self) -> None:
        """Free resources (models, connections)."""

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Labels must be distinct, non-empty and none a prefix of another (so answers parse uniquely)."""
    cleaned = tuple(label.strip() for label in labels)
    if len(cleaned) < 2 or any(not label for label in cleaned):
        raise ValueError(f"a decision needs at least two non-empty labels, got {list(labels)}")
    lowered = [label.lower() for label in cleaned]
    for a in lowered:
        for b in lowered:
            if a != b and b.startswith(a):
                raise ValueError(f"label {a!r} is a prefix of {b!r}: answers would be ambiguous")
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"labels must be distinct: {list(labels)}")
    return cleaned


_LEADING_NOISE = re.compile(r"^[\s\"'`*_#>\-\[(]*")


def parse_label(text: str, labels: Sequence[str]) -> Decision:
    """Read an answer strictly: it must begin with exactly one label, as a whole word.

    Leading markdown/quotes are tolerated ("**Unsafe**"); anything else is an explicit failure.
    """
    body = _LEADING_NOISE.sub("", text).lower()
    for label in labels:
        if re.match(re.escape(label.lower()) + r"(?![a-z0-9])", body):
            return Decision(label=label, probability=None, raw=text)
    return Decision(label=None, raw=text, error=f"answer does not start with one of {list(labels)}: {text[:80]!r}")
