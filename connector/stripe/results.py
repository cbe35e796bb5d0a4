"""What the sender reports: a batch's result event by event (``BatchResult``, ``Rejection``) and its
counters (``SenderStats``), as the pipeline, the metrics and the operator commands read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from connector.errors import StripeRejected


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event Stripe refused permanently: its index in the batch and Stripe's error."""

    index: int
    code: str
    message: str
    status: int | None

    def error(self) -> StripeRejected:
        """The dead-letter exception for this event (``code`` is Stripe's error code)."""
        return StripeRejected(self.message, code=self.code)


class BatchResult(NamedTuple):
    """What became of one batch, event by event, for the offset tracker.

    Every index is in exactly one of ``delivered`` (Stripe answered 2xx for it), ``rejected`` (Stripe
    refused it permanently: dead-letter it) and ``undelivered`` (no answer we can trust: leave it not done
    and send it again later; its identifier makes the resend harmless). ``status`` is ``"delivered"``
    when nothing is undelivered, i.e. the whole batch may be marked done.
    """

    size: int
    rejected: tuple[Rejection, ...] = ()
    undelivered: tuple[int, ...] = ()
    error: str | None = None  # why the undelivered events are undelivered (redacted)
    attempts: int = 1  # stream requests sent for this batch (resends and bisection halves included)
    retries: int = 0  # back-off waits taken
    renewals: int = 0  # session renewals this batch triggered (never counted as failed attempts)

    @property
    def status(self) -> Literal["delivered", "undelivered"]:
        return "undelivered" if self.undelivered else "delivered"

    @property
    def delivered(self) -> tuple[int, ...]:
        """Indices of the events Stripe accepted."""
        if not self.rejected and not self.undelivered:
            return tuple(range(self.size))
        other = set(self.undelivered).union(r.index for r in self.rejected)
        return tuple(i for i in range(self.size) if i not in other)


class SenderStats(NamedTuple):
    """A snapshot of the sender's counters and gauges, for metrics."""

    batches: int
    batches_delivered: int
    batches_undelivered: int
    events_delivered: int
    events_rejected: int
    events_undelivered: int
    requests: int
    retries: int
    rate_limited: int  # 429 answers
    transport_errors: int
    renewals: int
    sessions_created: int
    concurrency_limit: int
    requests_in_flight: int
    batches_in_flight: int
    rate_limit_waits: int
