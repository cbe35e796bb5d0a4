"""Throughput of the Stripe emulator's meter event stream: requests/s and events/s at high concurrency.

Starts ``kafka-stripe emulator`` in a child process, creates a meter event session, then keeps
``--concurrency`` keep-alive connections busy with 100-event ``POST /v2/billing/meter_event_stream``
requests for ``--seconds``. Every event carries a fresh identifier so the emulator does its full
work (deduplication table, pending validation), not the cheap duplicate path.

The client is a minimal HTTP/1.1 keep-alive client on asyncio protocols: the emulator and the
client share this machine's cores, and a heavy client would measure itself instead of the server.

    python -m benchmarks.emulator [--seconds 10] [--concurrency 64] [--latency-ms 0]

Target (issue 2): >= 2,000 requests/s (200,000 events/s) on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

EVENTS_PER_REQUEST = 100
TARGET_RPS = 2000.0
_LISTEN_RE = re.compile(r"listening on (http://\S+)")


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def start_emulator(latency_ms: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "connector", "emulator", "--host", "127.0.0.1", "--port", "0"]
    if latency_ms:
        cmd += ["--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = _LISTEN_RE.search(line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise SystemExit("emulator did not start")


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends bytes and resolves with the status code."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length_at = head.find(b"content-length:")
        length = int(head[length_at + 15 :].split(b"\r\n", 1)[0]) if length_at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def stream_request(host: str, token: str, worker: int, seq: int, timestamp: bytes) -> bytes:
    prefix = b"w%d-%d-" % (worker, seq)
    events = b",".join(
        b'{"event_name":"api_requests","identifier":"%s%d","timestamp":"%s",'
        b'"payload":{"stripe_customer_id":"cus_%d","value":"%d"}}' % (prefix, i, timestamp, i % 7, i)
        for i in range(EVENTS_PER_REQUEST)
    )
    body = b'{"events":[' + events + b"]}"
    return (
        b"POST /v2/billing/meter_event_stream HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nStripe-Version: 2024-09-30.acacia\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (host.encode(), token.encode(), len(body), body)
    )


async def drive(url: str, token: str, concurrency: int, seconds: float) -> tuple[Totals, float]:
    loop = asyncio.get_running_loop()
    host_port = url.split("//", 1)[1]
    host, port = host_port.split(":")
    totals = Totals()
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()).encode()
    stop_at = 0.0

    async def worker(n: int) -> None:
        _, conn = await loop.create_connection(_Connection, host, int(port))
        seq = 0
        while time.perf_counter() < stop_at:
            data = stream_request(host_port, token, n, seq, now)
            seq += 1
            started = time.perf_counter()
            try:
                status = await conn.request(data)
            except ConnectionError:
                totals.errors += 1
                _, conn = await loop.create_connection(_Connection, host, int(port))
                continue
            totals.latencies.append(time.perf_counter() - started)
            if status == 200:
                totals.requests += 1
            else:
                totals.errors += 1
        assert conn.transport is not None
        conn.transport.close()

    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return totals, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=int, default=0)
    args = parser.parse_args()

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the plain asyncio loop still works, only slower
        pass

    proc, url = start_emulator(args.latency_ms)
    try:
        session = httpx.post(
            f"{url}/v2/billing/meter_event_session",
            headers={"Authorization": "Bearer sk_test_bench", "Stripe-Version": "2024-09-30.acacia"},
            json={},
        )
        session.raise_for_status()
        token = session.json()["authentication_token"]
        server_cpu_before = cpu_seconds(proc.pid)
        client_cpu_before = time.process_time()
        totals, elapsed = asyncio.run(drive(url, token, args.concurrency, args.seconds))
        server_cpu = cpu_seconds(proc.pid) - server_cpu_before
        client_cpu = time.process_time() - client_cpu_before
        stats = httpx.get(f"{url}/_emulator/stats", params={"process": "false"}).json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    rps = totals.requests / elapsed
    lat = sorted(totals.latencies) or [0.0]
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    served = max(totals.requests, 1)
    print(
        f"emulator benchmark: {args.concurrency} connections, {args.seconds:.0f} s, "
        f"{EVENTS_PER_REQUEST} events/request, added latency {args.latency_ms} ms, {os.cpu_count()} cores"
    )
    print(f"  requests/s            {rps:12,.0f}")
    print(f"  events/s              {rps * EVENTS_PER_REQUEST:12,.0f}")
    print(f"  errors                {totals.errors:12,d}")
    print(f"  server CPU µs/request {server_cpu / served * 1e6:12,.0f}")
    print(f"  client CPU µs/request {client_cpu / served * 1e6:12,.0f}")
    print(f"  latency p50 / p99 ms  {p50:8.1f} / {p99:.1f}")
    print(f"  emulator stats        {stats}")
    verdict = "meets" if rps >= TARGET_RPS else "MISSES"
    print(f"  target >= {TARGET_RPS:,.0f} requests/s: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
