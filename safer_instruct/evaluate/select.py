"""Choose the aligned checkpoint on a validation split of the run's own data, never on the eval sets.

Along DPO training the model moves from the SFT policy (declines a lot, including prompts that only look
risky) towards fewer declines: the checkpoints are a dial between declining too little and too much. Each
candidate answers the validation prompts; ``harmless`` is its rate of full refusals on the held-out safety prompts,
``over_refusal`` its rate of (full or partial) refusals on the held-out helpfulness prompts, as the evaluation
reads them. The run keeps the candidate with the
highest harmlessness whose over-refusal stays within the bound (ties: the lower over-refusal, then the later
checkpoint); when none does, the one that declines benign prompts least, and the sweep says so.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm import ResponseCache, SamplingParams, make_llm
from safer_instruct.refusal import refusal_labels

SELECTION_FILE = "selection.json"
ANSWERS_FILE = "selection_answers.jsonl"  # every candidate's validation answers, to read what the rates count
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class Candidate:
    """One adapter folder to try, named by where it stands in training (``sft``, ``dpo step 12``)."""

    name: str
    path: Path
    step: int


@dataclass
class Scored:
    """A candidate's validation rates (refusals / prompts) and the answers they came from."""

    name: str
    path: str
    step: int
    harmless: float
    over_refusal: float
    n_unsafe: int
    n_benign: int
    answers: dict[str, list[str]] = field(default_factory=dict, repr=False)
    prompts: dict[str, list[str]] = field(default_factory=dict, repr=False)


@dataclass
class Selection:
    """The chosen candidate, the bound it had to meet, and every candidate's figures."""

    chosen: str
    chosen_path: str
    within_bound: bool
    over_refusal_bound: float
    sweep: list[Scored]

    def as_dict(self) -> dict:
        summary = {k: v for k, v in asdict(self).items() if k != "sweep"}
        return summary | {
            "sweep": [{k: v for k, v in asdict(s).items() if k not in {"answers", "prompts"}} for s in self.sweep]
        }


def checkpoints(start: Path, trained: Path, start_name: str = "sft") -> list[Candidate]:
    """The adapter training started from (step 0) and every ``checkpoint-N`` under ``trained``, in training order."""
    found = [Candidate(start_name, start, 0)]
    for folder in trained.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and any((folder / name).is_file() for name in ADAPTER_FILES):
            found.append(Candidate(f"step {match.group(1)}", folder, int(match.group(1))))
    if len(found) == 1:
        raise SaferInstructError(
            f"{trained}: no checkpoint-N adapter folders to choose from (save_total_limit must keep them)"
        )
    return sorted(found, key=lambda c: c.step)


def score_candidates(
    candidates: Sequence[Candidate],
    unsafe: Sequence[str],
    benign: Sequence[str],
    llm: LLMConfig,
    sampling: SamplingParams,
    cache: ResponseCache | None = None,
) -> list[Scored]:
    """Each candidate answers the validation prompts (greedy, through the cache); refusals are counted."""
    if not unsafe or not benign:
        raise SaferInstructError(
            f"validation needs held-out safety and helpfulness prompts (have {len(unsafe)} and {len(benign)}); "
            "raise assemble.validation_fraction"
        )
    chats = [[{"role": "user", "content": p}] for p in (*unsafe, *benign)]
    scored = []
    for candidate in candidates:
        config = llm.model_copy(update={"adapter": str(candidate.path)})
        with make_llm(config, cache=cache, show_progress=False) as model:
            texts = [g.text for g in model.generate(chats, sampling)]
        on_unsafe, on_benign = texts[: len(unsafe)], texts[len(unsafe) :]
        unsafe_labels, benign_labels = refusal_labels(on_unsafe, unsafe), refusal_labels(on_benign, benign)
        scored.append(
            Scored(
                name=candidate.name,
                path=str(candidate.path),
                step=candidate.step,
                harmless=unsafe_labels.count("full_refusal") / len(unsafe),  # as the evaluation counts it
                over_refusal=sum(label != "full_compliance" for label in benign_labels) / len(benign),
                n_unsafe=len(unsafe),
                n_benign=len(benign),
                answers={"unsafe": on_unsafe, "benign": on_benign},
                prompts={"unsafe": list(unsafe), "benign": list(benign)},
            )
        )
    return scored


def choose(scored: Sequence[Scored], over_refusal_bound: float) -> Selection:
    """Highest harmlessness within the over-refusal bound; else the lowest over-refusal."""
    within = [s for s in scored if s.over_refusal <= over_refusal_bound + 1e-9]
    if within:
        best = max(within, key=lambda s: (s.harmless, -s.over_refusal, s.step))
    else:
        best = min(scored, key=lambda s: (s.over_refusal, -s.harmless, -s.step))
    return Selection(best.name, best.path, bool(within), over_refusal_bound, list(scored))


def install(selection: Selection, target: Path, reports: Sequence[Path] = ()) -> Path:
    """Copy the chosen adapter (with its tokenizer files) and ``reports`` (the run's metrics, curves) to
    ``target``, with ``selection.json`` and ``selection.png`` beside them; the folder appears whole or not at all."""
    source = Path(selection.chosen_path)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    trainer_state = ("optimizer", "scheduler", "rng_state", "trainer_state", "training_args")
    files = [f for f in source.iterdir() if f.is_file() and not f.name.startswith(trainer_state)]
    for item in [*files, *(r for r in reports if r.is_file())]:
        shutil.copy2(item, partial / item.name)
    (partial / SELECTION_FILE).write_text(json.dumps(selection.as_dict(), indent=2) + "\n", encoding="utf-8")
    with (partial / ANSWERS_FILE).open("w", encoding="utf-8") as handle:
        for scored in selection.sweep:
            for kind, texts in scored.answers.items():
                for prompt, text in zip(scored.prompts[kind], texts):
                    row = {"candidate": scored.name, "kind": kind, "prompt": prompt, "answer": text}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    plot_sweep(selection, partial / "selection.png")
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    return target


def plot_sweep(selection: Selection, path: Path) -> Path:
    """Validation harmlessness and over-refusal per checkpoint, the bound dashed, the choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s.step for s in selection.sweep]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [s.harmless for s in selection.sweep], "o-", label="harmless (validation safety prompts)")
    ax.plot(
        steps, [s.over_refusal for s in selection.sweep], "s-", label="over-refusal (validation helpfulness prompts)"
    )
    ax.axhline(selection.over_refusal_bound, color="grey", linestyle="--", label="over-refusal bound")
    chosen = next(s for s in selection.sweep if s.name == selection.chosen)
    ax.axvline(chosen.step, color="green", alpha=0.4, label=f"chosen: {chosen.name}")
    ax.set(xlabel="DPO step (0: the SFT adapter)", ylabel="rate", ylim=(-0.02, 1.02), title="Checkpoint selection")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
