"""Rates with Wilson 95% intervals, agreement (accuracy, Cohen's kappa), length statistics."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

Z95 = 1.959963984540054


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` (``k`` may be fractional, e.g. half ties)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"successes {k} outside 0..{n}")
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


def rate(k: float, n: int) -> dict:
    """``{"rate", "low", "high", "k", "n"}``; the rate is None when there is nothing to count."""
    low, high = wilson(k, n)
    return {"rate": (k / n) if n else None, "low": round(low, 4), "high": round(high, 4), "k": k, "n": n}


def cohen_kappa(truth: Sequence[bool], predicted: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary labelings; None when chance agreement is total (kappa undefined)."""
    if len(truth) != len(predicted):
        raise ValueError("labelings differ in length")
    n = len(truth)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(truth, predicted)) / n
    p_truth, p_pred = sum(truth) / n, sum(predicted) / n
    expected = p_truth * p_pred + (1 - p_truth) * (1 - p_pred)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def agreement(truth: Sequence[bool], predicted: Sequence[bool]) -> dict:
    """Accuracy (with its interval), Cohen's kappa and the confusion counts (positive = True)."""
    pairs = list(zip(truth, predicted))
    kappa = cohen_kappa(truth, predicted)
    return {
        "accuracy": rate(sum(a == b for a, b in pairs), len(pairs)),
        "kappa": None if kappa is None else round(kappa, 4),
        "true_positive": sum(a and b for a, b in pairs),
        "false_positive": sum(b and not a for a, b in pairs),
        "false_negative": sum(a and not b for a, b in pairs),
        "true_negative": sum(not a and not b for a, b in pairs),
    }


def length_stats(texts: Sequence[str]) -> dict:
    """Mean and median answer length in words and characters."""
    words = [len(t.split()) for t in texts] or [0]
    chars = [len(t) for t in texts] or [0]
    return {
        "mean_words": round(statistics.fmean(words), 1),
        "median_words": statistics.median(words),
        "mean_chars": round(statistics.fmean(chars), 1),
    }
