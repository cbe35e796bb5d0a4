"""In-process tests of meter event adjustments sent by stripe-python, v2 and v1, in a connected account
and on the platform: the objects, what stops counting, the three refusals, and Idempotency-Key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import stripe

from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp

pytestmark = [
    pytest.mark.anyio,
    # stripe-python hands httpx its JSON body as ``data``, which httpx accepts with a deprecation notice.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

KEY = "sk_test_emulatoradjust001"
NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z
HOUR = 3_600
DAY = 86_400
BASE = "http://emulator"
ALPHA = "acct_Alpha1"
BETA = "acct_Beta2"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Stand:
    """The emulator in-process on a manual clock with two connected accounts; stripe-python reaches it
    through httpx's ASGI transport, and every answer it gets is kept in ``answers``."""

    def __init__(self, app: EmulatorApp, clock: ManualClock) -> None:
        self.app = app
        self.clock = clock
        self.answers: list[httpx.Response] = []
        self.raw = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)

    def client(self, key: str = KEY) -> stripe.StripeClient:
        async def keep(response: httpx.Response) -> None:
            self.answers.append(response)

        def async_client(**_: Any) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=self.app)
            return httpx.AsyncClient(transport=transport, event_hooks={"response": [keep]})

        # ``_lib`` is stripe-python's own seam for testing its httpx client: the httpx it builds on.
        http = stripe.HTTPXClient(_lib=SimpleNamespace(AsyncClient=async_client))
        return stripe.StripeClient(
            key, base_addresses={"api": BASE, "meter_events": BASE}, http_client=http, max_network_retries=0
        )

    async def usage(self, context: str | None, *events: tuple[str, str]) -> str:
        """A meter in ``context`` and the (identifier, value) events sent there; returns the meter's id."""
        params: Any = {
            "display_name": "API",
            "event_name": "api_requests",
            "default_aggregation": {"formula": "sum"},
        }
        meter = await self.client().v1.billing.meters.create_async(params, options=opts(context))
        session = await self.client().v2.billing.meter_event_session.create_async(options=opts(context))
        stream: Any = {"events": [event(identifier, value) for identifier, value in events]}
        await self.client(session.authentication_token).v2.billing.meter_event_stream.create_async(stream)
        return str(meter.id)

    async def v2(self, identifier: str, context: str | None = None, key: str | None = None) -> Any:
        params: Any = {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": identifier}}
        options: Any = {**opts(context), **({} if key is None else {"idempotency_key": key})}
        return await self.client().v2.billing.meter_event_adjustments.create_async(params, options=options)

    async def v1(self, identifier: str, context: str | None = None, key: str | None = None) -> Any:
        params: Any = {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": identifier}}
        options: Any = {**opts(context), **({} if key is None else {"idempotency_key": key})}
        return await self.client().v1.billing.meter_event_adjustments.create_async(params, options=options)

    async def total(self, meter_id: str, context: str | None = None) -> float:
        params: Any = {"customer": "cus_A", "start_time": int(NOW) - DAY, "end_time": int(NOW) + DAY}
        summaries = await self.client().v1.billing.meters.event_summaries.list_async(
            meter_id, params, options=opts(context)
        )
        return float(summaries.data[0].aggregated_value)

    async def stats(self, context: str | None = None) -> dict[str, Any]:
        response = await self.raw.get(
            "/_emulator/stats", params={} if context is None else {"context": context}
        )
        body: dict[str, Any] = response.json()
        return body

    async def advance(self, seconds: float) -> None:
        response = await self.raw.post("/_emulator/clock", json={"advance_s": seconds})
        assert response.status_code == 200, response.text


def opts(context: str | None) -> Any:
    return {} if context is None else {"stripe_context": context}


def event(identifier: str, value: str) -> dict[str, Any]:
    return {
        "event_name": "api_requests",
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_A", "value": value},
    }


@pytest.fixture
async def emu() -> AsyncIterator[Stand]:
    clock = ManualClock(NOW)
    stand = Stand(create_app(EmulatorConfig(contexts=(ALPHA, BETA)), clock=clock), clock)
    yield stand
    await stand.raw.aclose()


# -- in a context ---------------------------------------------------------------------------------


async def test_a_v2_cancel_in_a_context_touches_that_account_only(emu: Stand) -> None:
    alpha = await emu.usage(ALPHA, ("shared", "5"), ("kept", "2"))
    platform = await emu.usage(None, ("shared", "7"))
    adjustment = await emu.v2("shared", ALPHA)
    assert adjustment.object == "v2.billing.meter_event_adjustment"
    assert adjustment.id.startswith("mtr_event_adj_") and adjustment.created == "2024-06-01T12:00:00.000Z"
    assert (adjustment.event_name, adjustment.type, adjustment.status) == (
        "api_requests",
        "cancel",
        "pending",
    )
    assert adjustment.cancel.identifier == "shared" and adjustment.livemode is False
    assert await emu.total(alpha, ALPHA) == 2.0
    assert await emu.total(platform) == 7.0  # the same identifier on the platform still counts
    assert (await emu.stats(ALPHA))["events_canceled"] == 1
    assert (await emu.stats())["events_canceled"] == 0
    status = emu.app.state.event_status("shared", context=ALPHA)
    assert status is not None and status.status == "canceled"


async def test_a_v1_cancel_in_a_context_touches_that_account_only(emu: Stand) -> None:
    alpha = await emu.usage(ALPHA, ("one", "5"))
    beta = await emu.usage(BETA, ("one", "3"))
    adjustment = await emu.v1("one", BETA)
    assert adjustment.object == "billing.meter_event_adjustment"
    assert "id" not in adjustment and "created" not in adjustment
    assert (adjustment.event_name, adjustment.type, adjustment.cancel.identifier) == (
        "api_requests",
        "cancel",
        "one",
    )
    assert await emu.total(beta, BETA) == 0.0
    assert await emu.total(alpha, ALPHA) == 5.0


async def test_a_cancel_of_an_identifier_another_account_received_is_unknown(emu: Stand) -> None:
    await emu.usage(ALPHA, ("only-alpha", "1"))
    with pytest.raises(stripe.InvalidRequestError, match="No meter event with identifier only-alpha"):
        await emu.v2("only-alpha", BETA)


# -- the three refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_canceling_twice_is_refused_the_second_time(emu: Stand, api: str) -> None:
    meter_id = await emu.usage(ALPHA, ("twice", "4"), ("other", "1"))
    cancel = emu.v1 if api == "v1" else emu.v2
    await cancel("twice", ALPHA)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await cancel("twice", ALPHA)
    assert refused.value.http_status == 400
    assert "is already canceled" in str(refused.value.user_message)
    assert await emu.total(meter_id, ALPHA) == 1.0
    assert (await emu.stats(ALPHA))["events_canceled"] == 1


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_canceling_an_event_received_25_hours_ago_is_refused(emu: Stand, api: str) -> None:
    meter_id = await emu.usage(ALPHA, ("old", "4"))
    await emu.advance(25 * HOUR)
    cancel = emu.v1 if api == "v1" else emu.v2
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await cancel("old", ALPHA)
    message = str(refused.value.user_message)
    assert "was received more than 24 hours ago (2024-06-01T12:00:00.000Z)" in message
    params: Any = {"customer": "cus_A", "start_time": int(NOW) - DAY, "end_time": int(NOW) + DAY}
    summaries = await emu.client().v1.billing.meters.event_summaries.list_async(
        meter_id, params, options=opts(ALPHA)
    )
    assert summaries.data[0].aggregated_value == 4.0
    assert (await emu.stats(ALPHA))["events_canceled"] == 0


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_canceling_an_unknown_identifier_is_refused(emu: Stand, api: str) -> None:
    await emu.usage(ALPHA, ("known", "1"))
    cancel = emu.v1 if api == "v1" else emu.v2
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await cancel("never-sent", ALPHA)
    assert "No meter event with identifier never-sent was received" in str(refused.value.user_message)
    body: Any = refused.value.json_body
    assert body["error"]["code"] == "resource_missing"


async def test_the_three_refusals_say_different_things(emu: Stand) -> None:
    await emu.usage(ALPHA, ("gone", "1"), ("done", "1"))
    await emu.v2("done", ALPHA)
    await emu.advance(20 * HOUR)
    await emu.usage(BETA, ("other", "1"))  # unrelated traffic
    messages = set()
    for identifier, wait in (("done", 0), ("nope", 0), ("gone", 5 * HOUR)):
        if wait:
            await emu.advance(wait)
        with pytest.raises(stripe.InvalidRequestError) as refused:
            await emu.v2(identifier, ALPHA)
        messages.add(str(refused.value.user_message).replace(identifier, "ID"))
    assert len(messages) == 3


# -- Idempotency-Key --------------------------------------------------------------------------------


async def test_a_v2_adjustment_is_replayed_for_its_key_and_applied_once(emu: Stand) -> None:
    meter_id = await emu.usage(ALPHA, ("x", "5"), ("y", "2"))
    first = await emu.v2("x", ALPHA, key="adj-1")
    first_answer = emu.answers[-1]
    again = await emu.v2("x", ALPHA, key="adj-1")
    replayed = emu.answers[-1]
    assert again.id == first.id and again.created == first.created
    assert replayed.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first_answer.headers
    assert replayed.content == first_answer.content
    assert await emu.total(meter_id, ALPHA) == 2.0
    stats = await emu.stats(ALPHA)
    assert stats["events_canceled"] == 1 and stats["idempotent_replays"] == 1


async def test_a_v2_key_sent_again_with_another_body_is_refused(emu: Stand) -> None:
    meter_id = await emu.usage(ALPHA, ("x", "5"), ("y", "2"))
    await emu.v2("x", ALPHA, key="adj-1")
    with pytest.raises(stripe.IdempotencyError) as refused:
        await emu.v2("y", ALPHA, key="adj-1")
    assert refused.value.http_status == 400
    body: Any = refused.value.json_body
    assert body["error"]["type"] == "idempotency_error"
    assert await emu.total(meter_id, ALPHA) == 2.0  # x canceled once, y still counts
    assert (await emu.stats(ALPHA))["events_canceled"] == 1


async def test_a_refused_v2_adjustment_leaves_its_key_fresh(emu: Stand) -> None:
    await emu.usage(ALPHA, ("x", "5"))
    with pytest.raises(stripe.InvalidRequestError):
        await emu.v2("unknown", ALPHA, key="adj-2")
    fresh = await emu.v2("x", ALPHA, key="adj-2")  # another body, yet no idempotency error
    assert fresh.cancel.identifier == "x"
    assert "idempotent-replayed" not in emu.answers[-1].headers


async def test_v2_keys_are_the_accounts_and_last_30_days(emu: Stand) -> None:
    await emu.usage(ALPHA, ("x", "5"))
    await emu.usage(BETA, ("x", "5"))
    await emu.v2("x", ALPHA, key="adj-3")
    beta = await emu.v2("x", BETA, key="adj-3")  # another account: not a replay
    assert beta.cancel.identifier == "x" and "idempotent-replayed" not in emu.answers[-1].headers
    await emu.advance(29 * DAY)
    await emu.v2("x", ALPHA, key="adj-3")
    assert emu.answers[-1].headers["idempotent-replayed"] == "true"
    await emu.advance(2 * DAY)
    with pytest.raises(stripe.InvalidRequestError, match="more than 24 hours ago"):
        await emu.v2("x", ALPHA, key="adj-3")  # forgotten: the request runs again


async def test_a_stream_key_is_not_an_adjustment_key(emu: Stand) -> None:
    await emu.usage(ALPHA, ("x", "5"))
    session = await emu.client().v2.billing.meter_event_session.create_async(options=opts(ALPHA))
    stream: Any = {"events": [event("z", "1")]}
    await emu.client(session.authentication_token).v2.billing.meter_event_stream.create_async(
        stream, options={"idempotency_key": "shared-key"}
    )
    with pytest.raises(stripe.IdempotencyError, match="same endpoint"):
        await emu.v2("x", ALPHA, key="shared-key")


async def test_a_v1_adjustment_is_replayed_for_24_hours(emu: Stand) -> None:
    meter_id = await emu.usage(ALPHA, ("x", "5"), ("y", "2"))
    await emu.v1("x", ALPHA, key="v1-adj")
    await emu.v1("x", ALPHA, key="v1-adj")
    assert emu.answers[-1].headers["idempotent-replayed"] == "true"
    assert await emu.total(meter_id, ALPHA) == 2.0
    with pytest.raises(stripe.IdempotencyError):
        await emu.v1("y", ALPHA, key="v1-adj")
    await emu.advance(DAY)
    with pytest.raises(stripe.InvalidRequestError, match="more than 24 hours ago"):
        await emu.v1("x", ALPHA, key="v1-adj")  # the key expired with the day: the request runs


async def test_v1_stores_a_refusal_once_the_endpoint_ran(emu: Stand) -> None:
    await emu.usage(ALPHA, ("x", "5"))
    with pytest.raises(stripe.InvalidRequestError):
        await emu.v1("missing", ALPHA, key="v1-err")
    with pytest.raises(stripe.InvalidRequestError):
        await emu.v1("missing", ALPHA, key="v1-err")
    assert emu.answers[-1].headers["idempotent-replayed"] == "true"
    assert emu.answers[-1].content == emu.answers[-2].content
    with pytest.raises(stripe.IdempotencyError):
        await emu.v1("x", ALPHA, key="v1-err")  # the key holds the refusal


async def test_v1_parameter_errors_store_nothing(emu: Stand) -> None:
    await emu.usage(ALPHA, ("x", "5"))
    headers = {"Authorization": f"Bearer {KEY}", "Stripe-Context": ALPHA, "Idempotency-Key": "v1-param"}
    bad = await emu.raw.post(
        "/v1/billing/meter_event_adjustments",
        data={"event_name": "api_requests", "type": "cancel"},
        headers=headers,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cancel"
    adjustment = await emu.v1("x", ALPHA, key="v1-param")
    assert adjustment.cancel.identifier == "x"
