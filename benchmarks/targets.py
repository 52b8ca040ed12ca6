"""Start and stop what the benchmark measures: Kassa, and the framework baseline."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

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
    name: str,
    workdir: Path,
    workers: int,
    database_url: str | None,
    group_commit: bool,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[KassaServer, Target]]:
    """``kassa serve`` on a fresh embedded database (or ``database_url``), one merchant;
    the server too, for whoever needs its processes (benchmarks/anatomy.py). ``env`` adds
    settings."""
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
            **(env or {}),
        },
    )
    _, secret = server.create_merchant(name)
    server.start()
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield server, Target(name, server.url, secret)
        verify_ledger(server, name)
    finally:
        server.stop(STOP_TIMEOUT_S)


def verify_ledger(server: KassaServer, name: str) -> None:
    """``kassa ledger verify`` on what a target's load wrote: a benchmark whose books do not
    balance has measured a broken gateway, so it fails loudly instead of reporting."""
    result = server.cli("ledger", "verify")
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise RuntimeError(f"kassa ledger verify failed after the {name} load:\n{output}")
    print(
        f"  ledger verify after {name}: {output.splitlines()[-1] if output else 'ok'}", flush=True
    )


@contextlib.contextmanager
def kassa(
    name: str, workdir: Path, workers: int, database_url: str | None, group_commit: bool
) -> Iterator[Target]:
    with kassa_server(name, workdir, workers, database_url, group_commit) as (_, target):
        yield target


@dataclass(frozen=True)
class Webhooks:
    """What the kassa-webhooks target adds: its receiver, its endpoint and its database."""

    receiver_url: str
    endpoint_id: str
    dsn: str  # where the events and deliveries are read
    receiver_pid: int  # its CPU shares the machine (benchmarks/anatomy.py --webhooks)
    # Every process whose CPU a delivery costs, as now, by group: the gateway's, the
    # embedded PostgreSQL's (none of a given database_url's: not ours to measure) and the
    # receiver's.
    processes: Callable[[], dict[str, set[int]]]


@contextlib.contextmanager
def webhook_receiver(workdir: Path) -> Iterator[tuple[str, int]]:
    """benchmarks/webhook_receiver.py in its own process; its URL and pid."""
    port = testing.free_port()
    log = workdir / "webhook-receiver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.webhook_receiver", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://{testing.HOST}:{port}"
        testing.wait_http_ready(url, process, log, READY_TIMEOUT_S)
        yield url, process.pid
    finally:
        testing.stop_process(process, STOP_TIMEOUT_S)


def create_endpoint(target: Target, url: str, enabled_events: list[str]) -> str:
    """POST /v1/webhook_endpoints (with an Idempotency-Key, as every POST); its id."""
    request = urllib.request.Request(
        target.url + "/v1/webhook_endpoints",
        data=orjson.dumps({"url": url, "enabled_events": enabled_events}),
        headers={
            "Authorization": f"Bearer {target.secret_key}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"bench-endpoint-{target.name}",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        endpoint: dict[str, str] = orjson.loads(answer.read())
    return endpoint["id"]


def postmaster_pid(server: KassaServer) -> int | None:
    """The embedded PostgreSQL's postmaster, from its data directory."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(server.data_dir / "postgres")
    return info.pid if info is not None else None


def process_tree(pid: int | None) -> list[int]:
    """A process and all its descendants, as they are now."""
    import psutil

    if pid is None:
        return []
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def database_dsn(server: KassaServer, database_url: str | None) -> str:
    """The database a Kassa target runs on: ``database_url``, or its embedded server's."""
    if database_url:
        return database_url
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(server.data_dir / "postgres")
    if info is None:
        raise RuntimeError(f"no embedded PostgreSQL running in {server.data_dir}")
    return str(info.get_uri())


@contextlib.contextmanager
def kassa_with_webhooks(
    name: str, workdir: Path, workers: int, database_url: str | None
) -> Iterator[tuple[KassaServer, Target, Webhooks]]:
    """Kassa (group commit on) with one endpoint subscribed to ``*`` at a receiver on
    loopback (KASSA_WEBHOOK_ALLOW_PRIVATE=1 lets it point there); the server too, for
    benchmarks/anatomy.py."""
    with (
        webhook_receiver(workdir) as (receiver_url, receiver_pid),
        kassa_server(
            name,
            workdir,
            workers,
            database_url,
            True,
            env={"KASSA_WEBHOOK_ALLOW_PRIVATE": "1"},
        ) as (server, target),
    ):
        endpoint_id = create_endpoint(target, receiver_url + "/hook", ["*"])
        postmaster = None if database_url else postmaster_pid(server)

        def processes() -> dict[str, set[int]]:
            return {
                "gateway": set(process_tree(server.process.pid)),
                "postgres": set(process_tree(postmaster)),
                "receiver": {receiver_pid},
            }

        yield (
            server,
            target,
            Webhooks(
                receiver_url,
                endpoint_id,
                database_dsn(server, database_url),
                receiver_pid,
                processes,
            ),
        )


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


def postgres_version(database_url: str | None, workdir: Path) -> str:
    """The server version of the database Kassa used: read off PG_VERSION of the first
    embedded data directory the run left in ``workdir`` (its targets name their own)."""
    if database_url is None:
        for version_file in sorted(workdir.glob("data-*/postgres/PG_VERSION")):
            return "embedded " + version_file.read_text().strip()
    return "external"
