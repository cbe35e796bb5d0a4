"""The HTTP seam: the exact headers the connector's clients send, and bodies compressed against our wish."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from connector.stripe.http import (
    NO_COMPRESSION,
    AiohttpClient,
    HttpClient,
    HttpxClient,
    Timeouts,
    TransportError,
    decode_body,
)
from connector.stripe.session import SessionManager

pytestmark = pytest.mark.anyio

KEY = "sk_test_httpunit0001secretpart"
SESSION = orjson.dumps(
    {
        "id": "bmes_1",
        "object": "v2.billing.meter_event_session",
        "authentication_token": "mes_tok_httpunit0001",
        "created": "2024-06-01T12:00:00.000Z",
        "expires_at": "2024-06-01T12:15:00.000Z",
        "livemode": False,
    }
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RawServer:
    """A minimal HTTP/1.1 server on loopback that records each request's headers exactly as they
    arrived and answers with a gzip-compressed body whatever the request asked for (as a misbehaving
    proxy would)."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        self.body = body
        self.status = status
        self.requests: list[list[tuple[str, str]]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:-2]
                headers = [(n.strip(), v.strip()) for n, v in (line.split(":", 1) for line in lines)]
                self.requests.append(headers)
                length = int(next((v for n, v in headers if n.lower() == "content-length"), "0"))
                await reader.readexactly(length)
                payload = gzip.compress(self.body)
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Encoding: gzip\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    raw = RawServer(SESSION)
    yield raw
    await raw.stop()


def clients() -> list[Any]:
    timeouts = Timeouts(connect_s=5, read_s=5, total_s=5)
    return [
        pytest.param(lambda: AiohttpClient(timeouts=timeouts), id="aiohttp"),
        pytest.param(lambda: HttpxClient(timeouts=timeouts), id="httpx"),
    ]


@pytest.mark.parametrize("make", clients())
async def test_session_and_stream_requests_send_exactly_these_headers(server: RawServer, make: Any) -> None:
    url = await server.start()
    http: HttpClient = make()
    sessions = SessionManager(http=http, api_key=KEY, api_base=url, api_version="2024-09-30.acacia")
    session = await sessions.current()  # the session JSON arrived gzipped and still parsed
    assert session.token == "mes_tok_httpunit0001"
    answer = await http.post(url + "/v2/billing/meter_event_stream", b'{"events":[]}', session.headers)
    await http.aclose()
    assert answer.body == SESSION, "decoded although identity was asked for"
    key_request, stream_request = ({n.lower(): v for n, v in r} for r in server.requests)
    common = {"accept-encoding": "identity", "content-type": "application/json"}
    common |= {"stripe-version": "2024-09-30.acacia"}
    assert key_request.items() >= (common | {"authorization": f"Bearer {KEY}"}).items()
    assert stream_request.items() >= (common | {"authorization": "Bearer mes_tok_httpunit0001"}).items()
    # Nothing else that matters: the rest is what every HTTP/1.1 client sends.
    transport = {"host", "content-length", "user-agent", "accept", "connection"}
    for request in (key_request, stream_request):
        assert set(request) - transport == set(common) | {"authorization"}
    for request in server.requests:
        names = [n.lower() for n, _ in request]
        assert names.count("accept-encoding") == 1, "one Accept-Encoding, not aiohttp's default as well"


def test_no_compression_is_identity() -> None:
    assert NO_COMPRESSION == {"Accept-Encoding": "identity"}


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, no zlib wrapper
        ("identity", lambda b: b),
        (None, lambda b: b),
        ("GZIP ", gzip.compress),
    ],
)
def test_decode_body(encoding: str | None, encode: Any) -> None:
    body = b'{"error": {"type": "temporary_session_expired"}}'
    assert decode_body(encode(body), encoding) == body


@pytest.mark.parametrize(("encoding", "body"), [("br", b"x"), ("gzip", b"not gzip"), ("deflate", b"nope")])
def test_undecodable_bodies_are_transport_errors(encoding: str, body: bytes) -> None:
    with pytest.raises(TransportError) as caught:
        decode_body(body, encoding)
    assert caught.value.kind == "protocol"


async def test_httpx_client_over_asgi_sends_identity() -> None:
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope["headers"]).get(b"accept-encoding", b"").decode() or None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    http = HttpxClient(transport=httpx.ASGITransport(app=app))
    await http.post("http://x/v2/billing/meter_event_stream", b"{}", {"Content-Type": "application/json"})
    await http.aclose()
    assert seen == ["identity"]


async def test_a_compressed_session_expiry_is_read_as_one() -> None:
    # A proxy that gzips whatever it is asked: the 401 must still say "session expired", not be
    # taken for a refused token (which would stop the pipeline after one renewal).
    from connector.stripe.outcomes import Action, classify

    expired = {
        "error": {
            "type": "temporary_session_expired",
            "code": "billing_meter_event_session_expired",
            "message": "The session has expired.",
        }
    }
    raw = RawServer(orjson.dumps(expired), status=401)
    url = await raw.start()
    for http in (AiohttpClient(), HttpxClient()):
        answer = await http.post(url + "/v2/billing/meter_event_stream", b"{}", {"Authorization": "Bearer t"})
        await http.aclose()
        assert classify(answer, now=0.0).action is Action.RENEW_SESSION
    await raw.stop()
