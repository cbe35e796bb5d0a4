"""Applying one correction on the sender thread: cancel the original, then send its replacement, or
after Stripe's 24-hour window send the difference as one compensating event.

The order of steps and why a replay is harmless:

1. Cancel the original (``stripe.adjustments``). The request's idempotency key is derived from the
   original event alone, so a replayed correction (or a second correction of the same event) gets
   Stripe's stored answer and never cancels twice.
2. Accepted → send the replacement, if any, as an event whose identifier is derived from the
   correction record (Stripe deduplicates a resend for 24 hours, the delivery ledger after that).
3. Refused → was the window the reason? Stripe does not document how a cancel fails, so the rule is
   ours: the original's event time is at most ``MAX_FUTURE_SECONDS`` after Stripe received it, so if
   Stripe's clock (its ``Date`` header) is less than 24 h minus that past the event time, the window
   cannot have passed: the event was never received (or was cancelled by someone else) and the
   correction is dead-lettered as ``cancel_refused``. Otherwise the window passed: for a ``sum`` meter
   with the original value known, one compensating event (replacement − original, possibly negative)
   goes out with the correction's identifier; anything else is dead-lettered as
   ``adjustment_window_passed``.

A correction is done only when each step it needs was accepted; until then it stays undone and is
tried again from step 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from connector.errors import RecordRejected
from connector.mapping.corrections import Correction
from connector.mapping.values import format_value
from connector.records import MeterEvent
from connector.stripe.adjustments import Adjuster, Cancel
from connector.stripe.limits import CANCEL_WINDOW_SECONDS, MAX_FUTURE_SECONDS
from connector.stripe.request_keys import Origin
from connector.stripe.results import BatchResult
from connector.stripe.v1 import StripeApiError

CANCEL_REFUSED = "cancel_refused"
WINDOW_PASSED = "adjustment_window_passed"


class CorrectionJob(NamedTuple):
    """A correction on its way, with what marks its record done or dead-letters it."""

    correction: Correction
    message: Any  # the consumed message (``ConsumedMessage``)
    offsets: Any  # the partition epoch it was consumed under (``PartitionOffsets``)
    origin: Origin  # where the correction record lives: its replacement's idempotency key names it


class Corrected(NamedTuple):
    """How a correction ended: ``action`` when done, ``error`` when it must be dead-lettered,
    ``undelivered`` (with ``reason``) when it must be tried again."""

    action: str = ""  # cancelled | replaced | compensated | unchanged
    error: RecordRejected | None = None
    undelivered: bool = False
    reason: str = ""


class StripePort(Protocol):
    """What corrections need of Stripe, per context (``connector.stripe.contexts.ContextSenders``)."""

    def refusal(self, context: str | None) -> str | None: ...

    def adjuster_for(self, context: str | None) -> Adjuster: ...

    async def formula(self, context: str | None, event_name: str) -> str | None: ...

    async def send(
        self,
        events: Sequence[MeterEvent],
        origins: Sequence[Origin] | None = None,
        context: str | None = None,
    ) -> BatchResult: ...


class Keys(NamedTuple):
    customer_key: str
    value_key: str


async def apply_correction(
    job: CorrectionJob, stripe: StripePort, keys: Keys, wall_clock: Callable[[], float] = time.time
) -> Corrected:
    """Apply one correction (see the module docstring); never raises for Stripe's answers."""
    correction = job.correction
    refused = stripe.refusal(correction.context)
    if refused is not None:
        return Corrected(error=RecordRejected(refused, code="context_refused"))
    cancel = await stripe.adjuster_for(correction.context).cancel(correction.event_name, correction.original)
    if cancel.result is Cancel.UNDELIVERED:
        return Corrected(undelivered=True, reason=cancel.message)
    if cancel.result is Cancel.CANCELLED:
        if correction.replacement_value is None:
            return Corrected("cancelled")
        return await _send(job, stripe, keys, correction.replacement_value, "replaced")
    now = cancel.stripe_time if cancel.stripe_time is not None else wall_clock()
    if now - correction.timestamp_ms / 1000 < CANCEL_WINDOW_SECONDS - MAX_FUTURE_SECONDS:
        return Corrected(
            error=RecordRejected(
                f"Stripe refused to cancel {correction.original} ({cancel.message}) although its event "
                "time is within 24 hours: Stripe never received it, or it was cancelled already",
                code=CANCEL_REFUSED,
            )
        )
    return await _compensate(job, stripe, keys, cancel.message)


async def _compensate(job: CorrectionJob, stripe: StripePort, keys: Keys, refusal: str) -> Corrected:
    correction = job.correction
    try:
        formula = await stripe.formula(correction.context, correction.event_name)
    except StripeApiError as exc:
        return Corrected(undelivered=True, reason=f"reading the meter failed: {exc}")
    if formula != "sum" or correction.original_value is None:
        why = (
            "the original_value is unknown"
            if correction.original_value is None
            else f"the meter aggregates by {formula or 'no active meter'}, not sum"
        )
        return Corrected(
            error=RecordRejected(
                f"Stripe can no longer cancel {correction.original} ({refusal}) and {why}, so no "
                "compensating event can correct it",
                code=WINDOW_PASSED,
            )
        )
    delta = Decimal(correction.replacement_value or "0") - Decimal(correction.original_value)
    if delta == 0:
        return Corrected("unchanged")
    return await _send(job, stripe, keys, format_value(delta, "compensation"), "compensated")


async def _send(job: CorrectionJob, stripe: StripePort, keys: Keys, value: str, action: str) -> Corrected:
    correction = job.correction
    event = correction.event(value, keys.customer_key, keys.value_key)
    result = await stripe.send([event], [job.origin], correction.context)
    if result.rejected:
        return Corrected(error=result.rejected[0].error())
    if result.undelivered:
        return Corrected(undelivered=True, reason=result.error or "undelivered")
    return Corrected(action)
