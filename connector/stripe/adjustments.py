"""Cancelling a meter event (``POST /v2/billing/meter_event_adjustments``), idempotently, in one context."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import NamedTuple

import orjson

from connector.config.secrets import Redactor, Secret
from connector.errors import FatalError
from connector.stripe.http import HttpClient, TransportError
from connector.stripe.limits import ADJUSTMENTS_PATH, IDEMPOTENCY_KEY
from connector.stripe.outcomes import Action, Outcome, classify
from connector.stripe.ratelimit import Sleep
from connector.stripe.retry import Retrier, RetryPolicy
from connector.stripe.session import key_headers


class Cancel(enum.Enum):
    CANCELLED = "cancelled"  # Stripe accepted the adjustment (or replayed its earlier acceptance)
    REFUSED = "refused"  # a 4xx: Stripe will not cancel this event (why is not documented)
    UNDELIVERED = "undelivered"  # no answer to trust within the retry budget: try again later


class CancelResult(NamedTuple):
    result: Cancel
    message: str  # Stripe's reason (redacted) when refused or undelivered
    stripe_time: float | None  # Stripe's clock (its ``Date`` header, unix seconds) when it answered


def cancel_key(event_name: str, identifier: str) -> str:
    """The ``Idempotency-Key`` of cancelling ``identifier``: one per event, whichever correction asks.

    Same event ⇒ same body ⇒ same key: a replayed correction, or a second correction of the same event,
    gets Stripe's stored answer to the first (v2 keeps keys 30 days) and never cancels twice."""
    digest = hashlib.sha256(f"{event_name}\0{identifier}".encode()).hexdigest()[:40]
    return f"ks1-cancel:{digest}"


def stripe_time(headers: object) -> float | None:
    """Stripe's clock from a response's ``Date`` header (RFC 9110), None when absent or unreadable."""
    value = getattr(headers, "get", lambda _k: None)("date")
    if not isinstance(value, str):
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


class Adjuster:
    """Cancels meter events with the secret key in one context (None: the key's own account).

    Retries (429, 5xx, no answer) go through the shared ``Retrier``, with the same body and key."""

    def __init__(
        self,
        *,
        http: HttpClient,
        api_key: Secret,
        api_base: str,
        api_version: str,
        context: str | None,
        retry: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Sleep | None = None,
    ) -> None:
        self._http = http
        self._redact = Redactor([api_key.reveal()])
        self.url = api_base.rstrip("/") + ADJUSTMENTS_PATH
        self._headers = key_headers(api_key, api_version, context)
        self._retry = retry
        self._clock = clock
        self._wall_clock = wall_clock
        self._retrier = Retrier(retry, clock=clock, sleep=sleep or asyncio.sleep, draw=random.Random().random)
        self.cancels = self.refusals = 0

    async def cancel(self, event_name: str, identifier: str) -> CancelResult:
        """Cancel ``identifier``; raises ``FatalError`` when the key itself is refused (401)."""
        document = {"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}}
        body = orjson.dumps(document)
        headers = {**self._headers, IDEMPOTENCY_KEY: cancel_key(event_name, identifier)}
        seen: list[float | None] = [None]

        async def attempt() -> Outcome:
            try:
                response = await self._http.post(self.url, body, headers)
            except TransportError as exc:
                return classify(exc, now=self._wall_clock())
            seen[0] = stripe_time(response.headers)
            return classify(response, now=self._wall_clock())

        outcome = await attempt()
        if outcome.action is Action.RETRY:
            deadline = self._clock() + self._retry.max_elapsed_s
            outcome = await self._retrier.resend(
                attempt, outcome, deadline=deadline, before_wait=lambda _o, _s: None
            )
        return self._result(outcome, seen[0])

    def _result(self, outcome: Outcome, when: float | None) -> CancelResult:
        message = self._redact(outcome.describe())
        action = outcome.action
        if action is Action.DELIVERED:
            self.cancels += 1
            return CancelResult(Cancel.CANCELLED, "", when)
        if action in (Action.INVALID_TOKEN, Action.RENEW_SESSION):
            raise FatalError(f"Stripe rejected the API key when cancelling a meter event ({message})")
        if action in (Action.RETRY, Action.DEFER):
            return CancelResult(Cancel.UNDELIVERED, message, when)
        # REJECT (400, 404 through FATAL's statuses too): this event cannot be cancelled here.
        self.refusals += 1
        return CancelResult(Cancel.REFUSED, message, when)
