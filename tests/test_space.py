"""The comparison Space, served by `safer-instruct space` in a subprocess on loopback.

Base: the default model; aligned: a LoRA adapter over it with random non-zero weights (so the two
columns really differ); judge: the default model. gradio_client and a real browser drive it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECRETS = {"HF_TOKEN": "hf_TESTSECRETdoNotShow123", "OPENAI_API_KEY": "sk-TESTSECRETdoNotShow456"}
REQUESTS_PER_MINUTE = 2


@pytest.fixture(scope="module")
def adapter_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA adapter over the default model with random, non-zero B: a different 'aligned' model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path_factory.mktemp("aligned") / "adapter"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(target)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(target)
    return target


@dataclass
class Served:
    url: str
    votes: Path
    log: Path

    def client(self, visitor: str) -> Client:
        """A client the throttle counts as its own visitor (as behind the Hub's proxy, which the app trusts here)."""
        return Client(self.url, verbose=False, headers={"X-Forwarded-For": visitor})

    def votes_written(self) -> list[dict]:
        if not self.votes.exists():
            return []
        return [json.loads(line) for line in self.votes.read_text(encoding="utf-8").splitlines()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`safer-instruct space` with secrets in its environment; its output goes to a log file."""
    work = tmp_path_factory.mktemp("space")
    port, log = _free_port(), work / "space.log"
    command = [
        str(Path(sys.executable).with_name("safer-instruct")),
        "space",
        "--port",
        str(port),
        "--aligned-adapter",
        str(adapter_dir),
        "--judge",
        "default",
        "--votes",
        str(work / "votes.jsonl"),
    ]
    env = {
        **os.environ,
        **SECRETS,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TQDM_DISABLE": "1",
        "DEFAULT_NEW_TOKENS": "24",
        "MAX_NEW_TOKENS": "64",
        "REQUESTS_PER_MINUTE": str(REQUESTS_PER_MINUTE),
        "TRUSTED_PROXY_HOPS": "1",
    }  # the test client plays the proxy: its X-Forwarded-For names each visitor
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    while True:
        if process.poll() is not None:
            pytest.fail(f"safer-instruct space exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"safer-instruct space did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield Served(url=url, votes=work / "votes.jsonl", log=log)
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def answer(chat: list[dict]) -> str:
    """The last assistant message's text, as gradio_client returns a Chatbot value."""
    return "".join(part["text"] for part in chat[-1]["content"] if part["type"] == "text")


def test_both_answers_stream_and_votes_are_written(served: Served) -> None:
    client = served.client("198.51.100.1")
    job = client.submit("How do I insult my coworker?", 0.0, 24, api_name="/generate")
    updates = list(job)
    _, base_chat, aligned_chat, base_badge, aligned_badge = job.result()
    base, aligned = answer(base_chat), answer(aligned_chat)
    assert base and aligned and base != aligned, "two different models answer"
    assert len(updates) >= 5, "answers arrive piece by piece"
    partial = [u for u in updates[:-1] if isinstance(u[1], list) and len(answer(u[1])) < len(base)]
    assert partial, "the base answer was shown before it was complete"
    both_growing = [
        u
        for u in updates
        if isinstance(u[1], list)
        and isinstance(u[2], list)
        and 1 < len(answer(u[1])) < len(base)
        and 1 < len(answer(u[2])) < len(aligned)
    ]
    assert both_growing, "both columns stream at the same time"
    for badge in (base_badge, aligned_badge):
        assert ("Refused" in badge or "Answered" in badge) and "judge: " in badge

    assert client.predict(api_name="/vote_aligned") == "Recorded: **Aligned is better**"
    assert client.predict(api_name="/vote_base") == "Recorded: **Aligned is better**", "one vote per exchange"
    [vote] = served.votes_written()
    assert vote["choice"] == "aligned" and vote["prompt"] == "How do I insult my coworker?"
    assert vote["answers"] == {"base": base, "aligned": aligned}
    assert vote["settings"]["max_new_tokens"] == 24 and vote["settings"]["temperature"] == 0.0
    assert vote["models"]["base"] == "default" and vote["models"]["aligned"].endswith("adapter")
    assert vote["models"]["judge"] == "default" and set(vote["judge_harmful"]) == {"base", "aligned"}
    assert "198.51.100.1" not in json.dumps(vote), "votes are anonymous"

    second = client.submit("Say it more politely.", 0.0, 16, api_name="/generate").result()
    assert len(second[1]) == 4 and len(second[2]) == 4, "each column keeps its own history"
    assert client.predict(api_name="/vote_tie") == "Recorded: **Tie**"
    follow_up = served.votes_written()[1]
    assert follow_up["turn"] == 2 and follow_up["context"]["base"][1]["content"] == base


def test_voting_before_any_answer_writes_nothing(served: Served) -> None:
    before = len(served.votes_written())
    assert served.client("198.51.100.2").predict(api_name="/vote_base") == ""
    assert len(served.votes_written()) == before


def test_too_long_or_empty_prompts_are_refused_with_a_message(served: Served) -> None:
    client = served.client("198.51.100.3")
    with pytest.raises(AppError, match="this demo takes at most 2000"):
        client.predict("x" * 2001, 0.0, 8, api_name="/generate")
    with pytest.raises(AppError, match="Type a prompt first"):
        client.predict("   ", 0.0, 8, api_name="/generate")
    with pytest.raises(AppError, match="greater than maximum value 64"):  # MAX_NEW_TOKENS bounds the slider
        client.predict("hello", 0.0, 10_000, api_name="/generate")


def test_each_visitor_is_throttled(served: Served) -> None:
    client = served.client("198.51.100.4")
    for _ in range(REQUESTS_PER_MINUTE):
        client.predict("Hi", 0.0, 1, api_name="/generate")
    with pytest.raises(AppError, match=f"answers {REQUESTS_PER_MINUTE} prompts per minute per visitor"):
        client.predict("Hi", 0.0, 1, api_name="/generate")
    served.client("198.51.100.5").predict("Hi", 0.0, 1, api_name="/generate")  # another visitor is not held up


def test_no_secret_in_the_page_or_the_logs(served: Served) -> None:
    pages = [httpx.get(served.url + path, timeout=10).text for path in ("", "config", "gradio_api/info")]
    assert "Which answer is better?" in pages[1]
    for secret in SECRETS.values():
        assert not any(secret in page for page in pages)
        assert secret not in served.log.read_text(errors="replace")


@pytest.mark.browser
def test_a_browser_gets_both_answers(served: Served, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium not found; install it with: apt-get install -y chromium")
    from playwright.sync_api import expect, sync_playwright

    shot = tmp_path / "space.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served.url)
        page.locator("#prompt textarea").fill("What is the capital of France?")
        page.locator("#send").click()
        for column in ("base", "aligned"):  # the judge's badge comes last, once both answers are complete
            expect(page.locator(f"#{column}-badge")).to_contain_text("judge:", timeout=120_000)
            expect(page.locator(f"#{column}-chat")).to_contain_text("Paris")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
