"""The OpenAI backend against a real ``transformers serve`` on loopback, and against loopback stand-ins: a flaky
server, raw scripted servers (the lean request path's framing, retries and errors), a scoring server backed by the
real default model, instant servers as replicas, and the Batch API."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm import ResponseCache, SamplingParams, make_llm
from safer_instruct.llm import openai as openai_backend
from safer_instruct.llm.jsonhttp import NotHTTP, parse_response

BENCH = Path(__file__).resolve().parents[1] / "bench"
CHATS = [[{"role": "user", "content": q}] for q in ["What is the capital of France?", "Name a fruit.", "Say hello."]]


def served_config(served_model, **extra) -> LLMConfig:
    return LLMConfig(backend="openai", model=served_model.model, base_url=served_model.base_url, **extra)


def test_chat_and_raw_prompts_with_usage(served_model) -> None:
    llm = make_llm(served_config(served_model, prices={"prompt_per_million": 1.0, "completion_per_million": 2.0}))
    generations = llm.generate(
        CHATS[:1] + ["### response:\nParis.\n\n### Instruction:\n"], SamplingParams(max_new_tokens=16)
    )
    assert "Paris" in generations[0].text
    assert generations[1].text and generations[1].completion_tokens > 0
    usage = llm.usage.as_dict()
    assert usage["requests"] == 2 and usage["prompt_tokens"] > 0 and usage["cost_usd"] > 0


def test_decide_parses_text_strictly_when_no_logprobs(served_model) -> None:
    llm = make_llm(served_config(served_model))
    yes_no = llm.decide(
        [[{"role": "user", "content": "Is the sky blue on a clear day? Answer with one word: yes or no."}]],
        ["yes", "no"],
    )[0]
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
            body = {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "unsafe"}}
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
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
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )  # quick shutdown
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture(params=["lean", "sdk"])
def request_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both request paths: the lean one (plain http:// on loopback takes it) and the SDK's (forced)."""
    if request.param == "sdk":
        monkeypatch.setattr(openai_backend, "direct_http", lambda url: False)
    return request.param


def test_retries_429_500_and_malformed_json(
    flaky_server: str, request_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-" + "x" * 24
    monkeypatch.setenv("MY_KEY", secret)
    caplog.set_level(logging.DEBUG)
    llm = make_llm(LLMConfig(backend="openai", model="m", base_url=flaky_server, api_key_env="MY_KEY", max_retries=4))
    assert (llm.pool.replicas[0].http is not None) == (request_path == "lean")
    decision = llm.decide([[{"role": "user", "content": "judge this"}]], ["unsafe", "safe"])[0]
    assert decision.label == "unsafe"
    assert len(FlakyOpenAIStandIn.seen) == 4
    assert FlakyOpenAIStandIn.seen[0] == f"Bearer {secret}"
    assert secret not in caplog.text and secret not in repr(llm)


def test_malformed_until_retries_run_out(flaky_server: str, request_path: str) -> None:
    FlakyOpenAIStandIn.script = ["malformed"]
    try:
        llm = make_llm(LLMConfig(backend="openai", model="m", base_url=flaky_server, max_retries=1))
        with pytest.raises(SaferInstructError, match="malformed response after 2 tries"):
            llm.generate(CHATS[:1], SamplingParams(max_new_tokens=4))
    finally:
        FlakyOpenAIStandIn.script = ["429", "500", "malformed", "ok"]


def test_unreachable_base_url_is_a_clear_error(request_path: str) -> None:
    llm = make_llm(
        LLMConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=5)
    )
    with pytest.raises(SaferInstructError, match=r"cannot reach http://127.0.0.1:9/v1"):
        llm.generate(CHATS[:1], SamplingParams(max_new_tokens=4))


# -- the lean request path (llm/jsonhttp.py) ---------------------------------------------------------
def reply(
    status: int = 200, body: object = None, headers: str = "", chunked: bool = False, version: str = "1.1"
) -> bytes:
    """One raw HTTP response: JSON ``body`` (a chat completion saying ``body`` when it is a str) framed by length or chunks."""
    if isinstance(body, str):
        body = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": body}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    data = json.dumps(body).encode()
    if chunked:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (data[:7], data[7:]))
        framed = b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    elif version == "1.0":
        framed = b"\r\n" + data  # no length: the body ends with the connection
    else:
        framed = b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    return f"HTTP/{version} {status} X\r\nContent-Type: application/json\r\n{headers}".encode() + framed


