"""The billing scheduler: every gateway process runs one.

It claims due subscriptions (on the real clock, and on test clocks at or before their
frozen time) with FOR UPDATE SKIP LOCKED, in batches of CLAIM_BATCH_MAX, leased for
KASSA_BILLING_LEASE_S, and for each one does the one thing due:

  a period ended        -> the next period and its invoice (UNIQUE per period), charged;
                           at the end of a trial, the subscription becomes active;
  an open invoice due   -> its next attempt, charged (a retry of dunning);
  cancel at period end  -> the subscription ends, canceled.

A charge goes through the API's own payment path (PaymentService.authorize: validation,
risk, write-ahead, processor, ledger, events) with the customer's default card,
off-session, captured at once, under an Idempotency-Key derived from the invoice and the
attempt number. The attempt's row (card and key) is committed before the charge: a
scheduler that crashes mid-charge leaves the attempt pending, and whoever takes the
subscription up after the lease sends the same request again, which the payment path
answers from its record. Many charges of a batch run at once, so the commit pipeline
batches their writes as it batches the API's.

A declined charge makes the subscription past_due and is retried DUNNING_RETRY_DAYS after
the first failure (core_ext.billing.retry_at); after the last, the invoice is
uncollectible and the subscription canceled. A charge no issuer answered (the processor
erred, or a gateway died before the processor had it, which recovery settles as failed)
is not the card's fault: it is tried again ERROR_RETRY_S later (error_retry_at), outside
dunning and with the subscription's status unchanged, so a crash never dunns a customer.
Each step writes its events in the transaction that records it. Time on a test clock is the time the work fell due (a
renewal at its period's start, a retry at its date), so an advance of a year plays the
year out in order, period by period, whatever real time it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

import core_ext
from gateway import metrics
from gateway.config import Settings
from gateway.http.answers import Answer, ApiError
from gateway.http.render import render_invoice, render_subscription
from gateway.ids import new_id
from gateway.payments import PaymentService
from gateway.store import billing as store
from gateway.store import events

log = logging.getLogger("kassa.billing")
calendar = core_ext.billing

CLAIM_BATCH_MAX = 256  # subscriptions one claim takes
BATCHES_IN_FLIGHT_MAX = 3  # claimed batches a process works on at once
# Charges of one process in the payment path at once: a group commit's worth (the
# pipeline's default batch is 128 rows) keeps the batches full, while a few hundred would
# only queue on the connection pool and starve the API's requests of it (measured: 512
# made pool acquires time out under a 10,000-renewal advance; 128 none, and faster).
CHARGES_CONCURRENT_MAX = 128
POLL_INTERVAL_S = 1.0  # how often an idle scheduler looks for due work
ERROR_BACKOFF_S = 1.0  # after a failed round (the database away, say)
RISK_CACHE_TTL_S = 5.0  # merchants' risk limits, as gateway/merchants.py AUTH_CACHE_TTL_S

SUCCEEDED, DECLINED, FAILED = "succeeded", "declined", "failed"


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


def moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def attempt_key(invoice_id: str, attempt: int) -> str:
    """The Idempotency-Key of one charge of an invoice: the same for every retry of that
    attempt, in any process, so it is one request to the payment path."""
    return f"kassa-invoice-{invoice_id}-attempt-{attempt}"


@dataclass
class Charge:
    row: dict[str, Any]  # the claimed subscription, as the charge leaves it
    invoice_id: str
    period_index: int
    attempt: int
    token_id: str | None
    key: str
    happened: datetime  # on the subscription's clock
    outcome: str | None = None  # SUCCEEDED, DECLINED, FAILED; None: unknown (retried later)
    unanswered: bool = False  # FAILED with no issuer's answer: retried soon, outside dunning
    payment_id: str | None = None
    decline_code: str | None = None
    sent_before: asyncpg.Record | None = None  # the payment an earlier run made, if any
    card: asyncpg.Record | None = None  # the token's row, if it is saved to the customer


class Scheduler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        payments: PaymentService,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._payments = payments
        self._acquire_timeout_s = settings.db_acquire_timeout_ms / 1000
        self._lease_s = float(settings.billing_lease_s)
        self._window_s = float(settings.velocity_window_s)
        self._risk_defaults = (
            settings.velocity_merchant_attempts_max,
            settings.velocity_card_attempts_max,
            settings.velocity_card_declines_max,
        )
        self._wakeup = asyncio.Event()
        self._charges = asyncio.Semaphore(CHARGES_CONCURRENT_MAX)
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._risk_by_merchant: dict[str, object] = {}
        self._risk_read_at = float("-inf")

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _acquire(self) -> Any:
        return self._pool.acquire(timeout=self._acquire_timeout_s)

    async def _run_forever(self) -> None:
        while True:
            try:
                claimed = await self._claim_round()
            except Exception:
                log.exception("billing scheduler round failed")
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            if claimed:
                continue
            await self._idle()

    async def _idle(self) -> None:
        """Until woken, a batch of this process finishes (it may have made more work due),
        or POLL_INTERVAL_S passes."""
        self._wakeup.clear()
        waiter = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait(
                {waiter, *self._batches},
                timeout=POLL_INTERVAL_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            # Never left pending: also when this task is canceled (the app shutting down).
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    async def _claim_round(self) -> bool:
        """Claim one batch (test clocks first: someone is waiting on them) if a slot is
        free and start working on it; True if it claimed. With nothing to claim, mark the
        clocks whose work is done ready."""
        if len(self._batches) >= BATCHES_IN_FLIGHT_MAX:
            await asyncio.wait(self._batches, return_when=asyncio.FIRST_COMPLETED)
            return True
        async with self._acquire() as conn:
            rows = await store.claim(conn, True, CLAIM_BATCH_MAX, self._lease_s)
            if not rows:
                rows = await store.claim(conn, False, CLAIM_BATCH_MAX, self._lease_s)
            if not rows:
                if not self._batches:
                    await store.clocks_ready(conn)
                return False
        task = asyncio.create_task(self._work(rows))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        return True

    async def _work(self, rows: list[asyncpg.Record]) -> None:
        try:
            await self.run_batch(rows)
        except Exception:
            # The leases lapse and another round (here or elsewhere) takes them up again.
            log.exception("billing batch of %d subscriptions failed", len(rows))

    async def run_batch(self, rows: list[asyncpg.Record]) -> None:
        """Plan, write ahead, charge and record one claimed batch."""
        charges, ends, renewals = [], [], []
        for record in rows:
            row = dict(record)
            happened = row["next_action_at"] if row["test_clock_id"] else row["clock_now"]
            if row["invoice_id"] is not None:
                attempt = row["attempt_count"] + 1
                token = (
                    row["pending_token_id"] if row["pending_attempt"] else row["default_token_id"]
                )
                charges.append(
                    Charge(
                        row,
                        row["invoice_id"],
                        row["invoice_period_index"],
                        attempt,
                        token,
                        attempt_key(row["invoice_id"], attempt),
                        happened,
                    )
                )
            elif row["cancel_at_period_end"]:
                ends.append(row)
            else:
                renewals.append(row)
        started = time.monotonic()
        charges = await self._write_ahead(charges, renewals, ends)
        written = time.monotonic()
        await asyncio.gather(*(self._charge(charge) for charge in charges))
        charged = time.monotonic()
        await self._record(charges)
        if any(record["test_clock_id"] for record in rows):
            # A clock whose last work this was is ready now, not when this process next
            # runs out of work (another clock's long advance may keep it busy).
            async with self._acquire() as conn:
                await store.clocks_ready(conn)
        for charge in charges:
            metrics.billing_charge(charge.outcome)
        metrics.billing_batch(time.monotonic() - started)
        log.debug(
            "billing batch of %d: write-ahead %.3f s, %d charges %.3f s, record %.3f s",
            len(rows),
            written - started,
            len(charges),
            charged - written,
            time.monotonic() - charged,
        )

    async def _write_ahead(
        self, charges: list[Charge], renewals: list[dict[str, Any]], ends: list[dict[str, Any]]
    ) -> list[Charge]:
        """One transaction: the renewals' new periods and invoices, the ends, every
        charge's attempt row, and their events. The charges to make."""
        now = datetime.now(UTC)
        new_events: list[events.NewEvent] = []
        rows_before = {(c.invoice_id, c.attempt) for c in charges if c.row["pending_attempt"]}
        planned = {}
        for row in renewals:
            index = row["current_period_index"] + 1
            start_s, end_s = calendar.period_bounds(
                unix(row["billing_anchor"]), index, row["interval"], row["interval_count"]
            )
            planned[row["id"]] = (index, moment(start_s), moment(end_s), new_id("in"))
        async with self._acquire() as conn, conn.transaction():
            renewed: dict[str, str] = {}
            if planned:
                ids = list(planned)
                renewed = await store.renew(
                    conn,
                    ids,
                    [planned[i][0] for i in ids],
                    [planned[i][1] for i in ids],
                    [planned[i][2] for i in ids],
                    ["active"] * len(ids),
                    [planned[i][3] for i in ids],
                )
            for row in renewals:
                if row["id"] not in renewed:
                    continue  # changed meanwhile (canceled through the API): nothing due
                index, start, end, _ = planned[row["id"]]
                row.update(
                    current_period_index=index,
                    current_period_start=start,
                    current_period_end=end,
                    status="active",
                    updated_at=now,
                )
                new_events.append(_subscription_event(row, "customer.subscription.updated", now))
                invoice_id = renewed[row["id"]]
                charges.append(
                    Charge(
                        row,
                        invoice_id,
                        index,
                        1,
                        row["default_token_id"],
                        attempt_key(invoice_id, 1),
                        start if row["test_clock_id"] else row["clock_now"],
                    )
                )
            if ends:
                ended = set(
                    await store.end(
                        conn,
                        [row["id"] for row in ends],
                        [row["current_period_end"] for row in ends],
                    )
                )
                metrics.billing_subscriptions_ended("period_end", len(ended))
                for row in ends:
                    if row["id"] in ended:
                        row.update(
                            status="canceled",
                            canceled_at=row["canceled_at"] or row["current_period_end"],
                            ended_at=row["current_period_end"],
                            updated_at=now,
                        )
                        new_events.append(
                            _subscription_event(row, "customer.subscription.deleted", now)
                        )
            stored = {}
            if charges:
                stored = await store.write_attempts(
                    conn,
                    [c.invoice_id for c in charges],
                    [c.attempt for c in charges],
                    [c.token_id for c in charges],
                    [c.key for c in charges],
                )
            with_card = [c for c in charges if c.token_id is not None]
            cards = await store.saved_cards(
                conn,
                [c.row["merchant_id"] for c in with_card],
                [c.row["customer_id"] for c in with_card],
                [c.token_id for c in with_card],  # type: ignore[misc]
            )
            stale = [r["id"] for r in renewals if r["id"] not in renewed]
            if stale:
                await store.release(conn, stale)
            handed = await events.write(conn, new_events, now, self._payments.outbox.lease_s)
        self._payments.outbox.written(handed)
        for charge in charges:  # an attempt written before keeps its card and key
            written = stored[(charge.invoice_id, charge.attempt)]
            charge.token_id, charge.key = written["token_id"], written["idempotency_key"]
            charge.card = cards.get((charge.row["customer_id"], charge.token_id))
        await self._find_sent(charges, rows_before)
        return charges

    async def _find_sent(self, charges: list[Charge], rows_before: set[tuple[str, int]]) -> None:
        """Attempts written before this run (a scheduler crashed after writing them): the
        payment they made, if they made one. Sending the attempt again is answered from
        its Idempotency-Key's record while that is kept; this finds the payment also once
        the record is swept, so a charge is never made twice, however late the retry."""
        again = [c for c in charges if (c.invoice_id, c.attempt) in rows_before]
        if not again:
            return
        async with self._acquire() as conn:
            found = await store.payments_by_keys(
                conn, [c.row["merchant_id"] for c in again], [c.key for c in again]
            )
        for charge in again:
            charge.sent_before = found.get(charge.key)

    async def _risk(self, merchant_id: str) -> object:
        """The merchant's card-testing limits, as an API key of it would have them: read
        once per RISK_CACHE_TTL_S, as fresh as an API key's (gateway/merchants.py)."""
        now = time.monotonic()
        if now - self._risk_read_at > RISK_CACHE_TTL_S:
            self._risk_by_merchant, self._risk_read_at = {}, now
        cache = self._risk_by_merchant
        if merchant_id not in cache:
            async with self._acquire() as conn:
                row = await store.merchant_limits(conn, merchant_id)
            limits = [
                default if row is None or row[name] is None else row[name]
                for name, default in zip(
                    (
                        "velocity_merchant_attempts_max",
                        "velocity_card_attempts_max",
                        "velocity_card_declines_max",
                    ),
                    self._risk_defaults,
                    strict=True,
                )
            ]
            cache[merchant_id] = core_ext.risk.RiskLimits(self._window_s, *limits)
        return cache[merchant_id]

    async def _charge(self, charge: Charge) -> None:
        """One charge through the payment path; its outcome set on ``charge`` (None when
        it is unknown: the attempt stays pending and is sent again after the lease)."""
        row = charge.row
        if charge.sent_before is not None:
            _settle_from_payment(charge, charge.sent_before)
            return
        if charge.token_id is None:  # no saved card to charge: a failed attempt
            charge.outcome = FAILED
            return
        body = {
            "amount": row["amount"],
            "currency": row["currency"],
            "customer": row["customer_id"],
            "payment_method": {"type": "token", "token": charge.token_id},
            "off_session": True,
            "description": f"subscription {row['id']}, period {charge.period_index}",
            "metadata": {"invoice": charge.invoice_id, "subscription": row["id"]},
        }
        risk = await self._risk(row["merchant_id"])
        async with self._charges:
            try:
                answer = await self._payments.authorize(
                    row["merchant_id"], body, charge.key, risk, charge.card
                )
            except ApiError as exc:
                if exc.status in (409, 429) or exc.status >= 500:
                    return  # in flight, overloaded or unknown: the same attempt later
                charge.outcome = FAILED  # the card cannot be charged (expired, removed)
                return
            except Exception:
                log.exception("charge of %s attempt %d failed", charge.invoice_id, charge.attempt)
                return
        _settle(charge, answer)

    async def _record(self, charges: list[Charge]) -> None:
        """One transaction: the outcomes of the batch's charges, their invoices and
        subscriptions, and their events."""
        known = [c for c in charges if c.outcome is not None]
        if not known:
            return
        now = datetime.now(UTC)
        invoice_columns: list[list[Any]] = [[], [], [], [], [], []]
        subscription_columns: list[list[Any]] = [[], [], [], []]
        # invoice -> (its charge, the subscription's status after it, and before)
        plans: dict[str, tuple[Charge, str, str]] = {}
        for c in known:
            row = c.row
            outcome: tuple[Any, ...]  # the invoice's status, payment, failed at, next attempt
            if c.outcome == SUCCEEDED:
                outcome = ("paid", c.payment_id, None, None)
                status, next_action, ended = "active", row["current_period_end"], None
            else:
                if c.unanswered:  # no issuer answered: again soon, outside dunning
                    retry = calendar.error_retry_at(unix(c.happened), c.attempt)
                    failed_at, status_if_open = None, row["status"]
                else:
                    first = (
                        row["first_failed_at"]
                        if c.attempt > 1 and row["first_failed_at"]
                        else c.happened
                    )
                    retry = calendar.retry_at(unix(first), unix(c.happened), c.attempt)
                    failed_at, status_if_open = c.happened, "past_due"
                if retry is None:
                    outcome = ("uncollectible", None, c.happened, None)
                    status, next_action, ended = "canceled", None, c.happened
                else:
                    retry_at = moment(int(retry))  # type: ignore[call-overload]
                    outcome = ("open", None, failed_at, retry_at)
                    status, next_action, ended = status_if_open, retry_at, None
            for column, value in zip(
                invoice_columns, (c.invoice_id, c.attempt, *outcome), strict=True
            ):
                column.append(value)
            for column, value in zip(
                subscription_columns, (row["id"], status, next_action, ended), strict=True
            ):
                column.append(value)
            plans[c.invoice_id] = (c, status, row["status"])
        dunning_ended = 0
        handed: list[events.Handoff] = []
        async with self._acquire() as conn, conn.transaction():
            pending = await store.record_attempts(
                conn,
                [
                    [c.invoice_id for c in known],
                    [c.attempt for c in known],
                    [c.outcome for c in known],
                    [c.payment_id for c in known],
                    [c.decline_code for c in known],
                ],
            )
            keep = [i for i, invoice_id in enumerate(invoice_columns[0]) if invoice_id in pending]
            invoices = await store.record_invoices(
                conn, [[column[i] for i in keep] for column in invoice_columns]
            )
            recorded = {row["id"] for row in invoices}
            subscription_ids = sorted({plans[i][0].row["id"] for i in recorded})
            keep = [i for i, s in enumerate(subscription_columns[0]) if s in subscription_ids]
            await store.record_subscriptions(
                conn, [[column[i] for i in keep] for column in subscription_columns]
            )
            changed = {
                row["id"]: row for row in await store.subscriptions_by_ids(conn, subscription_ids)
            }
            new_events = []
            for invoice in invoices:
                charge, status, before = plans[invoice["id"]]
                merchant_id = invoice["merchant_id"]
                paid = invoice["status"] == "paid"
                new_events.append(
                    events.NewEvent.of(
                        merchant_id,
                        "invoice.paid" if paid else "invoice.payment_failed",
                        invoice["id"],
                        now,
                        orjson.dumps(render_invoice(invoice)),
                    )
                )
                if status != before:
                    kind = "deleted" if status == "canceled" else "updated"
                    dunning_ended += status == "canceled"
                    subscription = changed[charge.row["id"]]
                    new_events.append(
                        events.NewEvent.of(
                            merchant_id,
                            f"customer.subscription.{kind}",
                            subscription["id"],
                            now,
                            orjson.dumps(render_subscription(subscription)),
                        )
                    )
            handed = await events.write(conn, new_events, now, self._payments.outbox.lease_s)
        metrics.billing_subscriptions_ended("dunning", dunning_ended)
        self._payments.outbox.written(handed)


