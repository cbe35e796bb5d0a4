"""The ``check`` and ``run`` subcommands and their prologue: readable reports, exit statuses, and never a
secret or traceback."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from connector.cli import SUBCOMMANDS, build_parser
from connector.commands import check as check_command
from connector.commands import prologue
from connector.commands import run as run_command
from connector.config.environment import load_settings
from connector.config.secrets import MASK
from connector.config.settings import ENV_PREFIXES, Settings

REPO = Path(__file__).resolve().parents[3]
API_KEY = "sk_live_51ZyXwVuTsRqPoNmLkJiH"
SASL_PASSWORD = "sasl-pa55word-for-cli"
REGISTRY_AUTH = "registry-user:registry-pa55-cli"
SECRETS = (API_KEY, SASL_PASSWORD, REGISTRY_AUTH, "registry-pa55-cli")
SCHEMA = {
    "type": "record",
    "name": "Usage",
    "fields": [
        {"name": "stripe_customer_id", "type": "string"},
        {"name": "value", "type": "long"},
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "attributes", "type": {"type": "map", "values": "string"}},
    ],
}


@pytest.fixture
def config(tmp_path: Path) -> dict[str, str]:
    """A valid configuration holding every kind of credential."""
    schema = tmp_path / "usage.avsc"
    schema.write_text(json.dumps(SCHEMA))
    return {
        "STRIPE_API_KEY": API_KEY,
        "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "meter",
        "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "SCHEMA_REGISTRY_URL": "https://registry.example",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": REGISTRY_AUTH,
        "CONNECTOR_TOPICS": "usage",
        "TOPIC_USAGE_EVENT_NAME": "api_requests",
        "TOPIC_USAGE_SCHEMA": str(schema),
    }


@pytest.fixture
def invalid(config: dict[str, str]) -> dict[str, str]:
    """The same credentials with three problems."""
    return config | {
        "CONNECTOR_BATCH_SIZE": "500",
        "TOPIC_USAGE_EVENTNAME": "x",
        "KAFKA_SECURITY_PROTOCOL": "nope",
    }


def kafka_stripe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m connector ARGS`` with exactly ``env`` (plus PATH), as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "connector", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    for secret in SECRETS:
        assert secret not in output, (secret, output)


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Replace the process environment's connector variables for in-process command runs."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):  # the test process's own (a CI broker, ...)
            monkeypatch.delenv(name)

    def use(values: dict[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return types.SimpleNamespace(use=use)


# ------------------------------------------------------------------------------------------- subprocess


def test_check_reports_a_valid_configuration(config: dict[str, str]) -> None:
    result = kafka_stripe("check", "--offline", env=config)
    assert_clean(result)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"sk_live_{MASK}" in out and "sasl.password" in out and "basic_auth_user_info" in out
    assert "ok      configuration  1 topic (usage); live-mode Stripe key; schema registry configured" in out
    assert "customer   stripe_customer_id" in out and "long (timestamp-millis)" in out
    assert "identifier identifier" in out and "absent: topic-partition-offset is used" in out
    assert out.rstrip().endswith("All 2 checks passed.")


def test_check_json(config: dict[str, str]) -> None:
    result = kafka_stripe("check", "--json", "--offline", env=config)
    assert_clean(result)
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["valid"] is True
    assert document["configuration"]["kafka"]["sasl.password"] == MASK
    assert [(c["name"], c["status"]) for c in document["checks"]] == [
        ("configuration", "ok"),
        ("schemas", "ok"),
    ]


def test_check_lists_every_problem_without_secrets(invalid: dict[str, str]) -> None:
    result = kafka_stripe("check", env=invalid)
    assert_clean(result)
    assert result.returncode == 2
    assert result.stdout == ""  # no configuration is shown when it is invalid
    lines = result.stderr.splitlines()
    assert lines[0] == "kafka-stripe check: invalid configuration (3 problems):"
    assert any(line.startswith("  - CONNECTOR_BATCH_SIZE must be an integer from 1 to 100") for line in lines)
    assert any(line.startswith("  - TOPIC_USAGE_EVENTNAME is not a known setting") for line in lines)
    assert any(line.startswith("  - KAFKA_SECURITY_PROTOCOL: librdkafka rejects it") for line in lines)


def test_check_json_lists_problems(invalid: dict[str, str]) -> None:
    result = kafka_stripe("check", "--json", env=invalid)
    assert_clean(result)
    assert result.returncode == 2
    assert len(json.loads(result.stdout)["problems"]) == 3


def test_check_with_an_empty_environment() -> None:
    result = kafka_stripe("check", env={})
    assert_clean(result)
    assert result.returncode == 2
    for name in (
        "STRIPE_API_KEY is required",
        "KAFKA_BOOTSTRAP_SERVERS is required",
        "CONNECTOR_TOPICS is required",
    ):
        assert name in result.stderr


def test_run_lists_every_problem(invalid: dict[str, str]) -> None:
    result = kafka_stripe("run", env=invalid)
    assert_clean(result)
    assert result.returncode == 2
    assert result.stderr.startswith("kafka-stripe run: invalid configuration (3 problems):")


# ------------------------------------------------------------------------------------------- in-process


def test_run_hands_the_settings_to_the_pipeline(
    config: dict[str, str],
    environ: types.SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    received: list[Settings] = []
    pipeline = types.ModuleType(run_command.PIPELINE_MODULE)
    pipeline.run = lambda settings: received.append(settings) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, run_command.PIPELINE_MODULE, pipeline)
    # Nothing answers on port 1: run's meter preflight warns and starts anyway (the ledger namespace is
    # set, so the account is not looked up).
    config |= {"STRIPE_API_BASE": "http://127.0.0.1:1", "CONNECTOR_LEDGER_NAMESPACE": "acct_x.live"}
    environ.use(config)
    assert run_command.run(argparse.Namespace()) == 0
    assert received == [load_settings(config)]
    captured = capsys.readouterr()
    first, limit, warning = captured.err.splitlines()
    assert f"sk_live_{MASK}" in first and '"usage"' in first, "the effective configuration is one log line"
    assert limit == (
        "kafka-stripe run: rate limit 10000 requests/s to Stripe "
        "(live-mode key: Stripe's stream limit of 10,000 requests/s)"
    )
    assert warning.startswith("kafka-stripe run: warning: could not read the meters to check them")
    for secret in SECRETS:
        assert secret not in captured.out + captured.err


def test_run_announces_in_json_when_logs_are_json(
    config: dict[str, str],
    environ: types.SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline = types.ModuleType(run_command.PIPELINE_MODULE)
    pipeline.run = lambda settings: 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, run_command.PIPELINE_MODULE, pipeline)
    environ.use(
        config
        | {"CONNECTOR_LOG_FORMAT": "json", "STRIPE_API_BASE": "http://127.0.0.1:1"}
        | {"CONNECTOR_LEDGER_NAMESPACE": "acct_x.live"}
    )
    assert run_command.run(argparse.Namespace()) == 0
    first, *_ = capsys.readouterr().err.splitlines()
    assert json.loads(first)["configuration"]["stripe"]["api_key"] == f"sk_live_{MASK}"


def test_the_prologue_loads_the_settings_or_lists_every_problem(
    config: dict[str, str], invalid: dict[str, str], environ: types.SimpleNamespace
) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert prologue.load("reconcile", environ=invalid, out=out, err=err) is None
    lines = err.getvalue().splitlines()
    assert lines[0] == "kafka-stripe reconcile: invalid configuration (3 problems):"
    assert len(lines) == 4 and all(line.startswith("  - ") for line in lines[1:])
    assert out.getvalue() == ""

    out, err = io.StringIO(), io.StringIO()
    assert prologue.load("check", json_problems=True, environ=invalid, out=out, err=err) is None
    assert len(json.loads(out.getvalue())["problems"]) == 3 and err.getvalue() == ""
    for secret in SECRETS:
        assert secret not in out.getvalue()

    environ.use(config)  # without ``environ=``, the process environment is read
    loaded = prologue.load("run")
    assert loaded is not None and loaded.settings == load_settings(config)
    assert prologue.EXIT_INVALID == 2


def test_cli_output_masks_what_the_logs_would_hide(
    config: dict[str, str],
    environ: types.SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not only the configured secrets: a session token or a password in a URL, as the logs mask them."""
    token = "mes_tok_" + "Q7" * 20
    url = "https://meter:url-pa55word@proxy.example:8443/v1"

    def leaky(settings: Settings) -> check_command.CheckResult:
        raise RuntimeError(f"token {token} via {url} with key {settings.stripe.api_key.reveal()}")

    monkeypatch.setattr(check_command, "CHECKS", [("leaky", leaky)])
    environ.use(config)
    for json_output in (False, True):
        assert check_command.run(argparse.Namespace(json=json_output, offline=False)) == 1
        captured = capsys.readouterr()
        output = captured.out + captured.err
        assert "the check crashed" in output
        for secret in (token, "url-pa55word", API_KEY):
            assert secret not in output, (secret, output)
        assert f"mes_tok_{MASK}" in output and f"https://meter:{MASK}@proxy.example" in output

    redact = prologue.redactor(load_settings(config))
    assert prologue.refuse("dlq replay", f"{token} {SASL_PASSWORD} {url}", redact) == 2
    err = capsys.readouterr().err
    assert err.startswith("kafka-stripe dlq replay: ") and MASK in err
    for secret in (token, SASL_PASSWORD, "url-pa55word"):
        assert secret not in err


