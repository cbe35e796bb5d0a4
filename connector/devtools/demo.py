"""``kafka-stripe demo``: embedded Kafka → the connector → the Stripe emulator, checked end to end."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx

from connector.config.settings import DEFAULT_SCHEMA, ENV_PREFIXES
from connector.devtools.extra import DEMO_MODULES, require_extra

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
TTY_REFRESH_S = 0.2
LINE_REFRESH_S = 2.0
# The connector's own shutdown wait for undelivered batches, kept short so that a demo that went wrong
# (Stripe unreachable, say) ends soon; a stop waits for its revoke too, hence the margin before SIGKILL.
CONNECTOR_SHUTDOWN_TIMEOUT_S = 10
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 25

CUSTOMER_NAMES = (
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella Health",
    "Hooli",
    "Stark Industries",
    "Wayne Enterprises",
    "Soylent",
    "Tyrell",
    "Cyberdyne",
)
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2")
ENDPOINTS = ("/v1/search", "/v1/embeddings", "/v1/chat/completions", "/v1/images")


class DemoError(Exception):
    """An expected failure: reported as one message, without a traceback."""


# --------------------------------------------------------------------------------------- the data


@dataclass
class Customer:
    id: str
    name: str
    records: int = 0
    total: Decimal = field(default_factory=Decimal)


@dataclass
class Dataset:
    """The encoded stream, in production order, and what Stripe should end up with."""

    messages: list[tuple[bytes, bytes]]  # (key, value)
    malformed: list[str]  # what is wrong with each malformed record
    first_ms: int  # earliest and latest timestamp of the good records
    last_ms: int

    @property
    def good(self) -> int:
        return len(self.messages) - len(self.malformed)


def _load_schema() -> Any:
    import fastavro

    return fastavro.parse_schema(json.loads(DEFAULT_SCHEMA.read_text()))


def _encode(schema: Any, record: Mapping[str, Any]) -> bytes:
    import fastavro

    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, dict(record))
    return buffer.getvalue()


def _value(rng: random.Random) -> tuple[int | float | Decimal | str, Decimal]:
    """A usage value in one of the schema's union branches, and its exact decimal worth."""
    kind = rng.random()
    if kind < 0.55:  # request counts: mostly single requests, some batched
        count = 1 if rng.random() < 0.6 else rng.randint(2, 50)
        return count, Decimal(count)
    if kind < 0.70:  # doubles with two places, as a metrics pipeline would emit them
        number = round(rng.uniform(0.05, 10.0), 2)
        return number, Decimal(repr(number))
    if kind < 0.90:  # exact decimals (Avro decimal, scale 12), e.g. GB transferred
        exact = Decimal(rng.randint(1, 99_999)).scaleb(-3)
        return exact, exact
    text = str(rng.randint(1, 100)) if rng.random() < 0.5 else f"{rng.randint(1, 999) / 100:.2f}"
    return text, Decimal(text)  # strings, as exported from CSV


def _malformed(schema: Any, rng: random.Random, customer: str, now_ms: int) -> list[tuple[str, bytes]]:
    """One record of each kind the connector must refuse and dead-letter."""

    def record(**overrides: Any) -> bytes:
        fields: dict[str, Any] = {
            "identifier": None,
            "stripe_customer_id": customer,
            "value": 1,
            "timestamp": now_ms - rng.randint(0, 3_599_999),
            "attributes": None,
        }
        fields.update(overrides)
        return _encode(schema, fields)

    day_ms = 86_400_000
    return [
        ("garbage bytes (not Avro)", b"GARBAGE \xff\xfe not a usage record"),
        ("truncated Avro record", record()[:6]),
        ("empty customer id", record(stripe_customer_id="")),
        ("NaN value", record(value=math.nan)),
        ("infinite value", record(value=math.inf)),
        ("non-numeric value 'twelve'", record(value="twelve")),
        ("value with 17 significant digits", record(value="12345678901234567")),
        ("timestamp 40 days old", record(timestamp=now_ms - 40 * day_ms)),
        ("timestamp 1 hour in the future", record(timestamp=now_ms + 3_600_000)),
    ]


