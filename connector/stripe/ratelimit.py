"""Client-side pacing: a token bucket on request starts and an AIMD cap on requests in flight."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` requests a second with bursts up to ``burst``; callers over budget wait their turn.

    Callers reserve a token even when none is left (the balance goes negative) and sleep until their
    reservation is covered, so waiters queue in arrival order without a lock or a wake-up list.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        # A tenth of a second's worth by default: a full second arriving in one millisecond is a spike
        # Stripe's own per-second limiter may well refuse.
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 10)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self.waits = 0  # acquisitions that had to wait (a metric: the limit is binding)

    async def acquire(self) -> None:
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - 1.0
        self._last = now
        self._tokens = tokens
        if tokens < 0:
            self.waits += 1
            try:
                await self._sleep(-tokens / self.rate)
            except asyncio.CancelledError:
                self._tokens += 1.0  # give the unused reservation back
                raise

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}/s, burst={self.burst:g})"


class AimdLimiter:
    """A cap on concurrent requests that halves on overload (429) and grows back by one per window.

    The limit starts at ``max_limit``. Each success adds ``increase / limit`` (one per ``limit``
    successes, as TCP's congestion avoidance); an overload multiplies it by ``decrease_factor``, at
    most once per window: a 429 for a request started before the last decrease says nothing new,
    because that request went out at the old, higher concurrency. Several connector instances sharing
    one Stripe account thus settle below the account's limit instead of all hammering it.
    """

    def __init__(
        self,
        max_limit: int,
        *,
        min_limit: int = 1,
        decrease_factor: float = 0.5,
        increase: float = 1.0,
    ) -> None:
        if max_limit < 1 or not 1 <= min_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        if not 0 < decrease_factor < 1:
            raise ValueError("decrease_factor must be between 0 and 1")
        self.max_limit = max_limit
        self.min_limit = min_limit
        self.decrease_factor = decrease_factor
        self.increase = increase
        self._limit = float(max_limit)
        self._in_flight = 0
        self._epoch = 0  # bumped by every decrease
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.decreases = 0

    @property
    def limit(self) -> int:
        """The effective concurrency: how many requests may be in flight now."""
        return max(self.min_limit, int(self._limit))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> int:
        """Wait for a slot; returns the window to hand back to ``release``."""
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            return self._epoch
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._in_flight -= 1  # the slot was handed over just before the cancellation
                self._wake()
            else:
                # ``_wake`` may already have dropped this cancelled waiter from the queue (a slot
                # freed by another cancelled task); then there is nothing left to remove.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return self._epoch

    def release(self, window: int, *, success: bool = False, overloaded: bool = False) -> None:
        """Free a slot; ``success`` grows the limit, ``overloaded`` (a 429) shrinks it."""
        self._in_flight -= 1
        if overloaded:
            if window == self._epoch:
                self._limit = max(float(self.min_limit), self._limit * self.decrease_factor)
                self._epoch += 1
                self.decreases += 1
        elif success and self._limit < self.max_limit:
            self._limit = min(float(self.max_limit), self._limit + self.increase / self._limit)
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._in_flight < self.limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)

    def __repr__(self) -> str:
        return f"AimdLimiter(limit={self.limit}/{self.max_limit}, in_flight={self._in_flight})"
