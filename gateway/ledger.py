"""Ledger persistence: the core computes balanced postings, this writes and reads them.

Entries are append-only (the schema refuses UPDATE and DELETE, and refuses a
transaction that does not balance). Balances are derived from the entries on
read: a running-balance row per merchant account would be a hot row that every
authorization locks until its commit, capping throughput (DESIGN.md).
"""

from __future__ import annotations

import asyncpg

import core_ext

POST_SQL = """
WITH txn AS (
    INSERT INTO ledger_transactions (merchant_id, payment_id, refund_id, event, currency)
    VALUES ($1, $2, $3, $4, $5) RETURNING id
)
INSERT INTO ledger_entries (transaction_id, account, currency, amount)
SELECT txn.id, entry.account, $5, entry.amount
  FROM txn, unnest($6::text[], $7::bigint[]) AS entry (account, amount)
"""


async def post(conn: asyncpg.Connection, transition: object, *, merchant_id: str,
               payment_id: str, processor: str, currency: str,
               refund_id: str | None = None) -> None:
    """Write one event's balanced entries in one round trip (no-op for no money moved)."""
    entries = core_ext.ledger.postings(transition, merchant_id, processor, currency)
    if not entries:
        return
    await conn.execute(
        POST_SQL, merchant_id, payment_id, refund_id, transition.event, currency,
        [account for account, _ in entries], [amount for _, amount in entries],
    )


async def balance(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str) -> list[dict]:
    rows = await conn.fetch(
        """SELECT account, sum(amount)::bigint AS total FROM ledger_entries
            WHERE account LIKE $1 GROUP BY account""",
        # Escape LIKE's wildcard: ids contain "_".
        f"merchant:{merchant_id.replace('_', chr(92) + '_')}:%",
    )
    return core_ext.ledger.balance_view({row["account"]: row["total"] for row in rows})
