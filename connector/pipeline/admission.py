"""Admission before sending: events go to Stripe only while their topic's meter takes them and Stripe
knows their customer; the consumer thread's side of ``StripeWatch`` (see ``customers`` and ``meters``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

from connector.config.settings import Settings
from connector.errors import FatalError, RecordRejected
from connector.pipeline.batching import Item
from connector.pipeline.customers import CustomerGate, Verdict
from connector.pipeline.meters import changes, meter_problems
from connector.pipeline.stripe_watch import CustomerAnswer, MetersAnswer, StripeWatch
from connector.runtime.snapshot import MeterSnapshot
from connector.stripe.v1 import Meter

log = logging.getLogger("kafka_stripe.validation")

CUSTOMER_NOT_FOUND = "customer_not_found"
NO_ACTIVE_METER = "no_active_meter"


class Decisions(NamedTuple):
    """What changed since the last look: events to send or reject, topics to pause or resume."""

    send: list[Item]
    reject: list[tuple[Item, RecordRejected]]
    blocked: list[str]
    freed: list[str]


class Admission:
    """Meters and customers, checked against what ``StripeWatch`` last read."""

    def __init__(self, settings: Settings, watch: StripeWatch | None) -> None:
        validation = settings.validation
        self._watch = watch
        # The platform account's usage topics: StripeWatch reads the platform's meters and customers.
        # Connected accounts' events are validated by Stripe alone (docs/corrections-and-contexts.md).
        self._topics = tuple(t for t in settings.topics if t.kind == "usage" and t.on_platform)
        # Not for pre-aggregated topics: whether a record waits or goes depends on time, and an aggregate
        # must be rebuilt from the same records on every replay (``connector.pipeline.aggregation``).
        self.customer_keys = {t.name: t.customer_key for t in self._topics if not t.aggregate_s}
        self.verify = watch is not None and validation.verify_customers
        self.pause_on_missing = validation.on_missing_meter == "pause"
        self.gate: CustomerGate[Item] = CustomerGate(
            validation.unknown_customer_wait_s,
            validation.customer_cache_size,
            max_waiting=validation.max_waiting_records,
        )
        self._overflow_logged = 0
        self.problems: dict[str, str | None] = {t.name: None for t in self._topics}
        self.read = False  # the meters were read at least once

    def start(self) -> None:
        """Read the meters once before anything is consumed; refuse to start when customers are to be
        verified and the key may not read them."""
        if self._watch is None:
            return
        if self.verify:
            problem = self._watch.customers_problem()
            if problem is not None:
                raise FatalError(problem)
        meters = self._watch.read_meters()
        if meters is not None:
            self._apply_meters(meters)
        self._watch.start(customers=self.verify)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def refresh_meters(self) -> None:
        if self._watch is not None:
            self._watch.refresh_meters()

    # -- the hot path calls these ----------------------------------------------------------------

    def problem(self, topic: str) -> str | None:
        return self.problems.get(topic)

    def admit(self, item: Item, now: float) -> Verdict:
        """The customer's verdict for ``item`` (callers skip known customers themselves when they can)."""
        customer = item.event.payload.get(self.customer_keys[item.offsets.topic], "")
        return self.gate.admit(customer, item, now)

    def rejection(self, item: Item) -> RecordRejected:
        customer = item.event.payload.get(self.customer_keys[item.offsets.topic], "")
        return RecordRejected(
            f"Stripe has no customer '{customer}' (still unknown after CONNECTOR_UNKNOWN_CUSTOMER_WAIT_S="
            f"{self.gate.wait_s:g} s); the event was not sent",
            code=CUSTOMER_NOT_FOUND,
        )

    def meter_rejection(self, topic: str) -> RecordRejected:
        return RecordRejected(
            f"{self.problems.get(topic)}; CONNECTOR_ON_MISSING_METER=dlq: the event was not sent",
            code=NO_ACTIVE_METER,
        )

    # -- once per loop iteration -----------------------------------------------------------------

    def poll(self, now: float) -> Decisions:
        decisions = Decisions([], [], [], [])
        watch = self._watch
        if watch is None:
            return decisions
        gate = self.gate
        for answer in watch.answers():
            if isinstance(answer, CustomerAnswer):
                decisions.send.extend(gate.answered(answer.customer, answer.found, now))
            elif isinstance(answer, MetersAnswer) and answer.meters is not None:
                blocked, freed = self._apply_meters(answer.meters)
                decisions.blocked.extend(blocked)
                decisions.freed.extend(freed)
        if gate.waiting:
            send, reject = gate.due(now)
            decisions.send.extend(send)
            decisions.reject.extend((item, self.rejection(item)) for item in reject)
        wanted = gate.lookups()
        if wanted:
            watch.look_up(wanted)
        if gate.overflowed >= 2 * self._overflow_logged + 1:  # 1, 3, 7, ...: news, never a flood
            log.warning(
                "%d events sent without their customer checked: %d wait already "
                "(CONNECTOR_MAX_WAITING_RECORDS); Stripe still validates them",
                gate.overflowed,
                gate.waiting,
            )
            self._overflow_logged = gate.overflowed
        return decisions

    def _apply_meters(self, meters: Sequence[Meter]) -> tuple[list[str], list[str]]:
        problems = meter_problems(self._topics, meters)
        blocked, freed = changes(self.problems, problems)
        if not self.read:  # the first reading: every problem is news
            blocked = [t for t, problem in problems.items() if problem is not None]
            self.read = True
        self.problems = problems
        for topic in blocked:
            action = "pausing its partitions" if self.pause_on_missing else "dead-lettering its records"
            log.error("topic %s: %s; %s until it is active", topic, problems[topic], action)
        for topic in freed:
            log.info("topic %s: its meter is active again; resuming delivery", topic)
        return blocked, freed

    def drop(self, gone: Callable[[Item], bool]) -> None:
        if self.gate.waiting:
            self.gate.drop(gone)

    def meters_snapshot(self) -> list[MeterSnapshot]:
        if not self.read:
            return []
        return [MeterSnapshot(t.name, t.event_name, self.problems.get(t.name)) for t in self._topics]
