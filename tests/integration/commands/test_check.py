"""``kafka-stripe check`` against a real broker and the Stripe emulator over HTTP: each preflight problem
is caught with a readable message, a meter no price bills is only a warning, and a healthy setup exits 0
stating its mode."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.commands import check as check_command
from connector.commands import check_kafka, check_stripe
from connector.config.secrets import MASK
from connector.config.topics import topic_env_key
from connector.devtools.emulator import EmulatorProcess
from tests.support.harness import API_KEY, connector_env, stripe, use_connector_env

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with EmulatorProcess() as emulator:
        yield emulator.url


def event_name() -> str:
    return f"ev_{uuid.uuid4().hex[:10]}"


def create_meter(
    url: str,
    name: str,
    *,
    customer_key: str | None = None,
    value_key: str | None = None,
    window: str | None = None,
) -> str:
    form = {"display_name": name, "event_name": name, "default_aggregation[formula]": "sum"}
    if window:
        form["event_time_window"] = window
    if customer_key:
        form |= {"customer_mapping[type]": "by_id", "customer_mapping[event_payload_key]": customer_key}
    if value_key:
        form["value_settings[event_payload_key]"] = value_key
    with stripe(url) as client:
        response = client.post("/v1/billing/meters", data=form)
        response.raise_for_status()
        return str(response.json()["id"])


def bill(url: str, meter_id: str, *, plan: bool = False) -> None:
    with stripe(url) as client:
        if plan:
            form = {
                "currency": "usd",
                "amount": "2",
                "interval": "month",
                "product[name]": "Usage",
                "usage_type": "metered",
                "meter": meter_id,
            }
            response = client.post("/v1/plans", data=form)
        else:
            form = {
                "currency": "usd",
                "unit_amount_decimal": "0.25",
                "product_data[name]": "Usage",
                "recurring[interval]": "month",
                "recurring[usage_type]": "metered",
                "recurring[meter]": meter_id,
            }
            response = client.post("/v1/prices", data=form)
        response.raise_for_status()


@pytest.fixture
def setup(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str
) -> Callable[..., dict[str, str]]:
    """``setup(meter=True, billed=True, topic=True, **env) -> env``: a topic with its dead-letter topic,
    an event name with a meter and a price, and the connector's environment for them."""

    def build(*, meter: bool = True, billed: bool = True, topic: bool = True, **extra: str) -> dict[str, str]:
        name = make_topic(partitions=2) if topic else f"absent-{uuid.uuid4().hex[:8]}"
        if topic:
            make_topic(partitions=1, name=f"{name}.dlq")
        events = event_name()
        if meter:
            meter_id = create_meter(stripe_url, events)
            if billed:
                bill(stripe_url, meter_id)
        env = connector_env(kafka_bootstrap, stripe_url, [name], group_id, CONNECTOR_VERIFY_CUSTOMERS="true")
        env[f"TOPIC_{topic_env_key(name)}_EVENT_NAME"] = events
        env.update(extra)
        env["_TOPIC"] = name  # for the test; removed before use
        return env

    return build


def run_check(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, dict[str, tuple[str, str]]]:
    """``check.run`` in-process with exactly ``env``: (exit status, output, {check: (status, text)})."""
    use_connector_env(monkeypatch, env)
    status = check_command.run(argparse.Namespace(json=True, offline=False))
    out = capsys.readouterr().out
    assert "Traceback" not in out and API_KEY not in out, out
    document: dict[str, Any] = json.loads(out)
    checks = {
        c["name"]: (c["status"], " ".join([c["summary"], *c["details"]])) for c in document.get("checks", [])
    }
    return status, out, checks


