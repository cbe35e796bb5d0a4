"""Admission over the emulator in-process: the start refuses a key that may not read customers, meters that
go and come back block and free their topic, lookups release or reject held events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Message

from connector.config.secrets import Secret
from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.errors import FatalError
from connector.pipeline.admission import Admission, Decisions
from connector.pipeline.batching import Item
from connector.pipeline.customers import Verdict
from connector.pipeline.offsets import PartitionOffsets
from connector.pipeline.stripe_watch import StripeWatch
from connector.records import MeterEvent
from connector.stripe.directory import StripeDirectory
from connector.stripe.v1 import StripeClient
from tests.unit.pipeline.fakes import TOPIC, settings
from tests.unit.stripe.test_directory import forbid_customers
from tests.unit.stripe.test_v1 import KEY, NOW, SyncASGITransport


@pytest.fixture
def emulator() -> Iterator[tuple[Any, SyncASGITransport]]:
    app = create_app(EmulatorConfig(api_key=KEY, require_known_customers=True), clock=ManualClock(NOW))
    bridge = SyncASGITransport(app)
    yield app, bridge
    bridge.shutdown()


def client(bridge: SyncASGITransport) -> StripeClient:
    return StripeClient(Secret(KEY), api_base="http://emulator", transport=bridge, max_retries=0)


def watch(bridge: SyncASGITransport) -> StripeWatch:
    return StripeWatch(StripeDirectory(client(bridge)), lookups_per_s=200, meter_refresh_s=0.05)


def item(customer: str, offset: int = 0) -> Item:
    event = MeterEvent(
        f"id-{offset}", "api_requests", "2026-11-23T00:00:00.000Z", {"stripe_customer_id": customer}
    )
    return Item(
        event, Message(topic=TOPIC, partition=0, offset=offset, value=b"x"), PartitionOffsets(TOPIC, 0)
    )


def until(admission: Admission, done: Any, timeout: float = 10) -> Decisions:
    """Poll until ``done(all decisions so far)``; returns them merged."""
    merged = Decisions([], [], [], [])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = admission.poll(time.monotonic())
        for mine, theirs in zip(merged, d, strict=True):
            mine.extend(theirs)  # type: ignore[attr-defined]
        if done(merged):
            return merged
        time.sleep(0.02)
    raise AssertionError(f"timed out: {merged}")


def test_a_key_that_may_not_read_customers_refuses_the_start(emulator: tuple[Any, SyncASGITransport]) -> None:
    app, _bridge = emulator
    forbidden = SyncASGITransport(forbid_customers(app))
    admission = Admission(settings(), watch(forbidden))
    try:
        with pytest.raises(FatalError, match="Customers: Read"):
            admission.start()
    finally:
        admission.stop()
        forbidden.shutdown()


def test_without_verification_the_permission_is_not_needed(emulator: tuple[Any, SyncASGITransport]) -> None:
    app, _bridge = emulator
    forbidden = SyncASGITransport(forbid_customers(app))
    admission = Admission(settings(CONNECTOR_VERIFY_CUSTOMERS="false"), watch(forbidden))
    try:
        admission.start()
        assert admission.problem(TOPIC) == "no meter has event name 'api_requests'"
    finally:
        admission.stop()
        forbidden.shutdown()


def test_a_meter_deactivated_and_reactivated_blocks_then_frees_its_topic(
    emulator: tuple[Any, SyncASGITransport],
) -> None:
    _app, bridge = emulator
    stripe = client(bridge)
    meter = stripe.create_meter("api_requests")
    admission = Admission(settings(), watch(bridge))
    admission.start()
    try:
        assert admission.problem(TOPIC) is None
        assert [m.problem for m in admission.meters_snapshot()] == [None]
        stripe.post(f"/v1/billing/meters/{meter.id}/deactivate")
        blocked = until(admission, lambda d: d.blocked)
        assert blocked.blocked == [TOPIC] and "inactive" in (admission.problem(TOPIC) or "")
        stripe.post(f"/v1/billing/meters/{meter.id}/reactivate")
        freed = until(admission, lambda d: d.freed)
        assert freed.freed == [TOPIC] and admission.problem(TOPIC) is None
    finally:
        admission.stop()


def test_held_events_are_released_when_found_and_rejected_when_still_unknown(
    emulator: tuple[Any, SyncASGITransport],
) -> None:
    _app, bridge = emulator
    stripe = client(bridge)
    stripe.create_meter("api_requests")
    known = stripe.post("/v1/customers", {"name": "k"})["id"]
    admission = Admission(
        settings(CONNECTOR_UNKNOWN_CUSTOMER_WAIT_S="0.5", CONNECTOR_CUSTOMER_PRELOAD="0"), watch(bridge)
    )
    admission.start()
    try:
        now = time.monotonic()
        good, ghost = item(known, 1), item("cus_Ghost1", 2)
        assert admission.admit(good, now) is Verdict.HOLD
        assert admission.admit(ghost, now) is Verdict.HOLD
        decided = until(admission, lambda d: d.send and d.reject)
        assert decided.send == [good]
        ((rejected, error),) = decided.reject
        assert rejected is ghost and error.code == "customer_not_found" and "cus_Ghost1" in error.reason
        assert admission.admit(item(known, 3), time.monotonic()) is Verdict.SEND
    finally:
        admission.stop()
