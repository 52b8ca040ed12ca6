"""Where one authorization's cost goes: CPU per process group, PostgreSQL work, worker stages.

    python -m benchmarks.anatomy                 # 10 s of load after a 2 s warm-up
    python -m benchmarks.anatomy --seconds 5 --workers 2 --json out.json
    python -m benchmarks.anatomy --webhooks      # with the kassa-webhooks target's endpoint

Starts ``kassa serve`` (2 workers by default) on a fresh embedded PostgreSQL through
gateway/testing.py's KassaServer with the abuse limits set never to trip (as
benchmarks/targets.py does), warms it up with wrk, then runs
``wrk -t1 -c64 -d<seconds>s`` (closed loop, benchmarks/wrk/authorize.lua: a new
authorization per request) and around that window measures:

CPU by process group, from ``/proc/<pid>/stat`` (utime + stime, clock ticks) of every
process before and after the window: ``workers`` (the supervisor's worker children),
``supervisor`` (``kassa serve`` itself and its multiprocessing resource tracker),
``postgres`` (the postmaster from the data directory's postmaster.pid and all its
children: backends, walwriter, checkpointer, autovacuum...), ``generator`` (wrk, read as a
zombie before it is reaped so none of its CPU is lost), ``profiler`` (py-spy) and
``other``: the rest of the machine's busy time in ``/proc/stat`` (other users of this
shared machine, the kernel's own threads, this script). A process that starts inside the
window counts from zero; one that ends inside it is lost (reported as ``vanished``).
Divided by the authorizations wrk got a 2xx for: CPU microseconds per authorization.

PostgreSQL, from its statistics views before and after (pg_stat_statements is used when
the server has it; pgserver's build does not, so statements are not counted):
transactions (xact_commit), rows inserted/updated/deleted per table
(pg_stat_user_tables), index entries written (estimated: per table, inserts plus non-HOT
updates, times the table's number of indexes from pg_index), WAL records and bytes
(pg_stat_wal). Backends publish their statistics at most once a second and idle ones up
to 10 s later, so each snapshot waits until the figures stop moving (PG_STATS_SETTLE_S)
and per-authorization figures are divided by the payments rows inserted in the same
views, which lag alike.

Stages inside the workers, from py-spy (``py-spy record --nonblocking --format raw`` on
every worker for the window; samples where the thread is idle are not recorded). Each
sampled stack is assigned one stage by ``stage_of``:

1. Walk the stack from the innermost frame outwards. A *library* frame (aiohttp, asyncpg,
   prometheus_client, logging, ...; LIBRARY_STAGES) decides at once: it is work done
   inside that library on the code's behalf. Other library frames (asyncio, datetime,
   the standard library) are skipped.
2. The first *project* frame (gateway/ or core_ext/) decides otherwise, by its source
   line first (LINE_STAGES: the compiled core has no Python frames of its own, so time in
   ``core_ext.validation.validate_payment(...)`` shows as the calling line in
   gateway/payments.py, which names the core module it calls), then by its file and
   function (PROJECT_STAGES). A project frame that matches nothing there is
   ``gateway (other)``: orchestration (gateway/payments.py, ids, cards, ...). Only the
   first project frame can decide, because the outer ones (middlewares, route handlers,
   PaymentService.authorize) are on the stack of everything below them.
3. A stack with neither is ``event loop/other``. The entry frames at the bottom of every
   stack (ENTRY_FRAMES: aiohttp's run_app, gateway/server.py's run_worker) never decide,
   so a stack that holds only them (uvloop's C loop polling, reading and writing sockets,
   dispatching callbacks) lands here too.

A stage's microseconds per authorization are its share of the busy samples times the
workers' CPU per authorization. Limits: sampling at PROFILE_RATE_HZ per worker gives a
few thousand samples in 10 s, so a stage under ~1% is noise; C code called from Python
(orjson, asyncpg's protocol, aiohttp's parser, uvloop) is charged to the calling Python
line; py-spy's own reads cost the profiler's CPU, not the workers', but compete for the
same 2 cores; on a shared machine ``other`` and the throughput move with the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import linecache
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
DEFAULT_SECONDS = 10.0
WARMUP_SECONDS = 2.0
PROFILE_RATE_HZ = 100  # py-spy samples per second per worker
PROFILER_SLACK_S = 20.0  # py-spy ends (and writes its file) at most this after wrk
PG_STATS_SETTLE_S = 12.0  # idle backends publish statistics within 10 s
PG_STATS_POLL_S = 1.0

# --- /proc parsing ------------------------------------------------------------------------


class ProcCpu(NamedTuple):
    utime: int  # clock ticks
    stime: int
    starttime: int  # clock ticks after boot: with the pid, tells a reused pid apart

    @property
    def ticks(self) -> int:
        return self.utime + self.stime


def parse_pid_stat(text: str) -> ProcCpu:
    """``/proc/<pid>/stat``: utime, stime and starttime (fields 14, 15, 22). The command
    name (field 2) is in parentheses and may itself contain spaces and parentheses, so
    the fields are counted from the last ')'."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3].
    return ProcCpu(int(rest[11]), int(rest[12]), int(rest[19]))


