"""Sending batches of meter events to Stripe's meter event stream: attempts, session renewals, bisection of
refused events, pacing, and the back-off signal; the retry policy is ``retry``, the results ``results``.

(Over 400 lines: one class whose attempt loop, renewals and bisection share each batch's bookkeeping.)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from connector.config.secrets import redact
from connector.errors import FatalError
from connector.records import MeterEvent
from connector.stripe.http import AiohttpClient, HttpClient, Timeouts, TransportError
from connector.stripe.limits import (
    DEFAULT_API_BASE,
    DEFAULT_API_VERSION,
    DEFAULT_METER_EVENTS_BASE,
    IDEMPOTENCY_KEY,
    LIVE_RATE_LIMIT_RPS,
    MAX_EVENTS_PER_REQUEST,
    STREAM_PATH,
)
from connector.stripe.outcomes import Action, Outcome, classify
from connector.stripe.ratelimit import AimdLimiter, Sleep, TokenBucket
from connector.stripe.request_keys import Origin, request_key
from connector.stripe.results import BatchResult, Rejection, SenderStats
from connector.stripe.retry import BackoffReason, Retrier, RetryPolicy, backoff_reason
from connector.stripe.session import Session, SessionManager, SessionUnavailable

if TYPE_CHECKING:
    from connector.config.secrets import Secret
    from connector.config.settings import SenderSettings, StripeSettings

log = logging.getLogger(__name__)


# Called with the reason each time the sender starts a back-off wait: the pipeline's signal to slow down.
OnBackoff = Callable[[BackoffReason], None]


class _Job:
    """One batch's mutable bookkeeping while it is being delivered."""

    __slots__ = (
        "attempts",
        "deadline",
        "deferred",
        "docs",
        "error",
        "invalid_token_renewed",
        "origins",
        "rejected",
        "renewals",
        "retries",
        "undelivered",
    )

    def __init__(
        self, docs: list[dict[str, object]], origins: Sequence[Origin] | None, deadline: float
    ) -> None:
        self.docs = docs
        self.origins = origins
        self.deadline = deadline
        self.attempts = 0
        self.retries = 0
        self.renewals = 0
        self.invalid_token_renewed = False
        self.rejected: list[Rejection] = []
        self.undelivered: list[int] = []
        self.error: str | None = None
        self.deferred: Outcome | None = None  # Stripe said "do not retry" (Stripe-Should-Retry: false)

    def result(self, size: int) -> BatchResult:
        if not self.rejected and not self.undelivered:  # nearly every batch: skip the sorting
            return BatchResult(size, (), (), None, self.attempts, self.retries, self.renewals)
        rejected = tuple(sorted(self.rejected, key=lambda rejection: rejection.index))
        undelivered = tuple(sorted(self.undelivered))
        error = self.error if undelivered else None
        return BatchResult(size, rejected, undelivered, error, self.attempts, self.retries, self.renewals)


