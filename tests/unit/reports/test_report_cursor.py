"""The error-report cursor: its records, and the lookback that neither skips nor repeats a report."""

from __future__ import annotations

from typing import Any

import pytest

from connector.kafka.delivery_ledger import LedgerKey, LedgerMark
from connector.reports.cursor import Cursor, CursorError, CursorKey, CursorStore, Intent
from connector.reports.report import EventRef

KEY = CursorKey("acct_1.test", "kafka-stripe")
T0 = 1_767_323_045.0
LOOKBACK = 300.0


def ref(n: int, created: float) -> EventRef:
    return EventRef(f"evt_{n}", "v1.billing.meter.error_report_triggered", created)


def test_keys_round_trip_and_are_not_ledger_keys() -> None:
    assert CursorKey.decode(KEY.encode()) == KEY
    assert LedgerKey.decode(KEY.encode()) is None  # read_ledger skips cursor records
    assert CursorKey.decode(LedgerKey("acct_1.test", "api", "TopicId", 0).encode()) is None


@pytest.mark.parametrize("raw", [None, b"", b"[]", b'["x","a","b"]', b'["kafka-stripe.error-reports",1,"b"]'])
def test_other_keys_are_not_cursor_keys(raw: bytes | None) -> None:
    assert CursorKey.decode(raw) is None


def test_cursors_round_trip_with_and_without_an_intent() -> None:
    cursor = Cursor(T0, {"evt_1": T0 + 1.5})
    assert Cursor.decode(cursor.encode(1)) == cursor
    opened = cursor.opening(Intent("evt_2", (("usage.dlq", 0, 12), ("usage.dlq", 1, 0))))
    assert Cursor.decode(opened.encode(1)) == opened
    assert LedgerMark.decode(opened.encode(1)) is None  # nor is the value a mark


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"{}",
        b'{"floor":"x","seen":{}}',
        b'{"floor":1,"seen":[]}',
        b'{"floor":1,"seen":{},"intent":{}}',
    ],
)
def test_anything_else_is_no_cursor(raw: bytes | None) -> None:
    assert Cursor.decode(raw) is None


def test_a_first_cursor_reaches_back_one_lookback() -> None:
    cursor = Cursor.starting(T0, LOOKBACK)
    assert cursor.floor == T0 - LOOKBACK
    assert not cursor.is_done(ref(1, T0 - 10))
    assert cursor.is_done(ref(2, T0 - LOOKBACK))


def test_done_reports_are_remembered_inside_the_lookback_and_late_ones_still_come() -> None:
    cursor = Cursor.starting(T0, LOOKBACK)
    cursor = cursor.done(ref(2, T0 + 20), LOOKBACK)
    cursor = cursor.done(ref(3, T0 + 30), LOOKBACK)
    # Stripe lists a report created before the newest done one: still inside the lookback, so it is
    # listed again (created > floor) and not done yet.
    late = ref(1, T0 + 10)
    assert cursor.floor < late.created and not cursor.is_done(late)
    assert cursor.is_done(ref(2, T0 + 20)) and cursor.is_done(ref(3, T0 + 30))
    cursor = cursor.done(late, LOOKBACK)
    assert cursor.is_done(late)


def test_the_floor_trails_the_newest_report_and_forgets_what_is_below_it() -> None:
    cursor = Cursor.starting(T0, LOOKBACK)
    cursor = cursor.done(ref(1, T0 + 10), LOOKBACK)
    cursor = cursor.done(ref(2, T0 + 1000), LOOKBACK)
    assert cursor.floor == T0 + 1000 - LOOKBACK
    assert set(cursor.seen) == {"evt_2"}  # evt_1 is below the floor: done by the floor itself
    assert cursor.is_done(ref(1, T0 + 10))
    assert cursor.intent is None


def test_the_floor_never_moves_back() -> None:
    cursor = Cursor(T0, {})
    cursor = cursor.done(ref(1, T0 - 50), LOOKBACK)  # a report older than the floor (resumed intent)
    assert cursor.floor == T0


def test_at_most_max_seen_ids_are_kept_and_the_floor_rises_past_the_dropped() -> None:
    cursor = Cursor.starting(T0, LOOKBACK)
    for n in range(5):
        cursor = cursor.done(ref(n, T0 + n), LOOKBACK, max_seen=3)
    assert sorted(cursor.seen) == ["evt_2", "evt_3", "evt_4"]
    assert cursor.floor == T0 + 1
    assert all(cursor.is_done(ref(n, T0 + n)) for n in range(5))


def test_done_closes_the_intent() -> None:
    opened = Cursor(T0).opening(Intent("evt_1", ()))
    assert opened.done(ref(1, T0 + 1)).intent is None


class Producer:
    def __init__(self, error: str | None = None, left: int = 0) -> None:
        self.error, self.left = error, left
        self.produced: list[dict[str, Any]] = []
        self._pending: list[Any] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})
        self._pending.append(kwargs["on_delivery"])

    def flush(self, _timeout: float) -> int:
        for callback in self._pending:
            callback(self.error, None)
        self._pending = []
        return self.left


def store(producer: Producer) -> CursorStore:
    return CursorStore(
        KEY,
        "kafka-stripe.ledger",
        producer=producer,
        consumer_factory=dict,
        consumer_config={},
        clock=lambda: 2.0,
    )


def test_saving_writes_the_key_to_partition_zero_and_waits_for_the_ack() -> None:
    producer = Producer()
    store(producer).save(Cursor(T0))
    (sent,) = producer.produced
    assert sent["topic"] == "kafka-stripe.ledger" and sent["partition"] == 0
    assert CursorKey.decode(sent["key"]) == KEY and Cursor.decode(sent["value"]) == Cursor(T0)


@pytest.mark.parametrize(("error", "left"), [("broker down", 0), (None, 1)])
def test_a_save_not_acknowledged_is_an_error(error: str | None, left: int) -> None:
    with pytest.raises(CursorError, match="cannot write the error-report cursor"):
        store(Producer(error, left)).save(Cursor(T0))
