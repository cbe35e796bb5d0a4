"""The demo's verdict: each customer's produced total against Stripe's summary, and the dead letters."""

from __future__ import annotations

import contextlib
import math
import time
from decimal import Decimal

from connector.devtools.demo.display import Display, amount, n, pack, render_table
from connector.devtools.demo.stack import API_KEY, DLQ_TOPIC, EVENT_NAME, TOPIC, DeadLetterCounter, summary
from connector.devtools.demo.workload import Customer, Dataset
from connector.stripe.v1 import StripeClient


def report(
    show: Display,
    stripe: StripeClient,
    dlq: DeadLetterCounter,
    meter_id: str,
    customers: list[Customer],
    data: Dataset,
) -> bool:
    """The per-customer comparison with Stripe's summaries, and the dead letters; True if all match."""
    # Summaries take minute-aligned bounds; [start, end) must cover every good record.
    start = data.first_ms // 60_000 * 60
    end = data.last_ms // 60_000 * 60 + 60
    rows = []
    all_match = True
    produced_sum = stripe_sum = Decimal(0)
    for customer in customers:
        billed = summary(stripe, meter_id, customer.id, start, end)
        # Stripe reports floats: equal within a double's precision is equal.
        match = math.isclose(billed, customer.total, rel_tol=1e-12, abs_tol=1e-9)
        all_match &= match
        produced_sum += customer.total
        stripe_sum += billed
        rows.append(
            [
                customer.id,
                customer.name,
                n(customer.records),
                amount(customer.total),
                amount(billed),
                "yes" if match else "NO",
            ]
        )
    rows.append(
        [
            "all customers",
            "",
            n(data.good),
            amount(produced_sum),
            amount(stripe_sum),
            "yes" if all_match else "NO",
        ]
    )
    show.line()
    for text in render_table(
        ["customer", "name", "records", "produced total", "Stripe summary", "match"], rows, {2, 3, 4}
    ):
        show.line(text)
    dead = dlq.poll()
    dlq_match = dead == len(data.malformed)
    show.line()
    show.line(
        f"  dead-lettered {dead} records in {DLQ_TOPIC}, {len(data.malformed)} malformed produced   "
        + ("yes" if dlq_match else "NO")
    )
    if dlq.codes:
        reasons = [f"{code} ×{count}" for code, count in sorted(dlq.codes.items())]
        for index, text in enumerate(pack(reasons, 90)):
            show.line(f"  {'reasons:' if index == 0 else '':<8} {text}")
    return all_match and dlq_match


def keep_running(show: Display, bootstrap: str, url: str) -> None:
    from connector.devtools.broker import TANSU_CONSUMER_SETTINGS

    session_timeout = TANSU_CONSUMER_SETTINGS["session.timeout.ms"]
    show.line()
    show.line("the broker and the emulator keep running; point a connector at them with:")
    show.line()
    show.line(f"  export KAFKA_BOOTSTRAP_SERVERS={bootstrap} KAFKA_SESSION_TIMEOUT_MS={session_timeout}")
    show.line(f"  export STRIPE_API_KEY={API_KEY}")
    show.line(f"  export STRIPE_API_BASE={url} STRIPE_METER_EVENTS_BASE={url}")
    show.line(f"  export CONNECTOR_TOPICS={TOPIC} TOPIC_USAGE_EVENT_NAME={EVENT_NAME}")
    show.line("  export TOPIC_USAGE_DECIMAL_VALUES=true")
    show.line("  kafka-stripe run")
    show.line()
    show.line(
        "a new consumer group reads the topic again from the start: Stripe ignores the repeated "
        "events by identifier"
    )
    show.line(f"(see duplicates_ignored in {url}/_emulator/stats) and {DLQ_TOPIC} gets the malformed again")
    show.line()
    show.line("press Ctrl-C to stop them")
    # Ctrl-C is the expected end here: the exit status stays the demo's verdict.
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1.0)
    show.line("stopping the emulator and the broker")
