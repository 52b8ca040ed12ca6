"""Request authentication: an API key to the merchant it speaks for and the limits that
apply to it, through a short-lived in-process cache (the database decides)."""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

import core_ext
from gateway.store.merchants import LIMIT_COLUMNS, hash_key, key_with_limits

AUTH_CACHE_TTL_S = 5.0  # a revoked key stops working in every process within this time
AUTH_CACHE_ENTRIES_MAX = 10_000


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
    return {
        name: getattr(defaults, name) if row[name] is None else row[name] for name in LIMIT_COLUMNS
    }


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
            row = await key_with_limits(conn, digest)
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
        return Caller(
            row["merchant_id"],
            row["id"],
            limits["rate_limit_per_s"],
            limits["rate_limit_burst"],
            risk_limits(row, self._defaults),
        )


VELOCITY_COLUMNS = (
    "velocity_merchant_attempts_max",
    "velocity_card_attempts_max",
    "velocity_card_declines_max",
)


def risk_limits(row: Mapping[str, Any] | asyncpg.Record, defaults: LimitDefaults) -> object:
    """The merchant's card-testing limits (core_ext.risk.RiskLimits) from a row holding
    its velocity override columns: what an API key's caller carries, and what the hosted
    page confirms with, so the same rules hold on both."""
    chosen = {
        name: getattr(defaults, name) if row[name] is None else row[name]
        for name in VELOCITY_COLUMNS
    }
    return core_ext.risk.RiskLimits(
        float(defaults.velocity_window_s),
        chosen["velocity_merchant_attempts_max"],
        chosen["velocity_card_attempts_max"],
        chosen["velocity_card_declines_max"],
    )
