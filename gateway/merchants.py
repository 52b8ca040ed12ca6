"""Merchants and their secret keys: creation, rotation, and request authentication."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

from gateway.ids import new_id

SECRET_KEY_PREFIX = "sk_"
AUTH_CACHE_TTL_S = 5.0  # a revoked key stops working in every process within this time
AUTH_CACHE_ENTRIES_MAX = 10_000


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
        found = await conn.fetchval(
            "SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", merchant_id
        )
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


async def list_merchants(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT m.id, m.name, m.created_at,
                  count(k.id) FILTER (WHERE k.expires_at IS NULL OR k.expires_at > now())
                      AS active_keys
             FROM merchants m LEFT JOIN api_keys k ON k.merchant_id = m.id
            GROUP BY m.id ORDER BY m.created_at, m.id"""
    )


class KeyCache:
    """key hash -> (merchant id, key expiry, time cached). The database decides;
    this only saves a round trip per request for a few seconds."""

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[str, float | None, float]] = {}

    async def authenticate(self, pool: asyncpg.Pool, secret: str) -> str | None:
        digest = hash_key(secret)
        now = time.monotonic()
        wall = time.time()
        hit = self._entries.get(digest)
        if hit is not None and now - hit[2] < AUTH_CACHE_TTL_S:
            merchant_id, expires, _ = hit
            return merchant_id if expires is None or expires > wall else None
        row = await pool.fetchrow(
            "SELECT merchant_id, key_hash, expires_at FROM api_keys WHERE key_hash = $1", digest
        )
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        expires = row["expires_at"].timestamp() if row["expires_at"] is not None else None
        if len(self._entries) >= AUTH_CACHE_ENTRIES_MAX:
            self._entries.clear()
        self._entries[digest] = (row["merchant_id"], expires, now)
        return row["merchant_id"] if expires is None or expires > wall else None
