"""HTTP to Stripe: the client seam, aiohttp and httpx implementations, the response → outcome table."""

from __future__ import annotations

import asyncio
import email.utils
import enum
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import aiohttp
import httpx
import orjson

from connector.errors import RetryableError

# ------------------------------------------------------------------------------------------ the seam


class HttpResponse(NamedTuple):
    """A complete response: the body was read to its end, so a cut-off answer never looks like one."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy, httpx.Headers)
    body: bytes


class TransportError(RetryableError):
    """No complete HTTP response: timeout, refused or dropped connection, truncated body.

    ``kind`` is ``timeout``, ``connect`` or ``protocol``. The message names the failure class and never a
    header, so no credential can leak through it.
    """

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        super().__init__(f"{kind}: {detail}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request limits in seconds: establishing a connection, between reads, and the whole exchange."""

    connect_s: float = 5.0
    read_s: float = 30.0
    total_s: float = 60.0


# Every request of the connector's own HTTP clients asks for an uncompressed answer: Stripe's answers
# are small JSON documents, and aiohttp would otherwise advertise "gzip, deflate" by default while
# this client reads raw bytes. An answer compressed anyway (a proxy that ignores the header) is still
# decoded, see ``decode_body``.
NO_COMPRESSION = {"Accept-Encoding": "identity"}


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """``body`` as the server meant it: gunzipped/inflated per ``Content-Encoding`` (raises
    ``TransportError`` when it does not decode, so a mangled answer is never parsed as an error)."""
    if not content_encoding:
        return body
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise TransportError("protocol", f"unsupported Content-Encoding {encoding!r}")
    try:
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:  # raw deflate without the zlib wrapper, as some servers send it
                return zlib.decompress(body, -zlib.MAX_WBITS)
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    except zlib.error as exc:
        raise TransportError("protocol", f"{encoding} body does not decode: {exc}") from None


class HttpClient(Protocol):
    """What the sender and the session manager need from HTTP: a keep-alive POST of a ready body."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST ``body``; return the complete response or raise ``TransportError``."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections; the client is unusable afterwards."""
        ...


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class AiohttpClient:
    """Production client: aiohttp's pool and C parser cost ~0.3 ms of CPU a request, httpx's ~10× more.

    The ``aiohttp.ClientSession`` is created on first use, inside the running event loop, as aiohttp
    requires. ``max_connections`` should exceed the sender's ``max_in_flight`` so a session renewal never
    queues behind stream requests.
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        max_connections: int = 100,
        keepalive_s: float = 30.0,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=self.keepalive_s)
        timeout = aiohttp.ClientTimeout(
            total=self.timeouts.total_s,
            sock_connect=self.timeouts.connect_s,
            sock_read=self.timeouts.read_s,
        )
        # Decompression is ours (``decode_body``) and requests ask for none (``NO_COMPRESSION``): a
        # compressed 200 would cost CPU for a two-byte body, and the one place that decodes is tested.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            raise_for_status=False,
            headers=NO_COMPRESSION,
        )
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        session = self._session or self._open()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                content = await response.read()
                encoding = response.headers.get("content-encoding")
                if encoding:
                    content = decode_body(content, encoding)
                return HttpResponse(response.status, response.headers, content)
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is also a TimeoutError
            raise TransportError("timeout", _describe(exc)) from None
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
            raise TransportError("connect", _describe(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError("protocol", _describe(exc)) from None

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def __repr__(self) -> str:
        return f"AiohttpClient(max_connections={self.max_connections}, timeouts={self.timeouts})"


class HttpxClient:
    """httpx behind the same seam: in-process tests (``httpx.ASGITransport``) and the benchmark baseline.

    httpx has no limit on a whole exchange, so ``asyncio.timeout`` enforces ``total_s``. It sends the
    callers' ``Accept-Encoding: identity`` like the aiohttp client, and httpx itself decodes any
    compressed answer it gets anyway (``response.content`` is decoded).
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeouts: Timeouts | None = None,
        max_connections: int = 100,
    ) -> None:
        self.timeouts = timeouts = timeouts or Timeouts()
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers=NO_COMPRESSION,
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        try:
            async with asyncio.timeout(self.timeouts.total_s):
                response = await self._client.post(url, content=body, headers=headers)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TransportError("timeout", _describe(exc)) from None
        except httpx.ConnectError as exc:
            raise TransportError("connect", _describe(exc)) from None
        except (httpx.TransportError, OSError) as exc:
            raise TransportError("protocol", _describe(exc)) from None
        return HttpResponse(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"HttpxClient(timeouts={self.timeouts})"


# ------------------------------------------------------------------------------------ secret hygiene

# Key-shaped strings (Stripe prints keys masked, but a proxy or a future message might not).
_KEY_PATTERN = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9*]+")
MASK = "**********"


