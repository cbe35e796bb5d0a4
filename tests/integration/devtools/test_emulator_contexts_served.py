"""stripe-python 16 against the served emulator (uvicorn): connected accounts from ``--context`` and
``POST /_emulator/contexts``, and one ``Date`` header per answer, on the emulated clock."""

from __future__ import annotations

import email.utils
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe

from connector.devtools.emulator import EmulatorProcess

KEY = "sk_test_emulatorcontextit1"
ALPHA = "acct_Alpha1"
BETA = "acct_Beta2"


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(context=[ALPHA]) as process:
        yield process


@pytest.fixture
def url(server: EmulatorProcess) -> Iterator[str]:
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()
    yield server.url
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()  # the next test starts at offset 0


def client_for(url: str, key: str = KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": url, "meter_events": url}, max_network_retries=0)


def raw_date_headers(url: str, path: str) -> list[bytes]:
    """The ``Date`` header lines of a raw HTTP/1.1 answer, as uvicorn wrote them."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [line for line in head if line.lower().startswith(b"date:")]


def test_a_context_from_the_command_line_is_a_separate_account(url: str) -> None:
    client = client_for(url)
    meter: Any = {
        "display_name": "API",
        "event_name": "api_requests",
        "default_aggregation": {"formula": "sum"},
    }
    created = client.v1.billing.meters.create(meter, options={"stripe_context": ALPHA})
    assert [m.id for m in client.v1.billing.meters.list(options={"stripe_context": ALPHA}).data] == [
        created.id
    ]
    assert client.v1.billing.meters.list().data == []
    with pytest.raises(stripe.PermissionError) as refused:
        client.v1.billing.meters.list(options={"stripe_context": BETA})
    assert refused.value.http_status == 403 and KEY not in str(refused.value.user_message)
    httpx.post(f"{url}/_emulator/contexts", json={"id": BETA}).raise_for_status()
    assert client.v1.billing.meters.list(options={"stripe_context": BETA}).data == []
    session = client.v2.billing.meter_event_session.create(options={"stripe_context": BETA})
    stream: Any = {"events": [{"event_name": "x", "payload": {"stripe_customer_id": "cus_A", "value": "1"}}]}
    client_for(url, session.authentication_token).v2.billing.meter_event_stream.create(stream)
    stats = httpx.get(f"{url}/_emulator/stats", params={"context": BETA}).json()
    assert stats["events_received"] == 1 and stats["sessions_created"] == 1


def test_each_answer_has_one_date_header_on_the_emulated_clock(url: str) -> None:
    before = email.utils.parsedate_to_datetime(httpx.get(f"{url}/_emulator/health").headers["date"])
    assert len(raw_date_headers(url, "/_emulator/health")) == 1
    httpx.post(f"{url}/_emulator/clock", json={"advance_s": 25 * 3600}).raise_for_status()
    response = httpx.get(f"{url}/v1/billing/meters", headers={"Authorization": f"Bearer {KEY}"})
    assert response.headers.get_list("date") == [response.headers["date"]]
    after = email.utils.parsedate_to_datetime(response.headers["date"])
    emulated = httpx.get(f"{url}/_emulator/clock").json()["now"]
    assert 25 * 3600 - 5 <= (after - before).total_seconds() <= 25 * 3600 + 60
    assert abs(after.timestamp() - emulated) < 5
    lines = raw_date_headers(url, "/v1/billing/meters")  # a 401 without a key: still one Date line
    assert len(lines) == 1
