"""In-process tests of ``Idempotency-Key`` on the meter event stream, sent by stripe-python: replays,
reuse with another body, the 30-day window, overlapping duplicates, key length, error-report origins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import stripe

from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp
from connector.devtools.emulator.idempotency import IdempotencyKeys

pytestmark = [
    pytest.mark.anyio,
    # stripe-python hands httpx its JSON body as ``data``, which httpx accepts with a deprecation notice.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

KEY = "sk_test_emulatoridem0001"
LIVE_KEY = "sk_live_emulatoridem0001"
NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z
DAY = 86_400.0
BASE = "http://emulator"
IDEM = "ks1:0123456789abcdef:topic:0:100+9"  # shaped like the connector's keys; opaque here


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Emu:
    """The emulator in-process on a manual clock; stripe-python reaches it through httpx's ASGI
    transport, and every answer it gets is kept in ``answers`` (stream calls return nothing)."""

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

    async def streamer(self, key: str = KEY) -> stripe.StripeClient:
        """A client holding a fresh meter event session's token."""
        session = await self.client(key).v2.billing.meter_event_session.create_async()
        return self.client(session.authentication_token)

    async def send(
        self, client: stripe.StripeClient, *events: dict[str, Any], key: str = IDEM
    ) -> httpx.Response:
        params: Any = {"events": list(events)}
        await client.v2.billing.meter_event_stream.create_async(params, options={"idempotency_key": key})
        return self.answers[-1]

    async def meter(self, key: str = KEY) -> str:
        params: Any = {
            "display_name": "API calls",
            "event_name": "api_requests",
            "default_aggregation": {"formula": "sum"},
        }
        meter = await self.client(key).v1.billing.meters.create_async(params)
        return str(meter.id)

    async def total(self, meter_id: str, key: str = KEY) -> float:
        response = await self.raw.get(
            f"/v1/billing/meters/{meter_id}/event_summaries",
            params={"customer": "cus_A", "start_time": int(NOW - DAY), "end_time": int(NOW + 40 * DAY)},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200, response.text
        return float(response.json()["data"][0]["aggregated_value"])

    async def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.raw.get("/_emulator/stats")).json()
        return body

    async def control(self, path: str, **settings: Any) -> None:
        response = await self.raw.post(path, json=settings)
        assert response.status_code == 200, response.text


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    clock = ManualClock(NOW)
    emulator = Emu(create_app(EmulatorConfig(), clock=clock), clock)
    yield emulator
    await emulator.raw.aclose()


def event(identifier: str, value: str = "1", customer: str = "cus_A") -> dict[str, Any]:
    return {
        "event_name": "api_requests",
        "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": value},
    }


# -- replays ----------------------------------------------------------------------------------------


async def test_same_key_and_body_is_taken_once_and_its_answer_replayed(emu: Emu) -> None:
    meter_id = await emu.meter()
    client = await emu.streamer()
    first = await emu.send(client, event("e1", "5"), event("e2", "7"))
    again = await emu.send(client, event("e1", "5"), event("e2", "7"))
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == first.content == b"{}"
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    # The replay is its own exchange with its own Request-Id; the events stay the first request's.
    assert again.headers["request-id"] != first.headers["request-id"]
    status = emu.app.state.event_status("e1")
    assert status is not None
    assert (status.request_id, status.idempotency_key) == (first.headers["request-id"], IDEM)
    assert await emu.total(meter_id) == 12.0
    stats = await emu.stats()
    assert stats["idempotent_replays"] == 1
    assert stats["events_received"] == 2 and stats["duplicates_ignored"] == 0
    assert stats["stream_requests_by_status"] == {"200": 2}


async def test_a_new_session_of_the_same_account_gets_the_replay(emu: Emu) -> None:
    await emu.send(await emu.streamer(), event("e1"))
    again = await emu.send(await emu.streamer(), event("e1"))
    assert again.headers["idempotent-replayed"] == "true"
    assert (await emu.stats())["events_received"] == 1


