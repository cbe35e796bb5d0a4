"""Identity and replay safety in the loop: each topic's identifier namespace, and the delivery ledger.

* **Namespaces.** Derived identifiers carry the topic's Kafka topic id (or ``TOPIC_<T>_NAMESPACE``), read
  from the cluster at start and again on every assignment: a topic re-created between two assignments
  gets its new id before any of its records is mapped, so its identifiers never repeat the old ones.
* **The ledger** (``connector.kafka.ledger``) holds, per (ledger namespace, event name, topic id,
  partition), the offset below which every record is done. It is read on every assignment — records
  below the mark are marked done without being sent (a new group, an offset reset, a second deployment
  or a restore reads them again long after Stripe forgot their identifiers) — and written after each
  commit, only ever forward. It is written *before* the commit: a crash in between leaves the ledger
  ahead of the group, which only skips records that really are done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from connector.config.settings import Settings
from connector.errors import ConfigurationError, FatalError
from connector.kafka.delivery_ledger import (
    LedgerError,
    LedgerKey,
    LedgerWriter,
    ensure_ledger_topic,
    read_ledger,
)
from connector.kafka.segments import Ranges, decode_segments, write_segments
from connector.kafka.topics import namespaces, topic_ids
from connector.pipeline.aggregation import Fixed
from connector.pipeline.offsets import PartitionOffsets
from connector.pipeline.window_totals import Snapshot
from connector.runtime.metrics import Telemetry

log = logging.getLogger("kafka_stripe.pipeline")

LEDGER_READ_TIMEOUT_S = 30.0


class UsesNamespace(Protocol):
    """A topic's mapper, as identity sees it: told the namespace its identifiers are derived with."""

    def use_namespace(self, namespace: str) -> None: ...


class IdentityPort(Protocol):
    """What the loop needs from identity handling (``Identity``, or ``StaticIdentity`` without a cluster)."""

    def start(self) -> None: ...
    def on_assign(self, partitions: Sequence[PartitionOffsets]) -> None: ...
    def before_commit(self, positions: Iterable[tuple[PartitionOffsets, int]]) -> None: ...
    def plan(self, offsets: PartitionOffsets) -> list[Fixed]: ...
    def fix_segment(self, offsets: PartitionOffsets, fixed: Fixed) -> None: ...
    def close(self) -> None: ...


