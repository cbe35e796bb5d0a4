"""``check`` without the network, for corrections topics and topics sent in a context: the offline checks
pass and say what each topic is, and the pre-aggregation refusal ``run`` shares looks at platform topics
only."""

from __future__ import annotations

import argparse
import os

import pytest

from connector.commands import check as check_command
from connector.commands.check_stripe import static_contexts, window_refusals
from connector.config.environment import load_settings
from connector.config.settings import ENV_PREFIXES
from connector.stripe.v1 import Meter

ENV = {
    "STRIPE_API_KEY": "sk_test_check_contexts_00001",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "CONNECTOR_TOPICS": "usage,hosted,fixes,hosted-fixes",
    "TOPIC_USAGE_EVENT_NAME": "api",
    "TOPIC_HOSTED_EVENT_NAME": "api",
    "TOPIC_HOSTED_STRIPE_CONTEXT": "acct_Hosted1",
    "TOPIC_FIXES_KIND": "corrections",
    "TOPIC_HOSTED_FIXES_KIND": "corrections",
    "TOPIC_HOSTED_FIXES_EVENT_NAME": "api",
    "TOPIC_HOSTED_FIXES_STRIPE_CONTEXT": "acct_Hosted1",
}


def test_the_offline_checks_pass_and_name_kinds_and_contexts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert check_command.run(argparse.Namespace(json=False, offline=True)) == 0
    out = capsys.readouterr().out
    assert "All 2 checks passed." in out and "Traceback" not in out
    assert "hosted: sent in context acct_Hosted1 (TOPIC_HOSTED_STRIPE_CONTEXT)" in out
    assert "fixes: corrections of usage already sent (TOPIC_FIXES_KIND=corrections), any event name" in out
    assert "hosted-fixes: corrections of usage already sent (TOPIC_HOSTED_FIXES_KIND=corrections), " in out
    assert "event name 'api' only" in out
    # A corrections topic has the fixed fields of a correction, not a customer or value field role.
    assert "usage_correction.avsc (record kafka_stripe.UsageCorrection, avro; corrections)" in out
    assert "correction original_identifier" in out and "correction original_offset" in out
    assert "VALUE_FIELD" not in out


def test_static_contexts_and_the_platform_only_window_refusal() -> None:
    settings = load_settings(ENV)
    assert static_contexts(settings) == {"acct_Hosted1": ["hosted", "hosted-fixes"]}
    hourly = Meter("mtr_1", "api", "API", "active", "sum", "stripe_customer_id", "value", False, "hour")
    refusals = window_refusals(settings, [hourly])
    # The platform's meter says nothing of the topic sent in acct_Hosted1 (checked there by `check`),
    # nor of corrections topics without an event name.
    assert len(refusals) == 1 and refusals[0].startswith("usage: meter mtr_1")
    # The same meter read in acct_Hosted1 refuses the topic sent there (run reads every context's meters).
    in_context = window_refusals(settings, [hourly], "acct_Hosted1")
    assert sorted(r.split(":")[0] for r in in_context) == ["hosted", "hosted-fixes"]


def test_count_meters_are_refused_for_aggregated_topics() -> None:
    import dataclasses

    from connector.commands.check_stripe import aggregation_refusal

    settings = load_settings(ENV)
    topic = dataclasses.replace(settings.topics[0], aggregate_s=60)
    counting = Meter("mtr_2", "api", "API", "active", "count", "stripe_customer_id", "value", False, None)
    summing = dataclasses.replace(counting, formula="sum")
    refusal = aggregation_refusal(topic, counting)
    assert refusal is not None and "formula count" in refusal and "_AGGREGATE" in refusal
    assert aggregation_refusal(dataclasses.replace(topic, aggregate_s=None), counting) is None
    assert aggregation_refusal(topic, summing) is None