MACHINE_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str) -> dict[str, int]:
    """The machine's total ``cpu`` line of ``/proc/stat`` (clock ticks since boot). guest
    and guest_nice are already included in user and nice, so they are not added again."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            padded = values[: len(MACHINE_FIELDS)] + [0] * (len(MACHINE_FIELDS) - len(values))
            return dict(zip(MACHINE_FIELDS, padded, strict=True))
    raise ValueError("no 'cpu' line in /proc/stat")


def machine_shares(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """user (with nice), sys (with irq and softirq), iowait, idle, steal: % of all ticks."""
    delta = {k: after[k] - before[k] for k in MACHINE_FIELDS}
    total = sum(delta.values()) or 1
    groups = {
        "user": delta["user"] + delta["nice"],
        "sys": delta["system"] + delta["irq"] + delta["softirq"],
        "iowait": delta["iowait"],
        "idle": delta["idle"],
        "steal": delta["steal"],
    }
    return {k: round(100 * v / total, 1) for k, v in groups.items()}


def machine_busy_ticks(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after[k] - before[k] for k in MACHINE_FIELDS if k not in ("idle", "iowait"))


def read_pid_cpu(pid: int) -> ProcCpu | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_pid_stat(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


# --- py-spy stacks -> stages -----------------------------------------------------------


class Frame(NamedTuple):
    function: str
    file: str  # as py-spy prints it: relative to its sys.path entry ("gateway/payments.py")
    line: int  # 0 when unknown (native frames)


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "", 0)
    return Frame(match["function"], match["file"], int(match["line"] or 0))


def parse_pyspy_raw(text: str) -> list[tuple[list[Frame], int]]:
    """py-spy's ``--format raw`` (collapsed stacks): one ``outer;...;inner COUNT`` a line,
    each frame ``function (file:line)``. Returns (frames innermost first, count)."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [parse_frame(f) for f in stack.split(";")]
        stacks.append((frames[::-1], int(count)))
    return stacks


STAGES = (
    "HTTP",
    "auth",
    "validation",
    "idempotency",
    "risk",
    "intent write",
    "processor",
    "settlement write",
    "ledger",
    "rendering",
    "metrics",
    "access log",
    "asyncpg",
    "webhooks",
    "gateway (other)",
    "event loop/other",
)
# The deliverer runs in tasks of its own: any stack with one of its frames is its work,
# whatever library it is in at the moment (its aiohttp client, asyncpg), so it is not
# confused with the requests' HTTP and asyncpg (``--webhooks``).
DELIVERER_PREFIX = "gateway/webhooks/"

