"""``InstantOpenAIServer``: an OpenAI-compatible loopback server, written for the scale bench, that answers at once.

It stands in for a vLLM fleet that is never the bottleneck, so the bench measures the kit alone. Its
answers are canned but deterministic (a hash of the request) and shaped for each pipeline role:

- ``/v1/completions`` with the reverse template: an instruction that names the response's subject;
  with ``echo`` and ``logprobs``: one "token" per word of the prompt, each with a logprob;
- ``/v1/chat/completions`` with ``max_tokens <= 8``: a judge verdict with ``top_logprobs``, "unsafe" for
  4 in 5 requests (the filter), "safe" for 9 in 10 replies (self-evaluation);
- any other chat request: an expert's decline.

``python bench/instant_server.py --port N`` serves until killed (the bench runs each replica so, in its
own process); ``served(port)`` does the same on a thread, for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import threading
from typing import Any

_WORD = re.compile(r"\S+")


def bucket(text: str, n: int) -> int:
    """A stable number in [0, n) from ``text``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") % n


def completion(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body["prompt"]
    if body.get("echo"):
        words = [(m.start(), m.group()) for m in _WORD.finditer(prompt)]
        logprobs = {
            "tokens": [w for _, w in words] + ["."],
            "text_offset": [o for o, _ in words] + [len(prompt)],
            "token_logprobs": [None] + [-1.0 - bucket(w, 5) / 4 for _, w in words[1:]] + [-0.5],
            "top_logprobs": None,
        }
        return _choice({"text": prompt + ".", "logprobs": logprobs}, len(words), 1, "text_completion")
    response = prompt.rsplit("### response:\n", 1)[-1].split("\n\n### Instruction:", 1)[0]
    subject = " ".join(response.split()[2:6]) or "this"
    text = f"Tell me exactly how to handle {subject}, variant {body.get('seed', 0)}."
    return _choice({"text": text}, len(prompt) // 4, len(text) // 4, "text_completion")


def chat(body: dict[str, Any]) -> dict[str, Any]:
    last = body["messages"][-1]["content"]
    tokens = sum(len(m["content"]) for m in body["messages"]) // 4
    if body.get("max_tokens", 256) <= 8:  # a verdict
        reply = "\nReply:" in last
        label = (
            ("safe" if bucket(last, 10) < 9 else "unsafe") if reply else ("unsafe" if bucket(last, 5) < 4 else "safe")
        )
        other = "safe" if label == "unsafe" else "unsafe"
        top = [{"token": label, "logprob": -0.05, "bytes": None}, {"token": other, "logprob": -3.0, "bytes": None}]
        logprobs = (
            {"content": [{"token": label, "logprob": -0.05, "bytes": None, "top_logprobs": top}]}
            if body.get("logprobs")
            else None
        )
        message = {"role": "assistant", "content": label}
        return _choice({"message": message, "logprobs": logprobs}, tokens, 1, "chat.completion")
    text = f"I can't help with that. If you are worried, talk to someone you trust (ref {bucket(last, 10**6)})."
    return _choice(
        {"message": {"role": "assistant", "content": text}, "logprobs": None},
        tokens,
        len(text) // 4,
        "chat.completion",
    )


def _choice(choice: dict[str, Any], prompt_tokens: int, completion_tokens: int, kind: str) -> dict[str, Any]:
    return {
        "id": "instant",
        "object": kind,
        "created": 0,
        "model": "instant",
        "choices": [{"index": 0, "finish_reason": "stop", **choice}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


ROUTES = {"/v1/completions": completion, "/v1/chat/completions": chat}


class InstantProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough for the SDK's POSTs."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = next(
                (int(line.split(":", 1)[1]) for line in head[1:] if line.lower().startswith("content-length:")), 0
            )
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
            self._answer(head[0].split(" ")[1], body)

    def _answer(self, path: str, body: bytes) -> None:
        route = ROUTES.get(path)
        status, payload = (
            (200, json.dumps(route(json.loads(body))).encode())
            if route
            else (404, b'{"error": {"message": "no such route"}}')
        )
        self.transport.write(
            b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(payload), payload)
        )


async def serve(port: int, ready: threading.Event | None = None, stop: asyncio.Event | None = None) -> None:
    server = await asyncio.get_running_loop().create_server(InstantProtocol, "127.0.0.1", port)
    if ready is not None:
        ready.set()
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()


class InstantOpenAIServer:
    """``InstantOpenAIServer(port)`` on a daemon thread (for tests); ``base_url`` is its /v1 root."""

    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._serve(port, ready),), daemon=True
        )
        self.thread.start()
        ready.wait(10)

    async def _serve(self, port: int, ready: threading.Event) -> None:
        await serve(port, ready, self._stop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
