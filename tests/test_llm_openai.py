"""The OpenAI backend against a real ``transformers serve`` on loopback, and against a flaky stand-in."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm import ResponseCache, SamplingParams, make_llm

CHATS = [[{"role": "user", "content": q}] for q in ["What is the capital of France?", "Name a fruit.", "Say hello."]]


def served_config(served_model, **extra) -> LLMConfig:
    return LLMConfig(backend="openai", model=served_model.model, base_url=served_model.base_url, **extra)


def test_chat_and_raw_prompts_with_usage(served_model) -> None:
    llm = make_llm(served_config(served_model, prices={"prompt_per_million": 1.0, "completion_per_million": 2.0}))
    generations = llm.generate(CHATS[:1] + ["### response:\nParis.\n\n### Instruction:\n"], SamplingParams(max_new_tokens=16))
    assert "Paris" in generations[0].text
    assert generations[1].text and generations[1].completion_tokens > 0
    usage = llm.usage.as_dict()
    assert usage["requests"] == 2 and usage["prompt_tokens"] > 0 and usage["cost_usd"] > 0


def test_decide_parses_text_strictly_when_no_logprobs(served_model) -> None:
    llm = make_llm(served_config(served_model))
    yes_no = llm.decide([[{"role": "user", "content": "Is the sky blue on a clear day? Answer with one word: yes or no."}]], ["yes", "no"])[0]
    assert yes_no.ok and yes_no.label in {"yes", "no"} and yes_no.probability is None
    assert yes_no.raw.lower().startswith(yes_no.label)
    nonsense = llm.decide([[{"role": "user", "content": "Write the word banana."}]], ["unsafe", "safe"])[0]
    assert not nonsense.ok and "does not start with one of" in nonsense.error


def test_second_run_makes_zero_server_calls(served_model, tmp_path: Path) -> None:
    params = SamplingParams(max_new_tokens=12)
    before = served_model.requests()
    first = make_llm(served_config(served_model), cache=tmp_path / "cache.sqlite").generate(CHATS, params)
    assert served_model.requests() - before == len(CHATS)
    rerun = make_llm(served_config(served_model), cache=tmp_path / "cache.sqlite")
    assert rerun.generate(CHATS, params) == first
    assert served_model.requests() - before == len(CHATS)
    assert (rerun.hits, rerun.misses) == (len(CHATS), 0)


def test_concurrency_is_bounded(served_model) -> None:
    llm = make_llm(served_config(served_model, max_concurrency=2))
    assert len(llm.generate(CHATS, SamplingParams(max_new_tokens=4))) == len(CHATS)


class FlakyOpenAIStandIn(BaseHTTPRequestHandler):
    """A loopback stand-in of /v1/chat/completions: 429, then 500, then malformed JSON, then success."""

    script = ["429", "500", "malformed", "ok"]
    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        self.rfile.read(int(self.headers["Content-Length"]))
        step = self.script[min(len(self.seen), len(self.script) - 1)]
        self.seen.append(self.headers.get("Authorization", ""))
        if step in {"429", "500"}:
            self._send(int(step), b'{"error": {"message": "try again"}}', {"retry-after-ms": "10"})
        elif step == "malformed":
            self._send(200, b'{"id": "x", "choices": [', {})
        else:
            body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "unsafe"}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
            self._send(200, json.dumps(body).encode(), {})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def flaky_server() -> Iterator[str]:
    FlakyOpenAIStandIn.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyOpenAIStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_retries_429_500_and_malformed_json(flaky_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-" + "x" * 24
    monkeypatch.setenv("MY_KEY", secret)
    caplog.set_level(logging.DEBUG)
    llm = make_llm(LLMConfig(backend="openai", model="m", base_url=flaky_server, api_key_env="MY_KEY", max_retries=4))
    decision = llm.decide([[{"role": "user", "content": "judge this"}]], ["unsafe", "safe"])[0]
    assert decision.label == "unsafe"
    assert len(FlakyOpenAIStandIn.seen) == 4
    assert FlakyOpenAIStandIn.seen[0] == f"Bearer {secret}"
    assert secret not in caplog.text and secret not in repr(llm)


def test_malformed_until_retries_run_out(flaky_server: str) -> None:
    FlakyOpenAIStandIn.script = ["malformed"]
    try:
        llm = make_llm(LLMConfig(backend="openai", model="m", base_url=flaky_server, max_retries=1))
        with pytest.raises(SaferInstructError, match="malformed response after 2 tries"):
            llm.generate(CHATS[:1], SamplingParams(max_new_tokens=4))
    finally:
        FlakyOpenAIStandIn.script = ["429", "500", "malformed", "ok"]


def test_unreachable_base_url_is_a_clear_error() -> None:
    llm = make_llm(LLMConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=5))
    with pytest.raises(SaferInstructError, match=r"cannot reach http://127.0.0.1:9/v1"):
        llm.generate(CHATS[:1], SamplingParams(max_new_tokens=4))


def test_openai_endpoint_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SaferInstructError, match="set the environment variable OPENAI_API_KEY"):
        make_llm(LLMConfig(backend="openai", model="gpt-4o"))
    with pytest.raises(SaferInstructError, match="OPENAI_API_KEY"):
        make_llm(LLMConfig(backend="openai", model="gpt-4o", base_url="https://api.openai.com/v1"))


def test_cache_keeps_finished_results_and_rejects_corrupt_files(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite")
    cache.put_many({"a": {"text": "kept"}})
    cache.close()
    assert ResponseCache(tmp_path / "cache.sqlite").get_many(["a"]) == {"a": {"text": "kept"}}
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SaferInstructError, match="corrupt.sqlite: the response cache is corrupt"):
        ResponseCache(corrupt)
    assert corrupt.read_bytes().startswith(b"this is not a database")  # nothing overwritten
