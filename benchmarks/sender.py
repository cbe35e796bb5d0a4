"""Throughput and CPU cost of ``MeterEventSender`` against the emulator, next to a plain-httpx baseline.

Starts ``kafka-stripe emulator --latency-ms 50`` in a child process (Stripe is tens of ms away), then for
each HTTP stack keeps ``--concurrency`` batches in flight through a full ``MeterEventSender``
(sessions, tenacity, token bucket, AIMD limiter, result bookkeeping) with 100-event batches, every
event with a fresh identifier, for ``--seconds``. Prints requests/s, events/s, the client's CPU per
request (this process's CPU time / requests; the emulator runs in its own process) and p50/p99 of
``send()`` latency, and checks with the emulator that every event was accepted exactly once.

    python -m benchmarks.sender [--seconds 10] [--concurrency 128] [--latency-ms 50]
                                [--stacks aiohttp,httpx-aiohttp,httpx] [--loop uvloop|asyncio]

Stacks: ``aiohttp`` (the connector's ``AiohttpClient``), ``httpx-aiohttp`` (httpx's interface over the
``httpx-aiohttp`` transport) and ``httpx`` (the baseline: a plain ``httpx.AsyncClient``).
Targets: >= 1,500 requests/s (150,000 events/s) and <= 500 µs of sender CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import httpx

from connector.devtools.emulator import EmulatorProcess
from connector.records import MeterEvent
from connector.stripe.http import AiohttpClient, HttpClient, HttpResponse, HttpxClient, Timeouts
from connector.stripe.limits import MAX_EVENTS_PER_REQUEST
from connector.stripe.sender import MeterEventSender

EVENTS_PER_BATCH = MAX_EVENTS_PER_REQUEST  # full batches, as a busy pipeline hands them over
TARGET_RPS = 1500.0
TARGET_CPU_US = 500.0
KEY = "sk_test_senderbenchmark"


class HttpxAiohttpClient:
    """httpx's API over the ``httpx-aiohttp`` transport, behind the connector's ``HttpClient`` seam."""

    def __init__(self, max_connections: int) -> None:
        from httpx_aiohttp import AiohttpTransport

        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._inner = HttpxClient(transport=AiohttpTransport(limits=limits), max_connections=max_connections)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        return await self._inner.post(url, body, headers)

    async def aclose(self) -> None:
        await self._inner.aclose()


def make_client(stack: str, concurrency: int) -> HttpClient:
    if stack == "aiohttp":
        return AiohttpClient(timeouts=Timeouts(), max_connections=concurrency + 4)
    if stack == "httpx-aiohttp":
        return HttpxAiohttpClient(concurrency + 4)
    if stack == "httpx":
        return HttpxClient(max_connections=concurrency + 4)
    raise SystemExit(f"unknown stack {stack!r}")


_PAYLOADS = [{"stripe_customer_id": f"cus_{i % 7}", "value": "1"} for i in range(EVENTS_PER_BATCH)]


def make_batch(prefix: str, seq: int, timestamp: str) -> list[MeterEvent]:
    """A batch as the pipeline would hand it over: fresh identifiers, so Stripe dedups nothing."""
    base = f"{prefix}-{seq}-"
    return [
        MeterEvent(base + str(i), "api_requests", timestamp, payload) for i, payload in enumerate(_PAYLOADS)
    ]


def generation_cost_us(timestamp: str, count: int = 2000) -> float:
    """CPU µs to build one batch of MeterEvents (part of the client CPU, not of the sender)."""
    started = time.process_time()
    for seq in range(count):
        make_batch("gen", seq, timestamp)
    return (time.process_time() - started) / count * 1e6


async def drive(url: str, stack: str, concurrency: int, seconds: float, run: str) -> dict[str, float]:
    timestamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    http = make_client(stack, concurrency)
    sender = MeterEventSender(
        api_key=KEY,
        api_base=url,
        meter_events_base=url,
        http=http,
        max_in_flight=concurrency,
    )
    latencies: list[float] = []
    delivered = undelivered = 0
    stop_at = 0.0
    measuring = False

    async def worker(n: int) -> None:
        nonlocal delivered, undelivered
        seq = 0
        while time.perf_counter() < stop_at:
            batch = make_batch(f"{run}-w{n}", seq, timestamp)
            seq += 1
            started = time.perf_counter()
            result = await sender.send(batch)
            if measuring:
                latencies.append(time.perf_counter() - started)
                if result.status == "delivered":
                    delivered += 1
                else:
                    undelivered += 1

    async with sender:
        await sender.sessions.current()
        stop_at = time.perf_counter() + 1.0  # warm-up: connections opened, caches hot
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        measuring = True
        cpu_before = time.process_time()
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(worker(n + concurrency) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        stats = sender.stats()
    await http.aclose()
    lat = sorted(latencies) or [0.0]
    requests = max(delivered + undelivered, 1)
    return {
        "rps": requests / elapsed,
        "cpu_us": cpu / requests * 1e6,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "undelivered": undelivered,
        "retries": stats.retries,
        "concurrency": stats.concurrency_limit,
        "events": stats.events_delivered,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--stacks", default="aiohttp,httpx-aiohttp,httpx")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()

    def run(coro: Coroutine[Any, Any, dict[str, float]]) -> dict[str, float]:
        if args.loop == "uvloop":
            import uvloop

            result: dict[str, float] = uvloop.run(coro)
            return result
        return asyncio.run(coro)

    timestamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    generation = generation_cost_us(timestamp)
    print(
        f"sender benchmark: {args.concurrency} batches in flight, {args.seconds:.0f} s per stack, "
        f"{EVENTS_PER_BATCH} events/batch, emulator latency {args.latency_ms} ms, {args.loop}, "
        f"{os.cpu_count()} cores (client and emulator share them)"
    )
    print(
        f"  building a {EVENTS_PER_BATCH}-event batch of MeterEvents costs {generation:.0f} µs "
        "of the client CPU below"
    )
    print(
        f"  {'stack':<14} {'requests/s':>10} {'events/s':>10} {'CPU µs/req':>10} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'undeliv.':>8}  exactly-once"
    )
    verdicts = []
    with EmulatorProcess(latency_ms=args.latency_ms) as emulator:
        for stack in args.stacks.split(","):
            httpx.post(f"{emulator.url}/_emulator/reset").raise_for_status()
            figures = run(drive(emulator.url, stack, args.concurrency, args.seconds, stack))
            # Validating the emulator's queue first makes its dedup counters final (a few seconds).
            emu = httpx.get(f"{emulator.url}/_emulator/stats", timeout=300).json()
            once = emu["duplicates_ignored"] == 0 and emu["events_accepted"] == figures["events"]
            print(
                f"  {stack:<14} {figures['rps']:10,.0f} {figures['rps'] * EVENTS_PER_BATCH:10,.0f} "
                f"{figures['cpu_us']:10,.0f} {figures['p50_ms']:7.1f} {figures['p99_ms']:7.1f} "
                f"{figures['undelivered']:8,.0f}  {'yes' if once else 'NO'}"
            )
            if stack == "aiohttp":
                sender_cpu = figures["cpu_us"] - generation
                verdicts.append(
                    f"  target >= {TARGET_RPS:,.0f} requests/s: "
                    f"{'meets' if figures['rps'] >= TARGET_RPS else 'MISSES'} ({figures['rps']:,.0f}); "
                    f"target <= {TARGET_CPU_US:.0f} µs sender CPU/request: "
                    f"{'meets' if sender_cpu <= TARGET_CPU_US else 'MISSES'} "
                    f"({figures['cpu_us']:.0f} µs client CPU, {sender_cpu:.0f} µs without batch building)"
                )
    for verdict in verdicts:
        print(verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
