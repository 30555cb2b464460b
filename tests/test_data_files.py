"""The shipped demo and evaluation data: well-formed, balanced, deduplicated and decontaminated."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "builders" / "data"
EVAL = ROOT / "safer_instruct" / "evaluate" / "data"

SAFETY_CATEGORIES = {"hate", "dangerous", "illegal", "self-harm"}
PROMPT_SETS = ("unsafe", "benign_risky", "benign")  # the eval sets under safer_instruct/evaluate/data
EVAL_SET_CATEGORIES = {  # set -> category -> planned rows (each set >= 100 rows)
    "unsafe": {c: 30 for c in SAFETY_CATEGORIES},
    "benign_risky": {"homonym": 36, "safety": 30, "history": 24, "fiction": 15, "figurative": 15},
    "benign": {"writing": 24, "knowledge": 30, "advice": 24, "coding": 24, "math": 18},
}
REFERENCE_MAX_WORDS = 60  # reference answers are short: helpfulness is their log-likelihood under each model
JUDGE_CASE_KINDS = {  # the tricky cases the judge set must cover, at least 4 each
    "refusal_then_harmful",
    "harmful_with_disclaimer",
    "safe_quotes_risky_word",
    "plain_refusal",
    "helpful_benign",
    "partial_hedged",
}
REFUSAL_FIELDS = {"prompt": str, "completion": str, "label": str, "style": str, "voice": str}
LATEST_TEST_SET = 28  # the refusal sets' test parts are test_v2 to test_v{LATEST_TEST_SET}
DEV_REFUSAL_PARTS = ("dev", *(f"dev_v{n}" for n in (*range(6, 16), 17)))
WRITTEN_REFUSAL_PARTS = (*DEV_REFUSAL_PARTS, *(f"test_v{n}" for n in range(2, LATEST_TEST_SET + 1)))
REAL_REFUSAL_PARTS = ("real_dev", "real_test")  # the default model's own answers, labelled
REFUSAL_PARTS = (*WRITTEN_REFUSAL_PARTS, *REAL_REFUSAL_PARTS)
SCHEMAS: dict[str, dict[str, type]] = {  # file -> required field -> type
    "builders/data/reverse_pairs.jsonl": {"instruction": str, "input": str, "output": str, "kind": str},
    "builders/data/harmful_responses.jsonl": {"id": str, "text": str, "category": str},
    "builders/data/helpfulness_pairs.jsonl": {"prompt": str, "chosen": str, "rejected": str, "looks_risky": bool},
    "safer_instruct/evaluate/data/unsafe.jsonl": {"prompt": str, "category": str},
    "safer_instruct/evaluate/data/benign_risky.jsonl": {"prompt": str, "category": str, "reference": str},
    "safer_instruct/evaluate/data/benign.jsonl": {"prompt": str, "category": str, "reference": str},
    "safer_instruct/evaluate/data/judge_labelled.jsonl": {"prompt": str, "answer": str, "harmful": bool, "note": str},
    **{f"safer_instruct/refusal/data/refusal_labelled_{part}.jsonl": REFUSAL_FIELDS for part in REFUSAL_PARTS},
}
# a refusal set of v6 on -> the sets it shares no 6-word sequence and no near-reworded prompt with
REFUSAL_APART = {
    "dev_v6": ("test_v2", "test_v5", "test_v6"),  # training rows, apart from every set that was only scored then
    "test_v6": ("dev", "test_v2", "test_v3", "test_v4", "test_v5", "dev_v6"),  # fresh: apart from everything
    "dev_v7": ("test_v2", "test_v7"),  # training rows, apart from every set that is only scored
    "test_v7": ("dev", "test_v2", "test_v3", "test_v4", "test_v5", "dev_v6", "test_v6", "dev_v7"),  # fresh
    "dev_v8": ("test_v2", "test_v8"),
    "test_v8": ("dev", "test_v2", "test_v3", "test_v4", "test_v5", "dev_v6", "test_v6", "dev_v7", "test_v7", "dev_v8"),
    "dev_v9": ("test_v2", "test_v9"),
    "test_v9": (*(f"test_v{n}" for n in range(2, 9)), "dev", "dev_v6", "dev_v7", "dev_v8", "dev_v9"),
    "dev_v10": ("test_v2", "test_v10"),
    "test_v10": (*(f"test_v{n}" for n in range(2, 10)), "dev", *(f"dev_v{n}" for n in range(6, 11))),
    "dev_v11": ("test_v2", "test_v11"),
    "test_v11": (*(f"test_v{n}" for n in range(2, 11)), "dev", *(f"dev_v{n}" for n in range(6, 12))),
    "dev_v12": ("test_v2", "test_v12"),
    "test_v12": (*(f"test_v{n}" for n in range(2, 12)), "dev", *(f"dev_v{n}" for n in range(6, 13))),
    "dev_v13": ("test_v2", "test_v13"),
    "test_v13": (*(f"test_v{n}" for n in range(2, 13)), "dev", *(f"dev_v{n}" for n in range(6, 14))),
    "dev_v14": ("test_v2", "test_v14"),
    "test_v14": (*(f"test_v{n}" for n in range(2, 14)), "dev", *(f"dev_v{n}" for n in range(6, 15))),
    "dev_v15": ("test_v2", "test_v15"),
    "test_v15": (*(f"test_v{n}" for n in range(2, 15)), "dev", *(f"dev_v{n}" for n in range(6, 16))),
    "test_v16": (*(f"test_v{n}" for n in range(2, 16)), "dev", *(f"dev_v{n}" for n in range(6, 16))),
    "dev_v17": ("test_v2", "test_v17"),
    # the fresh sets since v17: apart from every earlier test set and every development set
    **{
        f"test_v{m}": (*(f"test_v{n}" for n in range(2, m)), *DEV_REFUSAL_PARTS)
        for m in range(17, LATEST_TEST_SET + 1)
    },
}
MAY_BE_EMPTY = {"input"}
PII_PATTERNS = {
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"),
    "phone": re.compile(r"\+?\d[\d ()-]{7,}\d"),
    "handle": re.compile(r"(?<![\w.])@\w+"),
    "reddit user": re.compile(r"\bu/\w+"),
    "url": re.compile(r"https?://\S+"),
}


def rows(relative: str) -> list[dict]:
    lines = (ROOT / relative).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def normalised(text: str) -> str:
    return " ".join(words(text))


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


STOPWORDS = set(
    "a an the i i'm my me to of in on and or for is it it's do does how what can you your with that this "
    "be at by from are so".split()
)


@cache  # a prompt is compared with thousands of others
def content_words(text: str) -> frozenset[str]:
    return frozenset(words(text)) - STOPWORDS


def content_jaccard(a: str, b: str) -> float:
    left, right = content_words(a), content_words(b)
    return len(left & right) / len(left | right) if left and right else 0.0


def refusal_rows(part: str) -> list[dict]:
    """A labelled refusal set by its part name (``dev``, ``test_v2``, ...)."""
    return rows(f"safer_instruct/refusal/data/refusal_labelled_{part}.jsonl")


def builder_texts() -> list[str]:
    """Every instruction, prompt and response in the builder data."""
    texts = [
        r[f] for r in rows("builders/data/reverse_pairs.jsonl") for f in ("instruction", "input", "output") if r[f]
    ]
    texts += [r["text"] for r in rows("builders/data/harmful_responses.jsonl")]
    texts += [r[f] for r in rows("builders/data/helpfulness_pairs.jsonl") for f in ("prompt", "chosen", "rejected")]
    return texts


def builder_prompts() -> list[str]:
    """The builder data's requests (the texts an eval prompt could be confused with)."""
    return [r["instruction"] for r in rows("builders/data/reverse_pairs.jsonl")] + [
        r["prompt"] for r in rows("builders/data/helpfulness_pairs.jsonl")
    ]


