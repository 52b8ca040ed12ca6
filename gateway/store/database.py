"""PostgreSQL: the given ``DATABASE_URL``, or an embedded server in the data dir.

The embedded server is a real PostgreSQL from the ``pgserver`` wheel, listening
on a unix socket only. The process that starts it (``kassa serve``'s
supervisor, or a CLI command) owns it; workers only receive its DSN.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

from gateway.config import Settings

log = logging.getLogger("kassa.database")

MIGRATIONS_LOCK_ID = 0x6B61737361  # "kassa": one advisory lock serializes concurrent migrators
CONNECT_TIMEOUT_S = 5.0  # opening a connection; asyncpg's default (60 s) would hang requests
COMMAND_TIMEOUT_SLACK_S = 1.0  # past statement_timeout before the client gives up on its own


HOLDERS_FILE = ".handle_pids.json"  # pgserver's list of processes using the embedded server


class EmbeddedDatabaseError(RuntimeError):
    pass


class EmbeddedPostgres:
    """Start (or join) the embedded server for ``data_dir``; stop it on the last close."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
            warnings.simplefilter("ignore", UserWarning)
            import pgserver  # imported lazily: only needed without DATABASE_URL

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            _forget_dead_holders(self.pgdata)
            # A server left running by a killed holder is joined (pgserver reads its
            # postmaster.pid), never started twice: PostgreSQL itself refuses a second
            # postmaster on one data directory.
            self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:  # pgserver raises bare subprocess errors
            log_path = self.pgdata / "log"
            raise EmbeddedDatabaseError(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc} (see {log_path})"
            ) from exc
        return self._server.get_uri()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def _forget_dead_holders(pgdata: Path) -> None:
    """Drop processes that died without closing their handle from pgserver's holder list.

    pgserver stops the server when its last holder closes, holders being the pids in
    ``.handle_pids.json``; a holder killed with SIGKILL (or a crash) stays listed, so no
    later holder would ever be the last and the server would run on forever after.
    """
    import psutil  # type: ignore[import-untyped]  # pgserver's own dependency
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    holders = DiskList(pgdata / HOLDERS_FILE)
    with PostgresServer._lock:  # the lock pgserver takes around every change of the list
        for pid in holders.get():
            if not psutil.pid_exists(pid):
                log.warning(
                    "forgetting embedded PostgreSQL holder pid %d, which died without stopping it",
                    pid,
                )
                holders.get_and_remove(pid)


def resolve_dsn(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """The DSN to use, and the embedded server handle if we started one."""
    if settings.database_url:
        return settings.database_url, None
    embedded = EmbeddedPostgres(settings.data_dir)
    return embedded.start(), embedded


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns travel as text; orjson does the (de)serialization in gateway.
    await conn.set_type_codec("jsonb", encoder=str, decoder=str, schema="pg_catalog")


async def create_pool(
    settings: Settings,
    dsn: str,
    *,
    application_name: str = "kassa",
    synchronous_commit: bool = True,
) -> asyncpg.Pool:
    server_settings = {
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "application_name": application_name,
    }
    if not synchronous_commit:
        server_settings["synchronous_commit"] = "off"
    statement_timeout_s = settings.db_statement_timeout_ms / 1000
    return await asyncpg.create_pool(
        dsn,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        init=_init_connection,
        server_settings=server_settings,
        # The server cancels a slow statement itself (statement_timeout); this client-side
        # bound is the backstop for a server that cannot answer at all (hung, partitioned).
        command_timeout=statement_timeout_s + COMMAND_TIMEOUT_SLACK_S,
        timeout=CONNECT_TIMEOUT_S,
        # By default Pool.release runs RESET ALL/UNLISTEN/... on every release: a round
        # trip per request we do not need, since Kassa never changes session state.
        reset=_keep_session,
        connection_class=_Connection,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without a reset query (asyncpg still clears its local listeners)."""


@contextlib.contextmanager
def _lost_if_terminated(conn: asyncpg.Connection) -> Iterator[None]:
    try:
        yield
    except asyncpg.InternalClientError as exc:
        if "another operation" not in str(exc):
            raise  # a real client bug: let it be a 500
        # Nothing was sent (asyncpg refuses before writing): drop the connection so the
        # pool opens a new one, and fail like the lost connection it is (a 503, retried).
        conn.terminate()
        raise asyncpg.ConnectionDoesNotExistError("the server terminated this connection") from exc


class _Connection(asyncpg.Connection):
    """A pooled connection the server has just terminated fails as a lost connection.

    When PostgreSQL ends a session (fast or crash shutdown, pg_terminate_backend), an
    idle pooled connection receives the server's FATAL message before its socket's close
    is processed; meanwhile asyncpg holds its protocol in an error state
    (MagicStack/asyncpg#784), and a request that acquires it in that window fails with
    InternalClientError "cannot switch to state ...; another operation (2) is in
    progress": a 500 where a database restart deserves a 503. Found by benchmarks/chaos.py.
    """

    async def execute(self, *args: Any, **kwargs: Any) -> str:
        with _lost_if_terminated(self):
            return await super().execute(*args, **kwargs)

    async def _execute(self, *args: Any, **kwargs: Any) -> Any:
        with _lost_if_terminated(self):
            return await super()._execute(*args, **kwargs)  # type: ignore[misc]  # private


# --- migrations -------------------------------------------------------------------

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("gateway.store.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


LATEST_VERSION = len(load_migrations())


class MigrationError(RuntimeError):
    pass


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply pending migrations, each in its own transaction; forward only.

    An applied migration whose text changed since is refused: history is not
    rewritten, a new migration is written instead.
    """
    applied: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATIONS_LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        done = {row["version"]: row for row in rows}
        for migration in load_migrations():
            row = done.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{row['name']} was changed after "
                        "it was applied; write a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied.append(migration)
        if max(done, default=0) > LATEST_VERSION:
            raise MigrationError(
                f"database schema is at version {max(done)}, newer than this Kassa "
                f"({LATEST_VERSION}); upgrade Kassa"
            )
    return applied


async def schema_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
