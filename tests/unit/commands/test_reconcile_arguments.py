"""``reconcile``'s ``--context`` and ``--topic`` arguments: refused before Kafka or Stripe is contacted,
with a message saying what to pass instead."""

from __future__ import annotations

import os

import pytest

from connector.cli import build_parser
from connector.commands import reconcile as reconcile_command
from connector.config.settings import ENV_PREFIXES

API_KEY = "sk_test_reconcile_arguments_0001"
# Unreachable on purpose: a refusal must come before either is contacted.
ENV = {
    "STRIPE_API_KEY": API_KEY,
    "STRIPE_API_BASE": "http://127.0.0.1:1",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "CONNECTOR_TOPICS": "usage,tenants,hosted,fixes",
    "TOPIC_USAGE_EVENT_NAME": "api",
    "TOPIC_TENANTS_EVENT_NAME": "api",
    "TOPIC_TENANTS_CONTEXT_FIELD": "identifier",
    "TOPIC_HOSTED_EVENT_NAME": "api",
    "TOPIC_HOSTED_STRIPE_CONTEXT": "acct_Hosted1",
    "TOPIC_FIXES_KIND": "corrections",
}
RANGE = ("--start", "2026-11-01T00:00Z", "--end", "2026-11-02T00:00Z")


def refusal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    parsed = build_parser("reconcile").parse_args(["reconcile", *args, *RANGE])
    assert reconcile_command.run(parsed) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err and API_KEY not in captured.err
    assert captured.err.startswith("kafka-stripe reconcile: "), captured.err
    return captured.err


@pytest.mark.parametrize("context", ["cus_123", "acct_", "acct_a/", "acct_a b", "acct_" + "x" * 300])
def test_a_malformed_context_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], context: str
) -> None:
    err = refusal(monkeypatch, capsys, "--topic", "tenants", "--context", context)
    assert "--context" in err and "is not a Stripe context" in err


def test_a_context_the_topic_never_sends_in_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refusal(monkeypatch, capsys, "--topic", "usage", "--context", "acct_1")
    assert "sends every event to the platform account" in err and "leave out --context" in err
    err = refusal(monkeypatch, capsys, "--topic", "hosted")
    assert "in context acct_Hosted1 (TOPIC_HOSTED_STRIPE_CONTEXT): pass --context acct_Hosted1" in err
    err = refusal(monkeypatch, capsys, "--topic", "hosted", "--context", "acct_Other1")
    assert "pass --context acct_Hosted1" in err


def test_a_corrections_topic_is_not_reconciled_on_its_own(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refusal(monkeypatch, capsys, "--topic", "fixes")
    assert "'fixes' is a corrections topic: reconcile the usage topic it corrects" in err


def test_a_valid_context_goes_on_to_stripe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A context path the topic can send in passes the arguments: the refusal is then Stripe's
    (unreachable here), named with the context."""
    err = refusal(monkeypatch, capsys, "--topic", "tenants", "--context", "acct_A1/acct_B2")
    assert "could not look up the meter in context acct_A1/acct_B2" in err
    assert "could not reach Stripe at http://127.0.0.1:1" in err
