"""All SQL of ``payment_operations``: the write-ahead records of captures, voids and refunds,
and the per-payment session lock that serializes them.

An operation is inserted 'pending' (committed with the Idempotency-Key claim) before the
processor is called, and settled 'succeeded' or 'failed' once its outcome is known, by
the request that made it or, when that answer was lost, by recovery.
"""

from __future__ import annotations

from typing import Any

import asyncpg

# Class of the two-key advisory locks serializing changes of one payment (the second key
# is a hash of the payment id). The one-key locks (migrations, ledger check) are another
# lock space, so they never collide with these.
PAYMENT_CHANGE_LOCK_CLASS = 0x6B61  # "ka"

INSERT_PENDING_SQL = """
INSERT INTO payment_operations (payment_id, merchant_id, operation, amount, refund_id, reason,
                                idempotency_key, state)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')
RETURNING *
"""

PENDING_ON_SQL = """
SELECT operation FROM payment_operations WHERE payment_id = $1 AND state = 'pending'
"""

FINISH_SQL = """
UPDATE payment_operations SET state = $2, updated_at = now()
 WHERE id = $1 AND state = 'pending'
RETURNING true
"""

PENDING_DUE_SQL = """
SELECT *, extract(epoch FROM now() - updated_at)::float8 AS age_s FROM payment_operations
 WHERE state = 'pending' AND updated_at < now() - make_interval(secs => $1)
 ORDER BY updated_at LIMIT $2
"""


async def lock_changes(conn: asyncpg.Connection, payment_id: str) -> None:
    """Wait for, then hold, the payment's change lock for this session (across commits)."""
    await conn.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))", PAYMENT_CHANGE_LOCK_CLASS, payment_id
    )


async def unlock_changes(conn: asyncpg.Connection) -> None:
    """Release the session's change lock. ``unlock_all``: it is the only session-level lock
    a pooled connection ever holds, and it is silent when none is held (a lock wait that
    was cut short may or may not have been granted)."""
    await conn.execute("SELECT pg_advisory_unlock_all()")


async def insert_pending(
    conn: asyncpg.Connection,
    payment: asyncpg.Record,
    operation: str,
    amount: int,
    refund_id: str | None,
    reason: str | None,
    idempotency_key: str | None,
) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        INSERT_PENDING_SQL,
        payment["id"],
        payment["merchant_id"],
        operation,
        amount,
        refund_id,
        reason,
        idempotency_key,
    )
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError(f"no pending operation written for {payment['id']}")
    return row


async def pending_on(conn: asyncpg.Connection, payment_id: str) -> str | None:
    """The operation of unknown outcome on the payment, if any."""
    operation: str | None = await conn.fetchval(PENDING_ON_SQL, payment_id)
    return operation


async def finish(conn: asyncpg.Connection, operation_id: int, state: str) -> bool:
    """Settle a pending operation; False if someone settled it first."""
    return bool(await conn.fetchval(FINISH_SQL, operation_id, state))


async def pending_due(pool: asyncpg.Pool, older_than_s: int, rows_max: int) -> list[asyncpg.Record]:
    """Operations still pending after ``older_than_s``, oldest first, with ``age_s``."""
    return await pool.fetch(PENDING_DUE_SQL, float(older_than_s), rows_max)


def reference(operation: Any) -> str:
    """Our id for the operation at the processor: the refund id, else the payment id."""
    return str(operation["refund_id"] or operation["payment_id"])
