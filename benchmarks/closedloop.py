"""Closed-loop load with wrk: the honest ceiling of a target on this machine.

``wrk -t1 -c64 -d10s --latency`` keeps 64 connections each with exactly one request in
flight: a new request leaves as soon as the previous answer arrives (closed loop), so the
rate it reaches is what the server can do with 64 concurrent clients, and wrk (C,
one thread) spends far less CPU per request than the Python open-loop generator
(benchmarks/loadgen.py), which tops out well below what the framework baseline can
serve. Its latencies are *not* corrected for coordinated omission (a slow answer delays
the next send): use them to compare targets under the same load, never as an SLO figure;
that is what the open-loop sweep is for.

The request is API.md's authorization (benchmarks/wrk/authorize.lua: fresh Idempotency-Key
per request, the merchant's key); the framework gets the same bytes (baseline.lua).

``kassa-stripe`` is one Kassa under what stripe-python sends for a confirmed PaymentIntent
create (benchmarks/wrk/stripe.lua: form-encoded, ``pm_card_visa``, the SDK's headers) to
``/stripe/v1/payment_intents``, alternating with the native authorization on the same
server (``measure_interleaved``): the same authorization through both trees, so their
ratio is the facade's own cost, not the machine's drift between two servers.

``kassa-webhooks`` is one Kassa with one endpoint subscribed to ``*`` at a receiver on
loopback (benchmarks/webhook_receiver.py), disabled and enabled in turn
(``measure_with_webhooks``): enabled, every authorization also writes its event's delivery
and the deliverer POSTs it; disabled, the outbox writes no delivery, as with no endpoint.
Besides the wrk figures of both it reports the
commit-to-delivery latency of the window's events (the receiver's arrival time of each
``webhook-id`` minus the event's ``created_at`` in the database, both this machine's wall
clock; ``created_at`` is taken just before the statement that commits the event, so the
figure includes that commit), the deliveries still pending when wrk stopped, and how long
they took to drain.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPTS = ROOT / "benchmarks" / "wrk"
INSTALLER = ROOT / "scripts" / "install-bench-tools"

THREADS = 1
CONNECTIONS = 64
SECONDS = 10.0
WARMUP_SECONDS = 2.0  # a separate wrk run first: connections, caches, JIT-free warm
REQUEST_TIMEOUT_S = 5  # wrk --timeout: an answer slower than this is a socket error
WRK_SLACK_S = 30.0  # wrk's own run time past -d before we give up on it

# The open-loop framework figure is the generator's, not the framework's, when wrk (closed
# loop, same machine, same run) serves this much more.
GENERATOR_LIMITED_MARGIN = 1.2

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY_LINE = re.compile(
    r"^\s*(50|75|90|99(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE
)
_REQUESTS_LINE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.MULTILINE)
_RPS_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX_3XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SCRIPT_LINE = re.compile(
    r"^kassa-wrk: answers=(\d+) non2xx=(\d+) replayed=(\d+) statuses=(\S*)$", re.MULTILINE
)


class WrkOutputError(ValueError):
    """wrk's output lacks a figure we need (it failed, or it is not wrk's)."""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]  # "50", "75", "90", "99" -> ms
    non2xx: int  # counted by the Lua `response` callback
    replayed: int  # answers with Idempotent-Replayed (must be 0)
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Every request that did not get a 2xx: non-2xx answers and socket errors."""
        return self.non2xx + sum(self.socket_errors.values())

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "rps": round(self.rps, 1),
            "errors": self.errors,
            "non2xx": self.non2xx,
            "replayed": self.replayed,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "socket_errors": self.socket_errors,
            **{f"p{p}_ms": round(v, 3) for p, v in self.latency_ms.items()},
        }


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk_output(text: str) -> WrkResult:
    """The figures of one ``wrk --latency -s authorize.lua`` run from its stdout."""
    requests = _REQUESTS_LINE.search(text)
    rps = _RPS_LINE.search(text)
    script = _SCRIPT_LINE.search(text)
    if requests is None or rps is None:
        raise WrkOutputError(f"no request count in wrk's output:\n{text[-2000:]}")
    if script is None:
        raise WrkOutputError("no 'kassa-wrk:' line: was wrk run with benchmarks/wrk/*.lua?")
    latency = {m[1]: _ms(m[2], m[3]) for m in _LATENCY_LINE.finditer(text)}
    if "50" not in latency or "99" not in latency:
        raise WrkOutputError("no latency distribution: was wrk run with --latency?")
    socket = _SOCKET_ERRORS.search(text)
    socket_errors = (
        {name: int(socket[i + 1]) for i, name in enumerate(("connect", "read", "write", "timeout"))}
        if socket
        else {}
    )
    statuses = {
        int(code): int(count)
        for code, count in (pair.split(":") for pair in script[4].split(",") if pair)
    }
    non2xx = int(script[2])
    wrk_bad = _NON_2XX_3XX.search(text)
    # wrk's own count (status > 399) can only be lower than the script's (any non-2xx).
    if wrk_bad and int(wrk_bad[1]) > non2xx:
        non2xx = int(wrk_bad[1])
    return WrkResult(
        requests=int(requests[1]),
        seconds=round(_ms(requests[2], requests[3]) / 1000, 3),
        rps=float(rps[1]),
        latency_ms=latency,
        non2xx=non2xx,
        replayed=int(script[3]),
        statuses=statuses,
        socket_errors=socket_errors,
    )