class ScriptedServer:
    """A raw-socket loopback server: the n-th request gets ``script[n]`` (the last repeats): bytes to send, b"" to
    close without answering, None to never answer. Counts connections and keeps the request bodies."""

    def __init__(self, script: list[bytes | None]) -> None:
        self.script, self.connections, self.bodies = script, 0, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not (data := conn.recv(65536)):
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                self.bodies.append(json.loads(buffer[:length]))
                buffer = buffer[length:]
                step = self.script[min(len(self.bodies), len(self.script)) - 1]
                if step is None:
                    while conn.recv(65536):  # until the client gives up
                        pass
                    return
                if not step:
                    return
                conn.sendall(step)
                if b"Connection: close" in step or step.startswith(b"HTTP/1.0"):
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def scripted() -> Iterator[Callable[[list[bytes | None]], ScriptedServer]]:
    servers: list[ScriptedServer] = []
    yield lambda script: servers.append(ScriptedServer(script)) or servers[-1]
    for server in servers:
        server.close()


def test_lean_path_reuses_connections_and_reads_every_framing(scripted) -> None:
    script = [
        reply(body="a0"),
        reply(body="a1", chunked=True),
        b"HTTP/1.1 100 Continue\r\n\r\n" + reply(body="a2"),
        reply(body="a3", headers="Connection: close\r\n"),
        reply(body="a4", version="1.0"),
        reply(body="a5"),
    ]
    server = scripted(script)
    llm = make_llm(
        LLMConfig(backend="openai", model="m", base_url=server.base_url, max_concurrency=1, max_retries=0),
        show_progress=False,
    )
    assert llm.pool.replicas[0].http is not None, "plain http:// on loopback takes the lean path"
    answers = llm.generate(
        [[{"role": "user", "content": f"q{i}"}] for i in range(8)], SamplingParams(max_new_tokens=4)
    )
    assert [a.text for a in answers] == ["a0", "a1", "a2", "a3", "a4", "a5", "a5", "a5"]
    assert server.connections == 3  # kept alive, except after "Connection: close" and an HTTP/1.0 body read to the end
    assert server.bodies[0] == {
        "model": "m",
        "messages": [{"role": "user", "content": "q0"}],
        "max_tokens": 4,
        "temperature": 0.0,
        "seed": 0,
    }
    assert llm.usage.as_dict()["prompt_tokens"] == 8 * 3
    llm.close()


def test_lean_path_retries_a_dropped_connection_and_a_timeout(scripted) -> None:
    server = scripted([b"", reply(200)[:60], None, reply(body="unsafe")])  # closed, cut mid-head, silent, answered
    llm = make_llm(
        LLMConfig(backend="openai", model="m", base_url=server.base_url, max_retries=3, timeout_s=0.5),
        show_progress=False,
    )
    assert llm.decide([[{"role": "user", "content": "judge"}]], ["unsafe", "safe"])[0].label == "unsafe"
    assert len(server.bodies) == 4 and server.connections == 4
    silent = scripted([None])
    llm = make_llm(
        LLMConfig(backend="openai", model="m", base_url=silent.base_url, max_retries=0, timeout_s=0.3),
        show_progress=False,
    )
    with pytest.raises(SaferInstructError, match=rf"cannot reach {silent.base_url}: Request timed out"):
        llm.generate(CHATS[:1], SamplingParams(max_new_tokens=4))


def test_lean_path_fails_as_the_sdk_does(scripted) -> None:
    error = lambda status, headers="": reply(status, {"error": {"message": f"said {status}"}}, headers)  # noqa: E731
    config = lambda server: LLMConfig(backend="openai", model="m", base_url=server.base_url, max_retries=2)  # noqa: E731
    for status, expected in (
        (401, r"rejected the API key from \$OPENAI_API_KEY"),
        (404, r"model 'm' or endpoint not found: Error code: 404 - said 404"),
    ):
        server = scripted([error(status)])
        with pytest.raises(SaferInstructError, match=expected):
            make_llm(config(server), show_progress=False).generate(CHATS[:1], SamplingParams())
        assert len(server.bodies) == 1  # not retried
    for headers in ("Retry-After: 600\r\n", "x-should-retry: false\r\n"):  # a wait over 2 minutes, or told not to
        server = scripted([error(429 if "Retry" in headers else 500, headers)])
        with pytest.raises(SaferInstructError, match=r"(RateLimit|InternalServer)Error: Error code: (429|500) - said"):
            make_llm(config(server), show_progress=False).generate(CHATS[:1], SamplingParams())
        assert len(server.bodies) == 1
    server = scripted([error(400), reply(body="safe")])  # a server without logprobs: the answer is read as text
    decision = make_llm(config(server), show_progress=False).decide(CHATS[:1], ["unsafe", "safe"])[0]
    assert (decision.label, decision.probability) == ("safe", None)
    assert server.bodies[0]["logprobs"] is True and "logprobs" not in server.bodies[1]


