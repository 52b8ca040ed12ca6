"""Background work every worker runs; ``FOR UPDATE SKIP LOCKED`` keeps workers apart.

- Recovery: a payment still 'processing', or a capture, void or refund still
  'pending', after ``recovery_after_s`` lost its answer (timeout, crash). Ask the
  processor what happened and settle it, which also completes its Idempotency-Key
  with the settled answer.
- Expiry: authorizations not captured within ``authorization_ttl_s`` expire, and so do
  payments still waiting before the processor after ``unconfirmed_payment_ttl_s``.
- Checkout: open sessions whose payment succeeded are completed, and those past their
  deadline expire (their payment canceled with them), each with its event.
- Sweep: idempotency keys past retention are deleted in bounded batches, and so are
  events (with their deliveries and attempts) past retention.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

import core_ext
from gateway import metrics, observability
from gateway.checkout.service import CheckoutService
from gateway.config import Settings
from gateway.http.render import render_payment
from gateway.payments import PaymentService, attempt_number
from gateway.processors.base import APPROVED, NOT_FOUND, Connector, Outcome, attempt_reference
from gateway.store import events, ledger, operations, payments
from gateway.store.idempotency import sweep_expired

log = logging.getLogger("kassa.recovery")

BATCH_ROWS_MAX = 100  # payments handled per pass, so one pass stays short
# A payment the processor does not know is settled 'failed' only once it is this many
# times KASSA_RECOVERY_AFTER_S old: the first look may race a processor call still running.
NOT_FOUND_FINAL_AFTER = 2
LEDGER_CHECK_INTERVAL_S = 60  # the periodic balance check behind kassa_ledger_verify_ok
EVENT_RETENTION_S = 30 * 86_400  # API.md: events are kept at least 30 days
PRUNE_BATCH_ROWS = 5_000  # rows per DELETE, so no pass holds locks for long
PRUNE_BATCHES_PER_PASS = 10  # past this, the next pass goes on


@dataclass
class PassResult:
    recovered: int = 0
    operations: int = 0  # captures, voids and refunds settled
    expired: int = 0
    unconfirmed_expired: int = 0  # payments that never reached the processor
    sessions: int = 0  # checkout sessions completed or expired
    swept: int = 0
    pruned: int = 0  # old events deleted (with their deliveries and attempts)


async def recover_processing(
    pool: asyncpg.Pool,
    service: PaymentService,
    connector: Connector,
    older_than_s: int,
    processor_timeout_s: float = 10.0,
) -> int:
    rows = await payments.processing_due(pool, older_than_s, BATCH_ROWS_MAX)
    settled = 0
    for row in rows:
        # Bounded like every processor call: a hung status lookup must not stall recovery
        # (the TimeoutError fails this pass; the next pass asks again).
        # About the attempt the payment is processing (a payment confirmed again after a
        # decline has a reference per attempt), never an earlier one.
        reference = attempt_reference(row["id"], attempt_number(row))
        outcome = await asyncio.wait_for(
            connector.status(row["id"])
            if reference is None
            else connector.status(row["id"], reference),
            processor_timeout_s,
        )
        if outcome.result == NOT_FOUND:
            if row["age_s"] < NOT_FOUND_FINAL_AFTER * older_than_s:
                # Not seen *yet*: a gateway may still be inside its processor call (its
                # intent committed late in its timeout, or it runs a longer one). Ask again
                # on a later pass rather than fail a payment the processor may approve.
                continue
            # The processor never saw it (we died before the call): nothing was charged.
            outcome = Outcome("failed")
        await service.settle(row, outcome)
        metrics.recovery_action(outcome.result)
        settled += 1
        log.info("recovered payment %s as %s", row["id"], outcome.result)
    return settled


async def recover_operations(
    pool: asyncpg.Pool,
    service: PaymentService,
    connector: Connector,
    older_than_s: int,
    processor_timeout_s: float = 10.0,
) -> int:
    """Settle captures, voids and refunds whose answer was lost: applied if the processor
    did them, failed (nothing changed) if it never received them."""
    rows = await operations.pending_due(pool, older_than_s, BATCH_ROWS_MAX)
    settled = 0
    for op in rows:
        outcome = await asyncio.wait_for(
            connector.operation_status(op["payment_id"], op["operation"], operations.reference(op)),
            processor_timeout_s,
        )
        if outcome.result == NOT_FOUND and op["age_s"] < NOT_FOUND_FINAL_AFTER * older_than_s:
            continue  # not seen *yet*: the call may still be on its way (see above)
        approved = outcome.result == APPROVED
        async with pool.acquire() as conn:
            await service.settle_operation(conn, op, approved)
        metrics.recovery_action(APPROVED if approved else "failed")
        settled += 1
        log.info(
            "recovered %s %s of payment %s as %s",
            op["operation"],
            op["id"],
            op["payment_id"],
            "approved" if approved else "failed",
        )
    return settled


async def expire_authorizations(
    pool: asyncpg.Pool, ttl_s: int, outbox: events.Outbox | None = None
) -> int:
    """Expire old authorizations, each with its ``payment.expired`` event, in one
    transaction; their webhook deliveries go to ``outbox`` after it committed."""

    async def lock(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return await payments.lock_expiring(conn, ttl_s, BATCH_ROWS_MAX)

    async def expire(
        conn: asyncpg.Connection, row: asyncpg.Record, transition: Any
    ) -> asyncpg.Record | None:
        return await payments.expire(conn, row["id"], transition)

    return await _expire(pool, lock, expire, outbox or events.Outbox())


async def expire_unconfirmed(
    pool: asyncpg.Pool, ttl_s: int, outbox: events.Outbox | None = None
) -> int:
    """Expire payments left in requires_payment_method or requires_confirmation, each with
    its ``payment.expired`` event, in one transaction. They hold no money: nothing is
    posted (the core's transition moves nothing) and no processor is asked."""

    async def lock(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return await payments.lock_unconfirmed_expiring(conn, ttl_s, BATCH_ROWS_MAX)

    async def expire(
        conn: asyncpg.Connection, row: asyncpg.Record, transition: Any
    ) -> asyncpg.Record | None:
        return await payments.expire_unconfirmed(conn, row["id"], transition.status)

    return await _expire(pool, lock, expire, outbox or events.Outbox())


async def _expire(
    pool: asyncpg.Pool,
    lock: Callable[[asyncpg.Connection], Awaitable[list[asyncpg.Record]]],
    expire: Callable[[asyncpg.Connection, asyncpg.Record, Any], Awaitable[asyncpg.Record | None]],
    outbox: events.Outbox,
) -> int:
    """The expiry both kinds share: lock the due rows, move each as the core says (``expire``
    answers None for a row it must leave alone), post what the move posts, and write the
    events in one statement."""
    new_events: list[events.NewEvent] = []
    handed: list[events.Handoff] = []
    async with pool.acquire() as conn, conn.transaction():
        for row in await lock(conn):
            transition = core_ext.states.expire(
                row["status"],
                row["amount"],
                row["amount_capturable"],
                row["amount_captured"],
                row["amount_refunded"],
            )
            updated = await expire(conn, row, transition)
            if updated is None:
                continue  # an operation on it is pending; recovery settles that first
            await ledger.post(conn, transition, row)
            new_events.append(
                events.NewEvent.of(
                    row["merchant_id"],
                    "payment.expired",
                    row["id"],
                    updated["updated_at"],
                    orjson.dumps(render_payment(updated)),
                )
            )
            expired_at = updated["updated_at"]  # now(): the transaction's time, for all
        if new_events:
            handed = await events.write(conn, new_events, expired_at, outbox.lease_s)
    outbox.written(handed)
    return len(new_events)


async def prune_webhooks(pool: asyncpg.Pool) -> int:
    """Events past 30 days, with their deliveries and attempts, in bounded batches (a
    delivered delivery went when it was logged)."""
    pruned = 0
    for _ in range(PRUNE_BATCHES_PER_PASS):
        deleted = await events.prune_events(pool, EVENT_RETENTION_S, PRUNE_BATCH_ROWS)
        pruned += deleted
        if deleted < PRUNE_BATCH_ROWS:
            break
    return pruned


async def run_once(
    pool: asyncpg.Pool,
    service: PaymentService,
    connector: Connector,
    settings: Settings,
    checkout: CheckoutService | None = None,
) -> PassResult:
    result = PassResult()
    result.recovered = await recover_processing(
        pool, service, connector, settings.recovery_after_s, settings.processor_timeout_ms / 1000
    )
    result.operations = await recover_operations(
        pool, service, connector, settings.recovery_after_s, settings.processor_timeout_ms / 1000
    )
    result.expired = await expire_authorizations(pool, settings.authorization_ttl_s, service.outbox)
    metrics.AUTHORIZATIONS_EXPIRED.inc(result.expired)
    result.unconfirmed_expired = await expire_unconfirmed(
        pool, settings.unconfirmed_payment_ttl_s, service.outbox
    )
    if checkout is not None:  # after recovery: a session whose payment it settled completes
        result.sessions = await checkout.run_due()
    await observability.refresh_stuck_payments(pool, settings.recovery_after_s)
    result.swept = await sweep_expired(pool, settings.idempotency_retention_s)
    result.pruned = await prune_webhooks(pool)
    return result


async def run_forever(
    pool: asyncpg.Pool,
    service: PaymentService,
    connector: Connector,
    settings: Settings,
    checkout: CheckoutService | None = None,
) -> None:
    ledger_check_due = 0.0
    while True:
        try:
            await run_once(pool, service, connector, settings, checkout)
            if time.monotonic() >= ledger_check_due:
                ledger_check_due = time.monotonic() + LEDGER_CHECK_INTERVAL_S
                await observability.check_ledger(pool)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database may be restarting; the next pass retries.
            metrics.BACKGROUND_FAILURES.inc()
            log.exception("background pass failed")
        await asyncio.sleep(settings.recovery_interval_s)
