"""Samples of an error report → the records they are about: pure matching, and a thin Kafka re-read shell.

A sample names the *request* that carried a failing event (its ``Idempotency-Key``), never the event.
The key (``connector.stripe.request_keys``) names, per partition, the offset range the request's records
lie in; the range may also hold records that went in other requests. So the records of those ranges are
read again, mapped again with their topic's ``Mapper``, and the failing ones picked by the sample's
message: the customer id for customer codes, the value for value codes, the event name for meter codes,
each compared with the message's tokens as a whole (quoted tokens when the message quotes any, its words
otherwise), never as a substring.

Samples of one request, code and tokens form a group: Stripe sends one sample per failing event, so a
group of ``n`` samples maps when exactly ``n`` records of its ranges match, one each. Anything else is not
guessed: no match, more or fewer matches than samples, a record two groups could claim (ambiguous), a key
that is not the connector's, truncated, of a namespace no configured topic has now, or ranges whose
records are gone — such samples are counted and logged as unmapped.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from connector.config.settings import TopicSettings
from connector.errors import RecordRejected
from connector.kafka.reader import PartitionReader, partition_metadata, watermarks
from connector.mapping.mapper import Mapper
from connector.records import KafkaRecord
from connector.reports.report import Sample
from connector.stripe.request_keys import KeyRange, parse_request_key

Field = Literal["customer", "value", "event_name"]
_FIELDS: dict[str, Field] = {
    "meter_event_customer_not_found": "customer",
    "meter_event_invalid_value": "value",
    "meter_event_value_too_many_digits": "value",
    "archived_meter": "event_name",
    "no_meter": "event_name",
}
_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")
_PUNCTUATION = ".,;:!?()[]{}<>`'\""

# Why a sample is not mapped (the log line's words).
FOREIGN_KEY = "its request key is not one the connector makes"
TRUNCATED = "its request key was cut short, naming only some of the request's records"
UNKNOWN_NAMESPACE = "its request key names a namespace no configured topic has now"
RECORDS_GONE = "the records of its request are no longer all in Kafka"
NO_FIELD = "its code names no record field to match"
NO_TOKEN = "its message names nothing to match"
NO_MATCH = "no record of its request matches its message"
AMBIGUOUS = "records of its request match it and other samples alike, or more than it has samples"


def field_for(code: str) -> Field | None:
    """Which value of a record a code's message names (None: none the connector can match)."""
    return _FIELDS.get(code)


def tokens(message: str) -> frozenset[str]:
    """The message's quoted tokens if it quotes any, else its words without surrounding punctuation."""
    quoted = [a or b for a, b in _QUOTED.findall(message)]
    if quoted:
        return frozenset(quoted)
    return frozenset(w for w in (word.strip(_PUNCTUATION) for word in message.split()) if w)


class Candidate(NamedTuple):
    """A record read again, with the values its meter event carried."""

    record: KafkaRecord
    namespace: str
    customer: str
    value: str
    event_name: str


@dataclass(frozen=True, slots=True)
class RangeRead:
    """The records of one key range that still map to meter events (by offset), and whether the whole
    range could be read (False when records before its end are gone)."""

    records: Mapping[int, Candidate]
    complete: bool


class Placement(NamedTuple):
    """A sample and the record it is about, or why there is none."""

    sample: Sample
    candidate: Candidate | None
    reason: str = ""


Reads = Mapping[KeyRange, RangeRead | None]  # None: no configured topic has the range's namespace


def ranges_needed(samples: Iterable[Sample]) -> set[KeyRange]:
    """Every key range the samples' keys name (what the shell must read)."""
    needed: set[KeyRange] = set()
    for sample in samples:
        key = parse_request_key(sample.idempotency_key)
        if key is not None and not key.truncated and field_for(sample.code) is not None:
            needed.update(key.ranges)
    return needed


def place(samples: Sequence[Sample], reads: Reads) -> list[Placement]:
    """Each sample with its record, or the reason it has none (see the module docstring)."""
    placements: list[Placement] = []
    groups: dict[tuple[str, str, frozenset[str]], list[Sample]] = defaultdict(list)
    for sample in samples:
        reason = _unplaceable(sample, reads)
        if reason:
            placements.append(Placement(sample, None, reason))
        else:
            groups[(sample.idempotency_key, sample.code, tokens(sample.message))].append(sample)
    matched = {group: _matches(group, reads) for group in groups}
    claims = Counter(c.record.coordinates for found in matched.values() for c in found)
    for group, members in groups.items():
        found = matched[group]
        if not found:
            reason = NO_MATCH
        elif len(found) != len(members) or any(claims[c.record.coordinates] > 1 for c in found):
            reason = AMBIGUOUS
        else:
            placements.extend(Placement(s, c) for s, c in zip(members, found, strict=True))
            continue
        placements.extend(Placement(s, None, reason) for s in members)
    return placements


def _unplaceable(sample: Sample, reads: Reads) -> str:
    """Why ``sample`` cannot be placed before any matching ("" when it may be)."""
    if field_for(sample.code) is None:
        return NO_FIELD
    key = parse_request_key(sample.idempotency_key)
    if key is None or not key.ranges:
        return FOREIGN_KEY
    if key.truncated:
        return TRUNCATED
    found = [reads.get(r) for r in key.ranges]
    if any(read is None for read in found):
        return UNKNOWN_NAMESPACE
    if not all(read is not None and read.complete for read in found):
        return RECORDS_GONE
    return "" if tokens(sample.message) else NO_TOKEN


