"""The ``kassa`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from typing import Any

import asyncpg
import orjson

from gateway.config import ConfigError, Settings, load_settings
from gateway.store import database

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kassa", description="Kassa payment gateway")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the gateway (applies migrations first)")
    serve.add_argument("--host", help="listen address (KASSA_HOST, default 127.0.0.1)")
    serve.add_argument("--port", help="listen port (KASSA_PORT, default 8080)")
    serve.add_argument("--workers", help="worker processes (KASSA_WORKERS, default 1)")

    commands.add_parser("migrate", help="apply pending schema migrations")

    merchants = commands.add_parser("merchants", help="manage merchants")
    merchant_commands = merchants.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = merchant_commands.add_parser("create", help="create a merchant and its first key")
    create.add_argument("name")
    merchant_commands.add_parser("list", help="list merchants")
    limits = merchant_commands.add_parser(
        "limits", help="show a merchant's rate and velocity limits, or override them"
    )
    limits.add_argument("merchant_id")
    for flag, column, meaning in LIMIT_FLAGS:
        limits.add_argument(
            flag,
            dest=column,
            type=_limit_value,
            metavar="N|default",
            help=f"{meaning} (0: off; 'default': the gateway's setting)",
        )

    keys = commands.add_parser("keys", help="manage secret keys")
    key_commands = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    rotate = key_commands.add_parser("rotate", help="issue a new key, retire the old ones")
    rotate.add_argument("merchant_id")
    rotate.add_argument(
        "--grace",
        type=int,
        default=0,
        metavar="SECONDS",
        help="old keys keep working this long (default 0: at once)",
    )

    ledger = commands.add_parser("ledger", help="the double-entry ledger")
    ledger_commands = ledger.add_subparsers(dest="action", required=True, metavar="ACTION")
    ledger_commands.add_parser("verify", help="check that the books balance; exit 1 if not")

    report = commands.add_parser("report", help="reports from the ledger")
    report_commands = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    settlement = report_commands.add_parser("settlement", help="one day's captures and refunds")
    settlement.add_argument(
        "--date", required=True, type=_iso_date, metavar="YYYY-MM-DD", help="the UTC day"
    )
    settlement.add_argument("--merchant", metavar="MERCHANT_ID", help="only this merchant")
    settlement.add_argument("--format", choices=("csv", "json"), default="csv")
    return parser


# kassa merchants limits: flag, merchants column, meaning.
LIMIT_FLAGS = (
    ("--rate-per-s", "rate_limit_per_s", "requests a second per API key and worker"),
    ("--burst", "rate_limit_burst", "requests a key may send at once"),
    (
        "--merchant-attempts",
        "velocity_merchant_attempts_max",
        "authorizations per merchant per velocity window",
    ),
    (
        "--card-attempts",
        "velocity_card_attempts_max",
        "authorizations per card per velocity window",
    ),
    (
        "--card-declines",
        "velocity_card_declines_max",
        "declines per card per velocity window before the card is refused",
    ),
)
RESET = "default"


def _limit_value(text: str) -> int | str:
    if text == RESET:
        return RESET
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'default'") from None
    if not 0 <= value <= 100_000_000:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 100000000")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date as YYYY-MM-DD") from None


async def _ledger_verify(conn: asyncpg.Connection) -> int:
    from gateway.books import verify

    result = await verify(conn)
    for problem in result.problems:
        print(problem)
    print(result.summary(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else EXIT_FAILURE


def _report_settlement(
    day: date, merchant_id: str | None, fmt: str
) -> Callable[[asyncpg.Connection], Awaitable[int]]:
    async def work(conn: asyncpg.Connection) -> int:
        from gateway.books import settlement, settlement_csv

        lines = await settlement(conn, day, merchant_id)
        if fmt == "json":
            print(
                orjson.dumps(
                    {"date": day.isoformat(), "lines": lines}, option=orjson.OPT_INDENT_2
                ).decode()
            )
        else:
            print(settlement_csv(lines), end="")
        return 0

    return work


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in ("host", "port", "workers")}


async def _with_connection(
    settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[int]]
) -> int:
    dsn, embedded = database.resolve_dsn(settings)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await database.migrate(conn)
            return await work(conn)
        finally:
            await conn.close()
    finally:
        if embedded is not None:
            embedded.stop()


async def _migrate(conn: asyncpg.Connection) -> int:
    # _with_connection already migrated; report where the schema stands.
    version = await database.schema_version(conn)
    print(f"schema at version {version} (latest {database.LATEST_VERSION})")
    return 0


def _merchants_create(name: str) -> Callable[[asyncpg.Connection], Awaitable[int]]:
    async def work(conn: asyncpg.Connection) -> int:
        from gateway.store.merchants import create_merchant

        key = await create_merchant(conn, name)
        print(f"merchant_id: {key.merchant_id}")
        print(f"secret_key:  {key.secret}")
        print("The secret key is shown once; only its hash is stored.", file=sys.stderr)
        return 0

    return work


async def _merchants_list(conn: asyncpg.Connection) -> int:
    from gateway.store.merchants import list_merchants

    for row in await list_merchants(conn):
        print(
            f"{row['id']}\t{row['active_keys']} active key(s)\t"
            f"{row['created_at'].isoformat()}\t{row['name']}"
        )
    return 0


def _merchants_limits(
    merchant_id: str, given: dict[str, int | str], settings: Settings
) -> Callable[[asyncpg.Connection], Awaitable[int]]:
    async def work(conn: asyncpg.Connection) -> int:
        from gateway.store.merchants import UnknownMerchant, set_limits

        changes = {column: None if value == RESET else value for column, value in given.items()}
        if changes.get("rate_limit_burst") == 0:
            print("kassa: --burst must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        try:
            row = await set_limits(conn, merchant_id, changes)
        except UnknownMerchant:
            print(f"kassa: no such merchant: {merchant_id}", file=sys.stderr)
            return EXIT_FAILURE
        for flag, column, _ in LIMIT_FLAGS:
            own = row[column]  # the settings field of the same name is the default
            shown = own if own is not None else f"{getattr(settings, column)} (default)"
            print(f"{flag[2:]}: {shown}")
        print(f"velocity window: {settings.velocity_window_s} s (KASSA_VELOCITY_WINDOW_S)")
        return 0

    return work


def _keys_rotate(merchant_id: str, grace_s: int) -> Callable[[asyncpg.Connection], Awaitable[int]]:
    async def work(conn: asyncpg.Connection) -> int:
        from gateway.store.merchants import UnknownMerchant, rotate_key

        try:
            key = await rotate_key(conn, merchant_id, grace_s)
        except UnknownMerchant:
            print(f"kassa: no such merchant: {merchant_id}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"merchant_id: {key.merchant_id}")
        print(f"secret_key:  {key.secret}")
        when = "now" if grace_s == 0 else f"in {grace_s} s"
        print(f"Previous keys stop working {when}.", file=sys.stderr)
        return 0

    return work


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(args, lambda settings: _run(args, settings))


def run(args: argparse.Namespace, work: Callable[[Settings], int]) -> int:
    """Settings from the environment and ``args``, logging, then ``work``: a bad setting or
    a failure to reach the database is one line on stderr and an exit code, never a
    traceback."""
    try:
        settings = load_settings(overrides=_overrides(args))
    except ConfigError as exc:
        print(f"kassa: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from gateway.logs import configure_logging

    configure_logging(settings.log_level)
    try:
        return work(settings)
    except (
        database.EmbeddedDatabaseError,
        database.MigrationError,
        OSError,
        asyncpg.PostgresError,
    ) as exc:
        print(f"kassa: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from gateway.cards import MasterKeyError
        from gateway.http.app import CoreNotCompiledError
        from gateway.server import serve

        try:
            return serve(settings)
        except CoreNotCompiledError as exc:
            print(f"kassa: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except MasterKeyError as exc:  # a configuration error, found before anything started
            print(f"kassa: {exc}", file=sys.stderr)
            return EXIT_USAGE
    # The other commands never touch card data, so they neither need nor check the master key.
    work: Callable[[asyncpg.Connection], Awaitable[int]]
    if args.command == "migrate":
        work = _migrate
    elif args.command == "merchants" and args.action == "create":
        work = _merchants_create(args.name)
    elif args.command == "merchants" and args.action == "limits":
        given = {
            column: getattr(args, column)
            for _, column, _ in LIMIT_FLAGS
            if getattr(args, column) is not None
        }
        work = _merchants_limits(args.merchant_id, given, settings)
    elif args.command == "merchants":
        work = _merchants_list
    elif args.command == "ledger":
        work = _ledger_verify
    elif args.command == "report":
        work = _report_settlement(args.date, args.merchant, args.format)
    else:
        if args.grace < 0:
            print("kassa: --grace must be >= 0", file=sys.stderr)
            return EXIT_USAGE
        work = _keys_rotate(args.merchant_id, args.grace)
    logging.getLogger("kassa").debug("running %s", args.command)
    return asyncio.run(_with_connection(settings, work))
