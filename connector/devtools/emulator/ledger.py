"""Meters and meter events of one mode (test or live): queue, deduplication, validation, summaries."""
# Over 400 lines: dedup, validation and sums share the hot path's structures.

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from connector.devtools.emulator.envelope import check_stream_body
from connector.devtools.emulator.errors import ApiError, invalid, no_such
from connector.devtools.emulator.ids import new_id
from connector.devtools.emulator.meter import WINDOW_SECONDS, Meter
from connector.devtools.emulator.reports import ErrorReport, ThinEvent
from connector.devtools.emulator.stats import Stats
from connector.devtools.emulator.timestamps import format_rfc3339, parse_rfc3339

DEDUP_WINDOW = 86_400.0  # identifiers are unique within a rolling 24 hours; cancels reach as far back
MAX_AGED_OUT = 1_000_000  # identifiers remembered past their 24 hours, to word a late cancel's refusal
MAX_PAST = 35 * 86_400.0
MAX_FUTURE = 300.0
MAX_SIGNIFICANT_DIGITS = 15

# Per-event status bytes of a processed request.
PENDING, VALID, INVALID, DUPLICATE, CANCELED = range(5)
STATUS_NAMES = ("pending", "valid", "invalid", "duplicate", "canceled")

# Intake (the stream hot path) checks the envelope and queues the raw request body. Everything
# Stripe does asynchronously, and deduplication too (a duplicate gets the same 200), runs when the
# queue is drained: before every read and every change that affects validation (meters,
# customers), and in the background while the server is idle. Each event is judged by its receipt
# time and by the meters as they were when it arrived, so the outcome does not depend on when the
# queue is drained.
#
# Memory per event stays small: a processed request keeps its raw body (24 hours, for cancels and
# for expiring its identifiers) and one status byte per event; the dedup index maps identifiers to
# requests; usage is aggregated per meter, customer and minute. Summaries only ask for whole
# minutes, so per-minute buckets answer them exactly; only ``last`` meters keep per-event values,
# so that a cancel can reveal the previous latest value.
#
# Pre-aggregated meters (``event_time_window`` hour or day) count only the latest received valid
# event per customer and window: the buckets hold just that event, and each window keeps the list of
# its valid events in receipt order (kept as long as the emulator runs; such meters get one event
# per window and customer, or a few), so that canceling the latest lets the one before count again.

_VALUE = re.compile(r"-?\d+(?:\.\d+)?\Z")
_loads = orjson.loads
_fromisoformat = datetime.fromisoformat


class _Batch:
    """One accepted request (or one v1 event) on its way through the ledger; its events' error
    reports name the request through it."""

    __slots__ = (
        "errors",
        "generated",
        "idempotency_key",
        "meters",
        "received_at",
        "request_id",
        "seq",
        "source",
        "status",
    )

    def __init__(
        self,
        received_at: float,
        source: bytes | list[dict[str, Any]],
        generated: dict[int, str] | None,
        seq: int,
        request_id: bytes,
        idempotency_key: bytes | None,
    ) -> None:
        self.received_at = received_at
        self.source = source
        self.generated = generated
        self.seq = seq
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self.status = bytearray()
        self.meters: dict[str, Meter] = {}  # event_name -> the meter that judged it
        self.errors: dict[int, tuple[str, str]] | None = None  # index -> (code, message)

    def request(self) -> tuple[str, str]:
        """The request's ``Request-Id`` and ``Idempotency-Key``. A request sent without a key is
        given one the first time it is asked for (a random UUID, as stripe-python generates)."""
        key = self.idempotency_key
        if key is None:
            key = self.idempotency_key = str(uuid.uuid4()).encode()
        return self.request_id.decode("latin-1"), key.decode("latin-1")

    def events(self) -> list[dict[str, Any]]:
        source = self.source
        events: list[dict[str, Any]] = _loads(source)["events"] if isinstance(source, bytes) else source
        return events

    def identifier(self, event: dict[str, Any], index: int) -> str:
        identifier: str | None = event.get("identifier")
        if identifier is None:
            assert self.generated is not None
            return self.generated[index]
        return identifier

    def find(self, identifier: str) -> tuple[int, dict[str, Any]]:
        """The first event of this request carrying ``identifier`` (the one that claimed it)."""
        for index, event in enumerate(self.events()):
            if self.identifier(event, index) == identifier:
                return index, event
        raise KeyError(identifier)


