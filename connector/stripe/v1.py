"""A small synchronous client for Stripe's v1 API: meters, meter event summaries, prices, plans, adjustments.

(Over 400 lines: one client of one API, whose errors, values and form coding are read together.)

The operator commands (``check``, ``reconcile``) need a handful of read calls, not the pipeline's
throughput, so this is plain ``httpx.Client``: form-encoded requests (``a[b]=c``), JSON answers, list
pagination with ``starting_after``, and v1 error bodies turned into one readable message. The key is sent
in the ``Authorization`` header only; no message, ``repr`` or log line holds it (the shared ``Redactor``
guards the text Stripe sends back, which masks keys itself anyway).

Errors::

    StripeApiError              Stripe answered an error, or gave no usable answer
    ├── StripeConnectionError   no answer: refused, timed out, TLS, DNS
    ├── StripeAuthenticationError   401: the key is wrong, expired or revoked
    ├── StripePermissionError   403: a restricted key lacks a permission
    └── StripeNotFound          404: no such object (or route)

Idempotent GETs are retried a few times when the outcome table (``connector.stripe.outcomes``, shared with
the stream sender) says RETRY: 408, 409, 429, 5xx but 501, lost connections, ``Stripe-Should-Retry: true``;
waits honour ``Retry-After`` (seconds or an HTTP date) up to a cap of their own. POSTs never are retried.
This is a command-line client making a few calls: a read-heavy ``reconcile`` over thousands of
customers would otherwise die on the first 429 of a sandbox (25 requests/s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx

from connector.config.secrets import Redactor, Secret
from connector.errors import ConnectorError
from connector.stripe.http import HttpResponse, TransportError, describe_error
from connector.stripe.limits import (
    DEFAULT_API_BASE,
    DEFAULT_API_VERSION,
    MAX_LIST_PAGE,
    is_live_key,
    key_mode,
)
from connector.stripe.outcomes import Action, Outcome, classify

if TYPE_CHECKING:
    from connector.config.settings import SenderSettings, StripeSettings

# A command-line client waits at most this long between tries, whatever Retry-After asks.
_MAX_RETRY_WAIT_S = 20.0
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

FormValue = str | int | float | bool | None | Mapping[str, Any] | Sequence[Any]


# ----------------------------------------------------------------------------------------------- errors


class StripeApiError(ConnectorError):
    """Stripe refused a request or gave no usable answer; ``str()`` is a complete, key-free sentence."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.message = message
        self.detail = detail or message  # Stripe's own words (``error.message``) when it sent some
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        super().__init__(message)


class StripeConnectionError(StripeApiError):
    """No HTTP answer at all: the base URL is wrong, unreachable, or too slow."""


class StripeAuthenticationError(StripeApiError):
    """401: the API key was refused."""


class StripePermissionError(StripeApiError):
    """403: the key is valid but may not do this (a restricted key without the permission)."""


class StripeNotFound(StripeApiError):
    """404: no such object."""


_BY_STATUS: dict[int, type[StripeApiError]] = {
    401: StripeAuthenticationError,
    403: StripePermissionError,
    404: StripeNotFound,
}


# ----------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Meter:
    """A ``billing.meter``: what the connector needs to know about it."""

    id: str
    event_name: str
    display_name: str
    status: str  # "active" | "inactive"
    formula: str  # "sum" | "count" | "last"
    customer_key: str  # customer_mapping.event_payload_key
    value_key: str  # value_settings.event_payload_key
    livemode: bool
    # "hour" | "day" for pre-aggregated ingestion: Stripe then keeps only the latest event per customer
    # and window, so one event per record would bill only the last one. None: every event counts.
    event_time_window: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Meter:
        mapping = data.get("customer_mapping") or {}
        value = data.get("value_settings") or {}
        aggregation = data.get("default_aggregation") or {}
        return cls(
            id=str(data.get("id", "")),
            event_name=str(data.get("event_name", "")),
            display_name=str(data.get("display_name") or ""),
            status=str(data.get("status", "")),
            formula=str(aggregation.get("formula", "")),
            customer_key=str(mapping.get("event_payload_key") or "stripe_customer_id"),
            value_key=str(value.get("event_payload_key") or "value"),
            livemode=bool(data.get("livemode", False)),
            event_time_window=str(window) if (window := data.get("event_time_window")) else None,
        )


