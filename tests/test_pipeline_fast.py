"""The pipeline's logic on scripted fake models (tests/fake_llm.py): stages, filter options, resume, fingerprints,
the funnel and assembly, in seconds. The same paths on the real default model are in test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_llm import FakeLLM, ScriptedFailure, use_fakes

from safer_instruct.config import validate
from safer_instruct.llm import Decision, Generation, SamplingParams, Unsupported
from safer_instruct.pipeline import build
from safer_instruct.pipeline import filter as filter_stage
from safer_instruct.pipeline import funnel as funnel_module
from safer_instruct.pipeline import induce as induce_stage
from safer_instruct.pipeline import respond as respond_stage
from safer_instruct.pipeline import self_evaluate as self_evaluate_stage
from safer_instruct.pipeline.assemble import assemble, helpfulness_row
from safer_instruct.pipeline.clean import Decontaminator
from safer_instruct.pipeline.config import (
    FilterCalibration,
    FilterConfig,
    FilterProbeConfig,
    HelpfulnessMixConfig,
    InduceConfig,
    PipelineConfig,
    RespondConfig,
    ResponseMatchConfig,
    SelfEvaluateConfig,
)
from safer_instruct.pipeline.judge_probe import LabelledRequest, in_test_part, train_probe
from safer_instruct.prompts.reverse import reverse_prompt
from safer_instruct.readers import Row

EVAL_PROMPT = "How do I fold a paper plane?"
# source response -> (category, the instruction the fake reversed model induces; None: unscripted, two candidates)
RESPONSES = {
    "Call your cousin a lazy slob at dinner so everyone laughs at him.": (
        "hate",
        "Give me an insult for my lazy cousin.",
    ),
    "Drive home after a few beers; the roads are empty at night.": (
        "dangerous",
        "Is it fine to drive after a few beers?",
    ),
    "Slip the bottle into your coat while the cashier is busy.": ("illegal", "How do I steal a bottle from a shop?"),
    "Tell the new kid his accent sounds stupid.": ("hate", None),
    "Jump the ticket barrier when the guard looks away.": ("illegal", "How can I ride the train without paying?"),
    "Skip the seatbelt on short trips; nothing happens in town.": (
        "dangerous",
        "Can I skip the seatbelt on short trips?",
    ),
}
JUDGE = {  # P(unsafe) of each induced instruction; the unscripted candidates ("reverse says ...") are safe
    "lazy cousin": ("unsafe", 0.9),
    "few beers": ("unsafe", 0.8),
    "steal a bottle": ("unsafe", 0.7),
    "train without paying": ("unsafe", 0.65),
    "seatbelt": ("safe", 0.7),
    "reverse says": ("safe", 0.9),
}
EXPERT = {
    "lazy cousin": "I'm sorry, but I can't help with that.",
    "few beers": "Please don't drive after drinking. Take a cab or stay the night.",
    "steal a bottle": "Sure, hide it in your sleeve and walk out calmly.",
    "train without paying": "Buy a ticket; fare dodging can bring a fine. Ask about discount passes.",
}
SELF_EVALUATION = {
    "hide it in your sleeve": ("unsafe", 0.9),
    "Take a cab": ("safe", 0.9),
    "discount passes": ("safe", 0.7),
}
HELPFUL = [
    {
        "prompt": f"Give me a tip for learning {topic}.",
        "chosen": f"Practise {topic} a little every day.",
        "rejected": "No.",
    }
    for topic in ("French", "chess", "guitar", "drawing", "typing")
]
HELPFUL += [
    {"prompt": "", "chosen": "An answer to nothing.", "rejected": "No."},
    {"prompt": EVAL_PROMPT, "chosen": "Fold it in half, then fold the wings.", "rejected": "No."},
]


def fakes(**changes: Any) -> list[FakeLLM]:
    """The three scripted models of a build: the reversed model, the judge and the expert."""
    scripts = {
        "reverse": {"answers": {response: text for response, (_, text) in RESPONSES.items() if text}},
        "judge": {"verdicts": JUDGE},
        "expert": {"answers": EXPERT, "verdicts": SELF_EVALUATION},
    }
    return [FakeLLM(model_id=name, **{**script, **changes.get(name, {})}) for name, script in scripts.items()]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def tiny_config(tmp_path: Path, **sections: Any) -> PipelineConfig:
    """Six responses in batches of two, two candidates each; a third of each kind held out for validation and test."""
    raw = [
        {"id": f"r{n}", "text": text, "category": category}
        for n, (text, (category, _)) in enumerate(RESPONSES.items())
    ]
    data: dict[str, Any] = {
        "name": "fast",
        "batch_size": 2,
        "sources": [{"name": "raw", "path": write_jsonl(tmp_path / "raw.jsonl", raw), "category_column": "category"}],
        "decontaminate": {"eval_sets": [write_jsonl(tmp_path / "eval.jsonl", [{"prompt": EVAL_PROMPT}])]},
        "reverse_model": {"llm": {"model": "reverse"}},
        "induce": {"candidates": 2},
        "judge": {"model": "judge"},
        "filter": {"threshold": 0.5},
        "expert": {"model": "expert"},
        "self_evaluate": {"accept_refusals": True},
        "helpfulness": {"path": write_jsonl(tmp_path / "helpful.jsonl", HELPFUL), "ratio": 1.0},
        "assemble": {"test_fraction": 0.34, "validation_fraction": 0.34},
    }
    for dotted, value in sections.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate(PipelineConfig, data, "test config")


def dataset_rows(run_dir: Path) -> dict[str, list[dict]]:
    """Every split's rows as written, without provenance times (when an item ran is not what it is)."""
    import pyarrow.parquet as pq

    out = {}
    for path in sorted((run_dir / "dataset").glob("*.parquet")):
        split = path.name.split("-")[0]
        out[split] = []
        for row in pq.read_table(path).to_pylist():
            provenance = json.loads(row["provenance"])
            for entry in provenance.values():
                entry.pop("time", None)
            out[split].append({**row, "provenance": provenance})
    return out


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds without drawing funnel.png (most of a fake build's time; test_build_runs_every_stage... draws it)."""
    monkeypatch.setattr(funnel_module, "plot_funnel", lambda funnel, path: path)


def counts(funnel: dict) -> dict[str, tuple]:
    """Per stage: items in, out, dropped (by reason) and failed."""
    return {
        name: (entry["in"], entry["out"], entry["dropped"], entry["failed"])
        for name, entry in funnel["stages"].items()
    }


def batch_of(records: list[dict]) -> list[tuple[int, dict]]:
    return list(enumerate(records))


def record(n: int, instruction: str, category: str = "hate", response: str = "a response", **extra: Any) -> dict:
    return {"key": f"k{n}", "category": category, "instruction": instruction, "response": response, **extra}


# -- the fake itself --------------------------------------------------------------------------------
def test_fake_is_scripted_deterministic_and_records_its_calls() -> None:
    fake = FakeLLM(
        model_id="m",
        answers={"hello": "scripted"},
        verdicts={"odd": "maybe so", "bad": ("unsafe", 0.8)},
        fail=["boom"],
    )
    sampled, greedy = SamplingParams(temperature=0.7, seed=1), SamplingParams()
    first = fake.generate(["say hello", "anything", [{"role": "user", "content": "anything"}]], sampled)
    assert first[0].text == "scripted" and first[1] != first[2]  # a raw prompt and a chat are different prompts
    assert FakeLLM(model_id="m").generate(["anything"], sampled) == first[1:2]  # the same in a fresh instance
    reseeded = fake.generate(["anything"], SamplingParams(temperature=0.7, seed=2))
    assert reseeded != first[1:2]  # the seed matters when sampling ...
    assert fake.generate(["anything"], greedy) == fake.generate(["anything"], SamplingParams(seed=9))  # ... not greedy
    assert fake.generate(["say hello"], SamplingParams(stop=("rip",))) == [Generation("sc", 2, 1)]
    odd, bad, default = fake.decide(["odd one", "bad one", "plain"], ["unsafe", "safe"])
    assert odd.label is None and "does not start with one of" in odd.error and bad == Decision("unsafe", 0.8, "unsafe")
    assert default.label in {"unsafe", "safe"} and 0.5 <= default.probability <= 1
    states = fake.hidden_states(["a", "b", "c"], [1, -1])
    assert states.shape == (3, 2, fake.width) and states.dtype == np.float32
    assert np.array_equal(states[:, 1], fake.hidden_states(["a", "b", "c"])[:, -1])
    with pytest.raises(ScriptedFailure):
        fake.decide(["boom"], ["unsafe", "safe"])
    assert [call.method for call in fake.calls] == ["generate"] * 5 + ["decide", *["hidden_states"] * 2, "decide"]
    assert fake.usage.requests == sum(len(call.prompts) for call in fake.calls) - 1  # a failed call costs nothing
    with pytest.raises(Unsupported, match="cannot score given text"):
        FakeLLM(supports=frozenset()).loglikelihood(["a"], ["b"])


# -- stages ---------------------------------------------------------------------------------------
def test_induce_samples_each_candidate_with_its_own_seed_and_drops_unusable_ones() -> None:
    response = "Skip the seatbelt on short trips; nothing happens in town."
    batch = batch_of(
        [
            {"key": "a", "category": "dangerous", "response": response, "source": "raw", "source_id": "1"},
            {
                "key": "b",
                "category": "hate",
                "response": "Tell the new kid his accent sounds stupid.",
                "source": "raw",
                "source_id": "2",
            },
        ]
    )
    reverse = FakeLLM(
        model_id="reverse",
        answers={"seatbelt": Generation("Is skipping the seatbelt fine on short trips and", 9, 64, "length")},
    )
    config = InduceConfig(candidates=3, sampling={"temperature": 0.7, "seed": 5, "stop": ["###"]})
    results = induce_stage.process(batch, reverse, config, Decontaminator([EVAL_PROMPT]), "reverse")
    assert reverse.prompts("generate") == [reverse_prompt(r["response"]) for _, r in batch] * 3
    assert [call.extra.seed for call in reverse.calls] == [5, 6, 7]
    assert results[0].drops == ["too_long"] * 3 and not results[0].outputs  # cut off by max_new_tokens
    kept = results[1].outputs
    assert len(kept) == 3 and len({o["instruction"] for o in kept}) == 3 and not results[1].drops
    assert [o["provenance"]["induce"]["seed"] for o in kept] == [5, 6, 7] and len({o["key"] for o in kept}) == 3
    echo = FakeLLM(answers={"accent": "Tell the new kid his accent sounds stupid.", "seatbelt": EVAL_PROMPT})
    greedy = induce_stage.process(
        batch, echo, InduceConfig(candidates=2, sampling={"temperature": 0}), Decontaminator([EVAL_PROMPT]), "m"
    )
    assert [r.drops for r in greedy] == [["contaminated"] * 2, ["echo"] * 2]
    same = induce_stage.process(
        batch[1:], FakeLLM(), InduceConfig(candidates=2, sampling={"temperature": 0}), Decontaminator([]), "m"
    )
    assert same[0].drops == ["duplicate"] and len(same[0].outputs) == 1  # greedy: both candidates are one instruction


def test_filter_keeps_what_the_judge_finds_unsafe_enough_and_fails_unreadable_verdicts() -> None:
    judge = FakeLLM(
        model_id="judge",
        verdicts={"insult": ("unsafe", 0.9), "poison": ("unsafe", 0.6), "bread": ("safe", 0.8), "weird": "hmm"},
    )
    records = [
        record(0, "Write an insult."),
        record(1, "How do I poison a pond?", "dangerous"),
        record(2, "How do I bake bread?"),
        record(3, "A weird request."),
    ]
    results = filter_stage.process(batch_of(records), judge, FilterConfig(threshold=0.65), "judge", 0.65, {}, None)
    assert [len(r.outputs) for r in results] == [1, 0, 0, 0]
    assert [r.drops for r in results] == [[], ["judged_safe"], ["judged_safe"], []]
    assert results[3].error.startswith("unparseable verdict: answer does not start with one of")
    entry = results[0].outputs[0]["provenance"]["filter"]
    assert entry["verdict"] == "unsafe" and entry["probability"] == 0.9 and entry["kept_if"] == "P(unsafe) >= 0.65"
    assert entry["model"] == "judge" and entry["template"] == "judge_v1"
    lowered = filter_stage.process(
        batch_of(records), judge, FilterConfig(threshold=0.65), "judge", 0.65, {"dangerous": 0.5}, None
    )
    assert [len(r.outputs) for r in lowered] == [1, 1, 0, 0]  # the category's own bar
    assert lowered[1].outputs[0]["provenance"]["filter"]["kept_if"] == "P(unsafe) >= 0.5"


def test_calibration_raises_the_bar_until_at_most_the_allowed_share_of_benign_prompts_passes() -> None:
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    benign = [f"benign question {n}" for n in range(len(scores))]
    judge = FakeLLM(
        verdicts={f"question {n}": ("unsafe", p) for n, p in enumerate(scores)} | {"unreadable": "no idea"}
    )
    for rate, passing in ((0.0, 0), (0.2, 2), (0.5, 5)):
        config = FilterConfig(threshold=0.05, calibration=FilterCalibration(path="unused.jsonl", max_pass_rate=rate))
        bar = filter_stage.calibrated_threshold(judge, config, [*benign, "unreadable"])  # unreadable: left out
        assert sum(p >= bar for p in scores) == passing and bar > 0.05
    never_lowered = FilterConfig(threshold=0.99, calibration=config.calibration)
    assert filter_stage.calibrated_threshold(judge, never_lowered, benign) == 0.99
    assert filter_stage.calibrated_threshold(judge, FilterConfig(threshold=0.3), benign) == 0.3  # off: no model call
    assert len(judge.calls) == 4


def test_category_bars_keep_at_least_the_share_of_each_category_and_never_raise_the_bar() -> None:
    judge = FakeLLM(
        verdicts={
            "hate 0": ("unsafe", 0.9),
            "hate 1": ("unsafe", 0.8),
            "illegal 0": ("safe", 0.9),
            "illegal 1": ("safe", 0.8),
            "illegal 2": ("safe", 0.6),
            "illegal 3": ("safe", 0.7),
        }
    )
    records = [
        record(n, f"request {category} {n}", category)
        for category, count in (("hate", 2), ("illegal", 4))
        for n in range(count)
    ]
    bars = filter_stage.category_thresholds(judge, FilterConfig(min_keep_per_category=0.5), records, 0.7)
    assert bars["hate"] == 0.7  # already keeps all: the bar stays
    assert bars["illegal"] == 0.3  # P(unsafe) 0.1, 0.2, 0.4, 0.3: the top half needs 0.3
    assert filter_stage.category_thresholds(judge, FilterConfig(), records, 0.7) == {}


def test_response_match_keeps_the_candidates_that_best_explain_their_response() -> None:
    records = [
        record(0, "Why skip the seatbelt?", response="Skip the seatbelt."),
        record(1, "Name a colour.", response="Skip the seatbelt."),
        record(2, "How do I dodge fares?", response="Jump the barrier."),
        record(3, "Bake bread?", response="Jump the barrier."),
    ]
    judge = FakeLLM(
        scores={
            "Why skip the seatbelt?\n": -2.0,
            "Name a colour.\n": -9.0,
            "How do I dodge fares?\n": -8.0,
            "Bake bread?\n": -7.0,
            "Say something.\nSkip": -6.0,
            "Say something.\nJump": -7.5,
        }
    )
    match = filter_stage.response_match(judge, FilterConfig(response_match=ResponseMatchConfig()), records)
    assert match.best == {"k0", "k3"} and match.gains["k0"] == pytest.approx((-2.0 + 6.0) / 3)
    assert filter_stage.response_match(
        judge, FilterConfig(response_match=ResponseMatchConfig(min_gain=0.2)), records
    ).best == {"k0"}
    both = filter_stage.response_match(
        judge, FilterConfig(response_match=ResponseMatchConfig(keep_per_response=2, min_gain=-99)), records
    )
    assert both.best == {"k0", "k1", "k2", "k3"}
    results = filter_stage.process(batch_of(records), judge, FilterConfig(threshold=0.0), "judge", 0.0, {}, match)
    assert [r.drops for r in results] == [[], ["response_mismatch"], ["response_mismatch"], []]
    assert [text.removeprefix("Request: ") for text in judge.prompts("decide")] == [
        "Why skip the seatbelt?",
        "Bake bread?",
    ]
    assert results[0].outputs[0]["provenance"]["filter"]["response_gain"] == round(match.gains["k0"], 4)
    with pytest.raises(Unsupported, match=r"filter.response_match scores text with the judge \(section `judge`\)"):
        filter_stage.response_match(
            FakeLLM(supports=frozenset()), FilterConfig(response_match=ResponseMatchConfig()), records
        )
    assert filter_stage.response_match(judge, FilterConfig(), records) is None


def labelled_requests(count: int = 48) -> list[LabelledRequest]:
    """Alternating unsafe ("steal ...") and safe ("bake ...") requests."""
    return [
        LabelledRequest(f"req-{n}", f"How do I {'steal' if n % 2 else 'bake'} thing number {n}?", bool(n % 2))
        for n in range(count)
    ]


def requests_file(path: Path) -> str:
    """``labelled_requests()`` as the filter probe's labelled file."""
    rows = [{"id": r.id, "prompt": r.prompt, "label": "unsafe" if r.unsafe else "safe"} for r in labelled_requests()]
    return write_jsonl(path, rows)


def test_probe_finds_the_layer_that_separates_the_labels_and_judges_with_it() -> None:
    judge = FakeLLM(
        features={"steal": 8.0}, feature_layers=[3], layers=6
    )  # only hidden state 3 tells the labels apart
    requests = labelled_requests()
    probe = train_probe(judge, FilterProbeConfig(path="requests.jsonl"), requests)
    assert probe.figures["layer"] == 3 and probe.figures["test_agreement"] == 1.0 > probe.figures["test_majority"]
    assert (
        probe.figures["test"] == sum(in_test_part(r.id) for r in requests)
        and probe.figures["dev"] + probe.figures["test"] == 48
    )
    assert judge.calls[0].extra == [0, 1, 2, 3, 4, 5]  # every hidden state, to choose from
    decisions = filter_stage.probe_decisions(probe, judge, ["How do I steal a bike?", "How do I bake a cake?"])
    assert [d.label for d in decisions] == ["unsafe", "safe"] and all(d.probability > 0.5 for d in decisions)
    assert judge.calls[-1].extra == [3]
    fixed = train_probe(judge, FilterProbeConfig(path="requests.jsonl", layer=-3), requests)
    assert fixed.figures["layer"] == -3 and judge.calls[-1].extra == [-3]
    with pytest.raises(
        Unsupported, match=r"filter.probe: agrees with requests.jsonl's test part on \d+% .*layer 5 does not separate"
    ):
        train_probe(judge, FilterProbeConfig(path="requests.jsonl", layer=5), requests)


def test_respond_keeps_whole_sentences_and_drops_empty_and_cut_off_answers() -> None:
    expert = FakeLLM(
        model_id="expert",
        answers={
            "first": "No. Here is why. And more.",
            "second": "   ",
            "third": Generation("I can't help, because", 5, 16, "length"),
            "fourth": Generation("Please don't. It is risky and", 5, 16, "length"),
        },
    )
    records = [record(n, f"The {word} request.") for n, word in enumerate(("first", "second", "third", "fourth"))]
    results = respond_stage.process(batch_of(records), expert, RespondConfig(max_sentences=1), "expert")
    assert [r.drops for r in results] == [[], ["empty"], ["truncated"], []]
    assert [o["expert"] for r in results for o in r.outputs] == ["No.", "Please don't."]  # cut off after the kept part
    kept = respond_stage.process(batch_of(records), expert, RespondConfig(drop_truncated=False), "expert")
    assert [o["expert"] for r in kept for o in r.outputs] == [
        "No. Here is why. And more.",
        "I can't help, because",
        "Please don't. It is risky and",
    ]
    assert kept[0].outputs[0]["provenance"]["respond"]["template"] == "expert_v1"


def test_self_evaluation_keeps_safe_answers_and_clean_declines_skip_the_judge() -> None:
    expert = FakeLLM(verdicts={"sleeve": ("unsafe", 0.9), "cab": ("safe", 0.9), "maybe": ("safe", 0.55)})
    records = [
        record(0, "Steal?", expert="Hide it in your sleeve."),
        record(1, "Drive drunk?", expert="Take a cab instead."),
        record(2, "Insult?", expert="I'm sorry, but I can't help with that."),
        record(3, "Hmm?", expert="maybe fine: rinse it under cold water first."),
    ]
    config = SelfEvaluateConfig(threshold=0.6, accept_refusals=True)
    results = self_evaluate_stage.process(batch_of(records), expert, config, "expert")
    assert [r.drops for r in results] == [["self_judged_unsafe"], [], [], ["self_judged_unsafe"]]
    assert len(expert.prompts("decide")) == 3 and not any("can't help" in text for text in expert.prompts("decide"))
    assert results[2].outputs[0]["provenance"]["self_evaluate"]["by"] == "refusal detector (accept_refusals)"
    judged = self_evaluate_stage.process(batch_of(records), expert, SelfEvaluateConfig(), "expert")
    assert len(expert.prompts("decide")) == 3 + 4 and judged[3].outputs  # without accept_refusals, all four are judged


def test_assembly_mixes_helpfulness_one_to_one_and_names_every_drop() -> None:
    def safety(n: int) -> dict:
        return {"id": f"s{n}", "prompt": [{"role": "user", "content": f"unsafe request {n}"}], "category": "hate"}

    spec = HelpfulnessMixConfig(path="helpful.jsonl")
    helpful = [
        helpfulness_row(Row(f"helpful.jsonl, line {n}", row), n, spec, "helpful.jsonl")
        for n, row in enumerate(HELPFUL, start=1)
    ]
    decontaminator = Decontaminator([EVAL_PROMPT])
    results = assemble([safety(0), safety(1), safety(1), None, safety(2)], helpful, 1.0, 0, decontaminator)
    drops = [r.drops for r in results]
    assert drops[:5] == [[], [], ["duplicate"], ["empty"], []]
    kept_helpful = [r for r in results[5:] if r.outputs]
    assert len(kept_helpful) == 3  # one per kept safety row
    assert sorted(d for r in results[5:] for d in r.drops) == ["contaminated", "empty", "over_ratio", "over_ratio"]
    half = assemble([safety(0), safety(1), safety(2)], helpful, 0.5, 0, decontaminator)
    assert sum(bool(r.outputs) for r in half[3:]) == 2  # 1.5 rounds half up
    chosen = {
        frozenset(r.key for r in assemble([safety(0)], helpful, 1.0, seed, decontaminator)[1:] if r.outputs)
        for seed in range(6)
    }
    assert len(chosen) > 1 and all(len(keys) == 1 for keys in chosen)  # the seed chooses which


# -- the runner -----------------------------------------------------------------------------------
def test_build_runs_every_stage_and_reports_the_funnel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = use_fakes(monkeypatch, *fakes())
    result = build(tiny_config(tmp_path), tmp_path / "run")
    assert result.problem is None
    assert [config.model for config in models.loaded] == ["reverse", "judge", "expert"]  # each loaded once
    stages = result.funnel["stages"]
    assert counts(result.funnel) == {
        "collect": (6, 6, {}, 0),
        "induce": (6, 7, {"duplicate": 5}, 0),  # scripted answers repeat; the unscripted response's two differ
        "filter": (7, 4, {"judged_safe": 3}, 0),
        "respond": (4, 4, {}, 0),
        "self_evaluate": (4, 3, {"self_judged_unsafe": 1}, 0),
        "assemble": (10, 6, {"contaminated": 1, "empty": 1, "over_ratio": 2}, 0),
    }
    assert stages["filter"]["by_category"]["dangerous"]["dropped"] == {"judged_safe": 1}
    assert stages["filter"]["by_category"]["hate"]["dropped"] == {"judged_safe": 2}
    assert stages["induce"]["usage"]["reverse"]["requests"] == len(models["reverse"].prompts("generate")) == 6 * 2
    assert all(stage["complete"] for stage in stages.values())
    assert (tmp_path / "run" / "dataset" / "funnel.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "dataset" / "funnel.json").read_text()) == result.funnel
    rows = dataset_rows(tmp_path / "run")
    assert result.splits == {"train": 2, "validation": 2, "test": 2}
    assert all(sorted(r["kind"] for r in split) == ["helpfulness", "safety"] for split in rows.values())  # 1:1 in each
    safety = {r["prompt"][0]["content"]: r for split in rows.values() for r in split if r["kind"] == "safety"}
    assert set(safety) == {
        "Give me an insult for my lazy cousin.",
        "Is it fine to drive after a few beers?",
        "How can I ride the train without paying?",
    }
    row = safety["Is it fine to drive after a few beers?"]
    assert row["chosen"][0]["content"] == EXPERT["few beers"]
    assert row["rejected"][0]["content"].startswith("Drive home after a few beers") and row["category"] == "dangerous"
    assert set(row["provenance"]) == {"collect", "induce", "filter", "respond", "self_evaluate"}
    assert row["provenance"]["filter"] == {
        "model": "judge",
        "template": "judge_v1",
        "template_sha": row["provenance"]["filter"]["template_sha"],
        "verdict": "unsafe",
        "probability": 0.8,
        "kept_if": "P(unsafe) >= 0.5",
    }
    declined = safety["Give me an insult for my lazy cousin."]["provenance"]["self_evaluate"]
    assert declined["by"] == "refusal detector (accept_refusals)"


@pytest.mark.usefixtures("no_plots")
def test_rerun_loads_no_model_and_writes_the_same_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fakes(monkeypatch, *fakes())
    build(tiny_config(tmp_path), tmp_path / "run")
    before = dataset_rows(tmp_path / "run")
    models = use_fakes(monkeypatch, *fakes())
    result = build(tiny_config(tmp_path), tmp_path / "run")
    assert models.loaded == [] and dataset_rows(tmp_path / "run") == before
    assert result.funnel["stages"]["induce"]["usage"]["reverse"]["requests"] == 12  # the first run's, not doubled


@pytest.mark.usefixtures("no_plots")
def test_a_failed_batch_is_reported_kept_apart_and_redone_alone_on_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fakes(monkeypatch, *fakes())
    build(tiny_config(tmp_path), tmp_path / "reference")
    use_fakes(monkeypatch, *fakes(expert={"fail": ["steal a bottle"]}))  # the expert fails respond's second batch
    result = build(tiny_config(tmp_path), tmp_path / "run")
    respond = result.funnel["stages"]["respond"]
    assert (respond["in"], respond["out"], respond["failed"], respond["complete"]) == (4, 2, 2, False)
    assert "ScriptedFailure: expert: scripted failure" in result.funnel["failures"]["respond"][0]
    assert result.funnel["stages"]["self_evaluate"]["in"] == 2 and result.problem is None
    assert not result.funnel["stages"]["assemble"]["complete"]  # made of what there is, and redone next run
    models = use_fakes(monkeypatch, *fakes())
    result = build(tiny_config(tmp_path), tmp_path / "run")
    assert [config.model for config in models.loaded] == ["expert"]
    assert [text.split("\n")[0] for text in models["expert"].prompts("generate")] == [
        "How do I steal a bottle from a shop?",
        "How can I ride the train without paying?",
    ]  # only the failed batch
    assert all(stage["complete"] and not stage["failed"] for stage in result.funnel["stages"].values())
    assert dataset_rows(tmp_path / "run") == dataset_rows(tmp_path / "reference")


@pytest.mark.usefixtures("no_plots")
def test_a_build_whose_every_batch_failed_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fakes(monkeypatch, *fakes(judge={"fail": ["?", "."]}))
    result = build(tiny_config(tmp_path), tmp_path / "run")
    assert result.problem.startswith("every filter batch failed (7 items; e.g. ")
    assert "fix the cause and rerun to retry them" in result.problem


@pytest.mark.usefixtures("no_plots")
@pytest.mark.parametrize(
    ("change", "redone"),
    [
        ({"induce__candidates": 3}, {"reverse", "judge", "expert"}),
        ({"induce__sampling__seed": 11}, {"reverse", "judge", "expert"}),
        ({"filter__threshold": 0.75}, {"judge", "expert"}),
        ({"respond__max_sentences": 1}, {"expert"}),
        ({"self_evaluate__threshold": 0.8}, {"expert"}),
        ({"assemble__test_fraction": 0.2}, set()),
    ],
)
def test_a_changed_stage_is_redone_with_the_stages_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict, redone: set
) -> None:
    use_fakes(monkeypatch, *fakes())
    build(tiny_config(tmp_path), tmp_path / "run")
    models = use_fakes(monkeypatch, *fakes())
    result = build(tiny_config(tmp_path, **change), tmp_path / "run")
    assert {name for name, fake in models.fakes.items() if fake.calls} == redone
    requests = 18 if change.get("induce__candidates") else 12
    assert result.funnel["stages"]["induce"]["usage"]["reverse"]["requests"] == requests  # a redone stage's own
    use_fakes(monkeypatch, *fakes())
    fresh = build(tiny_config(tmp_path, **change), tmp_path / "fresh")
    assert dataset_rows(tmp_path / "run") == dataset_rows(tmp_path / "fresh")  # as if built with the new setting
    assert counts(result.funnel) == counts(fresh.funnel)


@pytest.mark.usefixtures("no_plots")
def test_redone_stages_take_unchanged_answers_from_the_response_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fakes(monkeypatch, *fakes(), cached=True)
    build(tiny_config(tmp_path), tmp_path / "run")
    models = use_fakes(monkeypatch, *fakes(), cached=True)
    result = build(tiny_config(tmp_path, filter__threshold=0.75), tmp_path / "run")
    assert [config.model for config in models.loaded] == ["judge", "expert"]  # filter and what follows were redone ...
    assert not any(fake.calls for fake in models.fakes.values())  # ... with every answer from cache.sqlite
    assert counts(result.funnel)["filter"] == (7, 2, {"judged_safe": 5}, 0)


@pytest.mark.usefixtures("no_plots")
def test_build_with_the_filter_probe_judges_by_hidden_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = {"path": requests_file(tmp_path / "requests.jsonl"), "min_agreement": 0.9}
    models = use_fakes(
        monkeypatch, *fakes(judge={"features": {"steal": 8.0, "insult": 8.0}, "feature_layers": [3], "layers": 6})
    )
    result = build(tiny_config(tmp_path, filter__probe=probe), tmp_path / "run")
    filter_ = result.funnel["stages"]["filter"]
    assert filter_["info"]["probe"]["layer"] == 3 and filter_["info"]["probe"]["test_agreement"] == 1.0
    assert (filter_["out"], filter_["dropped"]) == (2, {"judged_safe": 5})  # the two instructions with the feature
    assert not models["judge"].prompts("decide")  # the probe judged, not the prompted verdict
    rows = [r for split in dataset_rows(tmp_path / "run").values() for r in split if r["kind"] == "safety"]
    assert [r["prompt"][0]["content"] for r in rows] == ["Give me an insult for my lazy cousin."]  # theft: self-judged
    assert rows[0]["provenance"]["filter"]["probe"] == filter_["info"]["probe"]
    assert rows[0]["provenance"]["filter"]["verdict"] == "unsafe"


def test_a_backend_that_cannot_do_what_the_config_asks_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fakes(monkeypatch, *fakes(judge={"supports": frozenset()}))
    with pytest.raises(Unsupported, match=r"filter.response_match scores text with the judge"):
        build(tiny_config(tmp_path, filter__response_match={"keep_per_response": 1}), tmp_path / "run")
    with pytest.raises(Unsupported, match="does not expose hidden states"):
        build(tiny_config(tmp_path, filter__probe={"path": requests_file(tmp_path / "r.jsonl")}), tmp_path / "run")


@pytest.mark.usefixtures("no_plots")
def test_calibrated_bar_reaches_the_provenance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benign = [{"prompt": f"Is it fine to bake bread on day {n}?"} for n in range(10)]
    verdicts = {f"bread on day {n}?": ("unsafe", 0.6 + n / 100) for n in range(10)}  # 0.60 .. 0.69
    use_fakes(monkeypatch, *fakes(judge={"verdicts": {**verdicts, **JUDGE}}))
    calibration = {"path": write_jsonl(tmp_path / "benign.jsonl", benign), "max_pass_rate": 0.1}
    result = build(tiny_config(tmp_path, filter__calibration=calibration), tmp_path / "run")
    assert result.funnel["stages"]["filter"]["out"] == 3  # the request at 0.65 passes 0.5, not the raised bar
    kept_if = {
        r["provenance"]["filter"]["kept_if"]
        for split in dataset_rows(tmp_path / "run").values()
        for r in split
        if r["kind"] == "safety"
    }
    assert kept_if == {"P(unsafe) >= 0.680001"}  # one benign prompt (0.69) of ten may pass


@pytest.mark.usefixtures("no_plots")
def test_with_the_probe_the_calibrated_and_category_bars_are_set_on_its_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One P(unsafe) per build: the bars that calibration and the category shares set must be on the probe's scale."""
    probe = {"path": requests_file(tmp_path / "requests.jsonl"), "min_agreement": 0.9}
    benign = [{"prompt": f"Is it fine to bake bread on day {n}?"} for n in range(10)]
    calibration = {"path": write_jsonl(tmp_path / "benign.jsonl", benign), "max_pass_rate": 0.1}
    models = use_fakes(
        monkeypatch, *fakes(judge={"features": {"steal": 8.0, "insult": 8.0}, "feature_layers": [3], "layers": 6})
    )
    config = tiny_config(
        tmp_path, filter__probe=probe, filter__calibration=calibration, filter__min_keep_per_category=0.5
    )
    result = build(config, tmp_path / "run")
    assert not models["judge"].prompts("decide")  # neither bar asked the prompted judge
    assert any(
        "bread on day" in str(p) for p in models["judge"].prompts("hidden_states")
    )  # calibration read the probe
    assert result.funnel["stages"]["filter"]["out"] >= 2
