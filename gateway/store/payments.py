"""All SQL of ``payments``, ``refunds`` and ``tokens``: the payment rows and what hangs off
them. Callers pass values, never SQL; table names below are ours, never input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from gateway.store import idempotency as keys

# Columns of an intent, in the order of INSERT_INTENTS_SQL's payment arrays ($5..$23).
INTENT_COLUMNS = (
    "payment_id",
    "merchant_id",
    "amount",
    "currency",
    "capture_method",
    "card_brand",
    "card_last4",
    "card_exp_month",
    "card_exp_year",
    "card_fingerprint",
    "token_id",
    "processor",
    "reference",
    "description",
    "metadata_json",
    "customer_json",
    "idempotency_key",
    "customer_id",
    "off_session",
)

# Claims the batch's Idempotency-Keys and inserts the 'processing' payments of the
# claims it won (and of the unkeyed intents) in one statement: atomic without a
# transaction of its own, so a batch of intents is a single round trip.
INSERT_INTENTS_SQL = f"""
WITH claims AS ({keys.CLAIM_MANY_CTE})
INSERT INTO payments (id, merchant_id, status, amount, currency, capture_method,
    card_brand, card_last4, card_exp_month, card_exp_year, card_fingerprint, token_id,
    processor, reference, description, metadata, customer, idempotency_key, customer_id,
    off_session)
SELECT id, merchant_id, 'processing', amount, currency, capture_method, card_brand,
       card_last4, card_exp_month, card_exp_year, card_fingerprint, token_id, processor,
       reference, description, metadata::jsonb, customer::jsonb, idempotency_key,
       customer_id, off_session
  FROM unnest($5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[],
              $11::text[], $12::smallint[], $13::smallint[], $14::text[], $15::text[],
              $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
              $22::text[], $23::boolean[])
       AS p (id, merchant_id, amount, currency, capture_method, card_brand, card_last4,
             card_exp_month, card_exp_year, card_fingerprint, token_id, processor,
             reference, description, metadata, customer, idempotency_key, customer_id,
             off_session)
 WHERE p.idempotency_key IS NULL OR p.id IN (SELECT payment_id FROM claims)
RETURNING *
"""

# A payment that waits before the processor (requires_payment_method, or
# requires_confirmation with its card kept as a token): one row, no batch, no ledger.
INSERT_UNCONFIRMED_SQL = """
INSERT INTO payments (id, merchant_id, status, amount, currency, capture_method,
    card_brand, card_last4, card_exp_month, card_exp_year, card_fingerprint, token_id,
    processor, reference, description, metadata, customer, idempotency_key, customer_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb,
        $17::jsonb, $18, $19)
RETURNING *
"""

# The attempt a payment's own columns hold, as an entry of earlier_attempts (see
# migration 0008): moved there when a new attempt starts or the payment is canceled.
FINISHED_ATTEMPT = """CASE WHEN p.status IN ('declined', 'failed')
    THEN coalesce(p.earlier_attempts, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
        'outcome', p.status, 'decline_code', p.decline_code, 'card_brand', p.card_brand,
        'card_last4', p.card_last4, 'processor_reference', p.processor_reference))
    ELSE p.earlier_attempts END"""

# Confirm: the write-ahead of an attempt on an existing payment, in one statement. The
# payment is locked only if it is in a state confirm may start from ($3, the core's);
# only then is the Idempotency-Key claimed ($4, $5; none if NULL), and only if the claim
# won does the payment become 'processing' with the attempt's card ($6..$11). A payment
# in another state, or a key claimed before, changes nothing and claims nothing: the
# caller reads why. The row lock orders racing confirms: the second re-reads the status
# and finds 'processing'.
CONFIRM_SQL = f"""
WITH target AS (
    SELECT id FROM payments
     WHERE id = $1 AND merchant_id = $2 AND status = any($3::text[])
       FOR UPDATE
), claim AS (
    INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state, payment_id)
    SELECT $2, $4, $5, 'in_flight', id FROM target WHERE $4::text IS NOT NULL
    ON CONFLICT (merchant_id, key) DO NOTHING
    RETURNING payment_id
)
UPDATE payments AS p
   SET status = 'processing', card_brand = $6, card_last4 = $7, card_exp_month = $8,
       card_exp_year = $9, card_fingerprint = $10, token_id = $11,
       decline_code = NULL, processor_reference = NULL, authorized_at = NULL,
       earlier_attempts = {FINISHED_ATTEMPT},
       idempotency_key = $4, updated_at = now()
  FROM target
 WHERE p.id = target.id AND p.status = any($3::text[])
   AND ($4::text IS NULL OR p.id IN (SELECT payment_id FROM claim))
RETURNING p.*
"""

# Cancel a locked payment; a finished attempt it holds is kept in earlier_attempts.
CANCEL_SQL = f"""
UPDATE payments AS p
   SET status = $2, earlier_attempts = {FINISHED_ATTEMPT}, updated_at = now()
 WHERE id = $1