class _DeferredInterrupt:
    """Holds back SIGINT/SIGTERM while fastavro encodes: an exception raised inside its compiled code
    surfaces as a SystemError traceback, so the interrupt is raised from ``check()`` instead."""

    def __init__(self) -> None:
        self.received = False
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def __enter__(self) -> _DeferredInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.check()

    def check(self) -> None:
        if self.received:
            self.received = False
            raise KeyboardInterrupt


def build_dataset(
    customers: list[Customer],
    total: int,
    rng: random.Random,
    now_ms: int,
    check: Callable[[], None] = lambda: None,
) -> Dataset:
    """``total`` encoded records (the malformed ones included), spread over the customers;
    ``check()`` is called now and then, to raise a deferred interrupt."""
    schema = _load_schema()
    bad = _malformed(schema, rng, customers[0].id, now_ms)
    good_count = total - len(bad)
    # A few large customers and a long tail, as real usage looks.
    weights = [1.0 / (rank + 1) for rank in range(len(customers))]
    chosen = rng.choices(customers, weights, k=good_count)
    identifiers: set[str] = set()
    messages: list[tuple[bytes, bytes]] = []
    first_ms, last_ms = now_ms, 0
    for count, customer in enumerate(chosen):
        if count % 1000 == 0:
            check()
        value, worth = _value(rng)
        timestamp = now_ms - rng.randint(0, 3_599_999)  # within the last hour
        identifier = None
        if rng.random() < 0.25:  # some producers bring their own idempotency key
            while identifier is None or identifier in identifiers:
                identifier = f"req_{rng.getrandbits(96):024x}"
            identifiers.add(identifier)
        attributes = None
        if rng.random() < 0.8:
            attributes = {"region": rng.choice(REGIONS), "endpoint": rng.choice(ENDPOINTS)}
        record = {
            "identifier": identifier,
            "stripe_customer_id": customer.id,
            "value": value,
            "timestamp": timestamp,
            "attributes": attributes,
        }
        messages.append((customer.id.encode(), _encode(schema, record)))
        customer.records += 1
        customer.total += worth
        first_ms, last_ms = min(first_ms, timestamp), max(last_ms, timestamp)
    for _reason, payload in bad:
        messages.insert(rng.randint(0, len(messages)), (customers[0].id.encode(), payload))
    return Dataset(messages, [reason for reason, _ in bad], first_ms, last_ms)


# ------------------------------------------------------------------------------------ the Stripe side