def eval_set(name: str) -> list[dict]:
    return rows(f"safer_instruct/evaluate/data/{name}.jsonl")


def eval_prompts() -> list[str]:
    prompts = [r["prompt"] for name in PROMPT_SETS for r in eval_set(name)]
    return prompts + [r["prompt"] for r in rows("safer_instruct/evaluate/data/judge_labelled.jsonl")]


def eval_texts() -> list[str]:
    references = [r["reference"] for name in ("benign_risky", "benign") for r in eval_set(name)]
    return (
        eval_prompts() + references + [r["answer"] for r in rows("safer_instruct/evaluate/data/judge_labelled.jsonl")]
    )


@pytest.mark.parametrize("relative", sorted(SCHEMAS))
def test_every_row_has_its_fields_with_the_right_types(relative: str) -> None:
    lines = (ROOT / relative).read_text(encoding="utf-8").splitlines()
    assert lines, f"{relative} is empty"
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert isinstance(record, dict), f"{relative}:{number} is not an object"
        for field, kind in SCHEMAS[relative].items():
            assert isinstance(record.get(field), kind), f"{relative}:{number}: `{field}` is not {kind.__name__}"
            if kind is str and field not in MAY_BE_EMPTY:
                assert record[field].strip(), f"{relative}:{number}: `{field}` is empty"


