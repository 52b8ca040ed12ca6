"""The authorization path's two batch kinds, set-based so the commit pipeline can batch them.

Two kinds, each a handful of statements whatever the batch size:
  intents:      claim Idempotency-Keys and insert 'processing' payments (write-ahead);
  settlements:  record processor outcomes, their ledger entries and the stored answers.
A conflict on one row (a key already claimed, a payment already settled) is
resolved for that row alone; it never fails its neighbours.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson

from gateway.http.answers import Answer
from gateway.http.render import Row, render_payment
from gateway.store import events, ledger, operations, payments
from gateway.store import idempotency as keys
from gateway.store.idempotency import Claim

# A batch of outcomes in one statement: the payments still 'processing' are settled ($2..$8,
# updated_at = $1, the time the answers were rendered with), and only for those (the
# `settled` CTE) are the ledger's transactions and entries inserted ($9..$16, as
# ledger.posting_ctes), the Idempotency-Keys completed with their answers ($17..$21), and
# the events with their webhook deliveries ($22..$27, as events.outbox_ctes): the outbox
# rides the same statement, so an event exists exactly when its change committed. It
# answers a row per payment settled (its id; endpoint_id NULL), then one per delivery
# written (its event's id and its endpoint's).
# authorized_at stays on the database's clock: authorization expiry compares it with now().
SETTLE_SQL = f"""
WITH settled AS (
    UPDATE payments AS p
       SET status = s.status, amount_capturable = s.capturable, amount_captured = s.captured,
           amount_refunded = s.refunded,
           processor_reference = coalesce(s.reference, p.processor_reference),
           decline_code = s.decline_code,
           authorized_at = CASE WHEN s.status IN ('authorized', 'captured') THEN now() END,
           updated_at = $1
      FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                  $7::text[], $8::text[])
           AS s (id, status, capturable, captured, refunded, reference, decline_code)
     WHERE p.id = s.id AND p.status = 'processing'
    RETURNING p.id
), {ledger.posting_ctes(first_parameter=9, only_payments_in="settled")}, completed AS (
    {keys.complete_many_cte(first_parameter=17, only_payments_in="settled")}
), {events.outbox_ctes(first_parameter=22, created_at="$1", only_objects_in="settled")}
SELECT id, NULL AS endpoint_id FROM settled
UNION ALL SELECT event_id, endpoint_id FROM outbox_deliveries
"""

# The events a settled authorization writes, by the status it settles in: an automatic
# capture moves authorize then capture in one commit and writes both.
EVENT_TYPES_BY_STATUS = {
    "authorized": ("payment.authorized",),
    "declined": ("payment.declined",),
    "failed": ("payment.failed",),
    "captured": ("payment.authorized", "payment.captured"),
}


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
    customer_id: str | None = None  # a saved customer's cus_ id
    off_session: bool = False

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
    def __init__(
        self,
        render_answer: Callable[[Row], Answer],
        outbox: events.Outbox,
    ) -> None:
        self._render_answer = render_answer  # payment row -> the Answer it gives and stores
        self._outbox = outbox  # where the deliveries go once their statement committed

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
        recorded state and posts nothing.

        One statement settles the batch: the outcomes, their ledger entries and the keys'
        stored answers, so it is atomic without a transaction of its own. The answers are
        rendered before it, from the intent rows and the outcomes, with the settlement's
        timestamp passed in: what is stored is what is answered."""
        first: dict[str, Settlement] = {}
        for settlement in settlements:
            first.setdefault(settlement.row["id"], settlement)
        unique = list(first.values())
        now = datetime.now(UTC)
        settled_rows = {s.row["id"]: _settled_row(s, now) for s in unique}
        answers = {pid: self._render_answer(row) for pid, row in settled_rows.items()}
        new_events = _settlement_events(settled_rows, answers, now)
        keyed = [s.row for s in unique if s.row["idempotency_key"] is not None]
        postings = [
            ledger.Posting(
                t, s.row["merchant_id"], s.row["id"], s.row["processor"], s.row["currency"]
            )
            for s in unique
            for t in s.transitions
        ]
        entries = ledger.posting_arrays(postings)
        finals = [s.transitions[-1] for s in unique]
        timed_out = [s for s in unique if s.capture_unknown]  # rare: a timed-out capture
        async with conn.transaction() if timed_out else contextlib.nullcontext():
            rows = await conn.fetch(
                SETTLE_SQL,
                now,
                [s.row["id"] for s in unique],
                _column(finals, "status"),
                _column(finals, "amount_capturable"),
                _column(finals, "amount_captured"),
                _column(finals, "amount_refunded"),
                _column(unique, "reference"),
                _column(unique, "decline_code"),
                *entries.columns,
                [r["merchant_id"] for r in keyed],
                [r["idempotency_key"] for r in keyed],
                [answers[r["id"]].status for r in keyed],
                [answers[r["id"]].body for r in keyed],
                [r["id"] for r in keyed],
                *events.outbox_parameters(new_events, self._outbox.lease_s),
            )
            settled = {row["id"] for row in rows if row["endpoint_id"] is None}
            for s in timed_out:
                if s.row["id"] in settled:
                    await operations.insert_pending(
                        conn, s.row, "capture", s.row["amount"], None, None, None
                    )
        ledger.observe_entries(entries.count_for(settled))
        self._outbox.written(
            events.handoffs(
                new_events, now, [(r["id"], r["endpoint_id"]) for r in rows if r["endpoint_id"]]
            )
        )
        lagging = [s.row["id"] for s in settlements if s.row["id"] not in settled]
        if lagging:
            for row in await payments.by_ids(conn, lagging):
                answers[row["id"]] = self._render_answer(row)
        return [answers[s.row["id"]] for s in settlements]


def _settlement_events(
    rows: dict[str, dict], answers: dict[str, Answer], now: datetime
) -> list[events.NewEvent]:
    """Each settled payment's events, its object as GET returns it right after the commit
    (the 201 body itself when the answer is the payment)."""
    new_events = []
    for payment_id, row in rows.items():
        answer = answers[payment_id]
        rendered = answer.body if answer.status == 201 else orjson.dumps(render_payment(row))
        for event_type in EVENT_TYPES_BY_STATUS.get(row["status"], ()):
            new_events.append(
                events.NewEvent.of(row["merchant_id"], event_type, payment_id, now, rendered)
            )
    return new_events


def _settled_row(settlement: Settlement, now: datetime) -> dict:
    """The payment row as SETTLE_SQL leaves it, if this settlement is the one that settles
    it: the intent's row with the outcome's columns."""
    final = settlement.transitions[-1]
    row = dict(settlement.row)
    row.update(
        status=final.status,
        amount_capturable=final.amount_capturable,
        amount_captured=final.amount_captured,
        amount_refunded=final.amount_refunded,
        processor_reference=settlement.reference or row["processor_reference"],
        decline_code=settlement.decline_code,
        updated_at=now,
    )
    return row
