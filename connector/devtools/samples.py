"""The one generator of sample usage records (default schema): demo, sample producer, benchmarks."""

from __future__ import annotations

import io
import json
import random
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import fastavro

from connector.config.settings import DEFAULT_SCHEMA

Value = int | float | Decimal | str

# Attribute keys and the values they take; every record draws from these unless told otherwise.
ATTRIBUTES: Mapping[str, Sequence[str]] = {
    "region": ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2"),
    "endpoint": ("/v1/search", "/v1/embeddings", "/v1/chat/completions", "/v1/images"),
}
# A wider set for benchmarks: with ``attribute_keys=(1, 3)`` records carry one to three of these.
WIDE_ATTRIBUTES: Mapping[str, Sequence[str]] = {
    "region": ("us-east-1", "eu-west-1", "ap-south-1"),
    "plan": ("free", "pro", "enterprise"),
    "feature": ("search", "export", "api", "sync"),
    "model": ("small", "medium", "large"),
}
_ID_ALPHABET = string.ascii_letters + string.digits


def load_schema() -> Any:
    """The default usage record schema, parsed for fastavro."""
    return fastavro.parse_schema(json.loads(DEFAULT_SCHEMA.read_text(encoding="utf-8")))


def encode(schema: Any, record: Mapping[str, Any]) -> bytes:
    """A record as raw (schemaless) Avro bytes, as the connector reads them without a registry."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, dict(record))
    return buffer.getvalue()


def worth(value: Value) -> Decimal:
    """The exact quantity a value stands for (a double counts as its shortest decimal repr)."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def random_customer_ids(count: int, rng: random.Random) -> list[str]:
    """``count`` Stripe-shaped customer ids: ``cus_`` and 14 letters and digits."""
    return ["cus_" + "".join(rng.choices(_ID_ALPHABET, k=14)) for _ in range(count)]


@dataclass
class SampleRecords:
    """Seeded usage records: values of every union branch of ``value`` (long, double, decimal, string),
    optional own identifiers (unique), optional attributes, customers drawn with optional weights."""

    customers: Sequence[str]
    seed: int | None = None
    identifier_share: float = 0.0  # records carrying their own identifier; the others get a derived one
    attribute_share: float = 1.0  # records with attributes
    attributes: Mapping[str, Sequence[str]] = field(default_factory=lambda: ATTRIBUTES)
    attribute_keys: tuple[int, int] | None = None  # (fewest, most) keys; None: every key
    weights: Sequence[float] | None = None  # per customer; None: uniform
    rng: random.Random = field(init=False)
    _identifiers: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def value(self) -> Value:
        """A quantity in one of the schema's ``value`` branches, as different producers send them."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.55:  # long: request counts, mostly single requests, some batched
            return 1 if rng.random() < 0.6 else rng.randint(2, 50)
        if kind < 0.70:  # double with two places, as a metrics pipeline would emit them
            return round(rng.uniform(0.05, 10.0), 2)
        if kind < 0.90:  # exact decimal (Avro decimal, scale 12), e.g. GB transferred
            return Decimal(rng.randint(1, 99_999)).scaleb(-3)
        # string, as exported from CSV
        return str(rng.randint(1, 100)) if rng.random() < 0.5 else f"{rng.randint(1, 999) / 100:.2f}"

    def identifier(self) -> str | None:
        """A fresh identifier for ``identifier_share`` of the calls, else None."""
        if self.rng.random() >= self.identifier_share:
            return None
        while True:
            candidate = f"req_{self.rng.getrandbits(96):024x}"
            if candidate not in self._identifiers:
                self._identifiers.add(candidate)
                return candidate

    def attribute_map(self) -> dict[str, str] | None:
        if self.rng.random() >= self.attribute_share:
            return None
        keys = sorted(self.attributes)
        if self.attribute_keys is not None:
            keys = self.rng.sample(keys, self.rng.randint(*self.attribute_keys))
        return {key: self.rng.choice(self.attributes[key]) for key in keys}

    def customer(self) -> str:
        if self.weights is None:
            return self.rng.choice(self.customers)
        return self.rng.choices(self.customers, self.weights)[0]

    def record(self, timestamp_ms: int, customer: str | None = None) -> dict[str, Any]:
        """One usage record (a dict for the default schema) stamped ``timestamp_ms``."""
        return {
            "identifier": self.identifier(),
            "stripe_customer_id": customer or self.customer(),
            "value": self.value(),
            "timestamp": timestamp_ms,
            "attributes": self.attribute_map(),
        }

    def spread(
        self,
        count: int,
        start_ms: int,
        span_ms: int,
        span_records: int,
        *,
        first: int = 0,
        jitter_ms: int = 0,
    ) -> Iterator[dict[str, Any]]:
        """``count`` records in rough time order: the i-th (from ``first``) is stamped
        ``start_ms + i * span_ms // span_records``, up to ``jitter_ms`` earlier."""
        for i in range(first, first + count):
            jitter = self.rng.randint(0, jitter_ms) if jitter_ms else 0
            yield self.record(start_ms + i * span_ms // span_records - jitter)
