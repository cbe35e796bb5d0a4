"""In-process tests of Stripe contexts, sent by stripe-python: connected accounts as separate accounts
(meters, customers, summaries, dedup, sessions, error reports), the refusal of an account a key cannot
reach, per-account faults and stats, the controls that create and target contexts, and the Date header."""
# Over 400 lines: one scenario per endpoint family and per control, all on the same stand.

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import stripe

from connector.devtools.emulator import EmulatorConfig, ManualClock, create_app
from connector.devtools.emulator.app import EmulatorApp
from connector.devtools.emulator.server import EmulatorProcess, add_arguments, config_from_args

pytestmark = [
    pytest.mark.anyio,
    # stripe-python hands httpx its JSON body as ``data``, which httpx accepts with a deprecation notice.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

KEY = "sk_test_emulatorcontexts01"
LIVE_KEY = "sk_live_emulatorcontexts01"
NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z
DAY = 86_400
BASE = "http://emulator"
ALPHA = "acct_Alpha1"  # created at startup, as --context does
BETA = "acct_Beta2"  # created at runtime with POST /_emulator/contexts
NESTED = "acct_Alpha1/acct_Gamma3"  # an account of the connected account ALPHA
NO_ACCESS = "does not have access to account"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Stand:
    """The emulator in-process on a manual clock; stripe-python reaches it through httpx's ASGI
    transport, and every answer it gets is kept in ``answers``."""

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

    async def meter(self, context: str | None = None, event_name: str = "api_requests") -> str:
        params: Any = {
            "display_name": "API calls",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
        }
        meter = await self.client().v1.billing.meters.create_async(params, options=opts(context))
        return str(meter.id)

    async def token(self, context: str | None = None) -> str:
        """The token of a meter event session created in ``context``."""
        session = await self.client().v2.billing.meter_event_session.create_async(options=opts(context))
        return str(session.authentication_token)

    async def streamer(self, context: str | None = None) -> stripe.StripeClient:
        """A client holding the token of a meter event session created in ``context``."""
        return self.client(await self.token(context))

    async def send(
        self, client: stripe.StripeClient, *events: dict[str, Any], context: str | None = None
    ) -> httpx.Response:
        params: Any = {"events": list(events)}
        await client.v2.billing.meter_event_stream.create_async(params, options=opts(context))
        return self.answers[-1]

    async def total(self, meter_id: str, context: str | None = None, customer: str = "cus_A") -> float:
        params: Any = {"customer": customer, "start_time": int(NOW) - DAY, "end_time": int(NOW) + DAY}
        summaries = await self.client().v1.billing.meters.event_summaries.list_async(
            meter_id, params, options=opts(context)
        )
        return float(summaries.data[0].aggregated_value)

    async def stats(self, context: str | None = None) -> dict[str, Any]:
        response = await self.raw.get(
            "/_emulator/stats", params={} if context is None else {"context": context}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def control(self, path: str, **body: Any) -> dict[str, Any]:
        response = await self.raw.post(path, json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


def error_of(failure: stripe.StripeError) -> dict[str, Any]:
    """The ``error`` object of the answer behind a stripe-python exception."""
    body: Any = failure.json_body or {}
    error: dict[str, Any] = body["error"]
    return error


def opts(context: str | None) -> Any:
    return {} if context is None else {"stripe_context": context}


def event(identifier: str, value: str = "1", customer: str = "cus_A") -> dict[str, Any]:
    return {
        "event_name": "api_requests",
        "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": value},
    }


async def make_stand(**config: Any) -> Stand:
    clock = ManualClock(NOW)
    stand = Stand(create_app(EmulatorConfig(contexts=(ALPHA,), **config), clock=clock), clock)
    await stand.control("/_emulator/contexts", ids=[BETA, NESTED])
    return stand


@pytest.fixture
async def emu() -> AsyncIterator[Stand]:
    stand = await make_stand()
    yield stand
    await stand.raw.aclose()


# -- separate accounts ----------------------------------------------------------------------------


async def test_the_platform_and_two_connected_accounts_keep_separate_meters_and_customers(emu: Stand) -> None:
    meters = {context: await emu.meter(context) for context in (None, ALPHA, BETA)}
    assert len(set(meters.values())) == 3  # the same event_name is free in every account
    client = emu.client()
    for context, meter_id in meters.items():
        listed = await client.v1.billing.meters.list_async(options=opts(context))
        assert [m.id for m in listed.data] == [meter_id]
    created = await client.v1.customers.create_async({"name": "Alpha's"}, options=opts(ALPHA))
    assert [c.id for c in (await client.v1.customers.list_async(options=opts(ALPHA))).data] == [created.id]
    assert (await client.v1.customers.list_async()).data == []
    assert (await client.v1.customers.list_async(options=opts(BETA))).data == []


async def test_the_same_identifier_counts_once_in_each_account(emu: Stand) -> None:
    meters = {context: await emu.meter(context) for context in (None, ALPHA, BETA)}
    for context, value in ((None, "1"), (ALPHA, "10"), (BETA, "100")):
        streamer = await emu.streamer(context)
        await emu.send(streamer, event("same-id", value))
        await emu.send(streamer, event("same-id", value))  # a duplicate within the account
    assert [await emu.total(meters[c], c) for c in (None, ALPHA, BETA)] == [1.0, 10.0, 100.0]
    for context in (None, ALPHA, BETA):
        stats = await emu.stats(context)
        assert (stats["events_accepted"], stats["duplicates_ignored"], stats["sessions_created"]) == (1, 1, 1)


async def test_a_session_created_in_a_context_sends_usage_to_that_account_only(emu: Stand) -> None:
    platform_meter, alpha_meter = await emu.meter(), await emu.meter(ALPHA)
    response = await emu.send(await emu.streamer(ALPHA), event("e1", "7"), event("e2", "5"))
    assert response.status_code == 200
    assert await emu.total(alpha_meter, ALPHA) == 12.0
    assert await emu.total(platform_meter) == 0.0
    assert emu.app.state.event_status("e1", context=ALPHA) is not None
    assert emu.app.state.event_status("e1") is None
    assert (await emu.stats())["events_received"] == 0
    assert (await emu.stats(ALPHA))["events_received"] == 2


async def test_a_context_path_reaches_an_account_of_a_connected_account(emu: Stand) -> None:
    meter_id = await emu.meter(NESTED)
    await emu.send(await emu.streamer(NESTED), event("deep", "3"))
    assert await emu.total(meter_id, NESTED) == 3.0
    assert (await emu.client().v1.billing.meters.list_async(options=opts(ALPHA))).data == []
    # The account is reached through its parent only: alone, or through another account, it is unknown.
    for elsewhere in ("acct_Gamma3", f"{BETA}/acct_Gamma3"):
        with pytest.raises(stripe.PermissionError):
            await emu.client().v1.billing.meters.list_async(options=opts(elsewhere))


async def test_live_mode_follows_the_key_inside_a_context(emu: Stand) -> None:
    await emu.meter(ALPHA)
    live = await emu.client(LIVE_KEY).v1.billing.meters.list_async(options=opts(ALPHA))
    assert live.data == []
    session = await emu.client(LIVE_KEY).v2.billing.meter_event_session.create_async(options=opts(ALPHA))
    assert session.livemode is True


async def test_stripe_account_names_a_connected_account_on_v1(emu: Stand) -> None:
    meter_id = await emu.meter(ALPHA)
    client = emu.client()
    listed = await client.v1.billing.meters.list_async(options={"stripe_account": ALPHA})
    assert [m.id for m in listed.data] == [meter_id]
    both = {"Authorization": f"Bearer {KEY}", "Stripe-Account": ALPHA, "Stripe-Context": ALPHA}
    assert (await emu.raw.get("/v1/billing/meters", headers=both)).status_code == 200
    differ = {**both, "Stripe-Context": BETA}
    assert (await emu.raw.get("/v1/billing/meters", headers=differ)).status_code == 400
    # Stripe-Account takes an account id, never a path.
    path = {"Authorization": f"Bearer {KEY}", "Stripe-Account": NESTED}
    assert (await emu.raw.get("/v1/billing/meters", headers=path)).status_code == 403


async def test_stripe_account_on_v2_is_refused_rather_than_ignored(emu: Stand) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await emu.client().v2.billing.meter_event_session.create_async(options={"stripe_account": ALPHA})
    assert "Stripe-Context" in str(refused.value.user_message)
    assert (await emu.stats(ALPHA))["sessions_created"] == 0


async def test_the_account_endpoint_shows_the_account_acted_in(emu: Stand) -> None:
    client = emu.client()
    platform = await client.v1.accounts.retrieve_current_async()
    alpha = await client.v1.accounts.retrieve_current_async(options=opts(ALPHA))
    nested = await client.v1.accounts.retrieve_current_async(options=opts(NESTED))
    assert (alpha.id, nested.id) == (ALPHA, "acct_Gamma3")
    assert platform.id not in (ALPHA, BETA) and platform.id.startswith("acct_")
    # The platform's own id as the context is the platform itself.
    again = await client.v1.accounts.retrieve_current_async(options=opts(platform.id))
    assert again.id == platform.id


async def test_error_reports_of_a_connected_account_are_its_own_and_carry_its_context(emu: Stand) -> None:
    await emu.meter(ALPHA)
    await emu.send(await emu.streamer(ALPHA), event("bad", "1.5"))
    client = emu.client()
    events = await client.v2.core.events.list_async(options=opts(ALPHA))
    assert [e.type for e in events.data] == ["v1.billing.meter.error_report_triggered"]
    assert events.data[0].context == ALPHA
    fetched = await client.v2.core.events.retrieve_async(events.data[0].id, options=opts(ALPHA))
    assert fetched.id == events.data[0].id
    assert (await client.v2.core.events.list_async()).data == []
    with pytest.raises(stripe.InvalidRequestError):
        await client.v2.core.events.retrieve_async(events.data[0].id)  # not the platform's


# -- an account the key cannot act in -------------------------------------------------------------


def _calls(client: stripe.StripeClient, meter_id: str) -> dict[str, Any]:
    """One request of each endpoint family, each taking request options."""
    summary: Any = {"customer": "cus_A", "start_time": int(NOW) - 3600, "end_time": int(NOW)}
    cancel: Any = {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "x"}}
    meter: Any = {"display_name": "m", "event_name": "m", "default_aggregation": {"formula": "sum"}}
    return {
        "session": lambda o: client.v2.billing.meter_event_session.create_async(options=o),
        "v2 adjustment": lambda o: client.v2.billing.meter_event_adjustments.create_async(cancel, options=o),
        "v1 adjustment": lambda o: client.v1.billing.meter_event_adjustments.create_async(cancel, options=o),
        "meters": lambda o: client.v1.billing.meters.create_async(meter, options=o),
        "meter list": lambda o: client.v1.billing.meters.list_async(options=o),
        "customers": lambda o: client.v1.customers.create_async({"name": "n"}, options=o),
        "summaries": lambda o: client.v1.billing.meters.event_summaries.list_async(
            meter_id, summary, options=o
        ),
        "events": lambda o: client.v2.core.events.list_async(options=o),
        "v1 meter events": lambda o: client.v1.billing.meter_events.create_async(
            {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_A", "value": "1"}},
            options=o,
        ),
    }


@pytest.mark.parametrize(
    ("context", "named"),
    [
        ("acct_Unknown9", "acct_Unknown9"),  # not a created connected account
        ("not-an-account", "not-an-account"),  # malformed
        ("acct_Unknown9/acct_Gamma3", "acct_Unknown9"),  # a path through an unknown account
        (f"{ALPHA}/acct_Nope4", "acct_Nope4"),  # a path to an unknown account
        (f"{ALPHA}//acct_Gamma3", f"{ALPHA}//acct_Gamma3"),  # malformed path
    ],
)
async def test_an_account_the_key_cannot_reach_is_refused_on_every_endpoint(
    emu: Stand, context: str, named: str
) -> None:
    meter_id = await emu.meter()
    for family, call in _calls(emu.client(), meter_id).items():
        with pytest.raises(stripe.PermissionError) as refused:
            await call({"stripe_context": context})
        assert refused.value.http_status == 403, family
        error = error_of(refused.value)
        assert (error["type"], error["code"]) == ("invalid_request_error", "account_invalid"), family
        masked = "sk_test_" + "*" * (len(KEY) - len("sk_test_") - 4) + KEY[-4:]
        assert error["message"] == (
            f"The provided key '{masked}' does not have access to account '{named}' (or that account does "
            "not exist). Application access may have been revoked."
        ), family
        assert KEY not in (refused.value.http_body or ""), family
    stats = await emu.stats()
    assert stats["requests_by_status"]["403"] == len(_calls(emu.client(), meter_id))
    assert stats["events_received"] == 0 and stats["sessions_created"] == 0


async def test_an_unknown_context_on_v1_answers_in_the_v1_shape(emu: Stand) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Stripe-Account": "acct_Unknown9"}
    response = await emu.raw.get("/v1/billing/meters", headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["param"] is None
    assert response.json()["error"]["doc_url"].endswith("/account-invalid")


async def test_a_bad_key_is_a_401_before_the_context_is_looked_at(emu: Stand) -> None:
    with pytest.raises(stripe.AuthenticationError):
        await emu.client("sk_nope_abcdefghijklmnop").v1.billing.meters.list_async(
            options=opts("acct_Unknown9")
        )


async def test_a_stream_context_header_must_name_the_tokens_own_account(emu: Stand) -> None:
    meter_id = await emu.meter(ALPHA)
    token = await emu.token(ALPHA)
    streamer = emu.client(token)
    assert (await emu.send(streamer, event("same"), context=ALPHA)).status_code == 200
    for other in (BETA, "acct_Unknown9", emu.app.state.platform.id):
        with pytest.raises(stripe.PermissionError) as refused:
            await emu.send(streamer, event("other"), context=other)
        message = str(refused.value.user_message)
        assert NO_ACCESS in message
        assert token not in message and token[-4:] in message
    assert await emu.total(meter_id, ALPHA) == 1.0
    stats = await emu.stats(ALPHA)
    assert stats["stream_requests_by_status"] == {"200": 1, "403": 3} and stats["events_received"] == 1


async def test_a_platform_token_with_a_context_header_is_refused(emu: Stand) -> None:
    token = await emu.token()
    with pytest.raises(stripe.PermissionError):
        await emu.send(emu.client(token), event("x"), context=ALPHA)
    headers = {"Authorization": f"Bearer {token}", "Stripe-Account": ALPHA}
    body = {"events": [event("y")]}
    response = await emu.raw.post("/v2/billing/meter_event_stream", json=body, headers=headers)
    assert response.status_code == 400  # Stripe-Account is a v1 header
    assert (await emu.stats())["events_received"] == 0


# -- faults, limits and stats per account ---------------------------------------------------------


async def test_a_429_storm_in_one_account_leaves_the_others_alone(emu: Stand) -> None:
    await emu.control("/_emulator/faults", context=ALPHA, rate_limited_rate=1.0, retry_after=2)
    streamers = {context: await emu.streamer(context) for context in (None, ALPHA, BETA)}
    with pytest.raises(stripe.RateLimitError):
        await emu.send(streamers[ALPHA], event("a"))
    assert (await emu.send(streamers[None], event("p"))).status_code == 200
    assert (await emu.send(streamers[BETA], event("b"))).status_code == 200
    assert (await emu.stats(ALPHA))["faults_injected"]["rate_limited"] == 1
    assert (await emu.stats())["faults_injected"]["rate_limited"] == 0
    shown = (await emu.raw.get("/_emulator/faults", params={"context": ALPHA})).json()
    assert shown["rate_limited_rate"] == 1.0
    assert (await emu.raw.get("/_emulator/faults")).json()["rate_limited_rate"] == 0.0


async def test_expire_tokens_in_one_account_expires_only_its_sessions(emu: Stand) -> None:
    alpha, beta = await emu.streamer(ALPHA), await emu.streamer(BETA)
    await emu.control("/_emulator/faults", context=ALPHA, expire_tokens=True)
    with pytest.raises(stripe.TemporarySessionExpiredError):
        await emu.send(alpha, event("a"))
    assert (await emu.send(beta, event("b"))).status_code == 200


async def test_the_sandbox_budget_is_per_account() -> None:
    stand = await make_stand(sandbox_limits=True)  # the manual clock never refills the buckets
    streamers = {context: await stand.streamer(context) for context in (None, ALPHA)}
    for n in range(25):
        await stand.send(streamers[None], event(f"p{n}"))
    with pytest.raises(stripe.RateLimitError):
        await stand.send(streamers[None], event("over"))
    assert (await stand.send(streamers[ALPHA], event("a0"))).status_code == 200
    await stand.raw.aclose()


async def test_latency_of_one_account_is_counted_there(emu: Stand) -> None:
    await emu.control("/_emulator/faults", context=BETA, latency_ms=1)
    await emu.client().v1.billing.meters.list_async(options=opts(BETA))
    await emu.client().v1.billing.meters.list_async()
    assert (await emu.stats(BETA))["faults_injected"]["latency"] == 1
    assert (await emu.stats())["faults_injected"]["latency"] == 0


async def test_emulator_customers_are_created_in_the_account_named() -> None:
    stand = await make_stand(require_known_customers=True)
    meter_id = await stand.meter(ALPHA)
    await stand.control("/_emulator/customers", id="cus_Known1", context=ALPHA)
    assert (await stand.control("/_emulator/customers", ids=["cus_Live1"], livemode=True, context=ALPHA)) == {
        "created": 1
    }
    client = stand.client()
    assert (await client.v1.customers.retrieve_async("cus_Known1", options=opts(ALPHA))).id == "cus_Known1"
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.customers.retrieve_async("cus_Known1")  # not the platform's
    await stand.send(await stand.streamer(ALPHA), event("ok", customer="cus_Known1"))
    assert await stand.total(meter_id, ALPHA, customer="cus_Known1") == 1.0
    await stand.raw.aclose()


async def test_reset_keeps_the_connected_accounts_and_empties_them(emu: Stand) -> None:
    await emu.meter(ALPHA)
    await emu.control("/_emulator/faults", context=ALPHA, outage=True)
    await emu.control("/_emulator/reset")
    assert (await emu.raw.get("/_emulator/contexts")).json()["contexts"] == [ALPHA, BETA, NESTED]
    assert (await emu.client().v1.billing.meters.list_async(options=opts(ALPHA))).data == []
    assert (await emu.raw.get("/_emulator/faults", params={"context": ALPHA})).json()["outage"] is False
    assert (await emu.client().v1.accounts.retrieve_current_async(options=opts(ALPHA))).id == ALPHA


# -- the controls ---------------------------------------------------------------------------------


async def test_contexts_are_listed_created_once_and_checked(emu: Stand) -> None:
    listed = (await emu.raw.get("/_emulator/contexts")).json()
    assert listed["contexts"] == [ALPHA, BETA, NESTED]
    assert listed["platform"] == emu.app.state.platform.id
    again = await emu.control("/_emulator/contexts", id=BETA)
    assert again["created"] == 0
    deeper = await emu.control("/_emulator/contexts", id="acct_New5/acct_New6")
    assert deeper["created"] == 2 and deeper["contexts"][-2:] == ["acct_New5", "acct_New5/acct_New6"]
    refused: list[dict[str, Any]] = [
        {"id": "cus_nope"},
        {"id": "acct_Gamma3"},  # already exists under ALPHA
        {"ids": ["acct_Ok7", "acct_a/acct_a"]},  # the whole request is refused: acct_Ok7 is not created
        {"id": emu.app.state.platform.id},
        {"id": ALPHA, "ids": [BETA]},
        {"ids": []},
    ]
    for body in refused:
        response = await emu.raw.post("/_emulator/contexts", json=body)
        assert response.status_code == 400, body
    assert "acct_Ok7" not in (await emu.raw.get("/_emulator/contexts")).json()["contexts"]


async def test_controls_refuse_an_unknown_context(emu: Stand) -> None:
    assert (await emu.raw.get("/_emulator/stats", params={"context": "acct_Unknown9"})).status_code == 400
    assert (await emu.raw.get("/_emulator/stats", params={"contxt": ALPHA})).status_code == 400
    assert (await emu.raw.get("/_emulator/faults", params={"context": "acct_Unknown9"})).status_code == 400
    faults = await emu.raw.post("/_emulator/faults", json={"context": "acct_Unknown9", "outage": True})
    assert faults.status_code == 400
    customers = await emu.raw.post("/_emulator/customers", json={"id": "cus_A1", "context": 7})
    assert customers.status_code == 400
    # A control names a connected account by id or by path; the platform by its id or by nothing.
    assert (await emu.raw.get("/_emulator/stats", params={"context": "acct_Gamma3"})).status_code == 200
    assert (await emu.raw.get("/_emulator/stats", params={"context": NESTED})).status_code == 200


def test_contexts_come_from_a_repeatable_cli_option() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--context", ALPHA, "--context", NESTED])
    assert config_from_args(args).contexts == (ALPHA, NESTED)
    with pytest.raises(ValueError, match="acct_"):
        config_from_args(parser.parse_args(["--context", "bob"]))
    command = EmulatorProcess(context=[ALPHA, BETA]).command()
    assert command[-4:] == ["--context", ALPHA, "--context", BETA]


def test_config_refuses_contexts_that_contradict_each_other() -> None:
    with pytest.raises(ValueError, match="already exists"):
        EmulatorConfig(contexts=("acct_a1/acct_b1", "acct_c1/acct_b1"))


# -- the Date header ------------------------------------------------------------------------------


async def test_every_answer_carries_stripes_clock_in_the_date_header(emu: Stand) -> None:
    client = emu.client()
    await client.v1.billing.meters.list_async()
    streamer = await emu.streamer(ALPHA)
    await emu.send(streamer, event("d1"))
    with pytest.raises(stripe.PermissionError):
        await client.v1.billing.meters.list_async(options=opts("acct_Unknown9"))
    for answer in emu.answers:
        assert answer.headers.get_list("date") == ["Sat, 01 Jun 2024 12:00:00 GMT"]
    assert (await emu.raw.get("/_emulator/health")).headers["date"] == "Sat, 01 Jun 2024 12:00:00 GMT"
    await emu.control("/_emulator/clock", advance_s=25 * 3600)
    await client.v1.billing.meters.list_async()
    moved = email.utils.parsedate_to_datetime(emu.answers[-1].headers["date"])
    assert moved.timestamp() == NOW + 25 * 3600
    assert emu.answers[-1].headers["date"] == "Sun, 02 Jun 2024 13:00:00 GMT"
    with pytest.raises(stripe.TemporarySessionExpiredError):
        await emu.send(streamer, event("d2"))
    assert emu.answers[-1].headers["date"] == "Sun, 02 Jun 2024 13:00:00 GMT"
