"""Holding back events of customers Stripe does not know yet: a cache of lookups and a waiting room (pure).

Stripe accepts an event for an unknown customer with 200 and drops it later; a sign-up may create the
customer a little after its first usage. So each customer id is looked up once (``connector.pipeline.
validation`` does the I/O): a known one is cached and its events pass at the cost of one dict lookup; the
events of one not known yet wait. While they wait, the customer is looked up again every ``recheck_s``;
found, its events are released; still unknown ``wait_s`` after an event arrived, that event is rejected
(dead-lettered as ``customer_not_found``). A customer unknown for longer than ``wait_s`` at its latest
lookup has its new events rejected at once: only customers in their first ``wait_s`` hold events, which
bounds what waits (the pipeline's buffer limit bounds it too, as waiting records are not done).

A lookup that fails (Stripe unreachable, an error answer after the client's retries) lets the events
through unchecked for ``recheck_s``: prevention must never lose usage, and Stripe's own validation and the
error-report reader still see them. So does an event arriving while ``max_waiting`` events wait already
(a cold start with many customers not yet looked up): memory stays bounded and other customers' events
keep flowing. Nothing here knows about threads, HTTP or the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_RECHECK_S = 30.0


class Verdict(Enum):
    SEND = "send"
    HOLD = "hold"  # the gate keeps the event; ``released`` or ``expired`` hands it back later
    REJECT = "reject"  # the customer has been unknown for longer than the wait


@dataclass(slots=True)
class _Missing:
    first_seen: float  # when a lookup first said "not found"
    checked_at: float  # when the latest lookup said so


@dataclass(slots=True)
class _Waiting(Generic[T]):
    items: list[tuple[T, float]] = field(default_factory=list)  # (event, deadline)


class CustomerGate(Generic[T]):
    """The consumer thread's view of which customers Stripe knows; see the module docstring."""

    def __init__(
        self, wait_s: float, cache_size: int, recheck_s: float | None = None, max_waiting: int = 10_000
    ) -> None:
        self.wait_s = wait_s
        self.max_waiting = max_waiting
        self.overflowed = 0  # events sent unchecked because the waiting room was full
        self.recheck_s = recheck_s if recheck_s is not None else min(MAX_RECHECK_S, max(wait_s / 10, 0.5))
        self.cache_size = cache_size
        self.known: dict[str, None] = {}  # insertion-ordered: the oldest is evicted first
        self._missing: dict[str, _Missing] = {}
        self._unchecked_until: dict[str, float] = {}  # lookups failed: pass unchecked until then
        self._pending: set[str] = set()  # looked up, no answer yet
        self._wanted: list[str] = []  # to look up, handed out by ``lookups``
        self._waiting: dict[str, _Waiting[T]] = {}
        self.waiting = 0  # events held

    def admit(self, customer: str, item: T, now: float) -> Verdict:
        """Whether ``item`` (an event of ``customer``) may be sent now; HOLD keeps it here."""
        if customer in self.known:
            return Verdict.SEND
        until = self._unchecked_until.get(customer)
        if until is not None:
            if now < until:
                return Verdict.SEND
            del self._unchecked_until[customer]
        missing = self._missing.get(customer)
        wait = self.wait_s
        if missing is not None and now - missing.first_seen >= wait:
            if now - missing.checked_at < self.recheck_s:
                return Verdict.REJECT
            wait = min(wait, 2 * self.recheck_s)  # unknown for long already: wait for one fresh lookup
        self._want(customer, missing, now)
        if self.waiting >= self.max_waiting:
            self.overflowed += 1
            return Verdict.SEND
        waiting = self._waiting.get(customer)
        if waiting is None:
            waiting = self._waiting[customer] = _Waiting()
        waiting.items.append((item, now + wait))
        self.waiting += 1
        return Verdict.HOLD

    def _want(self, customer: str, missing: _Missing | None, now: float) -> None:
        if customer in self._pending:
            return
        if missing is None or now - missing.checked_at >= self.recheck_s:
            self._pending.add(customer)
            self._wanted.append(customer)

    def lookups(self) -> list[str]:
        """Customer ids to look up now (each handed out once until its answer arrives)."""
        wanted, self._wanted = self._wanted, []
        return wanted

    def answered(self, customer: str, found: bool | None, now: float) -> list[T]:
        """A lookup's answer (None: it failed); returns the events that may be sent now."""
        self._pending.discard(customer)
        if found is False:
            missing = self._missing.get(customer)
            if missing is None:
                self._missing[customer] = _Missing(now, now)
            else:
                missing.checked_at = now
            return []
        self._missing.pop(customer, None)
        if found:
            self.known[customer] = None
            if len(self.known) > self.cache_size:
                del self.known[next(iter(self.known))]
        else:
            self._unchecked_until[customer] = now + self.recheck_s
        return self._release(customer)

    def _release(self, customer: str) -> list[T]:
        waiting = self._waiting.pop(customer, None)
        if waiting is None:
            return []
        self.waiting -= len(waiting.items)
        return [item for item, _deadline in waiting.items]

    def due(self, now: float) -> tuple[list[T], list[T]]:
        """Events whose wait is over: (to send, to reject). Rejected only when Stripe said "not found";
        a customer whose lookup never came back is sent unchecked rather than held for ever. Also asks
        for the re-lookups of waiting customers that are due."""
        send: list[T] = []
        reject: list[T] = []
        for customer, waiting in list(self._waiting.items()):
            missing = self._missing.get(customer)
            if missing is not None:
                self._want(customer, missing, now)
            if waiting.items[0][1] > now:
                continue
            over = [item for item, deadline in waiting.items if deadline <= now]
            waiting.items = [(item, deadline) for item, deadline in waiting.items if deadline > now]
            self.waiting -= len(over)
            (reject if missing is not None else send).extend(over)
            if not waiting.items:
                del self._waiting[customer]
        return send, reject

    def drop(self, gone: Callable[[T], bool]) -> int:
        """Forget held events for which ``gone`` is true (their partitions were revoked: the next owner
        reads them again, nothing committed past them); returns how many."""
        dropped = 0
        for customer, waiting in list(self._waiting.items()):
            kept = [(item, deadline) for item, deadline in waiting.items if not gone(item)]
            dropped += len(waiting.items) - len(kept)
            waiting.items = kept
            if not kept:
                del self._waiting[customer]
        self.waiting -= dropped
        return dropped

    def next_deadline(self) -> float | None:
        """The earliest deadline of a held event (None when nothing waits)."""
        return min((w.items[0][1] for w in self._waiting.values()), default=None)

    def held(self) -> Iterator[T]:
        for waiting in self._waiting.values():
            for item, _deadline in waiting.items:
                yield item
