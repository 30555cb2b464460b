"""The OpenAI backend against a real ``transformers serve`` on loopback, and against loopback stand-ins: a flaky
server, a scoring server backed by the real default model, instant servers as replicas, and the Batch API."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm import ResponseCache, SamplingParams, make_llm

BENCH = Path(__file__).resolve().parents[1] / "bench"
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


# -- scoring given text over HTTP (filter.response_match) ------------------------------------------
@pytest.mark.slow
def test_loglikelihood_over_http_matches_the_local_model(default_model_dir: Path) -> None:
    from openai_standin import ScoringStandIn

    from safer_instruct.llm.local import LocalLLM

    local = LocalLLM(LLMConfig(model=str(default_model_dir), dtype="float32"), show_progress=False)  # one precision for both paths
    server = ScoringStandIn(local)
    try:
        remote = make_llm(LLMConfig(backend="openai", model=str(default_model_dir), base_url=server.base_url), show_progress=False)
        prompts = [[{"role": "user", "content": "How do I make my neighbour's dog sick?"}],
                   [{"role": "user", "content": "Say something."}],
                   "### response:\nEat it raw, it is fine.\n\n### Instruction:\n"]
        texts = ["Feed it chocolate every day.", "Feed it chocolate every day.", "Should I cook chicken before eating it?"]
        over_http = remote.loglikelihood(prompts, texts)
        in_process = local.loglikelihood(prompts, texts)
        assert server.requests == len(prompts)
        for http_score, local_score in zip(over_http, in_process):
            assert http_score.tokens == local_score.tokens > 3
            assert http_score.logprob == pytest.approx(local_score.logprob, abs=2e-3)
        assert over_http[0].logprob != pytest.approx(over_http[1].logprob, abs=0.5)  # the prompt matters: real numbers
        remote.close()
    finally:
        server.close()


def test_scoring_is_refused_where_the_server_cannot(served_model, monkeypatch: pytest.MonkeyPatch) -> None:
    from safer_instruct.llm import Unsupported

    llm = make_llm(served_config(served_model), show_progress=False)  # transformers serve: no echoed logprobs
    with pytest.raises(Unsupported, match=rf"at {served_model.base_url} cannot score given text: .*no prompt log-probabilities"):
        llm.loglikelihood(["### response:\nHi.\n\n### Instruction:\n"], ["Say hi."])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "y" * 20)
    with pytest.raises(Unsupported, match=r"'gpt-4o' at https://api.openai.com/v1 cannot score .*OpenAI API does not return"):
        make_llm(LLMConfig(backend="openai", model="gpt-4o")).loglikelihood(["a"], ["b"])


# -- many replicas -----------------------------------------------------------------------------------
def start_instant(port: int) -> subprocess.Popen:
    """One ``InstantOpenAIServer`` (bench/instant_server.py) in its own process, so it can be killed."""
    process = subprocess.Popen([sys.executable, str(BENCH / "instant_server.py"), "--port", str(port)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"instant server on port {port} did not come up")


@pytest.mark.slow
def test_replicas_share_the_load_survive_a_killed_one_and_take_it_back() -> None:
    from conftest import free_port

    ports = [free_port() for _ in range(3)]
    servers = [start_instant(port) for port in ports]
    urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
    llm = make_llm(LLMConfig(backend="openai", model="m", base_url=urls, max_retries=1, max_concurrency=4, replica_cooldown_s=1.0),
                   show_progress=False)
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3000)]
    try:
        killer = threading.Timer(0.5, servers[1].kill)  # -9, mid-run
        killer.start()
        answers = llm.generate(prompts, SamplingParams(max_new_tokens=16))
        killer.join()
        assert len(answers) == len(prompts) and all(a.text.startswith("I can't help") for a in answers)
        served = [replica.answered for replica in llm.pool.replicas]
        assert served[1] > 0 and served[0] > served[1] and served[2] > served[1], served  # spread, then taken out
        assert llm.pool.up == 2
        servers[1] = start_instant(ports[1])  # back on its port
        time.sleep(1.2)  # its cool-down
        before = llm.pool.replicas[1].answered
        llm.generate(prompts[:300], SamplingParams(max_new_tokens=8))
        assert llm.pool.replicas[1].answered > before and llm.pool.up == 3
        for server in servers:
            server.kill()
        with pytest.raises(SaferInstructError, match=r"none of the 3 replicas of 'm' answered: cannot reach http://127.0.0.1"):
            llm.generate(prompts[:2], SamplingParams(max_new_tokens=8))
    finally:
        llm.close()
        for server in servers:
            server.kill()
            server.wait()


def test_replica_lists_are_checked() -> None:
    with pytest.raises(ValueError, match="without repeats"):
        LLMConfig(backend="openai", model="m", base_url=["http://a/v1", "http://a/v1"])
    with pytest.raises(ValueError, match="openai backend only"):
        LLMConfig(model="m", base_url=["http://a/v1"])


# -- the Batch API -----------------------------------------------------------------------------------
BATCH_CHILD = """
import sys
from safer_instruct.config import LLMConfig
from safer_instruct.llm import make_llm
from safer_instruct.pipeline.store import RunStore
store = RunStore(sys.argv[2])
config = LLMConfig(backend="openai", model="m", base_url=sys.argv[1], batch_api=True, batch_poll_s=0.05)
decisions = make_llm(config, ledger=store, show_progress=False).decide([f"request {i}" for i in range(5)], ["unsafe", "safe"])
print([d.label for d in decisions])
"""


@pytest.mark.slow
def test_batch_api_is_paid_once_even_when_the_run_is_killed(tmp_path: Path) -> None:
    from openai_standin import BatchStandIn

    from safer_instruct.llm.batch import MemoryLedger
    from safer_instruct.pipeline.store import RunStore

    server = BatchStandIn()
    state = tmp_path / "state.sqlite"
    command = [sys.executable, "-c", BATCH_CHILD, server.base_url, str(state)]
    try:
        server.hold.set()  # the batch stays in progress: the first run polls until it is killed
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (state.exists() and RunStore(state).db.execute("SELECT count(*) FROM batches").fetchone()[0]):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        child.kill()  # -9 while polling
        child.wait()
        assert server.created == 1
        server.hold.clear()
        rerun = subprocess.run(command, capture_output=True, text=True, check=True)
        assert rerun.stdout.strip() == str(["unsafe"] * 5)
        assert server.created == 1 and server.direct == 0  # the same batch collected: not submitted, not paid again
        # killed between creating the batch and recording it: the batch's metadata finds it
        config = LLMConfig(backend="openai", model="m", base_url=server.base_url, batch_api=True, batch_poll_s=0.05,
                           prices={"prompt_per_million": 2.0})
        llm = make_llm(config, ledger=MemoryLedger(), show_progress=False)
        assert [d.label for d in llm.decide([f"request {i}" for i in range(5)], ["unsafe", "safe"])] == ["unsafe"] * 5
        assert server.created == 1
        assert llm.usage.cost_usd == pytest.approx(5 * 10 * 2.0 / 1e6 * 0.5)  # the Batch API's half price
        llm.close()
    finally:
        server.close()


def test_batch_lines_left_unanswered_are_asked_directly() -> None:
    from openai_standin import BatchStandIn

    server = BatchStandIn(unanswered=frozenset({1, 3}))
    try:
        llm = make_llm(LLMConfig(backend="openai", model="m", base_url=server.base_url, batch_api=True, batch_poll_s=0.05),
                       show_progress=False)
        decisions = llm.decide([f"request {i}" for i in range(4)], ["unsafe", "safe"])
        assert [d.label for d in decisions] == ["unsafe"] * 4 and all(d.probability > 0.9 for d in decisions)
        assert (server.created, server.direct) == (1, 2)
        llm.close()
    finally:
        server.close()
