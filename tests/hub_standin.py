"""A loopback HTTP stand-in of the Hugging Face Hub endpoints that ``HfApi`` calls when we publish.

This is NOT the Hub: it serves just enough of the API for the push and access-request paths
(repo create, preupload/commit, settings, access requests, Space variables) on 127.0.0.1, keeps
the repos in memory and records every call in order, so tests can assert what was sent and when.
Every file is declared a "regular" (inline, base64) upload, so no LFS or Xet storage is involved.
Requests must carry the expected bearer token; the token itself is never recorded. Each repo keeps
its visibility and gating at the moment every file landed (``landed``), and ``hold(name)`` makes the
stand-in apply the next such call but never answer it until ``release()``: a test can kill the
client at that exact point.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

REPO = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"^/api/{REPO}(/revision/[^/]+)?$"), "repo_info"),
    ("POST", re.compile(rf"^/api/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("PUT", re.compile(rf"^/api/{REPO}/settings$"), "settings"),
    ("GET", re.compile(rf"^/api/{REPO}/user-access-request/(?P<status>pending|accepted|rejected)$"), "list_requests"),
    ("POST", re.compile(rf"^/api/{REPO}/user-access-request/handle$"), "handle_request"),
    ("POST", re.compile(rf"^/api/{REPO}/user-access-request/grant$"), "grant"),
    ("POST", re.compile(r"^/api/spaces/(?P<repo>[^/]+/[^/]+)/variables$"), "space_variable"),
]


@dataclass
class Call:
    """One request the stand-in answered: what it was, on which repo, with which (token-free) payload."""

    name: str
    method: str
    path: str
    repo: str | None
    payload: Any
    authorized: bool


@dataclass
class StandInRepo:
    repo_type: str
    private: bool
    gated: str | bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    landed: list[tuple[str, bool, str | bool]] = field(
        default_factory=list
    )  # (path, private, gated) as each file landed


class HubStandIn:
    """Loopback stand-in of the Hub API; ``url`` is its endpoint, ``calls`` the ordered record."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.calls: list[Call] = []
        self.repos: dict[str, StandInRepo] = {}
        self._lock = threading.Lock()
        self._held: dict[str, threading.Event] = {}
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )  # quick shutdown

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def hold(self, name: str) -> threading.Event:
        """Apply the next ``name`` call but keep its answer back until ``release()``; the event is set once it arrived."""
        arrived = threading.Event()
        self._held[name] = arrived
        return arrived

    def release(self) -> None:
        self._release.set()

    def names(self) -> list[str]:
        """The names of the calls answered so far, in order."""
        return [call.name for call in self.calls]

    def add_repo(self, repo_id: str, repo_type: str, private: bool, gated: str | bool = False) -> StandInRepo:
        """A repo that exists before the test pushes (e.g. made public by hand)."""
        self.repos[repo_id] = StandInRepo(repo_type, private=private, gated=gated)
        return self.repos[repo_id]

    def add_request(self, repo_id: str, user: str, fields: dict[str, Any] | None, status: str = "pending") -> None:
        """Queue an access request, as if ``user`` had filled in the gating form."""
        repo = self.repos.setdefault(repo_id, StandInRepo("dataset", private=False, gated="manual"))
        repo.requests.append(
            {
                "requestId": f"req-{len(repo.requests) + 1}",
                "status": status,
                "fields": fields,
                "timestamp": datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc).isoformat().replace("+00:00", "Z"),
                "user": {"user": user, "fullname": user.title(), "email": f"{user}@example.org"},
            }
        )

    # -- endpoint behaviour -----------------------------------------------------------------------
    def answer(self, name: str, params: dict[str, str], body: Any) -> tuple[int, Any]:
        repo_id = params.get("repo")
        if name == "create":
            repo_id = f"{body['organization']}/{body['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this repo"}
            self.repos[repo_id] = StandInRepo(body.get("type", "model"), private=body.get("visibility") == "private")
            prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[body.get("type", "model")]
            return 200, {"url": f"{self.url}/{prefix}{repo_id}"}
        if name == "validate_yaml":
            return _validate_front_matter(body["content"])
        repo = self.repos.get(repo_id or "")
        if repo is None:
            return 404, {"error": "Repository not found"}
        if name == "repo_info":
            return 200, {
                "id": repo_id,
                "private": repo.private,
                "gated": repo.gated,
                "sha": "0" * 40,
                "siblings": [{"rfilename": path} for path in repo.files],
            }
        if name == "preupload":
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]
            return 200, {"files": files, "commitOid": None}
        if name == "commit":
            for line in body:
                if line["key"] == "file":
                    repo.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    repo.landed.append((line["value"]["path"], repo.private, repo.gated))
            oid = f"{len(self.calls):040x}"
            return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid}
        if name == "settings":
            if "gated" in body:
                repo.gated = body["gated"]
            if "visibility" in body:
                repo.private = body["visibility"] == "private"
            return 200, {}
        if name == "list_requests":
            return 200, [r for r in repo.requests if r["status"] == params["status"]]
        if name == "handle_request":
            for request in repo.requests:
                if request["user"]["user"] == body.get("user") or request["requestId"] == body.get("requestId"):
                    request["status"] = body["status"]
                    request["rejectionReason"] = body.get("rejectionReason")
                    return 200, {}
            return 404, {"error": "Access request not found"}
        if name == "grant":
            self.add_request(repo_id, body["user"], None, status="accepted")
            return 200, {}
        if name == "space_variable":
            repo.variables[body["key"]] = body["value"]
            return 200, {key: {"value": value} for key, value in repo.variables.items()}
        raise AssertionError(name)

    def check_token(self, header: str | None) -> bool:
        return header == f"Bearer {self._token}"


