"""The authorization path's writes, set-based so the pipeline can batch them.

Two kinds, each a handful of statements whatever the batch size:
  intents:      claim Idempotency-Keys and insert 'processing' payments (write-ahead);
  settlements:  record processor outcomes, their ledger entries and the stored answers.
A conflict on one row (a key already claimed, a payment already settled) is
resolved for that row alone; it never fails its neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from gateway import ledger
from gateway.idempotency import Answer, Claim, IdempotencyStore

CLAIM_KEYS_SQL = """
INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state, payment_id)
SELECT merchant_id, key, fingerprint, 'in_flight', payment_id
  FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
       AS claim (merchant_id, key, fingerprint, payment_id)
ON CONFLICT (merchant_id, key) DO NOTHING
RETURNING payment_id
"""

LOST_CLAIMS_SQL = """
SELECT k.merchant_id, k.key, k.fingerprint, k.state, k.response_status, k.response_body
  FROM idempotency_keys k
  JOIN unnest($1::text[], $2::text[]) AS lost (merchant_id, key)
    ON k.merchant_id = lost.merchant_id AND k.key = lost.key
"""

INSERT_PAYMENTS_SQL = """
INSERT INTO payments (id, merchant_id, status, amount, currency, capture_method,
    card_brand, card_last4, card_exp_month, card_exp_year, card_fingerprint, token_id,
    processor, reference, description, metadata, customer, idempotency_key)
SELECT id, merchant_id, 'processing', amount, currency, capture_method, card_brand,
       card_last4, card_exp_month, card_exp_year, card_fingerprint, token_id, processor,
       reference, description, metadata::jsonb, customer::jsonb, idempotency_key
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::smallint[], $9::smallint[], $10::text[], $11::text[],
              $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[])
       AS p (id, merchant_id, amount, currency, capture_method, card_brand, card_last4,
             card_exp_month, card_exp_year, card_fingerprint, token_id, processor,
             reference, description, metadata, customer, idempotency_key)
RETURNING *
"""

SETTLE_PAYMENTS_SQL = """
UPDATE payments AS p
   SET status = s.status, amount_capturable = s.capturable, amount_captured = s.captured,
       amount_refunded = s.refunded,
       processor_reference = coalesce(s.reference, p.processor_reference),
       decline_code = s.decline_code,
       authorized_at = CASE WHEN s.status IN ('authorized', 'captured') THEN now() END,
       updated_at = now()
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[],
              $7::text[])
       AS s (id, status, capturable, captured, refunded, reference, decline_code)
 WHERE p.id = s.id AND p.status = 'processing'
RETURNING p.*
"""

COMPLETE_KEYS_SQL = """
UPDATE idempotency_keys AS k
   SET state = 'completed', response_status = a.status, response_body = a.body,
       completed_at = now()
  FROM unnest($1::text[], $2::text[], $3::integer[], $4::bytea[])
       AS a (merchant_id, key, status, body)
 WHERE k.merchant_id = a.merchant_id AND k.key = a.key
"""


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
    row: asyncpg.Record            # the payment as written by its intent
    transitions: tuple             # the core's transitions, in order (authorize[, capture])
    reference: str | None          # the processor's reference
    decline_code: str | None


def _column(items: Sequence[object], name: str) -> list:
    return [getattr(item, name) for item in items]


class AuthorizationWrites:
    def __init__(self, idempotency: IdempotencyStore, render_answer) -> None:
        self._idempotency = idempotency
        self._render_answer = render_answer  # payment row -> the Answer it gives

    async def write_intents(self, conn: asyncpg.Connection,
                            intents: Sequence[Intent]) -> list[asyncpg.Record | Answer]:
        """Per intent: its new payment row, or the answer its lost key claim gives."""
        claimed = [i for i in intents if i.claim is not None]
        won: set[str] = set()
        if claimed:
            rows = await conn.fetch(
                CLAIM_KEYS_SQL, [i.claim.merchant_id for i in claimed],
                [i.claim.key for i in claimed], [i.claim.fingerprint for i in claimed],
                _column(claimed, "payment_id"))
            won = {row["payment_id"] for row in rows}
        going = [i for i in intents if i.claim is None or i.payment_id in won]
        inserted = {}
        if going:
            rows = await conn.fetch(
                INSERT_PAYMENTS_SQL, *[_column(going, name) for name in (
                    "payment_id", "merchant_id", "amount", "currency", "capture_method",
                    "card_brand", "card_last4", "card_exp_month", "card_exp_year",
                    "card_fingerprint", "token_id", "processor", "reference", "description",
                    "metadata_json", "customer_json", "idempotency_key")])
            inserted = {row["id"]: row for row in rows}
        lost = [i for i in claimed if i.payment_id not in won]
        records = {}
        if lost:
            rows = await conn.fetch(LOST_CLAIMS_SQL, [i.claim.merchant_id for i in lost],
                                    [i.claim.key for i in lost])
            records = {(row["merchant_id"], row["key"]): row for row in rows}
        return [inserted[i.payment_id] if i.payment_id in inserted else
                self._idempotency.judge(i.claim, records.get((i.claim.merchant_id, i.claim.key)))
                for i in intents]

    async def write_settlements(self, conn: asyncpg.Connection,
                                settlements: Sequence[Settlement]) -> list[Answer]:
        """Per settlement: the payment's answer. A payment someone else settled first
        (recovery, another worker, a duplicate in this batch) is answered from its
        recorded state and posts nothing."""
        first: dict[str, Settlement] = {}
        for settlement in settlements:
            first.setdefault(settlement.row["id"], settlement)
        unique = list(first.values())
        finals = [s.transitions[-1] for s in unique]
        rows = await conn.fetch(
            SETTLE_PAYMENTS_SQL, [s.row["id"] for s in unique], _column(finals, "status"),
            _column(finals, "amount_capturable"), _column(finals, "amount_captured"),
            _column(finals, "amount_refunded"), _column(unique, "reference"),
            _column(unique, "decline_code"))
        settled = {row["id"]: row for row in rows}
        await ledger.post_many(conn, [
            ledger.Posting(t, s.row["merchant_id"], s.row["id"], s.row["processor"],
                           s.row["currency"])
            for s in unique if s.row["id"] in settled for t in s.transitions])
        answers = {payment_id: self._render_answer(row) for payment_id, row in settled.items()}
        await self._complete_keys(conn, [s.row for s in unique if s.row["id"] in settled],
                                  answers)
        lagging = [s.row["id"] for s in settlements if s.row["id"] not in settled]
        if lagging:
            for row in await conn.fetch("SELECT * FROM payments WHERE id = any($1::text[])",
                                        lagging):
                answers[row["id"]] = self._render_answer(row)
        return [answers[s.row["id"]] for s in settlements]

    async def _complete_keys(self, conn: asyncpg.Connection, rows: list[asyncpg.Record],
                             answers: dict[str, Answer]) -> None:
        keyed = [row for row in rows if row["idempotency_key"] is not None]
        if keyed:
            await conn.execute(
                COMPLETE_KEYS_SQL, [r["merchant_id"] for r in keyed],
                [r["idempotency_key"] for r in keyed],
                [answers[r["id"]].status for r in keyed], [answers[r["id"]].body for r in keyed])
