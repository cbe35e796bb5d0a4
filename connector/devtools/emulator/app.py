"""The raw ASGI app: routing, authentication, error shapes, fault injection and the stream hot path."""
# Over 400 lines: the ASGI request cycle and its routing table are one unit.

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import orjson

from connector.devtools.emulator import adjustments, controls, handlers
from connector.devtools.emulator.clock import Clock, system_clock
from connector.devtools.emulator.config import EmulatorConfig
from connector.devtools.emulator.encoding import CONTENT_ENCODING, VARY, accepts_gzip, compress
from connector.devtools.emulator.errors import ApiError, error_body
from connector.devtools.emulator.handlers import Handler, Replayed, Request
from connector.devtools.emulator.idempotency import KeyHold
from connector.devtools.emulator.intake import stream_intake
from connector.devtools.emulator.state import EmulatorState, Tenant
from connector.devtools.emulator.stats import Stats
from connector.devtools.emulator.timestamps import http_date

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STREAM_PATH = "/v2/billing/meter_event_stream"

# Background validation: drain the queue in slices when no stream request came for IDLE_AFTER
# seconds, or a smaller slice per tick when the backlog passes BACKLOG_LIMIT events (memory bound).
TICK = 0.05
IDLE_AFTER = 0.05
IDLE_SLICE = 5_000
BUSY_SLICE = 1_000
BACKLOG_LIMIT = 5_000_000
DRAIN_SLICE = 20_000  # events validated per slice when a read waits for the queue (~50 ms)


class DroppedConnection(httpx.RemoteProtocolError):
    """Raised by the app to drop a connection mid-response (the ``drop_rate`` fault).

    Under uvicorn the connection is closed after a response head promising a body that never
    comes; in-process, ``httpx.ASGITransport`` re-raises it, so a client sees a transport error.
    """


_JSON = (b"content-type", b"application/json")
_LENGTH_2 = (b"content-length", b"2")
_REPLAYED = (b"idempotent-replayed", b"true")  # Stripe's mark on an answer replayed for a key
_OK_BODY: Message = {"type": "http.response.body", "body": b"{}", "more_body": False}
_OK_GZIP_BYTES = compress(b"{}")
_GZIP_LENGTH = (b"content-length", str(len(_OK_GZIP_BYTES)).encode())
_OK_GZIP: Message = {"type": "http.response.body", "body": _OK_GZIP_BYTES, "more_body": False}
_request_ids = itertools.count(1)
_Route = tuple[Handler, bool]  # handler, whether it needs a secret key


