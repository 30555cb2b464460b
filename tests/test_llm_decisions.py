"""Strict parsing of judge answers: an unreadable answer is an explicit failure, never a default; what a decision says."""

from __future__ import annotations

import pytest

from safer_instruct.config import SamplingConfig
from safer_instruct.evaluate.runner import mean_preference
from safer_instruct.llm.base import Decision, SamplingParams, check_labels, parse_label

LABELS = ("unsafe", "safe")


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("unsafe", "unsafe"),
        ("Safe.", "safe"),
        ("**Unsafe**: it asks for", "unsafe"),
        ('"safe"', "safe"),
        ("  SAFE\n", "safe"),
    ],
)
def test_readable_answers(answer: str, label: str) -> None:
    decision = parse_label(answer, LABELS)
    assert decision.ok and decision.label == label and decision.raw == answer


@pytest.mark.parametrize("answer", ["", "I think it is unsafe", "safety first", "unsafely", "maybe", "Not safe"])
def test_unreadable_answers_fail_explicitly(answer: str) -> None:
    decision = parse_label(answer, LABELS)
    assert not decision.ok and decision.label is None and "does not start with one of" in decision.error


@pytest.mark.parametrize("labels", [["safe"], ["safe", ""], ["safe", "safe"], ["un", "unsafe"]])
def test_bad_label_sets(labels: list[str]) -> None:
    with pytest.raises(ValueError):
        check_labels(labels)


def test_probability_of_a_label_reads_both_sides_of_a_two_label_decision() -> None:
    sure, unsure = Decision("unsafe", 0.8), Decision("safe")  # a backend without probabilities: the verdict is certain
    assert sure.probability_of("unsafe") == 0.8 and sure.probability_of("safe") == pytest.approx(0.2)
    assert (unsure.probability_of("safe"), unsure.probability_of("unsafe")) == (1.0, 0.0)
    with pytest.raises(ValueError, match="unreadable"):
        Decision(None, error="unreadable").probability_of("safe")


def test_mean_preference_counts_only_pairs_with_probabilities_from_the_backend() -> None:
    first = [Decision("A", 0.9), Decision("B", 0.6), Decision("A"), Decision(None, error="x")]
    swapped = [Decision("B", 0.7), Decision("B", 0.8), Decision("B", 0.9), Decision("B", 0.9)]
    assert mean_preference(first, swapped) == round(((0.9 + 0.7) / 2 + (0.4 + 0.8) / 2) / 2, 4)
    assert mean_preference(first[2:], swapped[2:]) is None  # no probabilities: no mean preference


def test_sampling_params_from_a_config_section() -> None:
    params = SamplingParams.from_config(SamplingConfig(max_new_tokens=7, temperature=0.5, seed=3, stop=["###"]))
    assert params == SamplingParams(max_new_tokens=7, temperature=0.5, top_p=1.0, seed=3, stop=("###",))