def wrk_executable() -> str:
    """wrk's path; installs it with scripts/install-bench-tools when missing (as root),
    else fails with what to install."""
    found = shutil.which("wrk")
    if found:
        return found
    done = subprocess.run(
        [str(INSTALLER)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError(
            f"wrk is needed for the closed-loop figures: "
            f"{done.stderr.strip() or 'scripts/install-bench-tools failed'}"
        )
    return found


# What the SDK sends to the Stripe-compatible tree (the kassa-stripe target).
STRIPE_SCRIPT = "stripe.lua"


def wrk_command(
    url: str,
    secret_key: str | None,
    seconds: float,
    connections: int = CONNECTIONS,
    threads: int = THREADS,
    script_name: str | None = None,
) -> list[str]:
    """``script_name`` (in benchmarks/wrk): authorize.lua with a key, baseline.lua without."""
    default = "authorize.lua" if secret_key else "baseline.lua"
    script = WRK_SCRIPTS / (script_name or default)
    command = [
        wrk_executable(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, math.ceil(seconds))}s",  # wrk takes whole seconds only ("1.5s" fails)
        f"--timeout={REQUEST_TIMEOUT_S}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    return command + (["--", secret_key] if secret_key else [])


def run_wrk(
    url: str,
    secret_key: str | None,
    seconds: float,
    connections: int = CONNECTIONS,
    threads: int = THREADS,
    script_name: str | None = None,
) -> WrkResult:
    command = wrk_command(url, secret_key, seconds, connections, threads, script_name)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + WRK_SLACK_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()}")
    return parse_wrk_output(done.stdout)


def measure(
    target,
    seconds: float = SECONDS,
    warmup_s: float = WARMUP_SECONDS,
    script_name: str | None = None,
) -> WrkResult:
    """Warm up (not counted), then one closed-loop run against ``target`` (a Target)."""
    if warmup_s > 0:
        run_wrk(target.url, target.secret_key, warmup_s, script_name=script_name)
    return run_wrk(target.url, target.secret_key, seconds, script_name=script_name)


INTERLEAVED_ROUNDS = 2  # native, Stripe, native, Stripe: each half the measured seconds


def combined(runs: list[WrkResult]) -> WrkResult:
    """Several wrk runs as one: counts summed, rate over their summed time, each latency
    percentile the mean of the runs' (an approximation: wrk gives no histogram)."""
    seconds = sum(r.seconds for r in runs)
    requests = sum(r.requests for r in runs)
    statuses: dict[int, int] = {}
    socket_errors: dict[str, int] = {}
    for r in runs:
        for code, count in r.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
        for kind, count in r.socket_errors.items():
            socket_errors[kind] = socket_errors.get(kind, 0) + count
    return WrkResult(
        requests=requests,
        seconds=round(seconds, 3),
        rps=requests / seconds if seconds else 0.0,
        latency_ms={
            p: sum(r.latency_ms[p] for r in runs) / len(runs)
            for p in runs[0].latency_ms
            if all(p in r.latency_ms for r in runs)
        },
        non2xx=sum(r.non2xx for r in runs),
        replayed=sum(r.replayed for r in runs),
        statuses=statuses,
        socket_errors=socket_errors,
    )


def measure_interleaved(
    target,
    script_name: str,
    seconds: float = SECONDS,
    warmup_s: float = WARMUP_SECONDS,
    rounds: int = INTERLEAVED_ROUNDS,
) -> tuple[WrkResult, WrkResult]:
    """The native authorization and ``script_name``'s on one server, alternating (native
    first) for ``rounds`` rounds of ``seconds / 2`` each: (native, scripted). On a shared
    machine whose load drifts, alternating on one server compares the two requests'
    costs far better than two servers measured one after the other."""
    if warmup_s > 0:
        run_wrk(target.url, target.secret_key, warmup_s / 2)
        run_wrk(target.url, target.secret_key, warmup_s / 2, script_name=script_name)
    native: list[WrkResult] = []
    scripted: list[WrkResult] = []
    for _ in range(rounds):
        native.append(run_wrk(target.url, target.secret_key, seconds / 2))
        scripted.append(
            run_wrk(target.url, target.secret_key, seconds / 2, script_name=script_name)
        )
    return combined(native), combined(scripted)


DRAIN_TIMEOUT_S = 120.0  # after the window, for the pending deliveries to go out
DRAIN_POLL_S = 0.1


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil(n * pct / 100)
    return sorted_values[int(rank) - 1]


def delivery_latencies(
    created: dict[str, float], arrivals: list[tuple[str, float]]
) -> tuple[list[float], int]:
    """Seconds from each event's ``created`` (``created``: id -> unix s) to the first
    arrival of its ``webhook-id``, ascending; and how many events never arrived."""
    first: dict[str, float] = {}
    for webhook_id, at in arrivals:
        if webhook_id in created and (webhook_id not in first or at < first[webhook_id]):
            first[webhook_id] = at
    latencies = sorted(at - created[event_id] for event_id, at in first.items())
    return latencies, len(created) - len(first)


async def _pending_deliveries(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'")
        )
    finally:
        await conn.close()


async def _events_created(dsn: str, since: float, until: float) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT id, extract(epoch FROM created_at)::float8 AS at FROM events
                WHERE created_at BETWEEN to_timestamp($1) AND to_timestamp($2)""",
            since,
            until,
        )
    finally:
        await conn.close()
    return {row["id"]: row["at"] for row in rows}


def receiver_arrivals(receiver_url: str) -> list[tuple[str, float]]:
    with urllib.request.urlopen(receiver_url + "/arrivals", timeout=60) as answer:
        return [(webhook_id, at) for webhook_id, at in orjson.loads(answer.read())]


def set_endpoint_status(target, endpoint_id: str, status: str) -> None:
    """POST /v1/webhook_endpoints/{id} {"status": ...}, as a merchant would (a fresh key)."""
    request = urllib.request.Request(
        f"{target.url}/v1/webhook_endpoints/{endpoint_id}",
        data=orjson.dumps({"status": status}),
        headers={
            "Authorization": f"Bearer {target.secret_key}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"bench-{status}-{time.monotonic_ns()}",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def _drain(dsn: str, since: float, settle_s: float = 0.0) -> tuple[int, int, float]:
    """Deliveries pending now, pending after waiting (bounded) for none, and the seconds
    from ``since`` until none was first seen; it returns no sooner than ``settle_s`` after
    ``since``, and then with none pending (or at the bound)."""
    at_end = asyncio.run(_pending_deliveries(dsn))
    pending, drained_s = at_end, None if at_end else 0.0
    while time.time() - since < DRAIN_TIMEOUT_S:
        if pending == 0 and drained_s is None:
            drained_s = time.time() - since
        if pending == 0 and time.time() - since >= settle_s:
            break
        time.sleep(DRAIN_POLL_S)
        pending = asyncio.run(_pending_deliveries(dsn))
    return at_end, pending, drained_s if drained_s is not None else time.time() - since


WEBHOOK_ROUNDS = 2  # off, on, off, on: each a quarter of the measured seconds
# After each window, before its CPU is read and the endpoint switched: wrk stops with up
# to one request per connection still in the gateway, which commits it all the same
# (a window's tail). Switched at once, an on-window's tail was written with deliveries,
# then canceled by the disable and sent in the next off-window (146 of one run's 26,464
# deliveries), and an off-window's tail could be written with the endpoint enabled. Far
# longer than the tail (the windows' p99 is under 0.1 s).
SETTLE_S = 0.5


CpuReading = dict[str, dict[int, tuple[int, int]]]


def _cpu_s(processes) -> CpuReading:
    """CPU ticks so far of each process ``processes()`` names, by its group:
    {group: {pid: (start time, ticks)}}."""
    from benchmarks.anatomy import read_pid_cpu

    taken: CpuReading = {}
    for group, pids in processes().items():
        taken[group] = {}
        for pid in pids:
            cpu = read_pid_cpu(pid)
            if cpu is not None:
                taken[group][pid] = (cpu.starttime, cpu.ticks)
    return taken


def _cpu_between(before: CpuReading, after: CpuReading) -> dict[str, float]:
    """CPU seconds each group's processes spent between two ``_cpu_s`` readings (one
    started in between counts from zero)."""
    from benchmarks.anatomy import CLOCK_TICKS_PER_S

    spent = {}
    for group, pids in after.items():
        ticks = 0
        for pid, (start, end) in pids.items():
            earlier = before.get(group, {}).get(pid)
            ticks += end - (earlier[1] if earlier and earlier[0] == start else 0)
        spent[group] = ticks / CLOCK_TICKS_PER_S
    return spent


def _add(total: dict[str, float], more: dict[str, float]) -> None:
    for group, seconds in more.items():
        total[group] = total.get(group, 0.0) + seconds


def measure_with_webhooks(
    target,
    webhooks,
    seconds: float = SECONDS,
    warmup_s: float = WARMUP_SECONDS,
    rounds: int = WEBHOOK_ROUNDS,
) -> tuple[WrkResult, WrkResult, dict]:
    """The authorization on one server with its endpoint (``webhooks``: a
    benchmarks.targets.Webhooks) disabled and enabled in turn, ``rounds`` times, each window
    ``seconds / (2 * rounds)``: (off, on, figures). A disabled endpoint is no endpoint to
    the outbox (no delivery rows), so off is the same gateway with no subscriber, and
    alternating on one server compares the two far better than two servers measured one
    after the other on a machine whose load drifts. Each on-window's deliveries drain
    before the next off-window starts, and every window's tail settles (SETTLE_S) before its
    CPU is read, so neither is charged with the other's work. The
    figures are those of the on-windows: deliveries pending when each ended (the most) and
    the longest drain, the commit-to-delivery latency of the events written in them, and the
    CPU per authorization of both kinds of window (``webhooks.processes``: the gateway,
    PostgreSQL and the receiver), an on-window's counted until its deliveries drained: a
    backlog sent after the window is charged to it, which its rate alone would not show."""
    window_s = seconds / (2 * rounds)
    if warmup_s > 0:
        run_wrk(target.url, target.secret_key, warmup_s)
    off: list[WrkResult] = []
    on: list[WrkResult] = []
    created: dict[str, float] = {}
    pending_at_end = pending_left = 0
    drain_s = 0.0
    cpu_off_s: dict[str, float] = {}
    cpu_on_s: dict[str, float] = {}
    for _ in range(rounds):
        set_endpoint_status(target, webhooks.endpoint_id, "disabled")
        before = _cpu_s(webhooks.processes)
        off.append(run_wrk(target.url, target.secret_key, window_s))
        _drain(webhooks.dsn, time.time(), SETTLE_S)  # none pending: the same settle and polls
        _add(cpu_off_s, _cpu_between(before, _cpu_s(webhooks.processes)))
        set_endpoint_status(target, webhooks.endpoint_id, "enabled")
        window_start = time.time()
        before = _cpu_s(webhooks.processes)
        on.append(run_wrk(target.url, target.secret_key, window_s))
        window_end = time.time()
        at_end, left, waited = _drain(webhooks.dsn, window_end, SETTLE_S)
        _add(cpu_on_s, _cpu_between(before, _cpu_s(webhooks.processes)))
        pending_at_end, pending_left = max(pending_at_end, at_end), max(pending_left, left)
        drain_s = max(drain_s, waited)
        created.update(asyncio.run(_events_created(webhooks.dsn, window_start, window_end)))
    latencies, undelivered = delivery_latencies(created, receiver_arrivals(webhooks.receiver_url))
    off_run, on_run = combined(off), combined(on)
    off_by_group = {g: s * 1e6 / off_run.ok if off_run.ok else 0.0 for g, s in cpu_off_s.items()}
    on_by_group = {g: s * 1e6 / on_run.ok if on_run.ok else 0.0 for g, s in cpu_on_s.items()}
    cpu_off_us, cpu_on_us = sum(off_by_group.values()), sum(on_by_group.values())
    return (
        off_run,
        on_run,
        {
            "cpu_us_per_authorization_off": round(cpu_off_us, 1),
            "cpu_us_per_authorization_on": round(cpu_on_us, 1),
            # What the rate would be if CPU binds (it does here): off's CPU per
            # authorization over on's, the backlog's drain included.
            "cpu_ratio": round(cpu_off_us / cpu_on_us, 3) if cpu_on_us else None,
            # The same, by process group: where the webhooks' CPU goes.
            "cpu_us_per_authorization_by_group": {
                group: {
                    "off": round(off_by_group.get(group, 0.0), 1),
                    "on": round(on_by_group[group], 1),
                }
                for group in on_by_group
            },
            "latency_source": "receiver arrival - events.created_at",
            "windows": rounds,
            "events": len(created),
            "delivered": len(latencies),
            "undelivered": undelivered,
            "p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "max_ms": round((latencies[-1] if latencies else 0.0) * 1000, 1),
            "pending_at_end": pending_at_end,
            "pending_left": pending_left,
            "drain_s": round(drain_s, 2),
        },
    )


def _by_group(figures: dict) -> str:
    """The CPU per authorization a delivery adds, by process group: "gateway +120 us, ..."."""
    groups = figures.get("cpu_us_per_authorization_by_group", {})
    return ", ".join(f"{g} {v['on'] - v['off']:+.0f} us" for g, v in groups.items())


def describe_webhooks(figures: dict) -> str:
    return (
        f"  webhooks: CPU per authorization {figures['cpu_us_per_authorization_off']:.0f} us "
        f"without, {figures['cpu_us_per_authorization_on']:.0f} us with deliveries (drain "
        f"included): {figures['cpu_ratio']}x ({_by_group(figures)}); "
        f"{figures['delivered']} of {figures['events']} window events delivered, "
        f"commit-to-delivery p50 {figures['p50_ms']:.1f} p99 {figures['p99_ms']:.1f} "
        f"max {figures['max_ms']:.1f} ms; {figures['pending_at_end']} pending at the end, "
        f"drained in {figures['drain_s']:.1f} s"
        + (f" ({figures['pending_left']} STILL PENDING)" if figures["pending_left"] else "")
    )


def describe(name: str, result: WrkResult) -> str:
    return (
        f"  closed loop {name:14} {result.rps:8.0f}/s p50 {result.latency_ms['50']:6.2f} "
        f"p99 {result.latency_ms['99']:7.2f} ms errors {result.errors}"
        + (f" {result.statuses}" if result.non2xx else "")
        + (f" REPLAYED {result.replayed}" if result.replayed else "")
    )
