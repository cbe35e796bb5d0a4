"""``reconcile``'s corrections: which corrections topics touch the reconciled usage, and their net effect.

The connector corrects an event by cancelling it within Stripe's 24 hours and sending the replacement,
or, after them and for a ``sum`` meter, by sending one compensating event (replacement − original).
On a sum both leave Stripe with the original removed and the replacement added, so reconcile applies
every correction that way: the original (found by identifier among the events counted) stops counting,
the replacement (the correction's customer and timestamp) counts. A cancel happens once per original
(the connector's idempotency key is the original's), while every correction of it sends its
replacement; a ``count`` meter loses one event per cancelled original and gains one per replacement.

What cannot be re-derived is left out, and counted: a correction whose original is not among the events
in range (Stripe never had it, it lies outside the range, or another topic sent it: the connector
dead-letters such a correction within the 24 hours) is ``unmatched`` and not applied; for ``last``
meters (a replacement's place among the latest values depends on Stripe's receipt times) nothing is
applied and the report says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from connector.commands.reconcile_tally import Counted, Tally
from connector.config.settings import Settings, TopicSettings
from connector.mapping.corrections import Correction, NamespaceOf
from connector.records import KafkaRecord

# Formulas whose corrections reconcile exactly (see the module docstring).
RECONCILED_FORMULAS = ("sum", "count")
MAX_SAMPLES = 5
# The namespace given to another usage topic's originals: reconcile reads one usage topic, so an
# original of another can never be among its events, whatever namespace its identifier carries.
OTHER_TOPIC = "not-read"


def corrections_topics(settings: Settings, usage: TopicSettings, context: str | None) -> list[TopicSettings]:
    """The corrections topics whose records can correct ``usage``'s events in ``context``: those that
    take its event name (or any), and send in that context (statically, or from a record field)."""
    return [
        topic
        for topic in settings.topics
        if topic.kind == "corrections"
        and topic.event_name in ("", usage.event_name)
        and (topic.context_field is not None or topic.stripe_context == context)
    ]


def original_namespaces(settings: Settings, usage: TopicSettings, namespace: str) -> NamespaceOf:
    """How originals named by coordinates get their identifiers, as the connector derives them: the
    usage topic's namespace for its own records; None (a correction the connector dead-letters) for a
    topic it does not consume."""
    others = {t.name for t in settings.topics if t.kind == "usage"}

    def namespace_of(topic: str) -> str | None:
        if topic == usage.name:
            return namespace
        return OTHER_TOPIC if topic in others else None

    return namespace_of


@dataclass(slots=True)
class _Pending:
    order: tuple[int, str, int, int]  # (Kafka ms, topic, partition, offset): the order they were produced
    correction: Correction
    where: str  # the correction record's coordinates, for samples


@dataclass
class CorrectionTally:
    """The corrections read for one meter and context, and what applying them did to a ``Tally``."""

    topics: tuple[str, ...]
    event_name: str
    context: str | None
    formula: str
    read: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    elsewhere: int = 0  # for another event name or context
    duplicates: int = 0  # the same correction (its identifier) read again
    applied: int = 0
    cancelled: int = 0  # originals that stopped counting (once each)
    replaced: int = 0  # replacement events added
    unmatched: int = 0
    out_of_range: int = 0
    not_applied: int = 0  # a formula whose corrections are not reconciled
    inconsistent: int = 0  # the correction's customer, window or original value is not the original's
    samples: list[str] = field(default_factory=list)  # unmatched ones
    mismatches: list[str] = field(default_factory=list)  # inconsistent ones
    _pending: list[_Pending] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    @property
    def reconciled(self) -> bool:
        return self.formula in RECONCILED_FORMULAS

    def add_rejected(self, code: str) -> None:
        """A correction record the connector dead-letters (it never reaches Stripe)."""
        self.read += 1
        self.rejected[code] += 1

    def add(self, correction: Correction, record: KafkaRecord) -> None:
        self.read += 1
        if correction.event_name != self.event_name or correction.context != self.context:
            self.elsewhere += 1
            return
        # The identifier is derived from the correction record's coordinates: seen twice, it is one
        # correction (its replacement deduplicated by Stripe and the delivery ledger).
        if correction.identifier in self._seen:
            self.duplicates += 1
            return
        self._seen.add(correction.identifier)
        kafka_ms = record.timestamp_ms if record.timestamp_ms is not None else 0
        order = (kafka_ms, record.topic, record.partition, record.offset)
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        self._pending.append(_Pending(order, correction, where))

    def apply(self, tally: Tally) -> None:
        """Apply every correction whose original ``tally`` counts, in the order they were produced."""
        pending = sorted(self._pending, key=lambda p: p.order)
        self._pending = []
        if not self.reconciled:
            self.not_applied = len(pending)
            return
        # Again while some apply: a correction may name an earlier correction's replacement (its
        # derived identifier), produced on another partition.
        while pending:
            left = [p for p in pending if not self._apply_one(tally, p)]
            if len(left) == len(pending):
                break
            pending = left
        for item in pending:
            if tally.in_window(item.correction.timestamp_ms):
                self.unmatched += 1
                if len(self.samples) < MAX_SAMPLES:
                    self.samples.append(_describe(item))
            else:
                self.out_of_range += 1

    def _apply_one(self, tally: Tally, item: _Pending) -> bool:
        correction = item.correction
        original = tally.counted(correction.original)
        if original is None:
            return False
        self.applied += 1
        if not original.cancelled:  # the connector's cancel key is the original's: cancelled once
            original.cancelled = True
            self.cancelled += 1
        if correction.replacement_value is not None:
            kafka_ms, _topic, partition, offset = item.order
            millis = correction.timestamp_ms
            value = Decimal(correction.replacement_value)
            order = (millis, kafka_ms, partition, offset)
            tally.add_event(correction.identifier, correction.customer, millis, value, order)
            self.replaced += 1
        mismatch = _mismatch(correction, original, tally)
        if mismatch:
            self.inconsistent += 1
            if len(self.mismatches) < MAX_SAMPLES:
                self.mismatches.append(f"{item.where} ({correction.original}): {mismatch}")
        return True


def _mismatch(correction: Correction, original: Counted, tally: Tally) -> str:
    """How the correction's own account of its original differs from the original counted: where it
    does, a compensation (after 24 hours) lands elsewhere than the cancel reconcile assumes."""
    found: list[str] = []
    if correction.customer != original.customer:
        found.append(f"customer {correction.customer}, the original's is {original.customer}")
    if tally.window_of(correction.timestamp_ms) != original.window or not tally.in_window(
        correction.timestamp_ms
    ):
        found.append("its timestamp is not in the original's window")
    value = correction.original_value
    if tally.formula == "sum" and value is not None and Decimal(value) != original.value:
        found.append(f"original_value {value}, the original's is {original.value}")
    return "; ".join(found)


def _describe(item: _Pending) -> str:
    correction = item.correction
    return (
        f"{item.where}: original {correction.original} of {correction.customer} at {correction.timestamp} "
        "not among the events read"
    )
