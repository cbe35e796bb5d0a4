"""HTTP to Stripe: the client seam (``HttpClient``, ``HttpResponse``, ``TransportError``) and its aiohttp
and httpx implementations. What an answer means is ``connector.stripe.outcomes``."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import aiohttp
import httpx

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


def describe_error(exc: BaseException) -> str:
    """An exception as one bounded line, ``ConnectError: refused``: what a client reports when no answer
    came (its text is the library's, never a request header, so it holds no credential of ours)."""
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
            raise TransportError("timeout", describe_error(exc)) from None
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
            raise TransportError("connect", describe_error(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError("protocol", describe_error(exc)) from None

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
            raise TransportError("timeout", describe_error(exc)) from None
        except httpx.ConnectError as exc:
            raise TransportError("connect", describe_error(exc)) from None
        except (httpx.TransportError, OSError) as exc:
            raise TransportError("protocol", describe_error(exc)) from None
        return HttpResponse(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"HttpxClient(timeouts={self.timeouts})"
