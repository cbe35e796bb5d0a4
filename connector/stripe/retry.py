"""The stream sender's retry policy: exponential backoff with full jitter under a per-batch deadline,
run through tenacity, and the reason each back-off wait is reported with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tenacity import AsyncRetrying, RetryCallState, retry_if_result

from connector.stripe.outcomes import Action, Outcome
from connector.stripe.ratelimit import Sleep

if TYPE_CHECKING:
    from connector.config.settings import SenderSettings

Attempt = Callable[[], Awaitable[Outcome]]
# Why the sender waits: a 429, no answer at all, any other retryable answer, or Stripe-Should-Retry: false.
BackoffReason = Literal["rate_limited", "transport", "other", "defer"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, a cap per wait and a cap on the total time per batch."""

    max_elapsed_s: float = 300.0
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 30.0

    @classmethod
    def from_settings(cls, sender: SenderSettings) -> RetryPolicy:
        """``CONNECTOR_RETRY_*`` as a policy (the stream sender's and the adjustments')."""
        return cls(
            max_elapsed_s=sender.retry_max_elapsed_s,
            initial_backoff_s=sender.retry_initial_backoff_ms / 1000,
            max_backoff_s=sender.retry_max_backoff_ms / 1000,
        )

    def backoff(self, attempt: int, draw: float) -> float:
        """The wait after failed attempt number ``attempt`` (1-based); ``draw`` is uniform in [0, 1)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** min(attempt - 1, 60))
        return draw * ceiling

    def wait(self, outcome: Outcome, attempt: int, draw: float) -> float:
        """The wait before resending after ``outcome``: Stripe's ``Retry-After`` when it gave one (a floor,
        jittered by up to one initial backoff so the batches that got it do not return together), else
        the backoff for ``attempt``."""
        if outcome.retry_after is not None:
            return outcome.retry_after + draw * self.initial_backoff_s
        return self.backoff(attempt, draw)


def backoff_reason(outcome: Outcome) -> BackoffReason:
    """The reason a retry wait after ``outcome`` is reported with (``defer`` is the sender's hold-back)."""
    if outcome.status == 429:
        return "rate_limited"
    if outcome.status is None:
        return "transport"
    return "other"


class Retrier:
    """Resends with tenacity until an attempt is not RETRY or the next wait would pass the deadline.

    The caller makes the first attempt itself (most requests succeed at once, and tenacity's per-call
    objects form reference cycles that only the cyclic GC frees: holding every batch through them
    roughly doubled the CPU per request, 505 → 956 µs) and hands its outcome in.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float],
        sleep: Sleep,
        draw: Callable[[], float],
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._draw = draw

    async def resend(
        self,
        attempt: Attempt,
        first: Outcome,
        *,
        deadline: float,
        before_wait: Callable[[Outcome, float], None],
    ) -> Outcome:
        """Back off after ``first`` (a RETRY) and call ``attempt`` again, as often as the deadline allows;
        ``before_wait(outcome, seconds)`` runs as each wait starts. Returns the last outcome."""
        pending = [first]  # tenacity's attempt 1 is the one already made: its wait starts from it

        async def call() -> Outcome:
            return pending.pop() if pending else await attempt()

        def stop(state: RetryCallState) -> bool:
            # Give up now rather than sleep past the deadline: the batch goes back as undelivered.
            return self._clock() + state.upcoming_sleep >= deadline

        def before_sleep(state: RetryCallState) -> None:
            before_wait(_last_outcome(state), state.upcoming_sleep)

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop,
            wait=self._wait,
            retry=retry_if_result(_is_retry),
            before_sleep=before_sleep,
            retry_error_callback=_last_outcome,
        )
        result: Outcome = await retrying(call)
        return result

    def _wait(self, state: RetryCallState) -> float:
        return self.policy.wait(_last_outcome(state), state.attempt_number, self._draw())


def _is_retry(outcome: Outcome) -> bool:
    return outcome.action is Action.RETRY


def _last_outcome(state: RetryCallState) -> Outcome:
    assert state.outcome is not None
    result: Outcome = state.outcome.result()
    return result
