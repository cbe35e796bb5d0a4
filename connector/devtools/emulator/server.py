"""``kafka-stripe emulator``: the emulator served by uvicorn, and ``EmulatorProcess`` to run it as a child."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from connector.devtools.emulator.app import DroppedConnection, EmulatorApp, create_app
from connector.devtools.emulator.config import DEFAULT_SESSION_TTL, EmulatorConfig
from connector.devtools.extra import EMULATOR_MODULES, require_extra

DEFAULT_PORT = 12111
READY_PREFIX = "emulator listening on "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_server_arguments(parser)
    _add_account_arguments(parser)


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Where it listens, how fast tokens expire, and the faults it injects."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    parser.add_argument(
        "--session-ttl",
        type=float,
        default=DEFAULT_SESSION_TTL,
        metavar="SECONDS",
        help="lifetime of meter event session tokens (default 900, as Stripe)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS", help="delay added to every request"
    )
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of stream requests answered 500",
    )
    parser.add_argument(
        "--rate-limited-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of stream requests answered 429",
    )
    parser.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of stream requests recorded but whose connection is then dropped",
    )
    parser.add_argument(
        "--retry-after", type=float, default=None, metavar="SECONDS", help="send Retry-After on 429s"
    )
    parser.add_argument(
        "--rate-limit-rps",
        type=float,
        default=0.0,
        metavar="N",
        help="token-bucket limit on stream requests per second (0 = unlimited, the default)",
    )


def _add_account_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulated account: its key, customers, settings and limits, and how it answers."""
    parser.add_argument("--api-key", default=None, metavar="KEY", help="accept only this secret key")
    parser.add_argument(
        "--require-known-customers",
        action="store_true",
        help="meter events resolve only customers created with POST /v1/customers and accounts "
        "created with POST /v2/core/accounts with a customer configuration",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for fault-injection draws")
    parser.add_argument(
        "--compress",
        action="store_true",
        help="gzip every API response whose request accepts gzip (Accept-Encoding)",
    )
    parser.add_argument(
        "--should-retry",
        choices=("true", "false"),
        default=None,
        help="send Stripe-Should-Retry with this value on injected stream errors (500, 503, 429)",
    )
    parser.add_argument(
        "--decimal-values",
        action="store_true",
        help="the account accepts decimal meter values (Stripe enables them per account); "
        "otherwise a value with a decimal point is invalid",
    )
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="ACCOUNT",
        help="a connected account platform keys may act in with Stripe-Context / Stripe-Account: "
        "acct_…, or a path acct_a/acct_b for an account of a connected account (repeatable; more "
        "with POST /_emulator/contexts)",
    )
    parser.add_argument(
        "--sandbox-limits",
        action="store_true",
        help="Stripe's own limits on meter events when --rate-limit-rps is 0: 25 requests/s in test "
        "mode, 10,000/s on the live stream, 1,000/s on live v1 meter events",
    )


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        session_ttl=args.session_ttl,
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        rate_limited_rate=args.rate_limited_rate,
        drop_rate=args.drop_rate,
        retry_after=args.retry_after,
        rate_limit_rps=args.rate_limit_rps,
        api_key=args.api_key,
        require_known_customers=args.require_known_customers,
        seed=args.seed,
        compress=args.compress,
        should_retry=None if args.should_retry is None else args.should_retry == "true",
        decimal_values=args.decimal_values,
        sandbox_limits=args.sandbox_limits,
        contexts=tuple(args.context),
    )


def run(args: argparse.Namespace) -> int:
    require_extra("emulator", EMULATOR_MODULES)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"kafka-stripe emulator: {error}", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as error:
        print(f"kafka-stripe emulator: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(create_app(config), sock, args.host))
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class _HideDroppedConnections(logging.Filter):
    """uvicorn logs every exception escaping the app; a deliberate drop is not worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        return not (info and info[0] is not None and issubclass(info[0], DroppedConnection))


async def serve(app: EmulatorApp, sock: socket.socket, host: str) -> None:
    """Serve until SIGINT/SIGTERM; prints the ready line once the socket accepts connections."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after its graceful shutdown, so the process would die
            # of SIGTERM; a stopped emulator exits with status 0 instead.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        backlog=4096,
        timeout_keep_alive=30,
    )
    logging.getLogger("uvicorn.error").addFilter(_HideDroppedConnections())
    server = Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if server.started:
        port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"{READY_PREFIX}http://{shown}:{port}", flush=True)
    await task


# -- running the emulator as a child process ---------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL the child when the parent dies, so no orphan keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EmulatorProcess:
    """The emulator in a subprocess on a free port; a context manager exposing ``url``.

    Keyword options are CLI options (``session_ttl=1`` -> ``--session-ttl 1``; ``True`` -> a bare
    flag; ``None`` / ``False`` -> omitted; a list repeats the option, ``context=["acct_a", "acct_b"]``
    -> ``--context acct_a --context acct_b``), except ``should_retry``, whose ``True`` / ``False`` become
    ``--should-retry true`` / ``false``. The child is SIGKILLed if this process (strictly, the
    thread that started it) dies, and terminated on ``stop()`` / context exit.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 20.0,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        compress: bool = False,
        should_retry: bool | None = None,
        decimal_values: bool = False,
        sandbox_limits: bool = False,
        **options: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.python = python
        self.env = env
        self.options = {
            **options,
            "compress": compress,
            "should_retry": None if should_retry is None else str(should_retry).lower(),
            "decimal_values": decimal_values,
            "sandbox_limits": sandbox_limits,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # the exit status, once stopped
        self._url: str | None = None

    def command(self) -> list[str]:
        argv = [self.python, "-m", "connector", "emulator", "--host", self.host, "--port", str(self.port)]
        for name, value in self.options.items():
            flag = "--" + name.replace("_", "-")
            if value is None or value is False:
                continue
            if isinstance(value, list | tuple):
                for item in value:  # a repeatable option: ``context=["acct_a", "acct_b"]``
                    argv.extend([flag, str(item)])
            elif value is True:
                argv.append(flag)
            else:
                argv.extend([flag, str(value)])
        return argv

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the emulator process is not running; call start() first")
        return self._url

    def start(self) -> str:
        if self.process is not None:
            return self.url
        environment = dict(os.environ if self.env is None else self.env)
        environment.setdefault("PYTHONUNBUFFERED", "1")
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=environment,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            self._url = self._await_ready(self.process)
        except BaseException:
            self.stop()
            raise
        return self._url

    def _await_ready(self, process: subprocess.Popen[bytes]) -> str:
        assert process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the emulator did not start within {self.startup_timeout} s")
            ready, _, _ = select.select([process.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                code = process.wait(timeout=5)
                raise RuntimeError(f"the emulator exited with status {code} before it was ready")
            line += chunk
        text = line.decode().strip().splitlines()[0]
        if not text.startswith(READY_PREFIX):
            raise RuntimeError(f"unexpected first line from the emulator: {text!r}")
        return text[len(READY_PREFIX) :]

    def stop(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        self._url = None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.returncode = process.returncode
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m connector.devtools.emulator.server``: the same as ``kafka-stripe emulator``."""
    parser = argparse.ArgumentParser(prog="kafka-stripe emulator")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
