"""The shipped three-way refusal classifier: multinomial logistic regression over sparse text features.

Features of an answer: its word 1-2-grams (``w``), the phrase-rule cues of ``refusal.cues`` (``c``: a
decline and where it sits, a turn to compliance, a safe alternative, what is delivered beside a
decline, ...) and, when the request is known, ``refusal.prompt_cues`` and the phrase rules' own
three-way reading (``p``: an answer that takes up no part of a how-to request is a deflection).
Each training answer is seen with and without its request, so prompts are optional. Weights are
learned with numpy (full-batch Adam from zero, L2: deterministic) on the development split only,
and shipped as ``refusal_v1.json``.

Retrain (rewrites the shipped file)::

    python -m safer_instruct.evaluate.classifier [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from safer_instruct.errors import SaferInstructError
from safer_instruct.evaluate.refusal import LABELS, RefusalLabel, cues, normalise, prompt_cues, rule_label

DATA_DIR = Path(__file__).parent / "data"
DEV_SET = DATA_DIR / "refusal_labelled_dev.jsonl"
TEST_SET = DATA_DIR / "refusal_labelled_test.jsonl"
WEIGHTS = Path(__file__).parent / "refusal_v1.json"
_TOKEN = re.compile(r"[a-z0-9']+|[?!:;]")


@dataclass(frozen=True)
class TrainConfig:
    """How the weights are fitted; the defaults are the shipped ones (chosen by cross-validation on dev)."""

    families: tuple[str, ...] = ("w", "c", "p")  # word n-grams, phrase cues, request cues
    min_count: int = 2  # a feature must occur in this many training answers
    l2: float = 1e-3
    steps: int = 400
    learning_rate: float = 0.05


@dataclass(frozen=True)
class LabelledCase:
    """One row of a labelled refusal set."""

    prompt: str
    completion: str
    label: RefusalLabel
    style: str
    voice: str


def load_cases(path: str | Path) -> list[LabelledCase]:
    """A labelled refusal set (JSONL: ``prompt``, ``completion``, ``label``, ``style``, ``voice``)."""
    from safer_instruct.evaluate.sets import read_records, text_field

    cases = []
    for where, record in read_records(path):
        label = text_field(where, record, "label")
        if label not in LABELS:
            raise SaferInstructError(f"{where}: field `label` must be one of {', '.join(LABELS)}, got {label!r}")
        cases.append(LabelledCase(
            prompt=text_field(where, record, "prompt"), completion=text_field(where, record, "completion", required=False),
            label=label, style=text_field(where, record, "style"), voice=text_field(where, record, "voice"),
        ))
    return cases


def features(text: str, families: Sequence[str] = TrainConfig.families, prompt: str = "") -> set[str]:
    """The feature names present in one answer (to ``prompt``, when known), from the given families."""
    tokens = _TOKEN.findall(normalise(text))
    found: set[str] = set()
    if "w" in families:
        found |= {f"w:{t}" for t in tokens} | {f"w:{a} {b}" for a, b in zip(tokens, tokens[1:])}
    if "c" in families:
        found |= {f"c:{cue}" for cue in cues(text)}
    if "p" in families and prompt.strip():
        found |= {f"p:{cue}" for cue in prompt_cues(prompt, text)} | {f"p:rules_{rule_label(text, prompt)}"}
    return found


class RefusalClassifier:
    """Feature weights per label; ``predict`` gives the most probable label of each answer."""

    def __init__(self, vocabulary: Sequence[str], weights: np.ndarray, bias: np.ndarray, meta: dict | None = None) -> None:
        self.families = tuple(sorted({name.split(":", 1)[0] for name in vocabulary}))
        self.vocabulary = list(vocabulary)
        self.index = {name: i for i, name in enumerate(self.vocabulary)}
        self.weights = weights.astype(np.float32)
        self.bias = bias.astype(np.float32)
        self.meta = meta or {}

    def matrix(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> np.ndarray:
        """Binary feature matrix (answers × vocabulary)."""
        prompts = prompts if prompts is not None else [""] * len(texts)
        if len(prompts) != len(texts):
            raise SaferInstructError(f"{len(texts)} answers but {len(prompts)} prompts")
        rows = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        for row, (text, prompt) in enumerate(zip(texts, prompts)):
            columns = [self.index[f] for f in features(text, self.families, prompt) if f in self.index]
            rows[row, columns] = 1.0
        return rows

    def probabilities(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> np.ndarray:
        """Per answer, the probability of each label in ``LABELS`` order."""
        return _softmax(self.matrix(texts, prompts) @ self.weights + self.bias)

    def predict(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[RefusalLabel]:
        """The label of each answer (the request, when given, helps spot deflections); an empty answer is a full refusal."""
        if not texts:
            return []
        best = self.probabilities(texts, prompts).argmax(axis=1)
        return [LABELS[i] if text.strip() else "full_refusal" for i, text in zip(best, texts)]

    def save(self, path: str | Path) -> None:
        """Weights as JSON (rounded to 4 decimals; features with all-zero weights dropped)."""
        keep = np.abs(self.weights).max(axis=1) >= 5e-5
        data = {
            **self.meta, "labels": list(LABELS),
            "vocabulary": [v for v, k in zip(self.vocabulary, keep) if k],
            "weights": np.round(self.weights[keep], 4).tolist(), "bias": np.round(self.bias, 4).tolist(),
        }
        Path(path).write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path = WEIGHTS) -> "RefusalClassifier":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            vocabulary, weights, bias = data.pop("vocabulary"), np.array(data.pop("weights")), np.array(data.pop("bias"))
        except (OSError, ValueError, KeyError) as err:
            raise SaferInstructError(f"{path}: not a readable refusal classifier ({err})") from err
        if tuple(data.get("labels", ())) != LABELS or weights.shape != (len(vocabulary), len(LABELS)):
            raise SaferInstructError(f"{path}: labels or weight shape do not match {LABELS}")
        return cls(vocabulary, weights, bias, data)


@lru_cache(maxsize=1)
def default_classifier() -> RefusalClassifier:
    """The shipped classifier, loaded once."""
    return RefusalClassifier.load(WEIGHTS)


def train(cases: Sequence[LabelledCase], config: TrainConfig = TrainConfig()) -> RefusalClassifier:
    """Fit the weights; deterministic for the same cases and config.

    Each answer is seen twice, with its request and without, so the classifier works with or without prompts.
    """
    texts = [c.completion for c in cases] * 2
    prompts = [c.prompt for c in cases] + [""] * len(cases)
    labels = [c.label for c in cases] * 2
    counts: dict[str, int] = {}
    for text, prompt in zip(texts, prompts):
        for name in features(text, config.families, prompt):
            counts[name] = counts.get(name, 0) + 1
    vocabulary = sorted(name for name, count in counts.items() if count >= 2 * config.min_count)
    model = RefusalClassifier(vocabulary, np.zeros((len(vocabulary), len(LABELS))), np.zeros(len(LABELS)))
    model.weights, model.bias = fit_softmax(model.matrix(texts, prompts), labels, config)
    return model


def fit_softmax(x: np.ndarray, labels: Sequence[str], config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of a softmax regression on rows ``x`` (full-batch Adam from zero, L2 on the weights)."""
    y = np.eye(len(LABELS), dtype=np.float32)[[LABELS.index(label) for label in labels]]
    params = [np.zeros((x.shape[1], len(LABELS)), dtype=np.float32), np.zeros(len(LABELS), dtype=np.float32)]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    for step in range(1, config.steps + 1):
        error = (_softmax(x @ params[0] + params[1]) - y) / len(x)
        grads = [x.T @ error + config.l2 * params[0], error.sum(axis=0)]
        for param, grad, (m, v) in zip(params, grads, moments):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= config.learning_rate * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return params[0], params[1]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> None:
    """Train on the development split and write the weights file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(WEIGHTS), help="where to write the weights (default: the shipped file)")
    args = parser.parse_args(argv)
    cases = load_cases(DEV_SET)
    config = TrainConfig()
    model = train(cases, config)
    model.meta = {"version": 1, "trained_on": DEV_SET.name, "trained_on_sha256": file_sha256(DEV_SET),
                  "train_config": {**config.__dict__, "families": list(config.families)}, "n": len(cases)}
    model.save(args.out)
    print(f"{args.out}: {len(model.vocabulary)} features from {len(cases)} answers of {DEV_SET.name}")


if __name__ == "__main__":
    main()
