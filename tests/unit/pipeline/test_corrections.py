"""Corrections applied against the emulator in-process (real HTTP through ASGI): cancel and replace within
Stripe's 24 hours, compensate after them, refuse what cannot be corrected, and never cancel twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from connector.config.secrets import Secret
from connector.config.settings import SenderSettings, StripeSettings
from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.mapping.corrections import Correction
from connector.pipeline.corrections import (
    CANCEL_REFUSED,
    WINDOW_PASSED,
    Corrected,
    CorrectionJob,
    Keys,
    apply_correction,
)
from connector.records import MeterEvent
from connector.stripe.contexts import ContextSenders
from connector.stripe.http import HttpxClient
from connector.stripe.request_keys import Origin
from connector.stripe.v1 import StripeClient
from tests.unit.stripe.test_v1 import KEY, NOW, SyncASGITransport

pytestmark = pytest.mark.anyio

BASE = "http://emulator"
CUSTOMER = "cus_corrected"
KEYS = Keys("stripe_customer_id", "value")


class Stripe:
    """The emulator on a manual clock, a ``ContextSenders`` speaking to it, and a v1 client to read it."""

    def __init__(self) -> None:
        self.clock = ManualClock(NOW)
        self.app = create_app(EmulatorConfig(api_key=KEY), clock=self.clock)
        self.bridge = SyncASGITransport(self.app)
        stripe = StripeSettings(Secret(KEY), api_base=BASE, meter_events_base=BASE)
        self.senders = ContextSenders(
            stripe,
            SenderSettings(retry_max_elapsed_s=2.0),
            http=HttpxClient(transport=httpx.ASGITransport(app=self.app)),
            v1_factory=self.v1,
        )

    def v1(self, context: str | None = None) -> StripeClient:
        return StripeClient(Secret(KEY), api_base=BASE, transport=self.bridge, max_retries=0, context=context)

    async def send(self, identifier: str, value: str, at: str) -> None:
        event = MeterEvent(identifier, "api_calls", at, {"stripe_customer_id": CUSTOMER, "value": value})
        result = await self.senders.send([event])
        assert result.status == "delivered" and not result.rejected

    async def correct(self, correction: Correction) -> Corrected:
        job = CorrectionJob(correction, message=None, offsets=None, origin=Origin("ns", 0, 7))
        return await apply_correction(job, self.senders, KEYS, wall_clock=self.clock)

    def total(self, meter_id: str) -> float:
        with self.v1() as client:
            start, end = int(NOW) - 3600, int(NOW) + 3 * 86400
            summaries = client.meter_event_summaries(meter_id, CUSTOMER, start, end)
        return sum(s.aggregated_value for s in summaries)


@pytest.fixture
async def stripe() -> AsyncIterator[Stripe]:
    emulated = Stripe()
    yield emulated
    await emulated.senders.aclose()
    emulated.bridge.shutdown()


def correction(original: str, **fields: Any) -> Correction:
    values: dict[str, Any] = {
        "original": original,
        "event_name": "api_calls",
        "customer": CUSTOMER,
        "original_value": "10",
        "replacement_value": "4",
        "timestamp": AT,
        "timestamp_ms": int(NOW * 1000),
        "reason": "test",
        "attributes": {},
        "context": None,
        "identifier": "kafka:corrections:ns:0:7",
    }
    values.update(fields)
    return Correction(**values)


AT = "2024-06-01T12:00:00.000Z"  # NOW


def meter(stripe: Stripe, formula: str = "sum") -> str:
    with stripe.v1() as client:
        return client.create_meter("api_calls", formula=formula).id


async def test_within_the_window_the_original_is_cancelled_and_the_replacement_sent(stripe: Stripe) -> None:
    meter_id = meter(stripe)
    await stripe.send("usage-1", "10", AT)
    await stripe.send("usage-2", "5", AT)
    done = await stripe.correct(correction("usage-1"))
    assert done == Corrected("replaced")
    assert stripe.total(meter_id) == 9  # 10 cancelled, 4 instead, 5 untouched


async def test_a_cancel_only_correction_and_its_replay_cancel_once(stripe: Stripe) -> None:
    meter_id = meter(stripe)
    await stripe.send("usage-1", "10", AT)
    await stripe.send("usage-2", "5", AT)
    first = await stripe.correct(correction("usage-1", replacement_value=None))
    again = await stripe.correct(correction("usage-1", replacement_value=None))
    assert first == again == Corrected("cancelled")  # the replay gets Stripe's stored answer
    assert stripe.total(meter_id) == 5
    assert stripe.app.state.stats.events_canceled == 1


async def test_after_the_window_a_sum_meter_gets_one_compensating_event(stripe: Stripe) -> None:
    meter_id = meter(stripe)
    await stripe.send("usage-1", "10", AT)
    stripe.clock.advance(25 * 3600)
    done = await stripe.correct(correction("usage-1"))
    assert done == Corrected("compensated")
    again = await stripe.correct(correction("usage-1"))  # a replay: same identifier, deduplicated
    assert again == Corrected("compensated")
    assert stripe.total(meter_id) == 4  # 10 + (4 - 10)


async def test_after_the_window_a_meter_that_does_not_sum_is_refused(stripe: Stripe) -> None:
    meter(stripe, formula="count")
    await stripe.send("usage-1", "10", AT)
    stripe.clock.advance(25 * 3600)
    done = await stripe.correct(correction("usage-1"))
    assert done.error is not None and done.error.code == WINDOW_PASSED
    assert "count" in done.error.reason


async def test_after_the_window_without_the_original_value_nothing_is_guessed(stripe: Stripe) -> None:
    meter(stripe)
    await stripe.send("usage-1", "10", AT)
    stripe.clock.advance(25 * 3600)
    done = await stripe.correct(correction("usage-1", original_value=None))
    assert done.error is not None and done.error.code == WINDOW_PASSED
    assert "original_value" in done.error.reason


async def test_a_correction_of_an_event_stripe_never_received_is_reported(stripe: Stripe) -> None:
    meter_id = meter(stripe)
    await stripe.send("usage-1", "10", AT)
    done = await stripe.correct(correction("never-sent"))
    assert done.error is not None and done.error.code == CANCEL_REFUSED
    assert "never-sent" in done.error.reason
    assert stripe.total(meter_id) == 10  # nothing sent in its place


async def test_an_unchanged_value_after_the_window_sends_nothing(stripe: Stripe) -> None:
    meter_id = meter(stripe)
    await stripe.send("usage-1", "10", AT)
    stripe.clock.advance(25 * 3600)
    done = await stripe.correct(correction("usage-1", replacement_value="10"))
    assert done == Corrected("unchanged")
    assert stripe.total(meter_id) == 10