def redact(text: str, *secrets: str) -> str:
    """``text`` with every given secret and anything shaped like a Stripe key replaced by a mask."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return _KEY_PATTERN.sub(lambda m: m.group(0)[:8] + MASK, text)


# ---------------------------------------------------------------------------------- the outcome table


class Action(enum.Enum):
    """What to do with a request after Stripe's answer (or the lack of one)."""

    DELIVERED = "delivered"  # 2xx: Stripe accepted every event of the request
    RENEW_SESSION = "renew_session"  # 401 session expired: new token, resend; not a failed attempt
    INVALID_TOKEN = "invalid_token"  # other 401: new token and resend once, then fatal
    RETRY = "retry"  # transient: back off and send the same request again
    # Stripe-Should-Retry: false on an answer that says nothing about the events (429, 5xx): do not
    # resend this request now; the events stay undelivered (not done, sent again later), never rejected.
    DEFER = "defer"
    REJECT = "reject"  # permanent and possibly event-specific: bisect, dead-letter what Stripe refuses
    FATAL = "fatal"  # permanent for every request (access, wrong URL): stop the pipeline


class Outcome(NamedTuple):
    """The classified answer; ``message`` is bounded and must be redacted before it leaves the sender."""

    action: Action
    status: int | None  # None when no response arrived
    code: str | None
    message: str
    retry_after: float | None = None


DELIVERED = Outcome(Action.DELIVERED, 200, None, "ok")

_RETRYABLE_STATUSES = frozenset({408, 409, 429})
# Statuses that cannot depend on the events sent: bisecting would dead-letter every event of a healthy
# stream because of a configuration error, so they stop the pipeline instead.
_FATAL_STATUSES = frozenset({403, 404, 405, 406, 415, 501})
SESSION_EXPIRED_TYPE = "temporary_session_expired"
SESSION_EXPIRED_CODE = "billing_meter_event_session_expired"


def parse_error(body: bytes) -> tuple[str | None, str | None, str | None]:
    """``(type, code, message)`` of a Stripe v1/v2 error body; Nones when it is not one."""
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = error.get(key)
        return value if isinstance(value, str) else None

    return text("type"), text("code"), text("message")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date); None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:  # HTTP dates are GMT by definition
            return None
        seconds = moment.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def classify(result: HttpResponse | TransportError, *, now: float) -> Outcome:
    """Map Stripe's answer, or a transport failure, to an ``Outcome`` (pure; ``now`` is unix time).

    ====================================================  ===============
    no response (timeout, connection refused/dropped)      RETRY
    2xx                                                    DELIVERED
    401 ``temporary_session_expired`` (or its code)       RENEW_SESSION
    other 401                                              INVALID_TOKEN
    408, 409, 429, 5xx except 501                          RETRY
    403, 404, 405, 406, 415, 501, 3xx                      FATAL
    other 4xx (400, 402, 413, 422, …)                      REJECT
    anything else (1xx, ≥ 600)                             RETRY
    ====================================================  ===============

    ``Stripe-Should-Retry: true`` turns REJECT/FATAL into RETRY; ``false`` turns RETRY into DEFER, never
    into REJECT: it is about resending the request, not about the events, which only a 4xx refuses.
    It does not apply to 2xx (accepted is accepted) nor to 401 (a new token is not a retry of the
    same request). ``retry_after`` comes from ``Retry-After`` on any non-2xx answer.
    """
    if isinstance(result, TransportError):
        return Outcome(Action.RETRY, None, result.kind, str(result))
    status = result.status
    if 200 <= status < 300:
        return DELIVERED
    error_type, code, message = parse_error(result.body)
    text = (message or f"HTTP {status} without a Stripe error body")[:500]
    headers = result.headers
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    if status == 401:
        expired = error_type == SESSION_EXPIRED_TYPE or code == SESSION_EXPIRED_CODE
        action = Action.RENEW_SESSION if expired else Action.INVALID_TOKEN
        return Outcome(action, status, code, text, retry_after)
    if status in _RETRYABLE_STATUSES or (500 <= status < 600 and status != 501):
        action = Action.RETRY
    elif status in _FATAL_STATUSES or 300 <= status < 400:
        action = Action.FATAL
    elif 400 <= status < 500:
        action = Action.REJECT
    else:
        action = Action.RETRY
    should_retry = (headers.get("stripe-should-retry") or "").strip().lower()
    if should_retry == "true":
        action = Action.RETRY
    elif should_retry == "false" and action is Action.RETRY:
        action = Action.DEFER
    return Outcome(action, status, code, text, retry_after)
