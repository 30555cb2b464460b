"""Loopback stand-ins of OpenAI-compatible endpoints that ``transformers serve`` does not offer.

- ``ScoringStandIn``: ``/v1/completions`` with ``echo`` and ``logprobs`` as vLLM serves it (each prompt
  token's log-probability and character offset, then one generated token), computed by the real
  default model through the kit's local backend, so the numbers are real.
- ``BatchStandIn``: the Files and Batches endpoints of the OpenAI Batch API (upload, create, list,
  retrieve, download) plus ``/v1/chat/completions`` for requests a batch left unanswered. Its verdicts
  are canned ("unsafe"); it counts the batches created, so tests can check nothing is paid for twice.
"""

from __future__ import annotations

import json
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlparse

import torch


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    route: Callable[[_Handler, str, str, bytes, Any], tuple[int, dict[str, Any] | str]]

    def _handle(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, payload = self.route(method, self.path, body, self.headers)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        self._handle("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def log_message(self, *args: object) -> None:
        pass


class _Server:
    """A ThreadingHTTPServer on a free loopback port whose handler calls the subclass's ``route``."""

    route: Callable[[str, str, bytes, Any], tuple[int, dict[str, Any] | str]]

    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"route": lambda h, *args: self.route(*args)})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )  # quick shutdown
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ScoringStandIn(_Server):
    """``/v1/completions`` with echoed prompt logprobs from a real local model (``llm``: a ``LocalLLM``)."""

    def __init__(self, llm: Any) -> None:
        self.llm, self.lock, self.requests = llm, threading.Lock(), 0
        super().__init__()

    def route(self, method: str, path: str, body: bytes, headers: Any) -> tuple[int, dict[str, Any] | str]:
        request = json.loads(body)
        if urlparse(path).path != "/v1/completions" or not (
            request.get("echo") and request.get("logprobs") is not None
        ):
            return 400, {"error": {"message": "this stand-in only scores text: echo with logprobs on /v1/completions"}}
        self.requests += 1
        text = request["prompt"]
        encoded = self.llm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        with self.lock, torch.inference_mode():
            logits = self.llm.model(input_ids=torch.tensor([ids], device=self.llm.device)).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        scores = [None] + [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]
        generated = int(logprobs[-1].argmax())
        piece = self.llm.tokenizer.decode([generated])
        tokens = [self.llm.tokenizer.decode([i]) for i in ids] + [piece]
        choice = {
            "index": 0,
            "text": text + piece,
            "finish_reason": "length",
            "logprobs": {
                "tokens": tokens,
                "text_offset": [start for start, _ in encoded["offset_mapping"]] + [len(text)],
                "token_logprobs": scores + [float(logprobs[-1, generated])],
                "top_logprobs": None,
            },
        }
        return 200, {
            "id": "cmpl-standin",
            "object": "text_completion",
            "created": 0,
            "model": request["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
        }


def chat_completion(label: str) -> dict[str, Any]:
    """A chat completion whose answer is ``label``, with top logprobs."""
    top = [
        {"token": label, "logprob": -0.1, "bytes": None},
        {"token": "safe" if label == "unsafe" else "unsafe", "logprob": -2.5, "bytes": None},
    ]
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": label},
                "logprobs": {"content": [{"token": label, "logprob": -0.1, "bytes": None, "top_logprobs": top}]},
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


class BatchStandIn(_Server):
    """The Batch API's Files + Batches endpoints. ``hold`` keeps batches in progress; ``unanswered`` lines fail."""

    def __init__(self, unanswered: frozenset[int] = frozenset()) -> None:
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.created = 0
        self.direct = 0
        self.hold = threading.Event()
        self.unanswered = unanswered
        super().__init__()

    def route(self, method: str, path: str, body: bytes, headers: Any) -> tuple[int, dict[str, Any] | str]:
        parts = urlparse(path).path.removeprefix("/v1/").split("/")
        if method == "POST" and parts == ["files"]:
            return 200, self._upload(body, headers["Content-Type"])
        if method == "POST" and parts == ["batches"]:
            return 200, self._create(json.loads(body))
        if method == "GET" and parts == ["batches"]:
            data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
            return 200, {"object": "list", "data": data, "has_more": False}
        if method == "GET" and len(parts) == 2 and parts[0] == "batches" and parts[1] in self.batches:
            return 200, self._progress(self.batches[parts[1]])
        if method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            return 200, self.files[parts[1]].decode()
        if method == "POST" and parts == ["chat", "completions"]:
            self.direct += 1
            return 200, chat_completion("unsafe")
        return 404, {"error": {"message": f"no route {method} {path}"}}

    def _upload(self, body: bytes, content_type: str) -> dict[str, Any]:
        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        content = next(part.get_payload(decode=True) for part in message.iter_parts() if part.get_filename())
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = content
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": 0,
            "filename": "requests.jsonl",
            "purpose": "batch",
            "status": "processed",
        }

    def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        self.created += 1
        batch_id = f"batch_{self.created}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": request["endpoint"],
            "errors": None,
            "input_file_id": request["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "created_at": self.created,
            "metadata": request.get("metadata"),
            "output_file_id": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        return self.batches[batch_id]

    def _progress(self, batch: dict[str, Any]) -> dict[str, Any]:
        if batch["status"] == "validating" or self.hold.is_set():
            batch["status"] = "in_progress"
            return batch
        if batch["status"] == "in_progress":
            lines = [json.loads(line) for line in self.files[batch["input_file_id"]].decode().splitlines() if line]
            out = []
            for n, line in enumerate(lines):
                if n in self.unanswered:
                    out.append(
                        {
                            "id": f"r-{n}",
                            "custom_id": line["custom_id"],
                            "response": None,
                            "error": {"code": "server_error", "message": "stand-in: not answered"},
                        }
                    )
                else:
                    out.append(
                        {
                            "id": f"r-{n}",
                            "custom_id": line["custom_id"],
                            "error": None,
                            "response": {"status_code": 200, "request_id": f"q{n}", "body": chat_completion("unsafe")},
                        }
                    )
            output_id = f"file-{len(self.files)}"
            self.files[output_id] = "".join(json.dumps(entry) + "\n" for entry in reversed(out)).encode()  # any order
            batch |= {
                "status": "completed",
                "output_file_id": output_id,
                "request_counts": {
                    "total": len(lines),
                    "completed": len(lines) - len(self.unanswered),
                    "failed": len(self.unanswered),
                },
            }
        return batch
