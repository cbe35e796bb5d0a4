"""``kafka-stripe demo``: its options, and one run from start-up to verdict."""
# Over 400 lines: the options and the one run they drive (start-up, stream, stop, verdict).

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from connector.devtools.demo.display import Display, n, pack
from connector.devtools.demo.report import keep_running, report
from connector.devtools.demo.stack import (
    API_KEY,
    DEFAULT_CUSTOMERS,
    DEFAULT_PARTITIONS,
    DEFAULT_RATE,
    DEFAULT_RECORDS,
    DEFAULT_TIMEOUT_S,
    DLQ_TOPIC,
    EMULATOR_LATENCY_MS,
    EVENT_NAME,
    MIN_RECORDS,
    SESSION_TTL_S,
    STOP_TIMEOUT_S,
    TICK_S,
    TOPIC,
    DeadLetterCounter,
    DemoError,
    connector_env,
    delivered_estimate,
    emulator_stats,
    log_tail,
    start_connector,
    stop,
    stripe_call,
    stripe_client,
)
from connector.devtools.demo.workload import (
    CUSTOMER_NAMES,
    Customer,
    Dataset,
    DeferredInterrupt,
    build_dataset,
)
from connector.devtools.extra import DEMO_MODULES, require_extra
from connector.stripe.v1 import StripeClient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def at_least(minimum: int) -> Callable[[str], int]:
        def parse(text: str) -> int:
            try:
                number = int(text.replace("_", ""))
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
            if number < minimum:
                raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
            return number

        return parse

    parser.add_argument(
        "--records",
        type=at_least(MIN_RECORDS),
        default=DEFAULT_RECORDS,
        metavar="N",
        help=f"records to produce, a few malformed ones included (default {DEFAULT_RECORDS:,})",
    )
    parser.add_argument(
        "--customers",
        type=at_least(1),
        default=DEFAULT_CUSTOMERS,
        metavar="N",
        help=f"Stripe customers to bill (default {DEFAULT_CUSTOMERS})",
    )
    parser.add_argument(
        "--partitions",
        type=at_least(1),
        default=DEFAULT_PARTITIONS,
        metavar="N",
        help=f"partitions of the {TOPIC!r} topic (default {DEFAULT_PARTITIONS})",
    )
    parser.add_argument(
        "--rate",
        type=at_least(1),
        default=DEFAULT_RATE,
        metavar="N",
        help=f"records produced per second (default {DEFAULT_RATE:,})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up if Stripe does not have everything this long after the last record "
        f"(default {DEFAULT_TIMEOUT_S:.0f})",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the generated records")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="afterwards, leave the broker and the emulator running (until Ctrl-C) and print how to "
        "point a connector at them",
    )


