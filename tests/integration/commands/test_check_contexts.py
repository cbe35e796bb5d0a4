"""``kafka-stripe check`` with Stripe contexts and corrections topics, against a real broker and the
emulator over HTTP: each configured context is checked in that account (its meters, its prices, a
meter event session), a context the key cannot act in fails naming the context and Stripe's words with
the key masked, and corrections topics pass the schema and meter checks."""

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
from connector.config.secrets import MASK
from connector.config.settings import DEFAULT_SCHEMA
from connector.config.topics import topic_env_key
from connector.devtools.emulator import EmulatorProcess
from tests.support.harness import API_KEY, connector_env, stripe, use_connector_env

REPO = Path(__file__).resolve().parents[3]
TENANT = "acct_TenantCheck1"


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with EmulatorProcess(context=[TENANT]) as emulator:
        yield emulator.url


def in_context(url: str, context: str | None) -> httpx.Client:
    client = stripe(url)
    if context is not None:
        client.headers["Stripe-Context"] = context
    return client


def meter_and_price(url: str, event_name: str, context: str | None) -> str:
    """A sum meter for ``event_name`` and a metered price billing it, in ``context``."""
    with in_context(url, context) as client:
        form = {"display_name": event_name, "event_name": event_name, "default_aggregation[formula]": "sum"}
        response = client.post("/v1/billing/meters", data=form)
        response.raise_for_status()
        meter_id = str(response.json()["id"])
        price = {
            "currency": "usd",
            "unit_amount_decimal": "0.25",
            "product_data[name]": "Usage",
            "recurring[interval]": "month",
            "recurring[usage_type]": "metered",
            "recurring[meter]": meter_id,
        }
        client.post("/v1/prices", data=price).raise_for_status()
    return meter_id


def tenant_schema(path: Path) -> Path:
    """The default usage schema plus a nullable ``tenant`` field naming each record's context."""
    schema = json.loads(DEFAULT_SCHEMA.read_text())
    schema["fields"].append({"name": "tenant", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(schema))
    return path


def run_check(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, tuple[str, str]]]:
    """``check.run`` in-process with exactly ``env``: (exit status, {check: (status, text)})."""
    use_connector_env(monkeypatch, env)
    status = check_command.run(argparse.Namespace(json=True, offline=False))
    out = capsys.readouterr().out
    assert "Traceback" not in out and API_KEY not in out, out
    document: dict[str, Any] = json.loads(out)
    checks = {c["name"]: (c["status"], " ".join([c["summary"], *c["details"]])) for c in document["checks"]}
    return status, checks


@pytest.fixture
def setup(
    kafka_bootstrap: str, make_topic: Callable[..., str], group_id: str, stripe_url: str, tmp_path: Path
) -> Callable[..., tuple[dict[str, str], dict[str, str]]]:
    """``setup(context) -> (env, names)``: a platform topic, a topic sent in ``context``, a topic whose
    records name their context, and two corrections topics (one for any event name, one for the
    context topic's meter in its context), each with its dead-letter topic."""

    def build(context: str) -> tuple[dict[str, str], dict[str, str]]:
        names = {role: make_topic(partitions=1) for role in ("platform", "hosted", "tenants", "fixes", "own")}
        for name in names.values():
            make_topic(partitions=1, name=f"{name}.dlq")
        events = {role: f"ev_{uuid.uuid4().hex[:10]}" for role in ("platform", "hosted")}
        env = connector_env(kafka_bootstrap, stripe_url, list(names.values()), group_id)
        key = {role: f"TOPIC_{topic_env_key(name)}_" for role, name in names.items()}
        env[key["platform"] + "EVENT_NAME"] = env[key["tenants"] + "EVENT_NAME"] = events["platform"]
        env[key["hosted"] + "EVENT_NAME"] = env[key["own"] + "EVENT_NAME"] = events["hosted"]
        env[key["hosted"] + "STRIPE_CONTEXT"] = env[key["own"] + "STRIPE_CONTEXT"] = context
        env[key["tenants"] + "SCHEMA"] = str(tenant_schema(tmp_path / "tenants.avsc"))
        env[key["tenants"] + "CONTEXT_FIELD"] = "tenant"
        env[key["fixes"] + "KIND"] = env[key["own"] + "KIND"] = "corrections"
        del env[key["fixes"] + "EVENT_NAME"]
        meter_and_price(stripe_url, events["platform"], None)
        return env, names | {f"{role}_event": name for role, name in events.items()}

    return build


