"""Merchants and their secret keys: creation, rotation, and request authentication."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

import core_ext
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


# Per-merchant overrides of the abuse limits (migration 0004); NULL: the gateway's default.
LIMIT_COLUMNS = ("rate_limit_per_s", "rate_limit_burst", "velocity_merchant_attempts_max",
                 "velocity_card_attempts_max", "velocity_card_declines_max")


@dataclass(frozen=True)
class LimitDefaults:
    """The gateway-wide limits (settings) a merchant's NULL overrides fall back to."""

    rate_limit_per_s: int
    rate_limit_burst: int
    velocity_window_s: int
    velocity_merchant_attempts_max: int
    velocity_card_attempts_max: int
    velocity_card_declines_max: int

    @classmethod
    def from_settings(cls, settings: object) -> LimitDefaults:
        # Same names as the Settings fields they come from.
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Caller:
    """An authenticated request's key and the limits that apply to it."""

    merchant_id: str
    key_id: str
    rate_limit_per_s: int
    rate_limit_burst: int
    risk: object  # core_ext.risk.RiskLimits


def _effective(row: asyncpg.Record, defaults: LimitDefaults) -> dict[str, int]:
    return {name: getattr(defaults, name) if row[name] is None else row[name]
            for name in LIMIT_COLUMNS}


async def set_limits(conn: asyncpg.Connection, merchant_id: str,
                     changes: dict[str, int | None]) -> asyncpg.Record:
    """Set (an int) or reset to the default (None) the named overrides; the merchant's row."""
    unknown = set(changes) - set(LIMIT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown limits: {sorted(unknown)}")
    # Column names come from LIMIT_COLUMNS, never from input; values are parameters.
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
    sql = f"UPDATE merchants SET {assignments} WHERE id = $1 RETURNING *" if changes else \
        "SELECT * FROM merchants WHERE id = $1"
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


class KeyCache:
    """key hash -> (caller, key expiry, time cached). The database decides; this only
    saves a round trip per request for a few seconds (a rotated key, or changed limits,
    take effect in every process within AUTH_CACHE_TTL_S).

    The secret itself is never compared: it is hashed (SHA-256) and the digest is looked
    up, so the time taken tells nothing about how much of a guessed key was right."""

    def __init__(self, defaults: LimitDefaults, acquire_timeout_s: float) -> None:
        self._defaults = defaults
        self._acquire_timeout_s = acquire_timeout_s
        # A None caller remembers an unknown key: a client stuck on a revoked key, retrying
        # in a loop, costs one query per AUTH_CACHE_TTL_S, not one per request.
        self._entries: dict[bytes, tuple[Caller | None, float | None, float]] = {}

    async def authenticate(self, pool: asyncpg.Pool, secret: str) -> Caller | None:
        digest = hash_key(secret)
        now = time.monotonic()
        wall = time.time()
        hit = self._entries.get(digest)
        if hit is not None and now - hit[2] < AUTH_CACHE_TTL_S:
            caller, expires, _ = hit
            return caller if expires is None or expires > wall else None
        async with pool.acquire(timeout=self._acquire_timeout_s) as conn:
            row = await conn.fetchrow(AUTHENTICATE_SQL, digest)
        caller, expires = None, None
        if row is not None and hmac.compare_digest(row["key_hash"], digest):
            caller = self._caller(row)
            expires = row["expires_at"].timestamp() if row["expires_at"] is not None else None
        if len(self._entries) >= AUTH_CACHE_ENTRIES_MAX:
            self._entries.clear()
        self._entries[digest] = (caller, expires, now)
        return caller if expires is None or expires > wall else None

    def _caller(self, row: asyncpg.Record) -> Caller:
        limits = _effective(row, self._defaults)
        risk = core_ext.risk.RiskLimits(
            float(self._defaults.velocity_window_s), limits["velocity_merchant_attempts_max"],
            limits["velocity_card_attempts_max"], limits["velocity_card_declines_max"])
        return Caller(row["merchant_id"], row["id"], limits["rate_limit_per_s"],
                      limits["rate_limit_burst"], risk)