class _Bucket:
    """Usage of one meter and customer within one minute."""

    __slots__ = ("count", "fraction", "latest", "whole")

    def __init__(self) -> None:
        self.count = 0
        self.whole = 0  # integer values add as ints (fast, exact); the rest as Decimals
        self.fraction = Decimal(0)
        self.latest: list[tuple[float, int, str]] | None = None  # ``last`` meters only

    def add(self, value: str, timestamp: float, order: int, keep_latest: bool) -> None:
        self.count += 1
        if value.isdigit():
            self.whole += int(value)
        else:
            self.fraction += Decimal(value)
        if keep_latest:
            if self.latest is None:
                self.latest = []
            self.latest.append((timestamp, order, value))

    def remove(self, value: str, timestamp: float, order: int) -> None:
        self.count -= 1
        if value.isdigit():
            self.whole -= int(value)
        else:
            self.fraction -= Decimal(value)
        if self.latest is not None:
            self.latest.remove((timestamp, order, value))


@dataclass(frozen=True, slots=True)
class EventStatus:
    """What became of an event, for tests: ``status`` is pending/valid/invalid/duplicate/canceled."""

    identifier: str
    event_name: str
    status: str
    received_at: float
    error_code: str | None = None
    error_message: str | None = None
    meter_id: str | None = None
    request_id: str | None = None  # the Request-Id of the request that carried the event
    idempotency_key: str | None = None  # that request's Idempotency-Key (or the emulator's own)


class _Judging:
    """Caches and error reports of one validation pass."""

    def __init__(self) -> None:
        self.reports: dict[str | None, ErrorReport] = {}
        self.archived: dict[str, Meter | None] = {}
        self.known: dict[str, bool] = {}


def _significant_digits(value: str) -> int:
    return len(value.lstrip("-").replace(".", "").lstrip("0"))


