"""Plain-JSON POSTs over pooled HTTP/1.1 keep-alive connections: the OpenAI backend's path to self-hosted servers.

The SDK takes each request through typed layers (request options, httpx, httpcore, anyio, response models),
whose CPU cost per request bounds a build against a fast server (the README's scale figures).
``JSONPool`` sends the same request in one write and reads the answer with a small parser, and
keeps the SDK's contract: timeouts, lost connections and 408/409/429/5xx are retried with the SDK's backoff
(0.5 s doubling up to 8 s, less up to 25% jitter; a ``retry-after-ms``/``Retry-After`` of up to 2 minutes is
waited instead, a longer one is not retried; ``x-should-retry`` is obeyed), and what still fails raises the
SDK's own exceptions. Redirects are not followed: they fail as the status they are.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import openai

try:  # the HTTP library whose requests and responses the SDK's exceptions carry
    import httpx2 as httpx
except ImportError:  # openai < 3
    import httpx  # type: ignore[no-redef]

log = logging.getLogger(__name__)
INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, MAX_RETRY_AFTER = 0.5, 8.0, 120.0  # seconds, as the SDK's
RETRIED_STATUSES = frozenset({408, 409, 429})
STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}
MAX_HEAD_BYTES = 64 * 1024
TRANSPORT_FAILURES = (OSError, asyncio.TimeoutError, EOFError)  # refused, reset, closed early, timed out, not HTTP


class NotHTTP(EOFError):
    """The server's bytes are not an HTTP/1.x response (or it closed the connection before a whole one)."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    keep_alive: bool


