"""``kassa serve``: a supervisor and N worker processes sharing one port.

The supervisor owns the embedded database (if any), applies migrations once,
then starts workers that each bind the port with SO_REUSEPORT so the kernel
spreads connections across them. SIGTERM/SIGINT: the supervisor forwards
SIGTERM; each worker stops accepting, finishes in-flight requests (up to the
shutdown grace), closes its pool and exits. A worker that dies unexpectedly
is replaced; a supervisor that dies, even by SIGKILL, takes its workers with it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time

from gateway.cards import load_master_key
from gateway.config import Settings
from gateway.store import database

log = logging.getLogger("kassa.server")

WORKER_RESTART_DELAY_S = 0.5  # bounds a crash loop's restart rate
SUPERVISOR_POLL_S = 1.0  # how soon a worker notices its supervisor is gone, without prctl
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
NO_MERCHANTS_HINT = (
    "kassa: no merchants yet; create one, and its secret key, with: kassa merchants create NAME"
)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is a hard dependency on POSIX; this is Windows only
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def bind_socket(host: str, port: int, *, share: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _die_with_supervisor(supervisor_pid: int) -> None:
    """SIGTERM this worker when its supervisor dies, even by SIGKILL (no chance to forward
    a signal): an orphan would keep serving the port (SO_REUSEPORT) beside the next
    ``kassa serve`` and keep its pool on a database no one owns.

    Linux: the kernel sends it (PR_SET_PDEATHSIG). Everywhere, also a thread that notices
    the worker being re-parented; it covers other systems and a supervisor that died
    before prctl ran. SIGTERM, not SIGKILL: in-flight requests finish as on a normal stop.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    threading.Thread(
        target=_watch_supervisor, args=(supervisor_pid,), name="kassa-supervisor-watch", daemon=True
    ).start()


def _watch_supervisor(supervisor_pid: int) -> None:
    while os.getppid() == supervisor_pid:
        time.sleep(SUPERVISOR_POLL_S)
    log.error("supervisor (pid %d) is gone; stopping worker pid %d", supervisor_pid, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def run_worker(settings: Settings, dsn: str, index: int, supervisor_pid: int) -> None:
    """Entry point of one worker process."""
    from aiohttp import web

    from gateway.http.app import create_app
    from gateway.logs import configure_logging

    configure_logging(settings.log_level)
    _die_with_supervisor(supervisor_pid)
    _install_uvloop()
    app = create_app(settings, dsn)
    sock = bind_socket(settings.host, settings.port)
    log.info(
        "worker %d (pid %d) serving on %s:%d", index, os.getpid(), settings.host, settings.port
    )
    web.run_app(
        app,
        sock=sock,
        shutdown_timeout=settings.shutdown_grace_s,
        print=None,
        access_log=None,
        handle_signals=True,
    )


class PortInUseError(OSError):
    pass


def _check_port_free(settings: Settings) -> None:
    # Bind once in the supervisor so "address in use" is one clear error, not N dying workers.
    # Without SO_REUSEPORT: a port that another server's workers hold (a second kassa serve
    # started by mistake, or an orphan) is refused instead of silently shared with it.
    try:
        probe = bind_socket(settings.host, settings.port, share=False)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUseError(
            f"{settings.host}:{settings.port} is already in use "
            "(another kassa serve?); choose another with --port"
        ) from None
    probe.close()


def serve(settings: Settings) -> int:
    from gateway.http.app import require_compiled_core

    require_compiled_core(settings)
    # Every worker needs the master key: a bad one must stop the supervisor here, before a
    # database or a worker starts, not crash-loop each worker once a second (MasterKeyError).
    load_master_key(settings.master_key, settings.data_dir)
    dsn, embedded = database.resolve_dsn(settings)
    try:
        applied, any_merchant = asyncio.run(_prepare_database(dsn))
        for migration in applied:
            log.info("applied migration %04d_%s", migration.version, migration.name)
        _check_port_free(settings)
        if not any_merchant:  # a first start: without a merchant no API call can succeed
            print(NO_MERCHANTS_HINT, file=sys.stderr, flush=True)
        metrics_dir = _fresh_metrics_dir(settings)
        try:
            return _supervise(settings, dsn)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    finally:
        if embedded is not None:
            embedded.stop()


def _fresh_metrics_dir(settings: Settings) -> str:
    """An empty PROMETHEUS_MULTIPROC_DIR for this supervisor's workers (inherited on spawn).

    Workers share one port, so a scrape reaches any one of them: each writes its samples
    to files here and whichever answers /metrics merges all of them (gateway/metrics.py).
    """
    parent = settings.data_dir / "metrics"
    path = parent / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    # A supervisor killed with SIGKILL left its directory behind; other live supervisors on
    # this data dir (on other ports) keep theirs.
    for left in parent.iterdir() if parent.exists() else ():
        if left.name.isdigit() and not _process_exists(int(left.name)):
            shutil.rmtree(left, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return str(path)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _worker_exited(process: multiprocessing.process.BaseProcess) -> None:
    """Drop a dead worker's live gauges; its counters stay, so totals never go back."""
    from prometheus_client import multiprocess

    if process.pid is not None:
        multiprocess.mark_process_dead(process.pid)


async def _prepare_database(dsn: str) -> tuple[list[database.Migration], bool]:
    """The migrations applied now, and whether any merchant exists."""
    import asyncpg

    from gateway.store.merchants import any_merchant

    conn = await asyncpg.connect(dsn)
    try:
        applied = await database.migrate(conn)
        return applied, await any_merchant(conn)
    finally:
        await conn.close()


def _supervise(settings: Settings, dsn: str) -> int:
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=run_worker,
            args=(settings, dsn, index, os.getpid()),
            name=f"kassa-worker-{index}",
        )
        process.start()
        return process

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = {index: start(index) for index in range(settings.workers)}
    print(
        f"kassa: serving on http://{settings.host}:{settings.port} with "
        f"{settings.workers} worker(s) (pids {', '.join(str(p.pid) for p in workers.values())})",
        file=sys.stderr,
        flush=True,
    )
    while not stopping:
        time.sleep(0.2)
        for index, process in list(workers.items()):
            if not process.is_alive() and not stopping:
                log.error(
                    "worker %d (pid %s) exited with %s; restarting",
                    index,
                    process.pid,
                    process.exitcode,
                )
                _worker_exited(process)
                time.sleep(WORKER_RESTART_DELAY_S)
                workers[index] = start(index)
    for process in workers.values():
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace_s + 5
    for process in workers.values():
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker pid %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()
        _worker_exited(process)
    print("kassa: stopped", file=sys.stderr, flush=True)
    return 0