RETURNING *
"""

UNCONFIRMED_EXPIRING_SQL = """
SELECT * FROM payments
 WHERE status IN ('requires_payment_method', 'requires_confirmation')
   AND created_at < now() - make_interval(secs => $1)
 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
"""

EXPIRE_UNCONFIRMED_SQL = """
UPDATE payments SET status = $2, updated_at = now() WHERE id = $1 RETURNING *
"""

UPDATE_AMOUNTS_SQL = """
UPDATE payments
   SET status = $2, amount_capturable = $3, amount_captured = $4, amount_refunded = $5,
       updated_at = now()
 WHERE id = $1
RETURNING *
"""

LIST_SQL = """
SELECT * FROM payments
 WHERE merchant_id = $1
   AND ($2::text IS NULL OR status = $2)
   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
 ORDER BY created_at DESC, id DESC
 LIMIT $5
"""

REFUNDS_PAGE_SQL = """
SELECT * FROM refunds
 WHERE merchant_id = $1
   AND ($2::text IS NULL OR payment_id = $2)
   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
 ORDER BY created_at DESC, id DESC
 LIMIT $5
"""

PROCESSING_DUE_SQL = """
SELECT *, extract(epoch FROM now() - updated_at)::float8 AS age_s FROM payments
 WHERE status = 'processing' AND updated_at < now() - make_interval(secs => $1)
 ORDER BY updated_at LIMIT $2
"""

STUCK_PROCESSING_SQL = """
SELECT count(*) FROM payments
 WHERE status = 'processing' AND updated_at < now() - make_interval(secs => $1)
"""

# A payment with an operation of unknown outcome (a capture may have happened) is left
# alone until that operation is settled.
NO_PENDING_OPERATION = """NOT EXISTS (SELECT 1 FROM payment_operations o
                    WHERE o.payment_id = payments.id AND o.state = 'pending')"""

EXPIRING_SQL = f"""
SELECT * FROM payments
 WHERE status = 'authorized' AND authorized_at < now() - make_interval(secs => $1)
   AND {NO_PENDING_OPERATION}
 ORDER BY authorized_at LIMIT $2 FOR UPDATE SKIP LOCKED
"""

# Checked again here: this statement's snapshot is taken after the row lock, so it sees
# an operation committed by a request that held the lock just before.
EXPIRE_SQL = f"""
UPDATE payments SET status = $2, amount_capturable = $3, updated_at = now()
 WHERE id = $1 AND {NO_PENDING_OPERATION}
RETURNING *
"""

INSERT_REFUND_SQL = """
INSERT INTO refunds (id, merchant_id, payment_id, amount, currency, status, reason)
VALUES ($1, $2, $3, $4, $5, 'succeeded', $6) RETURNING *
"""

INSERT_TOKEN_SQL = """
INSERT INTO tokens (id, merchant_id, brand, last4, exp_month, exp_year, fingerprint,
                    holder_name, number_ciphertext)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""

AMOUNTS_OF_ALL_SQL = """
SELECT id, merchant_id, processor, currency, amount_capturable, amount_captured,
       amount_refunded FROM payments ORDER BY id
"""

# What ``owned`` may read: a kind of object and its table. Never input.
OWNED_TABLES = {"payment": "payments", "refund": "refunds", "token": "tokens"}


async def insert_intents(
    conn: asyncpg.Connection, claims: Sequence[Sequence[Any]], columns: Sequence[Sequence[Any]]
) -> dict[str, asyncpg.Record]:
    """Claim keys (merchant ids, keys, fingerprints, payment ids) and insert the payments
    (one array per INTENT_COLUMNS) whose claim won or that have no key; the rows by id."""
    rows = await conn.fetch(INSERT_INTENTS_SQL, *claims, *columns)
    return {row["id"]: row for row in rows}


async def insert_unconfirmed(
    conn: asyncpg.Connection, status: str, values: Sequence[Any]
) -> asyncpg.Record:
    """Insert a payment in ``status`` from the values of INTENT_COLUMNS but the last
    (``off_session``: a payment that waits for its confirmation is not one)."""
    payment_id, merchant_id, *rest = values
    row: asyncpg.Record | None = await conn.fetchrow(
        INSERT_UNCONFIRMED_SQL, payment_id, merchant_id, status, *rest
    )
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError(f"no payment written for {payment_id}")
    return row


async def confirm(
    conn: asyncpg.Connection | asyncpg.Pool,
    payment_id: str,
    merchant_id: str,
    sources: Sequence[str],
    claim: Any,
    card: Sequence[Any],
) -> asyncpg.Record | None:
    """Start an attempt (CONFIRM_SQL); the payment now 'processing', or None if it was in
    none of ``sources`` or the key was claimed before. ``card``: brand, last4, exp_month,
    exp_year, fingerprint, token id."""
    return await conn.fetchrow(
        CONFIRM_SQL,
        payment_id,
        merchant_id,
        list(sources),
        claim.key if claim is not None else None,
        claim.fingerprint if claim is not None else None,
        *card,
    )


