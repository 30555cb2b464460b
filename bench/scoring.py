"""Refusal scorers against the hand-labelled refusal sets: which one to ship, and how well it does.

(a) ``leave_one_voice_out``, the selection criterion: every candidate, each model voice of the labelled sets
    (dev and the seen test sets) held out in turn, trained on the training rows (``classifier.TRAIN_SETS``) of
    the other voices, scored on every row of the held-out voice: the proxy for a voice never seen (overall, the
    mean over voices, the worst voice and style);
(b) ``dev_cv``: 5-fold cross-validation on the training rows (folds stratified by style, seeded);
(c) ``scorers``: each candidate trained on all training rows, scored on each set only scored
    (``refusal_labelled_test_v2.jsonl``, seen) and on each ``--test-set`` (a fresh set, scored once after the
    classifier is frozen): three-way accuracy and Cohen's kappa, the binary reading (refusal = full or partial),
    accuracy per style and per model voice; and answers/s (on the last set).

Candidates: the earlier phrase-rule detector (binary: a refusal is read as a full refusal), a
logistic regression over word n-grams alone, one over the phrase cues alone (both over the three labels), the shipped
one (``TrainConfig.families``: n-grams, the answer's opening words and cues; with the requests also request cues and
the sentence similarities and the parts' meaning of ``refusal.similarity``; over the response styles) without and with
the requests, v10's families with the requests (no similarities, over the labels) and v19's heads (the shipped
families without the parts' meaning: the previous release on the current data), and with ``--hidden-head`` a logistic
head on the default model's mean-pooled last hidden states (slow: runs the 135M model over every answer).

    python bench/scoring.py [--hidden-head] [--cv-only | --tests-only] [--test-set PATH ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_report  # noqa: E402

from safer_instruct.refusal import LABELS, classifier, rule_refusal, similarity  # noqa: E402
from safer_instruct.refusal.classifier import (  # noqa: E402
    LABELLED_SETS,
    TEST_SETS,
    TRAIN_SETS,
    LabelledCase,
    TrainConfig,
    fit_softmax,
    load_cases,
)

Predict = Callable[[Sequence[str], Sequence[str] | None], list[str]]  # (answers, prompts or None) -> labels
Fit = Callable[[list[LabelledCase]], Predict]


def cohen_kappa(truth: Sequence[str], predicted: Sequence[str]) -> float | None:
    """Cohen's kappa over any label set; None when chance agreement is total."""
    n = len(truth)
    observed = sum(a == b for a, b in zip(truth, predicted)) / n
    labels = set(truth) | set(predicted)
    expected = sum((truth.count(x) / n) * (predicted.count(x) / n) for x in labels)
    return None if expected == 1 else round((observed - expected) / (1 - expected), 4)


def binary(labels: Sequence[str]) -> list[str]:
    return ["refusal" if label != "full_compliance" else "compliance" for label in labels]


def figures(cases: list[LabelledCase], predicted: Sequence[str]) -> dict:
    """Accuracy, kappa (three-way and binary), per style and per voice."""
    truth = [c.label for c in cases]
    right = [t == p for t, p in zip(truth, predicted)]
    result = {
        "n": len(cases),
        "accuracy": round(float(np.mean(right)), 4),
        "kappa": cohen_kappa(truth, predicted),
        "binary_accuracy": round(float(np.mean([a == b for a, b in zip(binary(truth), binary(predicted))])), 4),
        "binary_kappa": cohen_kappa(binary(truth), binary(predicted)),
    }
    for key in ("style", "voice"):
        groups: dict[str, list[bool]] = defaultdict(list)
        for case, ok in zip(cases, right):
            groups[getattr(case, key)].append(ok)
        result[f"by_{key}"] = {name: round(float(np.mean(oks)), 4) for name, oks in sorted(groups.items())}
    result["worst_style"] = min(result["by_style"].items(), key=lambda item: item[1])
    return result


def fit_rules(_: list[LabelledCase]) -> Predict:
    return lambda texts, prompts: ["full_refusal" if rule_refusal(t) else "full_compliance" for t in texts]


@cache
def training_features(text: str, families: tuple[str, ...], prompt: str) -> frozenset[str]:
    """``classifier.features`` of a training answer, computed once for all the folds that train on it."""
    return frozenset(classifier.features(text, families, prompt))