class StripeApi:
    """The few emulator calls the demo makes, form-encoded as Stripe's v1 API wants them."""

    def __init__(self, base_url: str) -> None:
        # httpx advertises gzip/deflate and decodes the answers itself (the emulator may compress).
        self._client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30.0
        )

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DemoError(f"{method} {path}: {exc}") from exc
        if response.is_error:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise DemoError(f"{method} {path}: HTTP {response.status_code}: {message}")
        return response.json()

    def post(self, path: str, form: Mapping[str, str]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", path, data=dict(form))
        return result

    def get(self, path: str, params: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", path, params=dict(params or {}))
        return result

    def stats(self, *, process: bool) -> dict[str, Any]:
        return self.get("/_emulator/stats", None if process else {"process": "false"})

    def summary(self, meter_id: str, customer: str, start: int, end: int) -> Decimal:
        body = self.get(
            f"/v1/billing/meters/{meter_id}/event_summaries",
            {"customer": customer, "start_time": start, "end_time": end},
        )
        # Summaries are floats on the wire; repr is the shortest text that round-trips.
        return sum((Decimal(repr(float(s["aggregated_value"]))) for s in body["data"]), Decimal(0))


def _delivered_estimate(stats: Mapping[str, Any]) -> int:
    # Without validating the queue, a retried batch's duplicates are not known yet: an upper bound.
    return int(stats["events_received"]) - int(stats["duplicates_ignored"])


# ------------------------------------------------------------------------------------------ output


def _n(number: int) -> str:
    return f"{number:,}"


def _amount(value: Decimal) -> str:
    # Normalised so 12.500 and 12.5 print alike; "f" keeps it out of exponent notation.
    return f"{value.normalize():,f}" if value else "0"


class Display:
    """Status lines, and a live progress line: redrawn in place on a terminal, periodic otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_draw = -math.inf
        self._live = False

    def line(self, text: str = "") -> None:
        self.clear()
        print(text, file=self.stream, flush=True)

    def step(self, label: str, text: str) -> None:
        self.line(f"  {label:<10} {text}")

    def progress(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < (TTY_REFRESH_S if self.tty else LINE_REFRESH_S):
            return
        self._last_draw = now
        if self.tty:
            self.stream.write("\r\x1b[2K  " + text)
            self.stream.flush()
            self._live = True
        else:
            print("  " + text, file=self.stream, flush=True)

    def clear(self) -> None:
        """End the live line so the next output starts on a fresh one."""
        if self._live:
            self.stream.write("\n")
            self.stream.flush()
            self._live = False


def _pack(items: list[str], width: int) -> list[str]:
    """Comma-separated items on lines of about ``width``, never breaking an item."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            if lines:
                lines[-1] += ","
            lines.append(item)
    return lines


def render_table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  " + "   ".join(cells).rstrip()

    return [fmt(headers), "  " + "   ".join("-" * w for w in widths), *(fmt(row) for row in rows)]


# ------------------------------------------------------------------------------------- the processes


def _connector_env(bootstrap: str, stripe_url: str) -> dict[str, str]:
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


def _start_connector(env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
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


def _stop(process: subprocess.Popen[bytes], timeout: float) -> int | None:
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


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
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
            headers = dict(message.headers() or ())
            code = headers.get("kafka_stripe.error.code") or b"?"
            self.codes[code.decode(errors="replace") if isinstance(code, bytes) else str(code)] += 1
        return self.count

    def close(self) -> None:
        self._consumer.close()


# ----------------------------------------------------------------------------------------- the demo


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
        self.stripe: StripeApi | None = None
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
            _stop(self.connector, STOP_TIMEOUT_S)
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
        self.stripe = StripeApi(url)
        self.show.step(
            "stripe",
            f"emulator on {url}: {EMULATOR_LATENCY_MS} ms latency, session tokens live {SESSION_TTL_S} s, "
            "test-mode limit 25 requests/s, decimal values enabled on the account "
            f"(and TOPIC_USAGE_DECIMAL_VALUES=true) ({time.monotonic() - began:.1f} s)",
        )
        return url

    def create_billing(self) -> tuple[str, list[Customer]]:
        assert self.stripe is not None
        meter = self.stripe.post(
            "/v1/billing/meters",
            {
                "display_name": "API requests",
                "event_name": EVENT_NAME,
                "default_aggregation[formula]": "sum",
            },
        )
        price = self.stripe.post(
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
            created = self.stripe.post("/v1/customers", {"name": name})
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
            f"kafka-stripe demo: {_n(args.records)} usage records for {args.customers} customers, "
            "Kafka → connector → Stripe (emulated)"
        )
        self.show.line()
        bootstrap = self.start_broker()
        url = self.start_emulator()
        meter_id, customers = self.create_billing()
        self.create_topics()
        rng = random.Random(args.seed)
        now_ms = int(time.time() * 1000)
        with _DeferredInterrupt() as interrupt:
            data = build_dataset(customers, args.records, rng, now_ms, interrupt.check)
        self.show.step("records", f"{_n(data.good)} good ones and {len(data.malformed)} malformed ones:")
        for text in _pack(data.malformed, 90):
            self.show.step("", text)
        self.dlq = DeadLetterCounter(bootstrap)
        log_path = self.work_dir / "connector.log"
        env = _connector_env(bootstrap, url)
        self.connector = _start_connector(env, log_path)
        self.show.step("connector", f"python -m connector run (pid {self.connector.pid})")
        self.show.step("", f"log: {log_path} (kept if the demo fails)")
        self.show.line()

        complete, stalled = self.stream(data, bootstrap)
        if not complete:
            self.show.line(f"  {stalled}")
        status = self.stop_connector(log_path)
        ok = self.report(meter_id, customers, data) and complete and status == 0
        if status != 0 or not complete:
            self.keep_work_dir = True
            self.show.line(f"last lines of the connector's log ({log_path}):")
            self.show.line(_log_tail(log_path))
        self.show.line()
        if ok:
            self.show.line(
                f"OK: Stripe billed exactly the usage produced, for every customer, and every malformed "
                f"record is in {DLQ_TOPIC} ({self.elapsed():.1f} s in all)"
            )
        else:
            self.show.line(f"FAILED: see above ({self.elapsed():.1f} s in all)")
        if args.keep_running:
            self.keep_running(bootstrap, url)
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
        acknowledged = 0
        failures: list[str] = []

        def delivered(error: Any, _message: Any) -> None:
            nonlocal acknowledged
            if error is None:
                acknowledged += 1
            else:
                failures.append(str(error))

        total = len(data.messages)
        began = time.monotonic()
        sent = 0
        finished_producing: float | None = None
        stats: Mapping[str, Any] = {}
        while True:
            due = min(total, int((time.monotonic() - began) * self.args.rate) + 1)
            while sent < due:
                key, value = data.messages[sent]
                try:
                    self.producer.produce(TOPIC, value=value, key=key, on_delivery=delivered)
                except BufferError:
                    break  # the local queue is full: poll below makes room, the rest goes next tick
                sent += 1
            self.producer.poll(0)
            if failures:
                raise DemoError(f"producing to {TOPIC} failed: {failures[0]}")
            if sent == total and finished_producing is None:
                if self.producer.flush(10) > 0:
                    raise DemoError(f"the broker did not acknowledge every record sent to {TOPIC}")
                finished_producing = time.monotonic()
            stats = self.stripe.stats(process=False)
            at_stripe = _delivered_estimate(stats)
            dead = self.dlq.poll()
            line = (
                f"produced {_n(acknowledged):>{len(_n(total))}}/{_n(total)}   "
                f"at Stripe {_n(at_stripe):>{len(_n(total))}}   dead-lettered {dead:>3}   "
                f"sessions {stats['sessions_created']}   {self.elapsed():5.1f} s"
            )
            if finished_producing is not None and at_stripe + dead >= total:
                # Confirm with the validated counters (this drains the emulator's queue first).
                fresh = self.stripe.stats(process=True)
                accepted = int(fresh["events_accepted"])
                if accepted + dead >= total:
                    self.show.progress(line, force=True)
                    self.show.clear()
                    refused = int(fresh["events_invalid"])
                    self.show.line(
                        f"  done in {time.monotonic() - began:.1f} s: {_n(accepted)} meter events at Stripe"
                        + (f" ({_n(refused)} of them refused by Stripe's checks)" if refused else "")
                        + f", {dead} records dead-lettered"
                    )
                    self.show.line(
                        f"  Stripe: {fresh['sessions_created']} meter event session(s) "
                        f"(each token lives {SESSION_TTL_S} s), "
                        f"{_n(int(fresh['stream_requests']))} stream requests, "
                        f"{_n(int(fresh['duplicates_ignored']))} duplicate events ignored"
                    )
                    return True, ""
            self.show.progress(line)
            if self.connector.poll() is not None:
                self.show.progress(line, force=True)
                return False, f"the connector exited with status {self.connector.returncode} before the end"
            if finished_producing is not None and time.monotonic() - finished_producing > self.args.timeout:
                self.show.progress(line, force=True)
                return False, (
                    f"gave up {self.args.timeout:.0f} s after the last record: of {_n(total)}, Stripe has "
                    f"{_n(at_stripe)} and {DLQ_TOPIC} {dead}"
                )
            time.sleep(TICK_S)

    def stop_connector(self, log_path: Path) -> int | None:
        process = self.connector
        assert process is not None
        if process.poll() is not None:
            self.connector = None
            return process.returncode
        began = time.monotonic()
        status = _stop(process, STOP_TIMEOUT_S)
        self.connector = None
        took = time.monotonic() - began
        if status is None:
            self.show.line(f"  the connector ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s and was killed")
        else:
            self.show.line(f"  connector stopped on SIGTERM with exit status {status} ({took:.1f} s)")
        return status

    def report(self, meter_id: str, customers: list[Customer], data: Dataset) -> bool:
        """The per-customer comparison with Stripe's summaries, and the dead letters; True if all match."""
        assert self.stripe is not None and self.dlq is not None
        # Summaries take minute-aligned bounds; [start, end) must cover every good record.
        start = data.first_ms // 60_000 * 60
        end = data.last_ms // 60_000 * 60 + 60
        rows = []
        all_match = True
        produced_sum = stripe_sum = Decimal(0)
        for customer in customers:
            billed = self.stripe.summary(meter_id, customer.id, start, end)
            # Stripe reports floats: equal within a double's precision is equal.
            match = math.isclose(billed, customer.total, rel_tol=1e-12, abs_tol=1e-9)
            all_match &= match
            produced_sum += customer.total
            stripe_sum += billed
            rows.append(
                [
                    customer.id,
                    customer.name,
                    _n(customer.records),
                    _amount(customer.total),
                    _amount(billed),
                    "yes" if match else "NO",
                ]
            )
        rows.append(
            [
                "all customers",
                "",
                _n(data.good),
                _amount(produced_sum),
                _amount(stripe_sum),
                "yes" if all_match else "NO",
            ]
        )
        self.show.line()
        for text in render_table(
            ["customer", "name", "records", "produced total", "Stripe summary", "match"], rows, {2, 3, 4}
        ):
            self.show.line(text)
        dead = self.dlq.poll()
        dlq_match = dead == len(data.malformed)
        self.show.line()
        self.show.line(
            f"  dead-lettered {dead} records in {DLQ_TOPIC}, {len(data.malformed)} malformed produced   "
            + ("yes" if dlq_match else "NO")
        )
        if self.dlq.codes:
            reasons = [f"{code} ×{count}" for code, count in sorted(self.dlq.codes.items())]
            for index, text in enumerate(_pack(reasons, 90)):
                self.show.line(f"  {'reasons:' if index == 0 else '':<8} {text}")
        return all_match and dlq_match

    def keep_running(self, bootstrap: str, url: str) -> None:
        from connector.devtools.broker import TANSU_CONSUMER_SETTINGS

        session_timeout = TANSU_CONSUMER_SETTINGS["session.timeout.ms"]
        self.show.line()
        self.show.line("the broker and the emulator keep running; point a connector at them with:")
        self.show.line()
        self.show.line(
            f"  export KAFKA_BOOTSTRAP_SERVERS={bootstrap} KAFKA_SESSION_TIMEOUT_MS={session_timeout}"
        )
        self.show.line(f"  export STRIPE_API_KEY={API_KEY}")
        self.show.line(f"  export STRIPE_API_BASE={url} STRIPE_METER_EVENTS_BASE={url}")
        self.show.line(f"  export CONNECTOR_TOPICS={TOPIC} TOPIC_USAGE_EVENT_NAME={EVENT_NAME}")
        self.show.line("  export TOPIC_USAGE_DECIMAL_VALUES=true")
        self.show.line("  kafka-stripe run")
        self.show.line()
        self.show.line(
            "a new consumer group reads the topic again from the start: Stripe ignores the repeated "
            "events by identifier"
        )
        self.show.line(
            f"(see duplicates_ignored in {url}/_emulator/stats) and {DLQ_TOPIC} gets the malformed again"
        )
        self.show.line()
        self.show.line("press Ctrl-C to stop them")
        # Ctrl-C is the expected end here: the exit status stays the demo's verdict.
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1.0)
        self.show.line("stopping the emulator and the broker")
