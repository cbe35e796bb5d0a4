"""``connector.runtime.logging``: text and JSON lines, every secret masked by the one redactor."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from connector.config.secrets import Secret, redact
from connector.runtime.logging import RedactingFilter, configure_logging
from tests.unit.runtime.support import (
    API_KEY,
    OPAQUE_TOKEN,
    OTHER_KEY,
    REGISTRY_AUTH,
    SASL_PASSWORD,
    SECRETS,
    SESSION_TOKEN,
    settings,
)

# ------------------------------------------------------------------------------------------ logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def log_everything(logger: logging.Logger) -> None:
    logger.info(f"key in the message <{API_KEY}>")
    logger.info("secrets in args: %s / %r / %s", SASL_PASSWORD, {"auth": REGISTRY_AUTH}, Secret(API_KEY))
    logger.warning("unknown keys %s and %s", OTHER_KEY, "registry-pa55")
    logger.warning("headers %s", {"Authorization": f"Bearer {SESSION_TOKEN}"})
    logger.warning("opaque Authorization: Bearer %s", OPAQUE_TOKEN)
    logger.info('session body {"authentication_token": "%s", "id": "bmes_1"}', SESSION_TOKEN)
    logger.info("100%% of %d records", 5)
    try:
        raise RuntimeError(f"Stripe refused {API_KEY} with {SESSION_TOKEN} on {SASL_PASSWORD}")
    except RuntimeError:
        logger.exception("delivery failed for %s", OTHER_KEY)


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_are_redacted() -> None:
    out = io.StringIO()
    configure_logging(settings("text"), worker=3, stream=out)
    log_everything(logging.getLogger("kafka_stripe.test"))
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    assert "key in the message <sk_live_**********>" in text
    assert "secrets in args: ********** / {'auth': '**********'} / **********\n" in text
    assert "unknown keys rk_test_********** and **********" in text
    assert "Bearer mes_tok_**********" in text
    assert "Authorization: Bearer **********" in text
    assert '"authentication_token": "**********", "id": "bmes_1"' in text
    assert "100% of 5 records" in text
    assert "RuntimeError: Stripe refused sk_live_********** with mes_tok_********** on **********" in text
    assert "Traceback (most recent call last)" in text
    assert "INFO [worker 3] kafka_stripe.test: 100% of 5 records" in text


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_are_redacted_one_object_per_line() -> None:
    out = io.StringIO()
    configure_logging(settings("json"), stream=out)
    log_everything(logging.getLogger("kafka_stripe.test"))
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 8
    assert {line["logger"] for line in lines} == {"kafka_stripe.test"}
    assert lines[0]["message"] == "key in the message <sk_live_**********>"
    assert lines[0]["level"] == "INFO" and lines[0]["time"].endswith("Z")
    failure = lines[-1]
    assert failure["level"] == "ERROR"
    assert failure["message"] == "delivery failed for rk_test_**********"
    assert "Stripe refused sk_live_********** with mes_tok_********** on **********" in failure["exception"]
    assert "worker" not in failure


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_sets_the_level_and_one_handler() -> None:
    out = io.StringIO()
    configure_logging(settings("text"), stream=out)
    configure_logging(settings("text"), stream=out)  # called again by a worker: still one handler
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("kafka_stripe.test").debug("hidden")
    assert out.getvalue() == ""


def test_filter_is_idempotent_and_keeps_short_values_readable() -> None:
    scrubber = RedactingFilter(["pw", SASL_PASSWORD])
    once = scrubber.scrub(f"pw is not masked, {SASL_PASSWORD} is; key {API_KEY}")
    assert once == "pw is not masked, ********** is; key sk_live_**********"
    assert scrubber.scrub(once) == once
    assert redact("see https://user:hunter22@registry:8081/subjects") == (
        "see https://user:**********@registry:8081/subjects"
    )
    assert redact("Bearer short") == "Bearer short"
