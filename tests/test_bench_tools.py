"""The benchmark tools' parsing: wrk's --latency output, /proc, py-spy stacks -> stages.

Pure functions on captured text: a wrong parse here would print a wrong ceiling or a
wrong anatomy without any error, so each figure the tools report is pinned.
"""

from __future__ import annotations

import time

import pytest

from benchmarks import closedloop
from benchmarks.anatomy import (
    Frame,
    ProcCpu,
    group_ticks,
    machine_busy_ticks,
    machine_shares,
    parse_frame,
    parse_pid_stat,
    parse_proc_stat,
    parse_pyspy_raw,
    stage_of,
    stage_samples,
    worker_pids_from_log,
)
from benchmarks.closedloop import (
    WrkOutputError,
    delivery_latencies,
    parse_wrk_output,
    percentile,
)

# Captured from `wrk -t1 -c8 -d2s --latency -s benchmarks/wrk/baseline.lua` on this machine.
WRK_CLEAN = """\
Running 2s test @ http://127.0.0.1:18091
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.65ms    1.97ms  10.93ms   82.41%
    Req/Sec     3.31k     1.60k    6.53k    75.00%
  Latency Distribution
     50%    1.60ms
     75%    3.93ms
     90%    5.86ms
     99%    8.81ms
  6613 requests in 2.01s, 1.16MB read
Requests/sec:   3297.30
Transfer/sec:    592.48KB
kassa-wrk: answers=6613 non2xx=0 replayed=0 statuses=201:6613
"""

# wrk's shape when some requests failed: other units, socket errors, non-2xx answers.
WRK_ERRORS = """\
Running 10s test @ http://127.0.0.1:40001
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   250.10us  1.20ms   1.02s    99.10%
    Req/Sec    10.12k   800.00    12.00k    70.00%
  Latency Distribution
     50%  250.00us
     75%  410.00us
     90%  800.00us
     99%    1.02s
  101234 requests in 10.00s, 20.10MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 40
Requests/sec:  10123.40
Transfer/sec:      2.01MB
kassa-wrk: answers=101231 non2xx=45 replayed=7 statuses=201:101186,409:5,500:40
"""


def test_wrk_clean_run_figures():
    result = parse_wrk_output(WRK_CLEAN)
    assert result.requests == 6613 and result.seconds == 2.01
    assert result.rps == 3297.30
    assert result.latency_ms == {"50": 1.60, "75": 3.93, "90": 5.86, "99": 8.81}
    assert result.errors == 0 and result.replayed == 0 and result.ok == 6613
    assert result.statuses == {201: 6613}


def test_wrk_errors_units_and_replays():
    result = parse_wrk_output(WRK_ERRORS)
    assert result.latency_ms["50"] == pytest.approx(0.25)
    assert result.latency_ms["99"] == pytest.approx(1020.0)
    # the script's non-2xx (45: it counts the 409s too) outranks wrk's own count (40)
    assert result.non2xx == 45
    assert result.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 2}
    assert result.errors == 50
    assert result.replayed == 7
    assert result.statuses == {201: 101186, 409: 5, 500: 40}
    assert result.as_dict()["p99_ms"] == 1020.0


def test_wrk_output_without_the_script_line_or_latency_is_refused():
    with pytest.raises(WrkOutputError, match="kassa-wrk"):
        parse_wrk_output(WRK_CLEAN.replace("kassa-wrk:", "other:"))
    no_latency = "\n".join(line for line in WRK_CLEAN.splitlines() if "%    " not in line)
    with pytest.raises(WrkOutputError, match="--latency"):
        parse_wrk_output(no_latency)


def test_pid_stat_fields_counted_from_the_last_parenthesis():
    # A command name with spaces and parentheses, as postgres backends set theirs.
    text = (
        "4321 (postgres: x (y) idle) S 4300 4300 4300 0 -1 4194560 900 0 0 0 "
        "123 45 0 0 20 0 1 0 241884 3133440 360 18446744073709551615 0"
    )
    assert parse_pid_stat(text) == ProcCpu(utime=123, stime=45, starttime=241884)
    assert parse_pid_stat(text).ticks == 168


