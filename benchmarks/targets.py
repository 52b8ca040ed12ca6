"""Start and stop what the benchmark measures: Kassa, and the framework baseline."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks.scenarios import Target
from gateway import testing
from gateway.testing import KassaServer

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 90
STOP_TIMEOUT_S = 60  # SIGTERM -> exit; a loaded server drains its in-flight requests
# The load is one merchant key paying with a handful of sandbox cards, thousands of times:
# exactly what the rate limit and the card-testing rules exist to stop. Set them so high
# that they never trip, but still run (their cost is part of what is measured).
ABUSE_LIMITS_NEVER_HIT = {
    "KASSA_RATE_LIMIT_PER_S": "1000000",
    "KASSA_RATE_LIMIT_BURST": "1000000",
    "KASSA_VELOCITY_CARD_ATTEMPTS_MAX": "100000000",
    "KASSA_VELOCITY_CARD_DECLINES_MAX": "100000000",
}


@contextlib.contextmanager
def kassa_server(
    name: str, workdir: Path, workers: int, database_url: str | None, group_commit: bool
) -> Iterator[tuple[KassaServer, Target]]:
    """``kassa serve`` on a fresh embedded database (or ``database_url``), one merchant;
    the server too, for whoever needs its processes (benchmarks/anatomy.py)."""
    server = KassaServer(
        workdir,
        database_url,
        workers=workers,
        data_dir=workdir / f"data-{name}",
        log_path=workdir / f"{name}.log",
        env={
            # The default log level: an access line per request, as users run it.
            "KASSA_GROUP_COMMIT": "1" if group_commit else "0",
            "KASSA_DB_POOL_MAX": "16",
            **ABUSE_LIMITS_NEVER_HIT,
        },
    )
    _, secret = server.create_merchant(name)
    server.start()
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield server, Target(name, server.url, secret)
    finally:
        server.stop(STOP_TIMEOUT_S)


@contextlib.contextmanager
def kassa(
    name: str, workdir: Path, workers: int, database_url: str | None, group_commit: bool
) -> Iterator[Target]:
    with kassa_server(name, workdir, workers, database_url, group_commit) as (_, target):
        yield target


@contextlib.contextmanager
def framework_baseline(workdir: Path, workers: int) -> Iterator[Target]:
    port = testing.free_port()
    log = workdir / "framework.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.baseline_app",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://{testing.HOST}:{port}"
        testing.wait_http_ready(url, process, log, READY_TIMEOUT_S)
        yield Target("framework", url)
    finally:
        testing.stop_process(process, STOP_TIMEOUT_S)


def postgres_version(database_url: str | None, data_dir: Path) -> str:
    """The server version of the database Kassa used (reads PG_VERSION when embedded)."""
    version_file = data_dir / "postgres" / "PG_VERSION"
    if database_url is None and version_file.exists():
        return "embedded " + version_file.read_text().strip()
    return "external"