def parse_response(buffer: bytearray | bytes, eof: bool) -> tuple[Response, int] | None:
    """The first whole final response in ``buffer`` and the bytes it took; None while it is incomplete.

    ``eof``: the server has closed its side, which ends a body framed by neither a length nor chunks.
    """
    start = 0
    while True:
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) - start > MAX_HEAD_BYTES or eof:
                raise NotHTTP(
                    "the connection closed before a whole response head" if eof else "response head too long"
                )
            return None
        lines = bytes(buffer[start:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise NotHTTP(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(rest[:3])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:  # interim (100 Continue): the final response follows
            start = end + 4
            continue
        framed = _body(buffer, end + 4, status, headers, eof)
        if framed is None:
            return None
        body, used, delimited = framed
        connection = headers.get("connection", "").lower()
        keep_alive = delimited and ("keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection)
        return Response(status, headers, body, keep_alive), used


def _body(
    buffer: bytearray | bytes, start: int, status: int, headers: dict[str, str], eof: bool
) -> tuple[bytes, int, bool] | None:
    """The body from ``start`` (its bytes, where it ends, whether its framing let the connection go on); None while incomplete."""
    if status in (204, 304):
        return b"", start, True
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _chunked(buffer, start, eof)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise NotHTTP(f"bad Content-Length {headers['content-length']!r}") from None
        if len(buffer) >= start + length:
            return bytes(buffer[start : start + length]), start + length, True
        if eof:
            raise NotHTTP("the connection closed before the whole body")
        return None
    return (bytes(buffer[start:]), len(buffer), False) if eof else None  # to the end of the connection


def _chunked(buffer: bytearray | bytes, position: int, eof: bool) -> tuple[bytes, int, bool] | None:
    pieces = []
    while (line_end := buffer.find(b"\r\n", position)) >= 0:
        try:
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        except ValueError:
            raise NotHTTP("bad chunk size") from None
        if size == 0:
            if (
                trailers_end := buffer.find(b"\r\n\r\n", line_end)
            ) >= 0:  # the last chunk's line, any trailers, an empty line
                return b"".join(pieces), trailers_end + 4, True
            break
        if len(buffer) < line_end + 2 + size + 2:
            break
        pieces.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
        position = line_end + 2 + size + 2
    if eof:
        raise NotHTTP("the connection closed inside a chunked body")
    return None


class Connection(asyncio.Protocol):
    """One keep-alive connection: ``send`` writes a request; its future ends with the whole response."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.open = False
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.open = transport, True  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self._complete(eof=False)

    def eof_received(self) -> bool:
        self._ended()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    @property
    def ready(self) -> bool:
        """Open, with nothing unread: ready for the next request."""
        return (
            self.open
            and self.reusable
            and not self.buffer
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def send(self, request: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.waiter, self.reusable = self.loop.create_future(), False
        self.transport.write(request)
        return self.waiter

    def expire(self) -> None:
        """No response in time: the request fails and the connection is dropped."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(TimeoutError("no response in time"))
        self.close()

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.abort()

    def _ended(self) -> None:
        self.open = False
        if self.waiter is not None and not self.waiter.done():
            self._complete(eof=True)

    def _complete(self, eof: bool) -> None:
        assert self.waiter is not None
        try:
            parsed = parse_response(self.buffer, eof)
        except NotHTTP as err:
            self.waiter.set_exception(err)
            self.close()
            return
        if parsed is not None:
            response, used = parsed
            del self.buffer[:used]
            self.reusable = response.keep_alive and not eof
            self.waiter.set_result(response)


class JSONPool:
    """POSTs of JSON bodies to one server over keep-alive connections, opened as needed and reused (most recent first)."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float, max_retries: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"JSONPool speaks plain http:// only, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.base_url = base_url.rstrip("/")
        self.timeout_s, self.max_retries = timeout_s, max_retries
        host = parts.netloc.rpartition("@")[2]
        self._root = parts.path.rstrip("/")
        self._head = (
            f"Host: {host}\r\nAuthorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
            "Accept: application/json\r\nUser-Agent: safer-instruct\r\nContent-Length: "
        ).encode("latin-1")
        self._idle: list[Connection] = []

    def __repr__(self) -> str:  # never show the key
        return f"JSONPool({self.base_url!r})"

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """The decoded JSON answer to ``body`` POSTed at ``path`` (under the base URL), retried as the SDK retries."""
        payload = json.dumps(body).encode()
        request = b"POST %s%s HTTP/1.1\r\n%s%d\r\n\r\n%s" % (
            self._root.encode(),
            path.encode(),
            self._head,
            len(payload),
            payload,
        )
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._exchange(request)
            except TRANSPORT_FAILURES as err:
                if last:
                    raise self._transport_error(path, err) from err
                await self._pause(attempt, None, f"{type(err).__name__}: {err}")
                continue
            if 200 <= response.status < 300:
                return json.loads(response.body)
            if last or not should_retry(response):
                raise self._status_error(path, response)
            await self._pause(attempt, response.headers, f"status {response.status}")
        raise AssertionError("unreachable")

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _exchange(self, request: bytes) -> Response:
        connection = await self._connection()
        timer = connection.loop.call_later(self.timeout_s, connection.expire)
        try:
            response = await connection.send(request)
        except BaseException:  # failed, timed out or cancelled: what is left on the wire is unknown
            connection.close()
            raise
        finally:
            timer.cancel()
        if connection.reusable:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _connection(self) -> Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.ready:
                return connection
            connection.close()  # the server closed it while it waited
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(Connection, self.host, self.port), self.timeout_s
        )
        return connection

    async def _pause(self, attempt: int, headers: dict[str, str] | None, why: str) -> None:
        delay = retry_delay(attempt, headers)
        log.info(
            "%s: %s; retrying in %.2fs (retry %d of %d)", self.base_url, why, delay, attempt + 1, self.max_retries
        )
        await asyncio.sleep(delay)

    def _request(self, path: str) -> Any:
        return httpx.Request("POST", self.base_url + path)

    def _transport_error(self, path: str, err: BaseException) -> openai.APIConnectionError:
        if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
            return openai.APITimeoutError(request=self._request(path))
        return openai.APIConnectionError(
            message=f"Connection error ({type(err).__name__}: {err}).", request=self._request(path)
        )

    def _status_error(self, path: str, response: Response) -> openai.APIStatusError:
        """The SDK's exception for a failed status: its class, message (``Error code: N - message``) and body."""
        try:
            body: Any = json.loads(response.body)
        except ValueError:
            body = response.body.decode("utf-8", "replace").strip() or None
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else None
        text = f"Error code: {response.status}" + (f" - {message}" if isinstance(message, str) and message else "")
        kind = STATUS_ERRORS.get(response.status) or (
            openai.InternalServerError if response.status >= 500 else openai.APIStatusError
        )
        http_response = httpx.Response(
            response.status, headers=response.headers, content=response.body, request=self._request(path)
        )
        return kind(text, response=http_response, body=error)


def retry_after(headers: dict[str, str]) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, else ``Retry-After`` as seconds or as an HTTP date."""
    for name, scale in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            return float(headers[name]) / scale
        except (KeyError, ValueError):
            continue
    date = email.utils.parsedate_tz(headers.get("retry-after", ""))
    return float(email.utils.mktime_tz(date) - time.time()) if date else None


def should_retry(response: Response) -> bool:
    """As the SDK decides: not past a Retry-After over 2 minutes; ``x-should-retry`` if given; else 408/409/429/5xx."""
    wait = retry_after(response.headers)
    if wait is not None and wait > MAX_RETRY_AFTER:
        return False
    flag = response.headers.get("x-should-retry")
    if flag in ("true", "false"):
        return flag == "true"
    return response.status in RETRIED_STATUSES or response.status >= 500


def retry_delay(attempt: int, headers: dict[str, str] | None) -> float:
    """The wait before retry ``attempt + 1``: the server's (up to 2 minutes), else exponential backoff with jitter."""
    wait = retry_after(headers) if headers else None
    if wait is not None and 0 < wait <= MAX_RETRY_AFTER:
        return wait
    return min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY) * (1 - 0.25 * random.random())
