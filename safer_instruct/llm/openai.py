"""OpenAI-compatible backend (OpenAI, vLLM, SGLang, TGI, ``transformers serve``).

One event loop on a background thread keeps each replica's connections for the backend's life. A
self-hosted server reached directly over ``http://`` gets plain-JSON POSTs on pooled keep-alive
connections (``jsonhttp.JSONPool``, a fraction of the SDK's CPU per request); OpenAI's own API, HTTPS
or proxied URLs and the Batch API go through the SDK's ``AsyncOpenAI``. Both paths retry
408/409/429/5xx, timeouts and lost connections with the SDK's exponential backoff and jitter, and
raise the SDK's exceptions; a malformed response body is retried here the same way. Requests in
flight are bounded per replica; each goes to the replica with the fewest outstanding. A replica that
still fails (unreachable, 5xx, 429) rests for ``replica_cooldown_s`` while the others carry on, then
is tried again; a request fails only when every replica has failed it. The key is read from the
environment and never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Sequence, TypeVar
from urllib.parse import urlparse

import openai
from tqdm.auto import tqdm

from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm.base import (
    LLM,
    Decision,
    Generation,
    Loglikelihood,
    Prompt,
    SamplingParams,
    Unsupported,
    check_labels,
    parse_label,
)
from safer_instruct.llm.batch import BatchLedger, MemoryLedger, collect_batch, request_file, submit_batch
from safer_instruct.llm.jsonhttp import JSONPool

log = logging.getLogger(__name__)
T = TypeVar("T")
OPENAI_HOST = "api.openai.com"
MALFORMED = (
    json.JSONDecodeError,
    UnicodeDecodeError,
    openai.APIResponseValidationError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
)
REPLICA_FAILURES = (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)
BATCH_DISCOUNT = 0.5  # the Batch API's price relative to direct requests


def is_openai_api(base_url: str | None) -> bool:
    """Whether a base URL is OpenAI's own endpoint (None: the SDK's default, which is)."""
    return base_url is None or urlparse(base_url).hostname == OPENAI_HOST


def direct_http(base_url: str | None) -> bool:
    """Whether requests to ``base_url`` take the lean path: plain ``http://``, not through a proxy from the environment."""
    if base_url is None or urlparse(base_url).scheme != "http":
        return False
    proxies = urllib.request.getproxies_environment()
    proxied = "http" in proxies or "all" in proxies
    return not proxied or bool(urllib.request.proxy_bypass_environment(urlparse(base_url).hostname or "", proxies))


def resolve_api_key(config: LLMConfig) -> str:
    """The key from ``config.api_key_env``; required for OpenAI's own endpoint, optional elsewhere."""
    key = os.environ.get(config.api_key_env, "")
    if not key and any(is_openai_api(url) for url in config.base_urls):
        raise SaferInstructError(
            f"the OpenAI endpoint needs an API key: set the environment variable {config.api_key_env}"
        )
    return key or "EMPTY"


class LoopThread:
    """An event loop on a daemon thread; ``run`` executes a coroutine there and waits for its result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass(eq=False)
class Replica:
    """One server of a model; ``down_until`` (monotonic seconds) > now while it rests after failing.

    ``http``: the lean request path where ``direct_http`` allows it; else requests go through ``client``.
    """

    url: str | None
    client: openai.AsyncOpenAI
    http: JSONPool | None = None
    outstanding: int = 0
    answered: int = 0
    down_until: float = 0.0

    def where(self) -> str:
        return self.url or f"https://{OPENAI_HOST}/v1"

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST a JSON body (under the base URL); the decoded JSON answer, retried and failing as the SDK does.

        Through the SDK, ``post`` with ``cast_to=object`` rather than ``create(**params)``: the latter walks
        every message through the SDK's typed-parameter transform, for a body that is plain JSON already.
        """
        if self.http is not None:
            return await self.http.post(path, body)
        return await self.client.post(path, body=body, cast_to=object)


