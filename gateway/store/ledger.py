"""All SQL of the ledger (``ledger_transactions``, ``ledger_entries``): the core computes
balanced postings, this writes them and runs the queries the books are read with.

Entries are append-only (the schema refuses UPDATE and DELETE, and refuses a
transaction that does not balance). Balances are derived from the entries on
read: a running-balance row per merchant account would be a hot row that every
authorization locks until its commit, capping throughput (DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

import core_ext

LEDGER_CHECK_LOCK_ID = 0x6B61737362  # the periodic ledger check's advisory lock


def posting_ctes(first_parameter: int = 1, only_payments_in: str | None = None) -> str:
    """The CTEs that write many events' transactions and entries in one statement, from
    the eight arrays of ``PostingArrays.columns`` at ``$first_parameter``...: transaction
    ids drawn from the sequence in a CTE (evaluated once per row: it is volatile), the
    transactions inserted from it, and every entry joined to its transaction by position.
    ``only_payments_in`` names a CTE of payment ids: events of other payments are skipped.
    The schema's statement trigger then checks each transaction's balance once, after all
    of them. The table names are ours, never input."""
    p = [f"${first_parameter + i}" for i in range(8)]
    only = f"WHERE t.payment_id IN (SELECT id FROM {only_payments_in})" if only_payments_in else ""
    return f"""ledger_txn AS (
    SELECT nextval(pg_get_serial_sequence('ledger_transactions', 'id')) AS id, t.*
      FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[],
                  {p[4]}::text[]) WITH ORDINALITY
           AS t (merchant_id, payment_id, refund_id, event, currency, n)
     {only}
), ledger_txn_inserted AS (
    INSERT INTO ledger_transactions (id, merchant_id, payment_id, refund_id, event, currency)
    OVERRIDING SYSTEM VALUE
    SELECT id, merchant_id, payment_id, refund_id, event, currency FROM ledger_txn
), ledger_entries_inserted AS (
    INSERT INTO ledger_entries (transaction_id, account, currency, amount)
    SELECT ledger_txn.id, e.account, ledger_txn.currency, e.amount
      FROM unnest({p[5]}::bigint[], {p[6]}::text[], {p[7]}::bigint[]) AS e (n, account, amount)
      JOIN ledger_txn ON ledger_txn.n = e.n
)"""


POST_MANY_SQL = f"WITH {posting_ctes()}\nSELECT count(*) FROM ledger_txn"


@dataclass(frozen=True)
class Posting:
    """One payment event to record: the core turns it into balanced entries."""

    transition: object
    merchant_id: str
    payment_id: str
    processor: str
    currency: str
    refund_id: str | None = None


@dataclass(frozen=True)
class PostingArrays:
    """Many events' balanced entries as the eight arrays ``posting_ctes`` reads."""

    columns: tuple[list, ...]
    entries_by_payment: dict[str, int]

    def count_for(self, payment_ids: set[str]) -> int:
        return sum(
            n for payment_id, n in self.entries_by_payment.items() if payment_id in payment_ids
        )


def posting_arrays(postings: list[Posting]) -> PostingArrays:
    per_event = [
        core_ext.ledger.postings(p.transition, p.merchant_id, p.processor, p.currency)
        for p in postings
    ]
    moving = [(p, entries) for p, entries in zip(postings, per_event) if entries]
    txn_index, accounts, amounts = core_ext.ledger.entry_columns([e for _, e in moving])
    entries_by_payment: dict[str, int] = {}
    for p, entries in moving:
        entries_by_payment[p.payment_id] = entries_by_payment.get(p.payment_id, 0) + len(entries)
    return PostingArrays(
        (
            [p.merchant_id for p, _ in moving],
            [p.payment_id for p, _ in moving],
            [p.refund_id for p, _ in moving],
            [p.transition.event for p, _ in moving],
            [p.currency for p, _ in moving],
            [i + 1 for i in txn_index],  # WITH ORDINALITY counts from 1
            accounts,
            amounts,
        ),
        entries_by_payment,
    )


