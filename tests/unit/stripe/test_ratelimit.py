"""Token bucket pacing and the AIMD concurrency limiter, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from connector.stripe.ratelimit import AimdLimiter, TokenBucket

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    time = FakeTime()
    bucket = TokenBucket(10, burst=5, clock=time, sleep=time.sleep)
    for _ in range(5):
        await bucket.acquire()
    assert time.sleeps == []
    started = time.now
    for _ in range(10):
        await bucket.acquire()
    # 10 more requests at 10/s take one second on the fake clock, spread over the waits.
    assert time.now - started == pytest.approx(1.0)
    assert bucket.waits == 10


async def test_bucket_refills_while_idle_but_not_past_the_burst() -> None:
    time = FakeTime()
    bucket = TokenBucket(100, burst=3, clock=time, sleep=time.sleep)
    for _ in range(3):
        await bucket.acquire()
    time.now += 60.0  # a long idle spell refills only up to the burst
    for _ in range(3):
        await bucket.acquire()
    assert time.sleeps == []
    await bucket.acquire()
    assert time.sleeps == [pytest.approx(0.01)]


async def test_bucket_default_burst_is_a_tenth_of_a_second() -> None:
    assert TokenBucket(10_000).burst == 1000
    assert TokenBucket(5).burst == 1
    with pytest.raises(ValueError):
        TokenBucket(0)


async def test_concurrent_waiters_are_spaced_by_their_reservations() -> None:
    time = FakeTime()
    waits: list[float] = []

    async def frozen_sleep(seconds: float) -> None:  # all four arrive at the same instant
        waits.append(seconds)
        await asyncio.sleep(0)

    bucket = TokenBucket(4, burst=1, clock=time, sleep=frozen_sleep)
    await bucket.acquire()
    await asyncio.gather(*(bucket.acquire() for _ in range(4)))
    # Each waiter reserved the next slot: waits of 1/4, 2/4, 3/4 and 4/4 s from that instant.
    assert waits == pytest.approx([0.25, 0.5, 0.75, 1.0])


async def test_limiter_caps_in_flight_and_hands_slots_over_in_order() -> None:
    limiter = AimdLimiter(2)
    first = await limiter.acquire()
    await limiter.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        window = await limiter.acquire()
        order.append(n)
        limiter.release(window)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert limiter.in_flight == 2 and limiter.waiting == 3 and order == []
    limiter.release(first)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert limiter.in_flight == 1


async def test_limiter_halves_once_per_window_and_grows_back() -> None:
    limiter = AimdLimiter(16)
    windows = [await limiter.acquire() for _ in range(16)]
    # The whole window gets 429s: only the first halves the limit, the rest were sent at the old rate.
    for window in windows:
        limiter.release(window, overloaded=True)
    assert limiter.limit == 8 and limiter.decreases == 1
    # A 429 on a request sent after the decrease halves again.
    limiter.release(await limiter.acquire(), overloaded=True)
    assert limiter.limit == 4 and limiter.decreases == 2
    # Additive increase: one per window of `limit` successes; 4+5+...+15 successes reach 16.
    successes = 0
    while limiter.limit < 16:
        limiter.release(await limiter.acquire(), success=True)
        successes += 1
        assert successes < 200
    assert sum(range(4, 16)) <= successes <= sum(range(4, 16)) + 12
    for _ in range(50):
        limiter.release(await limiter.acquire(), success=True)
    assert limiter.limit == 16  # never above the configured maximum


async def test_limiter_never_goes_below_its_minimum() -> None:
    limiter = AimdLimiter(4, min_limit=2)
    for _ in range(10):
        limiter.release(await limiter.acquire(), overloaded=True)
    assert limiter.limit == 2


async def test_limiter_shrinking_holds_back_waiters_until_in_flight_drops() -> None:
    limiter = AimdLimiter(4)
    windows = [await limiter.acquire() for _ in range(4)]
    limiter.release(windows[0], overloaded=True)  # limit 2, three still in flight
    task = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert not task.done()
    limiter.release(windows[1])
    await asyncio.sleep(0)
    assert not task.done()  # two in flight = the new limit
    limiter.release(windows[2])
    await task
    assert limiter.in_flight == 2


async def test_cancelled_waiter_gives_its_slot_back() -> None:
    limiter = AimdLimiter(1)
    window = await limiter.acquire()
    task = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release(window)  # hands the slot to the waiter ...
    task.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.in_flight == 0
    await asyncio.wait_for(limiter.acquire(), 1)


async def test_limiter_validates_its_arguments() -> None:
    with pytest.raises(ValueError):
        AimdLimiter(0)
    with pytest.raises(ValueError):
        AimdLimiter(4, min_limit=5)
    with pytest.raises(ValueError):
        AimdLimiter(4, decrease_factor=1.0)


async def test_cancelling_a_holder_and_its_waiters_together_raises_only_cancelled() -> None:
    # stop() cancels every send at once: the holder's release wakes the queue, dropping waiters that
    # are already cancelled; their own cancellation must not then fail to find themselves.
    limiter = AimdLimiter(1)

    async def hold() -> None:
        window = await limiter.acquire()
        try:
            await asyncio.sleep(10)
        finally:
            limiter.release(window)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    tasks = [holder, *waiters]
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert limiter.in_flight == 0