def test_a_failing_check_fails_the_command(
    config: dict[str, str],
    environ: types.SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load_settings(config)
    Path(config["TOPIC_USAGE_SCHEMA"]).unlink()  # the file vanished after loading
    result = check_command.check_schemas(settings)
    assert result.failed and any("no such file" in d for d in result.details)

    def crashing(settings: Settings) -> check_command.CheckResult:
        raise RuntimeError(f"boom with {settings.stripe.api_key.reveal()}")

    results = check_command.run_checks(
        settings, [("configuration", check_command.check_configuration), ("boom", crashing)]
    )
    assert [r.status for r in results] == ["ok", "failed"]
    assert API_KEY not in results[1].summary and MASK in results[1].summary

    Path(config["TOPIC_USAGE_SCHEMA"]).write_text(json.dumps(SCHEMA))
    monkeypatch.setattr(check_command, "CHECKS", [*check_command.CHECKS, ("boom", crashing)])
    environ.use(config)
    assert check_command.run(argparse.Namespace(json=False, offline=True)) == 1
    assert "1 of 3 checks failed." in capsys.readouterr().out


def test_render_configuration() -> None:
    text = check_command.render_configuration(
        {
            "stripe": {"api_key": "sk_test_" + MASK},
            "schema_registry": None,
            "topics": {"usage": {"payload_fields": []}},
        }
    )
    assert text.splitlines() == [
        "stripe",
        f"  api_key         sk_test_{MASK}",
        "schema_registry: (not configured)",
        "topic usage",
        "  payload_fields  (none)",
    ]


def test_subcommands_are_registered() -> None:
    assert SUBCOMMANDS["check"][0] == "connector.commands.check"
    assert SUBCOMMANDS["run"][0] == "connector.commands.run"
    assert build_parser("check").parse_args(["check", "--json"]).json is True
    assert build_parser("run").parse_args(["run"]).command == "run"


def test_run_stops_when_the_ledger_namespace_cannot_be_found(
    config: dict[str, str],
    environ: types.SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline = types.ModuleType(run_command.PIPELINE_MODULE)
    pipeline.run = lambda settings: pytest.fail("must not start")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, run_command.PIPELINE_MODULE, pipeline)
    environ.use(config | {"STRIPE_API_BASE": "http://127.0.0.1:1"})
    assert run_command.run(argparse.Namespace()) == 2
    err = capsys.readouterr().err
    assert "cannot look up the Stripe account for the delivery ledger" in err
    assert "set CONNECTOR_LEDGER_NAMESPACE" in err and "Traceback" not in err
