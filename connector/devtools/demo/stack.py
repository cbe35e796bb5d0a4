"""The demo's moving parts: its settings, the connector process, the dead-letter counter, Stripe calls."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from connector.config.settings import ENV_PREFIXES
from connector.kafka.deadletter import DeadLetterHeaders, Headers
from connector.stripe.v1 import StripeApiError, StripeClient

TOPIC = "usage"
DLQ_TOPIC = f"{TOPIC}.dlq"  # the connector's default dead-letter topic name for TOPIC
EVENT_NAME = "api_requests"
GROUP_ID = "kafka-stripe-demo"
API_KEY = "sk_test_demo_kafka_stripe"
# A little latency makes the emulator behave like a remote API; a short token lifetime makes the
# connector renew its meter event session (halfway through a token's life) within a short demo.
EMULATOR_LATENCY_MS = 20
SESSION_TTL_S = 6
DEFAULT_RECORDS = 20_000
DEFAULT_CUSTOMERS = 5
DEFAULT_PARTITIONS = 4
DEFAULT_RATE = 2_500  # records per second: spreads 20,000 records over ~8 s, a stream rather than a dump
DEFAULT_TIMEOUT_S = 90.0
MIN_RECORDS = 100
TICK_S = 0.1
# The connector's own shutdown wait for undelivered batches, kept short so that a demo that went wrong
# (Stripe unreachable, say) ends soon; a stop waits for its revoke too, hence the margin before SIGKILL.
CONNECTOR_SHUTDOWN_TIMEOUT_S = 10
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 25


class DemoError(Exception):
    """An expected failure: reported as one message, without a traceback."""


# ------------------------------------------------------------------------------------ the Stripe side


def stripe_client(url: str) -> StripeClient:
    """The v1 client on the emulator; it decodes gzip answers (the demo's emulator compresses)."""
    return StripeClient(API_KEY, api_base=url)


def stripe_call(description: str, call: Any, *args: Any) -> dict[str, Any]:
    """``call(*args)``, its StripeApiError reported as a DemoError naming ``description``."""
    try:
        result: dict[str, Any] = call(*args)
    except StripeApiError as exc:
        raise DemoError(f"{description}: {exc}") from exc
    return result


def emulator_stats(stripe: StripeClient, *, process: bool) -> dict[str, Any]:
    """The emulator's counters; ``process=False`` reads them without draining its validation queue."""
    params = None if process else {"process": "false"}
    return stripe_call("GET /_emulator/stats", stripe.get, "/_emulator/stats", params)


def summary(stripe: StripeClient, meter_id: str, customer: str, start: int, end: int) -> Decimal:
    try:
        summaries = stripe.meter_event_summaries(meter_id, customer, start, end)
    except StripeApiError as exc:
        raise DemoError(f"meter event summaries of {customer}: {exc}") from exc
    # Summaries are floats on the wire; repr is the shortest text that round-trips.
    return sum((Decimal(repr(s.aggregated_value)) for s in summaries), Decimal(0))


def delivered_estimate(stats: Mapping[str, Any]) -> int:
    # Without validating the queue, a retried batch's duplicates are not known yet: an upper bound.
    return int(stats["events_received"]) - int(stats["duplicates_ignored"])


# ------------------------------------------------------------------------------------- the processes


def connector_env(bootstrap: str, stripe_url: str) -> dict[str, str]:
    from connector.devtools.broker import TANSU_CONSUMER_SETTINGS

    # The caller's connector variables must not leak into the demo's connector (an exported
    # KAFKA_BOOTSTRAP_SERVERS would send it to another cluster).
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": stripe_url,
            "STRIPE_METER_EVENTS_BASE": stripe_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_GROUP_ID": GROUP_ID,
            # Tansu makes a group join wait half the session timeout: keep it short.
            "KAFKA_SESSION_TIMEOUT_MS": str(TANSU_CONSUMER_SETTINGS["session.timeout.ms"]),
            "CONNECTOR_TOPICS": TOPIC,
            "TOPIC_USAGE_EVENT_NAME": EVENT_NAME,
            # The demo's records carry doubles and decimals; its emulator account has decimal values
            # enabled (Stripe's default is whole numbers only, as the connector's).
            "TOPIC_USAGE_DECIMAL_VALUES": "true",
            "CONNECTOR_METRICS_PORT": "0",
            "CONNECTOR_COMMIT_INTERVAL_MS": "500",
            "CONNECTOR_SHUTDOWN_TIMEOUT_S": str(CONNECTOR_SHUTDOWN_TIMEOUT_S),
        }
    )
    return env


def start_connector(env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    from connector.devtools.broker import die_with_parent

    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "connector", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            # Own session: a Ctrl-C in the terminal reaches only the demo, which then stops the
            # connector itself, in order, before the broker and emulator it depends on.
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )


def stop(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM, wait; SIGKILL after ``timeout``. The exit status if it stopped by itself, else None."""
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        return None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "    (no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    (the log is empty)"


class DeadLetterCounter:
    """Counts the records on the dead-letter topic, by the connector's error code header."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        # assign(), not subscribe(): no group join (slow on Tansu) and nothing committed. Tansu's
        # high watermark is unreliable, so records are counted by reading them.
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{GROUP_ID}-dlq-reader",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        metadata = self._consumer.list_topics(DLQ_TOPIC, timeout=10)
        partitions = metadata.topics[DLQ_TOPIC].partitions
        self._consumer.assign([TopicPartition(DLQ_TOPIC, p, OFFSET_BEGINNING) for p in partitions])
        self.count = 0
        self.codes: Counter[str] = Counter()

    def poll(self) -> int:
        for message in self._consumer.consume(1000, 0):
            if message.error() is not None:
                continue
            self.count += 1
            # confluent-kafka's stubs allow str values; a consumed message's header values are bytes.
            headers = cast(Headers, message.headers() or ())
            self.codes[DeadLetterHeaders.read(headers).code or "?"] += 1
        return self.count

    def close(self) -> None:
        self._consumer.close()