# Library code, by the start of the file path py-spy prints (rule 1): the first such
# frame from the inside decides.
LIBRARY_STAGES = (
    ("aiohttp/", "HTTP"),
    ("multidict/", "HTTP"),
    ("yarl/", "HTTP"),
    ("asyncpg/", "asyncpg"),
    ("prometheus_client/", "metrics"),
    ("logging/", "access log"),
    ("orjson", "rendering"),
)
# The project frame's own source line (rule 2, first): calls into the compiled core (no
# frames of their own) and the few lines that do another stage's work inline.
LINE_STAGES = (
    (re.compile(r"core_ext\.validation\."), "validation"),
    (re.compile(r"core_ext\.idempotency\."), "idempotency"),
    (re.compile(r"core_ext\.risk\.|self\._velocity\."), "risk"),
    (re.compile(r"core_ext\.ledger\."), "ledger"),
    (re.compile(r"\baccess_log\."), "access log"),
    (re.compile(r"\bmetrics\.|prometheus"), "metrics"),
    (re.compile(r"orjson\.dumps"), "rendering"),
)
# The project frame's file, and optionally its function (rule 2, then): the first match.
PROJECT_STAGES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("gateway/http/middleware.py", ("auth_middleware", "_bearer"), "auth"),
    (
        "gateway/http/middleware.py",
        (
            "observability_middleware",
            "_record",
            "_count_idempotency",
            "request_id_from",
            "route_of",
        ),
        "metrics",
    ),
    ("gateway/merchants.py", (), "auth"),
    ("gateway/store/merchants.py", (), "auth"),
    ("core_ext/pure/validation.py", (), "validation"),
    ("gateway/idempotency.py", (), "idempotency"),
    ("gateway/store/idempotency.py", (), "idempotency"),
    ("core_ext/pure/idempotency.py", (), "idempotency"),
    ("core_ext/pure/risk.py", (), "risk"),
    (
        "gateway/store/authorizations.py",
        ("write_settlements", "_complete_keys"),
        "settlement write",
    ),
    ("gateway/store/authorizations.py", (), "intent write"),
    # The group-commit batcher runs both pipelines; it is charged to the intent write.
    ("gateway/store/pipeline.py", (), "intent write"),
    ("gateway/processors/", (), "processor"),
    ("gateway/store/ledger.py", (), "ledger"),
    ("core_ext/pure/ledger.py", (), "ledger"),
    ("gateway/http/render.py", (), "rendering"),
    ("gateway/http/answers.py", (), "rendering"),
    ("gateway/metrics.py", (), "metrics"),
    ("gateway/observability.py", (), "metrics"),
    ("gateway/logs.py", (), "access log"),
    ("gateway/http/routes.py", (), "HTTP"),
    ("gateway/http/middleware.py", (), "HTTP"),
)
PROJECT_PREFIXES = ("gateway/", "core_ext/")
# Frames at the bottom of every worker's stack: they decide nothing. A stack that has only
# these is the event loop's own (uvloop, in C: polling, socket reads and writes, callbacks).
ENTRY_FRAMES = {("aiohttp/web.py", "run_app"), ("gateway/server.py", "run_worker")}


def source_line(frame: Frame) -> str:
    """The text of a project frame's line in this checkout ("" when unknown)."""
    if not frame.line:
        return ""
    return linecache.getline(str(ROOT / frame.file), frame.line)


def stage_of(frames: Iterable[Frame], line_text: Callable[[Frame], str] = source_line) -> str:
    """The stage of one sampled stack, ``frames`` innermost first (see the module doc)."""
    frames = list(frames)
    if any(frame.file.startswith(DELIVERER_PREFIX) for frame in frames):
        return "webhooks"
    for frame in frames:
        path = frame.file
        if (path, frame.function) in ENTRY_FRAMES:
            continue
        for prefix, stage in LIBRARY_STAGES:
            if path.startswith(prefix):
                return stage
        if not path.startswith(PROJECT_PREFIXES):
            continue  # the standard library, asyncio, uvloop
        text = line_text(frame)
        for pattern, stage in LINE_STAGES:
            if pattern.search(text):
                return stage
        for file, functions, stage in PROJECT_STAGES:
            if path.startswith(file) and (
                not functions or frame.function.split(".")[-1] in functions
            ):
                return stage
        return "gateway (other)"
    return "event loop/other"


