"""Stripe contexts (connected accounts): one sender, session, rate limit and adjuster per context.

Stripe scopes a meter event session to the account it was created for (``Stripe-Context`` on the
session request), rate-limits each account on its own and answers 429s per account. So each context
gets its own ``MeterEventSender`` (its own session, token bucket, AIMD window and retries): a throttled
account waits in its own sender while the others' batches keep flowing. The HTTP connection pool is
shared. ``None`` is the key's own (platform) account.

A context the key cannot act in (Stripe refuses to create its session) is remembered for
``REFUSAL_TTL_S``: its batches are rejected at once with Stripe's reason, so they are dead-lettered
rather than retried forever, and the context is tried again afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from connector.config.settings import SenderSettings, StripeSettings
from connector.records import MeterEvent
from connector.stripe.adjustments import Adjuster
from connector.stripe.http import AiohttpClient, HttpClient, Timeouts
from connector.stripe.request_keys import Origin
from connector.stripe.results import BatchResult, Rejection, SenderStats
from connector.stripe.retry import RetryPolicy
from connector.stripe.sender import MeterEventSender, OnBackoff
from connector.stripe.session import ContextRefused, SessionManager
from connector.stripe.v1 import StripeClient

log = logging.getLogger("kafka_stripe.stripe")

REFUSAL_TTL_S = 60.0
CONTEXT_REFUSED = "context_refused"  # the dead-letter code of events whose context Stripe refused
# Metrics label at most this many contexts by name; the rest are counted under "other" (bounded
# cardinality: a topic with a context field may carry thousands of tenants).
MAX_CONTEXT_LABELS = 50
PLATFORM = "platform"  # the label of the key's own account


class ContextSenders:
    """Routes each batch to its context's sender, creating senders on first use (``send``'s
    ``context``); also the per-context adjusters and meter reads corrections need."""

    def __init__(
        self,
        stripe: StripeSettings,
        sender: SenderSettings,
        *,
        on_backoff: OnBackoff | None = None,
        http: HttpClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        labelled: Sequence[str] = (),
        v1_factory: Callable[[str | None], StripeClient] | None = None,
    ) -> None:
        self._stripe = stripe
        self._settings = sender
        self._on_backoff = on_backoff
        self._owns_http = http is None
        timeouts = Timeouts(
            connect_s=sender.http_connect_timeout_s,
            read_s=sender.http_read_timeout_s,
            total_s=sender.http_timeout_s,
        )
        self._http = http or AiohttpClient(timeouts=timeouts, max_connections=sender.max_in_flight + 8)
        self._clock = clock
        # The v1 client of a context (meter reads for corrections); a seam for tests.
        self._v1 = v1_factory or (lambda context: StripeClient.from_settings(stripe, sender, context=context))
        self._senders: dict[str | None, MeterEventSender] = {}
        self._adjusters: dict[str | None, Adjuster] = {}
        self._formulas: dict[tuple[str | None, str], tuple[float, str | None]] = {}
        self._refused: dict[str, tuple[float, str]] = {}
        self._labels: dict[str | None, str] = {None: PLATFORM}
        for context in labelled:  # configured contexts are always labelled by name
            self._labels[context] = context

    # -- sending --------------------------------------------------------------------------------

    def sender_for(self, context: str | None) -> MeterEventSender:
        sender = self._senders.get(context)
        if sender is None:
            stripe, settings = self._stripe, self._settings
            sessions = SessionManager(
                http=self._http,
                api_key=stripe.api_key,
                api_base=stripe.api_base,
                api_version=stripe.api_version,
                renew_margin_s=settings.session_renew_margin_s,
                clock=self._clock,
                context=context,
            )
            # Only the platform's back-off pauses the whole pipeline; a connected account's waits
            # stay in its own sender (the buffer bound still protects memory).
            sender = MeterEventSender.from_settings(
                stripe,
                settings,
                http=self._http,
                sessions=sessions,
                on_backoff=self._on_backoff if context is None else None,
            )
            self._senders[context] = sender
        return sender

    async def send(
        self,
        events: Sequence[MeterEvent],
        origins: Sequence[Origin] | None = None,
        context: str | None = None,
    ) -> BatchResult:
        """Send one batch (all of one context) with that context's sender."""
        refused = self.refusal(context)
        if refused is not None:
            return rejected_all(len(events), refused)
        try:
            return await self.sender_for(context).send(events, origins, context)
        except ContextRefused as exc:
            assert context is not None
            return rejected_all(len(events), self._refuse(context, exc.reason))

    def refusal(self, context: str | None) -> str | None:
        """Why Stripe refused ``context`` in the last ``REFUSAL_TTL_S``, or None."""
        if context is None:
            return None
        refused = self._refused.get(context)
        if refused is None or refused[0] <= self._clock():
            return None
        return refused[1]

    def _refuse(self, context: str, reason: str) -> str:
        message = f"Stripe refused the context {context}: {reason}"
        if context not in self._refused:
            log.warning("%s; its events are dead-lettered (tried again in %.0f s)", message, REFUSAL_TTL_S)
        self._refused[context] = (self._clock() + REFUSAL_TTL_S, message)
        return message

    # -- corrections ----------------------------------------------------------------------------

    def adjuster_for(self, context: str | None) -> Adjuster:
        adjuster = self._adjusters.get(context)
        if adjuster is None:
            stripe, settings = self._stripe, self._settings
            adjuster = Adjuster(
                http=self._http,
                api_key=stripe.api_key,
                api_base=stripe.api_base,
                api_version=stripe.api_version,
                context=context,
                retry=RetryPolicy.from_settings(settings),
                clock=self._clock,
            )
            self._adjusters[context] = adjuster
        return adjuster

    async def formula(self, context: str | None, event_name: str) -> str | None:
        """The aggregation formula of the active meter for ``event_name`` in ``context`` (cached a
        minute), None when there is none; raises ``StripeApiError`` when Stripe cannot be read."""
        key = (context, event_name)
        cached = self._formulas.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]

        def read() -> str | None:
            with self._v1(context) as client:
                meter = client.active_meter(event_name)
            return None if meter is None else meter.formula

        formula = await asyncio.to_thread(read)
        self._formulas[key] = (self._clock() + 60.0, formula)
        return formula

    # -- reporting and closing ------------------------------------------------------------------

    @property
    def sessions(self) -> SessionManager | None:
        """The platform's session manager (else the first context's), for the session gauges."""
        sender = self._senders.get(None) or next(iter(self._senders.values()), None)
        return None if sender is None else sender.sessions

    def label(self, context: str | None) -> str:
        """The metrics label of ``context``: its id for the first ``MAX_CONTEXT_LABELS``, else other."""
        label = self._labels.get(context)
        if label is not None:
            return label
        if context is None or len(self._labels) > MAX_CONTEXT_LABELS:
            return "other"
        self._labels[context] = context
        return context

    def stats(self) -> SenderStats:
        """All contexts' counters added up (gauges too: they are totals over the senders)."""
        # Read on the telemetry thread: never create a sender here, only read the ones there are.
        stats = [sender.stats() for sender in list(self._senders.values())]
        if not stats:
            return SenderStats(*(0 for _ in SenderStats._fields))
        return SenderStats(*(sum(values) for values in zip(*stats, strict=True)))

    def context_stats(self) -> dict[str, SenderStats]:
        """Each labelled context's counters (contexts past the label bound added under other)."""
        result: dict[str, SenderStats] = {}
        for context, sender in list(self._senders.items()):
            label, stats = self.label(context), sender.stats()
            if label in result:
                stats = SenderStats(*(a + b for a, b in zip(result[label], stats, strict=True)))
            result[label] = stats
        return result

    async def aclose(self) -> None:
        for sender in list(self._senders.values()):
            await sender.aclose()
        if self._owns_http:
            await self._http.aclose()


def rejected_all(size: int, message: str) -> BatchResult:
    """A result refusing every event of a batch with one reason (a refused context)."""
    rejections = tuple(Rejection(i, CONTEXT_REFUSED, message, None) for i in range(size))
    return BatchResult(size, rejected=rejections)
