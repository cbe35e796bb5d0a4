"""``ContextSenders`` against the emulator in-process: one session per Stripe context, events land in
their own account, a context the key cannot act in is refused per batch (not fatal), and a 429 storm on one
account leaves the others' batches alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from connector.config.secrets import Secret
from connector.config.settings import SenderSettings, StripeSettings
from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.records import MeterEvent
from connector.stripe.contexts import CONTEXT_REFUSED, MAX_CONTEXT_LABELS, ContextSenders
from connector.stripe.http import HttpxClient
from tests.unit.stripe.test_v1 import KEY, NOW

pytestmark = pytest.mark.anyio

BASE = "http://emulator"
ACCOUNTS = ("acct_1Alpha", "acct_1Beta")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Emulated:
    def __init__(self) -> None:
        self.app = create_app(EmulatorConfig(api_key=KEY), clock=ManualClock(NOW))
        self.transport = httpx.ASGITransport(app=self.app)
        stripe = StripeSettings(Secret(KEY), api_base=BASE, meter_events_base=BASE)
        self.senders = ContextSenders(
            stripe, SenderSettings(retry_max_elapsed_s=1.0), http=HttpxClient(transport=self.transport)
        )

    async def control(self, path: str, document: dict[str, Any]) -> None:
        async with httpx.AsyncClient(transport=self.transport, base_url=BASE) as client:
            response = await client.post(path, json=document)
            response.raise_for_status()

    async def stats(self, context: str | None = None) -> dict[str, Any]:
        async with httpx.AsyncClient(transport=self.transport, base_url=BASE) as client:
            response = await client.get("/_emulator/stats", params={"context": context} if context else None)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result


@pytest.fixture
async def emulated() -> AsyncIterator[Emulated]:
    emulator = Emulated()
    await emulator.control("/_emulator/contexts", {"ids": list(ACCOUNTS)})
    yield emulator
    await emulator.senders.aclose()


def events(n: int, prefix: str, context: str | None) -> list[MeterEvent]:
    payload = {"stripe_customer_id": "cus_1", "value": "1"}
    return [
        MeterEvent(f"{prefix}-{i}", "api", "2024-06-01T11:59:00.000Z", payload, context) for i in range(n)
    ]


async def test_each_context_gets_its_own_session_and_its_events_land_in_its_account(
    emulated: Emulated,
) -> None:
    for context in (None, *ACCOUNTS):
        result = await emulated.senders.send(events(3, "same-id", context), None, context)
        assert result.status == "delivered" and not result.rejected
    # The same identifiers in three accounts: each account counts its own three.
    for context in (None, *ACCOUNTS):
        assert (await emulated.stats(context))["events_accepted"] == 3, context
    sessions = {
        context: emulated.senders.sender_for(context).sessions.session for context in (None, *ACCOUNTS)
    }
    assert len({session.token for session in sessions.values() if session is not None}) == 3


async def test_a_context_the_key_cannot_act_in_rejects_its_batches_with_stripes_reason(
    emulated: Emulated,
) -> None:
    result = await emulated.senders.send(events(2, "x", "acct_1Unknown"), None, "acct_1Unknown")
    assert result.delivered == () and [r.code for r in result.rejected] == [CONTEXT_REFUSED] * 2
    message = result.rejected[0].message
    assert "acct_1Unknown" in message and "does not have access" in message and KEY not in message
    # The platform and the other accounts carry on.
    assert (await emulated.senders.send(events(1, "y", None))).status == "delivered"
    assert emulated.senders.refusal("acct_1Unknown") is not None
    assert emulated.senders.refusal(ACCOUNTS[0]) is None


async def test_a_throttled_account_does_not_hold_up_the_others(emulated: Emulated) -> None:
    throttled, healthy = ACCOUNTS
    await emulated.control("/_emulator/faults", {"context": throttled, "rate_limited_rate": 1.0})
    slow = asyncio.create_task(emulated.senders.send(events(1, "slow", throttled), None, throttled))
    for n in range(5):
        fast = await asyncio.wait_for(emulated.senders.send(events(5, f"fast{n}", healthy), None, healthy), 5)
        assert fast.status == "delivered"
    result = await slow
    assert result.status == "undelivered"  # its retry budget ran out on 429s; the others never waited
    stats = emulated.senders.context_stats()
    assert stats[throttled].rate_limited > 0 and stats[healthy].rate_limited == 0


def test_metric_labels_stay_bounded() -> None:
    senders = ContextSenders(StripeSettings(Secret(KEY)), SenderSettings(), labelled=("acct_1Configured",))
    labels = {senders.label(f"acct_{n}") for n in range(MAX_CONTEXT_LABELS * 3)}
    assert len(labels) <= MAX_CONTEXT_LABELS + 1 and "other" in labels
    assert senders.label("acct_1Configured") == "acct_1Configured" and senders.label(None) == "platform"