def _routes() -> tuple[dict[tuple[str, str], _Route], list[tuple[str, re.Pattern[str], _Route]]]:
    h = handlers
    c = controls
    exact: dict[tuple[str, str], _Route] = {
        ("POST", "/v2/billing/meter_event_session"): (h.create_session, True),
        ("POST", "/v2/billing/meter_event_adjustments"): (adjustments.create_v2, True),
        ("GET", "/v2/core/events"): (h.list_events_v2, True),
        ("POST", "/v2/core/accounts"): (h.create_account_v2, True),
        ("POST", "/v1/billing/meters"): (h.create_meter, True),
        ("GET", "/v1/billing/meters"): (h.list_meters, True),
        ("POST", "/v1/billing/meter_events"): (h.create_meter_event, True),
        ("POST", "/v1/billing/meter_event_adjustments"): (adjustments.create_v1, True),
        ("POST", "/v1/products"): (h.create_product, True),
        ("GET", "/v1/products"): (h.list_products, True),
        ("POST", "/v1/prices"): (h.create_price, True),
        ("GET", "/v1/prices"): (h.list_prices, True),
        ("POST", "/v1/plans"): (h.create_plan, True),
        ("GET", "/v1/plans"): (h.list_plans, True),
        ("POST", "/v1/customers"): (h.create_customer, True),
        ("GET", "/v1/customers"): (h.list_customers, True),
        ("GET", "/v1/account"): (h.retrieve_current_account, True),
        ("GET", "/_emulator/faults"): (c.get_faults, False),
        ("POST", "/_emulator/faults"): (c.set_faults, False),
        ("GET", "/_emulator/stats"): (c.get_stats, False),
        ("POST", "/_emulator/reset"): (c.reset, False),
        ("GET", "/_emulator/clock"): (c.get_clock, False),
        ("POST", "/_emulator/clock"): (c.advance_clock, False),
        ("GET", "/_emulator/health"): (c.health, False),
        ("POST", "/_emulator/customers"): (c.add_customer, False),
        ("GET", "/_emulator/contexts"): (c.list_contexts, False),
        ("POST", "/_emulator/contexts"): (c.add_contexts, False),
    }
    segment = r"([A-Za-z0-9_\-]+)"
    patterns = [
        ("GET", rf"/v2/core/events/{segment}", h.retrieve_event_v2),
        ("GET", rf"/v2/core/accounts/{segment}", h.retrieve_account_v2),
        ("GET", rf"/v1/billing/meters/{segment}", h.retrieve_meter),
        ("POST", rf"/v1/billing/meters/{segment}", h.update_meter),
        ("POST", rf"/v1/billing/meters/{segment}/deactivate", h.deactivate_meter),
        ("POST", rf"/v1/billing/meters/{segment}/reactivate", h.reactivate_meter),
        ("GET", rf"/v1/billing/meters/{segment}/event_summaries", h.meter_event_summaries),
        ("GET", rf"/v1/products/{segment}", h.retrieve_product),
        ("GET", rf"/v1/prices/{segment}", h.retrieve_price),
        ("POST", rf"/v1/prices/{segment}", h.update_price),
        ("GET", rf"/v1/plans/{segment}", h.retrieve_plan),
        ("POST", rf"/v1/plans/{segment}", h.update_plan),
        ("GET", rf"/v1/customers/{segment}", h.retrieve_customer),
    ]
    return exact, [
        (method, re.compile(pattern + r"\Z"), (handler, True)) for method, pattern, handler in patterns
    ]


class _Headers:
    """The request headers the emulator reads, found in one pass."""

    __slots__ = ("accept", "authorization", "idempotency_key", "stripe_account", "stripe_context")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.authorization = self.idempotency_key = self.accept = None
        context = account = None
        for name, value in headers:
            if name == b"authorization":
                self.authorization = value
            elif name == b"idempotency-key":
                self.idempotency_key = value
            elif name == b"accept-encoding":
                self.accept = value
            elif name == b"stripe-context":
                context = value
            elif name == b"stripe-account":
                account = value
        self.stripe_context = None if context is None else context.decode("latin-1").strip()
        self.stripe_account = None if account is None else account.decode("latin-1").strip()

    @property
    def contexts(self) -> tuple[str | None, str | None]:
        return self.stripe_context, self.stripe_account


def _bearer(authorization: bytes | None) -> str | None:
    """The key or token of an ``Authorization`` value (Bearer, or Basic with the key as user)."""
    if authorization is None:
        return None
    text = authorization.decode("latin-1").strip()
    scheme, _, rest = text.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return rest.strip() or None
    if scheme == "basic":
        try:
            user = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
        except ValueError:
            return None
        return user.partition(":")[0] or None
    return None


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    for name, value in headers:
        if name == wanted:
            return value.decode("latin-1")
    return None