async def test_keys_are_kept_apart_by_mode(emu: Emu) -> None:
    await emu.send(await emu.streamer(KEY), event("e1"))
    live = await emu.send(await emu.streamer(LIVE_KEY), event("e1"))
    assert "idempotent-replayed" not in live.headers
    assert (await emu.stats())["events_received"] == 2


async def test_a_replay_is_compressed_like_the_first_answer(emu: Emu) -> None:
    await emu.control("/_emulator/faults", compress=True)
    client = await emu.streamer()
    await emu.send(client, event("e1"))
    again = await emu.send(client, event("e1"))
    assert again.headers["content-encoding"] == "gzip" and again.headers["idempotent-replayed"] == "true"
    assert again.json() == {}


async def test_a_retry_after_a_dropped_answer_is_replayed_not_counted_again(emu: Emu) -> None:
    meter_id = await emu.meter()
    client = await emu.streamer()
    await emu.control("/_emulator/faults", drop_rate=1.0)
    with pytest.raises(stripe.APIConnectionError):
        await emu.send(client, event("e1", "3"))
    await emu.control("/_emulator/faults", drop_rate=0.0)
    again = await emu.send(client, event("e1", "3"))
    assert again.headers["idempotent-replayed"] == "true"
    assert await emu.total(meter_id) == 3.0
    assert (await emu.stats())["events_received"] == 1


# -- misuse ------------------------------------------------------------------------------------------


async def test_same_key_with_another_body_is_refused_and_records_nothing(emu: Emu) -> None:
    meter_id = await emu.meter()
    client = await emu.streamer()
    await emu.send(client, event("e1", "5"))
    with pytest.raises(stripe.IdempotencyError) as refused:
        await emu.send(client, event("e1", "6"))
    assert refused.value.http_status == 400
    error = (refused.value.json_body or {})["error"]
    assert (error["type"], error["code"]) == ("idempotency_error", "idempotency_error")
    assert IDEM in error["message"]
    assert await emu.total(meter_id) == 5.0
    stats = await emu.stats()
    assert stats["events_received"] == 1 and stats["idempotent_replays"] == 0
    # The key still holds the first body's answer.
    assert (await emu.send(client, event("e1", "5"))).headers["idempotent-replayed"] == "true"


async def test_a_key_longer_than_255_characters_is_refused(emu: Emu) -> None:
    client = await emu.streamer()
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await emu.send(client, event("e1"), key="k" * 256)
    assert refused.value.http_status == 400 and refused.value.code == "parameter_invalid"
    assert "1-255 characters" in str(refused.value.user_message)
    assert (await emu.stats())["events_received"] == 0
    ok = await emu.send(client, event("e1"), key="k" * 255)
    assert ok.status_code == 200