def test_builder_files_have_the_planned_sizes_and_categories() -> None:
    reverse = Counter(r["kind"] for r in rows("builders/data/reverse_pairs.jsonl"))
    assert set(reverse) == {"benign", "harmful_request"}
    assert 90 <= reverse["benign"] <= 120 and 30 <= reverse["harmful_request"] <= 50
    harmful = rows("builders/data/harmful_responses.jsonl")
    assert Counter(r["category"] for r in harmful) == {c: 16 for c in SAFETY_CATEGORIES}
    assert all(r["id"].startswith(r["category"] + "-") for r in harmful)
    helpfulness = rows("builders/data/helpfulness_pairs.jsonl")
    assert 200 <= len(helpfulness) <= 220
    assert 140 <= sum(r["looks_risky"] for r in helpfulness) <= 150  # XSTest-style contrast: risky words, benign asks
    assert all(normalised(r["chosen"]) != normalised(r["rejected"]) for r in helpfulness)


@pytest.mark.parametrize("name", PROMPT_SETS)
def test_eval_sets_have_the_planned_sizes_and_categories(name: str) -> None:
    records = eval_set(name)
    assert len(records) >= 100, f"{name}.jsonl has {len(records)} rows, fewer than 100"
    assert Counter(r["category"] for r in records) == EVAL_SET_CATEGORIES[name]


@pytest.mark.parametrize("name", ["benign_risky", "benign"])
def test_benign_sets_have_short_reference_answers(name: str) -> None:
    for number, record in enumerate(eval_set(name), start=1):
        reference = record.get("reference")
        assert isinstance(reference, str) and reference.strip(), (
            f"{name}.jsonl:{number}: `reference` is missing or empty"
        )
        assert len(reference.split()) <= REFERENCE_MAX_WORDS, (
            f"{name}.jsonl:{number}: `reference` is over {REFERENCE_MAX_WORDS} words"
        )
        assert normalised(reference) != normalised(record["prompt"]), (
            f"{name}.jsonl:{number}: `reference` repeats the prompt"
        )


def test_judge_set_is_balanced_and_covers_the_tricky_cases() -> None:
    cases = rows("safer_instruct/evaluate/data/judge_labelled.jsonl")
    assert len(cases) == 48
    assert sum(c["harmful"] for c in cases) == 24
    kinds = Counter(c["note"].split(":", 1)[0] for c in cases)
    for kind in JUDGE_CASE_KINDS:
        assert kinds[kind] >= 4, f"only {kinds[kind]} judge cases of kind {kind}"
    by_kind = {kind: {c["harmful"] for c in cases if c["note"].startswith(kind + ":")} for kind in kinds}
    assert by_kind["refusal_then_harmful"] == by_kind["harmful_with_disclaimer"] == {True}
    assert by_kind["plain_refusal"] == by_kind["safe_quotes_risky_word"] == by_kind["helpful_benign"] == {False}
    assert by_kind["partial_hedged"] == {True, False}


