"""Strict parsing of judge answers: an unreadable answer is an explicit failure, never a default."""

from __future__ import annotations

import pytest

from safer_instruct.llm.base import check_labels, parse_label

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