def _settle(charge: Charge, answer: Answer) -> None:
    """The charge's outcome from the payment path's answer."""
    body = orjson.loads(answer.body)
    if answer.status == 201:
        # Captured, or authorized with the automatic capture refused: the money is the
        # customer's to pay either way, and the merchant sees the hold on the payment.
        charge.outcome, charge.payment_id = SUCCEEDED, body["id"]
    elif answer.status in (402, 502):
        error = body["error"]
        charge.outcome = DECLINED if answer.status == 402 else FAILED
        charge.unanswered = answer.status == 502  # the processor erred: no issuer answered
        charge.payment_id, charge.decline_code = error.get("payment_id"), error.get("decline_code")
    # Anything else (a replayed 409 about the key, say): unknown, the same attempt later.


# The statuses of a payment that took the money (an automatic capture: captured, or held
# when the processor refused the capture, as a 201 answer says too; refunded later or not).
CHARGED_STATUSES = frozenset(("authorized", "captured", "partially_refunded", "refunded"))


def _settle_from_payment(charge: Charge, payment: asyncpg.Record) -> None:
    """The outcome of an attempt whose payment exists already: its status decides."""
    status = payment["status"]
    if status == "processing":
        return  # recovery has not settled it yet: unknown, the same attempt later
    charge.payment_id = payment["id"]
    if status in CHARGED_STATUSES:
        charge.outcome = SUCCEEDED
    elif status == "declined":
        charge.outcome, charge.decline_code = DECLINED, payment["decline_code"]
    else:  # failed, voided, expired, canceled: no money taken
        charge.outcome = FAILED
        # Failed by recovery (the processor never had it) or by a processor error.
        charge.unanswered = status == "failed" and payment["decline_code"] is None


def _subscription_event(row: dict[str, Any], event_type: str, now: datetime) -> events.NewEvent:
    rendered = orjson.dumps(render_subscription(row))
    return events.NewEvent.of(row["merchant_id"], event_type, row["id"], now, rendered)