class ReplicaPool:
    """Least-outstanding choice among the replicas that are up; a failed one rests, then is tried again."""

    def __init__(self, replicas: list[Replica], cooldown_s: float) -> None:
        self.replicas, self.cooldown_s = replicas, cooldown_s

    def pick(self, tried: set[Replica]) -> Replica | None:
        """The untried replica to use next: fewest outstanding among those up, else the one back soonest."""
        candidates = [replica for replica in self.replicas if replica not in tried]
        if not candidates:
            return None
        now = time.monotonic()
        up = [replica for replica in candidates if replica.down_until <= now]
        if up:
            return min(up, key=lambda replica: (replica.outstanding, replica.answered))
        return min(candidates, key=lambda replica: replica.down_until)

    def failed(self, replica: Replica, err: Exception) -> None:
        was_up = replica.down_until <= time.monotonic()
        replica.down_until = time.monotonic() + self.cooldown_s
        if was_up and len(self.replicas) > 1:
            log.warning("replica %s taken out for %.0fs: %s", replica.where(), self.cooldown_s, type(err).__name__)

    def answered(self, replica: Replica) -> None:
        if replica.down_until:
            log.info("replica %s is back", replica.where())
            replica.down_until = 0.0
        replica.answered += 1

    @property
    def up(self) -> int:
        return sum(replica.down_until <= time.monotonic() for replica in self.replicas)


