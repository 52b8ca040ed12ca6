"""Idempotency-Key handling (API.md): the database decides, the core's table is a fast path.

A request with a key first claims ``(merchant, key)`` in ``idempotency_keys``
inside the same transaction as its intent; the answer it gives is stored on
completion. Another request with the same key finds the claim and is answered
from it: replayed, ``409 idempotency_key_in_use`` or ``422 idempotency_key_reused``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg

import core_ext
from gateway.http.answers import Answer, key_in_use, key_reused, replayed
from gateway.store import events
from gateway.store import idempotency as keys
from gateway.store.idempotency import Claim

# What a POST does inside its transaction: its answer and the events it writes.
Work = Callable[[asyncpg.Connection], Awaitable[tuple[Answer, list[events.NewEvent]]]]


class IdempotencyStore:
    def __init__(self, cache_entries: int, retention_s: int) -> None:
        self._cache = core_ext.idempotency.IdempotencyCache(max(cache_entries, 1), retention_s)
        self._now = time.time

    def prepare(
        self, merchant_id: str, key: str | None, method: str, path: str, body: object
    ) -> tuple[Claim | None, Answer | None]:
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

    async def claim(
        self, conn: asyncpg.Connection, claim: Claim | None, payment_id: str | None
    ) -> Answer | None:
        """Claim the key in the caller's transaction; an Answer means: do not execute."""
        if claim is None:
            return None
        if await keys.claim_one(conn, claim.merchant_id, claim.key, claim.fingerprint, payment_id):
            self.began(claim)
            return None
        return self.judge(claim, await keys.record(conn, claim.merchant_id, claim.key))

    def began(self, claim: Claim) -> None:
        """The claim was won (in a batch): mark it in flight in this process."""
        self._cache.begin(claim.merchant_id, claim.key, claim.fingerprint, self._now())

    def judge(self, claim: Claim, row: asyncpg.Record | None) -> Answer:
        """The answer for a request whose claim lost to ``row``, the key's record."""
        if row is None:  # swept between the two statements: treat as still contended
            return key_in_use()
        # The same verdict as the in-process table's (prepare): decided once, in the core.
        verdict = core_ext.idempotency.verdict(
            bytes(row["fingerprint"]), row["state"] == "completed", claim.fingerprint
        )
        if verdict == core_ext.idempotency.REUSED:
            return key_reused()
        if verdict == core_ext.idempotency.IN_FLIGHT:
            return key_in_use()
        self._cache.complete(
            claim.merchant_id,
            claim.key,
            claim.fingerprint,
            row["response_status"],
            bytes(row["response_body"]),
            self._now(),
        )
        return replayed(row["response_status"], row["response_body"])

    async def complete(
        self,
        conn: asyncpg.Connection,
        claim: Claim | None,
        answer: Answer,
        payment_id: str | None = None,
    ) -> None:
        """Store the answer in the caller's transaction (call ``remember`` after commit)."""
        if claim is None:
            return
        await keys.complete_one(
            conn, claim.merchant_id, claim.key, answer.status, answer.body, payment_id
        )

    async def complete_key(
        self, conn: asyncpg.Connection, merchant_id: str, key: str | None, answer: Answer
    ) -> None:
        """Store the answer of a claim made earlier, perhaps by another process (an
        operation recovery settled): by (merchant, key) alone."""
        if key is not None:
            await keys.complete_one(conn, merchant_id, key, answer.status, answer.body)

    async def stored(
        self, conn: asyncpg.Connection, merchant_id: str, key: str | None
    ) -> Answer | None:
        """The answer stored for the key, if it is completed."""
        row = None if key is None else await keys.record(conn, merchant_id, key)
        if row is None or row["state"] != "completed":
            return None
        return Answer(row["response_status"], bytes(row["response_body"]))

    async def post(
        self,
        acquire: Callable[[], Any],
        merchant_id: str,
        key: str | None,
        path: str,
        body: object,
        work: Work,
        outbox: events.Outbox | None = None,
    ) -> Answer:
        """One POST whose whole effect is ``work`` (on a connection from ``acquire``): its
        key claimed, the work done, its events written and its answer stored, in one
        transaction; the deliveries written handed to ``outbox`` after the commit (a
        work without events needs none). An ApiError raised by ``work`` rolls it all
        back, the claim too, so a 404 is not stored."""
        claim, known = self.prepare(merchant_id, key, "POST", path, body)
        if known:
            return known
        handed: list[events.Handoff] = []
        with self.guard(claim):
            async with acquire() as conn, conn.transaction():
                conflict = await self.claim(conn, claim, None)
                if conflict:
                    return conflict
                answer, new_events = await work(conn)
                if new_events:
                    if outbox is None:
                        raise RuntimeError(f"POST {path} wrote events with no outbox for them")
                    now = datetime.now(UTC)
                    handed = await events.write(conn, new_events, now, outbox.lease_s)
                await self.complete(conn, claim, answer)
        self.remember(claim, answer)
        if outbox is not None:
            outbox.written(handed)
        return answer

    def remember(self, claim: Claim | None, answer: Answer) -> None:
        if claim is not None and answer.storable:
            self._cache.complete(
                claim.merchant_id,
                claim.key,
                claim.fingerprint,
                answer.status,
                answer.body,
                self._now(),
            )
