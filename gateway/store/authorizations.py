"""The authorization path's two batch kinds, set-based so the commit pipeline can batch them.

Two kinds, each a handful of statements whatever the batch size:
  intents:      claim Idempotency-Keys and insert 'processing' payments (write-ahead);
  settlements:  record processor outcomes, their ledger entries and the stored answers.
A conflict on one row (a key already claimed, a payment already settled) is
resolved for that row alone; it never fails its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from gateway.http.answers import Answer
from gateway.store import idempotency as keys
from gateway.store import ledger, operations, payments
from gateway.store.idempotency import Claim


@dataclass(frozen=True)
class Intent:
    claim: Claim | None
    payment_id: str
    merchant_id: str
    amount: int
    currency: str
    capture_method: str
    card_brand: str
    card_last4: str
    card_exp_month: int
    card_exp_year: int
    card_fingerprint: str
    token_id: str | None
    processor: str
    reference: str | None
    description: str | None
    metadata_json: str
    customer_json: str | None

    @property
    def idempotency_key(self) -> str | None:
        return self.claim.key if self.claim is not None else None


@dataclass(frozen=True)
class Settlement:
    row: asyncpg.Record  # the payment as written by its intent
    transitions: tuple  # the core's transitions, in order (authorize[, capture])
    reference: str | None  # the processor's reference
    decline_code: str | None
    # The automatic capture timed out: record it as a pending operation (recovery settles it).
    capture_unknown: bool = False


def _column(items: Sequence[object], name: str) -> list:
    return [getattr(item, name) for item in items]


@dataclass(frozen=True)
class LostClaim:
    """An intent whose Idempotency-Key an earlier request had claimed: not written."""

    record: asyncpg.Record | None  # the key's row (None: swept in between)


class AuthorizationWrites:
    def __init__(self, render_answer: Callable[[asyncpg.Record], Answer]) -> None:
        self._render_answer = render_answer  # payment row -> the Answer it gives and stores

    async def write_intents(
        self, conn: asyncpg.Connection, intents: Sequence[Intent]
    ) -> list[asyncpg.Record | LostClaim]:
        """Per intent: its new payment row, or the record of the key claim it lost.
        One statement (claims and payments together), so the pipeline runs it without a
        transaction of its own; the lost claims' records are a read after it."""
        claimed = [i for i in intents if i.claim is not None]
        inserted = await payments.insert_intents(
            conn,
            [
                [i.claim.merchant_id for i in claimed],
                [i.claim.key for i in claimed],
                [i.claim.fingerprint for i in claimed],
                _column(claimed, "payment_id"),
            ],
            [_column(intents, name) for name in payments.INTENT_COLUMNS],
        )
        lost = [i for i in claimed if i.payment_id not in inserted]
        records = {}
        if lost:
            records = await keys.records(
                conn, [i.claim.merchant_id for i in lost], [i.claim.key for i in lost]
            )
        return [
            inserted[i.payment_id]
            if i.payment_id in inserted
            else LostClaim(records.get((i.claim.merchant_id, i.claim.key)))
            for i in intents
        ]

    async def write_settlements(
        self, conn: asyncpg.Connection, settlements: Sequence[Settlement]
    ) -> list[Answer]:
        """Per settlement: the payment's answer. A payment someone else settled first
        (recovery, another worker, a duplicate in this batch) is answered from its
        recorded state and posts nothing."""
        first: dict[str, Settlement] = {}
        for settlement in settlements:
            first.setdefault(settlement.row["id"], settlement)
        unique = list(first.values())
        finals = [s.transitions[-1] for s in unique]
        settled = await payments.settle_many(
            conn,
            [s.row["id"] for s in unique],
            _column(finals, "status"),
            _column(finals, "amount_capturable"),
            _column(finals, "amount_captured"),
            _column(finals, "amount_refunded"),
            _column(unique, "reference"),
            _column(unique, "decline_code"),
        )
        await ledger.post_many(
            conn,
            [
                ledger.Posting(
                    t, s.row["merchant_id"], s.row["id"], s.row["processor"], s.row["currency"]
                )
                for s in unique
                if s.row["id"] in settled
                for t in s.transitions
            ],
        )
        for s in unique:
            if s.capture_unknown and s.row["id"] in settled:  # rare: a timed-out capture
                await operations.insert_pending(
                    conn, s.row, "capture", s.row["amount"], None, None, None
                )
        answers = {payment_id: self._render_answer(row) for payment_id, row in settled.items()}
        await self._complete_keys(conn, [s.row for s in unique if s.row["id"] in settled], answers)
        lagging = [s.row["id"] for s in settlements if s.row["id"] not in settled]
        if lagging:
            for row in await payments.by_ids(conn, lagging):
                answers[row["id"]] = self._render_answer(row)
        return [answers[s.row["id"]] for s in settlements]

    async def _complete_keys(
        self, conn: asyncpg.Connection, rows: list[asyncpg.Record], answers: dict[str, Answer]
    ) -> None:
        keyed = [row for row in rows if row["idempotency_key"] is not None]
        if keyed:
            await keys.complete_many(
                conn,
                [r["merchant_id"] for r in keyed],
                [r["idempotency_key"] for r in keyed],
                [answers[r["id"]].status for r in keyed],
                [answers[r["id"]].body for r in keyed],
            )
