"""Streaming on the default model: ``LocalLLM.stream``, two answers at once, and the Space's entry point."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from safer_instruct.config import LLMConfig
from safer_instruct.llm import SamplingParams, make_llm
from safer_instruct.llm.local import _until_stop
from safer_instruct.space.settings import MAKE_ALIGNED_HINT
from safer_instruct.space.streaming import stream_together

ROOT = Path(__file__).resolve().parent.parent
ASK = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = SamplingParams(max_new_tokens=12)


@pytest.fixture(scope="module")
def llm(default_model_dir):
    return make_llm(LLMConfig(model="default"), show_progress=False)


def test_stream_yields_pieces_of_the_same_answer_generate_gives(llm) -> None:
    pieces = list(llm.stream(ASK, GREEDY))
    assert len(pieces) > 2
    assert "".join(pieces).strip() == llm.generate([ASK], GREEDY)[0].text
    assert llm.usage.completion_tokens > 0


def test_closing_a_stream_early_stops_it_and_frees_the_model(llm) -> None:
    stream = llm.stream(ASK, SamplingParams(max_new_tokens=200))
    next(stream)
    assert llm._lock.locked(), "the stream holds the model while it runs"
    stream.close()
    assert not llm._lock.locked()
    assert llm.generate([ASK], SamplingParams(max_new_tokens=4))[0].text


def test_a_generation_error_is_raised_not_hung_on(llm) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(llm.stream(ASK, SamplingParams(max_new_tokens=0)))
    assert not llm._lock.locked()


def test_stop_strings_end_a_stream_and_are_not_shown(llm) -> None:
    full = "".join(llm.stream(ASK, GREEDY)).strip()
    stop = full.split()[2]
    cut = "".join(llm.stream(ASK, SamplingParams(max_new_tokens=12, stop=(stop,))))
    assert stop not in cut and full.startswith(cut)
    assert list(_until_stop(iter(["  He", "llo ST", "OP! never"]), ["STOP"])) == ["He", "llo "]
    assert "".join(_until_stop(iter(["a S", "T", "x"]), ["STOP"])) == "a STx", "a held-back tail is released"


def test_stream_together_updates_every_answer_until_all_are_done(llm) -> None:
    other = [{"role": "user", "content": "Name a colour."}]
    updates = list(stream_together([(llm, ASK), (llm, other)], GREEDY))
    assert len(updates) > 3 and updates[-1].done == (True, True)
    assert not all(updates[0].done)
    paris, colour = (t.strip() for t in updates[-1].texts)
    assert "Paris" in paris and colour and colour != paris, "each answer goes to its own prompt"


def test_stream_together_raises_a_model_error_and_closing_it_frees_the_models(llm) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(stream_together([(llm, ASK)], SamplingParams(max_new_tokens=0)))
    updates = stream_together([(llm, ASK)], SamplingParams(max_new_tokens=200))
    next(updates)
    updates.close()
    assert not llm._lock.locked()


def test_the_space_entry_point_builds_the_app_and_says_how_to_get_an_aligned_model(
    default_model_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/demo here
    for name in ("ALIGNED_MODEL", "ALIGNED_ADAPTER", "JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASE_MODEL", "default")  # offline: the embedded model instead of its Hub id
    demo = runpy.run_path(str(ROOT / "spaces" / "compare" / "app.py"))["demo"]
    config = str(demo.get_config_file())
    assert MAKE_ALIGNED_HINT in config
    assert "Content warning" in config
    examples = [c for c in demo.get_config_file()["components"] if c["type"] == "dataset"]
    assert len(examples) == 3 and all(c["props"]["samples"] for c in examples), "an example tab per eval set"
    accordion = next(c for c in demo.get_config_file()["components"] if c["props"].get("elem_id") == "examples")
    assert accordion["props"]["open"] is False, "examples stay behind the content warning until opened"
    demo.close()


def test_without_an_aligned_model_one_column_answers_and_a_failing_judge_gives_no_verdict(llm, tmp_path: Path) -> None:
    from safer_instruct.evaluate.judge import Judge, JudgeConfig
    from safer_instruct.space import CompareApp, SpaceModels, SpaceSettings

    unreachable = LLMConfig(
        backend="openai", model="guard", base_url=f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0
    )
    judge = Judge(make_llm(unreachable, show_progress=False), JudgeConfig(llm=unreachable))
    app = CompareApp(SpaceSettings(votes_path=str(tmp_path / "votes.jsonl")), SpaceModels(base=llm, judge=judge))
    *_, final = app.respond("What is the capital of France?", 0.0, 8, [], [], None)
    _, base_chat, aligned_chat, base_badge, aligned_badge, base_state, aligned_state, turn = final
    assert base_chat[-1]["content"] and "judge: no verdict" in base_badge
    assert aligned_chat == aligned_badge == aligned_state == {"__type__": "update"}, "the aligned column is left alone"
    assert turn["answers"] == {"base": base_state[-1]["content"]} and turn["judge_harmful"] == {"base": None}


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