def test_proc_stat_shares_and_busy_ticks():
    before = parse_proc_stat("cpu  1000 0 500 8000 100 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
    after = parse_proc_stat("cpu  1600 100 800 8200 150 20 30 0 40 0\nintr 1\n")
    assert after["user"] == 1600 and after["steal"] == 0
    # deltas: user 600 + nice 100, system 300 + irq 20 + softirq 30, idle 200, iowait 50
    assert machine_shares(before, after) == {
        "user": 53.8,
        "sys": 26.9,
        "iowait": 3.8,
        "idle": 15.4,
        "steal": 0.0,
    }
    assert machine_busy_ticks(before, after) == 1050  # idle and iowait are not busy


def test_group_ticks_counts_new_processes_from_zero_and_tells_reused_pids():
    before = {
        1: ("workers", ProcCpu(100, 10, 5)),
        2: ("postgres", ProcCpu(50, 5, 6)),
        3: ("postgres", ProcCpu(7, 0, 7)),
    }
    after = {
        1: ("workers", ProcCpu(150, 20, 5)),  # +60
        2: ("postgres", ProcCpu(4, 1, 99)),  # pid reused: a new process, 5
        4: ("postgres", ProcCpu(30, 3, 120)),
    }  # started inside the window, 33
    ticks, members, vanished = group_ticks(before, after)
    assert ticks == {"workers": 60, "postgres": 38}
    assert members == {"workers": 1, "postgres": 2}
    assert vanished == 1  # pid 3


def test_worker_pids_from_the_supervisor_line():
    log = (
        '{"level":"warning"}\nkassa: serving on http://127.0.0.1:5 with 2 worker(s) '
        "(pids 4315, 4316)\n"
    )
    assert worker_pids_from_log(log) == {4315, 4316}
    assert worker_pids_from_log("nothing yet") == set()


# Captured from py-spy record --format raw on a Kassa worker (shortened to their frames).
BASE = (
    "<module> (<string>:1);spawn_main (multiprocessing/spawn.py:122);"
    "BaseProcess.run (multiprocessing/process.py:108);run_worker (gateway/server.py:63);"
    "run_app (aiohttp/web.py:502)"
)
HANDLER = (
    BASE + ";RequestHandler._handle_request (aiohttp/web_protocol.py:577);"
    "observability_middleware (gateway/http/middleware.py:83);"
    "error_middleware (gateway/http/middleware.py:136);"
    "auth_middleware (gateway/http/middleware.py:235);"
    "create_payment (gateway/http/routes.py:73)"
)
PAY = HANDLER + ";PaymentService.authorize (gateway/payments.py:{})"
RAW = (
    "\n".join(
        [
            f"{BASE} 73",
            f"{PAY.format(143)} 2",
            f"{PAY.format(142)};now (datetime.py:1) 3",
            f"{PAY.format(144)};IdempotencyStore.prepare (gateway/idempotency.py:33) 4",
            "_Connection._execute (gateway/store/database.py:140);"
            "Connection._execute (asyncpg/connection.py:1904) 5",
            f"{BASE};RequestHandler.data_received (aiohttp/web_protocol.py:446) 6",
            f"{PAY.format(147)};Batcher.submit (gateway/store/pipeline.py:90);"
            "shield (asyncio/tasks.py:891) 7",
            f"{HANDLER};PaymentService._authorize (gateway/payments.py:170);"
            "VelocityGuard.check (core_ext/pure/risk.py:12) 8",
            "Batcher._run (gateway/store/pipeline.py:160);"
            "AuthorizationWrites.write_settlements (gateway/store/authorizations.py:100) 9",
            f"{HANDLER.rsplit(';', 1)[0]};hash_key (gateway/store/merchants.py:21) 10",
            f"{HANDLER};_record (gateway/http/middleware.py:105) 11",
            f"{BASE};Histogram.observe (prometheus_client/metrics.py:679) 12",
        ]
    )
    + "\n"
)
SOURCE = {  # the lines of the project frames above, as in this checkout
    (
        "gateway/payments.py",
        143,
    ): "request = core_ext.validation.validate_payment(body, today.year, today.month)",
    ("gateway/payments.py", 142): "today = datetime.now(timezone.utc)",
    ("gateway/http/middleware.py", 105): 'access_log.info("request", extra={"kassa": {',
}


def line_text(frame: Frame) -> str:
    return SOURCE.get((frame.file, frame.line), "")


def test_parse_frames_python_and_native():
    assert parse_frame("Connection._execute (asyncpg/connection.py:1904)") == Frame(
        "Connection._execute", "asyncpg/connection.py", 1904
    )
    assert parse_frame("0x7fb06604524a (libc.so.6)") == Frame("0x7fb06604524a", "libc.so.6", 0)
    assert (
        parse_frame(
            "_fix_request_current_app.<locals>.impl (aiohttp/web_middlewares.py:117)"
        ).function
        == "_fix_request_current_app.<locals>.impl"
    )
    stacks = parse_pyspy_raw(RAW)
    assert len(stacks) == 12
    frames, count = stacks[0]
    assert count == 73 and frames[0].function == "run_app"  # innermost first


def test_stack_to_stage_mapping():
    stacks = parse_pyspy_raw(RAW)
    stages = [stage_of(frames, line_text) for frames, _ in stacks]
    assert stages == [
        "event loop/other",  # only the entry frames: uvloop's own work
        "validation",  # the compiled core, charged to the line that calls it
        "gateway (other)",  # stdlib inside orchestration: the first project frame decides
        "idempotency",
        "asyncpg",  # the library frame inside the project frame decides
        "HTTP",
        "intent write",  # asyncio's shield skipped: the batcher decides
        "risk",
        "settlement write",
        "auth",  # the innermost project frame, not the outer middleware
        "access log",  # by its source line, inside the metrics middleware
        "metrics",
    ]
    counts = stage_samples(stacks, line_text)
    assert sum(counts.values()) == sum(c for _, c in stacks)
    assert counts["event loop/other"] == 73 and counts["ledger"] == 0


def _step(rps: float, valid: bool = True) -> dict:
    return {
        "offered_rps": rps,
        "achieved_rps": rps,
        "p50_ms": 1.0,
        "p90_ms": 2.0,
        "p99_ms": 3.0,
        "p99.9_ms": 4.0,
        "max_ms": 5.0,
        "errors": 0,
        "valid": valid,
    }


def _closed(rps: float, **extra) -> dict:
    return {
        "rps": rps,
        "p50_ms": 1.5,
        "p99_ms": 9.0,
        "errors": 0,
        "non2xx": 0,
        "replayed": 0,
        "statuses": {"201": 1},
        "socket_errors": {},
        **extra,
    }


def _results(framework_closed: float) -> dict:
    target = {"capacity_rps": 7680.0, "slo_rps": 7680.0, "steps": [_step(7680.0)]}
    return {
        "started": "T",
        "quick": True,
        "commit": "abc",
        "workers": 2,
        "generators": 1,
        "step_seconds": 2.0,
        "slo_p99_ms": 50.0,
        "postgres": "embedded 16",
        "machine": {"cpus": 2, "cpu_model": "x", "memory_gib": 1.0},
        "core": [],
        "targets": {
            "framework": target,
            "kassa": {**target, "slo_rps": 3000.0},
            "kassa-nobatch": {**target, "slo_rps": 900.0},
        },
        "closed_loop": {
            "command": "wrk -t1 -c64 -d10s --latency",
            "seconds": 10,
            "targets": {
                "framework": _closed(framework_closed),
                "kassa": _closed(3419.0, errors=2, non2xx=2, statuses={"201": 9, "503": 2}),
                "kassa-webhooks": _closed(3200.0),
            },
            "kassa_over_framework": round(3419.0 / framework_closed, 3),
            "group_commit_on_over_off": 3.2,
            "webhooks_over_kassa": round(3200.0 / 3419.0, 3),
            "webhooks": {
                "latency_source": "receiver arrival - events.created_at",
                "events": 32000,
                "delivered": 32000,
                "undelivered": 0,
                "p50_ms": 4.2,
                "p99_ms": 38.5,
                "max_ms": 120.0,
                "pending_at_end": 17,
                "pending_left": 0,
                "drain_s": 0.31,
                "off": _closed(3419.0),
            },
            "kassa_scaling": 1.4,
            "framework_scaling": 1.8,
            "kassa_over_framework_1w": 0.12,
        },
    }


def test_summary_flags_a_generator_limited_framework_figure():
    from benchmarks.report import summary

    text = summary(_results(36604.0))
    assert "| framework | 7680 | 7680 | 36604 | 1.5 | 9.0 | 0 |" in text
    assert "Kassa / framework, closed loop: **0.09x**" in text
    assert "Group commit on / off (kassa / kassa-nobatch), closed loop: **3.20x**" in text
    assert "Kassa 1.40x, framework 1.80x; at 1 worker Kassa / framework 0.12x" in text
    assert "is the Python generator's limit, not the framework's" in text
    assert "WARNING: 2 kassa requests got no 2xx" in text
    # when the generator did keep up, no such claim is made
    assert "generator's limit" not in summary(_results(8000.0))


def test_summary_reports_the_webhook_cost_and_commit_to_delivery():
    from benchmarks.report import summary

    results = _results(36604.0)
    text = summary(results)
    assert "| kassa-webhooks | - | - | 3200 | 1.5 | 9.0 | 0 |" in text
    assert (
        "Webhooks on / off (kassa-webhooks: one endpoint subscribed to `*`, receiver on "
        "loopback; 3200/s against 3419/s with it disabled, alternating on one server), "
        "closed loop: **0.94x** (within the 10 % goal)"
    ) in text
    assert (
        "Commit-to-delivery (receiver arrival - events.created_at), the 32000 events of the "
        "kassa-webhooks windows: p50 **4.2 ms**, p99 **38.5 ms**, max 120.0 ms; 17 deliveries "
        "pending when a window ended, drained in 0.3 s"
    ) in text
    assert "backlog, not of steady delivery" not in text

    closed = results["closed_loop"]
    closed["webhooks_over_kassa"] = 0.85
    closed["webhooks"].update(pending_left=40, undelivered=40)
    text = summary(results)
    assert "**0.85x** (NOT within the 10 % goal)" in text
    assert "WARNING: 40 deliveries still pending after the drain timeout, 40 of" in text
    # A run without the webhook target (an older results.json) says nothing of it.
    del closed["webhooks"], closed["webhooks_over_kassa"]
    assert "Webhooks on / off" not in summary(results)


def test_summary_reports_the_stripe_tree_against_native():
    from benchmarks.report import summary

    results = _results(36604.0)
    closed = results["closed_loop"]
    closed["targets"]["kassa-stripe"] = _closed(3000.0)
    closed["stripe_native"] = _closed(3300.0)
    closed["stripe_over_kassa"] = round(3000.0 / 3300.0, 3)
    text = summary(results)
    assert "| kassa-stripe | - | - | 3000 | 1.5 | 9.0 | 0 |" in text
    assert "kassa-stripe server: 3000/s against 3300/s), closed loop: **0.91x** (meets" in text
    closed["stripe_over_kassa"] = 0.7
    assert "**0.70x** (does NOT meet the 0.80x goal)" in summary(results)
    del closed["stripe_over_kassa"]
    assert "Stripe-compatible tree" not in summary(results)


def test_interleaved_runs_combine_into_one_figure():
    from benchmarks.closedloop import WrkResult, combined

    def run(requests: int, p50: float) -> WrkResult:
        return WrkResult(requests, 5.0, requests / 5.0, {"50": p50, "99": 2 * p50}, 1, 0, {200: 1})

    both = combined([run(1000, 1.0), run(2000, 3.0)])
    assert (both.requests, both.seconds, both.rps) == (3000, 10.0, 300.0)
    assert both.latency_ms == {"50": 2.0, "99": 4.0}
    assert (both.non2xx, both.statuses) == (2, {200: 2})


def test_the_stripe_script_is_what_the_kassa_stripe_target_runs():
    from benchmarks.closedloop import STRIPE_SCRIPT, WRK_SCRIPTS, wrk_command

    # wrk takes whole seconds only: half of an odd window rounds up, never "-d1.5s".
    assert "-d2s" in wrk_command("http://h", "sk_x", 1.5)
    command = wrk_command("http://h", "sk_x", 1.0, script_name=STRIPE_SCRIPT)
    assert str(WRK_SCRIPTS / STRIPE_SCRIPT) in command and command[-2:] == ["--", "sk_x"]
    script = (WRK_SCRIPTS / STRIPE_SCRIPT).read_text()
    assert '"POST", "/stripe/v1/payment_intents"' in script
    assert "payment_method=pm_card_visa" in script and "confirm=true" in script


def test_delivery_latency_from_the_first_arrival_of_each_event():
    created = {"evt_a": 100.0, "evt_b": 100.5, "evt_c": 101.0}
    arrivals = [
        ("evt_a", 100.004),
        ("evt_b", 100.530),
        ("evt_a", 107.0),  # a retry's duplicate: the first arrival counts
        ("evt_x", 100.1),  # not an event of the window (the warm-up's)
    ]
    latencies, undelivered = delivery_latencies(created, arrivals)
    assert latencies == pytest.approx([0.004, 0.030])
    assert undelivered == 1  # evt_c never arrived
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) == 0.0