def stage_samples(
    stacks: list[tuple[list[Frame], int]], line_text: Callable[[Frame], str] = source_line
) -> dict[str, int]:
    counts = dict.fromkeys(STAGES, 0)
    for frames, count in stacks:
        counts[stage_of(frames, line_text)] += count
    return counts


def top_frames(
    stacks: list[tuple[list[Frame], int]],
    stage: str,
    limit: int = 5,
    line_text: Callable[[Frame], str] = source_line,
) -> list[tuple[str, int]]:
    """The innermost frames that carry most of a stage's samples (for digging in)."""
    counter: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if frames and stage_of(frames, line_text) == stage:
            inner = frames[0]
            counter[f"{inner.function} ({inner.file}:{inner.line})"] += count
    return counter.most_common(limit)


# --- processes ------------------------------------------------------------------------


# PostgreSQL's processes by whom they work for: the gateway's pool, the sandbox's books
# (its own pool, application_name kassa-sandbox: a real processor's cost would be on its
# own machines) and the server itself (postmaster, WAL writer, checkpointer, autovacuum).
POSTGRES_ROLES = {"kassa": "pg gateway", "kassa-sandbox": "pg sandbox"}
POSTGRES_SERVER = "pg server"
POSTGRES_GROUPS = (*POSTGRES_ROLES.values(), POSTGRES_SERVER)


def postgres_group(application_name: str | None) -> str:
    return POSTGRES_ROLES.get(application_name or "", POSTGRES_SERVER)


def process_groups(
    supervisor_pid: int,
    worker_pids: set[int],
    postmaster_pid: int,
    extra: dict[int, str],
    backends: dict[int, str] | None = None,
) -> dict[int, str]:
    """Each measured pid's group; ``backends`` maps PostgreSQL backend pids to their
    application_name (pg_stat_activity), which splits the postgres processes."""
    import psutil

    groups: dict[int, str] = {}
    try:
        for child in psutil.Process(supervisor_pid).children(recursive=True):
            groups[child.pid] = "workers" if child.pid in worker_pids else "supervisor"
        groups[supervisor_pid] = "supervisor"
    except psutil.NoSuchProcess:
        pass
    try:
        for child in psutil.Process(postmaster_pid).children(recursive=True):
            groups[child.pid] = postgres_group((backends or {}).get(child.pid))
        groups[postmaster_pid] = POSTGRES_SERVER
    except psutil.NoSuchProcess:
        pass
    groups.update(extra)
    return groups


def snapshot(groups: dict[int, str]) -> dict[int, tuple[str, ProcCpu]]:
    taken = {}
    for pid, group in groups.items():
        cpu = read_pid_cpu(pid)
        if cpu is not None:
            taken[pid] = (group, cpu)
    return taken


def group_ticks(
    before: dict[int, tuple[str, ProcCpu]], after: dict[int, tuple[str, ProcCpu]]
) -> tuple[dict[str, int], dict, int]:
    """Ticks per group in the window, processes per group, processes that vanished."""
    ticks: dict[str, int] = collections.Counter()
    members: dict[str, int] = collections.Counter()
    for pid, (group, end) in after.items():
        start = before.get(pid)
        same = start is not None and start[1].starttime == end.starttime
        ticks[group] += end.ticks - (start[1].ticks if same else 0)
        members[group] += 1
    vanished = sum(1 for pid in before if pid not in after)
    return dict(ticks), dict(members), vanished


def worker_pids_from_log(log_text: str) -> set[int]:
    """The supervisor's "serving on ... (pids 1, 2)" line (printed at any log level)."""
    found = re.findall(r"with \d+ worker\(s\) \(pids ([\d, ]+)\)", log_text)
    return {int(p) for p in found[-1].split(",")} if found else set()


