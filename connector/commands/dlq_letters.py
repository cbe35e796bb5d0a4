"""``dlq replay``'s vocabulary: a dead letter and the record it stands for, what became of it, the totals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from connector.kafka.deadletter import DeadLetterHeaders
from connector.records import Coordinates, KafkaRecord, MeterEvent

# Stripe deduplicates an identifier for 24 hours.
IDENTIFIER_WINDOW_S = 24 * 3600

Status = Literal["delivered", "would send", "still failing", "skipped", "undelivered"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record of the dead-letter topic and, when its headers say, the original record it stands for."""

    where: Coordinates  # in the dead-letter topic
    original: KafkaRecord | None  # rebuilt from the headers; None when they are missing or garbled
    code: str  # why it was dead-lettered (kafka_stripe.error.code)
    reason: str
    problem: str = ""  # why it cannot be replayed (original is None)
    namespace: str | None = None  # the identifier namespace of its first attempt, when the headers say

    @property
    def label(self) -> str:
        return str(self.original.coordinates) if self.original is not None else str(self.where)


def parse_dead_letter(
    where: Coordinates,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int | None,
    headers: Sequence[tuple[str, bytes | None]],
) -> DeadLetter:
    """Rebuild the original record from a dead letter's headers (``DeadLetterHeaders.read``)."""
    read = DeadLetterHeaders.read(headers)
    original = read.original(key, value, timestamp_ms)
    return DeadLetter(where, original, read.code, read.reason, read.problem, read.namespace)


@dataclass(slots=True)
class Outcome:
    """What became of one dead letter in this replay."""

    dead_letter: DeadLetter
    status: Status
    detail: str = ""
    event: MeterEvent | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Totals:
    """How many dead letters were read, and how many ended in each status."""

    read: int = 0
    delivered: int = 0
    would_send: int = 0
    still_failing: int = 0
    skipped: int = 0
    undelivered: int = 0
    warnings: int = 0

    def count(self, outcome: Outcome) -> None:
        name = outcome.status.replace(" ", "_")
        setattr(self, name, getattr(self, name) + 1)
        self.warnings += len(outcome.warnings)


def age_warning(dead_letter: DeadLetter, now_ms: int) -> str | None:
    """Replaying a record first sent more than 24 hours ago is no longer deduplicated by Stripe."""
    record = dead_letter.original
    if record is None or record.timestamp_ms is None:
        return None
    age_s = (now_ms - record.timestamp_ms) / 1000
    if age_s <= IDENTIFIER_WINDOW_S:
        return None
    return (
        f"the original record is {age_s / 86_400:.1f} days old, beyond Stripe's 24-hour identifier window: "
        "Stripe no longer deduplicates it, so if it was ever accepted (by an earlier replay, or by the "
        "connector after a restart) it now counts twice; the connector never sends a record it dead-lettered"
    )


# Mapping refusals for the record's age: said once more in plain words, as replaying cannot fix them.
AGE_CODES = {
    "timestamp_too_far_in_past": (
        "its event timestamp is older than Stripe's 35-day window: Stripe refuses it, so this usage can no "
        "longer be metered (bill it another way, e.g. an invoice item)"
    ),
    "timestamp_in_future": "its event timestamp is still more than the allowed tolerance ahead of now",
}


def outcome_line(outcome: Outcome) -> str:
    """The one line printed for a dead letter: status, original coordinates, event or reason."""
    dead_letter = outcome.dead_letter
    head = f"{outcome.status:<14} {dead_letter.label}"
    if dead_letter.original is not None:
        head += f" (dead letter {dead_letter.where.partition}@{dead_letter.where.offset})"
    event = outcome.event
    if event is not None and outcome.status in ("delivered", "would send"):
        customer_value = " ".join(f"{k}={v}" for k, v in list(event.payload.items())[:4])
        text = f"{head}  {event.identifier}  {event.timestamp}  {customer_value}"
        if dead_letter.code:
            text += f"  (was {dead_letter.code})"
        return text
    return f"{head}  {outcome.detail}" if outcome.detail else head
