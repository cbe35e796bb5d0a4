"""``CONNECTOR_WORKERS=N``: N pipeline processes in one consumer group, supervised like uvicorn's workers.

One Python process uses about one core (the GIL), so a container with several cores runs several
group members. The parent only supervises: it forwards SIGTERM/SIGINT, and when a worker exits on its
own (a fatal error, or killed) it stops the others and exits with that worker's status, so the
orchestrator restarts the whole unit rather than running short-handed without saying so. Workers die
with the parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from dataclasses import replace
from types import FrameType

from connector.config.settings import Settings
from connector.runtime.process import run_one

log = logging.getLogger("kafka_stripe.workers")

_PR_SET_PDEATHSIG = 1


def _worker(settings: Settings, index: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    raise SystemExit(run_one(settings, worker=index))


def supervise(settings: Settings) -> int:
    """Run ``settings.pipeline.workers`` pipelines in child processes; returns the exit status."""
    count = settings.pipeline.workers
    single = replace(settings, pipeline=replace(settings.pipeline, workers=1))
    context = multiprocessing.get_context("spawn")  # no inherited threads or librdkafka state
    processes = [context.Process(target=_worker, args=(single, i), name=f"worker-{i}") for i in range(count)]
    for process in processes:
        process.start()
    log.info("started %d workers: %s", count, ", ".join(str(p.pid) for p in processes))

    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            log.warning("second %s: killing workers now", signal.Signals(signum).name)
            for process in processes:
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGKILL)
            os._exit(130)
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    status = 0
    running = list(processes)
    while running:
        ready = multiprocessing.connection.wait([p.sentinel for p in running])
        for process in [p for p in running if p.sentinel in ready]:
            process.join()
            running.remove(process)
            code = process.exitcode or 0
            if code != 0 and status == 0:
                status = code if code > 0 else 1
            if not stopping:
                log.error("worker %s exited with %s; stopping the others", process.name, process.exitcode)
                stopping = True
                for other in running:
                    if other.pid is not None and other.is_alive():
                        os.kill(other.pid, signal.SIGTERM)
                status = status or 1
    return status