@pytest.mark.parametrize(
    "relative, fields",
    [
        ("builders/data/reverse_pairs.jsonl", ("instruction", "input")),
        ("builders/data/harmful_responses.jsonl", ("text",)),
        ("builders/data/harmful_responses.jsonl", ("id",)),
        ("builders/data/helpfulness_pairs.jsonl", ("prompt",)),
        ("safer_instruct/evaluate/data/unsafe.jsonl", ("prompt",)),
        ("safer_instruct/evaluate/data/benign_risky.jsonl", ("prompt",)),
        ("safer_instruct/evaluate/data/benign.jsonl", ("prompt",)),
        ("safer_instruct/evaluate/data/judge_labelled.jsonl", ("prompt",)),
    ],
)
def test_no_duplicates_within_a_file(relative: str, fields: tuple[str, ...]) -> None:
    # harmful_responses holds deliberate near-duplicates (punctuation changes), so its texts compare exactly
    exact = relative.endswith("harmful_responses.jsonl")
    keys = [tuple(r[f] if exact else normalised(r[f]) for f in fields) for r in rows(relative)]
    repeated = [key for key, count in Counter(keys).items() if count > 1]
    assert not repeated, f"{relative}: repeated {fields}: {repeated}"


def test_near_duplicate_and_pii_rows_are_the_noted_ones() -> None:
    harmful = {r["id"]: r for r in rows("builders/data/harmful_responses.jsonl")}
    noted = {i: r["note"] for i, r in harmful.items() if r.get("note")}
    near = {i: re.search(r"near-duplicate of ([\w-]+)", note) for i, note in noted.items()}
    near = {i: match.group(1) for i, match in near.items() if match}
    assert len(near) == 3
    for copy, original in near.items():
        assert original in harmful and original not in noted
        assert content_jaccard(harmful[copy]["text"], harmful[original]["text"]) >= 0.8
    with_pii = {i for i, r in harmful.items() if any(p.search(r["text"]) for p in PII_PATTERNS.values())}
    assert with_pii == {i for i, note in noted.items() if "personal data" in note}
    assert len(with_pii) == 2
    found = {kind for kind, p in PII_PATTERNS.items() for i in with_pii if p.search(harmful[i]["text"])}
    assert found == set(PII_PATTERNS)


def test_eval_sets_share_no_text_or_8_gram_with_builder_data() -> None:
    builder = builder_texts()
    exact = {normalised(t) for t in builder}
    grams = set().union(*(ngrams(t) for t in builder))
    for text in eval_texts():
        assert normalised(text) not in exact, f"eval text also in builder data: {text!r}"
        shared = ngrams(text) & grams
        assert not shared, f"eval text shares an 8-gram with builder data: {text!r}: {sorted(shared)[:1]}"


def test_eval_prompts_are_not_rewordings_of_builder_requests() -> None:
    requests = builder_prompts()
    for prompt in eval_prompts():
        closest = max(requests, key=lambda r: content_jaccard(prompt, r))
        assert content_jaccard(prompt, closest) < 0.5, f"{prompt!r} is close to builder request {closest!r}"


def test_eval_sets_are_not_near_duplicates_of_each_other() -> None:
    # every pair of prompts within and across the three sets, which are scored apart and must not repeat a request
    prompts = [(name, r["prompt"]) for name in PROMPT_SETS for r in eval_set(name)]
    for i, (name, prompt) in enumerate(prompts):
        for other_name, other in prompts[i + 1 :]:
            assert content_jaccard(prompt, other) < 0.5, f"{name} {prompt!r} is close to {other_name} {other!r}"
            if other_name != name:
                shared = ngrams(prompt) & ngrams(other)
                assert not shared, f"{name} {prompt!r} shares an 8-gram with {other_name} {other!r}"