@dataclass(frozen=True, slots=True)
class MeterEventSummary:
    """One ``billing.meter_event_summary``: a customer's aggregate over [start_time, end_time)."""

    start_time: int
    end_time: int
    aggregated_value: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MeterEventSummary:
        return cls(int(data["start_time"]), int(data["end_time"]), float(data["aggregated_value"]))


# ------------------------------------------------------------------------------------------ form coding


def encode_form(params: Mapping[str, FormValue]) -> list[tuple[str, str]]:
    """Stripe's form encoding: nested mappings as ``a[b]=c``, lists as ``a[0]=x``, booleans as
    ``true``/``false``; ``None`` values are left out (Stripe reads an empty string as "unset")."""
    pairs: list[tuple[str, str]] = []

    def add(key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for inner, item in value.items():
                add(f"{key}[{inner}]", item)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                add(f"{key}[{index}]", item)
        elif isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        else:
            pairs.append((key, str(value)))

    for key, value in params.items():
        add(key, value)
    return pairs


# ----------------------------------------------------------------------------------------------- client


class StripeClient:
    """Synchronous v1 calls with the secret key. Use as a context manager, or call ``close()``.

    ``context`` makes every call in that Stripe context (a connected account).
    ``transport`` is a seam for tests (any ``httpx.BaseTransport``); ``sleep`` is the wait between
    retries of a GET (``max_retries`` of them, 0 to disable); ``wall_clock`` (unix seconds) reads
    ``Retry-After`` dates.
    """

    def __init__(
        self,
        api_key: Secret | str,
        *,
        api_base: str = DEFAULT_API_BASE,
        api_version: str | None = DEFAULT_API_VERSION,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 2,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        context: str | None = None,
    ) -> None:
        key = api_key.reveal() if isinstance(api_key, Secret) else api_key
        self._clean = Redactor([key])
        self.api_base = api_base.rstrip("/")
        self.livemode = is_live_key(key)
        self.mode = key_mode(key)  # "live" or "test": Stripe keeps the two modes' data apart
        self.max_retries = max_retries
        self._sleep = sleep
        self._wall_clock = wall_clock
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        if api_version:
            headers["Stripe-Version"] = api_version
        # A connected account's data: ``Stripe-Context`` as stripe-python sends its ``stripe_context``
        # option on v1 calls too (it also takes a context path, which ``Stripe-Account`` cannot).
        self.context = context
        if context is not None:
            headers["Stripe-Context"] = context
        # httpx advertises the encodings it can decode (gzip, deflate, and br/zstd when their packages
        # are installed) and decodes the answer itself: ``response.json()`` reads the decoded body.
        self._http = httpx.Client(
            base_url=self.api_base, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_settings(
        cls, stripe: StripeSettings, sender: SenderSettings | None = None, **overrides: Any
    ) -> StripeClient:
        """A client for ``Settings.stripe`` (``StripeSettings``), with ``Settings.sender``'s timeouts."""
        options: dict[str, Any] = {"api_base": stripe.api_base, "api_version": stripe.api_version}
        if sender is not None:
            options["timeout"] = httpx.Timeout(
                sender.http_read_timeout_s, connect=sender.http_connect_timeout_s
            )
        options.update(overrides)
        return cls(stripe.api_key, **options)

    def __repr__(self) -> str:
        return f"StripeClient(api_base={self.api_base!r}, mode={self.mode!r})"

    # -- plumbing -------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, params: Mapping[str, FormValue] | None = None
    ) -> dict[str, Any]:
        """One call: GET parameters in the query string, POST parameters as the form body."""
        pairs = encode_form(params or {})
        attempt = 0
        while True:
            try:
                response = self._send(method, path, pairs)
            except httpx.HTTPError as exc:  # timeouts, refused connections, TLS, DNS, protocol errors
                error: StripeApiError = StripeConnectionError(
                    self._clean(
                        f"could not reach Stripe at {self.api_base} ({method} {path}): {describe_error(exc)}"
                    )
                )
                failure = TransportError(_transport_kind(exc), describe_error(exc))
                outcome = classify(failure, now=self._wall_clock())
            else:
                if response.is_success:
                    return self._json(response, method, path)
                error = self._error(response, method, path)
                answer = HttpResponse(response.status_code, response.headers, response.content)
                outcome = classify(answer, now=self._wall_clock())
            if method != "GET" or outcome.action is not Action.RETRY or attempt >= self.max_retries:
                raise error
            self._sleep(_retry_wait(outcome, attempt))
            attempt += 1

    def _send(self, method: str, path: str, pairs: list[tuple[str, str]]) -> httpx.Response:
        if method == "GET":
            return self._http.request(method, f"{path}?{urlencode(pairs)}" if pairs else path)
        return self._http.request(
            method,
            path,
            content=urlencode(pairs).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def get(self, path: str, params: Mapping[str, FormValue] | None = None) -> dict[str, Any]:
        return self.request("GET", path, params)

    def post(self, path: str, params: Mapping[str, FormValue] | None = None) -> dict[str, Any]:
        return self.request("POST", path, params)

    def list_all(
        self, path: str, params: Mapping[str, FormValue] | None = None, *, page_size: int = MAX_LIST_PAGE
    ) -> Iterator[dict[str, Any]]:
        """Every item of a v1 list, page by page (``starting_after`` the last id of each page)."""
        query: dict[str, FormValue] = {**(params or {}), "limit": page_size}
        while True:
            page = self.get(path, query)
            data = page.get("data")
            if not isinstance(data, list):
                raise StripeApiError(f"GET {path}: Stripe's answer is not a list (no 'data' array)")
            yield from data
            if not page.get("has_more") or not data:
                return
            query["starting_after"] = str(data[-1]["id"])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> StripeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- meters ---------------------------------------------------------------------------------

    def list_meters(self, status: str | None = None) -> list[Meter]:
        """Every meter (``status``: ``active``/``inactive`` or both)."""
        return [Meter.from_json(m) for m in self.list_all("/v1/billing/meters", {"status": status})]

    def meter(self, meter_id: str) -> Meter:
        return Meter.from_json(self.get(f"/v1/billing/meters/{meter_id}"))

    def meters_for_event(self, event_name: str) -> list[Meter]:
        """The meters counting ``event_name``, active ones first."""
        found = [m for m in self.list_meters() if m.event_name == event_name]
        return sorted(found, key=lambda m: not m.active)

    def active_meter(self, event_name: str) -> Meter | None:
        """The active meter counting ``event_name``, if there is one."""
        return next((m for m in self.meters_for_event(event_name) if m.active), None)

    def create_meter(
        self,
        event_name: str,
        *,
        formula: str = "sum",
        display_name: str | None = None,
        customer_key: str | None = None,
        value_key: str | None = None,
    ) -> Meter:
        params: dict[str, FormValue] = {
            "display_name": display_name or event_name,
            "event_name": event_name,
            "default_aggregation": {"formula": formula},
        }
        if customer_key is not None:
            params["customer_mapping"] = {"type": "by_id", "event_payload_key": customer_key}
        if value_key is not None:
            params["value_settings"] = {"event_payload_key": value_key}
        return Meter.from_json(self.post("/v1/billing/meters", params))

    def meter_event_summaries(
        self, meter_id: str, customer: str, start_time: int, end_time: int, window: str | None = None
    ) -> list[MeterEventSummary]:
        """A customer's aggregates over [start_time, end_time) (unix seconds aligned to the minute, or to
        the hour/day with ``window``); one per window, oldest first. Windows without usage may be absent."""
        params: dict[str, FormValue] = {
            "customer": customer,
            "start_time": start_time,
            "end_time": end_time,
            "value_grouping_window": window,
        }
        items = self.list_all(f"/v1/billing/meters/{meter_id}/event_summaries", params)
        return sorted((MeterEventSummary.from_json(item) for item in items), key=lambda s: s.start_time)

    def cancel_meter_event(self, event_name: str, identifier: str) -> dict[str, Any]:
        """A ``cancel`` meter event adjustment: the event received in the last 24 hours stops counting."""
        return self.post(
            "/v1/billing/meter_event_adjustments",
            {"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}},
        )

    # -- prices and plans -----------------------------------------------------------------------

    def prices_for_meter(self, meter_id: str) -> list[dict[str, Any]]:
        """Active prices billing the meter (``recurring[meter]`` filter)."""
        return list(self.list_all("/v1/prices", {"recurring": {"meter": meter_id}, "active": True}))

    def plans_for_meter(self, meter_id: str) -> list[dict[str, Any]]:
        """Active plans billing the meter: the Plans API has no meter filter, so it is applied here."""
        return [p for p in self.list_all("/v1/plans", {"active": True}) if p.get("meter") == meter_id]

    # -- internals ------------------------------------------------------------------------------

    def _json(self, response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        try:
            document = response.json()
        except ValueError:
            raise StripeApiError(
                self._clean(
                    f"{method} {path}: Stripe answered {response.status_code} with a body that is not JSON "
                    f"({_snippet(response)})"
                ),
                status=response.status_code,
            ) from None
        if not isinstance(document, dict):
            raise StripeApiError(f"{method} {path}: Stripe's answer is not a JSON object")
        return document

    def _error(self, response: httpx.Response, method: str, path: str) -> StripeApiError:
        status = response.status_code
        kind = _BY_STATUS.get(status, StripeApiError)
        try:
            body = response.json()
            error = body.get("error") if isinstance(body, dict) else None
        except ValueError:
            error = None
        if not isinstance(error, dict):
            return kind(
                self._clean(
                    f"{method} {path}: Stripe answered {status} without an error object "
                    f"({_snippet(response)})"
                ),
                status=status,
            )
        message = str(error.get("message") or "(no message)")
        err_type = error.get("type")
        code = error.get("code")
        param = error.get("param")
        labels = ", ".join(str(x) for x in (err_type, code) if x)
        where = f" [param {param}]" if param else ""
        # A context the key cannot act in is no missing permission: Stripe's message says it all.
        hint = "" if code == "account_invalid" else _HINTS.get(status, "")
        text = f"{method} {path}: Stripe answered {status} ({labels}): {message}{where}{hint}"
        return kind(
            self._clean(text),
            status=status,
            type=None if err_type is None else str(err_type),
            code=None if code is None else str(code),
            param=None if param is None else str(param),
            detail=self._clean(message),
        )


_HINTS = {
    401: " (check STRIPE_API_KEY: it must be a current secret or restricted key of this account)",
    403: " (a restricted key needs read access to billing meters, prices and plans for this command)",
}


def _transport_kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "connect" if isinstance(exc, httpx.ConnectError) else "protocol"


def _retry_wait(outcome: Outcome, attempt: int) -> float:
    """The wait before try ``attempt + 2``: the backoff, or Stripe's ``Retry-After`` when longer (both
    capped, so a command never hangs for minutes on a sandbox's rate limit)."""
    wait = min(0.5 * 2.0**attempt, _MAX_RETRY_WAIT_S)
    if outcome.retry_after is not None and outcome.retry_after > 0:
        wait = max(wait, min(outcome.retry_after, _MAX_RETRY_WAIT_S))
    return wait


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return repr(text[:200] + ("..." if len(text) > 200 else "")) if text else "empty body"
