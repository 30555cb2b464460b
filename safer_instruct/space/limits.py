"""Per-client request throttle and the prompt length limit, with messages a visitor understands."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

SWEEP_EVERY = 1000  # forget idle clients after this many checks


class Throttle:
    """At most ``limit`` requests per client in any ``window_s`` seconds (a sliding window)."""

    def __init__(self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._checks = 0
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """0 and the request is counted, or how many seconds this client must wait (not counted)."""
        now = self.clock()
        with self._lock:
            self._checks += 1
            if self._checks % SWEEP_EVERY == 0:
                self._forget_idle(now)
            times = self._seen.setdefault(client, deque())
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                return times[0] + self.window_s - now
            times.append(now)
            return 0.0

    def _forget_idle(self, now: float) -> None:
        for client in [c for c, t in self._seen.items() if not t or now - t[-1] >= self.window_s]:
            del self._seen[client]


def throttle_message(wait_s: float, limit: int) -> str:
    seconds = max(1, math.ceil(wait_s))
    return f"Too many requests: this demo answers {limit} prompts per minute per visitor. Try again in {seconds} s."


def prompt_problem(prompt: str, max_chars: int) -> str | None:
    """Why a prompt cannot be sent, or None when it can."""
    if not prompt.strip():
        return "Type a prompt first."
    if len(prompt) > max_chars:
        return f"Your prompt has {len(prompt)} characters; this demo takes at most {max_chars}. Shorten it and send again."
    return None


def client_key(host: str | None, forwarded_for: str | None, session: str | None, trusted_proxy_hops: int = 0) -> str:
    """Who is asking: the peer address, or behind ``trusted_proxy_hops`` proxies the address they recorded.

    Each proxy appends the address it saw to ``X-Forwarded-For``, so the visitor's address is the entry
    ``trusted_proxy_hops`` from the right; anything left of it came from the visitor and is ignored. Without
    a trusted proxy the header is ignored entirely (anyone can send it). Without an address the browser
    session stands in. The key stays in memory, never in a log or vote.
    """
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    if trusted_proxy_hops and hops:
        return hops[-min(trusted_proxy_hops, len(hops))]
    return host or session or "anonymous"
