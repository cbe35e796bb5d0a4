"""The sender thread: an asyncio loop in a daemon thread running the Stripe sender, fed batch by batch.

Batches arrive with ``call_soon_threadsafe``; each result goes back through the ``done`` callback, which
must only hand it over (the consumer thread owns the offsets). Sends wait for a slot of the in-flight cap
here, not inside the sender, so a batch whose partitions were revoked meanwhile is dropped unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from connector.errors import FatalError
from connector.pipeline.batching import Batch
from connector.records import MeterEvent
from connector.stripe.request_keys import Origin
from connector.stripe.results import BatchResult, SenderStats

log = logging.getLogger("kafka_stripe.pipeline")

THREAD_NAME = "kafka-stripe-sender"  # benchmarks find the thread by this name to read its CPU time

T = TypeVar("T")
OnBackoff = Callable[[str], None]  # the sender's back-off signal: called with the reason on its thread


class BatchSender(Protocol):
    """The Stripe side as the pipeline sees it (``connector.stripe.sender.MeterEventSender``)."""

    async def send(
        self,
        events: Sequence[MeterEvent],
        origins: Sequence[Origin] | None = None,
        context: str | None = None,
    ) -> BatchResult: ...

    def stats(self) -> SenderStats: ...

    async def aclose(self) -> None: ...


# Builds the sender on its own thread (an aiohttp session belongs to the loop that made it), given the
# callback to call when a back-off wait starts.
SenderFactory = Callable[[OnBackoff], BatchSender]


class Failed(NamedTuple):
    """Stands in for a ``BatchResult`` when the sender raised instead of answering, or was skipped."""

    reason: str
    fatal: FatalError | None = None  # the pipeline must stop
    abandoned: bool = False  # not sent: every record belongs to partitions revoked meanwhile


ABANDONED = Failed("partitions revoked before the batch was sent", abandoned=True)

Done = Callable[[Batch, "BatchResult | Failed"], None]


class SenderThread:
    """An asyncio loop in a daemon thread, running the sender."""

    def __init__(
        self,
        factory: SenderFactory,
        on_backoff: OnBackoff,
        max_in_flight: int,
        observe_send: Callable[[float], None],
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        namespace_of: Callable[[str], str] | None = None,
    ) -> None:
        self._factory = factory
        # A topic's namespace (as in its identifiers), for the requests' idempotency keys; None: no keys.
        self._namespace_of = namespace_of
        self._on_backoff = on_backoff
        self._observe_send = observe_send
        self._max_in_flight = max_in_flight
        # The in-flight cap, one per Stripe context: a throttled account's batches waiting in its sender
        # must not take the slots of the others.
        self._gates: dict[str | None, asyncio.Semaphore] = {}
        self._loop = loop_factory()
        self._ready = threading.Event()
        self._sender: BatchSender | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._sender = self._factory(self._on_backoff)
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def submit(self, batch: Batch, done: Done) -> None:
        """Send ``batch``; ``done(batch, result)`` is called on the sender thread when it is over."""
        sender = self._sender
        assert sender is not None

        async def send() -> None:
            result: BatchResult | Failed
            gate = self._gates.get(batch.context)
            if gate is None:  # made on the sender's loop, which the semaphore belongs to
                gate = self._gates[batch.context] = asyncio.Semaphore(self._max_in_flight)
            try:
                async with gate:
                    if all(offsets.released for offsets in batch.partitions):
                        result = ABANDONED
                    else:
                        started = time.monotonic()
                        origins = None if self._namespace_of is None else batch.origins(self._namespace_of)
                        result = await sender.send(batch.events, origins, batch.context)
                        self._observe_send(time.monotonic() - started)
            except FatalError as exc:
                result = Failed(str(exc), fatal=exc)
            except Exception as exc:  # a bug must not lose the batch: it stays undone and is resent
                log.exception("sender failed unexpectedly")
                result = Failed(f"{type(exc).__name__}: {exc}")
            done(batch, result)

        # Not run_coroutine_threadsafe: nobody waits for a result here (done() hands it over), so the
        # thread-safe future it chains to every batch would be pure overhead on the sender's thread.
        self._loop.call_soon_threadsafe(self._start, send)

    def call(self, work: Callable[[BatchSender], Awaitable[T]], done: Callable[[T | Failed], None]) -> None:
        """Run ``work(sender)`` on the sender's loop (a correction); ``done`` gets its result, or
        ``Failed`` when it raised, on the sender thread."""
        sender = self._sender
        assert sender is not None

        async def run() -> None:
            result: T | Failed
            try:
                result = await work(sender)
            except FatalError as exc:
                result = Failed(str(exc), fatal=exc)
            except Exception as exc:  # a bug must not lose the record: it stays undone and is retried
                log.exception("correction failed unexpectedly")
                result = Failed(f"{type(exc).__name__}: {exc}")
            done(result)

        self._loop.call_soon_threadsafe(self._start, run)

    def _start(self, send: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = self._loop.create_task(send())
        # The loop keeps only weak references to tasks: this set keeps each one until it is done.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def sender(self) -> BatchSender | None:
        return self._sender

    def stop(self, timeout: float = 5.0) -> None:
        """Abandon sends still running (their records stay uncommitted), close the sender, end the loop."""
        sender = self._sender

        async def close() -> None:
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if sender is not None:
                await sender.aclose()

        if self._loop.is_running():
            # Best effort: the run already has its outcome, and a sender that fails to close loses nothing.
            with contextlib.suppress(BaseException):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
