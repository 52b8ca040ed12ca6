"""All SQL of ``checkout_sessions`` and ``payment_links``: the hosted page's sessions (each
around one payment, read joined with it) and the reusable links that open them.

A session's money (amount, currency, capture, reference, description) is its payment's,
never copied: every read joins the payment, and the page's read joins the merchant too
(its name, and its card-testing limits for the confirm the page makes).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from gateway.store.events import Conn

# A session with what its object and its page show: the payment's money and state, and
# the merchant's name and card-testing overrides (NULL: the gateway's defaults).
SESSION_SELECT = """
SELECT s.*, p.amount, p.currency, p.capture_method, p.reference, p.description,
       p.status AS payment_status, p.decline_code, p.earlier_attempts,
       m.name AS merchant_name, m.velocity_merchant_attempts_max,
       m.velocity_card_attempts_max, m.velocity_card_declines_max
  FROM checkout_sessions s
  JOIN payments p ON p.id = s.payment_id
  JOIN merchants m ON m.id = s.merchant_id
"""

INSERT_SESSION_SQL = """
INSERT INTO checkout_sessions (id, merchant_id, payment_id, payment_link_id, url, locale,
                               success_url, cancel_url, customer_email, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))
RETURNING id
"""

# A session's change of status, only from open; the session row stays locked by the caller.
FINISH_SESSION_SQL = """
UPDATE checkout_sessions
   SET status = $2, completed_at = CASE WHEN $2 = 'complete' THEN now() END, updated_at = now()
 WHERE id = $1 AND status = 'open'
RETURNING id
"""

# Open sessions the background pass must move: past their deadline, or whose payment
# succeeded (a timed-out confirm that recovery settled, or a crash between the payment's
# commit and the session's). Locked, so workers share the work.
DUE_SQL = f"""
{SESSION_SELECT}
 WHERE s.status = 'open'
   AND (s.expires_at <= now()
        OR p.status IN ('authorized', 'captured', 'partially_refunded', 'refunded'))
 ORDER BY s.expires_at LIMIT $1 FOR UPDATE OF s SKIP LOCKED
"""

INSERT_LINK_SQL = """
INSERT INTO payment_links (id, merchant_id, url, amount, currency, capture_method,
                           description, success_url)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *
"""

SET_LINK_ACTIVE_SQL = """
UPDATE payment_links SET active = $3, updated_at = now()
 WHERE id = $1 AND merchant_id = $2
RETURNING *
"""


async def insert_session(
    conn: Conn,
    session_id: str,
    merchant_id: str,
    payment_id: str,
    payment_link_id: str | None,
    url: str,
    locale: str,
    success_url: str | None,
    cancel_url: str | None,
    customer_email: str | None,
    expires_in_s: int,
) -> None:
    await conn.execute(
        INSERT_SESSION_SQL,
        session_id,
        merchant_id,
        payment_id,
        payment_link_id,
        url,
        locale,
        success_url,
        cancel_url,
        customer_email,
        float(expires_in_s),
    )


async def session(
    conn: Conn, session_id: str, merchant_id: str | None = None, lock: bool = False
) -> asyncpg.Record | None:
    """The session joined with its payment and merchant; only the merchant's own if
    ``merchant_id`` is given (the page has none: the id itself is the secret). ``lock``
    locks the session's row (not its payment's) for a change of status."""
    sql = f"{SESSION_SELECT} WHERE s.id = $1 AND ($2::text IS NULL OR s.merchant_id = $2)" + (
        " FOR UPDATE OF s" if lock else ""
    )
    row: asyncpg.Record | None = await conn.fetchrow(sql, session_id, merchant_id)
    return row


async def finish_session(conn: Conn, session_id: str, status: str) -> bool:
    """Move an open session to ``status`` (complete or expired); False if it was not open."""
    return await conn.fetchval(FINISH_SESSION_SQL, session_id, status) is not None


async def due(conn: Conn, rows_max: int) -> list[asyncpg.Record]:
    """Open sessions past their deadline or with a paid payment, locked (SKIP LOCKED)."""
    return list(await conn.fetch(DUE_SQL, rows_max))


async def now(conn: Conn) -> datetime:
    """The database's clock: what expires_at is compared with."""
    moment: datetime = await conn.fetchval("SELECT now()")
    return moment


# --- payment links ---------------------------------------------------------------------


async def insert_link(
    conn: Conn,
    link_id: str,
    merchant_id: str,
    url: str,
    amount: int,
    currency: str,
    capture_method: str,
    description: str | None,
    success_url: str | None,
) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        INSERT_LINK_SQL,
        link_id,
        merchant_id,
        url,
        amount,
        currency,
        capture_method,
        description,
        success_url,
    )
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError(f"no payment link written for {link_id}")
    return row


async def link(conn: Conn, link_id: str, merchant_id: str | None = None) -> asyncpg.Record | None:
    """The link; only the merchant's own if ``merchant_id`` is given (the public URL has
    none)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM payment_links WHERE id = $1 AND ($2::text IS NULL OR merchant_id = $2)",
        link_id,
        merchant_id,
    )
    return row


async def set_link_active(
    conn: Conn, link_id: str, merchant_id: str, active: bool
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        SET_LINK_ACTIVE_SQL, link_id, merchant_id, active
    )
    return row