def test_deliverer_stacks_are_the_webhooks_stage_whatever_library_they_are_in():
    client = [
        Frame("ClientSession._request", "aiohttp/client.py", 700),
        Frame("Deliverer._send", "gateway/webhooks/deliverer.py", 250),
        Frame("run_app", "aiohttp/web.py", 500),
    ]
    request = [
        Frame("StreamResponse.write", "aiohttp/web_response.py", 400),
        Frame("create_payment", "gateway/http/routes.py", 100),
    ]
    assert stage_of(client, line_text) == "webhooks"
    assert stage_of(request, line_text) == "HTTP"


def test_summary_splits_the_webhooks_cpu_by_process_group():
    from benchmarks.report import summary

    results = _results(36604.0)
    results["closed_loop"]["webhooks"].update(
        cpu_us_per_authorization_off=1000.0,
        cpu_us_per_authorization_on=1250.0,
        cpu_ratio=0.8,
        cpu_us_per_authorization_by_group={
            "gateway": {"off": 600.0, "on": 720.0},
            "postgres": {"off": 400.0, "on": 490.0},
            "receiver": {"off": 0.0, "on": 40.0},
        },
    )
    text = summary(results)
    assert "1000 us without, 1250 us with: **0.80x** as a rate where CPU binds" in text
    assert (
        "what the deliveries add, by process: gateway +120 us, postgres +90 us, receiver +40 us"
    ) in text


