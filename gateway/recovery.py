"""Background work every worker runs; ``FOR UPDATE SKIP LOCKED`` keeps workers apart.

- Recovery: a payment still 'processing', or a capture, void or refund still
  'pending', after ``recovery_after_s`` lost its answer (timeout, crash). Ask the
  processor what happened and settle it, which also completes its Idempotency-Key
  with the settled answer.
- Expiry: authorizations not captured within ``authorization_ttl_s`` expire.
- Sweep: idempotency keys past retention are deleted in bounded batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg

import core_ext
from gateway import metrics, observability
from gateway.config import Settings
from gateway.payments import PaymentService
from gateway.processors.base import APPROVED, NOT_FOUND, Connector, Outcome
from gateway.store import ledger, operations, payments
from gateway.store.idempotency import sweep_expired

log = logging.getLogger("kassa.recovery")

BATCH_ROWS_MAX = 100  # payments handled per pass, so one pass stays short
# A payment the processor does not know is settled 'failed' only once it is this many
# times KASSA_RECOVERY_AFTER_S old: the first look may race a processor call still running.
NOT_FOUND_FINAL_AFTER = 2
LEDGER_CHECK_INTERVAL_S = 60  # the periodic balance check behind kassa_ledger_verify_ok


@dataclass
class PassResult:
    recovered: int = 0
    operations: int = 0  # captures, voids and refunds settled
    expired: int = 0
    swept: int = 0


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
        outcome = await asyncio.wait_for(connector.status(row["id"]), processor_timeout_s)
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


async def expire_authorizations(pool: asyncpg.Pool, ttl_s: int) -> int:
    expired = 0
    async with pool.acquire() as conn, conn.transaction():
        rows = await payments.lock_expiring(conn, ttl_s, BATCH_ROWS_MAX)
        for row in rows:
            transition = core_ext.states.expire(
                row["status"],
                row["amount"],
                row["amount_capturable"],
                row["amount_captured"],
                row["amount_refunded"],
            )
            if not await payments.expire(conn, row["id"], transition):
                continue  # an operation on it is pending; recovery settles that first
            await ledger.post(conn, transition, row)
            expired += 1
    return expired


async def run_once(
    pool: asyncpg.Pool, service: PaymentService, connector: Connector, settings: Settings
) -> PassResult:
    result = PassResult()
    result.recovered = await recover_processing(
        pool, service, connector, settings.recovery_after_s, settings.processor_timeout_ms / 1000
    )
    result.operations = await recover_operations(
        pool, service, connector, settings.recovery_after_s, settings.processor_timeout_ms / 1000
    )
    result.expired = await expire_authorizations(pool, settings.authorization_ttl_s)
    metrics.AUTHORIZATIONS_EXPIRED.inc(result.expired)
    await observability.refresh_stuck_payments(pool, settings.recovery_after_s)
    result.swept = await sweep_expired(pool, settings.idempotency_retention_s)
    return result


async def run_forever(
    pool: asyncpg.Pool, service: PaymentService, connector: Connector, settings: Settings
) -> None:
    ledger_check_due = 0.0
    while True:
        try:
            await run_once(pool, service, connector, settings)
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
