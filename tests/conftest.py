"""Shared fixtures: the real default model and a real ``transformers serve`` on loopback (their users are ``slow``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from safer_instruct.models import prepare_default_model

# A server and its client share the machine's cores: each gets its half, so neither waits on the other's threads.
SERVER_THREADS = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}


# A test that uses one of these (directly or through its fixtures) loads the real default model: it is ``slow``.
REAL_MODEL_FIXTURES = {"default_model_dir", "served_model"}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real default model ``slow``, so ``pytest -m "not slow"`` is the quick tier."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a standard HF folder (converted once, cached)."""
    return prepare_default_model()


@dataclass
class ServedModel:
    """A running ``transformers serve``; ``requests(path)`` counts the requests its access log shows."""

    base_url: str
    model: str
    log_path: Path

    def requests(self, path: str = "/v1/chat/completions") -> int:
        return sum(f'"POST {path} ' in line for line in self.log_path.read_text(errors="replace").splitlines())


def start_server(model_dir: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("transformers")),
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "info",
        "--device",
        "cpu",
        *extra,
    ]
    log = log_path.open("w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1", **SERVER_THREADS}
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return process, f"{base}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"transformers serve did not come up:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def served_model(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real OpenAI-compatible server for the default model, on loopback, for the whole session."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    process, base_url = start_server(default_model_dir, log_path)
    yield ServedModel(base_url=base_url, model=str(default_model_dir), log_path=log_path)
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
