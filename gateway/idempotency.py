"""Idempotency-Key handling (API.md): the database decides, the core's table is a fast path.

A request with a key first claims ``(merchant, key)`` in ``idempotency_keys``
inside the same transaction as its intent; the answer it gives is stored on
completion. Another request with the same key finds the claim and is answered
from it: replayed, ``409 idempotency_key_in_use`` or ``422 idempotency_key_reused``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web

import core_ext
from gateway.errors import ApiError, invalid_request

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_CHARS_MAX = 255


@dataclass
class Answer:
    """One HTTP answer, as given and as stored for replays."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # False for answers about the key itself (in use, reused): never stored or cached.
    storable: bool = True

    @classmethod
    def of_error(cls, error: ApiError) -> Answer:
        return cls(error.status, error.body(), dict(error.headers))

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers,
                            content_type="application/json")


def key_from(request: web.Request) -> str | None:
    key = request.headers.get(KEY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= KEY_CHARS_MAX or not all(" " <= ch <= "~" for ch in key):
        raise invalid_request(
            "parameter_invalid",
            f"{KEY_HEADER} must be 1 to {KEY_CHARS_MAX} printable ASCII characters",
            param=KEY_HEADER,
        )
    return key


def replayed(status: int, body: bytes) -> Answer:
    return Answer(status, bytes(body), {REPLAYED_HEADER: "true"})


def _about_the_key(status: int, code: str, message: str) -> Answer:
    """An answer about the key itself: never stored or cached (``storable`` False)."""
    answer = Answer.of_error(ApiError(status, "idempotency_error", code, message))
    answer.storable = False
    return answer


def key_in_use() -> Answer:
    return _about_the_key(409, "idempotency_key_in_use", "a request with this Idempotency-Key "
                          "is still in progress; retry later")


def key_reused() -> Answer:
    return _about_the_key(422, "idempotency_key_reused",
                          "this Idempotency-Key was used with a different request")


@dataclass(frozen=True)
class Claim:
    merchant_id: str
    key: str
    fingerprint: bytes


class IdempotencyStore:
    def __init__(self, cache_entries: int, retention_s: int) -> None:
        self._cache = core_ext.idempotency.IdempotencyCache(max(cache_entries, 1), retention_s)
        self._now = time.time

    def prepare(self, merchant_id: str, key: str | None, method: str, path: str,
                body: object) -> tuple[Claim | None, Answer | None]:
        """The claim to make, or an answer the in-process table already knows."""
        if key is None:
            return None, None
        fingerprint = core_ext.idempotency.request_fingerprint(method, path, merchant_id, body)
        verdict, stored = self._cache.lookup(merchant_id, key, fingerprint, self._now())
        if verdict == core_ext.idempotency.REPLAY:
            return None, replayed(*stored)
        if verdict == core_ext.idempotency.REUSED:
            return None, key_reused()
        if verdict == core_ext.idempotency.IN_FLIGHT:
            # This process is executing that key right now: no need to ask the database.
            return None, key_in_use()
        return Claim(merchant_id, key, fingerprint), None

    @contextlib.contextmanager
    def guard(self, claim: Claim | None) -> Iterator[None]:
        """Around a claimed request: if it ends without a stored answer (an error, a
        timeout, a rollback), forget the in-process in-flight mark; the database's
        claim stays the truth and recovery or a retry settles it."""
        try:
            yield
        except BaseException:
            if claim is not None:
                self._cache.discard(claim.merchant_id, claim.key)
            raise

    async def claim(self, conn: asyncpg.Connection, claim: Claim | None,
                    payment_id: str | None) -> Answer | None:
        """Claim the key in the caller's transaction; an Answer means: do not execute."""
        if claim is None:
            return None
        inserted = await conn.fetchval(
            """INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state, payment_id)
               VALUES ($1, $2, $3, 'in_flight', $4)
               ON CONFLICT (merchant_id, key) DO NOTHING RETURNING true""",
            claim.merchant_id, claim.key, claim.fingerprint, payment_id,
        )
        if inserted:
            self.began(claim)
            return None
        row = await conn.fetchrow(
            """SELECT fingerprint, state, response_status, response_body FROM idempotency_keys
                WHERE merchant_id = $1 AND key = $2""",
            claim.merchant_id, claim.key,
        )
        return self.judge(claim, row)

    def began(self, claim: Claim) -> None:
        """The claim was won (in a batch): mark it in flight in this process."""
        self._cache.begin(claim.merchant_id, claim.key, claim.fingerprint, self._now())

    def judge(self, claim: Claim, row: asyncpg.Record | None) -> Answer:
        """The answer for a request whose claim lost to ``row``, the key's record."""
        if row is None:  # swept between the two statements: treat as still contended
            return key_in_use()
        if bytes(row["fingerprint"]) != claim.fingerprint:
            return key_reused()
        if row["state"] == "in_flight":
            return key_in_use()
        self._cache.complete(claim.merchant_id, claim.key, claim.fingerprint,
                             row["response_status"], bytes(row["response_body"]), self._now())
        return replayed(row["response_status"], row["response_body"])

    async def complete(self, conn: asyncpg.Connection, claim: Claim | None,
                       answer: Answer, payment_id: str | None = None) -> None:
        """Store the answer in the caller's transaction (call ``remember`` after commit)."""
        if claim is None:
            return
        await complete_key(conn, claim.merchant_id, claim.key, answer, payment_id)

    def remember(self, claim: Claim | None, answer: Answer) -> None:
        if claim is not None and answer.storable:
            self._cache.complete(claim.merchant_id, claim.key, claim.fingerprint, answer.status,
                                 answer.body, self._now())


async def complete_key(conn: asyncpg.Connection, merchant_id: str, key: str, answer: Answer,
                       payment_id: str | None) -> None:
    await conn.execute(
        """UPDATE idempotency_keys
              SET state = 'completed', response_status = $3, response_body = $4,
                  completed_at = now(), payment_id = coalesce($5, payment_id)
            WHERE merchant_id = $1 AND key = $2""",
        merchant_id, key, answer.status, answer.body, payment_id,
    )


async def sweep_expired(pool: asyncpg.Pool, retention_s: int, batch_rows_max: int = 1000) -> int:
    """Delete completed keys past retention, one bounded batch (callers loop)."""
    result = await pool.execute(
        """DELETE FROM idempotency_keys WHERE ctid IN (
               SELECT ctid FROM idempotency_keys
                WHERE state = 'completed' AND created_at < now() - make_interval(secs => $1)
                LIMIT $2)""",
        float(retention_s), batch_rows_max,
    )
    return int(result.split()[-1])
