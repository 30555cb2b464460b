"""The Space's parts that need no model: settings, throttle, prompt limit, votes, badges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safer_instruct.errors import SaferInstructError
from safer_instruct.evaluate.judge import Verdict
from safer_instruct.space.app import recent
from safer_instruct.space.limits import Throttle, client_key, prompt_problem
from safer_instruct.space.settings import DEMO_ALIGNED, SpaceSettings
from safer_instruct.space.verdicts import badge_html
from safer_instruct.space.votes import VoteLog


def test_settings_come_from_environment_variables_and_overrides_win() -> None:
    settings = SpaceSettings.from_env(
        {"BASE_MODEL": "org/base", "REQUESTS_PER_MINUTE": "5", "LOAD_IN_4BIT": "true", "ALIGNED_ADAPTER": "a/dpo"},
        base_model="other/base",
    )
    assert settings.base_model == "other/base" and settings.requests_per_minute == 5 and settings.load_in_4bit
    aligned = settings.aligned_llm()
    assert aligned is not None and (aligned.model, aligned.adapter) == ("other/base", "a/dpo"), "adapter over the base"


def test_a_bad_setting_names_its_variable() -> None:
    with pytest.raises(SaferInstructError, match="requests_per_minute"):
        SpaceSettings.from_env({"REQUESTS_PER_MINUTE": "0"})
    with pytest.raises(SaferInstructError, match="judge_backend"):
        SpaceSettings.from_env({"JUDGE_BACKEND": "carrier-pigeon"})


def test_the_demo_adapter_is_the_aligned_default_only_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert SpaceSettings.from_env({}).aligned_llm() is None
    (tmp_path / DEMO_ALIGNED).mkdir(parents=True)
    assert SpaceSettings.from_env({}).aligned_model == DEMO_ALIGNED


def test_the_judge_runs_local_or_on_an_openai_compatible_endpoint() -> None:
    assert SpaceSettings.from_env({}).judge_llm() is None
    remote = SpaceSettings.from_env(
        {
            "JUDGE_MODEL": "guard",
            "JUDGE_BACKEND": "openai",
            "JUDGE_BASE_URL": "http://127.0.0.1:9/v1",
            "JUDGE_API_KEY_ENV": "GUARD_KEY",
        }
    ).judge_llm()
    assert remote is not None and (remote.backend, remote.api_key_env) == ("openai", "GUARD_KEY")


def test_throttle_allows_a_rate_per_client_in_a_sliding_window() -> None:
    now = [0.0]
    throttle = Throttle(limit=2, window_s=60, clock=lambda: now[0])
    assert throttle.wait_s("a") == 0 and throttle.wait_s("a") == 0
    assert throttle.wait_s("a") == pytest.approx(60)
    assert throttle.wait_s("b") == 0, "clients are counted apart"
    now[0] = 30.0
    assert throttle.wait_s("a") == pytest.approx(30), "a refused request is not counted"
    now[0] = 60.0
    assert throttle.wait_s("a") == 0


def test_client_key_trusts_forwarded_for_only_behind_a_trusted_proxy() -> None:
    assert (
        client_key("10.0.0.1", "203.0.113.9", "s1") == "10.0.0.1"
    )  # no trusted proxy: the header is anyone's to forge
    assert client_key("10.0.0.1", "203.0.113.9", "s1", trusted_proxy_hops=1) == "203.0.113.9"
    # the proxy appends what it saw: a forged entry the visitor sent sits left of it and is ignored
    assert client_key("10.0.0.1", "198.51.100.1, 203.0.113.9", "s1", trusted_proxy_hops=1) == "203.0.113.9"
    assert client_key("10.0.0.1", "198.51.100.1, 203.0.113.9, 10.0.0.7", "s1", trusted_proxy_hops=2) == "203.0.113.9"
    assert client_key("10.0.0.1", None, "s1", trusted_proxy_hops=1) == "10.0.0.1"
    assert client_key(None, None, "s1") == "s1"
    assert SpaceSettings.from_env({}).proxy_hops() == 0
    assert SpaceSettings.from_env({"SPACE_ID": "org/compare"}).proxy_hops() == 1
    assert SpaceSettings.from_env({"SPACE_ID": "org/compare", "TRUSTED_PROXY_HOPS": "0"}).proxy_hops() == 0


def test_prompt_limits_say_what_is_wrong() -> None:
    assert prompt_problem("hello", 10) is None
    assert prompt_problem(" \n", 10) == "Type a prompt first."
    assert "11 characters; this demo takes at most 10" in prompt_problem("x" * 11, 10)


def test_models_see_only_the_last_turns() -> None:
    history = [{"role": r, "content": str(i)} for i in range(3) for r in ("user", "assistant")]
    assert recent(history, max_turns=2) == history[-2:]
    assert recent(history, max_turns=1) == []


def test_votes_append_json_lines_and_reject_unknown_choices(tmp_path: Path) -> None:
    log = VoteLog(tmp_path / "votes" / "votes.jsonl")
    log.append("tie", {"prompt": "p", "answers": {"base": "a", "aligned": "b"}})
    log.append("aligned", {"prompt": "q"})
    records = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [r["choice"] for r in records] == ["tie", "aligned"] and records[0]["answers"]["aligned"] == "b"
    assert all(r["timestamp"] for r in records)
    with pytest.raises(ValueError, match="unknown vote 'maybe'"):
        log.append("maybe", {})


def test_badges_show_refusal_and_judge_verdict() -> None:
    assert "Refused" in badge_html("I'm sorry, but I can't help with that.")
    assert "Answered" in badge_html("Paris is the capital of France.")
    assert "judge: harmful (90%)" in badge_html("Sure, here is how.", Verdict(True, 0.9))
    assert "judge: harmless" in badge_html("No.", Verdict(False))
    assert "judge: no verdict" in badge_html("No.", Verdict(None, error="garbled <answer>"))
    assert "garbled &lt;answer&gt;" in badge_html("No.", Verdict(None, error="garbled <answer>"))


def test_votes_are_pushed_to_a_private_hub_dataset_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hub_standin import HubStandIn

    token = "hf_standin_token_for_votes"
    with HubStandIn(token) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login
        with pytest.raises(SaferInstructError, match="no Hugging Face token"):
            VoteLog(tmp_path / "votes.jsonl", repo_id="org/space-votes")
        monkeypatch.setenv("HF_TOKEN", token)
        log = VoteLog(tmp_path / "votes.jsonl", repo_id="org/space-votes", every_minutes=60)
        try:
            log.append("base", {"prompt": "p", "answers": {"base": "a", "aligned": "b"}})
            log.scheduler.trigger().result(timeout=30)
        finally:
            log.scheduler.stop()
        repo = hub.repos["org/space-votes"]
        assert repo.repo_type == "dataset" and repo.private
        [(path, content)] = repo.files.items()
        assert path == f"votes/{log.path.name}" and log.path.name.startswith("votes-"), "one file per app instance"
        assert json.loads(content)["choice"] == "base"
        assert all(token not in json.dumps(call.payload) for call in hub.calls)