class MeterEventSender:
    """Posts batches of 1–100 meter events; ``send`` returns a ``BatchResult`` or raises ``FatalError``.

    Retries live here and only here (tenacity); the session manager, the HTTP client and the limiters
    never retry. Use as ``async with MeterEventSender(...) as sender:`` or call ``aclose()``, which
    closes the HTTP client only if the sender created it (``http=None``: an ``AiohttpClient`` with
    ``timeouts`` and a pool a little larger than ``max_in_flight``). ``clock`` is monotonic seconds,
    ``wall_clock`` unix seconds (for ``Retry-After`` dates); both and ``sleep`` are seams for tests.

    ``on_backoff(reason)`` is called on the sender's event loop, holding no lock, each time a back-off
    wait starts: a retry wait (``rate_limited`` after a 429, ``transport`` when no answer came,
    ``other`` otherwise) or the hold-back after ``Stripe-Should-Retry: false`` (``defer``). It must
    not block; never on a batch delivered at its first attempt.
    """

    def __init__(
        self,
        *,
        api_key: Secret | str | None = None,
        api_base: str = DEFAULT_API_BASE,
        meter_events_base: str = DEFAULT_METER_EVENTS_BASE,
        api_version: str = DEFAULT_API_VERSION,
        http: HttpClient | None = None,
        sessions: SessionManager | None = None,
        timeouts: Timeouts | None = None,
        max_in_flight: int = 128,
        rate_limit_rps: float = LIVE_RATE_LIMIT_RPS,
        session_renew_margin_s: float = 60.0,
        retry: RetryPolicy | None = None,
        max_renewals: int = 3,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_backoff: OnBackoff | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._owns_http = http is None
        self._http: HttpClient = http or AiohttpClient(timeouts=timeouts, max_connections=max_in_flight + 4)
        if sessions is None:
            if api_key is None:
                raise ValueError("pass api_key or sessions")
            sessions = SessionManager(
                http=self._http,
                api_key=api_key,
                api_base=api_base,
                api_version=api_version,
                renew_margin_s=session_renew_margin_s,
                clock=clock,
                wall_clock=wall_clock,
            )
        self.sessions = sessions
        self.url = meter_events_base.rstrip("/") + STREAM_PATH
        self.retry = retry = retry or RetryPolicy()
        self.max_renewals = max_renewals
        self.limiter = AimdLimiter(max_in_flight)
        self.bucket = TokenBucket(rate_limit_rps, clock=clock, sleep=sleep)
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._random = (rng or random.Random()).random
        self._retrier = Retrier(retry, clock=clock, sleep=sleep, draw=self._random)
        self._on_backoff = on_backoff
        self._closed = False
        self._batches = self._batches_delivered = self._batches_undelivered = 0
        self._events_delivered = self._events_rejected = self._events_undelivered = 0
        self._requests = self._retries = self._rate_limited = self._transport_errors = 0
        self._renewals = self._batches_in_flight = 0
        # Answers in a row that said "do not retry now": the wait before handing such a batch back grows
        # with them, so a Stripe that keeps saying it is not met with a resend loop.
        self._deferrals = 0

    @classmethod
    def from_settings(
        cls,
        stripe: StripeSettings,
        sender: SenderSettings,
        *,
        http: HttpClient | None = None,
        **overrides: Any,
    ) -> MeterEventSender:
        """A sender configured from ``Settings.stripe`` and ``Settings.sender``; ``overrides`` (any
        keyword of the constructor, e.g. ``on_backoff``) win."""
        options: dict[str, Any] = {
            "api_key": stripe.api_key,
            "api_base": stripe.api_base,
            "meter_events_base": stripe.meter_events_base,
            "api_version": stripe.api_version,
            "http": http,
            "timeouts": Timeouts(
                connect_s=sender.http_connect_timeout_s,
                read_s=sender.http_read_timeout_s,
                total_s=sender.http_timeout_s,
            ),
            "max_in_flight": sender.max_in_flight,
            "rate_limit_rps": sender.rate_limit_rps,
            "session_renew_margin_s": sender.session_renew_margin_s,
            "retry": RetryPolicy.from_settings(sender),
        }
        options.update(overrides)
        return cls(**options)

    # -- public ---------------------------------------------------------------------------------

    async def send(
        self,
        events: Sequence[MeterEvent],
        origins: Sequence[Origin] | None = None,
        context: str | None = None,
    ) -> BatchResult:
        """Deliver one batch; never reports an event delivered unless Stripe answered 2xx for it.

        ``context`` must be the sessions' context (``connector.stripe.contexts`` routes between them).
        ``origins[i]`` is where ``events[i]``'s record came from: every request then carries an
        ``Idempotency-Key`` naming its records (``request_keys``), which Stripe's error reports quote.

        Raises ``FatalError`` when the pipeline must stop (key or token refused, wrong endpoint);
        ``ValueError`` for a batch that is empty or larger than 100 events.
        """
        size = len(events)
        if context != self.sessions.context:  # one sender speaks for one account (stripe.contexts)
            raise ValueError(f"this sender sends in context {self.sessions.context}, not {context}")
        if not 0 < size <= MAX_EVENTS_PER_REQUEST:
            raise ValueError(f"a batch holds 1 to {MAX_EVENTS_PER_REQUEST} events, got {size}")
        if self._closed:
            raise RuntimeError("the sender is closed")
        self._batches += 1
        self._batches_in_flight += 1
        try:
            docs = [event.as_json() for event in events]
            job = _Job(docs, origins, self._clock() + self.retry.max_elapsed_s)
            outcome = await self._send_with_retries(job, self._request(job, range(size)))
            if outcome.action is Action.DELIVERED:
                self._deferrals = 0
            else:
                await self._settle(job, list(range(size)), outcome)
            if job.deferred is not None:
                await self._hold_back(job.deferred)
        finally:
            self._batches_in_flight -= 1
        return self._count(job, size)

    @property
    def concurrency(self) -> int:
        """The effective cap on requests in flight (AIMD: shrinks on 429s, grows back on successes)."""
        return self.limiter.limit

    def stats(self) -> SenderStats:
        return SenderStats(
            batches=self._batches,
            batches_delivered=self._batches_delivered,
            batches_undelivered=self._batches_undelivered,
            events_delivered=self._events_delivered,
            events_rejected=self._events_rejected,
            events_undelivered=self._events_undelivered,
            requests=self._requests,
            retries=self._retries,
            rate_limited=self._rate_limited,
            transport_errors=self._transport_errors,
            renewals=self._renewals,
            sessions_created=self.sessions.sessions_created,
            concurrency_limit=self.limiter.limit,
            requests_in_flight=self.limiter.in_flight,
            batches_in_flight=self._batches_in_flight,
            rate_limit_waits=self.bucket.waits,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.sessions.aclose()
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> MeterEventSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"MeterEventSender(url={self.url!r}, concurrency={self.limiter.limit}/{self.limiter.max_limit}, "
            f"sessions={self.sessions!r})"
        )

    __str__ = __repr__

    # -- results and back-off -------------------------------------------------------------------

    def _count(self, job: _Job, size: int) -> BatchResult:
        """The batch's result, added to the counters (and logged when events stay undelivered)."""
        rejected = len(job.rejected)
        undelivered = len(job.undelivered)
        self._events_rejected += rejected
        self._events_undelivered += undelivered
        self._events_delivered += size - rejected - undelivered
        if undelivered:
            self._batches_undelivered += 1
            log.warning(
                "batch of %d events: %d undelivered after %d requests (%s)",
                size,
                undelivered,
                job.attempts,
                job.error,
            )
        else:
            self._batches_delivered += 1
        return job.result(size)

    def _backing_off(self, reason: BackoffReason) -> None:
        if self._on_backoff is not None:
            self._on_backoff(reason)

    def _before_wait(self, job: _Job, outcome: Outcome, seconds: float) -> None:
        job.retries += 1
        self._retries += 1
        log.debug(
            "stream request failed (%s %s: %s); retry %d in %.2f s",
            outcome.status,
            outcome.code,
            outcome.message,
            job.retries,
            seconds,
        )
        self._backing_off(backoff_reason(outcome))

    async def _hold_back(self, outcome: Outcome) -> None:
        """Wait before handing back a batch Stripe asked us not to retry: ``Retry-After`` if given, else
        the backoff for the number of such answers in a row, so the pipeline's resend comes later."""
        self._deferrals += 1
        self._retries += 1
        wait = outcome.retry_after
        if wait is None:
            wait = self.retry.backoff(self._deferrals, self._random())
        self._backing_off("defer")
        await self._sleep(wait)

    # -- attempts -------------------------------------------------------------------------------

    @staticmethod
    def _request(job: _Job, indices: Sequence[int]) -> tuple[bytes, str | None]:
        """The body of a request carrying ``indices`` of the batch, and its idempotency key."""
        docs = job.docs
        body = orjson.dumps({"events": docs if len(indices) == len(docs) else [docs[i] for i in indices]})
        origins = job.origins
        if origins is None:
            return body, None
        return body, request_key((origins[i] for i in indices), body)

    async def _send_with_retries(self, job: _Job, request: tuple[bytes, str | None]) -> Outcome:
        """Send a request until it is delivered, refused, or the batch's time is up (→ the last RETRY);
        every resend carries the same body and key."""
        # The first attempt runs before tenacity is involved (see ``Retrier``): nearly all succeed.
        outcome = await self._attempt(job, request)
        if outcome.action is not Action.RETRY:
            return outcome
        return await self._retrier.resend(
            lambda: self._attempt(job, request),
            outcome,
            deadline=job.deadline,
            before_wait=lambda failed, seconds: self._before_wait(job, failed, seconds),
        )

    async def _attempt(self, job: _Job, request: tuple[bytes, str | None]) -> Outcome:
        """One logical attempt: a request, plus resends with a new token when the session expired."""
        while True:
            try:
                session = await self.sessions.current()
            except SessionUnavailable as exc:
                return Outcome(Action.RETRY, None, "session_unavailable", str(exc), exc.retry_after)
            outcome = await self._post(job, request, session)
            if outcome.action is Action.DELIVERED:
                return outcome
            outcome = outcome._replace(message=redact(outcome.message, (session.token,)))
            final = self._refusal(job, outcome)
            if final is not None:
                return final
            # RENEW_SESSION / INVALID_TOKEN: a new token and the same body, not a failed attempt.
            job.renewals += 1
            self._renewals += 1
            log.info("meter event session token refused (%s); renewing and resending", outcome.code)
            try:
                await self.sessions.renew(session)
            except SessionUnavailable as exc:
                return Outcome(Action.RETRY, None, "session_unavailable", str(exc), exc.retry_after)

    async def _post(self, job: _Job, request: tuple[bytes, str | None], session: Session) -> Outcome:
        """One stream request within the pacing limits, classified; the limiters learn from its answer."""
        body, key = request
        headers = session.headers if key is None else {**session.headers, IDEMPOTENCY_KEY: key}
        window = await self.limiter.acquire()
        try:
            await self.bucket.acquire()
            job.attempts += 1
            self._requests += 1
            response = await self._http.post(self.url, body, headers)
        except TransportError as exc:
            self.limiter.release(window)
            self._transport_errors += 1
            return classify(exc, now=self._wall_clock())
        except BaseException:
            self.limiter.release(window)
            raise
        outcome = classify(response, now=self._wall_clock())
        status = outcome.status
        self.limiter.release(window, success=outcome.action is Action.DELIVERED, overloaded=status == 429)
        if status == 429:
            self._rate_limited += 1
        return outcome

    def _refusal(self, job: _Job, outcome: Outcome) -> Outcome | None:
        """What a request that was not delivered comes to: None to resend it with a new token, else the
        outcome for the retries and the bisection; raises ``FatalError`` when it stops the pipeline."""
        action = outcome.action
        if action is Action.RENEW_SESSION:
            if job.renewals < self.max_renewals:
                return None
            return outcome._replace(
                action=Action.RETRY,
                message=f"session expired again after {job.renewals} renewals: {outcome.message}",
            )
        if action is Action.INVALID_TOKEN:
            if job.invalid_token_renewed:
                raise FatalError(
                    f"Stripe refused a freshly created meter event session token on {self.url} "
                    f"(HTTP 401 {outcome.code}: {outcome.message}); check that STRIPE_METER_EVENTS_BASE "
                    "and STRIPE_API_BASE belong to the same Stripe"
                )
            job.invalid_token_renewed = True
            return None
        if action is Action.FATAL:
            raise FatalError(
                f"Stripe refused the meter event stream request on {self.url} "
                f"(HTTP {outcome.status} {outcome.code}: {outcome.message})"
            )
        return outcome  # RETRY, DEFER or REJECT

    # -- refusals: bisect to the events Stripe refuses ------------------------------------------

    async def _settle(self, job: _Job, indices: list[int], outcome: Outcome) -> None:
        """Record a final non-delivered outcome for ``indices``; on REJECT, bisect to find the culprits.

        Stripe's 400 for a bad envelope refuses the whole request and records nothing, and which event
        it objects to is only in free text; sending halves finds the refused events without relying on
        the message's wording, and delivers the rest.
        """
        if outcome.action is Action.RETRY:
            job.undelivered.extend(indices)
            job.error = f"gave up after {job.attempts} requests: {outcome.describe()}"
            return
        if outcome.action is Action.DEFER:
            # Stripe-Should-Retry: false on a 429/5xx says nothing about the events: they stay
            # undelivered (resent later with the same identifiers), never dead-lettered.
            job.undelivered.extend(indices)
            job.deferred = outcome
            job.error = f"Stripe asked not to retry the request now: {outcome.describe()}"
            return
        if len(indices) == 1:
            job.rejected.append(
                Rejection(indices[0], outcome.code or "stripe_rejected", outcome.message, outcome.status)
            )
            return
        middle = len(indices) // 2
        async with asyncio.TaskGroup() as group:  # a FatalError in one half cancels the other
            for half in (indices[:middle], indices[middle:]):
                group.create_task(self._bisect(job, half))

    async def _bisect(self, job: _Job, indices: list[int]) -> None:
        if self._clock() >= job.deadline:
            job.undelivered.extend(indices)
            job.error = job.error or "the batch's time ran out while isolating refused events"
            return
        outcome = await self._send_with_retries(job, self._request(job, indices))
        if outcome.action is not Action.DELIVERED:
            await self._settle(job, indices, outcome)