async def cancel(conn: asyncpg.Connection, payment_id: str, status: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(CANCEL_SQL, payment_id, status)
    if row is None:  # the caller holds the row's lock
        raise RuntimeError(f"payment {payment_id} vanished while locked")
    return row


async def lock_unconfirmed_expiring(
    conn: asyncpg.Connection, ttl_s: int, rows_max: int
) -> list[asyncpg.Record]:
    """Payments waiting before the processor for longer than ``ttl_s``, locked."""
    return await conn.fetch(UNCONFIRMED_EXPIRING_SQL, float(ttl_s), rows_max)


async def expire_unconfirmed(
    conn: asyncpg.Connection, payment_id: str, status: str
) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(EXPIRE_UNCONFIRMED_SQL, payment_id, status)
    if row is None:  # the caller holds the row's lock
        raise RuntimeError(f"payment {payment_id} vanished while locked")
    return row


async def by_ids(conn: asyncpg.Connection, ids: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM payments WHERE id = any($1::text[])", ids)


async def lock(
    conn: asyncpg.Connection, payment_id: str, merchant_id: str
) -> asyncpg.Record | None:
    """The merchant's payment, locked until the caller's transaction ends."""
    return await conn.fetchrow(
        "SELECT * FROM payments WHERE id = $1 AND merchant_id = $2 FOR UPDATE",
        payment_id,
        merchant_id,
    )


async def update_amounts(
    conn: asyncpg.Connection, payment_id: str, transition: Any
) -> asyncpg.Record:
    return await conn.fetchrow(
        UPDATE_AMOUNTS_SQL,
        payment_id,
        transition.status,
        transition.amount_capturable,
        transition.amount_captured,
        transition.amount_refunded,
    )


async def insert_refund(
    conn: asyncpg.Connection,
    refund_id: str,
    payment: asyncpg.Record,
    amount: int,
    reason: str | None,
) -> asyncpg.Record:
    return await conn.fetchrow(
        INSERT_REFUND_SQL,
        refund_id,
        payment["merchant_id"],
        payment["id"],
        amount,
        payment["currency"],
        reason,
    )


async def insert_token(
    conn: asyncpg.Connection,
    token_id: str,
    merchant_id: str,
    card: Any,
    fingerprint: str,
    number_ciphertext: bytes,
) -> None:
    await conn.execute(
        INSERT_TOKEN_SQL,
        token_id,
        merchant_id,
        card.brand,
        card.last4,
        card.exp_month,
        card.exp_year,
        fingerprint,
        card.holder_name,
        number_ciphertext,
    )


async def owned(
    conn: asyncpg.Connection, kind: str, object_id: str, merchant_id: str
) -> asyncpg.Record | None:
    """The merchant's own payment, refund or token, or None."""
    table = OWNED_TABLES[kind]
    return await conn.fetchrow(
        f"SELECT * FROM {table} WHERE id = $1 AND merchant_id = $2", object_id, merchant_id
    )


async def list_page(
    conn: asyncpg.Connection,
    merchant_id: str,
    status: str | None,
    cursor: asyncpg.Record | None,
    rows_max: int,
) -> list[asyncpg.Record]:
    """Newest first, after ``cursor`` (a payment row) if given."""
    return await conn.fetch(
        LIST_SQL,
        merchant_id,
        status,
        cursor["created_at"] if cursor else None,
        cursor["id"] if cursor else None,
        rows_max,
    )


async def refunds_page(
    conn: asyncpg.Connection,
    merchant_id: str,
    payment_id: str | None,
    cursor: asyncpg.Record | None,
    rows_max: int,
) -> list[asyncpg.Record]:
    """The merchant's refunds (of one payment, if given), newest first, after ``cursor``
    (a refund row) if given."""
    return await conn.fetch(
        REFUNDS_PAGE_SQL,
        merchant_id,
        payment_id,
        cursor["created_at"] if cursor else None,
        cursor["id"] if cursor else None,
        rows_max,
    )


async def processing_due(
    pool: asyncpg.Pool, older_than_s: int, rows_max: int
) -> list[asyncpg.Record]:
    """Payments still 'processing' after ``older_than_s``, oldest first, with ``age_s``."""
    return await pool.fetch(PROCESSING_DUE_SQL, float(older_than_s), rows_max)


async def count_stuck(pool: asyncpg.Pool, older_than_s: int) -> int:
    """COUNT on the partial index of 'processing' payments."""
    return await pool.fetchval(STUCK_PROCESSING_SQL, float(older_than_s))


async def lock_expiring(
    conn: asyncpg.Connection, ttl_s: int, rows_max: int
) -> list[asyncpg.Record]:
    """Authorizations older than ``ttl_s``, locked; other workers skip them."""
    return await conn.fetch(EXPIRING_SQL, float(ttl_s), rows_max)


async def expire(
    conn: asyncpg.Connection, payment_id: str, transition: Any
) -> asyncpg.Record | None:
    """Expire a locked authorization: its row after; None if an operation on it is pending."""
    return await conn.fetchrow(
        EXPIRE_SQL, payment_id, transition.status, transition.amount_capturable
    )


async def amounts_of_all(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every payment's amounts, for the ledger check."""
    return await conn.fetch(AMOUNTS_OF_ALL_SQL)