class MeterLedger:
    """Meters, meter events, error reports and summaries of one mode."""

    def __init__(
        self,
        livemode: bool,
        stats: Stats,
        customer_known: Callable[[str], bool],
        *,
        decimal_values: bool = False,
        context: str | None = None,
    ) -> None:
        self.livemode = livemode
        self.context = context  # the connected account's context path, None for the platform
        self._decimal_values = decimal_values
        self._stats = stats
        self._customer_known = customer_known
        self._meter_prefix = "mtr_" if livemode else "mtr_test_"
        self._event_prefix = "evt_" if livemode else "evt_test_"
        self.meters: dict[str, Meter] = {}
        self._active: dict[str, Meter] = {}  # event_name -> the active meter
        self._pending: deque[_Batch] = deque()
        self.pending_events = 0
        self._processed: deque[_Batch] = deque()  # the last 24 hours, oldest first
        self._seen: dict[str, _Batch] = {}  # identifier -> request of its first copy (24 hours)
        # identifier -> receipt time, of first copies that aged out of the 24 hours, so that a late
        # cancel is told apart from one of an unknown identifier; bounded, oldest forgotten first.
        self._aged_out: dict[str, float] = {}
        # meter id -> customer -> minute -> usage
        self._usage: dict[str, dict[str, dict[int, _Bucket]]] = {}
        # Pre-aggregated meters: (meter id, customer, window start) -> the window's valid events as
        # (order, timestamp, value) in receipt order; only the last one is in ``_usage``.
        self._windows: dict[tuple[str, str, int], list[tuple[int, float, str]]] = {}
        self.thin_events: list[ThinEvent] = []
        self._thin_by_id: dict[str, ThinEvent] = {}
        self._batch_seq = itertools.count()
        self._generated = itertools.count(1)
        self._generated_prefix = f"emu_{secrets.token_hex(4)}_"
        self._second_cache: dict[str, float] = {}

    # -- intake ---------------------------------------------------------------------------------

    def _new_identifier(self) -> str:
        return f"{self._generated_prefix}{next(self._generated)}"

    def ingest_stream(
        self, body: bytes, now: float, request_id: bytes, idempotency_key: bytes | None
    ) -> None:
        """Queue one ``meter_event_stream`` body, or raise its 400 having recorded nothing."""
        count, generated = check_stream_body(body, self._new_identifier)
        self._stats.events_received += count
        self.pending_events += count
        self._pending.append(_Batch(now, body, generated, next(self._batch_seq), request_id, idempotency_key))

    def ingest_one(
        self,
        event_name: str,
        payload: dict[str, str],
        identifier: str | None,
        timestamp: float | None,
        now: float,
        request_id: bytes,
        idempotency_key: bytes | None,
    ) -> str:
        """Queue one v1 ``meter_events`` create; a repeated identifier is a 400 there, not a no-op."""
        self.process(now)
        if identifier is None:
            identifier = self._new_identifier()
        first = self._seen.get(identifier)
        if first is not None and now - first.received_at < DEDUP_WINDOW:
            raise ApiError(
                400,
                f"An event already exists with identifier {identifier}.",
                param="identifier",
                code="resource_already_exists",
            )
        event: dict[str, Any] = {"event_name": event_name, "payload": payload, "identifier": identifier}
        if timestamp is not None:
            event["timestamp"] = timestamp
        self._stats.events_received += 1
        self.pending_events += 1
        self._pending.append(_Batch(now, [event], None, next(self._batch_seq), request_id, idempotency_key))
        return identifier

    # -- deduplication and asynchronous validation ------------------------------------------------

    def process(self, now: float, limit: int | None = None) -> int:
        """Deduplicate and validate queued requests, oldest first, until at least ``limit`` events
        are done; returns how many were."""
        handled = accepted = valid = 0
        judging = _Judging()
        pending = self._pending
        while pending and (limit is None or handled < limit):
            batch = pending.popleft()
            events = batch.events()
            batch.status = bytearray(len(events))
            fresh = self._claim(batch, events)
            accepted += len(fresh)
            valid += self._validate(batch, events, fresh, judging)
            handled += len(events)
            self._processed.append(batch)
        if handled:
            self.pending_events -= handled
            stats = self._stats
            stats.events_accepted += accepted
            stats.duplicates_ignored += handled - accepted
            stats.events_valid += valid
        for report in judging.reports.values():
            thin = report.thin_event(new_id(self._event_prefix, 40), now, self.livemode, self.context)
            self.thin_events.append(thin)
            self._thin_by_id[thin.id] = thin
        self._expire(now)
        return handled

    def _claim(self, batch: _Batch, events: list[dict[str, Any]]) -> list[int]:
        """Deduplicate one request: marks repeats DUPLICATE and returns the indexes of first copies."""
        seen = self._seen
        claim = seen.setdefault
        size = len(seen)
        status = batch.status
        received_at = batch.received_at
        generated = batch.generated
        fresh: list[int] = []
        for index, event in enumerate(events):
            identifier = event.get("identifier")
            if identifier is None:
                assert generated is not None
                identifier = generated[index]
            # One probe of the (large) dedup index per event: claim the identifier, and tell a
            # new claim from a repeat within this request by whether the index grew.
            first = claim(identifier, batch)
            if first is batch:
                if len(seen) == size:
                    status[index] = DUPLICATE
                    continue
                size += 1
            elif received_at - first.received_at < DEDUP_WINDOW:
                # Receipt times, not the time of this pass, decide what is a duplicate.
                status[index] = DUPLICATE
                continue
            else:
                seen[identifier] = batch  # the earlier copy is more than 24 hours older
            fresh.append(index)
        return fresh

    def _validate(
        self, batch: _Batch, events: list[dict[str, Any]], fresh: list[int], judging: _Judging
    ) -> int:
        """Stripe's asynchronous checks of a request's first copies; returns how many the fast path
        found valid (``_judge`` counts its own)."""
        known = judging.known
        judge = self._judge
        active = self._active
        usage = self._usage
        seconds = self._second_cache
        status = batch.status
        earliest = batch.received_at - MAX_PAST
        latest = batch.received_at + MAX_FUTURE
        judged_by = batch.meters
        valid = 0
        for index in fresh:
            event = events[index]
            # Fast path, inlined, for the common valid event: a plain sum/count meter, a UTC
            # timestamp whose second was parsed before, a known customer, an integer value.
            # Anything else, or anything missing from the caches, goes to ``_judge``.
            name = event["event_name"]
            meter = active.get(name)
            raw = event.get("timestamp")
            if meter is not None and meter.plain and type(raw) is str and raw[-1] == "Z":
                base = seconds.get(raw[:19])
                if base is not None:
                    fraction = raw[19:-1]
                    timestamp = base + float(fraction) if fraction else base
                    payload = event["payload"]
                    customer = payload.get(meter.customer_key)
                    value = payload.get(meter.value_key)
                    if (
                        earliest <= timestamp <= latest
                        and customer is not None
                        and value is not None
                        and known.get(customer)
                        and value.isdigit()
                        and len(value) <= MAX_SIGNIFICANT_DIGITS
                    ):
                        minutes = usage.get(meter.id, {}).get(customer)
                        bucket = None if minutes is None else minutes.get(int(timestamp // 60) * 60)
                        if bucket is None:
                            bucket = self._bucket(meter.id, customer, timestamp)
                        bucket.count += 1
                        bucket.whole += int(value)
                        if name not in judged_by:
                            judged_by[name] = meter
                        status[index] = VALID
                        valid += 1
                        continue
            status[index] = judge(batch, index, event, judging)
        return valid

    def _event_time(self, raw: object, received_at: float) -> float:
        if raw is None:
            return received_at
        if not isinstance(raw, str):
            return float(raw)  # type: ignore[arg-type]
        if raw[-1] == "Z":
            # The events of one request mostly share their second: parse it once, add the fraction.
            second = raw[:19]
            base = self._second_cache.get(second)
            if base is None:
                if len(self._second_cache) > 100_000:
                    self._second_cache.clear()
                base = self._second_cache[second] = _fromisoformat(second + "+00:00").timestamp()
            fraction = raw[19:-1]
            return base + float(fraction) if fraction else base
        return parse_rfc3339(raw)

    def _judge(self, batch: _Batch, index: int, event: dict[str, Any], judging: _Judging) -> int:
        """Stripe's asynchronous checks of one first copy; a valid event is added to its bucket."""
        name: str = event["event_name"]
        payload: dict[str, str] = event["payload"]
        received_at = batch.received_at
        timestamp = self._event_time(event.get("timestamp"), received_at)
        meter = self._active.get(name)
        problem: tuple[str, str] | None
        if meter is None:
            archived = judging.archived
            if name not in archived:
                archived[name] = self._latest_inactive(name)
            meter = archived[name]
            if meter is None:
                problem = ("no_meter", f"No active meter was found for event_name '{name}'.")
            else:
                problem = ("archived_meter", f"The meter {meter.id} for event_name '{name}' is inactive.")
        else:
            problem = self._problem(meter, payload, timestamp - received_at, judging)
            if problem is None:
                batch.meters[name] = meter
                value = payload[meter.value_key]
                self._count(meter, payload[meter.customer_key], timestamp, value, batch.seq * 128 + index)
                self._stats.events_valid += 1
                return VALID
        if meter is not None:
            batch.meters[name] = meter
        if batch.errors is None:
            batch.errors = {}
        code, message = problem
        batch.errors[index] = problem
        self._stats.events_invalid += 1
        key = None if meter is None else meter.id
        report = judging.reports.get(key)
        if report is None:
            report = judging.reports[key] = ErrorReport(meter, received_at, received_at)
        report.add(code, message, batch, received_at)
        return INVALID

    def _problem(
        self, meter: Meter, payload: dict[str, str], age: float, judging: _Judging
    ) -> tuple[str, str] | None:
        """The (code, message) of the first problem of an event for an active ``meter``, else None;
        ``age`` is the event's timestamp minus its receipt time (negative: in the past)."""
        if age < -MAX_PAST:
            return "timestamp_too_far_in_past", "Timestamp must be within the past 35 days."
        if age > MAX_FUTURE:
            return "timestamp_in_future", "Timestamp must not be more than 5 minutes in the future."
        customer = payload.get(meter.customer_key)
        value = payload.get(meter.value_key)
        known = judging.known
        if customer is None:
            return (
                "meter_event_no_customer_defined",
                f"Customer mapping key {meter.customer_key} not found in payload.",
            )
        if not (
            known[customer]
            if customer in known
            else known.setdefault(customer, self._customer_known(customer))
        ):
            return "meter_event_customer_not_found", f"No customer found with id '{customer}'."
        if value is None:
            return "meter_event_value_not_found", f"Value key {meter.value_key} not found in payload."
        if not (value.isdigit() and len(value) <= MAX_SIGNIFICANT_DIGITS) and _VALUE.match(value) is None:
            return (
                "meter_event_invalid_value",
                f"Value '{value}' for key {meter.value_key} is not a decimal number.",
            )
        if not self._decimal_values and "." in value:
            # Stricter than needed on purpose: even ``12.0`` is refused.
            return "meter_event_invalid_value", (
                f"Value '{value}' for key {meter.value_key} is not a whole number: this account "
                "accepts whole-number values only (decimal values are enabled per account by Stripe)."
            )
        if len(value) > MAX_SIGNIFICANT_DIGITS and _significant_digits(value) > MAX_SIGNIFICANT_DIGITS:
            return (
                "meter_event_value_too_many_digits",
                f"Value '{value}' has more than {MAX_SIGNIFICANT_DIGITS} significant digits.",
            )
        return None

    def _count(self, meter: Meter, customer: str, timestamp: float, value: str, order: int) -> None:
        """Add a valid event to the usage. On a pre-aggregated meter it supersedes the event of the
        same customer and window received before it: only the latest received one counts."""
        last = meter.formula == "last"
        window = meter.event_time_window
        if window is not None:
            size = WINDOW_SECONDS[window]
            events = self._windows.setdefault((meter.id, customer, int(timestamp // size) * size), [])
            if events:
                previous, at, counted = events[-1]
                self._bucket(meter.id, customer, at).remove(counted, at, previous)
            events.append((order, timestamp, value))
        self._bucket(meter.id, customer, timestamp).add(value, timestamp, order, last)

    def _uncount(self, meter: Meter, customer: str, timestamp: float, value: str, order: int) -> None:
        """Take a canceled event out of the usage. On a pre-aggregated meter, canceling the window's
        latest event lets the one received before it count again (if any); canceling a superseded
        one changes nothing."""
        window = meter.event_time_window
        if window is not None:
            size = WINDOW_SECONDS[window]
            events = self._windows[(meter.id, customer, int(timestamp // size) * size)]
            latest = events[-1][0] == order
            events.remove((order, timestamp, value))
            if not latest:
                return
            if events:
                previous, at, counted = events[-1]
                self._bucket(meter.id, customer, at).add(counted, at, previous, meter.formula == "last")
        self._bucket(meter.id, customer, timestamp).remove(value, timestamp, order)

    def _bucket(self, meter_id: str, customer: str, timestamp: float) -> _Bucket:
        minute = int(timestamp // 60) * 60
        customers = self._usage.get(meter_id)
        if customers is None:
            customers = self._usage[meter_id] = {}
        minutes = customers.get(customer)
        if minutes is None:
            minutes = customers[customer] = {}
        bucket = minutes.get(minute)
        if bucket is None:
            bucket = minutes[minute] = _Bucket()
        return bucket

    def _latest_inactive(self, event_name: str) -> Meter | None:
        found: Meter | None = None
        for meter in self.meters.values():
            if (
                meter.event_name == event_name
                and meter.status == "inactive"
                and (found is None or (meter.deactivated_at or 0) >= (found.deactivated_at or 0))
            ):
                found = meter
        return found

    def _expire(self, now: float) -> None:
        """Forget requests received more than 24 hours ago: their identifiers may be reused and
        their events can no longer be canceled."""
        processed = self._processed
        horizon = now - DEDUP_WINDOW
        seen = self._seen
        aged_out = self._aged_out
        while processed and processed[0].received_at <= horizon:
            batch = processed.popleft()
            for index, event in enumerate(batch.events()):
                identifier = batch.identifier(event, index)
                if seen.get(identifier) is batch:
                    del seen[identifier]
                    aged_out.pop(identifier, None)  # re-inserted last: the dict stays oldest first
                    aged_out[identifier] = batch.received_at
            while len(aged_out) > MAX_AGED_OUT:
                del aged_out[next(iter(aged_out))]

    # -- meters ---------------------------------------------------------------------------------

    def create_meter(
        self,
        *,
        display_name: str,
        event_name: str,
        formula: str,
        customer_key: str,
        value_key: str,
        event_time_window: str | None,
        now: float,
    ) -> Meter:
        self.process(now)
        if event_name in self._active:
            raise _duplicate_meter(event_name)
        meter = Meter(
            id=new_id(self._meter_prefix),
            display_name=display_name,
            event_name=event_name,
            formula=formula,
            customer_key=customer_key,
            value_key=value_key,
            event_time_window=event_time_window,
            livemode=self.livemode,
            created=int(now),
            updated=int(now),
        )
        self.meters[meter.id] = meter
        self._active[event_name] = meter
        return meter

    def meter(self, meter_id: str) -> Meter:
        meter = self.meters.get(meter_id)
        if meter is None:
            raise no_such("billing.meter", meter_id)
        return meter

    def list_meters(self, status: str | None) -> list[Meter]:
        return [m for m in reversed(self.meters.values()) if status is None or m.status == status]

    def update_meter(self, meter_id: str, display_name: str | None, now: float) -> Meter:
        meter = self.meter(meter_id)
        if display_name is not None:
            meter.display_name = display_name
            meter.updated = int(now)
        return meter

    def deactivate_meter(self, meter_id: str, now: float) -> Meter:
        meter = self.meter(meter_id)
        self.process(now)
        if meter.status == "active":
            meter.status = "inactive"
            meter.deactivated_at = int(now)
            meter.updated = int(now)
            del self._active[meter.event_name]
        return meter

    def reactivate_meter(self, meter_id: str, now: float) -> Meter:
        meter = self.meter(meter_id)
        self.process(now)
        if meter.status == "inactive":
            if meter.event_name in self._active:
                raise _duplicate_meter(meter.event_name)
            meter.status = "active"
            meter.deactivated_at = None
            meter.updated = int(now)
            self._active[meter.event_name] = meter
        return meter

    # -- reads and adjustments ------------------------------------------------------------------

    def summaries(
        self, meter: Meter, customer: str, start: int, end: int, window: str | None
    ) -> list[dict[str, Any]]:
        """Aggregates over [start, end) (minute-aligned), newest first; with a window, only the
        windows holding events."""
        size = WINDOW_SECONDS[window] if window is not None else None
        spans: dict[int, list[_Bucket]] = {}
        for minute, bucket in self._usage.get(meter.id, {}).get(customer, {}).items():
            if bucket.count and start <= minute < end:
                span = start if size is None else minute - minute % size
                spans.setdefault(span, []).append(bucket)
        if size is None:
            ranges = [(start, end)]
        else:
            ranges = [(span, span + size) for span in sorted(spans, reverse=True)]
        return [
            {
                "id": _summary_id(meter.id, customer, span_start, span_end, self.livemode),
                "object": "billing.meter_event_summary",
                "aggregated_value": _aggregate(meter.formula, spans.get(span_start, [])),
                "end_time": span_end,
                "livemode": self.livemode,
                "meter": meter.id,
                "start_time": span_start,
            }
            for span_start, span_end in ranges
        ]

    def event_status(self, identifier: str) -> EventStatus | None:
        """What became of the first copy of ``identifier`` received in the last 24 hours, if any."""
        batch = self._seen.get(identifier)
        if batch is None:
            for queued in self._pending:
                for index, event in enumerate(queued.events()):
                    if queued.identifier(event, index) == identifier:
                        request_id, key = queued.request()
                        return EventStatus(
                            identifier,
                            event["event_name"],
                            "pending",
                            queued.received_at,
                            request_id=request_id,
                            idempotency_key=key,
                        )
            return None
        index, event = batch.find(identifier)
        code, message = (batch.errors or {}).get(index, (None, None))
        meter = batch.meters.get(event["event_name"])
        request_id, key = batch.request()
        return EventStatus(
            identifier=identifier,
            event_name=event["event_name"],
            status=STATUS_NAMES[batch.status[index]],
            received_at=batch.received_at,
            error_code=code,
            error_message=message,
            meter_id=None if meter is None else meter.id,
            request_id=request_id,
            idempotency_key=key,
        )

    def cancel(self, event_name: str, identifier: str, now: float, param: str) -> None:
        """A ``cancel`` adjustment: the event received in the last 24 hours stops counting. Stripe
        documents no answer for the refusals; the emulator's are 400s, one message each (``param``
        names the identifier's parameter in the caller's API version)."""
        self.process(now)
        batch = self._seen.get(identifier)
        received_at = batch.received_at if batch is not None else self._aged_out.get(identifier)
        if received_at is None:
            raise invalid(
                f"No meter event with identifier {identifier} was received by this account.",
                param=param,
                code="resource_missing",
            )
        if batch is None or now - received_at >= DEDUP_WINDOW:
            raise invalid(
                f"The meter event with identifier {identifier} was received more than 24 hours ago "
                f"({format_rfc3339(received_at)}); only events received in the last 24 hours can be "
                "canceled.",
                param=param,
            )
        index, event = batch.find(identifier)
        if event["event_name"] != event_name:
            raise invalid(
                f"The meter event with identifier {identifier} has event_name "
                f"'{event['event_name']}', not '{event_name}'.",
                param="event_name",
            )
        status = batch.status[index]
        if status == CANCELED:
            raise invalid(f"The meter event with identifier {identifier} is already canceled.", param=param)
        if status == VALID:
            meter = batch.meters[event_name]
            payload = event["payload"]
            timestamp = self._event_time(event.get("timestamp"), batch.received_at)
            self._uncount(
                meter,
                payload[meter.customer_key],
                timestamp,
                payload[meter.value_key],
                batch.seq * 128 + index,
            )
            self._stats.events_valid -= 1
        else:
            self._stats.events_invalid -= 1
        batch.status[index] = CANCELED
        self._stats.events_canceled += 1

    def thin_event(self, event_id: str) -> ThinEvent:
        event = self._thin_by_id.get(event_id)
        if event is None:
            raise ApiError(404, f"No such v2.core.event: '{event_id}'", code="resource_missing")
        return event

    def list_thin_events(
        self,
        *,
        object_id: str | None,
        types: Iterable[str] | None,
        created: Callable[[float], bool] | None,
    ) -> list[ThinEvent]:
        """Newest first, filtered by related object, type and a predicate on ``created``."""
        wanted = set(types) if types is not None else None
        return [
            event
            for event in reversed(self.thin_events)
            if (object_id is None or event.meter_id == object_id)
            and (wanted is None or event.type in wanted)
            and (created is None or created(event.created))
        ]


def _duplicate_meter(event_name: str) -> ApiError:
    return invalid(
        f"An active meter with event_name `{event_name}` already exists.",
        param="event_name",
        code="resource_already_exists",
    )


def _summary_id(meter_id: str, customer: str, start: int, end: int, livemode: bool) -> str:
    """Stable across reads, so that ``starting_after`` pages through summaries."""
    digest = hashlib.sha1(f"{meter_id}|{customer}|{start}|{end}".encode(), usedforsecurity=False)
    return ("mtrusg_" if livemode else "mtrusg_test_") + digest.hexdigest()[:24]


def _aggregate(formula: str, buckets: list[_Bucket]) -> float:
    if formula == "count":
        return float(sum(b.count for b in buckets))
    if formula == "last":
        entries = [entry for b in buckets for entry in b.latest or ()]
        return float(Decimal(max(entries)[2])) if entries else 0.0
    return float(sum(b.whole for b in buckets) + sum((b.fraction for b in buckets), Decimal(0)))