def test_cpu_between_readings_is_kept_by_group_and_counts_new_processes_from_zero():
    from benchmarks.closedloop import _cpu_between

    before = {"gateway": {10: (5, 100), 11: (5, 50)}, "postgres": {20: (7, 300)}}
    after = {
        "gateway": {10: (5, 160), 11: (9, 30)},  # pid 11 is a new process (another start)
        "postgres": {20: (7, 320), 21: (8, 40)},  # pid 21 started in between
    }
    spent = _cpu_between(before, after)
    from benchmarks.anatomy import CLOCK_TICKS_PER_S

    assert spent == {
        "gateway": (60 + 30) / CLOCK_TICKS_PER_S,
        "postgres": (20 + 40) / CLOCK_TICKS_PER_S,
    }


async def test_the_benchmark_receiver_notes_each_webhook_id_whatever_the_header_case():
    import asyncio

    import orjson

    from benchmarks.webhook_receiver import ReceiverProtocol

    arrivals: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ReceiverProtocol(arrivals), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"id":"evt_1"}'
        writer.write(  # two requests at once, the second's headers in another case
            b"POST /hook HTTP/1.1\r\nHost: x\r\nwebhook-id: evt_1\r\nContent-Length: %d\r\n\r\n%s"
            b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nWebhook-Id: evt_2\r\n\r\n%s"
            b"GET /arrivals HTTP/1.1\r\nHost: x\r\n\r\n" % (len(body), body, len(body), body)
        )
        await writer.drain()
        answers = b""
        while answers.count(b"HTTP/1.1 200 OK") < 3 or not answers.endswith(b"]]"):
            answers += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
    finally:
        server.close()
    listed = orjson.loads(answers[answers.rindex(b"\r\n\r\n") + 4 :])
    assert [webhook_id for webhook_id, _ in listed] == ["evt_1", "evt_2"]
    assert [webhook_id for webhook_id, _ in arrivals] == ["evt_1", "evt_2"]


def test_a_drain_waits_out_the_settle_and_a_tail_written_after_the_window(monkeypatch):
    # Pending deliveries as successive polls see them: drained, then a window's tail
    # commits more, which drain too.
    seen = iter([40, 0, 3, 0, 0, 0, 0, 0, 0])

    async def pending(dsn: str) -> int:
        return next(seen)

    monkeypatch.setattr(closedloop, "_pending_deliveries", pending)
    monkeypatch.setattr(closedloop, "DRAIN_POLL_S", 0.01)
    since = time.time()
    at_end, left, drained_s = closedloop._drain("dsn", since, settle_s=0.05)
    assert (at_end, left) == (40, 0)
    assert 0.005 < drained_s < 0.05  # the first poll that saw none
    assert time.time() - since >= 0.05  # and not before the settle
