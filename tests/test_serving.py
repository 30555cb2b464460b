"""Builds with served models: the Batch API through a build's run state, response_match refused where a
server cannot score text, and an already trained reversed model (``reverse_model.path``)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from instant_server import InstantOpenAIServer  # noqa: E402  (bench/instant_server.py)

from safer_instruct.config import validate  # noqa: E402
from safer_instruct.errors import SaferInstructError  # noqa: E402
from safer_instruct.llm import Unsupported  # noqa: E402
from safer_instruct.pipeline import build  # noqa: E402
from safer_instruct.pipeline import reverse_model as reverse_stage  # noqa: E402
from safer_instruct.pipeline.config import PipelineConfig, ReverseModelConfig  # noqa: E402

TEXTS = [
    "You are a worthless idiot and everyone knows it.",
    "Mix bleach and ammonia to clean faster, it works great.",
    "Just take the bike, nobody locks them properly anyway.",
    "Skip meals for a week, you will feel lighter.",
]


def tiny_config(tmp_path: Path, **sections) -> PipelineConfig:
    source = tmp_path / "raw.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t, "category": "hate"}) + "\n" for i, t in enumerate(TEXTS))
    )
    data = {
        "name": "served",
        "batch_size": 2,
        "sources": [{"name": "raw", "path": str(source), "category": "hate"}],
        "induce": {"candidates": 1},
        **sections,
    }
    return validate(PipelineConfig, data, "test config")


@pytest.fixture()
def instant(tmp_path: Path):
    from conftest import free_port

    server = InstantOpenAIServer(free_port())
    yield server.base_url
    server.close()


def served(base_url: str, **extra) -> dict:
    return {"backend": "openai", "model": "m", "base_url": base_url, **extra}


def test_batch_api_build_sends_the_stage_as_one_batch_and_keeps_its_id(tmp_path: Path, instant: str) -> None:
    from openai_standin import BatchStandIn

    batches = BatchStandIn()
    try:
        config = tiny_config(
            tmp_path,
            reverse_model={"llm": served(instant)},
            expert=served(instant),
            judge=served(batches.base_url, batch_api=True, batch_poll_s=0.05),
        )
        result = build(config, tmp_path / "run")
        assert result.funnel["stages"]["filter"]["out"] == len(TEXTS)  # the stand-in's verdicts: unsafe
        assert batches.created == 1 and batches.direct == 0  # 2 committed batches of items, one Batch API batch
        with sqlite3.connect(tmp_path / "run" / "state.sqlite") as db:
            assert db.execute("SELECT batch_id FROM batches").fetchall() == [("batch_1",)]
        build(config, tmp_path / "run")
        assert batches.created == 1
    finally:
        batches.close()


@pytest.mark.slow
def test_response_match_stops_the_build_where_the_judge_cannot_score(
    tmp_path: Path, instant: str, served_model
) -> None:
    config = tiny_config(
        tmp_path,
        reverse_model={"llm": served(instant)},
        expert=served(instant),
        judge=served(served_model.base_url, model=served_model.model),
        filter={"response_match": {"keep_per_response": 1}},
    )
    with pytest.raises(
        Unsupported, match=rf"filter.response_match .*section `judge`.* at {served_model.base_url} cannot score"
    ):
        build(config, tmp_path / "run")


def test_reverse_model_path_is_checked_and_used(tmp_path: Path, default_model_dir: Path) -> None:
    local = ReverseModelConfig(path=str(default_model_dir))
    reverse_stage.check(local)
    assert reverse_stage.reverse_llm(local, tmp_path, None, "fp").model == str(default_model_dir)  # type: ignore[arg-type]
    assert reverse_stage.served_weights(local) == []  # the local backend fingerprints the folder it loads
    remote = ReverseModelConfig(
        path=str(default_model_dir), llm={"backend": "openai", "model": "reverse", "base_url": "http://x/v1"}
    )
    assert reverse_stage.reverse_llm(remote, tmp_path, None, "fp").model == "reverse"  # type: ignore[arg-type]
    assert len(reverse_stage.served_weights(remote)) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaferInstructError, match=r"reverse_model.path: .*empty: not a trained model"):
        reverse_stage.check(ReverseModelConfig(path=str(tmp_path / "empty")))
    with pytest.raises(SaferInstructError, match=r"reverse_model.path: .*nowhere: no such folder"):
        reverse_stage.check(ReverseModelConfig(path=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="leave `llm.model` and `llm.adapter` unset"):
        ReverseModelConfig(path=str(default_model_dir), llm={"model": "other"})
