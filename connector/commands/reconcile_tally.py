"""``reconcile``'s tally: usage per customer and window as Stripe would count it from the records read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from connector.commands.reconcile_range import WINDOW_SECONDS, event_millis
from connector.config.settings import TopicSettings
from connector.records import KafkaRecord, MeterEvent

NO_CUSTOMER = "(unknown customer)"


@dataclass(slots=True)
class _Counted:
    customer: str
    window: int  # start of the window (the range start without --window)
    value: Decimal
    order: tuple[int, int, int, int]  # (event ms, Kafka ms, partition, offset): "last" takes the max


@dataclass
class Tally:
    """Usage per (customer, window) as Stripe would count it from these records."""

    topic: TopicSettings
    formula: str
    start: int
    end: int
    window: str | None
    read: int = 0
    in_range: int = 0  # set by totals()
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # Own identifiers (derived ones are unique by construction): the first receipt counts.
    _claimed: dict[str, tuple[tuple[int, int, int], _Counted | None]] = field(default_factory=dict)
    _derived: list[_Counted] = field(default_factory=list)

    def add_rejected(self, code: str) -> None:
        self.read += 1
        self.rejected[code] += 1

    def add(self, event: MeterEvent, record: KafkaRecord, derived_prefix: str) -> None:
        self.read += 1
        millis = event_millis(event.timestamp)
        kafka_ms = record.timestamp_ms if record.timestamp_ms is not None else 0
        counted: _Counted | None = None
        if self.start * 1000 <= millis < self.end * 1000:
            payload = event.payload
            customer = payload.get(self.topic.customer_key, NO_CUSTOMER)
            try:
                value = Decimal(payload.get(self.topic.value_key, "0"))
            except InvalidOperation:
                value = Decimal(0)
            size = WINDOW_SECONDS[self.window] if self.window else None
            second = millis // 1000
            window = self.start if size is None else second - second % size
            counted = _Counted(customer, window, value, (millis, kafka_ms, record.partition, record.offset))
        if event.identifier.startswith(derived_prefix):
            if counted is not None:
                self._derived.append(counted)
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

    def totals(self) -> dict[tuple[str, int], Decimal]:
        """(customer, window start) -> aggregated value with the meter's formula."""
        counted = self._derived + [c for _, c in self._claimed.values() if c is not None]
        self.in_range = len(counted)
        sums: dict[tuple[str, int], Decimal] = {}
        latest: dict[tuple[str, int], _Counted] = {}
        for item in counted:
            key = (item.customer, item.window)
            if self.formula == "count":
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
