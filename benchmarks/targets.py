"""Start and stop what the benchmark measures: Kassa, and the framework baseline."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from benchmarks.scenarios import Target

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 90
# The load is one merchant key paying with a handful of sandbox cards, thousands of times:
# exactly what the rate limit and the card-testing rules exist to stop. Set them so high
# that they never trip, but still run (their cost is part of what is measured).
ABUSE_LIMITS_NEVER_HIT = {
    "KASSA_RATE_LIMIT_PER_S": "1000000", "KASSA_RATE_LIMIT_BURST": "1000000",
    "KASSA_VELOCITY_CARD_ATTEMPTS_MAX": "100000000",
    "KASSA_VELOCITY_CARD_DECLINES_MAX": "100000000",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited during start:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {READY_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def kassa_env(data_dir: Path, database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(KASSA_DATA_DIR=str(data_dir), KASSA_LOG_LEVEL="warning", **extra)
    return env


@contextlib.contextmanager
def kassa(name: str, workdir: Path, workers: int, database_url: str | None,
          group_commit: bool) -> Iterator[Target]:
    """``kassa serve`` on a fresh embedded database (or ``database_url``), one merchant."""
    data_dir = workdir / f"data-{name}"
    port = free_port()
    env = kassa_env(data_dir, database_url, KASSA_PORT=str(port), KASSA_WORKERS=str(workers),
                    KASSA_GROUP_COMMIT="1" if group_commit else "0",
                    KASSA_DB_POOL_MAX="16", **ABUSE_LIMITS_NEVER_HIT)
    created = subprocess.run([sys.executable, "-m", "gateway", "merchants", "create", name],
                             env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    secret = re.search(r"^secret_key:\s+(\S+)$", created.stdout, re.M)[1]
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, process, log)
        yield Target(name, url, secret)
    finally:
        _stop(process)


@contextlib.contextmanager
def framework_baseline(workdir: Path, workers: int) -> Iterator[Target]:
    port = free_port()
    log = workdir / "framework.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.baseline_app", "--port", str(port),
             "--workers", str(workers)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, process, log)
        yield Target("framework", url)
    finally:
        _stop(process)


def postgres_version(database_url: str | None, data_dir: Path) -> str:
    """The server version of the database Kassa used (reads PG_VERSION when embedded)."""
    version_file = data_dir / "postgres" / "PG_VERSION"
    if database_url is None and version_file.exists():
        return "embedded " + version_file.read_text().strip()
    return "external"
