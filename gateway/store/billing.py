"""All SQL of ``customers``, ``customer_payment_methods``, ``prices``, ``subscriptions``,
``invoices``, ``invoice_attempts`` and ``test_clocks`` (migration 0012): the API's rows
and the schedulers' claims and records.

The schedulers' statements are set-based (``unnest`` of arrays), one per kind of change
whatever the batch size, so a clock advance of thousands of renewals is a handful of
round trips per batch, not a few per renewal. Callers pass values, never SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn = asyncpg.Connection | PoolConnectionProxy

# --- customers ----------------------------------------------------------------------------

INSERT_CUSTOMER_SQL = """
INSERT INTO customers (id, merchant_id, email, name, metadata, test_clock_id)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
RETURNING *
"""

CUSTOMER_SQL = """
SELECT * FROM customers WHERE id = $1 AND merchant_id = $2 AND NOT deleted
"""

CUSTOMERS_PAGE_SQL = """
SELECT * FROM customers
 WHERE merchant_id = $1 AND NOT deleted
   AND ($2::text IS NULL OR email = $2)
   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
 ORDER BY created_at DESC, id DESC
 LIMIT $5
"""

UPDATE_CUSTOMER_SQL = """
UPDATE customers
   SET email = CASE WHEN $3 THEN $4 ELSE email END,
       name = CASE WHEN $5 THEN $6 ELSE name END,
       metadata = coalesce($7::jsonb, metadata),
       updated_at = now()
 WHERE id = $1 AND merchant_id = $2 AND NOT deleted
RETURNING *
"""

DELETE_CUSTOMER_SQL = """
UPDATE customers SET deleted = true, updated_at = now()
 WHERE id = $1 AND merchant_id = $2 AND NOT deleted
RETURNING *
"""


async def insert_customer(
    conn: Conn,
    customer_id: str,
    merchant_id: str,
    email: str | None,
    name: str | None,
    metadata_json: str,
    test_clock_id: str | None,
) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        INSERT_CUSTOMER_SQL, customer_id, merchant_id, email, name, metadata_json, test_clock_id
    )
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError(f"no customer written for {customer_id}")
    return row


async def customer(
    conn: Conn, customer_id: str, merchant_id: str, lock: bool = False
) -> asyncpg.Record | None:
    """The merchant's customer (not deleted), or None; locked for the caller's
    transaction if ``lock``."""
    return await conn.fetchrow(
        CUSTOMER_SQL + (" FOR UPDATE" if lock else ""), customer_id, merchant_id
    )


async def customers_page(
    conn: Conn,
    merchant_id: str,
    email: str | None,
    cursor: asyncpg.Record | None,
    rows_max: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        CUSTOMERS_PAGE_SQL,
        merchant_id,
        email,
        cursor["created_at"] if cursor else None,
        cursor["id"] if cursor else None,
        rows_max,
    )


async def update_customer(
    conn: Conn, customer_id: str, merchant_id: str, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Apply the given fields (email, name: None clears; metadata_json replaces)."""
    return await conn.fetchrow(
        UPDATE_CUSTOMER_SQL,
        customer_id,
        merchant_id,
        "email" in changes,
        changes.get("email"),
        "name" in changes,
        changes.get("name"),
        changes.get("metadata_json"),
    )


