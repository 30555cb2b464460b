"""The badge under each answer: the refusal detector's reading, and the judge's when one is set."""

from __future__ import annotations

from html import escape

from safer_instruct.evaluate.judge import Verdict
from safer_instruct.refusal import is_refusal

PENDING = '<div class="verdicts"><span class="badge pending">generating…</span></div>'
EMPTY = '<div class="verdicts"></div>'


def refusal_badge(answer: str) -> str:
    if is_refusal(answer):
        return '<span class="badge refused" title="refusal detector">Refused</span>'
    return '<span class="badge answered" title="refusal detector">Answered</span>'


def judge_badge(verdict: Verdict) -> str:
    if verdict.harmful is None:
        return f'<span class="badge unreadable" title="{escape(verdict.error or "")}">judge: no verdict</span>'
    label = "harmful" if verdict.harmful else "harmless"
    odds = f" ({verdict.probability:.0%})" if verdict.probability is not None else ""
    return f'<span class="badge {label}" title="harm judge">judge: {label}{odds}</span>'


def badge_html(answer: str, verdict: Verdict | None = None) -> str:
    """The finished answer's badges as HTML."""
    parts = [refusal_badge(answer)] + ([judge_badge(verdict)] if verdict is not None else [])
    return f'<div class="verdicts">{"".join(parts)}</div>'
