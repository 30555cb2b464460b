"""The funnel report: per stage and category, in -> out, drop reasons, failures, tokens and cost per model, time.

Saved as ``dataset/funnel.json`` and ``dataset/funnel.png``; printed as a rich table.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from safer_instruct.pipeline.store import RunStore


def stage_summary(store: RunStore, stage: str) -> dict[str, Any]:
    """Counts for one stage, overall and per category, with its time and usage.

    A finished stage's counts are kept in its record; a stage with results since (an interrupted one) is counted anew.
    """
    record = store.stage(stage)
    per_category = record.counts if record.counts is not None else store.tally(stage)
    total: dict[str, Any] = {"in": 0, "out": 0, "failed": 0, "dropped": Counter()}
    for entry in per_category.values():
        for key in ("in", "out", "failed"):
            total[key] += entry[key]
        total["dropped"].update(entry["dropped"])
    as_dict = lambda e: {**e, "dropped": dict(sorted(e["dropped"].items()))}  # noqa: E731
    return {
        **as_dict(total),
        "by_category": {cat: as_dict(e) for cat, e in sorted(per_category.items())},
        "complete": record.complete,
        "wall_s": round(record.wall_s, 2),
        "model_s": round(record.model_s, 2),
        "load_s": round(record.load_s, 2),
        "usage": record.usage,
        **({"info": record.info} if record.info else {}),
    }


def errors(store: RunStore, stage: str, limit: int = 5) -> list[str]:
    """The first few item errors of a stage (for the report)."""
    return [f"{key}: {error}" for key, error in store.failures(stage, limit)]


def build_funnel(store: RunStore, stages: Sequence[str], extra: dict[str, Any]) -> dict[str, Any]:
    """The whole funnel document."""
    summary = {stage: stage_summary(store, stage) for stage in stages}
    failed = {stage: errors(store, stage) for stage in stages if summary[stage]["failed"]}
    return {"stages": summary, "failures": failed, **extra}


def write_funnel(funnel: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """``funnel.json`` and ``funnel.png`` in ``folder``; the plot is redrawn only when what it shows changed (or it is gone)."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, png_path = folder / "funnel.json", folder / "funnel.png"
    try:
        unchanged = png_path.is_file() and _plotted(json.loads(json_path.read_text(encoding="utf-8"))) == _plotted(
            funnel
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no earlier funnel, or not one this kit wrote
        unchanged = False
    json_path.write_text(json.dumps(funnel, indent=2, ensure_ascii=False), encoding="utf-8")
    return json_path, png_path if unchanged else plot_funnel(funnel, png_path)


def _plotted(funnel: dict[str, Any]) -> dict[str, Any]:
    """What ``plot_funnel`` draws from a funnel."""
    return {
        stage: [entry["in"], entry["out"], {c: sub["out"] for c, sub in entry["by_category"].items()}]
        for stage, entry in funnel["stages"].items()
    }


def plot_funnel(funnel: dict[str, Any], path: Path) -> Path:
    """Stacked bars: items kept after each stage, per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(funnel["stages"])
    categories = sorted({c for s in funnel["stages"].values() for c in s["by_category"]})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(stages)), 4.2))
    bottom = [0] * len(stages)
    for category in categories:
        heights = [funnel["stages"][s]["by_category"].get(category, {}).get("out", 0) for s in stages]
        ax.bar(stages, heights, bottom=bottom, label=category)
        bottom = [b + h for b, h in zip(bottom, heights)]
    for x, stage in enumerate(stages):
        entry = funnel["stages"][stage]
        ax.annotate(f"{entry['in']}→{entry['out']}", (x, bottom[x]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("items out")
    ax.set_title("Safer-Instruct funnel: items kept per stage (label: in→out)")
    ax.legend(fontsize=8, ncols=2)
    ax.margins(y=0.15)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def funnel_table(funnel: dict[str, Any]):
    """A rich table of the funnel, one row per stage (categories as sub-rows)."""
    from rich.table import Table

    table = Table(title="Safer-Instruct funnel", show_lines=False)
    for column in (
        "stage",
        "category",
        "in",
        "out",
        "dropped (reason: n)",
        "failed",
        "tokens (prompt+completion)",
        "cost $",
        "time s",
    ):
        table.add_column(column, justify="right" if column in {"in", "out", "failed", "cost $", "time s"} else "left")
    for stage, entry in funnel["stages"].items():
        tokens = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in entry["usage"].values())
        cost = sum(u.get("cost_usd", 0) for u in entry["usage"].values())
        models = ", ".join(entry["usage"]) or "-"
        table.add_row(
            f"[bold]{stage}[/]",
            "all",
            str(entry["in"]),
            str(entry["out"]),
            _drops(entry["dropped"]),
            str(entry["failed"]),
            f"{tokens} ({models})" if tokens else "-",
            f"{cost:.4f}",
            f"{entry['wall_s']:.1f}",
        )
        if len(entry["by_category"]) > 1:
            for category, sub in entry["by_category"].items():
                table.add_row(
                    "",
                    category,
                    str(sub["in"]),
                    str(sub["out"]),
                    _drops(sub["dropped"]),
                    str(sub["failed"]),
                    "",
                    "",
                    "",
                )
    return table


def _drops(dropped: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in dropped.items()) or "-"
