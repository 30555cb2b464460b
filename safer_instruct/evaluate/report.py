"""The evaluation report: ``results.json``, ``chart.png`` and rich tables for the terminal."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


def fmt(entry: dict | None) -> str:
    """``72.0% [58.3, 82.5] (18/25)`` for a rate dict; ``-`` for none."""
    if not entry or entry.get("rate") is None:
        return "-"
    k = entry["k"]
    count = f"{k:g}/{entry['n']}"
    return f"{100 * entry['rate']:.1f}% [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}] ({count})"


def label_split(labels: dict | None) -> str:
    """``30.0% / 5.0%``: the full and the partial refusal shares of a set (``-`` without three-way labels)."""
    if not labels or labels["full_refusal"]["rate"] is None:
        return "-"
    return f"{100 * labels['full_refusal']['rate']:.1f}% / {100 * labels['partial_refusal']['rate']:.1f}%"


def results_tables(results: dict) -> list[Table]:
    """One table of models × prompt sets, then helpfulness and judge agreement when present."""
    scores = Table(title=f"model × prompt set (95% Wilson intervals; harmless by {results['harmless_by']})")
    for column in ("model", "set", "kind", "harmless", "refusal", "full / partial refusal", "mean words"):
        scores.add_column(column)
    for model, sets in results["models"].items():
        for set_name, entry in sets.items():
            scores.add_row(
                model,
                set_name,
                results["sets"][set_name]["kind"],
                fmt(entry.get("harmless")),
                fmt(entry["refusal"]),
                label_split(entry.get("refusal_labels")),
                f"{entry['length']['mean_words']:g}",
            )
    tables = [scores]
    helpfulness = results.get("helpfulness")
    if helpfulness and helpfulness.get("skipped"):
        table = Table("not judged", title=f"helpfulness: {helpfulness['model']} vs {helpfulness['baseline']}")
        table.add_row(helpfulness["skipped"])
        tables.append(table)
    elif helpfulness:
        table = Table(
            title=f"helpfulness: {helpfulness['model']} vs {helpfulness['baseline']} on {helpfulness['set']} (both orders)"
        )
        for column in (
            "win rate (ties ½)",
            "wins",
            "ties",
            "losses",
            "failures",
            "judge picks first",
            "mean P(better)",
            "verdict",
        ):
            table.add_column(column)
        preference = helpfulness.get("mean_preference")
        table.add_row(
            fmt(helpfulness["win_rate"]),
            str(helpfulness["wins"]),
            str(helpfulness["ties"]),
            str(helpfulness["losses"]),
            str(helpfulness["failures"]),
            fmt(helpfulness["judge_picks_first"]),
            "-" if preference is None else f"{preference:.3f}",
            helpfulness.get("verdict", "-"),
        )
        tables.append(table)
    capability = capability_table(results.get("summary", {}))
    if capability:
        tables.append(capability)
    agreement = results.get("judge_agreement")
    if agreement:
        table = Table(title=f"agreement with the labelled set (n={agreement['n']}, positive = harmful)")
        for column in ("scorer", "accuracy", "Cohen's kappa", "TP", "FP", "FN", "TN"):
            table.add_column(column)
        for scorer in ("refusal_detector", "judge"):
            entry = agreement.get(scorer)
            if entry:
                kappa = "-" if entry["kappa"] is None else f"{entry['kappa']:.3f}"
                table.add_row(
                    scorer,
                    fmt(entry["accuracy"]),
                    kappa,
                    str(entry["true_positive"]),
                    str(entry["false_positive"]),
                    str(entry["false_negative"]),
                    str(entry["true_negative"]),
                )
        tables.append(table)
    return tables


def capability_table(summary: dict) -> Table | None:
    """Reference answers' log-likelihood per token, and the share of the baseline's per-token likelihood kept."""
    rows = [(model, line) for model, line in summary.items() if line.get("reference_logprob_per_token") is not None]
    if not rows:
        return None
    table = Table(title="capability: log-likelihood of the benign sets' reference answers")
    for column in ("model", "log-prob per token", "capability kept"):
        table.add_column(column)
    for model, line in rows:
        kept = line.get("capability_kept")
        table.add_row(
            model,
            f"{line['reference_logprob_per_token']:.4f}",
            f"{100 * kept['value']:.1f}% of {kept['against']}" if kept else "-",
        )
    return table


def plot_chart(results: dict, path: Path) -> Path:
    """Per prompt set, harmless and refusal rates of every model with their intervals; helpfulness outcomes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    set_names = list(results["sets"])
    helpfulness = results.get("helpfulness")
    helpfulness = helpfulness if helpfulness and not helpfulness.get("skipped") else None  # a panel only when judged
    panels = len(set_names) + (1 if helpfulness else 0)
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4), squeeze=False)
    models = list(results["models"])
    width = 0.8 / max(len(models), 1)
    for axis, set_name in zip(axes[0], set_names):
        labelled: set[str] = set()
        for offset, model in enumerate(models):
            entry = results["models"][model].get(set_name)
            if not entry:
                continue
            for x, metric in enumerate(("harmless", "refusal")):
                value = entry.get(metric)
                if not value or value["rate"] is None:
                    continue
                error = [[value["rate"] - value["low"]], [value["high"] - value["rate"]]]
                axis.bar(
                    x + (offset - (len(models) - 1) / 2) * width,
                    value["rate"],
                    width,
                    yerr=error,
                    capsize=3,
                    color=f"C{offset}",
                    label=None if model in labelled else model,
                )
                labelled.add(model)
        axis.set_xticks([0, 1], ["harmless", "refusal"])
        axis.set_ylim(0, 1.05)
        axis.set_title(f"{set_name} ({results['sets'][set_name]['kind']}, n={results['sets'][set_name]['n']})")
        axis.legend(fontsize=8)
    if helpfulness:
        axis = axes[0][-1]
        counts = [helpfulness["wins"], helpfulness["ties"], helpfulness["losses"], helpfulness["failures"]]
        axis.bar(["win", "tie", "loss", "failed"], counts, color=["C2", "C7", "C3", "k"])
        win = helpfulness["win_rate"]
        rate_text = "-" if win["rate"] is None else f"{100 * win['rate']:.0f}%"
        axis.set_title(f"{helpfulness['model']} vs {helpfulness['baseline']}: win rate {rate_text}")
    figure.suptitle(f"safer-instruct eval (95% Wilson intervals; harmless by {results['harmless_by']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(results: dict, out_dir: str | Path, console: Console | None = None) -> dict[str, Path]:
    """Write ``results.json`` and ``chart.png`` into ``out_dir`` and print the tables."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    chart_path = plot_chart(results, out_dir / "chart.png")
    console = console or Console()
    for table in results_tables(results):
        console.print(table)
    return {"results": results_path, "chart": chart_path, "answers": out_dir / "answers.jsonl"}
