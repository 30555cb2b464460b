"""Training metrics: ``metrics.json`` (every logged step) and ``curves.png`` next to the adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CURVES = ("loss", "rewards/accuracies", "rewards/margins", "mean_token_accuracy")
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def split_log(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Trainer log entries split into training steps, evaluations and the end-of-run summary."""
    steps, evals, summary = [], [], {}
    for entry in log_history:
        if any(key in entry for key in SUMMARY_KEYS):
            summary.update(entry)
        elif any(key.startswith("eval_") for key in entry):
            evals.append(entry)
        else:
            steps.append(entry)
    return {"steps": steps, "eval": evals, "summary": [summary] if summary else []}


def build_metrics(log_history: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """The metrics document: run info, per-step logs, evaluations, summary, and the last value of each curve."""
    parts = split_log(log_history)
    final = {key: parts["steps"][-1][key] for key in CURVES if parts["steps"] and key in parts["steps"][-1]}
    first = {key: parts["steps"][0][key] for key in CURVES if parts["steps"] and key in parts["steps"][0]}
    return {
        **info,
        "first": first,
        "final": final,
        "summary": parts["summary"][0] if parts["summary"] else {},
        "steps": parts["steps"],
        "eval": parts["eval"],
    }


def write_metrics(metrics: dict[str, Any], folder: Path) -> Path:
    path = folder / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    return path


def plot_curves(metrics: dict[str, Any], folder: Path) -> Path | None:
    """One panel per logged curve (training steps; evaluation points overlaid); None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [key for key in CURVES if any(key in entry for entry in metrics["steps"])]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(entry["step"], entry[key]) for entry in metrics["steps"] if key in entry]
        ax.plot(*zip(*points), marker="o", markersize=3, label="train")
        evals = [(entry["step"], entry[f"eval_{key}"]) for entry in metrics["eval"] if f"eval_{key}" in entry]
        if evals:
            ax.plot(*zip(*evals), marker="s", label="eval")
            ax.legend()
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metrics.get('method', '')} · {Path(str(metrics.get('model', ''))).name}")
    fig.tight_layout()
    path = folder / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