@pytest.mark.slow  # compares every prompt with every builder and eval prompt
def test_refusal_labelled_set_is_decontaminated() -> None:
    """The refusal classifier's set: no repeats, nothing shared with the builder data, no eval-set prompt reworded."""
    labelled = [r for part in WRITTEN_REFUSAL_PARTS for r in refusal_rows(part)]
    for field in ("prompt", "completion"):
        repeated = [key for key, count in Counter(normalised(r[field]) for r in labelled).items() if count > 1]
        assert not repeated, f"refusal_labelled: repeated {field}: {repeated}"
    builder = builder_texts()
    exact, grams = {normalised(t) for t in builder}, set().union(*(ngrams(t) for t in builder))
    requests, prompts = builder_prompts(), [r["prompt"] for name in PROMPT_SETS for r in eval_set(name)]
    for record in labelled:
        for text in (record["prompt"], record["completion"]):
            assert normalised(text) not in exact and not ngrams(text) & grams, f"shared with builder data: {text!r}"
        for pool in (requests, prompts):
            closest = max(pool, key=lambda other: content_jaccard(record["prompt"], other))
            assert content_jaccard(record["prompt"], closest) < 0.5, f"{record['prompt']!r} is close to {closest!r}"


@pytest.mark.slow  # compares every prompt of the default model's answers with every eval prompt
@pytest.mark.parametrize("part", REAL_REFUSAL_PARTS)
def test_the_default_models_labelled_answers_stay_apart_from_the_eval_sets(part: str) -> None:
    """Its requests are builder and validation requests, none an eval prompt reworded (the answers are the model's
    own, formulaic declines included, so they are not checked for shared wording)."""
    prompts = eval_prompts()
    for number, record in enumerate(refusal_rows(part), start=1):
        close = max(content_jaccard(record["prompt"], other) for other in prompts)
        assert close < 0.5, f"{part} row {number}: its prompt is a near-rewording of an eval prompt ({close:.2f})"


@pytest.mark.slow  # compares every prompt of a v6 or v7 set with every prompt of the sets it stays apart from
@pytest.mark.parametrize("part", sorted(REFUSAL_APART))
def test_refusal_sets_stay_apart_from_the_sets_they_are_scored_beside(part: str) -> None:
    """No row shares a 6-word sequence with those sets, and no prompt is a near-rewording of one of their prompts
    (content-word Jaccard >= 0.5); the messages name no row of a test set."""
    others = [r for other in REFUSAL_APART[part] for r in refusal_rows(other)]
    grams = set().union(*(ngrams(r[field], 6) for r in others for field in ("prompt", "completion")))
    for number, record in enumerate(refusal_rows(part), start=1):
        for field in ("prompt", "completion"):
            shared = bool(ngrams(record[field], 6) & grams)
            assert not shared, f"{part} row {number}: its {field} shares a 6-gram"
        close = max(content_jaccard(record["prompt"], other["prompt"]) for other in others)
        assert close < 0.5, f"{part} row {number}: its prompt is a near-rewording (Jaccard {close:.2f})"


def test_eval_files_load_with_the_evaluation_loaders() -> None:
    from safer_instruct.evaluate.sets import PromptSetConfig, load_labelled, load_prompt_set

    for kind in PROMPT_SETS:
        assert len(load_prompt_set(PromptSetConfig(kind=kind))) == len(eval_set(kind))
    assert len(load_labelled()) == 48


def test_builder_files_load_with_datasets(tmp_path: Path) -> None:
    from datasets import load_dataset

    for name, fields in [
        ("reverse_pairs", {"instruction", "input", "output", "kind"}),
        ("harmful_responses", {"id", "text", "category", "note"}),
        ("helpfulness_pairs", {"prompt", "chosen", "rejected", "looks_risky"}),
    ]:
        dataset = load_dataset(
            "json", data_files=str(BUILDER / f"{name}.jsonl"), split="train", cache_dir=str(tmp_path)
        )
        assert set(dataset.column_names) == fields
        assert dataset.num_rows == len(rows(f"builders/data/{name}.jsonl"))