def wait_unreaped(process: subprocess.Popen, timeout_s: float) -> None:
    """Wait for ``process`` to exit without reaping it: its /proc/<pid>/stat (a zombie's)
    still holds all its CPU time until Popen.wait() reaps it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            return
        time.sleep(0.05)
    process.kill()


# --- PostgreSQL statistics ----------------------------------------------------------------


PG_BACKENDS_SQL = "SELECT pid, application_name FROM pg_stat_activity WHERE pid IS NOT NULL"
PG_DATABASE_SQL = """
SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted
FROM pg_stat_database WHERE datname = current_database()"""
PG_TABLES_SQL = """
SELECT t.relname, t.n_tup_ins, t.n_tup_upd, t.n_tup_hot_upd, t.n_tup_del,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = t.relid) AS indexes
FROM pg_stat_user_tables t"""
PG_WAL_SQL = "SELECT wal_records, wal_bytes FROM pg_stat_wal"
PG_STATEMENTS_SQL = "SELECT sum(calls)::bigint FROM pg_stat_statements"
PAYMENTS_TABLE = "payments"


async def _pg_read(dsn: str) -> dict:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        database = dict(await conn.fetchrow(PG_DATABASE_SQL))
        tables = {r["relname"]: dict(r) for r in await conn.fetch(PG_TABLES_SQL)}
        wal = dict(await conn.fetchrow(PG_WAL_SQL))
        statements = None
        if await conn.fetchval(
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
        ):
            statements = await conn.fetchval(PG_STATEMENTS_SQL)
        return {"database": database, "tables": tables, "wal": wal, "statements": statements}
    finally:
        await conn.close()


def pg_backends(dsn: str) -> dict[int, str]:
    """Backend pid -> application_name, read now (the pools are open and warm)."""
    import asyncpg

    async def read() -> dict[int, str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(PG_BACKENDS_SQL)
        finally:
            await conn.close()
        return {row["pid"]: row["application_name"] for row in rows}

    return asyncio.run(read())


def pg_settled(dsn: str, settle_s: float = PG_STATS_SETTLE_S) -> dict:
    """The statistics once they stop moving (two equal reads), or after ``settle_s``."""
    deadline = time.monotonic() + settle_s
    previous = asyncio.run(_pg_read(dsn))
    while time.monotonic() < deadline:
        time.sleep(PG_STATS_POLL_S)
        current = asyncio.run(_pg_read(dsn))
        same = (
            current["database"] == previous["database"] and current["tables"] == previous["tables"]
        )
        previous = current
        if same:
            break
    return previous


def pg_per_authorization(before: dict, after: dict) -> dict:
    def delta(a: dict, b: dict, key: str) -> int:
        return int(b.get(key) or 0) - int(a.get(key) or 0)

    tables = {}
    for name, end in after["tables"].items():
        start = before["tables"].get(name, {})
        inserted, updated = delta(start, end, "n_tup_ins"), delta(start, end, "n_tup_upd")
        hot, deleted = delta(start, end, "n_tup_hot_upd"), delta(start, end, "n_tup_del")
        if inserted or updated or deleted:
            tables[name] = {
                "inserted": inserted,
                "updated": updated,
                "hot_updated": hot,
                "deleted": deleted,
                "indexes": int(end["indexes"]),
                # every index gets an entry per insert and per non-HOT update
                "index_entries": (inserted + updated - hot) * int(end["indexes"]),
            }
    payments = tables.get(PAYMENTS_TABLE, {}).get("inserted", 0)
    per = (lambda n: round(n / payments, 3)) if payments else (lambda n: None)
    db_before, db_after = before["database"], after["database"]
    statements = (
        None
        if after["statements"] is None or before["statements"] is None
        else after["statements"] - before["statements"]
    )
    return {
        "payments_inserted": payments,
        "per_authorization": {
            "commits": per(delta(db_before, db_after, "xact_commit")),
            "rollbacks": per(delta(db_before, db_after, "xact_rollback")),
            "rows_inserted": per(sum(t["inserted"] for t in tables.values())),
            "rows_updated": per(sum(t["updated"] for t in tables.values())),
            "rows_deleted": per(sum(t["deleted"] for t in tables.values())),
            "index_entries_estimated": per(sum(t["index_entries"] for t in tables.values())),
            "wal_records": per(delta(before["wal"], after["wal"], "wal_records")),
            "wal_bytes": per(delta(before["wal"], after["wal"], "wal_bytes")),
            "statements": None if statements is None else per(statements),
        },
        "tables_per_authorization": {
            name: {k: per(v) if k != "indexes" else v for k, v in t.items()}
            for name, t in sorted(tables.items())
        },
        "statements_source": (
            "pg_stat_statements"
            if statements is not None
            else "unavailable: pg_stat_statements is not in this server's build"
        ),
    }


# --- the run ------------------------------------------------------------------------------


def py_spy_executable() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found:
        return found
    done = subprocess.run(
        [str(ROOT / "scripts" / "install-bench-tools")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError(
            f"py-spy is needed for the stages (or pass --no-profile): {done.stderr.strip()}"
        )
    return found


@contextlib.contextmanager
def _kassa(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[Any, Any, int | None]]:
    """The gateway under load, and with ``--webhooks`` the pid of the receiver its one
    endpoint (subscribed to ``*``) posts to: that receiver's CPU shares the machine."""
    from benchmarks import targets

    if args.webhooks:
        with targets.kassa_with_webhooks("kassa", workdir, args.workers, None) as (
            server,
            target,
            hooks,
        ):
            yield server, target, hooks.receiver_pid
    else:
        with targets.kassa_server("kassa", workdir, args.workers, None, True) as (server, target):
            yield server, target, None