class OpenAILLM(LLM):
    """Chat messages go to /v1/chat/completions; raw text prompts to /v1/completions.

    With ``batch_api``, ``generate`` and ``decide`` go through the Batch API instead (one batch per
    call); ``ledger`` remembers each submitted batch by the hash of its requests, so a rerun of the
    same work collects the same batch rather than paying for a second one.
    """

    backend = "openai"

    def __init__(self, config: LLMConfig, show_progress: bool = True, ledger: BatchLedger | None = None) -> None:
        super().__init__()
        self.config = config
        self.model_id = config.model
        self.base_url = config.base_url
        self._api_key = resolve_api_key(config)
        self.show_progress = show_progress
        self._logprobs = config.logprobs != "off"
        self.ledger = ledger if ledger is not None else MemoryLedger()
        self._tokenizer: Any = None
        self._loop = LoopThread(f"openai [{config.model}]")
        self.pool = ReplicaPool(
            [Replica(url, self._client(url), self._http(url)) for url in config.base_urls], config.replica_cooldown_s
        )
        self._limit = asyncio.Semaphore(config.max_concurrency * len(self.pool.replicas))

    def __repr__(self) -> str:  # never show the key
        return f"OpenAILLM(model={self.model_id!r}, base_url={self.base_url!r})"

    def _client(self, url: str | None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=self._api_key, base_url=url, max_retries=self.config.max_retries, timeout=self.config.timeout_s
        )

    def _http(self, url: str | None) -> JSONPool | None:
        if url is None or not direct_http(url):
            return None  # OpenAI's own API, HTTPS or a proxy: the SDK's path
        return JSONPool(url, self._api_key, self.config.timeout_s, self.config.max_retries)

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        self._loop.run(self._close_clients())
        self._loop.stop()

    async def _close_clients(self) -> None:
        for replica in self.pool.replicas:
            await replica.client.close()
            if replica.http is not None:
                await replica.http.close()

    # -- plumbing -------------------------------------------------------------------------------
    def _gather(self, items: Sequence[Any], call: Callable[[Replica, Any], Awaitable[T]], desc: str) -> list[T]:
        """``call(replica, item)`` for every item, spread over the replicas; results in order."""
        return self._loop.run(self._agather(items, call, desc))

    async def _agather(self, items: Sequence[Any], call: Callable[[Replica, Any], Awaitable[T]], desc: str) -> list[T]:
        progress = tqdm(total=len(items), desc=desc, disable=not self.show_progress or len(items) < 2, leave=False)

        async def one(item: Any) -> T:
            result = await self._request(lambda replica: call(replica, item))
            progress.update()
            return result

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:  # one failed (or the call was cancelled): the rest are called off, not left running
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise
        finally:
            progress.close()

    async def _request(self, call: Callable[[Replica], Awaitable[T]]) -> T:
        """One request on the least-loaded replica; on another when it fails, until each has failed it once."""
        tried: set[Replica] = set()
        reasons: list[str] = []
        async with self._limit:
            while (replica := self.pool.pick(tried)) is not None:
                replica.outstanding += 1
                try:
                    result = await self._with_retries(lambda: call(replica), replica)
                except REPLICA_FAILURES as err:
                    self.pool.failed(replica, err)
                    tried.add(replica)
                    reasons.append(failure_reason(replica, err))
                    continue
                finally:
                    replica.outstanding -= 1
                self.pool.answered(replica)
                return result
        if len(self.pool.replicas) == 1:
            raise SaferInstructError(reasons[0])
        raise SaferInstructError(
            f"none of the {len(self.pool.replicas)} replicas of {self.model_id!r} answered: " + "; ".join(reasons)
        )

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], replica: Replica) -> T:
        """Retry malformed responses with backoff and jitter; turn a wrong key or model into a clear error."""
        for tries in range(self.config.max_retries + 1):
            try:
                return await attempt()
            except MALFORMED as err:
                if tries == self.config.max_retries:
                    raise SaferInstructError(
                        f"{replica.where()}: malformed response after {tries + 1} tries: {err}"
                    ) from err
                delay = min(0.5 * 2**tries, 8.0) * (1 - 0.25 * random.random())
                log.warning(
                    "malformed response from %s (%s); retrying in %.2fs", replica.where(), type(err).__name__, delay
                )
                await asyncio.sleep(delay)
            except openai.AuthenticationError as err:
                raise SaferInstructError(
                    f"{replica.where()} rejected the API key from ${self.config.api_key_env}"
                ) from err
            except openai.NotFoundError as err:
                raise SaferInstructError(
                    f"{replica.where()}: model {self.model_id!r} or endpoint not found: {err.message}"
                ) from err
        raise AssertionError("unreachable")

    def _where(self) -> str:
        return ", ".join(replica.where() for replica in self.pool.replicas)

    def _account(self, usage: dict[str, Any] | None, price_factor: float = 1.0) -> tuple[int, int]:
        prompt = int((usage or {}).get("prompt_tokens") or 0)
        completion = int((usage or {}).get("completion_tokens") or 0)
        prices = self.config.prices
        cost = price_factor * (prompt * prices.prompt_per_million + completion * prices.completion_per_million) / 1e6
        self.usage.add(prompt, completion, cost)
        return prompt, completion

    # -- generation -----------------------------------------------------------------------------
    def _sampling(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "seed": params.seed,
        }
        if not params.greedy:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    async def _generate_one(self, replica: Replica, prompt: Prompt, params: SamplingParams) -> Generation:
        if isinstance(prompt, str):
            response = await replica.post(
                "/completions", {"model": self.model_id, "prompt": prompt, **self._sampling(params)}
            )
        else:
            response = await replica.post(
                "/chat/completions", {"model": self.model_id, "messages": prompt, **self._sampling(params)}
            )
        return self._generation(response)

    def _generation(self, response: dict[str, Any], price_factor: float = 1.0) -> Generation:
        """A completions or chat completions answer (plain JSON) as a Generation."""
        choice = response["choices"][0]
        text = choice["text"] if "text" in choice else choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("response has no text")
        prompt_tokens, completion_tokens = self._account(response.get("usage"), price_factor)
        return Generation(text.strip(), prompt_tokens, completion_tokens, choice.get("finish_reason") or "stop")

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        if self.config.batch_api and all(not isinstance(p, str) for p in prompts):
            bodies = [{"model": self.model_id, "messages": p, **self._sampling(params)} for p in prompts]
            return self._through_batch(
                bodies, self._generation, lambda missing: self.generate_direct([prompts[i] for i in missing], params)
            )
        return self.generate_direct(prompts, params)

    def generate_direct(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        return self._gather(prompts, lambda c, p: self._generate_one(c, p, params), f"generate [{self.model_id}]")

    # -- decisions ------------------------------------------------------------------------------
    def _decide_body(self, prompt: Prompt) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        body: dict[str, Any] = {"model": self.model_id, "messages": messages, "max_tokens": 8, "temperature": 0.0}
        if self._logprobs:
            body |= {"logprobs": True, "top_logprobs": 20}
        return body

    async def _decide_one(self, replica: Replica, prompt: Prompt, labels: tuple[str, ...]) -> Decision:
        try:
            response = await replica.post("/chat/completions", self._decide_body(prompt))
        except openai.BadRequestError:
            if not self._logprobs or self.config.logprobs == "on":
                raise
            log.info("%s does not take logprobs; parsing answers as text", self._where())
            self._logprobs = False
            return await self._decide_one(replica, prompt, labels)
        return self._decision(response, labels)

    def _decision(self, response: dict[str, Any], labels: tuple[str, ...], price_factor: float = 1.0) -> Decision:
        """A chat completions answer (plain JSON) read as one of ``labels``, with its probability where logprobs came."""
        self._account(response.get("usage"), price_factor)
        choice = response["choices"][0]
        decision = parse_label(choice["message"]["content"] or "", labels)
        logprobs = choice.get("logprobs")
        if decision.ok and logprobs and logprobs.get("content"):
            probability = label_probability(logprobs["content"][0]["top_logprobs"], labels, decision.label)
            decision = Decision(decision.label, probability, decision.raw)
        return decision

    def decide(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[Decision]:
        labels = check_labels(labels)
        if self.config.batch_api:
            return self._through_batch(
                [self._decide_body(p) for p in prompts],
                lambda r, f: self._decision(r, labels, f),
                lambda missing: self.decide_direct([prompts[i] for i in missing], labels),
            )
        return self.decide_direct(prompts, labels)

    def decide_direct(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[Decision]:
        labels = check_labels(labels)
        return self._gather(prompts, lambda c, p: self._decide_one(c, p, labels), f"decide [{self.model_id}]")

    # -- the Batch API --------------------------------------------------------------------------
    def _through_batch(
        self, bodies: list[dict[str, Any]], read: Callable[[Any, float], T], direct: Callable[[list[int]], list[T]]
    ) -> list[T]:
        """Answers from one Batch API batch (submitted once per distinct request file); lines it could not answer go direct."""
        if not bodies:
            return []
        payload, sha = request_file("/v1/chat/completions", bodies)
        client = self.pool.replicas[0].client
        batch_id = self.ledger.batch_id(sha)
        if batch_id is None:
            batch_id = self._loop.run(submit_batch(client, payload, sha))
            self.ledger.remember(sha, batch_id)
        try:
            answers = self._loop.run(collect_batch(client, batch_id, len(bodies), self.config.batch_poll_s))
        except SaferInstructError:
            self.ledger.forget(sha)  # a failed batch is not billed; the next run submits it afresh
            raise
        results: list[T | None] = [None if body is None else read(body, BATCH_DISCOUNT) for body in answers]
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:
            log.warning(
                "batch %s left %d of %d requests unanswered; asking them directly", batch_id, len(missing), len(bodies)
            )
            for index, result in zip(missing, direct(missing)):
                results[index] = result
        return results  # type: ignore[return-value]

    # -- scoring given text ---------------------------------------------------------------------
    def loglikelihood(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[Loglikelihood]:
        """Each continuation's summed log-probability after its prompt, from the completions endpoint's echoed logprobs.

        Chat prompts are rendered with the chat template of ``tokenizer`` (default: ``model``), as the server would.
        """
        if any(is_openai_api(replica.url) for replica in self.pool.replicas):
            raise self._cannot_score("the OpenAI API does not return log-probabilities of given text")
        texts = [self._render(p) for p in prompts]
        pairs = list(zip(texts, continuations, strict=True))
        return self._gather(pairs, lambda replica, pair: self._score_one(replica, *pair), f"score [{self.model_id}]")

    def _render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from safer_instruct.models import resolve_model

        name = self.config.tokenizer or self.config.model
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
        except (OSError, ValueError) as err:
            raise self._cannot_score(
                f"its chat template is needed to render chat prompts, and tokenizer {name!r} "
                f"could not be loaded ({type(err).__name__}); set `tokenizer` to a local folder or Hub id"
            ) from err
        if not tokenizer.chat_template:
            raise self._cannot_score(f"tokenizer {name!r} has no chat template; set `tokenizer` to one that has")
        return tokenizer

    async def _score_one(self, replica: Replica, prompt: str, continuation: str) -> Loglikelihood:
        try:
            body = {
                "model": self.model_id,
                "prompt": prompt + continuation,
                "max_tokens": 1,
                "temperature": 0.0,
                "echo": True,
                "logprobs": 1,
            }
            response = await replica.post("/completions", body)
        except openai.BadRequestError as err:
            raise self._cannot_score(f"it refused echo with logprobs: {err.message}") from err
        self._account(response.get("usage"))
        return continuation_logprob(
            response["choices"][0].get("logprobs"), len(prompt), len(prompt + continuation), self._cannot_score
        )

    def _cannot_score(self, why: str) -> Unsupported:
        return Unsupported(
            f"model {self.model_id!r} at {self._where()} cannot score given text: {why}. "
            "Serve it with vLLM or SGLang (their completions endpoint echoes prompt log-probabilities), "
            "or use the local backend"
        )


def failure_reason(replica: Replica, err: Exception) -> str:
    """Why a replica failed a request, for the error a user sees."""
    if isinstance(err, openai.APIConnectionError):
        return f"cannot reach {replica.where()}: {err}. Is the server running and the URL right?"
    return f"{replica.where()}: {type(err).__name__}: {err}"


def continuation_logprob(
    logprobs: dict[str, Any] | None, start: int, end: int, refuse: Callable[[str], Exception]
) -> Loglikelihood:
    """Sum the echoed logprobs of the tokens that carry text in ``[start, end)``: the continuation, not the generated token."""
    offsets = logprobs.get("text_offset") if logprobs else None
    values = logprobs.get("token_logprobs") if logprobs else None
    if not offsets or not values or len(offsets) != len(values):
        raise refuse("its completions carry no prompt log-probabilities (echo with logprobs)")
    ends = [*offsets[1:], max(end, offsets[-1] + 1)]
    picked = [value for offset, token_end, value in zip(offsets, ends, values) if offset < end and token_end > start]
    if picked and picked[0] is None and start == 0:
        picked = picked[1:]  # the first token of a text has no context to be scored in
    if not picked or any(value is None for value in picked):
        raise refuse("its echoed log-probabilities do not cover the scored text")
    return Loglikelihood(logprob=float(sum(picked)), tokens=len(picked))


def label_probability(top_logprobs: Sequence[dict[str, Any]], labels: Sequence[str], chosen: str) -> float | None:
    """The chosen label's share of the first token's probability mass among the labels."""
    mass = dict.fromkeys(labels, 0.0)
    for entry in top_logprobs:
        token = entry["token"].strip().lower()
        matches = [label for label in labels if token and label.lower().startswith(token)]
        if len(matches) == 1:
            mass[matches[0]] += math.exp(entry["logprob"])
    total = sum(mass.values())
    return mass[chosen] / total if total > 0 else None