def fit_logistic(families: tuple[str, ...], with_prompts: bool, classes: str = TrainConfig.classes) -> Fit:
    """The shipped learner on some feature families (``w`` word n-grams, ``c`` phrase cues, ``p`` and ``q`` request
    cues, ``h`` opening words, ``s`` closeness in meaning to the request, ``m`` the meaning of the answer's opening
    and rest), learning ``classes`` (the response styles,
    or the labels): only the head that reads the answers as they will be given (alone, or with their requests).
    Predictions compute their features afresh (each answer is predicted once per cross-validation, and answers/s
    stays true)."""

    def fit(cases: list[LabelledCase]) -> Predict:
        found = [training_features(c.completion, families, c.prompt if with_prompts else "") for c in cases]
        dense = None
        if with_prompts and similarity.DENSE_FAMILIES & set(families):  # labelled rows: their values are stored
            dense = similarity.dense_features([c.completion for c in cases], [c.prompt for c in cases])
        config = TrainConfig(families=families, classes=classes)
        weights = classifier.case_weights(cases, config)
        head = classifier.fit_head_on_features(
            found, classifier.training_targets(cases, config), config, weights, dense
        )
        return classifier.RefusalClassifier(head, head).predict

    return fit


class HiddenStates:
    """Mean-pooled last hidden states of the default model, cached per text."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from safer_instruct.models import available_model

        path = available_model("default")
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        with self.torch.inference_mode():
            for start in range(0, len(missing), 16):
                batch = missing[start : start + 16]
                inputs = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=256)
                hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-1]
                mask = inputs["attention_mask"].unsqueeze(-1).float()
                self.cache.update(zip(batch, ((hidden * mask).sum(1) / mask.sum(1)).numpy()))
        return np.stack([self.cache[t] for t in texts])


class HiddenHead:
    """Fits a softmax head on standardised hidden states, like the shipped classifier is fitted."""

    def __init__(self, states: HiddenStates) -> None:
        self.states = states

    def __call__(self, cases: list[LabelledCase]) -> Predict:
        x = self.states([c.completion for c in cases])
        mean, std = x.mean(0), x.std(0) + 1e-6
        weights, bias = fit_softmax((x - mean) / std, [c.label for c in cases], TrainConfig(l2=1e-2))
        return lambda texts, prompts: [
            LABELS[i] for i in (((self.states(texts) - mean) / std) @ weights + bias).argmax(1)
        ]


def folds(cases: list[LabelledCase], k: int, seed: int) -> list[list[int]]:
    """``k`` folds, each style spread evenly over them (seeded shuffle within a style)."""
    by_style: dict[str, list[int]] = defaultdict(list)
    for i, case in enumerate(cases):
        by_style[case.style].append(i)
    rng, out = random.Random(seed), [[] for _ in range(k)]
    for style in sorted(by_style):
        indices = by_style[style][:]
        rng.shuffle(indices)
        for j, i in enumerate(indices):
            out[j % k].append(i)
    return out


def cross_validate(
    fit: Fit, cases: list[LabelledCase], with_prompts: bool, k: int = 5, seeds: Sequence[int] = (0, 1)
) -> dict:
    """Mean and per-seed three-way accuracy of ``k``-fold cross-validation, and the worst style."""
    runs = []
    for seed in seeds:
        predicted = [""] * len(cases)
        for fold in folds(cases, k, seed):
            held = set(fold)
            predict = fit([c for i, c in enumerate(cases) if i not in held])
            prompts = [cases[i].prompt for i in fold] if with_prompts else None
            for i, label in zip(fold, predict([cases[i].completion for i in fold], prompts)):
                predicted[i] = label
        runs.append(figures(cases, predicted))
    return {
        "accuracy": round(float(np.mean([r["accuracy"] for r in runs])), 4),
        "binary_accuracy": round(float(np.mean([r["binary_accuracy"] for r in runs])), 4),
        "per_seed": [r["accuracy"] for r in runs],
        "worst_style": min((r["worst_style"] for r in runs), key=lambda w: w[1]),
    }


def leave_one_voice_out(fit: Fit, pool: list[LabelledCase], trainable: Sequence[bool], with_prompts: bool) -> dict:
    """Each voice in turn held out: trained on the other voices' trainable rows, scored on every row of the voice
    (the proxy for a voice never seen); accuracy over all rows, the mean over voices, per voice and per style."""
    predicted = [""] * len(pool)
    for voice in sorted({c.voice for c in pool}):
        held = [i for i, c in enumerate(pool) if c.voice == voice]
        predict = fit([c for c, ok in zip(pool, trainable) if ok and c.voice != voice])
        prompts = [pool[i].prompt for i in held] if with_prompts else None
        for i, label in zip(held, predict([pool[i].completion for i in held], prompts)):
            predicted[i] = label
    result = figures(pool, predicted)
    result["voice_mean"] = round(float(np.mean(list(result["by_voice"].values()))), 4)
    result["worst_voice"] = min(result["by_voice"].items(), key=lambda item: item[1])
    return result


def timed(predict: Predict, texts: list[str], prompts: list[str] | None, repeats: int = 3) -> float:
    """Answers per second, best of ``repeats`` passes over ``texts`` one answer at a time; the ``s`` features are
    computed by the encoder in every pass, as for a user's answers (not read from the labelled sets' stored values)."""
    stored, similarity.known_pairs = similarity.known_pairs, dict
    best = float("inf")
    try:
        for _ in range(repeats):
            similarity._cache.clear()
            start = time.perf_counter()
            for i, text in enumerate(texts):
                predict([text], None if prompts is None else [prompts[i]])
            best = min(best, time.perf_counter() - start)
    finally:
        similarity.known_pairs = stored
    return round(len(texts) / best, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hidden-head", action="store_true", help="also a head on the default model's hidden states (slow)"
    )
    parser.add_argument(
        "--test-set",
        action="append",
        default=[],
        metavar="PATH",
        help="also score this labelled set, fresh (repeatable; answers/s are timed on the last set scored)",
    )
    parser.add_argument(
        "--cv-only", action="store_true", help="only the cross-validations (for choosing; no test figures)"
    )
    parser.add_argument("--tests-only", action="store_true", help="only the test figures (no cross-validation)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    train_cases = [c for path in TRAIN_SETS for c in load_cases(path)]
    pool = {path: load_cases(path) for path in LABELLED_SETS}
    pool_cases = [c for cases in pool.values() for c in cases]
    trainable = [path in TRAIN_SETS for path, cases in pool.items() for _ in cases]
    tests = {Path(path).name: load_cases(path) for path in [*TEST_SETS, *args.test_set]}
    full = TrainConfig.families
    candidates: dict[str, tuple[Fit, bool]] = {  # name -> (learner, given the prompts)
        "phrase rules (earlier detector)": (fit_rules, False),
        "logistic: word n-grams": (fit_logistic(("w",), False, "label"), False),
        "logistic: phrase cues": (fit_logistic(("c",), False, "label"), False),
        "logistic: shipped, answer only (n-grams, opening words, cues)": (fit_logistic(full, False), False),
        "logistic: v10's families, with prompts (no s)": (fit_logistic(("w", "c", "p", "h"), True, "label"), True),
        "logistic: v19's heads (no m), with prompts": (fit_logistic(("w", "c", "p", "h", "s"), True), True),
        "logistic: shipped, with prompts (request cues, closeness in meaning)": (fit_logistic(full, True), True),
    }
    if args.hidden_head:
        candidates["logistic head on default-model hidden states"] = (HiddenHead(HiddenStates()), False)
    report: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "trained_on": {path.name: len(pool[path]) for path in TRAIN_SETS},
        "voices_held_out_from": {path.name: len(cases) for path, cases in pool.items()},
        "test": {name: len(cases) for name, cases in tests.items()},
        "dev_cv": {},
        "leave_one_voice_out": {},
        "scorers": {},
    }
    for name, (fit, with_prompts) in candidates.items():
        if not args.tests_only:
            print(f"{name}: cross-validating", file=sys.stderr, flush=True)
            report["dev_cv"][name] = cross_validate(fit, train_cases, with_prompts)
            report["leave_one_voice_out"][name] = leave_one_voice_out(fit, pool_cases, trainable, with_prompts)
        if args.cv_only:
            continue
        report["scorers"][name] = score_tests(fit, train_cases, tests, with_prompts)
    write_report(report, args.json)


def score_tests(
    fit: Fit, train_cases: list[LabelledCase], tests: dict[str, list[LabelledCase]], with_prompts: bool
) -> dict:
    """One learner trained on the training sets, scored on each test set; answers/s on the last one."""
    predict, scored = fit(train_cases), {}
    for test_name, test in tests.items():
        texts, prompts = [c.completion for c in test], [c.prompt for c in test] if with_prompts else None
        scored[test_name] = figures(test, predict(texts, prompts))
    last = tests[list(tests)[-1]]
    texts, prompts = [c.completion for c in last], [c.prompt for c in last] if with_prompts else None
    if isinstance(fit, HiddenHead):  # time the model pass too: once, on answers it has not seen yet
        fit.states.cache.clear()
        scored["answers_per_s"] = timed(predict, texts[:64], None, repeats=1)
    else:
        scored["answers_per_s"] = timed(predict, texts, prompts)
    return scored


if __name__ == "__main__":
    main()
