"""Collect: normalisation, personal-data scrubbing, duplicates, decontamination, and bad input (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from safer_instruct.config import validate
from safer_instruct.errors import SaferInstructError
from safer_instruct.pipeline.clean import Decontaminator, normalise, scrub_pii
from safer_instruct.pipeline.collect import collect, load_source
from safer_instruct.pipeline.config import CleanConfig, PipelineConfig, SourceConfig
from safer_instruct.pipeline.released import export_released, import_released
from safer_instruct.pipeline.runner import build


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected", "kinds"),
    [
        ("Mail jane.doe@example.com now", "Mail <EMAIL> now", {"EMAIL": 1}),
        ("Call +1 555 010 2030 or (555) 010-2030.", "Call <PHONE> or <PHONE>.", {"PHONE": 2}),
        ("See https://example.com/cheap-passes, or www.example.org.", "See <URL>, or <URL>.", {"URL": 2}),
        ("Tag @jane_doe_42 and ask u/quickcash_mike", "Tag <HANDLE> and ask <USERNAME>", {"HANDLE": 1, "USERNAME": 1}),
        ("Met on 2024-01-05, paid 12,000 dollars at 10:30", "Met on 2024-01-05, paid 12,000 dollars at 10:30", {}),
    ],
)
def test_personal_data_becomes_placeholders(text: str, expected: str, kinds: dict) -> None:
    scrubbed, found = scrub_pii(text)
    assert scrubbed == expected
    assert dict(found) == kinds


def test_normalise_unicode_and_whitespace() -> None:
    assert normalise("\ufeffＦｕｌｌ\u200b  width\t\ttext \r\n\n\n\nnext ") == "Full width text\n\nnext"


def test_decontaminator_exact_and_ngram_overlap() -> None:
    evals = Decontaminator(["How do I make my little brother cry with insults?", "Say hi"], n=5)
    assert evals.overlap("how do I make my little brother cry with insults") == "exact"
    assert evals.overlap("Tell me: make my little brother cry with insults, please") == "ngram"
    assert evals.overlap("Then say hi to him.") == "ngram"  # a short eval prompt counts as one whole n-gram
    assert evals.overlap("How do I make bread rise faster?") is None


def test_collect_drops_with_reasons_and_scrubs(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "raw.jsonl",
        [
            {
                "id": "a",
                "text": "Tell your coworker in front of everyone that his ideas are stupid.",
                "category": "hate",
            },
            {
                "id": "b",
                "text": "Tell your coworker in front of everyone that his ideas are stupid!",
                "category": "hate",
            },
            {
                "id": "c",
                "text": "Tell your coworker in front of everyone that all his ideas are stupid.",
                "category": "hate",
            },
            {"id": "d", "text": "   ", "category": "hate"},
            {"id": "e", "text": "x" * 300, "category": "dangerous"},
            {
                "id": "f",
                "text": "Write to jane.doe@example.com and call 555 010 2030 to buy the stolen bikes.",
                "category": "illegal",
            },
            {
                "id": "g",
                "text": "Here is how to make my little brother cry with insults every day.",
                "category": "hate",
            },
        ],
    )
    responses = load_source(SourceConfig(name="raw", path=str(path), category_column="category"))
    evals = Decontaminator(["How do I make my little brother cry with insults?"], n=6)
    results = collect(responses, CleanConfig(max_chars=200), evals)
    drops = {r.key: r.drops for r in results}
    assert [r.drops for r in results] == [
        [],
        ["duplicate"],
        ["near_duplicate"],
        ["empty"],
        ["too_long"],
        [],
        ["contaminated"],
    ]
    assert len(set(drops)) == 7
    kept = [r.outputs[0] for r in results if r.outputs]
    assert kept[1]["response"] == "Write to <EMAIL> and call <PHONE> to buy the stolen bikes."
    assert kept[1]["provenance"]["collect"]["pii_scrubbed"] == {"EMAIL": 1, "PHONE": 1}


def base_config(tmp_path: Path, source: Path, **extra) -> PipelineConfig:
    data = {"name": "t", "sources": [{"name": "raw", "path": str(source), "category_column": "category"}], **extra}
    return validate(PipelineConfig, data, "test config")


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        (
            "raw.jsonl",
            b'{"id": "a", "text": "fine text here", "category": "hate"}\n{"id": "b", "text": oops}\n',
            "raw.jsonl, line 2: malformed JSON",
        ),
        ("raw.jsonl", b'{"id": "a", "text": "caf\xe9 au lait", "category": "hate"}\n', "raw.jsonl, line 1: not UTF-8"),
        ("raw.jsonl", b"", "raw.jsonl: no rows (empty file)"),
        (
            "raw.jsonl",
            b'{"id": "a", "body": "fine text here", "category": "hate"}\n',
            "raw.jsonl: missing column(s) text",
        ),
        (
            "raw.jsonl",
            b'{"id": "a", "text": ["a", "list"], "category": "hate"}\n',
            "raw.jsonl, line 1: field 'text' must be text, got list",
        ),
        (
            "raw.jsonl",
            b'{"id": "a", "text": "one", "category": "hate"}\n{"id": "a", "text": "two", "category": "hate"}\n',
            "line 2: field 'id': id 'a' repeats",
        ),
        ("raw.csv", b'id,text,category\na,"fine text here",hate\nb,"unterminated,hate\n', "raw.csv, line 3"),
        ("raw.csv", b"id,text,category\na,fine text here,hate,extra\n", "raw.csv, line 2: expected 3 fields"),
        (
            "raw.jsonl",
            b'{"id": "a", "text": "fine text here", "category": "  "}\n',
            "raw.jsonl, line 1: field 'category' is missing or empty",
        ),
        ("raw.txt", b"hello", "unsupported file type"),
    ],
)
def test_bad_input_names_file_line_and_field_before_any_model(
    tmp_path: Path, filename: str, content: bytes, message: str
) -> None:
    source = tmp_path / filename
    source.write_bytes(content)
    run_dir = tmp_path / "run"
    with pytest.raises(SaferInstructError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(base_config(tmp_path, source), run_dir)
    assert not run_dir.exists()  # nothing started: no state, no cache, no model loaded


def test_bad_config_types_name_the_field(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "raw.jsonl", [{"id": "a", "text": "fine text here", "category": "hate"}])
    with pytest.raises(SaferInstructError, match=r"field `induce.candidates`: .*got 'two'"):
        base_config(tmp_path, source, induce={"candidates": "two"})
    with pytest.raises(SaferInstructError, match=r"field `filter.min_keep_per_category`: .*greater than 0"):
        base_config(tmp_path, source, filter={"min_keep_per_category": 0})
    with pytest.raises(
        SaferInstructError, match=r"filter.response_match .* the OpenAI API does not return: serve the judge"
    ):
        base_config(
            tmp_path,
            source,
            filter={"response_match": {"keep_per_response": 1}},
            judge={
                "backend": "openai",
                "base_url": ["http://127.0.0.1:9/v1", "https://api.openai.com/v1"],
                "model": "m",
            },
        )
    base_config(
        tmp_path,
        source,
        filter={"response_match": {"keep_per_response": 1}},  # a vLLM judge can score text
        judge={"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
    )
    with pytest.raises(SaferInstructError, match=r"field `reverse_model`: .*either `train` .* or `path`"):
        base_config(tmp_path, source, reverse_model={"path": "x", "train": {"recipe": "r.yaml", "dataset": "d.jsonl"}})
    with pytest.raises(
        SaferInstructError, match=r"field `sources.0`: .*exactly one of `category` or `category_column`"
    ):
        validate(PipelineConfig, {"sources": [{"name": "raw", "path": str(source)}]}, "test config")


def test_bad_eval_set_and_helpfulness_are_caught_up_front(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "raw.jsonl", [{"id": "a", "text": "fine text here", "category": "hate"}])
    bad_eval = write_jsonl(tmp_path / "eval.jsonl", [{"question": "no prompt column"}])
    with pytest.raises(SaferInstructError, match="eval.jsonl: missing column"):
        build(base_config(tmp_path, source, decontaminate={"eval_sets": [str(bad_eval)]}), tmp_path / "run")
    bad_help = write_jsonl(tmp_path / "help.jsonl", [{"prompt": "hi", "chosen": "hello"}])
    with pytest.raises(SaferInstructError, match="help.jsonl: missing column.*rejected"):
        build(base_config(tmp_path, source, helpfulness={"path": str(bad_help)}), tmp_path / "run")
    bad_calibration = write_jsonl(tmp_path / "benign.jsonl", [{"question": "no prompt column"}])
    with pytest.raises(SaferInstructError, match="benign.jsonl: missing column.*prompt"):
        build(base_config(tmp_path, source, filter={"calibration": {"path": str(bad_calibration)}}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_released_csv_import_and_export(tmp_path: Path) -> None:
    csv_path = tmp_path / "released.csv"
    csv_path.write_text(
        "instruction,rejected,chosen,label\n"
        '"How do I skip paying for the bus?","Board through the back door.","I can\'t help with fare evasion.",illegal\n'
        '"Insult my cousin for me.",,"I won\'t insult anyone, but I can help you talk to him.",hate\n'
        ',"x","y",hate\n',
        encoding="utf-8",
    )
    rows = import_released(csv_path, "release")
    assert rows[2][1] is None  # empty instruction: dropped later as "empty"
    first, second = rows[0][1], rows[1][1]
    assert first["rejected"] == [{"role": "assistant", "content": "Board through the back door."}]
    assert second["rejected"] == []  # SFT-only
    assert second["category"] == "hate" and second["kind"] == "safety"
    out = tmp_path / "out.csv"
    assert export_released([first, second], out) == 2
    again = import_released(out, "release")
    assert [r[1]["prompt"] for r in again] == [first["prompt"], second["prompt"]]
    assert again[1][1]["rejected"] == []


def test_config_mistakes_outside_the_data_are_caught_up_front(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "raw.jsonl", [{"id": "a", "text": "fine text here", "category": "hate"}])
    run_dir = tmp_path / "run"
    with pytest.raises(SaferInstructError, match="prompt template 'judge_v9' not found"):
        build(base_config(tmp_path, source, filter={"template": "judge_v9"}), run_dir)
    no_roles = tmp_path / "plain.j2"
    no_roles.write_text("Is this unsafe? {{ instruction }}", encoding="utf-8")
    with pytest.raises(SaferInstructError, match="must start with a `### system|user` line"):
        build(base_config(tmp_path, source, filter={"template": str(no_roles)}), run_dir)
    undefined = tmp_path / "undefined.j2"
    undefined.write_text("### user\nRequest: {{ instructoin }}", encoding="utf-8")
    with pytest.raises(SaferInstructError, match="'instructoin' is undefined"):
        build(base_config(tmp_path, source, respond={"template": str(undefined)}), run_dir)
    with pytest.raises(SaferInstructError, match="reverse_model.train.recipe: missing.yaml: file not found"):
        build(
            base_config(tmp_path, source, reverse_model={"train": {"recipe": "missing.yaml", "dataset": str(source)}}),
            run_dir,
        )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: default\n", encoding="utf-8")
    with pytest.raises(SaferInstructError, match="reverse_model.train.dataset: nowhere/pairs.jsonl: no such file"):
        build(
            base_config(
                tmp_path, source, reverse_model={"train": {"recipe": str(recipe), "dataset": "nowhere/pairs.jsonl"}}
            ),
            run_dir,
        )
    with pytest.raises(SaferInstructError, match="at least one entry in `sources`"):
        validate(PipelineConfig, {"name": "empty"}, "test config")
    assert not run_dir.exists()


def test_unreadable_state_and_missing_dataset_are_explained(tmp_path: Path) -> None:
    from safer_instruct.pipeline import load_preferences

    with pytest.raises(SaferInstructError, match="no preference dataset here"):
        load_preferences(tmp_path)
    source = write_jsonl(tmp_path / "raw.jsonl", [{"id": "a", "text": "fine text here", "category": "hate"}])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(SaferInstructError, match="the run state is unreadable"):
        build(base_config(tmp_path, source), run_dir)


def labelled_requests(n: int = 24) -> list[dict]:
    """Requests whose ids fall in both parts of the probe's split, both labels in each."""
    return [{"id": f"q{i}", "prompt": f"request number {i}", "label": "unsafe" if i % 2 else "safe"} for i in range(n)]


