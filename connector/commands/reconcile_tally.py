"""``reconcile``'s tally: usage per customer and window as Stripe would count it from the records read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from connector.commands.reconcile_range import WINDOW_SECONDS, event_millis
from connector.config.settings import TopicSettings
from connector.records import KafkaRecord, MeterEvent

NO_CUSTOMER = "(unknown customer)"
Order = tuple[int, int, int, int]  # (event ms, Kafka ms, partition, offset): "last" takes the max


@dataclass(slots=True)
class Counted:
    """One event Stripe counts in the range: a usage record's, or a correction's replacement."""

    customer: str
    window: int  # start of the window (the range start without --window)
    value: Decimal
    order: Order
    cancelled: bool = False  # a correction cancelled it (it stays known: a cancel happens once)

    @property
    def millis(self) -> int:
        return self.order[0]


@dataclass
class Tally:
    """Usage per (customer, window) as Stripe would count it from these records, in one context."""

    topic: TopicSettings
    formula: str
    start: int
    end: int
    window: str | None
    context: str | None = None  # the Stripe context reconciled; None: the platform account
    read: int = 0
    in_range: int = 0  # set by totals()
    duplicates: int = 0
    other_context: int = 0  # records whose events go to another Stripe context
    rejected: Counter[str] = field(default_factory=Counter)
    # Own identifiers (derived ones are unique by construction): the first receipt counts.
    _claimed: dict[str, tuple[tuple[int, int, int], Counted | None]] = field(default_factory=dict)
    _derived: dict[str, Counted] = field(default_factory=dict)  # in range only
    _added: dict[str, Counted] = field(default_factory=dict)  # corrections' replacements, in range

    def add_rejected(self, code: str) -> None:
        self.read += 1
        self.rejected[code] += 1

    def add(self, event: MeterEvent, record: KafkaRecord, derived_prefix: str) -> None:
        self.read += 1
        # Each context is its own Stripe account: its events, and its identifiers' deduplication,
        # are separate from this one's.
        if event.context != self.context:
            self.other_context += 1
            return
        millis = event_millis(event.timestamp)
        kafka_ms = record.timestamp_ms if record.timestamp_ms is not None else 0
        counted: Counted | None = None
        if self.in_window(millis):
            payload = event.payload
            customer = payload.get(self.topic.customer_key, NO_CUSTOMER)
            try:
                value = Decimal(payload.get(self.topic.value_key, "0"))
            except InvalidOperation:
                value = Decimal(0)
            counted = Counted(
                customer, self.window_of(millis), value, (millis, kafka_ms, record.partition, record.offset)
            )
        if event.identifier.startswith(derived_prefix):
            if counted is not None:
                self._derived[event.identifier] = counted
            return
        # An identifier of the record's own may repeat: Stripe counts the copy it received first, which
        # is the one produced first (ties broken by partition and offset), wherever its event time falls.
        receipt = (kafka_ms, record.partition, record.offset)
        previous = self._claimed.get(event.identifier)
        if previous is not None:
            self.duplicates += 1
            if previous[0] <= receipt:
                return
        self._claimed[event.identifier] = (receipt, counted)

    def in_window(self, millis: int) -> bool:
        return self.start * 1000 <= millis < self.end * 1000

    def window_of(self, millis: int) -> int:
        size = WINDOW_SECONDS[self.window] if self.window else None
        second = millis // 1000
        return self.start if size is None else second - second % size

    # -- what corrections need (``reconcile_corrections``) ------------------------------------------

    def counted(self, identifier: str) -> Counted | None:
        """The event in range Stripe would hold under ``identifier`` (cancelled ones too), if any."""
        found = self._derived.get(identifier) or self._added.get(identifier)
        if found is None:
            claimed = self._claimed.get(identifier)
            found = None if claimed is None else claimed[1]
        return found

    def add_event(self, identifier: str, customer: str, millis: int, value: Decimal, order: Order) -> None:
        """Count one more event (a correction's replacement) when its time falls in the range."""
        if self.in_window(millis):
            self._added[identifier] = Counted(customer, self.window_of(millis), value, order)

    @property
    def replacements(self) -> int:
        return len(self._added)

    # -- the totals -----------------------------------------------------------------------------------

    def totals(self) -> dict[tuple[str, int], Decimal]:
        """(customer, window start) -> aggregated value with the meter's formula."""
        usage = [*self._derived.values(), *(c for _, c in self._claimed.values() if c is not None)]
        self.in_range = len(usage)
        sums: dict[tuple[str, int], Decimal] = {}
        latest: dict[tuple[str, int], Counted] = {}
        for item in (*usage, *self._added.values()):
            key = (item.customer, item.window)
            if item.cancelled:
                # Still compared (as 0 when nothing else is left): Stripe must have let it go too.
                sums.setdefault(key, Decimal(0))
            elif self.formula == "count":
                sums[key] = sums.get(key, Decimal(0)) + 1
            elif self.formula == "last":
                best = latest.get(key)
                if best is None or item.order > best.order:
                    latest[key] = item
            else:
                sums[key] = sums.get(key, Decimal(0)) + item.value
        if self.formula == "last":
            return {key: item.value for key, item in latest.items()}
        return sums
