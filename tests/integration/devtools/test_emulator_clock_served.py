"""stripe-python 16 against the served emulator's clock control (``/_emulator/clock``) and
``GET /v1/account``: Stripe's 24-hour identifier window, tested over HTTP without waiting a day."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe

from connector.devtools.emulator import EmulatorProcess

KEY = "sk_test_emulatorclockit1"
LIVE_KEY = "sk_live_emulatorclockit1"
RESTRICTED_KEY = "rk_test_emulatorclockit1"
HOUR = 3_600
DAY = 86_400


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorProcess]:
    with EmulatorProcess() as process:
        yield process


@pytest.fixture
def url(server: EmulatorProcess) -> Iterator[str]:
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()
    yield server.url
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()  # the next test starts at offset 0


def client_for(url: str, key: str = KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": url, "meter_events": url}, max_network_retries=0)


def stream_client(url: str) -> stripe.StripeClient:
    token = client_for(url).v2.billing.meter_event_session.create().authentication_token
    return client_for(url, token)


def advance(url: str, seconds: float) -> dict[str, Any]:
    response = httpx.post(f"{url}/_emulator/clock", json={"advance_s": seconds})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def clock(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/_emulator/clock").json()
    return body


def stats(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/_emulator/stats").json()
    return body


def real_now_rfc3339() -> str:
    """What a sender stamps on an event: the real time, whatever the emulator's clock says."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def event(identifier: str, value: str) -> dict[str, Any]:
    return {
        "event_name": "api_requests",
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_Clock", "value": value},
        "timestamp": real_now_rfc3339(),
    }


# -- the 24-hour identifier window ---------------------------------------------------------------


def test_an_identifier_is_a_duplicate_within_24_hours_and_counts_again_after_25(url: str) -> None:
    api = client_for(url)
    meter = api.v1.billing.meters.create(
        {"display_name": "API calls", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}}
    )
    stream = stream_client(url)
    stream.v2.billing.meter_event_stream.create({"events": [event("X", "1")]})
    stream.v2.billing.meter_event_stream.create({"events": [event("X", "10")]})  # a duplicate: ignored
    before = stats(url)
    assert (before["events_accepted"], before["duplicates_ignored"]) == (1, 1)

    moved = advance(url, 25 * HOUR)
    assert moved["offset_s"] == 25 * HOUR
    with pytest.raises(stripe.TemporarySessionExpiredError):  # the 15-minute token aged a day
        stream.v2.billing.meter_event_stream.create({"events": [event("X", "100")]})
    # Sent "now" in real time: 25 emulated hours in the past, inside the 35 days, so valid.
    stream_client(url).v2.billing.meter_event_stream.create({"events": [event("X", "100")]})
    after = stats(url)
    assert (after["events_accepted"], after["duplicates_ignored"], after["events_valid"]) == (2, 1, 2)

    start = int(time.time()) // DAY * DAY - 2 * DAY
    summaries = api.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": "cus_Clock", "start_time": start, "end_time": start + 5 * DAY}
    )
    assert [item.aggregated_value for item in summaries.data] == [101.0]


def test_the_same_identifier_23_hours_later_is_still_a_duplicate(url: str) -> None:
    stream_client(url).v2.billing.meter_event_stream.create({"events": [event("Y", "1")]})
    advance(url, 23 * HOUR)
    stream_client(url).v2.billing.meter_event_stream.create({"events": [event("Y", "1")]})
    counted = stats(url)
    assert (counted["events_accepted"], counted["duplicates_ignored"]) == (1, 1)


def test_a_v1_identifier_is_refused_then_accepted_after_the_window(url: str) -> None:
    api = client_for(url)
    params: Any = {
        "event_name": "api_requests",
        "identifier": "v1-X",
        "payload": {"stripe_customer_id": "cus_Clock", "value": "1"},
    }
    first = api.v1.billing.meter_events.create(params)
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        api.v1.billing.meter_events.create(params)
    advance(url, DAY)
    again = api.v1.billing.meter_events.create(params)
    assert again.identifier == first.identifier == "v1-X"
    assert again.created - first.created >= DAY


# -- the control route ---------------------------------------------------------------------------


def test_clock_reports_the_emulated_time_and_reset_takes_it_back(url: str) -> None:
    start = clock(url)
    assert start["offset_s"] == 0
    assert abs(start["now"] - time.time()) < 60
    advance(url, HOUR)
    advance(url, 0.5)
    moved = clock(url)
    assert moved["offset_s"] == HOUR + 0.5
    assert abs(moved["now"] - (time.time() + HOUR + 0.5)) < 60
    httpx.post(f"{url}/_emulator/reset").raise_for_status()
    assert clock(url)["offset_s"] == 0


def test_a_bad_clock_body_is_a_400_listing_the_problems(url: str) -> None:
    response = httpx.post(f"{url}/_emulator/clock", json={"advance_s": -1, "when": "later"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "unknown setting: when; advance_s must be > 0"
    assert clock(url)["offset_s"] == 0


# -- GET /v1/account -----------------------------------------------------------------------------


def test_retrieve_current_account_with_every_kind_of_key(url: str) -> None:
    accounts = [
        client_for(url, key).v1.accounts.retrieve_current() for key in (KEY, LIVE_KEY, RESTRICTED_KEY)
    ]
    assert isinstance(accounts[0], stripe.Account)
    assert {account.id for account in accounts} == {accounts[0].id}
    account = accounts[0]
    assert account.id.startswith("acct_")
    assert account.object == "account"
    assert account.type == "standard"
    assert account.country == "US"
    assert account.default_currency == "usd"
    assert account.email is None
    httpx.post(f"{url}/_emulator/reset").raise_for_status()
    assert client_for(url).v1.accounts.retrieve_current().id == account.id


def test_account_with_api_key_set_opens_only_to_that_key() -> None:
    with EmulatorProcess(api_key=KEY) as process:
        assert client_for(process.url).v1.accounts.retrieve_current().id.startswith("acct_")
        for other in (LIVE_KEY, "sk_test_someoneelse00001"):
            with pytest.raises(stripe.AuthenticationError):
                client_for(process.url, other).v1.accounts.retrieve_current()