def _handler_for(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _dispatch(self) -> None:
            path = self.path.split("?", 1)[0]
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            for method, pattern, name in ROUTES:
                match = pattern.match(path)
                if method == self.command and match:
                    break
            else:
                with hub._lock:
                    hub.calls.append(Call("unknown", self.command, path, None, None, False))
                return self._reply(404, {"error": f"the Hub stand-in does not serve {self.command} {path}"})
            body = _decode(raw, self.headers.get("content-type", ""))
            authorized = hub.check_token(self.headers.get("authorization"))
            with hub._lock:
                hub.calls.append(
                    Call(name, self.command, path, match.groupdict().get("repo"), _summary(name, body), authorized)
                )
                status, reply = (
                    hub.answer(name, match.groupdict(), body)
                    if authorized
                    else (401, {"error": "Invalid credentials"})
                )
                held = hub._held.pop(name, None)
            if held is not None:
                held.set()
                hub._release.wait(timeout=120)
            self._reply(status, reply)

        def _reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            if status >= 400:
                self.send_header("x-error-message", str(payload.get("error", "")))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    return Handler


def _validate_front_matter(content: str) -> tuple[int, Any]:
    """The README's YAML header must parse to a mapping (the real Hub checks much more)."""
    match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
    try:
        metadata = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError as err:
        return 400, {"error": "Invalid metadata", "errors": [{"message": str(err)}]}
    if not isinstance(metadata, dict):
        return 400, {"error": "Invalid metadata", "errors": [{"message": "no YAML mapping between --- lines"}]}
    return 200, {}


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "ndjson" in content_type:
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return json.loads(raw)


def _summary(name: str, body: Any) -> Any:
    """What a test needs to see of a payload (file contents are kept on the repo, not in the record)."""
    if name == "commit":
        return {"files": sorted(line["value"]["path"] for line in body if line["key"] in ("file", "lfsFile"))}
    if name == "validate_yaml":
        return {"repoType": body["repoType"]}
    if name == "preupload":
        return {"files": sorted(f["path"] for f in body["files"])}
    return body
