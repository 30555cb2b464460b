"""OpenAI-compatible backend (OpenAI, vLLM, TGI, ``transformers serve``) over the SDK's ``AsyncOpenAI``.

Bounded concurrency; the SDK retries 408/409/429/5xx and timeouts with exponential backoff and
jitter; a malformed response body is retried here the same way. The key is read from the
environment and never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import random
from typing import Any, Awaitable, Callable, Sequence, TypeVar
from urllib.parse import urlparse

import openai
from tqdm.auto import tqdm

from safer_instruct.config import LLMConfig
from safer_instruct.errors import SaferInstructError
from safer_instruct.llm.base import LLM, Decision, Generation, Prompt, SamplingParams, check_labels, parse_label

log = logging.getLogger(__name__)
T = TypeVar("T")
OPENAI_HOST = "api.openai.com"
MALFORMED = (json.JSONDecodeError, openai.APIResponseValidationError, KeyError, IndexError, TypeError, AttributeError)


def resolve_api_key(config: LLMConfig) -> str:
    """The key from ``config.api_key_env``; required for OpenAI's own endpoint, optional elsewhere."""
    key = os.environ.get(config.api_key_env, "")
    host = urlparse(config.base_url).hostname if config.base_url else OPENAI_HOST
    if not key and host == OPENAI_HOST:
        raise SaferInstructError(
            f"the OpenAI endpoint needs an API key: set the environment variable {config.api_key_env}"
        )
    return key or "EMPTY"


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when a loop is already running (e.g. gradio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


class OpenAILLM(LLM):
    """Chat messages go to /v1/chat/completions; raw text prompts to /v1/completions."""

    backend = "openai"

    def __init__(self, config: LLMConfig, show_progress: bool = True) -> None:
        super().__init__()
        self.config = config
        self.model_id = config.model
        self.base_url = config.base_url
        self._api_key = resolve_api_key(config)
        self.show_progress = show_progress
        self._logprobs = config.logprobs != "off"

    def __repr__(self) -> str:  # never show the key
        return f"OpenAILLM(model={self.model_id!r}, base_url={self.base_url!r})"

    def _client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            max_retries=self.config.max_retries,
            timeout=self.config.timeout_s,
        )

    # -- plumbing -------------------------------------------------------------------------------
    async def _gather(self, items: Sequence[Any], call: Callable[[openai.AsyncOpenAI, Any], Awaitable[T]], desc: str) -> list[T]:
        limit = asyncio.Semaphore(self.config.max_concurrency)
        progress = tqdm(total=len(items), desc=desc, disable=not self.show_progress or len(items) < 2, leave=False)
        async with self._client() as client:

            async def one(item: Any) -> T:
                async with limit:
                    result = await self._with_retries(lambda: call(client, item))
                progress.update()
                return result

            try:
                return list(await asyncio.gather(*(one(item) for item in items)))
            finally:
                progress.close()

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Retry malformed responses with backoff and jitter; turn transport failures into clear errors."""
        for tries in range(self.config.max_retries + 1):
            try:
                return await attempt()
            except MALFORMED as err:
                if tries == self.config.max_retries:
                    raise SaferInstructError(f"{self._where()}: malformed response after {tries + 1} tries: {err}") from err
                delay = min(0.5 * 2**tries, 8.0) * (1 - 0.25 * random.random())
                log.warning("malformed response from %s (%s); retrying in %.2fs", self._where(), type(err).__name__, delay)
                await asyncio.sleep(delay)
            except openai.APIConnectionError as err:
                raise SaferInstructError(f"cannot reach {self._where()}: {err}. Is the server running and the URL right?") from err
            except openai.AuthenticationError as err:
                raise SaferInstructError(f"{self._where()} rejected the API key from ${self.config.api_key_env}") from err
            except openai.NotFoundError as err:
                raise SaferInstructError(f"{self._where()}: model {self.model_id!r} or endpoint not found: {err.message}") from err
        raise AssertionError("unreachable")

    def _where(self) -> str:
        return self.base_url or f"https://{OPENAI_HOST}/v1"

    def _account(self, usage: Any) -> tuple[int, int]:
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        prices = self.config.prices
        cost = (prompt * prices.prompt_per_million + completion * prices.completion_per_million) / 1e6
        self.usage.add(prompt, completion, cost)
        return prompt, completion

    # -- generation -----------------------------------------------------------------------------
    def _sampling(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"max_tokens": params.max_new_tokens, "temperature": params.temperature, "seed": params.seed}
        if not params.greedy:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    async def _generate_one(self, client: openai.AsyncOpenAI, prompt: Prompt, params: SamplingParams) -> Generation:
        if isinstance(prompt, str):
            response = await client.completions.create(model=self.model_id, prompt=prompt, **self._sampling(params))
            choice, text = response.choices[0], response.choices[0].text
        else:
            response = await client.chat.completions.create(model=self.model_id, messages=prompt, **self._sampling(params))
            choice, text = response.choices[0], response.choices[0].message.content
        if text is None:
            raise TypeError("response has no text")
        prompt_tokens, completion_tokens = self._account(response.usage)
        return Generation(text.strip(), prompt_tokens, completion_tokens, choice.finish_reason or "stop")

    async def agenerate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        return await self._gather(prompts, lambda c, p: self._generate_one(c, p, params), f"generate [{self.model_id}]")

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        return run_sync(lambda: self.agenerate(prompts, params))

    # -- decisions ------------------------------------------------------------------------------
    async def _decide_one(self, client: openai.AsyncOpenAI, prompt: Prompt, labels: tuple[str, ...]) -> Decision:
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        body: dict[str, Any] = {"model": self.model_id, "messages": prompt, "max_tokens": 8, "temperature": 0.0}
        if self._logprobs:
            body |= {"logprobs": True, "top_logprobs": 20}
        try:
            response = await client.chat.completions.create(**body)
        except openai.BadRequestError:
            if not self._logprobs or self.config.logprobs == "on":
                raise
            log.info("%s does not take logprobs; parsing answers as text", self._where())
            self._logprobs = False
            return await self._decide_one(client, prompt, labels)
        self._account(response.usage)
        choice = response.choices[0]
        decision = parse_label(choice.message.content or "", labels)
        if decision.ok and choice.logprobs and choice.logprobs.content:
            probability = label_probability(choice.logprobs.content[0].top_logprobs, labels, decision.label)
            decision = Decision(decision.label, probability, decision.raw)
        return decision

    def decide(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[Decision]:
        labels = check_labels(labels)
        return run_sync(lambda: self._gather(prompts, lambda c, p: self._decide_one(c, p, labels), f"decide [{self.model_id}]"))


def label_probability(top_logprobs: Sequence[Any], labels: Sequence[str], chosen: str) -> float | None:
    """The chosen label's share of the first token's probability mass among the labels."""
    mass = dict.fromkeys(labels, 0.0)
    for entry in top_logprobs:
        token = entry.token.strip().lower()
        matches = [label for label in labels if token and label.lower().startswith(token)]
        if len(matches) == 1:
            mass[matches[0]] += math.exp(entry.logprob)
    total = sum(mass.values())
    return mass[chosen] / total if total > 0 else None