class Identity:
    """Namespaces for the mappers and ledger marks for the offsets; the loop calls it at start, on each
    assignment and after each commit."""

    def __init__(
        self,
        settings: Settings,
        mappers: Mapping[str, UsesNamespace],
        telemetry: Telemetry,
        *,
        admin_factory: Callable[[dict[str, Any]], Any],
        producer_factory: Callable[[dict[str, Any]], Any],
        consumer_factory: Callable[[dict[str, Any]], Any],
    ) -> None:
        self._settings = settings
        self._mappers = mappers
        self._telemetry = telemetry
        self._admin_factory = admin_factory
        self._producer_factory = producer_factory
        self._consumer_factory = consumer_factory
        self._admin: Any = None
        self._writer: LedgerWriter | None = None
        self._namespaces: dict[str, str] = {}
        self._event_names = {t.name: t.event_name for t in settings.topics}
        self._configured = {t.name: t.namespace for t in settings.topics}
        self._written: dict[LedgerKey, int] = {}
        # Fixed pre-aggregation segments per partition (``connector.kafka.segments``), last read or written.
        self._segments: dict[LedgerKey, Ranges] = {}
        ledger_namespace = settings.pipeline.ledger_namespace
        if not ledger_namespace:
            raise ConfigurationError(["the delivery ledger needs a namespace (CONNECTOR_LEDGER_NAMESPACE)"])
        self._ledger_namespace = ledger_namespace

    def start(self) -> None:
        """Make sure the ledger topic exists and learn every topic's namespace (stops the run if not)."""
        config = dict(self._settings.producer_config())
        ledger_topic = self._settings.pipeline.ledger_topic
        self._admin = self._admin_factory(config)
        problem = ensure_ledger_topic(self._admin, ledger_topic, create=True)
        if problem is not None:
            raise ConfigurationError([problem])
        self._writer = LedgerWriter(self._producer_factory(config), ledger_topic)
        self._refresh(self._event_names)

    def on_assign(self, partitions: Sequence[PartitionOffsets]) -> None:
        """Re-read the namespaces of the assigned topics and the ledger; set each partition's skip mark."""
        if not partitions:
            return
        self._refresh({p.topic for p in partitions})
        try:
            marks = read_ledger(
                self._consumer_factory,
                dict(self._settings.consumer_config()),
                self._settings.pipeline.ledger_topic,
                timeout_s=LEDGER_READ_TIMEOUT_S,
                other=self._read_segments,
            )
        except LedgerError as exc:  # without the marks, records read again could be billed twice
            raise FatalError(str(exc)) from None
        for offsets in partitions:
            mark = marks.get(self._key(offsets))
            if mark is not None and mark.mark > 0:
                offsets.skip_below = mark.mark
                log.info(
                    "%s[%d]: the delivery ledger says records below offset %d were delivered; "
                    "any read again are skipped, not sent",
                    offsets.topic,
                    offsets.partition,
                    mark.mark,
                )

    def before_commit(self, positions: Iterable[tuple[PartitionOffsets, int]]) -> None:
        """Write the new marks of ``positions`` (forward only), and report the partitions that skipped."""
        assert self._writer is not None
        for offsets, position in positions:
            key = self._key(offsets)
            if position > max(self._written.get(key, 0), offsets.skip_below):
                self._writer.write(key, position, offsets.topic)
                self._written[key] = position
            if offsets.skipped:
                self._report_skipped(offsets)
            ranges = self._segments.get(key)
            if ranges:  # segments wholly below the commit are done: the next write leaves them out
                ranges[:] = _beyond(ranges, position)
        self._writer.poll(0)
        for failure in self._writer.failures():
            log.warning("could not write to the delivery ledger: %s", failure)

    def _read_segments(self, message: Any) -> None:
        found = decode_segments(message.key(), message.value())
        if found is not None:
            self._segments[found[0]] = found[1]

    def plan(self, offsets: PartitionOffsets) -> list[Fixed]:
        """The segments fixed for the partition (by any run before): a replay cuts its records there."""
        try:
            return [
                Fixed(start, end, None if totals is None else Snapshot.decode(totals))
                for start, end, totals in self._segments.get(self._key(offsets), ())
            ]
        except ValueError as exc:  # without the totals, a replay would send wrong window totals
            raise FatalError(f"{offsets.topic}[{offsets.partition}]: {exc}") from None

    def fix_segment(self, offsets: PartitionOffsets, fixed: Fixed) -> None:
        """Make ``fixed`` a fixed segment of the partition, durably, before its aggregates go out
        (raises ``FatalError`` if the ledger does not acknowledge it: nothing of it was sent)."""
        assert self._writer is not None
        key = self._key(offsets)
        ranges = self._segments.setdefault(key, [])
        totals = None if fixed.snapshot is None else fixed.snapshot.encode()
        ranges.append((fixed.start, fixed.end, totals))
        try:
            write_segments(self._writer.producer, self._writer.topic, key, ranges)
        except LedgerError as exc:
            raise FatalError(str(exc)) from None

    def close(self) -> None:
        if self._writer is not None:
            left = self._writer.flush(10.0)
            if left:
                log.warning("%d delivery ledger writes not acknowledged at shutdown", left)

    def _key(self, offsets: PartitionOffsets) -> LedgerKey:
        topic = offsets.topic
        namespace = self._namespaces[topic]
        return LedgerKey(self._ledger_namespace, self._event_names[topic], namespace, offsets.partition)

    def _refresh(self, topics: Iterable[str]) -> None:
        chosen = {t: self._configured[t] for t in topics}
        try:
            found = topic_ids(self._admin, [t for t, ns in chosen.items() if ns is None])
        except Exception as exc:  # the cluster did not answer: the namespaces cannot be trusted
            raise FatalError(f"could not read topic ids from the cluster: {exc}") from exc
        for topic, namespace in namespaces(chosen, found).items():
            before = self._namespaces.get(topic)
            if before is not None and before != namespace:
                log.warning("topic %s was re-created (topic id %s, was %s)", topic, namespace, before)
            self._namespaces[topic] = namespace
            self._mappers[topic].use_namespace(namespace)

    def _report_skipped(self, offsets: PartitionOffsets) -> None:
        self._telemetry.skipped(offsets.skipped)
        log.info(
            "%s[%d]: skipped %d records below offset %d, already delivered per the delivery ledger",
            offsets.topic,
            offsets.partition,
            offsets.skipped,
            offsets.skip_below,
        )
        offsets.skipped = 0


class StaticIdentity:
    """Fixed namespaces and no ledger: for a pipeline fed without a cluster (benchmarks, unit tests).
    ``kafka-stripe run`` always uses ``Identity``."""

    def __init__(self, mappers: Mapping[str, UsesNamespace], namespaces: Mapping[str, str]) -> None:
        self._mappers = mappers
        self._namespaces = dict(namespaces)

    def start(self) -> None:
        for topic, namespace in self._namespaces.items():
            self._mappers[topic].use_namespace(namespace)

    def on_assign(self, partitions: Sequence[PartitionOffsets]) -> None:
        pass

    def before_commit(self, positions: Iterable[tuple[PartitionOffsets, int]]) -> None:
        pass

    def plan(self, offsets: PartitionOffsets) -> list[Fixed]:
        return []

    def fix_segment(self, offsets: PartitionOffsets, fixed: Fixed) -> None:
        pass  # no ledger: a benchmark or unit test, never a run that must survive a crash

    def close(self) -> None:
        pass


def _beyond(ranges: Ranges, position: int) -> Ranges:
    """The ranges a reader from ``position`` may replay, and the last one below it if it carries window
    totals (a reader from ``position`` starts from them)."""
    below = [r for r in ranges if r[1] <= position]
    kept = [r for r in ranges if r[1] > position]
    return below[-1:] + kept if below and below[-1][2] is not None else kept