def _wants_fresh_stats(path: str, scope: Scope) -> bool:
    return path == "/_emulator/stats" and b"process=false" not in scope.get("query_string", b"")


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class EmulatorApp:
    """ASGI callable; ``state`` is the live ``EmulatorState`` (tests read and steer it directly)."""

    def __init__(self, config: EmulatorConfig, clock: Clock = system_clock) -> None:
        self.state = EmulatorState(config, clock)
        self._exact, self._patterns = _routes()
        self._last_stream = 0.0
        self._validator: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] == STREAM_PATH and scope["method"] == "POST":
                await self._stream(scope, receive, send)
            else:
                await self._dispatch(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- the stream hot path ----------------------------------------------------------------------

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        headers = _Headers(scope["headers"])
        token = _bearer(headers.authorization)
        idempotency_key = headers.idempotency_key
        held: KeyHold | None = None
        latency = state.stream_tenant(token).faults.latency_ms
        if latency:
            state.stream_tenant(token).stats.faults_injected["latency"] += 1
            # The latency stands for Stripe executing the request: a request with the same key that
            # arrives meanwhile gets Stripe's 409 (without latency, intake is atomic: no overlap).
            held = state.hold_key(token, idempotency_key)
            try:
                await asyncio.sleep(latency / 1000)
                body = await _read_body(receive)
            except BaseException:
                if held is not None:
                    held.release()
                raise
        else:
            body = await _read_body(receive)
        self._last_stream = time.monotonic()
        # Nothing below awaits until the response is sent: faults, auth and intake are atomic.
        # Read after the awaits: a reset may have replaced the account.
        tenant = state.stream_tenant(token)
        # Decided before intake: the request's events carry it to their error reports.
        request_id = b"req_%d" % next(_request_ids)
        error: ApiError | None = None
        replayed = False
        try:
            replayed = stream_intake(
                state, tenant, token, idempotency_key, body, request_id, held, headers.contexts
            )
        except ApiError as caught:
            error = caught
        if held is not None:
            held.release()
        if error is not None:
            await self._send_error(send, error, True, request_id, headers.accept, tenant, stream=True)
            return
        await self._stream_ok(send, tenant, request_id, headers.accept, replayed)

    async def _stream_ok(
        self, send: Send, tenant: Tenant, request_id: bytes, accept: bytes | None, replayed: bool
    ) -> None:
        """The stream's 200, or the ``drop_rate`` fault's connection cut after its head."""
        faults = tenant.faults
        stats = tenant.stats
        if faults.compress:
            headers, message = self._stream_compressed(stats, request_id, accept)
        else:
            headers = [_JSON, _LENGTH_2, (b"request-id", request_id)]
            message = _OK_BODY
        headers.append((b"date", http_date(self.state.clock())))
        if replayed:
            headers.append(_REPLAYED)
            stats.idempotent_replays += 1
        if faults.drop_rate and faults.random.random() < faults.drop_rate:
            # Taken in (or replayed), then lost in transit: the client cannot tell, a retry must dedupe.
            stats.stream_requests_dropped += 1
            stats.faults_injected["dropped"] += 1
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            raise DroppedConnection("connection dropped by the emulator (drop_rate fault)")
        by_status = stats.stream_requests_by_status
        by_status[200] = by_status.get(200, 0) + 1
        by_status = stats.requests_by_status
        by_status[200] = by_status.get(200, 0) + 1
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(message)

    def _stream_compressed(
        self, stats: Stats, request_id: bytes, accept: bytes | None
    ) -> tuple[list[tuple[bytes, bytes]], Message]:
        """The stream's 200 when compression is on: gzipped if the client takes it, Vary either way."""
        if accepts_gzip(accept):
            stats.responses_compressed += 1
            return [_JSON, _GZIP_LENGTH, CONTENT_ENCODING, VARY, (b"request-id", request_id)], _OK_GZIP
        return [_JSON, _LENGTH_2, VARY, (b"request-id", request_id)], _OK_BODY

    # -- everything else ------------------------------------------------------------------------

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        controls = path.startswith("/_emulator/")
        v2 = path.startswith("/v2/") or controls
        state = self.state
        headers = _Headers(scope["headers"])
        if not controls:
            latency_tenant = state.peek_tenant(*headers.contexts)
            if latency_tenant.faults.latency_ms:
                latency_tenant.stats.faults_injected["latency"] += 1
                await asyncio.sleep(latency_tenant.faults.latency_ms / 1000)
        body = await _read_body(receive)
        request_id = b"req_%d" % next(_request_ids)
        tenant = state.tenants[None]  # counts the answer until the request is authorized in its account
        try:
            handler, needs_key, args = self._route(method, path)
            if state.pending_events and (needs_key or _wants_fresh_stats(path, scope)):
                await self._drain()
            # From here to the response nothing awaits: the handler sees and changes the state
            # atomically with respect to every other request.
            account = None
            if needs_key:
                key = _bearer(headers.authorization)
                tenant, account = state.authorize(key, *headers.contexts, v2=v2)
            request = Request(
                state=state,
                tenant=tenant,
                account=account,
                method=method,
                path=path,
                args=args,
                query=scope.get("query_string", b""),
                body=body,
                api_version=_header(scope["headers"], b"stripe-version"),
                now=state.clock(),
                request_id=request_id,
                idempotency_key=headers.idempotency_key,
            )
            status, payload = handler(request)
        except ApiError as error:
            await self._send_error(send, error, v2, request_id, headers.accept, tenant, control=controls)
            return
        extra = None
        if isinstance(payload, Replayed):
            encoded, extra = payload.body, [_REPLAYED]
            tenant.stats.idempotent_replays += 1
        else:
            encoded = orjson.dumps(payload)
        await self._send(send, status, encoded, request_id, headers.accept, tenant, extra, control=controls)

    async def _drain(self) -> None:
        """Validate what was queued before this request in slices, letting other requests run in
        between; the handler then validates any stragglers synchronously."""
        state = self.state
        remaining = state.pending_events
        while remaining > 0 and state.pending_events:
            remaining -= state.process_pending(DRAIN_SLICE)
            await asyncio.sleep(0)

    def _route(self, method: str, path: str) -> tuple[Handler, bool, tuple[str, ...]]:
        found = self._exact.get((method, path))
        if found is not None:
            return found[0], found[1], ()
        for route_method, pattern, (handler, needs_key) in self._patterns:
            if route_method == method:
                match = pattern.match(path)
                if match is not None:
                    return handler, needs_key, match.groups()
        raise ApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://docs.stripe.com/api.",
            code="not_found" if path.startswith("/v2/") else None,
        )

    async def _send(
        self,
        send: Send,
        status: int,
        body: bytes,
        request_id: bytes,
        accept: bytes | None,
        tenant: Tenant,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        control: bool = False,
        stream: bool = False,
    ) -> None:
        """One JSON response, counted and compressed by the account it was for. Control routes
        (``/_emulator/*``) are neither counted nor compressed. Every answer carries Stripe's clock in
        its ``Date`` header (uvicorn's own is off), so a client sees the emulated time."""
        stats = tenant.stats
        headers = [_JSON]
        if not control:
            by_status = stats.requests_by_status
            by_status[status] = by_status.get(status, 0) + 1
            if tenant.faults.compress:
                headers.append(VARY)
                if accepts_gzip(accept):
                    body = compress(body)
                    headers.append(CONTENT_ENCODING)
                    stats.responses_compressed += 1
        if stream:
            by_status = stats.stream_requests_by_status
            by_status[status] = by_status.get(status, 0) + 1
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"request-id", request_id))
        headers.append((b"date", http_date(self.state.clock())))
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_error(
        self,
        send: Send,
        error: ApiError,
        v2: bool,
        request_id: bytes,
        accept: bytes | None,
        tenant: Tenant,
        *,
        control: bool = False,
        stream: bool = False,
    ) -> None:
        extra = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        body = error_body(error, v2)
        await self._send(
            send, error.status, body, request_id, accept, tenant, extra, control=control, stream=stream
        )

    # -- lifespan and background validation -------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._validator = asyncio.create_task(self._validate_in_background())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._validator is not None:
                    self._validator.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._validator
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _validate_in_background(self) -> None:
        """Drain the validation queue while the stream is idle, so reads after a burst are quick."""
        state = self.state
        while True:
            await asyncio.sleep(TICK)
            while state.pending_events:
                if time.monotonic() - self._last_stream >= IDLE_AFTER:
                    state.process_pending(IDLE_SLICE)
                elif state.pending_events > BACKLOG_LIMIT:
                    state.process_pending(BUSY_SLICE)
                    break
                else:
                    break
                await asyncio.sleep(0)


def create_app(config: EmulatorConfig | None = None, clock: Clock = system_clock) -> EmulatorApp:
    """The emulator as an ASGI app; ``app.state`` is its ``EmulatorState``."""
    return EmulatorApp(config or EmulatorConfig(), clock)