async def test_an_empty_key_is_refused(emu: Emu) -> None:
    token = (await emu.client().v2.billing.meter_event_session.create_async()).authentication_token
    response = await emu.raw.post(
        "/v2/billing/meter_event_stream",
        json={"events": [event("e1")]},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": ""},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "parameter_invalid"


# -- what is not stored -------------------------------------------------------------------------------


async def test_a_refused_request_stores_nothing_under_its_key(emu: Emu) -> None:
    client = await emu.streamer()
    with pytest.raises(stripe.InvalidRequestError):  # envelope error: no event_name
        await emu.send(client, {"payload": {"stripe_customer_id": "cus_A", "value": "1"}})
    await emu.control("/_emulator/faults", error_rate=1.0)
    with pytest.raises(stripe.APIError):
        await emu.send(client, event("e1", "2"))
    await emu.control("/_emulator/faults", error_rate=0.0)
    taken = await emu.send(client, event("e1", "2"))  # the same key, yet another body: still fresh
    assert "idempotent-replayed" not in taken.headers
    assert (await emu.stats())["events_received"] == 1


async def test_an_expired_token_is_refused_before_the_key_is_looked_at(emu: Emu) -> None:
    client = await emu.streamer()
    await emu.send(client, event("e1"))
    await emu.control("/_emulator/faults", expire_tokens=True)
    with pytest.raises(stripe.TemporarySessionExpiredError):
        await emu.send(client, event("e1"))
    again = await emu.send(await emu.streamer(), event("e1"))
    assert again.headers["idempotent-replayed"] == "true"


# -- the 30-day window ----------------------------------------------------------------------------------


async def test_a_key_is_fresh_again_after_thirty_days(emu: Emu) -> None:
    meter_id = await emu.meter()
    await emu.send(await emu.streamer(), event("e1", "4"))
    await emu.control("/_emulator/clock", advance_s=30 * DAY - 1)  # Stripe keeps v2 keys 30 days
    client = await emu.streamer()  # tokens last 15 minutes
    with pytest.raises(stripe.IdempotencyError):
        await emu.send(client, event("e2", "4"))
    assert (await emu.send(client, event("e1", "4"))).headers["idempotent-replayed"] == "true"
    await emu.control("/_emulator/clock", advance_s=1)
    # 30 days on: the key is a new request, and the identifier (24 hours) counts again too.
    fresh = await emu.send(client, event("e1", "4"))
    assert "idempotent-replayed" not in fresh.headers
    assert await emu.total(meter_id) == 8.0
    # Stored again from now: its own 30 days start over.
    assert (await emu.send(client, event("e1", "4"))).headers["idempotent-replayed"] == "true"


# -- overlapping duplicates ----------------------------------------------------------------------------


async def test_a_duplicate_sent_while_the_first_executes_gets_409_and_can_be_retried(emu: Emu) -> None:
    await emu.control("/_emulator/faults", latency_ms=50)
    client = await emu.streamer()
    results = await asyncio.gather(
        emu.send(client, event("e1")), emu.send(client, event("e1")), return_exceptions=True
    )
    [conflict] = [result for result in results if isinstance(result, stripe.StripeError)]
    assert conflict.http_status == 409  # stripe-python retries 409s when it has retries to spend
    assert (conflict.json_body or {})["error"]["code"] == "idempotency_key_in_use"
    assert sum(isinstance(result, httpx.Response) for result in results) == 1
    again = await emu.send(client, event("e1"))  # the first has finished: its answer is replayed
    assert again.headers["idempotent-replayed"] == "true"
    stats = await emu.stats()
    assert stats["events_received"] == 1 and stats["stream_requests_by_status"] == {"200": 2, "409": 1}


# -- error reports name the first request only -------------------------------------------------------


async def test_an_error_report_quotes_the_key_once_after_a_replay(emu: Emu) -> None:
    await emu.meter()
    client = await emu.streamer()
    first = await emu.send(client, event("bad", "x"))  # not a number: an asynchronous error
    again = await emu.send(client, event("bad", "x"))
    assert again.headers["idempotent-replayed"] == "true"
    response = await emu.raw.get(
        "/v2/core/events",
        params={"types[]": "v1.billing.meter.error_report_triggered"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    [report] = response.json()["data"]
    [error_type] = report["data"]["reason"]["error_types"]
    assert report["data"]["reason"]["error_count"] == 1 and error_type["error_count"] == 1
    assert [sample["request"] for sample in error_type["sample_errors"]] == [
        {"id": first.headers["request-id"], "idempotency_key": IDEM}
    ]


# -- the store on its own ---------------------------------------------------------------------------------


def test_the_store_forgets_the_oldest_keys_beyond_its_capacity() -> None:
    keys = IdempotencyKeys(capacity=2)
    for index, key in enumerate((b"a", b"b", b"c")):
        digest = keys.check(key, b"body", NOW + index)
        assert digest is not None
        keys.store(key, digest, NOW + index)
    assert len(keys) == 2
    assert keys.check(b"a", b"other body", NOW + 3) is not None  # forgotten: fresh, no mismatch
    assert keys.check(b"c", b"body", NOW + 3) is None


def test_the_store_drops_expired_keys_when_it_stores_another() -> None:
    keys = IdempotencyKeys(window=10.0, capacity=100)
    for key, at in ((b"a", NOW), (b"b", NOW + 5)):
        digest = keys.check(key, b"body", at)
        assert digest is not None
        keys.store(key, digest, at)
    digest = keys.check(b"c", b"body", NOW + 10)
    assert digest is not None
    keys.store(b"c", digest, NOW + 10)
    assert len(keys) == 2  # a reached its 10 seconds; b has not