def _matches(group: tuple[str, str, frozenset[str]], reads: Reads) -> list[Candidate]:
    """The records of the group's ranges whose value named by the code is one of the tokens."""
    idempotency_key, code, wanted = group
    key = parse_request_key(idempotency_key)
    field = field_for(code)
    assert key is not None and field is not None  # checked by _unplaceable
    found: list[Candidate] = []
    for key_range in key.ranges:
        read = reads[key_range]
        assert read is not None
        found += [c for c in read.records.values() if getattr(c, field) in wanted]
    return sorted(found, key=lambda c: c.record.coordinates)


# ------------------------------------------------------------------------------------ the Kafka shell


class RecordSource:
    """Reads key ranges again from Kafka and maps their records with each topic's ``Mapper``.

    ``namespaces()`` gives each configured topic's namespace now (topic id or ``TOPIC_<T>_NAMESPACE``);
    a range of any other namespace is not read (None). One consumer per topic and call, by ``assign()``.
    """

    def __init__(
        self,
        topics: Sequence[TopicSettings],
        mappers: Mapping[str, Mapper],
        namespaces: Callable[[], Mapping[str, str]],
        *,
        consumer_factory: Callable[[dict[str, Any]], Any],
        consumer_config: Mapping[str, Any],
        timeout_s: float = 30.0,
    ) -> None:
        self._topics = {t.name: t for t in topics}
        self._mappers = mappers
        self._namespaces = namespaces
        self._consumer_factory = consumer_factory
        self._consumer_config = dict(consumer_config)
        self._timeout_s = timeout_s

    def read(self, ranges: Iterable[KeyRange], now_ms: int) -> dict[KeyRange, RangeRead | None]:
        """Each range's records as they map now (``now_ms`` bounds their timestamps, as at sending)."""
        by_namespace = {ns: topic for topic, ns in self._namespaces().items()}
        result: dict[KeyRange, RangeRead | None] = {}
        per_topic: dict[str, list[KeyRange]] = defaultdict(list)
        for key_range in ranges:
            topic = by_namespace.get(key_range.namespace)
            if topic is None:
                result[key_range] = None
            else:
                per_topic[topic].append(key_range)
        for topic, wanted in per_topic.items():
            mapper = self._mappers[topic]
            mapper.use_namespace(wanted[0].namespace)
            records, covered = self._read_topic(topic, wanted)
            for r in wanted:
                found = {o: rec for o, rec in records.get(r.partition, {}).items() if r.first <= o <= r.last}
                mapped = {o: c for o, rec in found.items() if (c := self._candidate(rec, r, now_ms))}
                low, high = covered.get(r.partition, (1, 0))  # a partition not read covers nothing
                result[r] = RangeRead(mapped, low <= r.first and r.last <= high)
        return result

    def _read_topic(
        self, topic: str, wanted: Sequence[KeyRange]
    ) -> tuple[dict[int, dict[int, KafkaRecord]], dict[int, tuple[int, int]]]:
        """The records of ``wanted``'s partitions from each one's first to its last offset, and per
        partition the span of offsets known read (from the first readable one to the position reached)."""
        from confluent_kafka import TopicPartition

        spans: dict[int, tuple[int, int]] = {}
        for r in wanted:
            first, last = spans.get(r.partition, (r.first, r.last))
            spans[r.partition] = (min(first, r.first), max(last, r.last))
        config = {**self._consumer_config, "group.id": f"kafka-stripe-report-reader-{uuid.uuid4().hex[:12]}"}
        consumer = self._consumer_factory(config)
        records: dict[int, dict[int, KafkaRecord]] = defaultdict(dict)
        try:
            existing = set(partition_metadata(consumer, topic, self._timeout_s))
            spans = {p: span for p, span in spans.items() if p in existing}
            marks = watermarks(consumer, topic, sorted(spans), self._timeout_s)
            starts = {p: max(first, marks[p][0]) for p, (first, _last) in spans.items()}
            consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
            highs, lows = {p: marks[p][1] for p in spans}, {p: marks[p][0] for p in spans}
            reader = PartitionReader(consumer, topic, starts, highs, lows)
            for message in reader:
                partition, offset = message.partition(), message.offset()
                if offset <= spans[partition][1]:
                    records[partition][offset] = KafkaRecord.from_message(message)
                positions = reader.positions()
                if all(positions[p] > last for p, (_first, last) in spans.items()):
                    break
            positions = reader.positions()
        finally:
            consumer.close()
        covered = {p: (starts[p], positions[p] - 1) for p in spans}
        return records, covered

    def _candidate(self, record: KafkaRecord, key_range: KeyRange, now_ms: int) -> Candidate | None:
        """The record with its event's values, or None when it does not map (it was never sent)."""
        settings = self._topics[record.topic]
        try:
            event = self._mappers[record.topic].map_record(record, now_ms)
        except RecordRejected:
            return None
        payload = event.payload
        return Candidate(
            record,
            key_range.namespace,
            payload.get(settings.customer_key, ""),
            payload.get(settings.value_key, ""),
            event.event_name,
        )