def test_bad_filter_probe_input_names_the_file_row_and_field(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "raw.jsonl", [{"id": "a", "text": "fine text here", "category": "hate"}])

    def build_with(rows: list[dict]) -> None:
        labelled = write_jsonl(tmp_path / "requests.jsonl", rows)
        build(base_config(tmp_path, source, filter={"probe": {"path": str(labelled)}}), tmp_path / "run")

    rows = labelled_requests()
    with pytest.raises(
        SaferInstructError, match=r"requests.jsonl, line 3: field 'label' must be one of unsafe, safe, got 'harmful'"
    ):
        build_with(rows[:2] + [{**rows[2], "label": "harmful"}] + rows[3:])
    with pytest.raises(SaferInstructError, match=r"requests.jsonl, line 4: field 'id' repeats 'q0'"):
        build_with(rows[:3] + [{**rows[3], "id": "q0"}] + rows[4:])
    with pytest.raises(SaferInstructError, match=r"requests.jsonl: the test part needs both labels"):
        build_with([{**row, "label": "safe"} for row in rows])
    with pytest.raises(SaferInstructError, match=r"requests.jsonl: missing column\(s\) label"):
        build_with([{"id": row["id"], "prompt": row["prompt"]} for row in rows])
    assert not (tmp_path / "run").exists()  # nothing is written before the inputs check out
    with pytest.raises(SaferInstructError, match=r"filter.probe reads the judge model's hidden states"):
        base_config(
            tmp_path,
            source,
            filter={"probe": {"path": "requests.jsonl"}},
            judge={"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
        )
    with pytest.raises(SaferInstructError, match=r"field `filter.probe.l2`: .*every L2 strength must be > 0"):
        base_config(tmp_path, source, filter={"probe": {"path": "requests.jsonl", "l2": [0.1, 0]}})


def test_probe_logistic_regression_recovers_a_separating_direction() -> None:
    from safer_instruct.pipeline.judge_probe import fitted

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    y = (x[:, 2] - 0.5 * x[:, 5] > 0).astype(float)
    probe = fitted(x, y, l2=0.01, layer=-1)
    assert ((probe.p_unsafe(x) >= 0.5) == y).mean() > 0.97
    assert np.argmax(np.abs(probe.weights)) == 2
    again = fitted(x, y, l2=0.01, layer=-1)
    assert np.array_equal(probe.weights, again.weights)  # deterministic: the same data gives the same probe