@pytest.mark.parametrize("folder", [BUILDER, EVAL])
def test_data_readmes_carry_a_content_warning_and_the_license(folder: Path) -> None:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert "content warning" in text.lower()
    assert "Apache-2.0" in text
    for data_file in folder.glob("*.jsonl"):
        assert data_file.name in text, f"{folder}/README.md does not describe {data_file.name}"


JUDGE_REQUEST_CATEGORIES = {"unsafe": SAFETY_CATEGORIES, "safe": SAFETY_CATEGORIES | {"general"}}


def judge_request_split(row_id: str) -> str:
    """The documented split of judge_requests.jsonl: `test` when sha256(id) % 4 == 0, else `dev`."""
    return "test" if int(hashlib.sha256(row_id.encode("utf-8")).hexdigest(), 16) % 4 == 0 else "dev"


def shingles(text: str, size: int = 5) -> set[str]:
    flat = " ".join(text.lower().split())
    return {flat[i : i + size] for i in range(max(1, len(flat) - size + 1))}


@pytest.mark.slow  # compares every pair of prompts
def test_judge_requests_are_valid_balanced_split_and_decontaminated() -> None:
    """The request judge's labelled set: well-formed, balanced, every style in both splits, apart from the eval sets."""
    records = rows("builders/data/judge_requests.jsonl")
    assert len(records) >= 600, f"judge_requests.jsonl has {len(records)} rows, fewer than 600"
    for number, record in enumerate(records, start=1):
        where = f"judge_requests.jsonl:{number}"
        assert set(record) == {"id", "prompt", "label", "category", "style"}, f"{where}: fields {sorted(record)}"
        assert all(isinstance(value, str) and value.strip() for value in record.values()), f"{where}: empty field"
        assert re.fullmatch(r"jr-\d{4}", record["id"]), f"{where}: bad id {record['id']!r}"
        assert record["category"] in JUDGE_REQUEST_CATEGORIES.get(record["label"], ()), f"{where}: bad label/category"
        assert 4 <= len(record["prompt"].split()) <= 30, f"{where}: prompt is not 4-30 words"
    assert len({r["id"] for r in records}) == len(records), "repeated id"
    repeated = [key for key, count in Counter(normalised(r["prompt"]) for r in records).items() if count > 1]
    assert not repeated, f"repeated prompts: {repeated}"
    labels = Counter(r["label"] for r in records)
    assert min(labels["unsafe"], labels["safe"]) >= 0.4 * len(records), f"unbalanced labels: {labels}"
    styles = {r["style"] for r in records}
    for style in styles:
        assert len({r["label"] for r in records if r["style"] == style}) == 1, f"style {style} has both labels"
        parts = {judge_request_split(r["id"]) for r in records if r["style"] == style}
        assert parts == {"dev", "test"}, f"style {style} is only in {parts}"
    others = [
        r["prompt"]
        for path in sorted(EVAL.glob("*.jsonl"))
        for r in rows(str(path.relative_to(ROOT)))
        if "prompt" in r
    ]
    others += [r["prompt"] for r in rows("builders/data/helpfulness_pairs.jsonl")]
    assert len(others) >= 3 * 100
    other_grams = set().union(*(ngrams(text, 6) for text in others))
    other_shingles = [(text, shingles(text)) for text in others]
    own = [(r["prompt"], shingles(r["prompt"])) for r in records]
    for index, (prompt, own_shingles) in enumerate(own):
        shared = ngrams(prompt, 6) & other_grams
        assert not shared, f"{prompt!r} shares a 6-gram with an eval or helpfulness prompt: {sorted(shared)[:1]}"
        for other, their_shingles in other_shingles + own[index + 1 :]:
            similarity = len(own_shingles & their_shingles) / len(own_shingles | their_shingles)
            assert similarity < 0.5, f"{prompt!r} is close to {other!r} (5-shingle Jaccard {similarity:.2f})"
        for other, _ in own[index + 1 :]:
            assert not ngrams(prompt, 6) & ngrams(other, 6), f"{prompt!r} shares a 6-gram with {other!r}"
