"""Run ``kassa`` as its users do, for the tests, the benchmarks and the chaos test.

One harness, like asyncpg's ``cluster.py``: a :class:`KassaServer` is ``kassa serve`` in a
subprocess with N workers on a free port of 127.0.0.1, its log in a file, on a given
PostgreSQL (``DATABASE_URL``) or on the embedded one in its data directory. It also runs
the other ``kassa`` commands (``merchants create``, ``ledger verify``) with the same
environment. The core is synchronous (the benchmark runner is); the two waits that an
asyncio caller needs (``/readyz``, the workers serving) also come as coroutines.

psutil (a test dependency) is imported only where worker pids are listed, so ``gateway``
never needs it to serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

HOST = "127.0.0.1"
# Where ``python -m gateway`` finds this package: its own checkout, not an installed copy.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
# A throwaway key for throwaway databases (base64 of 32 bytes): never for real card data.
TEST_MASTER_KEY = "a2Fzc2EtdGVzdC1tYXN0ZXIta2V5LW5vdC1wcm9kISE="

READY_TIMEOUT_S = 90.0  # kassa serve answers /readyz 200 (or all its workers serve)
READY_POLL_S = 0.1  # between two probes of /readyz or of the log
PROBE_TIMEOUT_S = 2.0  # one /readyz request
STOP_TIMEOUT_S = 30.0  # SIGTERM (drain) -> exit, before the process group is killed
CLI_TIMEOUT_S = 120.0  # one `kassa` command (merchants create, ledger verify)
LOG_TAIL_CHARS = 3000  # of the log, in the error when the server failed to start

WORKER_SERVING = re.compile(r"worker (\d+) \(pid (\d+)\) serving on")
MERCHANT_ID_LINE = re.compile(r"^merchant_id:\s+(\S+)$", re.MULTILINE)
SECRET_KEY_LINE = re.compile(r"^secret_key:\s+(\S+)$", re.MULTILINE)


class ServerFailed(RuntimeError):
    """The server exited during start, or was not ready in time (the log tail says why)."""


class Stopped(NamedTuple):
    exit_code: int | None  # None: it outlived the timeout and was killed
    seconds: float


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def environment(
    database_url: str | None, data_dir: Path | None = None, **extra: str
) -> dict[str, str]:
    """This process's environment without its KASSA_* and DATABASE_URL (a developer's own
    settings must not leak into a test), plus the database, the data directory and
    ``extra``. Without ``database_url`` kassa runs the embedded PostgreSQL in the data dir."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("KASSA_") and k != "DATABASE_URL"
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    if data_dir is not None:
        env["KASSA_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS``, its output captured as text; the caller checks the code."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        cwd=SOURCE_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def log_tail(log_path: Path) -> str:
    try:
        return log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except FileNotFoundError:
        return "(no log)"


def _check_running(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    if process.poll() is not None:
        raise ServerFailed(
            f"{url} exited with {process.returncode} during start "
            f"(log {log_path}):\n{log_tail(log_path)}"
        )


def _not_ready(url: str, log_path: Path, timeout_s: float) -> ServerFailed:
    return ServerFailed(
        f"{url} not ready in {timeout_s:.0f} s (log {log_path}):\n{log_tail(log_path)}"
    )


def wait_http_ready(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Poll ``url``/readyz until it answers 200; raise if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_running(process, url, log_path)
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/readyz", timeout=PROBE_TIMEOUT_S) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(READY_POLL_S)
    raise _not_ready(url, log_path, timeout_s)


async def wait_http_ready_async(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """:func:`wait_http_ready` without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=probe_timeout) as session:
        while time.monotonic() < deadline:
            _check_running(process, url, log_path)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "/readyz") as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(READY_POLL_S)
    raise _not_ready(url, log_path, timeout_s)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> Stopped:
    """SIGTERM (a graceful drain), then SIGKILL (its whole process group when it leads
    one, so no worker is orphaned) if it outlives ``timeout_s``."""
    started = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(process.pid) == process.pid:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            process.wait()
            return Stopped(None, time.monotonic() - started)
    return Stopped(process.returncode, time.monotonic() - started)


class KassaServer:
    """``kassa serve`` with ``workers`` workers in a subprocess, on ``database_url`` or on
    the embedded PostgreSQL in ``data_dir`` (default ``workdir/data``).

    ``env`` adds or overrides variables (``KASSA_LOG_LEVEL``, limits, ...); the host, port
    and worker count are always this object's, so :attr:`url` is where it listens.
    """

    def __init__(
        self,
        workdir: Path,
        database_url: str | None = None,
        *,
        workers: int = 1,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.workers = workers
        self.port = port or free_port()
        self.data_dir = data_dir or workdir / "data"
        self.log_path = log_path or workdir / f"serve-{self.port}.log"
        self.env = environment(database_url, self.data_dir, **(env or {}))
        self.env.update(KASSA_HOST=HOST, KASSA_PORT=str(self.port), KASSA_WORKERS=str(workers))
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # how far the log was read for "serving on" lines
        self._serving: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # --- other kassa commands, same environment ------------------------------------------

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, timeout=timeout)

    def create_merchant(self, name: str) -> tuple[str, str]:
        """``kassa merchants create NAME``: (merchant_id, secret key)."""
        done = self.cli("merchants", "create", name)
        merchant_id = MERCHANT_ID_LINE.search(done.stdout)
        secret = SECRET_KEY_LINE.search(done.stdout)
        if done.returncode != 0 or merchant_id is None or secret is None:
            raise RuntimeError(f"kassa merchants create failed ({done.returncode}):\n{done.stderr}")
        return merchant_id[1], secret[1]

    # --- start, wait, stop ---------------------------------------------------------------

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Its own session: if the supervisor ever has to be killed, its workers are
            # killed with it (by process group) instead of being orphaned.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"],
                env=self.env,
                cwd=SOURCE_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        wait_http_ready(self.url, self._running(), self.log_path, timeout_s)

    async def wait_ready_async(
        self, timeout_s: float = READY_TIMEOUT_S, all_workers: bool = False
    ) -> None:
        """/readyz answers 200; with ``all_workers``, every worker also says it serves."""
        started = time.monotonic()
        await wait_http_ready_async(self.url, self._running(), self.log_path, timeout_s)
        if all_workers:
            await self.wait_workers(self.workers, timeout_s - (time.monotonic() - started))

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> Stopped:
        """SIGTERM, then kill after ``timeout_s``: (exit code or None if killed, seconds)."""
        if self.process is None:
            return Stopped(None, 0.0)
        return stop_process(self.process, timeout_s)

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("KassaServer.start() was not called")
        return self.process

    # --- the log and the workers ---------------------------------------------------------

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def serving_workers(self) -> list[int]:
        """Pids of the live workers that have said they serve, sorted (so a seeded random
        choice among them replays)."""
        import psutil  # type: ignore[import-untyped]  # a test dependency, only for this

        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            chunk = log.read()
        complete = chunk.rfind(b"\n") + 1  # only whole lines; the rest is read next time
        self._log_offset += complete
        self._serving.update(
            int(m[2]) for m in WORKER_SERVING.finditer(chunk[:complete].decode(errors="replace"))
        )
        try:
            children = psutil.Process(self._running().pid).children()
        except psutil.NoSuchProcess:
            return []
        # Workers only: the multiprocessing resource tracker is a child too.
        return sorted(c.pid for c in children if c.pid in self._serving and _alive(c))

    async def wait_workers(self, count: int, timeout_s: float = READY_TIMEOUT_S) -> list[int]:
        """At least ``count`` workers serving (e.g. again, after some were killed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self._running()
            if process.poll() is not None:
                raise ServerFailed(
                    f"kassa serve exited with {process.returncode} "
                    f"(log {self.log_path}):\n{log_tail(self.log_path)}"
                )
            pids = self.serving_workers()
            if len(pids) >= count:
                return pids
            await asyncio.sleep(READY_POLL_S)
        raise ServerFailed(
            f"fewer than {count} workers serving after {timeout_s:.0f} s (log {self.log_path})"
        )


def _alive(process: Any) -> bool:  # a psutil.Process (psutil is optional, so untyped)
    import psutil

    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
