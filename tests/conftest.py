"""Test base: a real PostgreSQL for every run, a clean database for every test.

The database is the embedded server (in ``.kassa/test`` of the checkout) unless
``KASSA_TEST_DATABASE_URL`` names another one; the tests own that database and
empty its tables before each test. Never point it at data you want to keep.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import Settings, load_settings
from gateway.store import database

# Fixtures and hooks defined beside their helpers, for every test module: uvloop and the
# loop-error check (tests/loop_errors.py), promtool, and pytester for testing those.
pytest_plugins = ["tests.loop_errors", "tests.promtool", "pytester"]

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = ROOT / ".kassa" / "test"


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


@pytest.fixture
async def db(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The pool, on a database whose tables are all empty."""
    tables = await pool.fetchval(USER_TABLES_SQL)
    if tables:
        await pool.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return pool


def settings_for(database_url: str, **changes: object) -> Settings:
    environ = {
        "DATABASE_URL": database_url,
        "KASSA_DATA_DIR": str(TEST_DATA_DIR),
        "KASSA_DB_POOL_MIN": "1",
        "KASSA_DB_POOL_MAX": "8",
        # A fixed test key: card data written by tests is encrypted under it.
        "KASSA_MASTER_KEY": "a2Fzc2EtdGVzdC1tYXN0ZXIta2V5LW5vdC1wcm9kISE=",
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


# --- a real `kassa serve` in a subprocess -------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kassa_env(database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    env["KASSA_MASTER_KEY"] = settings_for(database_url or "postgresql://x").master_key
    if os.environ.get("KASSA_ALLOW_PURE_CORE"):
        env["KASSA_ALLOW_PURE_CORE"] = os.environ["KASSA_ALLOW_PURE_CORE"]
    for passed in ("KASSA_CORE", "KASSA_GROUP_COMMIT"):
        if os.environ.get(passed):
            env[passed] = os.environ[passed]
    env.update(extra)
    return env


def kassa(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True,
        timeout=timeout, cwd=ROOT,
    )


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


async def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 60):
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kassa serve exited early:\n{log_path.read_text()}")
            try:
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"kassa serve not ready in {timeout_s}s:\n{log_path.read_text()}")


@pytest.fixture
async def serve_process(tmp_path: Path):
    """Start ``kassa serve`` processes; all are stopped after the test."""
    started: list[ServerProcess] = []

    async def start(database_url: str | None, workers: int = 1, **extra: str) -> ServerProcess:
        port = free_port()
        env = kassa_env(database_url, KASSA_PORT=str(port), KASSA_WORKERS=str(workers), **extra)
        env.setdefault("KASSA_DATA_DIR", str(tmp_path / "data"))
        log_path = tmp_path / f"serve-{port}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT,
                stdout=log_file, stderr=subprocess.STDOUT,
            )
        server = ServerProcess(process, port, log_path)
        started.append(server)
        await wait_ready(server.url, process, log_path)
        return server

    yield start
    for server in started:
        try:
            server.stop()
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
