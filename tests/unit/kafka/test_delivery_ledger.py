"""The delivery ledger's records: encoding, and how marks combine in log order."""

from __future__ import annotations

from typing import Any

import pytest

from connector.kafka.delivery_ledger import LedgerKey, LedgerMark, LedgerWriter, merge

KEY = LedgerKey("acct_1.test", "api_requests", "TopicIdOfUsage00000001", 3)


def test_keys_and_marks_round_trip() -> None:
    assert LedgerKey.decode(KEY.encode()) == KEY
    mark = LedgerMark(42, "usage", 1_700_000_000_000)
    assert LedgerMark.decode(mark.encode()) == mark
    rewound = mark._replace(rewind=True)
    assert LedgerMark.decode(rewound.encode()) == rewound


@pytest.mark.parametrize("raw", [b"", b"[]", b'["a","b","c"]', b'["a","b","c","3"]', b"{}", b"not json"])
def test_foreign_keys_are_ignored(raw: bytes) -> None:
    assert LedgerKey.decode(raw) is None


def test_the_highest_mark_since_the_last_rewind_wins() -> None:
    marks: dict[LedgerKey, LedgerMark] = {}
    merge(marks, KEY, LedgerMark(100, "usage", 1))
    merge(marks, KEY, LedgerMark(80, "usage", 2))  # a slower writer of the same key: never moves it back
    assert marks[KEY].mark == 100
    merge(marks, KEY, LedgerMark(60, "usage", 3, rewind=True))  # only a rewind lowers it
    assert marks[KEY].mark == 60
    merge(marks, KEY, LedgerMark(70, "usage", 4))
    assert marks[KEY].mark == 70
    merge(marks, KEY, None)  # a tombstone deletes the key
    assert KEY not in marks


class Producer:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.callbacks: list[Any] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, key, value))
        self.callbacks.append(on_delivery)

    def poll(self, _timeout: float) -> int:
        for callback in self.callbacks:
            callback("broker down" if self.fail else None, None)
        self.callbacks = []
        return 0

    def flush(self, _timeout: float) -> int:
        self.poll(0)
        return 0


@pytest.mark.parametrize("fail", [False, True])
def test_the_writer_collects_failures_instead_of_raising(fail: bool) -> None:
    producer = Producer(fail)
    writer = LedgerWriter(producer, "kafka-stripe.ledger", clock=lambda: 1.5)
    writer.write(KEY, 10, "usage")
    assert writer.flush(1.0) == 0
    (topic, key, value), = producer.sent
    assert (topic, LedgerKey.decode(key), LedgerMark.decode(value)) == (
        "kafka-stripe.ledger",
        KEY,
        LedgerMark(10, "usage", 1500),
    )
    failures = writer.failures()
    assert bool(failures) is fail and writer.failures() == []
