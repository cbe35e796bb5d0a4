"""The connector's exception tree: every error is classified where it is raised.

::

    ConnectorError
    ├── ConfigurationError      bad settings found at start: every problem listed, exit status 2
    ├── FatalError              the connector must stop (revoked API key, DLQ unusable under policy)
    ├── RetryableError          try the same work again later (network, 5xx, 429, timeouts)
    └── RecordRejected          this record can never become a meter event: dead-letter it
        ├── DecodeError         the bytes are not a record of the topic's schema
        ├── MappingError        the record decoded but a field breaks a rule (customer, value, time, id)
        └── StripeRejected      Stripe refused the event permanently (a 4xx other than auth/limits)

Callers catch categories, never status codes. A ``RecordRejected`` carries a stable ``code`` (for
metrics and the dead-letter headers), a human ``reason`` naming the field, and the record's Kafka
coordinates, so the dead-letter topic gets everything it needs from the exception alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from connector.records import Coordinates


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""


class ConfigurationError(ConnectorError):
    """Settings are invalid; ``problems`` lists every one of them, not just the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class FatalError(ConnectorError):
    """The connector cannot go on; it stops without committing undelivered work."""


class RetryableError(ConnectorError):
    """A transient failure: the same work may succeed later."""


class RecordRejected(ConnectorError):
    """A permanent, per-record failure that routes the record to the dead-letter topic."""

    code: str = "record_rejected"

    def __init__(
        self, reason: str, *, code: str | None = None, coordinates: Coordinates | None = None
    ) -> None:
        self.reason = reason
        if code is not None:
            self.code = code
        self.coordinates = coordinates
        super().__init__(reason)

    def at(self, coordinates: Coordinates) -> RecordRejected:
        """Attach the record's coordinates (the pure core raises before it knows them)."""
        self.coordinates = coordinates
        return self

    def __str__(self) -> str:
        where = f" at {self.coordinates}" if self.coordinates is not None else ""
        return f"{self.code}: {self.reason}{where}"


class DecodeError(RecordRejected):
    """The record's bytes could not be decoded with the topic's schema."""

    code = "decode_error"


class MappingError(RecordRejected):
    """The decoded record breaks a meter event rule; ``code`` says which."""

    code = "mapping_error"


class StripeRejected(RecordRejected):
    """Stripe answered a permanent error for this event; ``code`` is Stripe's error code."""

    code = "stripe_rejected"