async def post_many(conn: asyncpg.Connection, postings: list[Posting]) -> int:
    """Write many events' transactions and entries in one statement; returns entries
    written."""
    arrays = posting_arrays(postings)
    if not arrays.entries_by_payment:
        return 0
    await conn.execute(POST_MANY_SQL, *arrays.columns)
    written = len(arrays.columns[6])
    observe_entries(written)
    return written


def observe_entries(count: int) -> None:
    """Replaced by gateway.metrics when metrics are enabled."""


async def post(
    conn: asyncpg.Connection,
    transition: object,
    payment: asyncpg.Record,
    refund_id: str | None = None,
) -> None:
    """Write one event of ``payment`` (its row) as balanced entries (no-op for an event
    that moves no money)."""
    await post_many(
        conn,
        [
            Posting(
                transition,
                payment["merchant_id"],
                payment["id"],
                payment["processor"],
                payment["currency"],
                refund_id,
            )
        ],
    )


async def balance(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str) -> list[dict]:
    rows = await conn.fetch(
        """SELECT account, sum(amount)::bigint AS total FROM ledger_entries
            WHERE account LIKE $1 GROUP BY account""",
        core_ext.ledger.account_pattern(core_ext.ledger.MERCHANT, merchant_id),
    )
    return core_ext.ledger.balance_view({row["account"]: row["total"] for row in rows})


async def transaction_imbalances(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Transactions whose entries do not sum to zero or carry another currency:
    ``transaction_id``, ``total``, ``wrong_currency``."""
    return await conn.fetch(
        """SELECT e.transaction_id, sum(e.amount)::bigint AS total,
                  bool_or(e.currency <> t.currency) AS wrong_currency
             FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
            GROUP BY e.transaction_id
           HAVING sum(e.amount) <> 0 OR bool_or(e.currency <> t.currency)
            ORDER BY e.transaction_id"""
    )


async def currency_totals(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every currency's sum of entries (zero in balanced books): ``currency``, ``total``."""
    return await conn.fetch(
        """SELECT currency, sum(amount)::bigint AS total FROM ledger_entries
            GROUP BY currency ORDER BY currency"""
    )


async def account_sums_by_payment(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    """``{payment_id: {account: sum}}`` over every entry."""
    sums: dict[str, dict[str, int]] = {}
    for row in await conn.fetch(
        """SELECT t.payment_id, e.account, sum(e.amount)::bigint AS total
             FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
            GROUP BY t.payment_id, e.account"""
    ):
        sums.setdefault(row["payment_id"], {})[row["account"]] = row["total"]
    return sums


async def counts(conn: asyncpg.Connection) -> tuple[int, int]:
    """(transactions, entries)."""
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM ledger_transactions) AS transactions,
                  (SELECT count(*) FROM ledger_entries) AS entries"""
    )
    return row["transactions"], row["entries"]


async def settlement_rows(
    conn: asyncpg.Connection | asyncpg.Pool, start: datetime, merchant_id: str | None
) -> list[asyncpg.Record]:
    """Captures and refunds credited to merchants' available accounts in the UTC day from
    ``start``: ``merchant_id``, ``currency``, ``event``, ``n``, ``credited``."""
    return await conn.fetch(
        """SELECT t.merchant_id, t.currency, t.event, count(*) AS n,
                  sum(-e.amount)::bigint AS credited
             FROM ledger_transactions t
             JOIN ledger_entries e ON e.transaction_id = t.id
            WHERE t.created_at >= $1 AND t.created_at < $1 + interval '1 day'
              AND t.event IN ('capture', 'refund')
              AND e.account LIKE $3
              AND ($2::text IS NULL OR t.merchant_id = $2)
            GROUP BY t.merchant_id, t.currency, t.event""",
        # The day's end is computed by PostgreSQL: 9999-12-31 + 1 day overflows Python's
        # datetime but is a valid timestamptz.
        start,
        merchant_id,
        core_ext.ledger.account_pattern(core_ext.ledger.MERCHANT, None, core_ext.ledger.AVAILABLE),
    )


async def try_check_lock(conn: asyncpg.Connection) -> bool:
    """One worker at a time runs the periodic ledger check (held to the transaction's end)."""
    return await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LEDGER_CHECK_LOCK_ID)
