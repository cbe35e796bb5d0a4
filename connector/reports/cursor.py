"""The durable cursor of error reports: which reports are done, and the open intent, kept in the ledger topic.

One record per (ledger namespace, consumer group), always on partition 0 of the delivery ledger topic
(``CONNECTOR_LEDGER_TOPIC``, compacted, so the latest record per key is kept)::

    key    ["kafka-stripe.error-reports", "<ledger namespace>", "<group id>"]
    value  {"floor": 1717244100.123, "seen": {"evt_…": 1717244160.5, …},
            "intent": null | {"report": "evt_…", "offsets": [["usage.dlq", 0, 1234], …]},
            "written_at": <unix ms>}

The key is a three-element array, so the delivery ledger's reader (four elements) ignores it, and the
value is the whole state: each record replaces the previous one, so compaction can never leave half of
it. ``floor`` and ``seen`` together say which reports are done: every report created at or before
``floor``, and the ids in ``seen`` (created after it). Stripe may create events slightly out of order,
so the list asks for everything after ``floor`` while ``floor`` trails the newest done report by the
lookback; ``seen`` remembers what was done inside that window so nothing is repeated.

Per group, not only per namespace: two deployments that read different topics into one Stripe account
each route the samples of their own topics, so each needs its own progress through the same reports.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from connector.errors import ConnectorError
from connector.kafka.reader import PartitionReader, partition_metadata, watermarks
from connector.reports.report import EventRef

KIND = "kafka-stripe.error-reports"
CURSOR_PARTITION = 0  # the ledger topic's partition holding every cursor; its owner is the poller
LOOKBACK_S = 300.0  # how far before the newest done report the list reaches back (Stripe's reordering)
MAX_SEEN = 2_000  # ids remembered inside the lookback; beyond, the floor rises past the oldest


class CursorError(ConnectorError):
    """The cursor cannot be read or written (Kafka did not answer or refused)."""


@dataclass(frozen=True, slots=True)
class CursorKey:
    """Whose cursor: the ledger namespace (Stripe account and mode) and the consumer group."""

    namespace: str
    group: str

    def encode(self) -> bytes:
        return json.dumps([KIND, self.namespace, self.group], separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> CursorKey | None:
        try:
            kind, namespace, group = json.loads(raw or b"")
        except (ValueError, TypeError):
            return None
        if kind != KIND or not isinstance(namespace, str) or not isinstance(group, str):
            return None
        return cls(namespace, group)


DlqOffsets = tuple[tuple[str, int, int], ...]  # (dead-letter topic, partition, offset)


@dataclass(frozen=True, slots=True)
class Intent:
    """A report whose dead letters may have been written in part: where the dead-letter topics ended
    before the first of them (a lower bound: reading from there finds every one)."""

    report: str
    offsets: DlqOffsets

    def to_json(self) -> dict[str, Any]:
        return {"report": self.report, "offsets": [list(entry) for entry in self.offsets]}

    @classmethod
    def from_json(cls, value: Any) -> Intent:
        report, offsets = value["report"], value["offsets"]
        if not isinstance(report, str) or not report or not isinstance(offsets, list):
            raise ValueError("intent")
        entries = tuple((str(t), int(p), int(o)) for t, p, o in offsets)
        return cls(report, entries)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Which reports are done (``floor``, ``seen``) and the report being written (``intent``)."""

    floor: float  # unix seconds, Stripe's clock: every report created at or before it is done
    seen: Mapping[str, float] = field(default_factory=dict)  # done reports after the floor: id -> created
    intent: Intent | None = None

    @classmethod
    def starting(cls, now: float, lookback_s: float = LOOKBACK_S) -> Cursor:
        """A group's first cursor: reports of the last ``lookback_s`` before ``now``, then all later ones."""
        return cls(now - lookback_s)

    def is_done(self, ref: EventRef) -> bool:
        return ref.created <= self.floor or ref.id in self.seen

    def opening(self, intent: Intent) -> Cursor:
        return replace(self, intent=intent)

    def done(self, ref: EventRef, lookback_s: float = LOOKBACK_S, max_seen: int = MAX_SEEN) -> Cursor:
        """``ref`` is done (its intent, if any, closed): the floor follows the newest done report at
        ``lookback_s`` behind, and only ids after it are remembered (at most ``max_seen``)."""
        seen = dict(self.seen)
        seen[ref.id] = ref.created
        floor = max(self.floor, max(seen.values()) - lookback_s)
        kept = sorted((created, event_id) for event_id, created in seen.items() if created > floor)
        if len(kept) > max_seen:
            dropped = kept[: len(kept) - max_seen]
            floor = max(floor, dropped[-1][0])
            kept = [(c, i) for c, i in kept if c > floor]
        return Cursor(floor, {event_id: created for created, event_id in kept}, None)

    def encode(self, written_at_ms: int) -> bytes:
        document = {
            "floor": self.floor,
            "seen": dict(self.seen),
            "intent": None if self.intent is None else self.intent.to_json(),
            "written_at": written_at_ms,
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Cursor | None:
        """The cursor a record holds; None for a tombstone or anything else."""
        try:
            value = json.loads(raw or b"")
            floor, seen = float(value["floor"]), value["seen"]
            intent = None if value.get("intent") is None else Intent.from_json(value["intent"])
            if not math.isfinite(floor) or not isinstance(seen, dict):
                return None
            return cls(floor, {str(k): float(v) for k, v in seen.items()}, intent)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class CursorStore:
    """Reads and writes one group's cursor in the ledger topic (partition ``CURSOR_PARTITION``)."""

    def __init__(
        self,
        key: CursorKey,
        ledger_topic: str,
        *,
        producer: Any,
        consumer_factory: Callable[[dict[str, Any]], Any],
        consumer_config: Mapping[str, Any],
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.topic = ledger_topic
        self._producer = producer
        self._consumer_factory = consumer_factory
        self._consumer_config = dict(consumer_config)
        self._timeout_s = timeout_s
        self._clock = clock

    def load(self) -> Cursor | None:
        """The latest cursor of the key, read from the start of the partition; None when there is none."""
        config = dict(self._consumer_config)
        config.update(
            {
                "group.id": f"kafka-stripe-cursor-reader-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        consumer = self._consumer_factory(config)
        wanted = self.key.encode()
        found: Cursor | None = None
        try:
            from confluent_kafka import TopicPartition

            if CURSOR_PARTITION not in partition_metadata(consumer, self.topic, self._timeout_s):
                return None
            ends = watermarks(consumer, self.topic, [CURSOR_PARTITION], self._timeout_s)
            low, high = ends[CURSOR_PARTITION]
            consumer.assign([TopicPartition(self.topic, CURSOR_PARTITION, low)])
            reader = PartitionReader(
                consumer,
                self.topic,
                {CURSOR_PARTITION: low},
                {CURSOR_PARTITION: high},
                {CURSOR_PARTITION: low},
            )
            for message in reader:
                if message.key() == wanted:
                    found = Cursor.decode(message.value())  # a tombstone starts the group afresh
        except Exception as exc:  # ReaderError, KafkaException: the cursor is read again next poll
            raise CursorError(f"cannot read the error-report cursor from {self.topic!r}: {exc}") from None
        finally:
            consumer.close()
        return found

    def save(self, cursor: Cursor) -> None:
        """Write ``cursor`` and wait until the broker acknowledged it (``CursorError`` if it did not)."""
        failures: list[str] = []

        def report(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        value = cursor.encode(int(self._clock() * 1000))
        try:
            self._producer.produce(
                self.topic, key=self.key.encode(), value=value, partition=CURSOR_PARTITION, on_delivery=report
            )
        except Exception as exc:  # a full local queue, a fatal producer
            raise CursorError(f"cannot write the error-report cursor to {self.topic!r}: {exc}") from None
        left = self._producer.flush(self._timeout_s)
        if left or failures:
            why = failures[0] if failures else f"not acknowledged within {self._timeout_s:g} s"
            raise CursorError(f"cannot write the error-report cursor to {self.topic!r}: {why}")