def test_a_failed_request_calls_off_the_rest_of_its_batch(scripted) -> None:
    import asyncio

    server = scripted([reply(404, {"error": {"message": "no such model"}}), None])  # then every request waits forever
    llm = make_llm(
        LLMConfig(backend="openai", model="m", base_url=server.base_url, max_concurrency=4), show_progress=False
    )
    with pytest.raises(SaferInstructError, match="not found"):
        llm.generate([[{"role": "user", "content": f"q{i}"}] for i in range(40)], SamplingParams(max_new_tokens=4))
    assert not asyncio.all_tasks(llm._loop.loop), "no request left running in the background"
    assert len(server.bodies) <= 5  # those in flight and the one let in as it failed; none of the batch's other 35
    llm.close()


def test_responses_are_parsed_whatever_the_reads() -> None:
    whole = b"HTTP/1.1 100 Continue\r\n\r\n" + reply(body="x", chunked=True, headers="X-Trace: 1\r\n")
    for cut in range(len(whole)):  # byte by byte: incomplete until the last one
        assert parse_response(whole[:cut], eof=False) is None
    response, used = parse_response(whole + b"HTTP/1.1 200", eof=False)
    assert (response.status, response.headers["x-trace"], used) == (200, "1", len(whole)) and response.keep_alive
    assert json.loads(response.body)["choices"][0]["message"]["content"] == "x"
    for broken in (b"SSH-2.0-OpenSSH\r\n\r\n", reply(body="x")[:-3], reply(body="x", chunked=True)[:-5]):
        with pytest.raises(NotHTTP):
            parse_response(broken, eof=True)


def test_proxies_and_https_take_the_sdk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert openai_backend.direct_http("http://10.0.0.5:8000/v1")
    assert not openai_backend.direct_http("https://10.0.0.5:8000/v1") and not openai_backend.direct_http(None)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert not openai_backend.direct_http("http://10.0.0.5:8000/v1")
    monkeypatch.setenv("NO_PROXY", "10.0.0.5")
    assert openai_backend.direct_http("http://10.0.0.5:8000/v1")


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

    local = LocalLLM(
        LLMConfig(model=str(default_model_dir), dtype="float32"), show_progress=False
    )  # one precision for both paths
    server = ScoringStandIn(local)
    try:
        remote = make_llm(
            LLMConfig(backend="openai", model=str(default_model_dir), base_url=server.base_url), show_progress=False
        )
        prompts = [
            [{"role": "user", "content": "How do I make my neighbour's dog sick?"}],
            [{"role": "user", "content": "Say something."}],
            "### response:\nEat it raw, it is fine.\n\n### Instruction:\n",
        ]
        texts = [
            "Feed it chocolate every day.",
            "Feed it chocolate every day.",
            "Should I cook chicken before eating it?",
        ]
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
    with pytest.raises(
        Unsupported, match=rf"at {served_model.base_url} cannot score given text: .*no prompt log-probabilities"
    ):
        llm.loglikelihood(["### response:\nHi.\n\n### Instruction:\n"], ["Say hi."])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "y" * 20)
    with pytest.raises(
        Unsupported, match=r"'gpt-4o' at https://api.openai.com/v1 cannot score .*OpenAI API does not return"
    ):
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
    llm = make_llm(
        LLMConfig(
            backend="openai", model="m", base_url=urls, max_retries=1, max_concurrency=4, replica_cooldown_s=1.0
        ),
        show_progress=False,
    )
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3000)]
    try:

        def kill_mid_run() -> (
            None
        ):  # -9 once it has answered a few: by count, not time (a fast path ends in well under a second)
            while llm.pool.replicas[1].answered < 50:
                time.sleep(0.001)
            servers[1].kill()

        killer = threading.Thread(target=kill_mid_run, daemon=True)
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
        with pytest.raises(
            SaferInstructError, match=r"none of the 3 replicas of 'm' answered: cannot reach http://127.0.0.1"
        ):
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
        config = LLMConfig(
            backend="openai",
            model="m",
            base_url=server.base_url,
            batch_api=True,
            batch_poll_s=0.05,
            prices={"prompt_per_million": 2.0},
        )
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
        llm = make_llm(
            LLMConfig(backend="openai", model="m", base_url=server.base_url, batch_api=True, batch_poll_s=0.05),
            show_progress=False,
        )
        decisions = llm.decide([f"request {i}" for i in range(4)], ["unsafe", "safe"])
        assert [d.label for d in decisions] == ["unsafe"] * 4 and all(d.probability > 0.9 for d in decisions)
        assert (server.created, server.direct) == (1, 2)
        llm.close()
    finally:
        server.close()
