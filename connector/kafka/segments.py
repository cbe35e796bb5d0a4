"""Fixed pre-aggregation segments in the ledger topic: per partition, the offset ranges whose aggregates may
already be at Stripe, so that whoever reads the partition next cuts its records exactly there again.

Record key: ``[namespace, event_name, topic_id, partition, "segments"]`` (five elements: the mark readers'
``LedgerKey.decode`` passes over it); value: ``{"segments": [[start, end], ...], "written_at": ms}``, where
a range of a window-total meter's topic has a third element, the running totals after it
(``connector.pipeline.window_totals``); the latest record of a key wins (the topic is compacted). Ranges
below a reader's committed offset are stale and ignored by it (``connector.pipeline.aggregation``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from connector.kafka.delivery_ledger import LedgerError, LedgerKey

_TAG = "segments"
# [start, end) and the window totals after the range (None: not a window-total meter's topic)
Range = tuple[int, int, dict[str, Any] | None]
Ranges = list[Range]


def segments_key(key: LedgerKey) -> bytes:
    return json.dumps([*key, _TAG], separators=(",", ":")).encode()


def decode_segments(raw_key: bytes | None, raw_value: bytes | None) -> tuple[LedgerKey, Ranges] | None:
    """The partition and ranges of a segments record, None for any other record."""
    try:
        *parts, tag = json.loads(raw_key or b"")
        key = LedgerKey.decode(json.dumps(parts).encode()) if tag == _TAG else None
        if key is None:
            return None
        ranges = json.loads(raw_value)["segments"] if raw_value is not None else []
        return key, [(int(r[0]), int(r[1]), r[2] if len(r) > 2 else None) for r in ranges]
    except (ValueError, TypeError, KeyError):
        return None


def write_segments(producer: Any, ledger_topic: str, key: LedgerKey, ranges: Sequence[Range]) -> None:
    """Write ``ranges`` for ``key`` and wait for the broker's acknowledgement (raises ``LedgerError``):
    the aggregates of a range may be sent only once it is durable."""
    failures: list[str] = []
    rows = [[start, end] if totals is None else [start, end, totals] for start, end, totals in ranges]
    value = json.dumps({"segments": rows, "written_at": int(time.time() * 1000)}, separators=(",", ":"))

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(ledger_topic, key=segments_key(key), value=value.encode(), on_delivery=report)
    if producer.flush(30.0) or failures:
        why = failures[0] if failures else "no acknowledgement within 30 s"
        raise LedgerError(f"cannot fix a pre-aggregation segment in the ledger {ledger_topic!r}: {why}")
