"""All SQL of ``merchants`` and ``api_keys``: merchants, their secret keys (only a SHA-256
of each is stored) and their per-merchant limit overrides."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

from gateway.ids import new_id

SECRET_KEY_PREFIX = "sk_"


def hash_key(secret: str) -> bytes:
    # Keys are 256-bit random tokens, so a fast hash cannot be brute-forced;
    # a slow KDF would cost every request for nothing.
    return hashlib.sha256(secret.encode()).digest()


def new_secret_key() -> str:
    return SECRET_KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class NewKey:
    merchant_id: str
    key_id: str
    secret: str


async def create_merchant(conn: asyncpg.Connection, name: str) -> NewKey:
    merchant_id = new_id("mer")
    async with conn.transaction():
        await conn.execute("INSERT INTO merchants (id, name) VALUES ($1, $2)", merchant_id, name)
        return await _insert_key(conn, merchant_id)


async def _insert_key(conn: asyncpg.Connection, merchant_id: str) -> NewKey:
    secret = new_secret_key()
    key_id = new_id("key")
    await conn.execute(
        "INSERT INTO api_keys (id, merchant_id, key_hash, key_hint) VALUES ($1, $2, $3, $4)",
        key_id,
        merchant_id,
        hash_key(secret),
        secret[-4:],
    )
    return NewKey(merchant_id, key_id, secret)


class UnknownMerchant(LookupError):
    pass


async def rotate_key(conn: asyncpg.Connection, merchant_id: str, grace_s: int = 0) -> NewKey:
    """A new key; the merchant's other keys stop working after ``grace_s`` seconds."""
    async with conn.transaction():
        found = await conn.fetchval("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", merchant_id)
        if not found:
            raise UnknownMerchant(merchant_id)
        expires = datetime.now(timezone.utc) + timedelta(seconds=grace_s)
        await conn.execute(
            """UPDATE api_keys SET expires_at = $2
                WHERE merchant_id = $1 AND (expires_at IS NULL OR expires_at > $2)""",
            merchant_id,
            expires,
        )
        return await _insert_key(conn, merchant_id)


async def any_merchant(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM merchants)"))


async def list_merchants(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT m.id, m.name, m.created_at,
                  count(k.id) FILTER (WHERE k.expires_at IS NULL OR k.expires_at > now())
                      AS active_keys
             FROM merchants m LEFT JOIN api_keys k ON k.merchant_id = m.id
            GROUP BY m.id ORDER BY m.created_at, m.id"""
    )


# Per-merchant overrides of the abuse limits (migration 0004); NULL: the gateway's default.
LIMIT_COLUMNS = (
    "rate_limit_per_s",
    "rate_limit_burst",
    "velocity_merchant_attempts_max",
    "velocity_card_attempts_max",
    "velocity_card_declines_max",
)


async def set_limits(
    conn: asyncpg.Connection, merchant_id: str, changes: dict[str, int | None]
) -> asyncpg.Record:
    """Set (an int) or reset to the default (None) the named overrides; the merchant's row."""
    unknown = set(changes) - set(LIMIT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown limits: {sorted(unknown)}")
    # Column names come from LIMIT_COLUMNS, never from input; values are parameters.
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
    sql = (
        f"UPDATE merchants SET {assignments} WHERE id = $1 RETURNING *"
        if changes
        else "SELECT * FROM merchants WHERE id = $1"
    )
    row = await conn.fetchrow(sql, merchant_id, *changes.values())
    if row is None:
        raise UnknownMerchant(merchant_id)
    return row


AUTHENTICATE_SQL = """
SELECT k.id, k.merchant_id, k.key_hash, k.expires_at, m.rate_limit_per_s, m.rate_limit_burst,
       m.velocity_merchant_attempts_max, m.velocity_card_attempts_max,
       m.velocity_card_declines_max
  FROM api_keys k JOIN merchants m ON m.id = k.merchant_id
 WHERE k.key_hash = $1
"""


async def key_with_limits(conn: asyncpg.Connection, key_hash: bytes) -> asyncpg.Record | None:
    """The API key with this hash, with its merchant's limit overrides, or None."""
    return await conn.fetchrow(AUTHENTICATE_SQL, key_hash)
