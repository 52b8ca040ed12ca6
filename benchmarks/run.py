"""The benchmark suite, one command:

    python -m benchmarks.run            # full: ~6 minutes on 2 cores
    python -m benchmarks.run --quick    # smoke: ~2 minutes, same shape, shorter steps
    python -m benchmarks.run --closed-loop-only   # wrk ceiling only: ~1 minute

Targets, all on this machine in one run so their ratios survive its noise:
  framework      a trivial aiohttp handler, same workers (the ceiling)
  kassa          Kassa with group commit (the default)
  kassa-nobatch  Kassa with KASSA_GROUP_COMMIT=0 (one transaction per write)
Open loop (benchmarks/loadgen.py, SLO headline) and closed loop (wrk -t1 -c64, the
ceiling of framework and kassa, benchmarks/closedloop.py), reported side by side. The
closed loop also measures kassa-webhooks (Kassa with one endpoint subscribed to * at a
receiver on loopback) right after kassa: its cost, and the commit-to-delivery latency;
and kassa-stripe (the same authorization as the SDK sends it to /stripe/v1, alternating
with the native one on its own server).
Writes benchmarks/results/<timestamp>/{results.json,summary.md,latency.png}.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import closedloop, report, targets
from benchmarks.loadgen import StepResult, run_step
from benchmarks.scenarios import SCENARIOS

SLO_P99_MS = 50.0
SWEEP_FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 1.2)
PROBE_START_RPS = 400
PROBE_STEPS_MAX = 7
REQUESTS_PER_OPERATION = {"checkout": 2, "refunds": 2}
CLOSED_LOOP_TARGETS = (
    "framework",
    "kassa",
    "kassa-stripe",
    "kassa-webhooks",
    "kassa-nobatch",
    "framework-1w",
    "kassa-1w",
)


def probe_capacity(target, scenario: str, seconds: float, processes: int) -> float:
    """Double the offered rate until the target (or the generator) stops keeping up."""
    rate, best = PROBE_START_RPS, 0.0
    for _ in range(PROBE_STEPS_MAX):
        step = run_step(target, scenario, rate, seconds, warmup_s=0.5, processes=processes)
        best = max(best, step.achieved_rps)
        print(
            f"  probe {target.name:14} offered {rate:7.0f}/s achieved "
            f"{step.achieved_rps:7.0f}/s p99 {step.percentile_ms(99):8.1f} ms",
            flush=True,
        )
        if (
            step.achieved_rps < 0.9 * rate
            or step.percentile_ms(99) > 500
            or step.errors
            or not step.valid
        ):
            break
        rate *= 2
    return best


def sweep(target, scenario: str, capacity: float, args) -> list[StepResult]:
    steps = []
    for fraction in SWEEP_FRACTIONS:
        rate = max(10.0, capacity * fraction)
        step = run_step(
            target,
            scenario,
            rate,
            args.step_seconds,
            args.warmup_seconds,
            processes=args.generators,
        )
        steps.append(step)
        print(
            f"  sweep {target.name:14} {fraction:4.0%} offered {rate:7.0f}/s achieved "
            f"{step.achieved_rps:7.0f}/s p50 {step.percentile_ms(50):6.1f} "
            f"p99 {step.percentile_ms(99):7.1f} p99.9 {step.percentile_ms(99.9):7.1f} ms "
            f"errors {step.errors}{'' if step.valid else '  INVALID (generator behind)'}",
            flush=True,
        )
    return steps


def headline(steps: list[StepResult]) -> float:
    """Requests per second at p99 <= 50 ms with zero errors (best valid step)."""
    good = [
        s.achieved_rps
        for s in steps
        if s.valid and s.errors == 0 and s.percentile_ms(99) <= SLO_P99_MS
    ]
    return max(good, default=0.0)


def measure_target(name: str, start, args) -> dict:
    print(f"{name}:", flush=True)
    with start() as target:
        capacity = probe_capacity(target, "authorize", args.probe_seconds, args.generators)
        steps = sweep(target, "authorize", capacity, args)
        result = {
            "capacity_rps": round(capacity, 1),
            "steps": [s.as_dict() for s in steps],
            "slo_rps": round(headline(steps), 1),
        }
        if name == "kassa":
            # Half the best rate it served validly, per operation (a checkout is 2 requests).
            served = max(
                [s.achieved_rps for s in steps if s.valid and not s.errors], default=capacity
            )
            result["scenarios"] = {}
            for scenario in args.scenarios:
                rate = max(10.0, served * 0.5 / REQUESTS_PER_OPERATION.get(scenario, 1))
                step = run_step(
                    target,
                    scenario,
                    rate,
                    args.step_seconds,
                    args.warmup_seconds,
                    processes=args.generators,
                )
                result["scenarios"][scenario] = step.as_dict()
                print(
                    f"  scenario {scenario:12} offered {rate:7.0f}/s achieved "
                    f"{step.achieved_rps:7.0f}/s p99 {step.percentile_ms(99):7.1f} ms "
                    f"errors {step.errors} {step.error_kinds or ''}",
                    flush=True,
                )
    return result


def closed_loop(workdir: Path, args) -> dict:
    """framework and kassa, each fresh, under the same wrk load, one after the other: at
    the run's worker count, Kassa with a webhook endpoint (right after kassa, so the two
    share the machine's mood), Kassa with group commit off, and both again at one worker
    (scaling) unless the run has one worker or ``--closed-loop-no-scaling``."""
    print(
        f"closed loop ({closedloop.THREADS} wrk thread, {closedloop.CONNECTIONS} "
        f"connections, {args.closed_loop_seconds:g} s after {closedloop.WARMUP_SECONDS:g} s "
        f"warm-up):",
        flush=True,
    )
    workers = args.workers

    def kassa(name: str, count: int, group_commit: bool = True):
        return lambda: targets.kassa(name, workdir, count, args.database_url, group_commit)

    starts = {
        "framework": lambda: targets.framework_baseline(workdir, workers),
        "kassa": kassa("kassa-closed", workers),
        # Right after kassa: the same authorization through /stripe/v1 (stripe.lua),
        # alternating with the native one on its own server (measured below).
        "kassa-stripe": kassa("kassa-stripe-closed", workers),
        "kassa-webhooks": None,  # measured in its own way, below
        "kassa-nobatch": kassa("kassa-nobatch-closed", workers, group_commit=False),
    }
    scaling = workers > 1 and not args.closed_loop_no_scaling
    if scaling:
        starts["framework-1w"] = lambda: targets.framework_baseline(workdir, 1)
        starts["kassa-1w"] = kassa("kassa-1w-closed", 1)
    if args.closed_loop_targets:
        starts = {n: s for n, s in starts.items() if n in args.closed_loop_targets}
    measured: dict = {}
    webhooks: dict | None = None
    stripe_native: dict | None = None  # the native runs alternating with kassa-stripe's
    for name, start in starts.items():
        if start is None:
            with targets.kassa_with_webhooks(
                "kassa-webhooks-closed", workdir, workers, args.database_url
            ) as (_, target, hooks):
                webhooks_off, result, webhooks = closedloop.measure_with_webhooks(
                    target, hooks, args.closed_loop_seconds
                )
            print(closedloop.describe("kassa (no sub.)", webhooks_off), flush=True)
            print(closedloop.describe(name, result), flush=True)
            print(closedloop.describe_webhooks(webhooks), flush=True)
            webhooks["off"] = webhooks_off.as_dict()
        elif name == "kassa-stripe":
            with start() as target:
                native, result = closedloop.measure_interleaved(
                    target, closedloop.STRIPE_SCRIPT, args.closed_loop_seconds
                )
            print(closedloop.describe("kassa (alt.)", native), flush=True)
            print(closedloop.describe(name, result), flush=True)
            stripe_native = native.as_dict()
        else:
            with start() as target:
                result = closedloop.measure(target, args.closed_loop_seconds)
            print(closedloop.describe(name, result), flush=True)
        measured[name] = result.as_dict()
    rps = {name: m["rps"] for name, m in measured.items()}

    def ratio(a: str, b: str) -> float | None:
        return round(rps[a] / rps[b], 3) if rps.get(a) and rps.get(b) else None

    return {
        "command": f"wrk -t{closedloop.THREADS} -c{closedloop.CONNECTIONS} "
        f"-d{args.closed_loop_seconds:g}s --latency",
        "seconds": args.closed_loop_seconds,
        "workers": workers,
        "targets": measured,
        "kassa_over_framework": ratio("kassa", "framework"),
        "group_commit_on_over_off": ratio("kassa", "kassa-nobatch"),
        # kassa-webhooks over the same server with its endpoint disabled, alternating.
        "webhooks_over_kassa": (
            round(rps["kassa-webhooks"] / webhooks["off"]["rps"], 3)
            if webhooks and webhooks["off"]["rps"] and rps.get("kassa-webhooks")
            else None
        ),
        # kassa-stripe over the native authorization on the same server, alternating.
        "stripe_over_kassa": (
            round(rps["kassa-stripe"] / stripe_native["rps"], 3)
            if stripe_native and stripe_native["rps"] and rps.get("kassa-stripe")
            else None
        ),
        "stripe_native": stripe_native,
        "webhooks": webhooks,
        "kassa_over_framework_1w": ratio("kassa-1w", "framework-1w") if scaling else None,
        "kassa_scaling": ratio("kassa", "kassa-1w") if scaling else None,
        "framework_scaling": ratio("framework", "framework-1w") if scaling else None,
    }


def core_microbenchmarks(workdir: Path, seconds: float) -> list[dict]:
    out = workdir / "core.json"
    subprocess.run(
        [sys.executable, "benchmarks/core_bench.py", "--seconds", str(seconds), "--json", str(out)],
        cwd=targets.ROOT,
        check=True,
    )
    return json.loads(out.read_text())["rows"]


def environment() -> dict:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
        platform.processor(),
    )
    memory_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=targets.ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        or "unknown"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=targets.ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu,
            "memory_gib": round(memory_kb / 2**20, 1),
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            **{
                p: version(p)
                for p in ("aiohttp", "asyncpg", "uvloop", "Cython", "orjson", "hdrhistogram")
            },
        },
        "commit": commit + ("-dirty" if dirty else ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short steps (~2 minutes)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument("--step-seconds", type=float, help="measured seconds per step")
    parser.add_argument(
        "--scenarios",
        nargs="*",
        default=[s for s in SCENARIOS if s != "authorize"],
        choices=list(SCENARIOS),
        help="extra Kassa scenarios at half the best valid rate",
    )
    parser.add_argument(
        "--database-url",
        help="measure Kassa on this PostgreSQL instead of "
        "the embedded one (its tables are written)",
    )
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument(
        "--closed-loop-only",
        action="store_true",
        help="only the wrk closed-loop ceilings (framework, kassa, kassa with webhooks, "
        "group commit off, 1 worker)",
    )
    parser.add_argument(
        "--closed-loop-no-scaling",
        action="store_true",
        help="skip the closed-loop runs at one worker",
    )
    parser.add_argument(
        "--closed-loop-targets",
        nargs="*",
        choices=CLOSED_LOOP_TARGETS,
        help="only these closed-loop targets (default: all), e.g. kassa kassa-stripe",
    )
    parser.add_argument(
        "--closed-loop-seconds",
        type=float,
        default=closedloop.SECONDS,
        help="measured seconds of each wrk run",
    )
    args = parser.parse_args(argv)
    args.step_seconds = args.step_seconds or (2.0 if args.quick else 5.0)
    args.warmup_seconds = 0.5 if args.quick else 1.0
    args.probe_seconds = 1.5 if args.quick else 2.0
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = args.out or targets.ROOT / "benchmarks" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kassa-bench-") as scratch:
        workdir = Path(scratch)
        results = {
            "started": stamp,
            "quick": args.quick,
            "workers": args.workers,
            "generators": args.generators,
            "step_seconds": args.step_seconds,
            "slo_p99_ms": SLO_P99_MS,
            **environment(),
        }
        closedloop.wrk_executable()  # fail now, not after the open-loop sweeps
        results["closed_loop"] = closed_loop(workdir, args)
        if args.closed_loop_only:
            results["postgres"] = targets.postgres_version(args.database_url, workdir)
            return finish(out, results, started)
        results["core"] = core_microbenchmarks(workdir, 0.2 if args.quick else 0.5)
        results["targets"] = {
            "framework": measure_target(
                "framework", lambda: targets.framework_baseline(workdir, args.workers), args
            ),
            "kassa": measure_target(
                "kassa",
                lambda: targets.kassa("kassa", workdir, args.workers, args.database_url, True),
                args,
            ),
            "kassa-nobatch": measure_target(
                "kassa-nobatch",
                lambda: targets.kassa(
                    "kassa-nobatch", workdir, args.workers, args.database_url, False
                ),
                args,
            ),
        }
        results["postgres"] = targets.postgres_version(args.database_url, workdir)
    return finish(out, results, started)


def finish(out: Path, results: dict, started: float) -> int:
    results["seconds"] = round(time.monotonic() - started, 1)
    report.write(out, results)
    print((out / "summary.md").read_text())
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
