"""The demo's records: good ones from the sample generator, one of each malformed kind, exact totals."""

from __future__ import annotations

import math
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from types import FrameType
from typing import Any

from connector.devtools.samples import SampleRecords, encode, load_schema, worth

CUSTOMER_NAMES = (
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella Health",
    "Hooli",
    "Stark Industries",
    "Wayne Enterprises",
    "Soylent",
    "Tyrell",
    "Cyberdyne",
)


@dataclass
class Customer:
    id: str
    name: str
    records: int = 0
    total: Decimal = field(default_factory=Decimal)


@dataclass
class Dataset:
    """The encoded stream, in production order, and what Stripe should end up with."""

    messages: list[tuple[bytes, bytes]]  # (key, value)
    malformed: list[str]  # what is wrong with each malformed record
    first_ms: int  # earliest and latest timestamp of the good records
    last_ms: int

    @property
    def good(self) -> int:
        return len(self.messages) - len(self.malformed)


def _malformed(schema: Any, rng: random.Random, customer: str, now_ms: int) -> list[tuple[str, bytes]]:
    """One record of each kind the connector must refuse and dead-letter."""

    def record(**overrides: Any) -> bytes:
        fields: dict[str, Any] = {
            "identifier": None,
            "stripe_customer_id": customer,
            "value": 1,
            "timestamp": now_ms - rng.randint(0, 3_599_999),
            "attributes": None,
        }
        fields.update(overrides)
        return encode(schema, fields)

    day_ms = 86_400_000
    return [
        ("garbage bytes (not Avro)", b"GARBAGE \xff\xfe not a usage record"),
        ("truncated Avro record", record()[:6]),
        ("empty customer id", record(stripe_customer_id="")),
        ("NaN value", record(value=math.nan)),
        ("infinite value", record(value=math.inf)),
        ("non-numeric value 'twelve'", record(value="twelve")),
        ("value with 17 significant digits", record(value="12345678901234567")),
        ("timestamp 40 days old", record(timestamp=now_ms - 40 * day_ms)),
        ("timestamp 1 hour in the future", record(timestamp=now_ms + 3_600_000)),
    ]


class DeferredInterrupt:
    """Holds back SIGINT/SIGTERM while fastavro encodes: an exception raised inside its compiled code
    surfaces as a SystemError traceback, so the interrupt is raised from ``check()`` instead."""

    def __init__(self) -> None:
        self.received = False
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def __enter__(self) -> DeferredInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.check()

    def check(self) -> None:
        if self.received:
            self.received = False
            raise KeyboardInterrupt


def build_dataset(
    customers: list[Customer],
    total: int,
    seed: int | None,
    now_ms: int,
    check: Callable[[], None] = lambda: None,
) -> Dataset:
    """``total`` encoded records (the malformed ones included), spread over the customers;
    ``check()`` is called now and then, to raise a deferred interrupt."""
    schema = load_schema()
    by_id = {customer.id: customer for customer in customers}
    # A few large customers and a long tail, as real usage looks; some producers bring their own
    # idempotency key; most records carry attributes.
    samples = SampleRecords(
        list(by_id),
        seed=seed,
        identifier_share=0.25,
        attribute_share=0.8,
        weights=[1.0 / (rank + 1) for rank in range(len(customers))],
    )
    rng = samples.rng
    bad = _malformed(schema, rng, customers[0].id, now_ms)
    messages: list[tuple[bytes, bytes]] = []
    first_ms, last_ms = now_ms, 0
    for count in range(total - len(bad)):
        if count % 1000 == 0:
            check()
        record = samples.record(now_ms - rng.randint(0, 3_599_999))  # within the last hour
        customer = by_id[record["stripe_customer_id"]]
        messages.append((customer.id.encode(), encode(schema, record)))
        customer.records += 1
        customer.total += worth(record["value"])
        first_ms, last_ms = min(first_ms, record["timestamp"]), max(last_ms, record["timestamp"])
    for _reason, payload in bad:
        messages.insert(rng.randint(0, len(messages)), (customers[0].id.encode(), payload))
    return Dataset(messages, [reason for reason, _ in bad], first_ms, last_ms)
