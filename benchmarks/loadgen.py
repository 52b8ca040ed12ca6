"""Open-loop load generation with HdrHistogram recording.

Requests are *scheduled* at a constant arrival rate and sent on schedule
whether or not earlier ones have answered (open loop: a slow server does not
slow the generator down, as real checkouts would not wait for each other).
Latency is measured from the intended send time, not the actual one, so time a
request spent waiting because the generator itself fell behind is counted
against the server (the coordinated-omission correction). If the generator
cannot keep its own schedule, the step is marked invalid rather than reported.

A step can run in several processes; each returns its histogram encoded and
the parent merges them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from dataclasses import dataclass, field

import aiohttp
from hdrh.histogram import HdrHistogram

from benchmarks.scenarios import SCENARIOS, Target

LATENCY_US_MAX = 60_000_000  # 60 s: anything slower is recorded at the ceiling
SIGNIFICANT_DIGITS = 3
LATE_SEND_US = 10_000  # a send more than 10 ms behind schedule counts as late
LATE_SENDS_SHARE_MAX = 0.01  # over 1% late sends: the generator did not keep up
IN_FLIGHT_MAX = 4096  # per generator process; beyond it the step is invalid
REQUEST_TIMEOUT_S = 10.0


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)


@dataclass
class StepResult:
    offered_rps: float
    seconds: float
    histogram: HdrHistogram = field(default_factory=new_histogram)
    sent: int = 0
    completed: int = 0
    errors: int = 0
    late_sends: int = 0
    overflow: int = 0
    error_kinds: dict = field(default_factory=dict)

    @property
    def achieved_rps(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def valid(self) -> bool:
        return self.overflow == 0 and self.late_sends <= LATE_SENDS_SHARE_MAX * max(self.sent, 1)

    def percentile_ms(self, p: float) -> float:
        return self.histogram.get_value_at_percentile(p) / 1000

    def merge(self, other: dict) -> None:
        self.histogram.decode_and_add(other["histogram"])
        for name in ("sent", "completed", "errors", "late_sends", "overflow"):
            setattr(self, name, getattr(self, name) + other[name])
        for kind, count in other["error_kinds"].items():
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count

    def as_dict(self) -> dict:
        return {
            "offered_rps": round(self.offered_rps, 1),
            "achieved_rps": round(self.achieved_rps, 1),
            "sent": self.sent,
            "completed": self.completed,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "late_sends": self.late_sends,
            "overflow": self.overflow,
            "valid": self.valid,
            **{
                f"p{label}_ms": round(self.percentile_ms(p), 2)
                for label, p in (("50", 50), ("90", 90), ("99", 99), ("99.9", 99.9))
            },
            "max_ms": round(self.histogram.get_max_value() / 1000, 2),
        }


async def _run_schedule(
    target: Target, scenario: str, rate: float, warmup_s: float, seconds: float, seed: int
) -> dict:
    run = SCENARIOS[scenario]
    rng = random.Random(seed)
    histogram = new_histogram()
    counts = {"sent": 0, "completed": 0, "errors": 0, "late_sends": 0, "overflow": 0}
    error_kinds: dict[str, int] = {}
    in_flight: set[asyncio.Task] = set()
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT_MAX, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        state = target.new_state()
        start = time.perf_counter() + 0.05
        total = int(rate * (warmup_s + seconds))
        measure_from = int(rate * warmup_s)

        async def one(index: int, intended: float) -> None:
            try:
                ok, kind = await run(session, target, state, index, rng)
            except (TimeoutError, aiohttp.ClientError) as exc:
                ok, kind = False, type(exc).__name__
            if index < measure_from:
                return  # warm-up: not counted
            counts["completed"] += 1
            histogram.record_value(max(1, int((time.perf_counter() - intended) * 1e6)))
            if not ok:
                counts["errors"] += 1
                error_kinds[kind] = error_kinds.get(kind, 0) + 1

        for index in range(total):
            intended = start + index / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = index >= measure_from
            if measured:
                counts["sent"] += 1
                if (time.perf_counter() - intended) * 1e6 > LATE_SEND_US:
                    counts["late_sends"] += 1
            if len(in_flight) >= IN_FLIGHT_MAX:
                if measured:
                    counts["overflow"] += 1
                continue
            task = asyncio.create_task(one(index, intended))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT_S + 1)
    return {"histogram": histogram.encode(), "error_kinds": error_kinds, **counts}


def _process_main(args: tuple) -> dict:
    import uvloop

    target, scenario, rate, warmup_s, seconds, seed = args
    return uvloop.run(_run_schedule(target, scenario, rate, warmup_s, seconds, seed))


def run_step(
    target: Target,
    scenario: str,
    rate: float,
    seconds: float,
    warmup_s: float,
    processes: int = 1,
    seed: int = 1,
) -> StepResult:
    """Offer ``rate`` requests/s for ``warmup_s + seconds``; measure the last ``seconds``."""
    result = StepResult(offered_rps=rate, seconds=seconds)
    jobs = [
        (target, scenario, rate / processes, warmup_s, seconds, seed * 1000 + i)
        for i in range(processes)
    ]
    if processes == 1:
        parts = [_process_main(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            parts = pool.map(_process_main, jobs)
    for part in parts:
        result.merge(part)
    return result