def run(args: argparse.Namespace) -> int:
    require_extra("demo", DEMO_MODULES)
    display = Display(sys.stdout)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # the same orderly cleanup as Ctrl-C

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with Demo(args, display) as demo:
            return demo.run()
    except KeyboardInterrupt:
        display.line("\ninterrupted: stopped the connector, the emulator and the broker")
        return 130
    except DemoError as exc:
        display.line(f"kafka-stripe demo: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


class Demo:
    """One run; ``close()`` (context exit) stops whatever was started, in reverse order."""

    def __init__(self, args: argparse.Namespace, display: Display) -> None:
        self.args = args
        self.show = display
        self.started = time.monotonic()
        self.work_dir = Path(tempfile.mkdtemp(prefix="kafka-stripe-demo-"))
        self.keep_work_dir = False
        self.broker: Any = None
        self.emulator: Any = None
        self.stripe: StripeClient | None = None
        self.connector: subprocess.Popen[bytes] | None = None
        self.dlq: DeadLetterCounter | None = None
        self.producer: Any = None

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.show.clear()
        if self.connector is not None:
            stop(self.connector, STOP_TIMEOUT_S)
            self.connector = None
        if self.dlq is not None:
            with contextlib.suppress(Exception):
                self.dlq.close()
            self.dlq = None
        if self.stripe is not None:
            self.stripe.close()
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- setup

    def start_broker(self) -> str:
        from connector.devtools.broker import EmbeddedBroker, EmbeddedBrokerError

        began = time.monotonic()
        try:
            self.broker = EmbeddedBroker()
            self.broker.start()
        except ModuleNotFoundError as exc:
            raise DemoError(
                f"the embedded broker needs {exc.name!r}, a development dependency: "
                "pip install -e '.[dev]' (or run `make demo`)"
            ) from exc
        except EmbeddedBrokerError as exc:
            raise DemoError(f"the embedded Kafka broker did not start: {exc}") from exc
        bootstrap: str = self.broker.bootstrap_servers
        self.show.step("kafka", f"embedded broker (Tansu) on {bootstrap} ({time.monotonic() - began:.1f} s)")
        return bootstrap

    def start_emulator(self) -> str:
        from connector.devtools.emulator import EmulatorProcess

        began = time.monotonic()
        self.emulator = EmulatorProcess(
            latency_ms=EMULATOR_LATENCY_MS,
            session_ttl=SESSION_TTL_S,
            api_key=API_KEY,
            require_known_customers=True,  # events for customers Stripe does not know would not bill
            decimal_values=True,  # an account with decimals enabled: the demo's values have fractions
            sandbox_limits=True,  # Stripe's test-mode limit (25 requests/s), which the connector follows
            compress=True,  # gzip for the clients that accept it (the demo's own httpx client does)
        )
        # The emulator shares our process group, so a Ctrl-C in the terminal would reach it too and,
        # during its startup, print a KeyboardInterrupt traceback; the mask is inherited, so it never
        # sees SIGINT: we stop it ourselves, after the connector. A Ctrl-C meanwhile waits until unblock.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            url: str = self.emulator.start()
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise DemoError(f"the Stripe emulator did not start: {exc}") from exc
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.stripe = stripe_client(url)
        self.show.step(
            "stripe",
            f"emulator on {url}: {EMULATOR_LATENCY_MS} ms latency, session tokens live {SESSION_TTL_S} s, "
            "test-mode limit 25 requests/s, decimal values enabled on the account "
            f"(and TOPIC_USAGE_DECIMAL_VALUES=true) ({time.monotonic() - began:.1f} s)",
        )
        return url

    def _post(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        assert self.stripe is not None
        return stripe_call(f"POST {path}", self.stripe.post, path, form)

    def create_billing(self) -> tuple[str, list[Customer]]:
        assert self.stripe is not None
        meter = self._post(
            "/v1/billing/meters",
            {
                "display_name": "API requests",
                "event_name": EVENT_NAME,
                "default_aggregation[formula]": "sum",
            },
        )
        price = self._post(
            "/v1/prices",
            {
                "currency": "usd",
                "unit_amount_decimal": "0.2",  # cents: $0.002 per request
                "product_data[name]": "API platform",
                "recurring[interval]": "month",
                "recurring[usage_type]": "metered",
                "recurring[meter]": meter["id"],
            },
        )
        self.show.step("meter", f"{meter['id']} 'API requests' (event {EVENT_NAME}, sum)")
        self.show.step("price", f"{price['id']}: $0.002 per request, billed monthly on that meter")
        customers = []
        for index in range(self.args.customers):
            base = CUSTOMER_NAMES[index % len(CUSTOMER_NAMES)]
            name = base if index < len(CUSTOMER_NAMES) else f"{base} {index // len(CUSTOMER_NAMES) + 1}"
            created = self._post("/v1/customers", {"name": name})
            customers.append(Customer(created["id"], name))
        self.show.step("customers", ", ".join(c.name for c in customers))
        return meter["id"], customers

    def create_topics(self) -> None:
        from connector.devtools.broker import EmbeddedBrokerError

        try:
            self.broker.create_topics([TOPIC], partitions=self.args.partitions)
            self.broker.create_topics([DLQ_TOPIC], partitions=1)
        except EmbeddedBrokerError as exc:
            raise DemoError(str(exc)) from exc
        self.show.step(
            "topics", f"{TOPIC} ({self.args.partitions} partitions, Avro), {DLQ_TOPIC} (dead letters)"
        )

    # -- the run

    def run(self) -> int:
        args = self.args
        self.show.line(
            f"kafka-stripe demo: {n(args.records)} usage records for {args.customers} customers, "
            "Kafka → connector → Stripe (emulated)"
        )
        self.show.line()
        bootstrap = self.start_broker()
        url = self.start_emulator()
        meter_id, customers = self.create_billing()
        self.create_topics()
        now_ms = int(time.time() * 1000)
        with DeferredInterrupt() as interrupt:
            data = build_dataset(customers, args.records, args.seed, now_ms, interrupt.check)
        self.show.step("records", f"{n(data.good)} good ones and {len(data.malformed)} malformed ones:")
        for text in pack(data.malformed, 90):
            self.show.step("", text)
        self.dlq = DeadLetterCounter(bootstrap)
        log_path = self.work_dir / "connector.log"
        env = connector_env(bootstrap, url)
        self.connector = start_connector(env, log_path)
        self.show.step("connector", f"python -m connector run (pid {self.connector.pid})")
        self.show.step("", f"log: {log_path} (kept if the demo fails)")
        self.show.line()

        complete, stalled = self.stream(data, bootstrap)
        if not complete:
            self.show.line(f"  {stalled}")
        status = self.stop_connector(log_path)
        ok = self._report(meter_id, customers, data) and complete and status == 0
        if status != 0 or not complete:
            self.keep_work_dir = True
            self.show.line(f"last lines of the connector's log ({log_path}):")
            self.show.line(log_tail(log_path))
        self.show.line()
        if ok:
            self.show.line(
                f"OK: Stripe billed exactly the usage produced, for every customer, and every malformed "
                f"record is in {DLQ_TOPIC} ({self.elapsed():.1f} s in all)"
            )
        else:
            self.show.line(f"FAILED: see above ({self.elapsed():.1f} s in all)")
        if args.keep_running:
            keep_running(self.show, bootstrap, url)
        return 0 if ok else 1

    def stream(self, data: Dataset, bootstrap: str) -> tuple[bool, str]:
        """Produce at the configured rate while showing progress; True once Stripe has everything."""
        from confluent_kafka import Producer

        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "client.id": "demo-producer"}
        )
        try:
            return self._stream(data)
        finally:
            # Drop unsent records and the producer now: librdkafka's destructor would complain about
            # them, and a producer outliving the broker (an exception's frames keep locals alive) logs
            # connection errors on stderr. Hence an attribute, never a local.
            self.producer.purge()
            self.producer.flush(0)
            self.producer = None

    def _stream(self, data: Dataset) -> tuple[bool, str]:
        assert self.stripe is not None and self.dlq is not None and self.connector is not None
        feed = _Feed(data.messages)
        total = len(data.messages)
        began = time.monotonic()
        while True:
            feed.produce_due(self.producer, int((time.monotonic() - began) * self.args.rate) + 1)
            stats = emulator_stats(self.stripe, process=False)
            at_stripe = delivered_estimate(stats)
            dead = self.dlq.poll()
            line = (
                f"produced {n(feed.acknowledged):>{len(n(total))}}/{n(total)}   "
                f"at Stripe {n(at_stripe):>{len(n(total))}}   dead-lettered {dead:>3}   "
                f"sessions {stats['sessions_created']}   {self.elapsed():5.1f} s"
            )
            caught_up = feed.finished is not None and at_stripe + dead >= total
            if caught_up and self._confirm(line, began, dead, total):
                return True, ""
            self.show.progress(line)
            if self.connector.poll() is not None:
                self.show.progress(line, force=True)
                return False, f"the connector exited with status {self.connector.returncode} before the end"
            if feed.finished is not None and time.monotonic() - feed.finished > self.args.timeout:
                self.show.progress(line, force=True)
                return False, (
                    f"gave up {self.args.timeout:.0f} s after the last record: of {n(total)}, Stripe has "
                    f"{n(at_stripe)} and {DLQ_TOPIC} {dead}"
                )
            time.sleep(TICK_S)

    def _confirm(self, line: str, began: float, dead: int, total: int) -> bool:
        """Confirm with the validated counters (this drains the emulator's queue first); report if done."""
        assert self.stripe is not None
        fresh = emulator_stats(self.stripe, process=True)
        accepted = int(fresh["events_accepted"])
        if accepted + dead < total:
            return False
        self.show.progress(line, force=True)
        self.show.clear()
        refused = int(fresh["events_invalid"])
        self.show.line(
            f"  done in {time.monotonic() - began:.1f} s: {n(accepted)} meter events at Stripe"
            + (f" ({n(refused)} of them refused by Stripe's checks)" if refused else "")
            + f", {dead} records dead-lettered"
        )
        self.show.line(
            f"  Stripe: {fresh['sessions_created']} meter event session(s) "
            f"(each token lives {SESSION_TTL_S} s), "
            f"{n(int(fresh['stream_requests']))} stream requests, "
            f"{n(int(fresh['duplicates_ignored']))} duplicate events ignored"
        )
        return True

    def _report(self, meter_id: str, customers: list[Customer], data: Dataset) -> bool:
        assert self.stripe is not None and self.dlq is not None
        return report(self.show, self.stripe, self.dlq, meter_id, customers, data)

    def stop_connector(self, log_path: Path) -> int | None:
        process = self.connector
        assert process is not None
        if process.poll() is not None:
            self.connector = None
            return process.returncode
        began = time.monotonic()
        status = stop(process, STOP_TIMEOUT_S)
        self.connector = None
        took = time.monotonic() - began
        if status is None:
            self.show.line(f"  the connector ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s and was killed")
        else:
            self.show.line(f"  connector stopped on SIGTERM with exit status {status} ({took:.1f} s)")
        return status


class _Feed:
    """Produces the dataset's messages in order, as many as are due, and counts the broker's acks.

    It never holds the producer: the demo keeps that in an attribute it can drop (see ``Demo.stream``)."""

    def __init__(self, messages: list[tuple[bytes, bytes]]) -> None:
        self.messages = messages
        self.sent = 0
        self.acknowledged = 0
        self.failures: list[str] = []
        self.finished: float | None = None  # when the broker acknowledged the last record

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is None:
            self.acknowledged += 1
        else:
            self.failures.append(str(error))

    def produce_due(self, producer: Any, due: int) -> None:
        total = len(self.messages)
        due = min(total, due)
        while self.sent < due:
            key, value = self.messages[self.sent]
            try:
                producer.produce(TOPIC, value=value, key=key, on_delivery=self._delivered)
            except BufferError:
                break  # the local queue is full: poll below makes room, the rest goes next tick
            self.sent += 1
        producer.poll(0)
        if self.failures:
            raise DemoError(f"producing to {TOPIC} failed: {self.failures[0]}")
        if self.sent == total and self.finished is None:
            if producer.flush(10) > 0:
                raise DemoError(f"the broker did not acknowledge every record sent to {TOPIC}")
            self.finished = time.monotonic()
