"""Test base: a real PostgreSQL for every run, a clean database for every test.

The database is the embedded server (in ``.kassa/test`` of the checkout) unless
``KASSA_TEST_DATABASE_URL`` names another one; the tests own that database and
empty its tables before each test. Never point it at data you want to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import testing
from gateway.config import Settings, load_settings
from gateway.store import database
from gateway.testing import KassaServer

# Fixtures and hooks defined beside their helpers, for every test module: uvloop and the
# loop-error check (tests/loop_errors.py), promtool, and pytester for testing those.
pytest_plugins = ["tests.loop_errors", "tests.promtool", "pytester"]

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = ROOT / ".kassa" / "test"
SERVE_READY_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    given = os.environ.get("KASSA_TEST_DATABASE_URL")
    if given:
        yield given
        return
    embedded = database.EmbeddedPostgres(TEST_DATA_DIR)
    yield embedded.start()
    embedded.stop()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(database_url)
    try:
        await database.migrate(conn)
    finally:
        await conn.close()
    async with await database.create_pool(settings_for(database_url), database_url) as pool:
        yield pool


USER_TABLES_SQL = """
SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables
 WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
"""


TRUNCATE_ATTEMPTS = 10


@pytest.fixture
async def db(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The pool, on a database whose tables are all empty."""
    tables = await pool.fetchval(USER_TABLES_SQL)
    for attempt in range(TRUNCATE_ATTEMPTS):
        if not tables:
            break
        try:
            await pool.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
            break
        except asyncpg.DeadlockDetectedError:
            # A gateway a module keeps running (its recovery, pruning or deliverer pass)
            # locked some of the tables in another order: PostgreSQL chose this victim.
            # Retried at once, the next pass met it again five times in a row in one CI
            # run: let that pass end first.
            if attempt == TRUNCATE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    return pool


def settings_for(database_url: str, **changes: object) -> Settings:
    environ = {
        "DATABASE_URL": database_url,
        "KASSA_DATA_DIR": str(TEST_DATA_DIR),
        "KASSA_DB_POOL_MIN": "1",
        "KASSA_DB_POOL_MAX": "8",
        # A fixed test key: card data written by tests is encrypted under it.
        "KASSA_MASTER_KEY": testing.TEST_MASTER_KEY,
        "KASSA_ALLOW_PURE_CORE": os.environ.get("KASSA_ALLOW_PURE_CORE", "0"),
        "KASSA_GROUP_COMMIT": os.environ.get("KASSA_GROUP_COMMIT", "1"),
    }
    return load_settings(environ, {k: str(v) for k, v in changes.items()})


@pytest.fixture
async def app_factory(db: asyncpg.Pool, database_url: str):
    """Start the application in-process (a real HTTP server on 127.0.0.1)."""
    from gateway.http.app import create_app

    clients: list[TestClient] = []

    async def start(**changes: object) -> TestClient:
        app = create_app(settings_for(database_url, **changes), database_url)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def client(app_factory) -> TestClient:
    return await app_factory()


@dataclass
class Merchant:
    id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@pytest.fixture
async def merchant(db: asyncpg.Pool) -> Merchant:
    from gateway.store.merchants import create_merchant

    async with db.acquire() as conn:
        key = await create_merchant(conn, "Test Shop")
    return Merchant(key.merchant_id, key.secret)


@pytest.fixture
async def other_merchant(db: asyncpg.Pool) -> Merchant:
    from gateway.store.merchants import create_merchant

    async with db.acquire() as conn:
        key = await create_merchant(conn, "Other Shop")
    return Merchant(key.merchant_id, key.secret)


# --- a real `kassa serve` in a subprocess (gateway/testing.py) -----------------------

# The build and pipeline the suite runs on (CI runs it on the pure and the compiled core)
# carry over to the subprocesses; every other KASSA_* of the caller is dropped.
PASSED_THROUGH = ("KASSA_ALLOW_PURE_CORE", "KASSA_CORE", "KASSA_GROUP_COMMIT")


def subprocess_variables(**extra: str) -> dict[str, str]:
    passed = {name: os.environ[name] for name in PASSED_THROUGH if os.environ.get(name)}
    return {"KASSA_MASTER_KEY": testing.TEST_MASTER_KEY, **passed, **extra}


def kassa_env(database_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a `kassa` command run by a test (no data dir unless given)."""
    return testing.environment(database_url, **subprocess_variables(**extra))


def kassa(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return testing.run_cli(*args, env=env, timeout=timeout)


async def eventually(check, timeout_s: float, what: str = "the condition"):
    """Poll ``check`` (an async callable) every 50 ms until it answers something true,
    and return that; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def running_server(
    database_url: str, workdir: Path, workers: int = 2, **env: str
) -> Iterator[KassaServer]:
    """``kassa serve`` of ``workers`` workers in ``workdir`` with ``env`` settings, ready
    (/readyz answers 200), stopped afterwards even if it never became ready: a module's
    server."""
    served = KassaServer(workdir, database_url, workers=workers, env=subprocess_variables(**env))
    served.start()
    try:
        served.wait_ready(SERVE_READY_TIMEOUT_S)
        yield served
    finally:
        served.stop()


@pytest.fixture
async def serve_process(tmp_path: Path):
    """Start ``kassa serve`` processes (ready: /readyz answers 200); all are stopped after
    the test. ``KASSA_DATA_DIR`` defaults to the test's own directory."""
    started: list[KassaServer] = []

    async def start(
        database_url: str | None, workers: int = 1, port: int | None = None, **extra: str
    ) -> KassaServer:
        data_dir = Path(extra.pop("KASSA_DATA_DIR", tmp_path / "data"))
        server = KassaServer(
            tmp_path,
            database_url,
            workers=workers,
            data_dir=data_dir,
            env=subprocess_variables(**extra),
            port=port,
        )
        started.append(server)
        server.start()
        await server.wait_ready_async(SERVE_READY_TIMEOUT_S)
        return server

    yield start
    for server in started:
        server.stop()