def test_a_healthy_setup_passes_and_states_test_mode(setup: Callable[..., dict[str, str]]) -> None:
    env = setup()
    env.pop("_TOPIC")
    result = subprocess.run(
        [sys.executable, "-m", "connector", "check"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr and API_KEY not in out
    assert f"key sk_test_{MASK} accepted" in out and "test mode" in out
    lines = out.splitlines()
    for name in ("configuration", "schemas", "kafka", "stripe", "stream", "meters", "billing", "customers"):
        assert any(line.startswith(f"  ok      {name}") for line in lines), (name, out)
    assert any(line.startswith("  skipped contexts") for line in lines), out
    assert "every topic sends in the platform account" in out
    assert out.rstrip().endswith("All 9 checks passed.")
    assert "may read customers" in out and "wait up to 600 s" in out
    stream = next(line for line in lines if line.startswith("  ok      stream"))
    host = env["STRIPE_METER_EVENTS_BASE"].split("://")[1]
    assert "(test mode)" in stream and "tokens live 900 s" in stream
    assert f"{host} accepted the token" in stream
    assert "whole numbers only" in out and "rate limit 10000 requests/s (CONNECTOR_RATE_LIMIT_RPS)" in out
    assert "identifiers in namespace" in out and "(topic id)" in out and "the delivery ledger" in out


def test_a_missing_meter_fails(
    setup: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = setup(meter=False)
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    assert checks["meters"][0] == "failed"
    events = env[f"TOPIC_{topic_env_key(env['_TOPIC'])}_EVENT_NAME"]
    assert f"no meter has event_name {events!r}" in checks["meters"][1]
    assert checks["billing"][0] == "skipped"
    assert {checks[name][0] for name in ("configuration", "schemas", "kafka", "stripe")} == {"ok"}


def test_a_meter_with_another_customer_key_fails(
    setup: Callable[..., dict[str, str]],
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = setup(meter=False)
    key = topic_env_key(env["_TOPIC"])
    meter_id = create_meter(stripe_url, env[f"TOPIC_{key}_EVENT_NAME"], customer_key="account")
    bill(stripe_url, meter_id)
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    state, text = checks["meters"]
    assert state == "failed" and meter_id in text
    assert "payload key 'account'" in text and f"set TOPIC_{key}_CUSTOMER_KEY=account" in text

    # Configured to match, the same meter passes.
    status, _, checks = run_check(env | {f"TOPIC_{key}_CUSTOMER_KEY": "account"}, monkeypatch, capsys)
    assert status == 0 and checks["meters"][0] == "ok", checks


def test_a_meter_with_another_value_key_fails(
    setup: Callable[..., dict[str, str]],
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = setup(meter=False)
    key = topic_env_key(env["_TOPIC"])
    create_meter(stripe_url, env[f"TOPIC_{key}_EVENT_NAME"], value_key="tokens")
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1 and checks["meters"][0] == "failed"
    assert f"set TOPIC_{key}_VALUE_KEY=tokens" in checks["meters"][1]


def test_an_unbilled_meter_is_a_warning_only(
    setup: Callable[..., dict[str, str]],
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = setup(billed=False)
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 0, checks
    state, text = checks["billing"]
    assert state == "warning" and "usage is recorded but not billed" in text

    # A plan (the older face of a price, created through the Plans API) billing the meter counts too.
    with stripe(stripe_url) as client:
        meters = client.get("/v1/billing/meters", params={"limit": 100}).json()["data"]
    events = env[f"TOPIC_{topic_env_key(env['_TOPIC'])}_EVENT_NAME"]
    meter_id = next(m["id"] for m in meters if m["event_name"] == events)
    bill(stripe_url, meter_id, plan=True)
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 0 and checks["billing"][0] == "ok" and meter_id in checks["billing"][1], checks


class PlansOnly:
    """A Stripe whose API version knows no ``recurring[meter]`` price filter (400), only plans."""

    def prices_for_meter(self, meter_id: str) -> list[dict[str, Any]]:
        from connector.stripe.v1 import StripeApiError

        raise StripeApiError("Received unknown parameter: recurring[meter]", status=400)

    def plans_for_meter(self, meter_id: str) -> list[dict[str, Any]]:
        return [{"id": "plan_1", "amount_decimal": "3", "currency": "eur"}] if meter_id == "mtr_1" else []


def test_plans_are_the_fallback_when_prices_cannot_be_filtered_by_meter() -> None:
    assert check_stripe._billed_by(PlansOnly(), "mtr_1") == ["plan plan_1 (3 EUR per unit)"]
    assert check_stripe._billed_by(PlansOnly(), "mtr_2") == []


def test_an_inactive_meter_fails(
    setup: Callable[..., dict[str, str]],
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = setup(billed=False)
    events = env[f"TOPIC_{topic_env_key(env['_TOPIC'])}_EVENT_NAME"]
    with stripe(stripe_url) as client:
        meters = client.get("/v1/billing/meters", params={"limit": 100}).json()["data"]
        meter_id = next(m["id"] for m in meters if m["event_name"] == events)
        client.post(f"/v1/billing/meters/{meter_id}/deactivate").raise_for_status()
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1 and checks["meters"][0] == "failed" and "is inactive" in checks["meters"][1]


def test_a_missing_topic_fails(
    setup: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = setup(topic=False)
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    state, text = checks["kafka"]
    assert state == "failed" and f"topic {env['_TOPIC']!r} does not exist" in text
    assert checks["meters"][0] == "ok"  # one failing check hides no other


def test_a_missing_dead_letter_topic_is_a_warning(
    setup: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = setup()
    key = topic_env_key(env["_TOPIC"])
    status, _, checks = run_check(env | {f"TOPIC_{key}_DLQ_TOPIC": "nowhere.dlq"}, monkeypatch, capsys)
    assert status == 0
    assert checks["kafka"][0] == "warning" and "'nowhere.dlq'" in checks["kafka"][1]


def test_a_bad_schema_is_reported_with_the_other_problems(
    setup: Callable[..., dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "usage.avsc"
    schema.write_text(
        json.dumps({"type": "record", "name": "U", "fields": [{"name": "who", "type": "string"}]})
    )
    env = setup()
    key = topic_env_key(env.pop("_TOPIC"))
    result = subprocess.run(
        [sys.executable, "-m", "connector", "check"],
        env=env | {f"TOPIC_{key}_SCHEMA": str(schema)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # The wording of avro/fields.py, the one home of the field-path rules.
    problems = result.stderr
    assert f"TOPIC_{key}_CUSTOMER_FIELD: 'stripe_customer_id' is not a field: not in usage.avsc" in problems
    assert f"TOPIC_{key}_VALUE_FIELD: 'value' is not a field: not in usage.avsc" in problems


def test_unreachable_kafka_and_stripe_are_failures_not_tracebacks(
    setup: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(check_kafka, "KAFKA_TIMEOUT_S", 2.0)
    env = setup(meter=False) | {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "STRIPE_API_BASE": "http://127.0.0.1:1",
    }
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    assert checks["kafka"][0] == "failed" and "no metadata from 127.0.0.1:1" in checks["kafka"][1]
    assert "Connection refused" in checks["kafka"][1]
    assert checks["stripe"][0] == "failed"
    assert "could not reach Stripe at http://127.0.0.1:1" in checks["stripe"][1]
    assert checks["stream"][0] == "failed" and "creating a meter event session failed" in checks["stream"][1]
    assert checks["meters"][0] == checks["billing"][0] == "skipped"


def test_a_refused_key_fails_with_its_mode_and_mask(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with EmulatorProcess(api_key="sk_live_theonlyacceptedkey0001") as emulator:
        topic = make_topic()
        env = connector_env(kafka_bootstrap, emulator.url, [topic], group_id, STRIPE_API_KEY=API_KEY)
        status, _, checks = run_check(env, monkeypatch, capsys)
        assert httpx.get(f"{emulator.url}/_emulator/health", timeout=10).status_code == 200
    assert status == 1
    state, text = checks["stripe"]
    assert state == "failed" and "401" in text and f"sk_test_{MASK}" in text and "test mode" in text
    assert checks["meters"][0] == "skipped"
    state, text = checks["stream"]
    assert state == "failed" and "rejected the API key" in text and f"sk_test_{MASK}" in text


def test_an_unreachable_meter_events_host_fails_the_stream_check(
    setup: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = setup() | {"STRIPE_METER_EVENTS_BASE": "http://127.0.0.1:1"}
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    state, text = checks["stream"]
    assert state == "failed" and "127.0.0.1:1 did not answer" in text and "STRIPE_METER_EVENTS_BASE" in text
    assert checks["stripe"][0] == checks["meters"][0] == "ok"


def test_a_meter_events_host_of_another_stripe_refuses_the_token(
    setup: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with EmulatorProcess() as other:
        env = setup() | {"STRIPE_METER_EVENTS_BASE": other.url}
        status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    state, text = checks["stream"]
    assert state == "failed" and "refused the session's token (HTTP 401" in text


def test_decimal_topics_are_named(
    setup: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = setup()
    key = topic_env_key(env["_TOPIC"])
    _, _, checks = run_check(env | {f"TOPIC_{key}_DECIMAL_VALUES": "true"}, monkeypatch, capsys)
    expected = f"{env['_TOPIC']}: decimal values allowed (TOPIC_{key}_DECIMAL_VALUES=true"
    assert expected in checks["configuration"][1]
    _, _, checks = run_check(env, monkeypatch, capsys)
    assert f"{env['_TOPIC']}: whole numbers only" in checks["configuration"][1]


@pytest.mark.parametrize("window", ["hour", "day"])
def test_a_pre_aggregated_meter_fails_check_and_run_refuses_to_start_unless_aggregated(
    setup: Callable[..., dict[str, str]],
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    window: str,
) -> None:
    env = setup(meter=False)
    topic = env["_TOPIC"]
    meter_id = create_meter(stripe_url, env[f"TOPIC_{topic_env_key(topic)}_EVENT_NAME"], window=window)
    bill(stripe_url, meter_id)
    status, _, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    state, text = checks["meters"]
    assert state == "failed" and meter_id in text and f"event_time_window={window}" in text
    assert "only the most recently received event per customer" in text
    env.pop("_TOPIC")
    result = subprocess.run(
        [sys.executable, "-m", "connector", "run"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to start" in result.stderr and f"{topic}: meter {meter_id}" in result.stderr
    assert f"event_time_window={window}" in result.stderr and "Traceback" not in result.stderr
    assert "_AGGREGATE" in text  # the way out is named: pre-aggregated, it sends window totals
    # Pre-aggregated, the topic sends running window totals: the same meter passes.
    env[f"TOPIC_{topic_env_key(topic)}_AGGREGATE"] = "1m"
    env["_TOPIC"] = topic
    _, _, checks = run_check(env, monkeypatch, capsys)
    assert checks["meters"][0] == "ok", checks["meters"]


def test_check_and_run_read_compressed_answers(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    group_id: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with EmulatorProcess(compress=True) as emulator:
        topic = make_topic(partitions=1)
        make_topic(partitions=1, name=f"{topic}.dlq")
        name = event_name()
        bill(emulator.url, create_meter(emulator.url, name))
        env = connector_env(
            kafka_bootstrap, emulator.url, [topic], group_id, CONNECTOR_VERIFY_CUSTOMERS="true"
        )
        env[f"TOPIC_{topic_env_key(topic)}_EVENT_NAME"] = name
        status, _, checks = run_check(env, monkeypatch, capsys)
        stats = httpx.get(f"{emulator.url}/_emulator/stats", timeout=10).json()
    assert status == 0, checks
    assert {state for name, (state, _) in checks.items() if name != "contexts"} == {"ok"}
    assert checks["contexts"][0] == "skipped"  # no topic names a context
    # httpx (the v1 client) asked for gzip and got it; the stream probe asked for none.
    assert stats["responses_compressed"] > 0
