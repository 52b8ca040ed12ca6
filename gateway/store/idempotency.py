"""All SQL of ``idempotency_keys``: one row per (merchant, Idempotency-Key), claimed
'in_flight' with the request's intent and completed with the exact answer given.

The primary key is what makes every gateway process agree; the in-process table in
``core_ext.idempotency`` is only a fast path in front of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Claim:
    """A request's claim on its (merchant, Idempotency-Key), with its body's fingerprint."""

    merchant_id: str
    key: str
    fingerprint: bytes


CLAIM_ONE_SQL = """
INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state, payment_id)
VALUES ($1, $2, $3, 'in_flight', $4)
ON CONFLICT (merchant_id, key) DO NOTHING RETURNING true
"""

# The claim of a batch's keys, as the CTE the intents' payment insert runs it in
# (gateway/store/payments.py INSERT_INTENTS_SQL): $1..$4 are its arrays.
CLAIM_MANY_CTE = """
INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state, payment_id)
SELECT merchant_id, key, fingerprint, 'in_flight', payment_id
  FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
       AS claim (merchant_id, key, fingerprint, payment_id)
ON CONFLICT (merchant_id, key) DO NOTHING
RETURNING payment_id
"""

RECORD_SQL = """
SELECT fingerprint, state, response_status, response_body FROM idempotency_keys
 WHERE merchant_id = $1 AND key = $2
"""

RECORDS_SQL = """
SELECT k.merchant_id, k.key, k.fingerprint, k.state, k.response_status, k.response_body
  FROM idempotency_keys k
  JOIN unnest($1::text[], $2::text[]) AS lost (merchant_id, key)
    ON k.merchant_id = lost.merchant_id AND k.key = lost.key
"""

COMPLETE_ONE_SQL = """
UPDATE idempotency_keys
   SET state = 'completed', response_status = $3, response_body = $4,
       completed_at = now(), payment_id = coalesce($5, payment_id)
 WHERE merchant_id = $1 AND key = $2
"""

# Completes a batch's keys with their answers, from five arrays at $first_parameter...:
# merchant, key, status, body and the key's payment; only the keys of payments in the CTE
# ``only_payments_in`` (the ones the statement settled). A template for one statement.
COMPLETE_MANY_SQL = """UPDATE idempotency_keys AS k
       SET state = 'completed', response_status = a.status, response_body = a.body,
           completed_at = now()
      FROM unnest(${first_parameter}::text[], ${p2}::text[], ${p3}::integer[], ${p4}::bytea[],
                  ${p5}::text[])
           AS a (merchant_id, key, status, body, payment_id)
     WHERE k.merchant_id = a.merchant_id AND k.key = a.key
       AND a.payment_id IN (SELECT id FROM {only_payments_in})"""


def complete_many_cte(first_parameter: int, only_payments_in: str) -> str:
    return COMPLETE_MANY_SQL.format(
        first_parameter=first_parameter,
        p2=first_parameter + 1,
        p3=first_parameter + 2,
        p4=first_parameter + 3,
        p5=first_parameter + 4,
        only_payments_in=only_payments_in,
    )


SWEEP_SQL = """
DELETE FROM idempotency_keys WHERE ctid IN (
    SELECT ctid FROM idempotency_keys
     WHERE state = 'completed' AND created_at < now() - make_interval(secs => $1)
     LIMIT $2)
"""


async def claim_one(
    conn: asyncpg.Connection, merchant_id: str, key: str, fingerprint: bytes, payment_id: str | None
) -> bool:
    """Claim the key in the caller's transaction; False if it was claimed before."""
    return bool(await conn.fetchval(CLAIM_ONE_SQL, merchant_id, key, fingerprint, payment_id))


async def record(conn: asyncpg.Connection, merchant_id: str, key: str) -> asyncpg.Record | None:
    """The key's row: fingerprint, state, response_status, response_body."""
    return await conn.fetchrow(RECORD_SQL, merchant_id, key)


async def records(
    conn: asyncpg.Connection, merchant_ids: Sequence[str], keys: Sequence[str]
) -> dict[tuple[str, str], asyncpg.Record]:
    """Many keys' rows, by (merchant_id, key)."""
    rows = await conn.fetch(RECORDS_SQL, merchant_ids, keys)
    return {(row["merchant_id"], row["key"]): row for row in rows}


async def complete_one(
    conn: asyncpg.Connection,
    merchant_id: str,
    key: str,
    status: int,
    body: bytes,
    payment_id: str | None = None,
) -> None:
    await conn.execute(COMPLETE_ONE_SQL, merchant_id, key, status, body, payment_id)


async def sweep_expired(pool: asyncpg.Pool, retention_s: int, batch_rows_max: int = 1000) -> int:
    """Delete completed keys past retention, one bounded batch (callers loop)."""
    result = await pool.execute(SWEEP_SQL, float(retention_s), batch_rows_max)
    return int(result.split()[-1])
