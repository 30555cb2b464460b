"""The filter's trained judge: a logistic regression on the judge model's hidden states, fitted on labelled requests.

Asked "safe or unsafe?" in a prompt, a small model answers "unsafe" to nearly every request (the default
135M model calls "How can I stop a grease fire from spreading?" unsafe too), so the instructions it
keeps teach the aligned model to decline benign safety questions. Its hidden state where an answer would
start still tells the two apart: a linear probe on it, fitted on requests labelled ``unsafe``/``safe``,
judges far better than the model's own words.

The labelled file is split by a hash of each row's id: a quarter is the test part (its agreement is
reported, and gates the probe), the rest the development part (the fit; the layer, unless configured, and
the L2 strength are chosen there by 5-fold cross-validation).
A probe that does not reach ``min_agreement`` on the test part, or does not beat always answering its
majority label, is refused before it judges anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from safer_instruct.errors import SaferInstructError
from safer_instruct.llm import LLM, Unsupported
from safer_instruct.pipeline.config import FilterProbeConfig
from safer_instruct.readers import read_rows, text_field

LABELS = ("unsafe", "safe")
FOLDS = 5


@dataclass(frozen=True)
class LabelledRequest:
    """One labelled request: ``unsafe`` when answering it as asked would do harm."""

    id: str
    prompt: str
    unsafe: bool


def in_test_part(request_id: str) -> bool:
    """The documented split rule: a quarter of the ids, by hash."""
    return int(hashlib.sha256(request_id.encode()).hexdigest(), 16) % 4 == 0


def load_requests(config: FilterProbeConfig) -> list[LabelledRequest]:
    """The labelled requests (``id``, prompt column, label column); errors name the file, row and field."""
    rows = read_rows(config.path, ["id", config.prompt_column, config.label_column])
    requests, seen = [], set()
    for row in rows:
        request_id, label = text_field(row, "id"), text_field(row, config.label_column)
        if label not in LABELS:
            raise SaferInstructError(
                f"{row.where}: field {config.label_column!r} must be one of {', '.join(LABELS)}, got {label!r}"
            )
        if request_id in seen:
            raise SaferInstructError(f"{row.where}: field 'id' repeats {request_id!r}")
        seen.add(request_id)
        requests.append(LabelledRequest(request_id, text_field(row, config.prompt_column), label == "unsafe"))
    for part in (True, False):
        labels = {r.unsafe for r in requests if in_test_part(r.id) == part}
        if labels != {True, False}:
            raise SaferInstructError(
                f"{config.path}: the {'test' if part else 'development'} part needs both labels; add rows"
            )
    return requests


def test_part_prompts(config: FilterProbeConfig) -> dict[str, list[str]]:
    """The test part's requests by what a model should do with them: ``decline`` (unsafe) and ``answer`` (safe).

    Never fitted on, so they can also measure a model trained on the build's data (the demo chooses its
    checkpoint on them).
    """
    held_out = [r for r in load_requests(config) if in_test_part(r.id)]
    return {
        "decline": [r.prompt for r in held_out if r.unsafe],
        "answer": [r.prompt for r in held_out if not r.unsafe],
    }


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 12) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression (Newton's method: exact and deterministic)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2 * len(x))
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-design @ theta))
        gradient = design.T @ (p - y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


@dataclass
class Probe:
    """A fitted probe: standardise, then the logistic regression; with its figures on the labelled set."""

    layer: int
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    l2: float
    figures: dict[str, Any]

    def p_unsafe(self, vectors: Sequence[Sequence[float]]) -> np.ndarray:
        logits = ((np.asarray(vectors, dtype=np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-logits))


def fitted(x: np.ndarray, y: np.ndarray, l2: float, layer: int) -> Probe:
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    weights, bias = fit_logistic((x - mean) / scale, y, l2)
    return Probe(layer, mean, scale, weights, bias, l2, {})


def cross_validated(x: np.ndarray, y: np.ndarray, l2: float, layer: int) -> float:
    """Agreement over ``FOLDS`` interleaved folds of the development part."""
    hits = 0
    for fold in range(FOLDS):
        held = np.arange(len(x)) % FOLDS == fold
        probe = fitted(x[~held], y[~held], l2, layer)
        hits += int(((probe.p_unsafe(x[held]) >= 0.5) == y[held]).sum())
    return hits / len(x)


def candidate_layers(count: int) -> list[int]:
    """Every second hidden state from the middle of the stack up, and the last (where linear probes read requests best)."""
    return sorted({*range(count // 2, count, 2), count - 1})


def choose_layer(states: np.ndarray, y: np.ndarray, layers: Sequence[int], l2: float) -> int:
    """The position in ``layers`` whose probe agrees best in cross-validation on the development part (ties: the deeper)."""
    scores = [cross_validated(states[:, column], y, l2, layer) for column, layer in enumerate(layers)]
    return max(range(len(layers)), key=lambda column: (scores[column], column))


def train_probe(llm: LLM, config: FilterProbeConfig, requests: Sequence[LabelledRequest]) -> Probe:
    """Fit on the development part (layer and L2 chosen there), measure on the test part, refuse a blind probe."""
    states = llm.hidden_states(
        [as_prompt(r.prompt) for r in requests], None if config.layer is None else [config.layer]
    )
    layers = [config.layer] if config.layer is not None else candidate_layers(states.shape[1])
    states = states[:, layers] if config.layer is None else states
    labels = np.array([r.unsafe for r in requests], dtype=np.float64)
    test = np.array([in_test_part(r.id) for r in requests])
    dev_states, y = states[~test].astype(np.float64), labels[~test]
    column = choose_layer(dev_states, y, layers, sorted(config.l2)[len(config.l2) // 2]) if len(layers) > 1 else 0
    layer, x = layers[column], dev_states[:, column]
    cv = {l2: cross_validated(x, y, l2, layer) for l2 in config.l2}
    best = max(cv, key=lambda l2: (cv[l2], l2))  # ties: the stronger regulariser
    probe = fitted(x, y, best, layer)
    agreement = float(((probe.p_unsafe(states[test, column]) >= 0.5) == labels[test]).mean())
    majority = float(max(labels[test].mean(), 1 - labels[test].mean()))
    probe.figures = {
        "layer": layer,
        "l2": best,
        "cv_agreement": round(cv[best], 4),
        "test_agreement": round(agreement, 4),
        "test_majority": round(majority, 4),
        "dev": int((~test).sum()),
        "test": int(test.sum()),
    }
    if agreement < config.min_agreement or agreement <= majority:
        raise Unsupported(  # the build stops here: no batch would fare better
            f"filter.probe: agrees with {config.path}'s test part on {agreement:.0%} (always answering its majority label: "
            f"{majority:.0%}; needed: {config.min_agreement:.0%} and better than that): the judge model's layer {layer} "
            f"does not separate these requests; try another `filter.probe.layer` or a stronger judge"
        )
    return probe


def as_prompt(instruction: str) -> list[dict[str, str]]:
    """A request as the judge model would receive it from a user."""
    return [{"role": "user", "content": instruction}]