async def delete_customer(conn: Conn, customer_id: str, merchant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(DELETE_CUSTOMER_SQL, customer_id, merchant_id)


# --- saved cards --------------------------------------------------------------------------

# The token, if it is saved to this customer; the customer's id is NULL if the customer
# is unknown, the token's columns NULL if the customer is known but the card not its own.
SAVED_CARD_SQL = """
SELECT c.id AS customer_id, t.*
  FROM customers c
  LEFT JOIN customer_payment_methods pm ON pm.customer_id = c.id AND pm.token_id = $3
  LEFT JOIN tokens t ON t.id = pm.token_id AND t.merchant_id = c.merchant_id
 WHERE c.id = $2 AND c.merchant_id = $1 AND NOT c.deleted
"""

# The same for many (merchant, customer, token) at once: the rows of the cards that are
# saved to their customer (a batch of renewals reads its cards in one round trip).
SAVED_CARDS_SQL = """
SELECT c.id AS customer_id, t.*
  FROM unnest($1::text[], $2::text[], $3::text[]) AS k (merchant_id, customer_id, token_id)
  JOIN customers c ON c.id = k.customer_id AND c.merchant_id = k.merchant_id AND NOT c.deleted
  JOIN customer_payment_methods pm ON pm.customer_id = c.id AND pm.token_id = k.token_id
  JOIN tokens t ON t.id = pm.token_id AND t.merchant_id = c.merchant_id
"""

# Saves a token to a customer. A token saved to another customer conflicts on the
# UNIQUE token_id and is not saved (the caller tells which from the empty answer).
ATTACH_SQL = """
INSERT INTO customer_payment_methods (customer_id, token_id, is_default)
VALUES ($1, $2, $3)
ON CONFLICT (token_id) DO UPDATE SET is_default = customer_payment_methods.is_default OR $3
 WHERE customer_payment_methods.customer_id = $1
RETURNING *
"""

CLEAR_DEFAULT_SQL = """
UPDATE customer_payment_methods SET is_default = false
 WHERE customer_id = $1 AND is_default AND token_id <> $2
"""

HAS_DEFAULT_SQL = """
SELECT EXISTS (SELECT 1 FROM customer_payment_methods WHERE customer_id = $1 AND is_default)
"""

PAYMENT_METHODS_SQL = """
SELECT pm.customer_id, pm.is_default, pm.created_at AS saved_at, t.*
  FROM customer_payment_methods pm JOIN tokens t ON t.id = pm.token_id
 WHERE pm.customer_id = $1
 ORDER BY pm.created_at DESC, t.id DESC
 LIMIT $2
"""

PAYMENT_METHOD_SQL = """
SELECT pm.customer_id, pm.is_default, pm.created_at AS saved_at, t.*
  FROM customer_payment_methods pm JOIN tokens t ON t.id = pm.token_id
 WHERE pm.customer_id = $1 AND pm.token_id = $2
"""

DETACH_SQL = """
DELETE FROM customer_payment_methods WHERE customer_id = $1 AND token_id = $2 RETURNING token_id
"""

# The customer a token of the merchant's is saved to, if any (a card is one customer's).
SAVED_TO_SQL = """
SELECT pm.customer_id FROM customer_payment_methods pm JOIN tokens t ON t.id = pm.token_id
 WHERE pm.token_id = $1 AND t.merchant_id = $2
"""


async def saved_card(
    conn: Conn, merchant_id: str, customer_id: str, token_id: str | None
) -> asyncpg.Record | None:
    """None: no such customer. Else a row whose ``id`` is the token's if it is saved to
    this customer (with the token's columns), None if not."""
    return await conn.fetchrow(SAVED_CARD_SQL, merchant_id, customer_id, token_id)


async def saved_cards(
    conn: Conn,
    merchant_ids: Sequence[str],
    customer_ids: Sequence[str],
    token_ids: Sequence[str],
) -> dict[tuple[str, str], asyncpg.Record]:
    """{(customer id, token id): its SAVED_CARD_SQL row} of the cards saved to their
    customer; the others are missing."""
    rows = await conn.fetch(
        SAVED_CARDS_SQL, list(merchant_ids), list(customer_ids), list(token_ids)
    )
    return {(row["customer_id"], row["id"]): row for row in rows}


async def attach(
    conn: Conn, customer_id: str, token_id: str, make_default: bool
) -> asyncpg.Record | None:
    """Save the token to the customer (the default if asked, or if it has none yet); None
    if the token is saved to another customer. Run in the caller's transaction, the
    customer row locked (the default moves one at a time)."""
    make_default = make_default or not await conn.fetchval(HAS_DEFAULT_SQL, customer_id)
    if make_default:
        await conn.execute(CLEAR_DEFAULT_SQL, customer_id, token_id)
    return await conn.fetchrow(ATTACH_SQL, customer_id, token_id, make_default)


async def payment_methods(conn: Conn, customer_id: str, rows_max: int) -> list[asyncpg.Record]:
    return await conn.fetch(PAYMENT_METHODS_SQL, customer_id, rows_max)


async def payment_method(conn: Conn, customer_id: str, token_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(PAYMENT_METHOD_SQL, customer_id, token_id)


async def detach(conn: Conn, customer_id: str, token_id: str) -> bool:
    return await conn.fetchval(DETACH_SQL, customer_id, token_id) is not None


async def saved_to(conn: Conn, merchant_id: str, token_id: str) -> str | None:
    """The customer the merchant's token is saved to, or None."""
    customer_id: str | None = await conn.fetchval(SAVED_TO_SQL, token_id, merchant_id)
    return customer_id


# --- prices -------------------------------------------------------------------------------

INSERT_PRICE_SQL = """
INSERT INTO prices (id, merchant_id, amount, currency, interval, interval_count, description)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *
"""


async def insert_price(conn: Conn, values: Sequence[Any]) -> asyncpg.Record:
    """``values``: id, merchant id, amount, currency, interval, interval_count,
    description."""
    row: asyncpg.Record | None = await conn.fetchrow(INSERT_PRICE_SQL, *values)
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError("no price written")
    return row


async def price(conn: Conn, price_id: str, merchant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM prices WHERE id = $1 AND merchant_id = $2", price_id, merchant_id
    )


# --- test clocks --------------------------------------------------------------------------

INSERT_CLOCK_SQL = """
INSERT INTO test_clocks (id, merchant_id, name, frozen_time, status)
VALUES ($1, $2, $3, $4, 'ready')
RETURNING *
"""

# Moves a ready clock forward; the schedulers then run what became due and mark it ready.
ADVANCE_CLOCK_SQL = """
UPDATE test_clocks SET frozen_time = $3, status = 'advancing', updated_at = now()
 WHERE id = $1 AND merchant_id = $2 AND status = 'ready' AND frozen_time < $3
RETURNING *
"""

# Advancing clocks with nothing left due on them are ready: nothing of theirs is due at
# or before their time, nor held by a scheduler.
CLOCKS_READY_SQL = """
UPDATE test_clocks c SET status = 'ready', updated_at = now()
 WHERE c.status = 'advancing'
   AND NOT EXISTS (SELECT 1 FROM subscriptions s
                    WHERE s.test_clock_id = c.id AND s.next_action_at IS NOT NULL
                      AND s.next_action_at <= c.frozen_time)
RETURNING c.id
"""


async def insert_clock(
    conn: Conn, clock_id: str, merchant_id: str, name: str | None, frozen_time: datetime
) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        INSERT_CLOCK_SQL, clock_id, merchant_id, name, frozen_time
    )
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError(f"no test clock written for {clock_id}")
    return row


async def clock(conn: Conn, clock_id: str, merchant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM test_clocks WHERE id = $1 AND merchant_id = $2", clock_id, merchant_id
    )


async def advance_clock(
    conn: Conn, clock_id: str, merchant_id: str, frozen_time: datetime
) -> asyncpg.Record | None:
    """The clock moved to ``frozen_time`` and advancing, or None (not ready, or not
    forward)."""
    return await conn.fetchrow(ADVANCE_CLOCK_SQL, clock_id, merchant_id, frozen_time)


async def clocks_ready(conn: Conn) -> list[str]:
    """Mark the advancing clocks whose work is done ready; their ids."""
    return [row["id"] for row in await conn.fetch(CLOCKS_READY_SQL)]


# --- subscriptions and invoices: the API --------------------------------------------------

INSERT_SUBSCRIPTION_SQL = """
INSERT INTO subscriptions (id, merchant_id, customer_id, price_id, status, billing_anchor,
    trial_start, trial_end, current_period_index, current_period_start, current_period_end,
    test_clock_id, next_action_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now(), now())
RETURNING *
"""

# An invoice opened by the API (a subscription's first period, due at once).
INSERT_INVOICE_SQL = """
INSERT INTO invoices (id, merchant_id, subscription_id, customer_id, period_index,
    period_start, period_end, amount, currency, status, next_attempt_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10)
RETURNING *
"""

SUBSCRIPTION_SQL = """
SELECT s.*, p.amount, p.currency, p.interval, p.interval_count
  FROM subscriptions s JOIN prices p ON p.id = s.price_id
 WHERE s.id = $1 AND s.merchant_id = $2
"""

SUBSCRIPTIONS_PAGE_SQL = """
SELECT s.*, p.amount, p.currency, p.interval, p.interval_count
  FROM subscriptions s JOIN prices p ON p.id = s.price_id
 WHERE s.merchant_id = $1
   AND ($2::text IS NULL OR s.customer_id = $2)
   AND ($3::timestamptz IS NULL OR (s.created_at, s.id) < ($3, $4))
 ORDER BY s.created_at DESC, s.id DESC
 LIMIT $5
"""

# Cancel at the period's end: the schedulers end it when the period ends.
CANCEL_AT_PERIOD_END_SQL = """
UPDATE subscriptions SET cancel_at_period_end = $3, updated_at = now()
 WHERE id = $1 AND merchant_id = $2 AND status <> 'canceled'
RETURNING id
"""

# Cancel now ($3: the subscription's time): an open invoice is uncollectible.
CANCEL_NOW_SQL = """
WITH ended AS (
    UPDATE subscriptions
       SET status = 'canceled', canceled_at = $3, ended_at = $3, next_action_at = NULL,
           leased_until = NULL, updated_at = now()
     WHERE id = $1 AND merchant_id = $2 AND status <> 'canceled'
    RETURNING id
), closed AS (
    UPDATE invoices SET status = 'uncollectible', next_attempt_at = NULL, updated_at = now()
     WHERE subscription_id IN (SELECT id FROM ended) AND status = 'open'
    RETURNING id
)
SELECT id, (SELECT count(*) FROM closed) AS closed FROM ended
"""

CUSTOMER_SUBSCRIPTIONS_SQL = """
SELECT id FROM subscriptions WHERE customer_id = $1 AND status <> 'canceled'
"""

INVOICES_PAGE_SQL = """
SELECT * FROM invoices
 WHERE merchant_id = $1
   AND ($2::text IS NULL OR subscription_id = $2)
   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
 ORDER BY created_at DESC, id DESC
 LIMIT $5
"""


async def insert_subscription(conn: Conn, values: Sequence[Any]) -> asyncpg.Record:
    """``values`` in INSERT_SUBSCRIPTION_SQL's order ($1..$13)."""
    row: asyncpg.Record | None = await conn.fetchrow(INSERT_SUBSCRIPTION_SQL, *values)
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError("no subscription written")
    return row


async def insert_invoice(conn: Conn, values: Sequence[Any]) -> asyncpg.Record:
    """``values`` in INSERT_INVOICE_SQL's order ($1..$10)."""
    row: asyncpg.Record | None = await conn.fetchrow(INSERT_INVOICE_SQL, *values)
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError("no invoice written")
    return row


async def subscription(conn: Conn, subscription_id: str, merchant_id: str) -> asyncpg.Record | None:
    """The subscription with its price's amount, currency and interval."""
    return await conn.fetchrow(SUBSCRIPTION_SQL, subscription_id, merchant_id)


async def subscriptions_page(
    conn: Conn,
    merchant_id: str,
    customer_id: str | None,
    cursor: asyncpg.Record | None,
    rows_max: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        SUBSCRIPTIONS_PAGE_SQL,
        merchant_id,
        customer_id,
        cursor["created_at"] if cursor else None,
        cursor["id"] if cursor else None,
        rows_max,
    )


async def set_cancel_at_period_end(
    conn: Conn, subscription_id: str, merchant_id: str, cancel: bool
) -> bool:
    return (
        await conn.fetchval(CANCEL_AT_PERIOD_END_SQL, subscription_id, merchant_id, cancel)
        is not None
    )


async def cancel_now(conn: Conn, subscription_id: str, merchant_id: str, at: datetime) -> bool:
    return await conn.fetchval(CANCEL_NOW_SQL, subscription_id, merchant_id, at) is not None


async def customer_subscriptions(conn: Conn, customer_id: str) -> list[str]:
    """The customer's subscriptions not yet canceled."""
    return [row["id"] for row in await conn.fetch(CUSTOMER_SUBSCRIPTIONS_SQL, customer_id)]


async def invoice(conn: Conn, invoice_id: str, merchant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM invoices WHERE id = $1 AND merchant_id = $2", invoice_id, merchant_id
    )


async def invoices_page(
    conn: Conn,
    merchant_id: str,
    subscription_id: str | None,
    cursor: asyncpg.Record | None,
    rows_max: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        INVOICES_PAGE_SQL,
        merchant_id,
        subscription_id,
        cursor["created_at"] if cursor else None,
        cursor["id"] if cursor else None,
        rows_max,
    )


async def subscriptions_by_ids(conn: Conn, ids: Sequence[str]) -> list[asyncpg.Record]:
    """Subscriptions with their prices (for rendering after a change)."""
    return await conn.fetch(
        "SELECT s.*, p.amount, p.currency, p.interval, p.interval_count"
        "  FROM subscriptions s JOIN prices p ON p.id = s.price_id WHERE s.id = any($1::text[])",
        list(ids),
    )


# --- the schedulers -----------------------------------------------------------------------

# What a claimed subscription comes with: its price, the time it lives at (its clock's,
# or the database's), the customer's default card, its open invoice and that invoice's
# next attempt if it was written already (a crash after the write-ahead).
_CLAIMED_CONTEXT = """
SELECT cl.*, p.amount, p.currency, p.interval, p.interval_count,
       coalesce(c.frozen_time, now()) AS clock_now,
       (SELECT pm.token_id FROM customer_payment_methods pm
         WHERE pm.customer_id = cl.customer_id AND pm.is_default) AS default_token_id,
       i.id AS invoice_id, i.period_index AS invoice_period_index,
       i.attempt_count, i.first_failed_at, i.next_attempt_at AS invoice_next_attempt_at,
       a.attempt AS pending_attempt, a.token_id AS pending_token_id,
       a.idempotency_key AS pending_key, a.outcome AS pending_outcome
  FROM claimed cl
  JOIN prices p ON p.id = cl.price_id
  LEFT JOIN test_clocks c ON c.id = cl.test_clock_id
  LEFT JOIN invoices i ON i.subscription_id = cl.id AND i.status = 'open'
  LEFT JOIN invoice_attempts a ON a.invoice_id = i.id AND a.attempt = i.attempt_count + 1
 ORDER BY cl.next_action_at
"""

# Due subscriptions on the real clock, oldest due first, leased for $2 seconds.
CLAIM_REAL_SQL = f"""
WITH due AS (
    SELECT id FROM subscriptions
     WHERE next_action_at IS NOT NULL AND test_clock_id IS NULL AND next_action_at <= now()
       AND (leased_until IS NULL OR leased_until < now())
     ORDER BY next_action_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE subscriptions s SET leased_until = now() + make_interval(secs => $2)
      FROM due WHERE s.id = due.id
    RETURNING s.*
){_CLAIMED_CONTEXT}"""

# Due subscriptions on test clocks (at or before their clock's frozen time), oldest due
# first: a clock advance runs its subscriptions' work in the order it fell due.
CLAIM_CLOCKS_SQL = f"""
WITH due AS (
    SELECT s.id FROM subscriptions s JOIN test_clocks c ON c.id = s.test_clock_id
     WHERE s.next_action_at IS NOT NULL AND s.next_action_at <= c.frozen_time
       AND (s.leased_until IS NULL OR s.leased_until < now())
     ORDER BY s.next_action_at
     LIMIT $1
       FOR UPDATE OF s SKIP LOCKED
), claimed AS (
    UPDATE subscriptions s SET leased_until = now() + make_interval(secs => $2)
      FROM due WHERE s.id = due.id
    RETURNING s.*
){_CLAIMED_CONTEXT}"""


async def claim(conn: Conn, clocks: bool, rows_max: int, lease_s: float) -> list[asyncpg.Record]:
    """Claim up to ``rows_max`` due subscriptions (test clocks' if ``clocks``, else the
    real clock's) for ``lease_s`` seconds: one statement, committed."""
    return await conn.fetch(
        CLAIM_CLOCKS_SQL if clocks else CLAIM_REAL_SQL, rows_max, float(lease_s)
    )


# Renewals: each subscription moves to its next period ($2..$5) and the period's invoice
# opens ($6.., due at the period's start). The guard on the period index makes a stale
# plan change nothing; UNIQUE (subscription_id, period_index) makes a second invoice for
# a period impossible whatever happens.
RENEW_SQL = """
WITH r AS (
    SELECT * FROM unnest($1::text[], $2::integer[], $3::timestamptz[], $4::timestamptz[],
                         $5::text[], $6::text[])
           AS r (id, period_index, period_start, period_end, status, invoice_id)
), moved AS (
    UPDATE subscriptions s
       SET current_period_index = r.period_index, current_period_start = r.period_start,
           current_period_end = r.period_end, status = r.status,
           next_action_at = r.period_start, updated_at = now()
      FROM r
     WHERE s.id = r.id AND s.current_period_index = r.period_index - 1
       AND s.status <> 'canceled'
    RETURNING s.id, s.merchant_id, s.customer_id, s.price_id
), opened AS (
    INSERT INTO invoices (id, merchant_id, subscription_id, customer_id, period_index,
        period_start, period_end, amount, currency, status, next_attempt_at)
    SELECT r.invoice_id, m.merchant_id, m.id, m.customer_id, r.period_index,
           r.period_start, r.period_end, p.amount, p.currency, 'open', r.period_start
      FROM moved m JOIN r ON r.id = m.id JOIN prices p ON p.id = m.price_id
    ON CONFLICT (subscription_id, period_index) DO NOTHING
    RETURNING id, subscription_id
)
SELECT id, subscription_id FROM opened
"""

# The write-ahead of charges: one attempt row per invoice, numbered; an attempt written
# before (by a scheduler that crashed) stays as it was, card and key included.
ATTEMPTS_SQL = """
INSERT INTO invoice_attempts (invoice_id, attempt, token_id, idempotency_key)
SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[])
ON CONFLICT (invoice_id, attempt) DO NOTHING
"""

ATTEMPT_ROWS_SQL = """
SELECT a.* FROM invoice_attempts a
  JOIN unnest($1::text[], $2::integer[]) AS k (invoice_id, attempt)
    ON a.invoice_id = k.invoice_id AND a.attempt = k.attempt
"""

# Cancellations at a period's end ($2: when it ended).
END_SQL = """
UPDATE subscriptions s
   SET status = 'canceled', canceled_at = coalesce(s.canceled_at, e.ended_at),
       ended_at = e.ended_at, next_action_at = NULL, leased_until = NULL, updated_at = now()
  FROM unnest($1::text[], $2::timestamptz[]) AS e (id, ended_at)
 WHERE s.id = e.id AND s.status <> 'canceled'
RETURNING s.id
"""

# The outcomes of a batch of charges. Per attempt: its outcome and payment; per invoice:
# paid, or its next attempt's time, or uncollectible; per subscription: its status and
# next action. Only attempts still pending change, so a late second record of the same
# attempt changes nothing. An invoice made uncollectible while its charge was in flight
# (the subscription canceled now through the API) is paid all the same if the charge
# succeeded: the money was taken, and the books say so.
RECORD_ATTEMPTS_SQL = """
UPDATE invoice_attempts a
   SET outcome = o.outcome, payment_id = o.payment_id, decline_code = o.decline_code,
       updated_at = now()
  FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[], $5::text[])
       AS o (invoice_id, attempt, outcome, payment_id, decline_code)
 WHERE a.invoice_id = o.invoice_id AND a.attempt = o.attempt AND a.outcome = 'pending'
RETURNING a.invoice_id
"""

RECORD_INVOICES_SQL = """
UPDATE invoices i
   SET status = o.status, attempt_count = o.attempt, payment_id = o.payment_id,
       first_failed_at = coalesce(i.first_failed_at, o.failed_at),
       next_attempt_at = o.next_attempt_at, updated_at = now()
  FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[], $5::timestamptz[],
              $6::timestamptz[])
       AS o (id, attempt, status, payment_id, failed_at, next_attempt_at)
 WHERE i.id = o.id AND i.attempt_count = o.attempt - 1
   AND (i.status = 'open' OR (i.status = 'uncollectible' AND o.status = 'paid'))
RETURNING i.*
"""

RECORD_SUBSCRIPTIONS_SQL = """
UPDATE subscriptions s
   SET status = o.status, next_action_at = o.next_action_at,
       canceled_at = CASE WHEN o.status = 'canceled' THEN o.ended_at ELSE s.canceled_at END,
       ended_at = CASE WHEN o.status = 'canceled' THEN o.ended_at ELSE s.ended_at END,
       leased_until = NULL, updated_at = now()
  FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
       AS o (id, status, next_action_at, ended_at)
 WHERE s.id = o.id AND s.status <> 'canceled'
RETURNING s.id
"""

# The off-session payments made under these keys (an attempt's, found pending after a
# crash), with what they came to.
PAYMENTS_BY_KEYS_SQL = """
SELECT p.idempotency_key, p.id, p.status, p.decline_code
  FROM payments p
  JOIN unnest($1::text[], $2::text[]) AS k (merchant_id, key)
    ON p.merchant_id = k.merchant_id AND p.idempotency_key = k.key
 WHERE p.off_session
"""

RELEASE_SQL = """
UPDATE subscriptions SET leased_until = NULL WHERE id = any($1::text[])
"""


async def renew(
    conn: Conn,
    ids: Sequence[str],
    period_indexes: Sequence[int],
    starts: Sequence[datetime],
    ends: Sequence[datetime],
    statuses: Sequence[str],
    invoice_ids: Sequence[str],
) -> dict[str, str]:
    """Move subscriptions to their next period and open its invoice; {subscription id:
    invoice id} of those renewed."""
    rows = await conn.fetch(
        RENEW_SQL,
        list(ids),
        list(period_indexes),
        list(starts),
        list(ends),
        list(statuses),
        list(invoice_ids),
    )
    return {row["subscription_id"]: row["id"] for row in rows}


async def write_attempts(
    conn: Conn,
    invoice_ids: Sequence[str],
    attempts: Sequence[int],
    token_ids: Sequence[str | None],
    keys: Sequence[str],
) -> dict[tuple[str, int], asyncpg.Record]:
    """Write each attempt unless it exists; every attempt's row, as stored."""
    await conn.execute(ATTEMPTS_SQL, list(invoice_ids), list(attempts), list(token_ids), list(keys))
    rows = await conn.fetch(ATTEMPT_ROWS_SQL, list(invoice_ids), list(attempts))
    return {(row["invoice_id"], row["attempt"]): row for row in rows}


async def end(conn: Conn, ids: Sequence[str], ended_at: Sequence[datetime]) -> list[str]:
    return [row["id"] for row in await conn.fetch(END_SQL, list(ids), list(ended_at))]


async def record_attempts(conn: Conn, columns: Sequence[Sequence[Any]]) -> set[str]:
    """``columns``: invoice ids, attempts, outcomes, payment ids, decline codes; the
    invoices whose attempt was still pending."""
    return {row["invoice_id"] for row in await conn.fetch(RECORD_ATTEMPTS_SQL, *columns)}


async def record_invoices(conn: Conn, columns: Sequence[Sequence[Any]]) -> list[asyncpg.Record]:
    """``columns``: ids, attempts, statuses, payment ids, failed at, next attempt at."""
    return await conn.fetch(RECORD_INVOICES_SQL, *columns)


async def record_subscriptions(conn: Conn, columns: Sequence[Sequence[Any]]) -> set[str]:
    """``columns``: ids, statuses, next action at, ended at."""
    return {row["id"] for row in await conn.fetch(RECORD_SUBSCRIPTIONS_SQL, *columns)}


async def payments_by_keys(
    conn: Conn, merchant_ids: Sequence[str], keys: Sequence[str]
) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(PAYMENTS_BY_KEYS_SQL, list(merchant_ids), list(keys))
    return {row["idempotency_key"]: row for row in rows}


async def release(conn: Conn, ids: Sequence[str]) -> None:
    await conn.execute(RELEASE_SQL, list(ids))


async def merchant_limits(conn: Conn, merchant_id: str) -> asyncpg.Record | None:
    """The merchant's risk overrides (NULL: the gateway's default), for charges the
    scheduler makes in its name."""
    return await conn.fetchrow(
        "SELECT velocity_merchant_attempts_max, velocity_card_attempts_max,"
        " velocity_card_declines_max FROM merchants WHERE id = $1",
        merchant_id,
    )