def run(args: argparse.Namespace) -> dict:
    from benchmarks import closedloop

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
        warnings.simplefilter("ignore")
        from pgserver.utils import PostmasterInfo

    seconds = args.seconds
    with tempfile.TemporaryDirectory(prefix="kassa-anatomy-") as scratch:
        workdir = Path(scratch)
        closedloop.wrk_executable()  # fail before starting anything if wrk is missing
        spy = None if args.no_profile else py_spy_executable()
        with _kassa(args, workdir) as (server, target, receiver_pid):
            workers = worker_pids_from_log(server.logs())
            if len(workers) != args.workers:
                raise RuntimeError(f"expected {args.workers} worker pids in {server.log_path}")
            info = PostmasterInfo.read_from_pgdata(server.data_dir / "postgres")
            dsn = info.get_uri()
            print(f"warm-up {args.warmup:g} s ...", flush=True)
            closedloop.run_wrk(target.url, target.secret_key, args.warmup)
            pg_before = pg_settled(dsn)

            command = closedloop.wrk_command(target.url, target.secret_key, seconds)
            backends = pg_backends(dsn)
            receiver = {receiver_pid: "receiver"} if receiver_pid else {}
            groups = process_groups(server.process.pid, workers, info.pid, receiver, backends)
            before = snapshot(groups)
            machine_before = parse_proc_stat(Path("/proc/stat").read_text())
            started = time.monotonic()
            wrk = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            spies = []
            for pid in sorted(workers) if spy else ():
                out = workdir / f"profile-{pid}.txt"
                spies.append(
                    (
                        pid,
                        out,
                        subprocess.Popen(
                            [
                                spy,
                                "record",
                                "--nonblocking",
                                "--format",
                                "raw",
                                "-r",
                                str(PROFILE_RATE_HZ),
                                "-d",
                                str(max(1, math.ceil(seconds))),
                                "-o",
                                str(out),
                                "--pid",
                                str(pid),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            text=True,
                        ),
                    )
                )
            # Started inside the window: absent from `before`, so counted from zero.
            extra = {wrk.pid: "generator", **{p.pid: "profiler" for _, _, p in spies}}
            wait_unreaped(wrk, seconds + closedloop.WRK_SLACK_S)
            # The window ends with the load: the same processes, plus any that started
            # inside it (new backends); py-spy (still writing its file) as it is now.
            backends.update(pg_backends(dsn))  # any backend a pool opened in the window
            after = snapshot(
                {
                    **process_groups(server.process.pid, workers, info.pid, receiver, backends),
                    **extra,
                }
            )
            machine_after = parse_proc_stat(Path("/proc/stat").read_text())
            window_s = time.monotonic() - started
            stdout, stderr = wrk.communicate()
            spy_errors = {pid: p.communicate(timeout=PROFILER_SLACK_S)[1] for pid, _, p in spies}
            if wrk.returncode != 0:
                raise RuntimeError(f"wrk exited {wrk.returncode}: {stderr.strip()}")
            load = closedloop.parse_wrk_output(stdout)
            pg_after = pg_settled(dsn)
            profiles = {}
            for pid, out, p in spies:
                if p.returncode != 0 or not out.exists():
                    raise RuntimeError(
                        f"py-spy on worker {pid} failed ({p.returncode}): {spy_errors[pid].strip()}"
                    )
                profiles[pid] = out.read_text()
                if args.out_dir:
                    shutil.copy(out, args.out_dir / out.name)
    return summarize(
        args,
        command,
        load,
        before,
        after,
        machine_before,
        machine_after,
        window_s,
        pg_before,
        pg_after,
        profiles,
    )


def summarize(
    args,
    command,
    load,
    before,
    after,
    machine_before,
    machine_after,
    window_s,
    pg_before,
    pg_after,
    profiles,
) -> dict:
    ticks, members, vanished = group_ticks(before, after)
    busy = machine_busy_ticks(machine_before, machine_after)
    ticks["other"] = busy - sum(ticks.values())
    authorizations = load.ok
    us_per_tick = 1e6 / CLOCK_TICKS_PER_S

    def per_auth(t: int) -> float | None:
        return round(t * us_per_tick / authorizations, 1) if authorizations else None

    ticks["postgres"] = sum(ticks.get(g, 0) for g in POSTGRES_GROUPS)
    members["postgres"] = sum(members.get(g, 0) for g in POSTGRES_GROUPS)
    order = (
        "workers",
        "supervisor",
        "postgres",
        *POSTGRES_GROUPS,
        "receiver",
        "generator",
        "profiler",
        "other",
    )
    cpu = {
        g: {
            "us_per_authorization": per_auth(ticks.get(g, 0)),
            "cpu_seconds": round(ticks.get(g, 0) / CLOCK_TICKS_PER_S, 2),
            "processes": members.get(g, 0),
        }
        for g in order
    }
    stacks = [s for text in profiles.values() for s in parse_pyspy_raw(text)]
    samples = stage_samples(stacks)
    total_samples = sum(samples.values())
    worker_us = cpu["workers"]["us_per_authorization"] or 0.0
    stages = {
        name: {
            "samples": n,
            "share": round(n / total_samples, 4) if total_samples else 0.0,
            "us_per_authorization": round(worker_us * n / total_samples, 1)
            if total_samples
            else None,
            "top_frames": top_frames(stacks, name),
        }
        for name, n in samples.items()
    }
    return {
        "command": " ".join(
            shlex.quote(a) for a in ["python", "-m", "benchmarks.anatomy", *args.argv]
        ),
        "load_command": " ".join(
            ["wrk", *command[1:6], "-s", str(Path(command[7]).relative_to(ROOT)), "URL -- KEY"]
        ),
        "workers": args.workers,
        "seconds": args.seconds,
        "window_s": round(window_s, 2),
        "clock_ticks_per_s": CLOCK_TICKS_PER_S,
        "load": load.as_dict(),
        "authorizations": authorizations,
        "authorizations_per_s": round(load.rps * authorizations / max(load.requests, 1), 1),
        "machine_percent": machine_shares(machine_before, machine_after),
        "machine_busy_cpu_seconds": round(busy / CLOCK_TICKS_PER_S, 2),
        "cpu": cpu,
        "vanished_processes": vanished,
        "postgres": pg_per_authorization(pg_before, pg_after),
        "stages": stages,
        "profile_samples": total_samples,
    }


def render(result: dict) -> str:
    load, machine = result["load"], result["machine_percent"]
    lines = [
        f"load: {result['load_command']} ({result['workers']} workers, window "
        f"{result['window_s']} s)",
        "",
        f"authorizations/s {result['authorizations_per_s']:.0f}  ({result['authorizations']} "
        f"in {load['seconds']} s; errors {load['errors']}, replayed {load['replayed']}; "
        f"p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, closed loop)",
        *(
            [
                f"WARNING: {load['errors']} requests got no 2xx {load['statuses']}: the figures "
                "below are not those of successful authorizations only"
            ]
            if load["errors"] or load["replayed"]
            else []
        ),
        f"machine: user {machine['user']}%  sys {machine['sys']}%  iowait {machine['iowait']}%"
        f"  idle {machine['idle']}%  steal {machine['steal']}%  "
        f"(busy {result['machine_busy_cpu_seconds']} CPU-s)",
        "",
        "CPU per authorization by process group (/proc/<pid>/stat utime+stime)",
        f"  {'group':12} {'us/auth':>9} {'CPU-s':>7} {'procs':>5}",
    ]
    for group, c in result["cpu"].items():
        us = c["us_per_authorization"]
        name = f"  {group}" if group in POSTGRES_GROUPS else group  # parts of postgres
        lines.append(
            f"  {name:12} {us if us is not None else '-':>9} {c['cpu_seconds']:>7} "
            f"{c['processes'] if group != 'other' else '':>5}"
        )
    if result["vanished_processes"]:
        lines.append(
            f"  ({result['vanished_processes']} measured processes ended inside the "
            "window: their CPU there is lost to 'other')"
        )
    pg = result["postgres"]
    per = pg["per_authorization"]
    lines += [
        "",
        f"PostgreSQL per authorization ({pg['payments_inserted']} payments inserted "
        "in the statistics)",
        *[f"  {k:24} {v if v is not None else '-'}" for k, v in per.items()],
        f"  statements: {pg['statements_source']}",
        f"  {'table':24} {'ins':>6} {'upd':>6} {'hot':>6} {'del':>6} {'idx':>4} "
        f"{'idx entries':>11}",
    ]
    for name, t in pg["tables_per_authorization"].items():
        lines.append(
            f"  {name:24} {t['inserted']:>6} {t['updated']:>6} {t['hot_updated']:>6} "
            f"{t['deleted']:>6} {t['indexes']:>4} {t['index_entries']:>11}"
        )
    if result["profile_samples"]:
        lines += [
            "",
            f"Worker stages (py-spy, {result['profile_samples']} busy samples; "
            "us/auth = share x workers' us/auth)",
            f"  {'stage':20} {'share':>7} {'us/auth':>8}  top frame",
        ]
        for name, s in sorted(result["stages"].items(), key=lambda kv: -kv[1]["samples"]):
            top = s["top_frames"][0][0] if s["top_frames"] else ""
            lines.append(
                f"  {name:20} {s['share']:>7.1%} {s['us_per_authorization']:>8}  {top[:70]}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.anatomy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help="measured seconds of load"
    )
    parser.add_argument(
        "--warmup", type=float, default=WARMUP_SECONDS, help="seconds of load before the window"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy (no stages)")
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="one endpoint subscribed to * at a receiver on loopback (its CPU is 'receiver')",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="write the figures here (default: benchmarks/results/anatomy-<time>/)",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    stamp = time.strftime("%Y%m%dT%H%M%S")
    args.out_dir = None
    if args.json is None:
        args.out_dir = ROOT / "benchmarks" / "results" / f"anatomy-{stamp}"
        args.out_dir.mkdir(parents=True, exist_ok=True)
        args.json = args.out_dir / "anatomy.json"
    print(
        f"$ python -m benchmarks.anatomy {' '.join(shlex.quote(a) for a in argv)}".rstrip(),
        flush=True,
    )
    result = run(args)
    print(render(result), end="")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"figures in {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