def test_a_configured_context_is_checked_in_its_own_account(
    setup: Callable[..., tuple[dict[str, str], dict[str, str]]],
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, names = setup(TENANT)
    # The context topic's meter exists in the platform only: checked where its events go, it is missing.
    platform_meter = meter_and_price(stripe_url, names["hosted_event"], None)
    status, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    state, text = checks["meters"]
    assert state == "failed" and f"{names['hosted']} (context {TENANT}): no meter has event_name" in text
    assert platform_meter not in text

    tenant_meter = meter_and_price(stripe_url, names["hosted_event"], TENANT)
    status, checks = run_check(env, monkeypatch, capsys)
    assert status == 0, checks
    assert {state for name, (state, _) in checks.items() if name != "customers"} == {"ok"}, checks
    state, text = checks["contexts"]
    assert f"the key acts in 1 context: {TENANT}" in text
    assert f"context {TENANT} (topics {names['hosted']}, {names['own']}): the key acts in it" in text
    assert "meter event session created" in text
    assert f"{names['tenants']}: each record names its context in 'tenant'" in text
    assert "records' own contexts are not known in advance and are not checked" in text
    state, text = checks["meters"]
    assert f"{names['hosted']} (context {TENANT}): meter {tenant_meter}" in text
    assert f"{names['own']} (context {TENANT}): meter {tenant_meter}" in text
    assert "corrections after Stripe's 24 hours are compensated (sum)" in text
    assert f"{names['fixes']}: a corrections topic without" in text and "corrects any event name" in text
    state, text = checks["billing"]
    assert f"{names['hosted']} (context {TENANT}): meter {tenant_meter} is billed by price" in text
    assert f"{names['own']} (context {TENANT}): meter {tenant_meter}, as above" in text
    state, text = checks["schemas"]
    assert f"{names['fixes']}: " in text and "; corrections)" in text and "original_offset" in text
    assert "context    tenant" in text
    state, text = checks["configuration"]
    assert f"{names['hosted']}: sent in context {TENANT}" in text
    assert f"{names['fixes']}: corrections of usage already sent" in text


def test_a_context_the_key_cannot_act_in_fails_clearly(
    setup: Callable[..., tuple[dict[str, str], dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unknown = "acct_NotConnected9"
    env, names = setup(unknown)
    status, checks = run_check(env, monkeypatch, capsys)
    assert status == 1
    state, text = checks["contexts"]
    assert state == "failed" and f"1 of 1 context refused the key sk_test_{MASK}" in text
    assert f"context {unknown} (topics {names['hosted']}, {names['own']}): the key sk_test_{MASK}" in text
    assert "cannot act in it: Stripe answered 403" in text
    assert f"does not have access to account '{unknown}'" in text  # Stripe's own words
    # The platform's topics are checked as ever; the context's are named as not checked, once failed.
    state, text = checks["meters"]
    assert state == "warning" and f"not checked: the key cannot act in context {unknown}" in text
    assert checks["billing"][0] == "warning" and "2 topic(s) not checked" in checks["billing"][1]
    assert checks["stripe"][0] == checks["stream"][0] == "ok"

    # The text report, as an operator reads it: the same, and never the key.
    result = subprocess.run(
        [sys.executable, "-m", "connector", "check"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and API_KEY not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("  failed  contexts"))
    assert f"refused the key sk_test_{MASK}" in line
    assert f"context {unknown}" in result.stdout and "does not have access" in result.stdout
