"""The delivery ledger: a compacted topic saying, per (namespace, event name, topic id, partition), the
offset below which every record is done — outliving consumer groups, so a second read bills nothing twice.

Record key: the JSON array ``[namespace, event_name, topic_id, partition]``; value: the JSON object
``{"mark": offset, "topic": name, "written_at": unix ms, "rewind": bool}``. Reading takes, per key, the
highest mark written after the last rewind: several writers of one key (a blue/green switch-over with the
same event name) can never move it back by racing, and only ``kafka-stripe ledger rewind`` lowers it.

The topic holds other records too: the error-report cursors (``connector.reports.cursor``), keyed by a
three-element array, which ``LedgerKey.decode`` does not take for a mark, so every reader here skips them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from connector.errors import ConnectorError
from connector.kafka.reader import PartitionReader, ReaderError, partition_metadata, watermarks


class LedgerKey(NamedTuple):
    """Whose mark: the ledger namespace (Stripe account and mode), the meter's event name, the topic's
    id (or configured namespace) and the partition."""

    namespace: str
    event_name: str
    topic_id: str
    partition: int

    def encode(self) -> bytes:
        return json.dumps(list(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> LedgerKey | None:
        try:
            value = json.loads(raw or b"")
            namespace, event_name, topic_id, partition = value
        except (ValueError, TypeError):
            return None
        texts = (namespace, event_name, topic_id)
        if not all(isinstance(x, str) for x in texts) or type(partition) is not int:
            return None
        return cls(namespace, event_name, topic_id, partition)


class LedgerMark(NamedTuple):
    """The offset below which every record of the key's partition is done."""

    mark: int
    topic: str
    written_at_ms: int
    rewind: bool = False

    def encode(self) -> bytes:
        document = {"mark": self.mark, "topic": self.topic, "written_at": self.written_at_ms}
        if self.rewind:
            document["rewind"] = True
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> LedgerMark | None:
        try:
            value = json.loads(raw or b"")
            mark, topic, written = value["mark"], value["topic"], value.get("written_at", 0)
        except (ValueError, TypeError, KeyError):
            return None
        if type(mark) is not int or not isinstance(topic, str) or type(written) is not int:
            return None
        return cls(mark, topic, written, value.get("rewind") is True)


class LedgerError(ConnectorError):
    """The ledger topic cannot be read or written."""


def merge(marks: dict[LedgerKey, LedgerMark], key: LedgerKey, mark: LedgerMark | None) -> None:
    """Apply one ledger record, in log order: a tombstone deletes, a rewind sets, anything else raises."""
    current = marks.get(key)
    if mark is None:
        marks.pop(key, None)
    elif mark.rewind or current is None or mark.mark > current.mark:
        marks[key] = mark


def read_ledger(
    consumer_factory: Callable[[dict[str, Any]], Any],
    consumer_config: dict[str, Any],
    ledger_topic: str,
    *,
    timeout_s: float = 30.0,
    other: Callable[[Any], None] | None = None,
) -> dict[LedgerKey, LedgerMark]:
    """Every mark of the ledger, read from the beginning to its end with ``assign()`` (no group);
    ``other(message)`` sees every record that is not a mark (the pre-aggregation segments)."""
    config = dict(consumer_config)
    config.update(
        {
            "group.id": f"kafka-stripe-ledger-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    consumer = consumer_factory(config)
    marks: dict[LedgerKey, LedgerMark] = {}
    try:
        partitions = partition_metadata(consumer, ledger_topic, timeout_s)
        ends = watermarks(consumer, ledger_topic, partitions, timeout_s)
        from confluent_kafka import TopicPartition

        starts = {p: low for p, (low, _high) in ends.items()}
        consumer.assign([TopicPartition(ledger_topic, p, o) for p, o in starts.items()])
        highs, lows = {p: h for p, (_l, h) in ends.items()}, dict(starts)
        for message in PartitionReader(consumer, ledger_topic, starts, highs, lows):
            key = LedgerKey.decode(message.key())
            if key is not None:
                merge(marks, key, None if message.value() is None else LedgerMark.decode(message.value()))
            elif other is not None:
                other(message)
    except ReaderError as exc:
        raise LedgerError(f"cannot read the delivery ledger {ledger_topic!r}: {exc}") from None
    finally:
        consumer.close()
    return marks


class LedgerWriter:
    """Writes marks asynchronously; delivery failures are collected (``failures()``), never raised from
    librdkafka's callback."""

    def __init__(self, producer: Any, ledger_topic: str, clock: Callable[[], float] = time.time) -> None:
        self._producer = producer
        self.topic = ledger_topic
        self._clock = clock
        self._failures: list[str] = []

    def write(self, key: LedgerKey, mark: int, topic: str, *, rewind: bool = False) -> None:
        value = LedgerMark(mark, topic, int(self._clock() * 1000), rewind).encode()

        def report(err: Any, _msg: Any) -> None:
            if err is not None:
                self._failures.append(f"{key.encode().decode()} -> {mark}: {err}")

        self._producer.produce(self.topic, key=key.encode(), value=value, on_delivery=report)

    @property
    def producer(self) -> Any:
        return self._producer

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding writes; returns how many are still not acknowledged."""
        left: int = self._producer.flush(timeout)
        return left

    def failures(self) -> list[str]:
        """The writes that failed since the last call."""
        failed, self._failures = self._failures, []
        return failed


def ensure_ledger_topic(
    admin: Any, ledger_topic: str, *, create: bool, timeout_s: float = 15.0
) -> str | None:
    """None when the ledger topic exists (or was just created, compacted); otherwise why not, naming the
    topic and how to create it."""
    how = (
        f"create it compacted, e.g. kafka-topics.sh --create --topic {ledger_topic} --partitions 1 "
        "--config cleanup.policy=compact, or set CONNECTOR_LEDGER_TOPIC to one that exists"
    )
    try:
        if ledger_topic in admin.list_topics(timeout=timeout_s).topics:
            return _policy_problem(admin, ledger_topic, how, timeout_s)
        if not create:
            return f"the delivery ledger topic {ledger_topic!r} does not exist: {how}"
        # NewTopic's public home; confluent-kafka's stubs declare it only in the C extension module.
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        new = NewTopic(ledger_topic, num_partitions=1, config={"cleanup.policy": "compact"})
        for future in admin.create_topics([new], operation_timeout=timeout_s).values():
            future.result(timeout=timeout_s)
    except Exception as exc:
        if _exists(exc):
            return None
        return f"could not create the delivery ledger topic {ledger_topic!r} ({exc}): {how}"
    return None


def _policy_problem(admin: Any, ledger_topic: str, how: str, timeout_s: float) -> str | None:
    """Why an existing ledger topic will not do: without ``cleanup.policy=compact`` its marks vanish
    after the retention period. A broker that cannot describe configs gets the benefit of the doubt."""
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    try:
        resource = ConfigResource(ConfigResource.Type.TOPIC, ledger_topic)
        (future,) = admin.describe_configs([resource], request_timeout=timeout_s).values()
        entry = future.result(timeout=timeout_s).get("cleanup.policy")
    except Exception:
        return None
    # No entry: the broker's default, which is delete.
    policy = "delete (the default)" if entry is None else str(entry.value)
    if "compact" in policy:
        return None
    return f"the delivery ledger topic {ledger_topic!r} has cleanup.policy={policy}, not compact: {how}"


def _exists(exc: Exception) -> bool:
    """Whether ``exc`` says the topic exists (another member created it first)."""
    return "TOPIC_ALREADY_EXISTS" in str(exc) or "already exists" in str(exc)
