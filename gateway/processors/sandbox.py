"""The built-in ``sandbox`` processor: answers by card number as API.md's table says.

The sandbox keeps its own books in ``sandbox_operations`` (the processor's truth,
separate from ours), idempotent by our operation reference, so recovery can ask
it what really happened and tests can count what it really did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from gateway.processors.base import APPROVED, DECLINED, NOT_FOUND, Outcome, ProcessorError
from gateway.store.pipeline import Batcher, BatchSettings

SANDBOX_DECLINES = {
    "4000000000000002": "generic_decline",
    "4000000000009995": "insufficient_funds",
    "4000000000009987": "lost_card",
    "4000000000000069": "expired_card",
    "4000000000000127": "incorrect_cvc",
}
SANDBOX_ERROR_CARD = "4000000000000119"
# Stripe has no timeout card: API.md puts Kassa's own behaviours in the 4000 0099 9 range,
# which Stripe does not use, so Stripe's numbers keep Stripe's meanings (4000000000000259,
# "disputed after capture", simply approves until disputes exist).
SANDBOX_TIMEOUT_CARD = "4000009990000005"
SANDBOX_HANG_S = 3600.0  # the timeout card's payments never answer; our own timeout cuts it


RECORD_OPERATIONS_SQL = """
INSERT INTO sandbox_operations (payment_id, operation, reference, outcome, amount, answer_lost)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::boolean[])
ON CONFLICT (operation, reference) DO NOTHING
"""

# Payments of the timeout card, among those a batch's captures, voids and refunds are of:
# every answer about them is lost (the flag is set on the payment's 'authorize' row, of
# whichever attempt).
ANSWERS_LOST_SQL = """
SELECT payment_id AS reference FROM sandbox_operations
 WHERE operation = 'authorize' AND answer_lost AND payment_id = any($1::text[])
"""

OPERATION_SQL = """
SELECT outcome FROM sandbox_operations WHERE operation = $1 AND reference = $2
"""


async def _write_operations(conn: asyncpg.Connection, rows: Sequence[tuple]) -> list[bool]:
    """Book the operations; per row, whether the answer about it never reaches the gateway.
    A batch of authorizations alone (the common case) is one statement: only later
    operations need their payment's flag looked up."""
    await conn.execute(RECORD_OPERATIONS_SQL, *[list(column) for column in zip(*rows)])
    later = [row[0] for row in rows if row[1] != "authorize"]
    lost: set[str] = set()
    if later:
        lost = {found["reference"] for found in await conn.fetch(ANSWERS_LOST_SQL, later)}
    return [bool(row[5]) or (row[1] != "authorize" and row[0] in lost) for row in rows]


class SandboxConnector:
    name = "sandbox"

    def __init__(
        self, pool: asyncpg.Pool, latency_ms: int = 0, batching: BatchSettings | None = None
    ) -> None:
        self._pool = pool
        self._latency_s = latency_ms / 1000
        # The sandbox commits its books in groups too, or it would cap our throughput.
        # Its one modifying statement is atomic alone: no BEGIN and COMMIT around it.
        self._books = Batcher(
            "sandbox",
            pool,
            _write_operations,
            batching or BatchSettings(False, 1, 0.0, 1_000_000, 2.0),
            transactional=False,
        )

    async def close(self) -> None:
        await self._books.close()

    async def _record(
        self,
        payment_id: str,
        operation: str,
        reference: str,
        outcome: str,
        amount: int,
        answer_lost: bool = False,
    ) -> None:
        """Book the operation; then, for a payment of the timeout card, hang: the processor
        did it, but its answer never reaches us."""
        if await self._books.submit(
            (payment_id, operation, reference, outcome, amount, answer_lost), sheddable=False
        ):
            await asyncio.sleep(SANDBOX_HANG_S)

    async def _wait(self) -> None:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)

    async def authorize(
        self, payment_id: str, number: str, amount: int, currency: str, reference: str | None = None
    ) -> Outcome:
        await self._wait()
        ours = reference or payment_id  # this attempt's id (the payment's, for the first)
        if number == SANDBOX_ERROR_CARD:
            raise ProcessorError("sandbox processor error (test card 4000000000000119)")
        if number == SANDBOX_TIMEOUT_CARD:
            # The processor approves, but its answer never reaches us (nor any later one).
            await self._record(payment_id, "authorize", ours, APPROVED, amount, answer_lost=True)
        decline_code = SANDBOX_DECLINES.get(number)
        result = DECLINED if decline_code else APPROVED
        await self._record(payment_id, "authorize", ours, result, amount)
        return Outcome(result, decline_code, "sbx_" + ours.removeprefix("pay_"))

    async def capture(self, payment_id: str, amount: int) -> Outcome:
        await self._wait()
        await self._record(payment_id, "capture", payment_id, APPROVED, amount)
        return Outcome(APPROVED)

    async def void(self, payment_id: str, amount: int) -> Outcome:
        await self._wait()
        await self._record(payment_id, "void", payment_id, APPROVED, amount)
        return Outcome(APPROVED)

    async def refund(self, payment_id: str, refund_id: str, amount: int) -> Outcome:
        await self._wait()
        await self._record(payment_id, "refund", refund_id, APPROVED, amount)
        return Outcome(APPROVED, reference="sbx_" + refund_id.removeprefix("re_"))

    async def status(self, payment_id: str, reference: str | None = None) -> Outcome:
        ours = reference or payment_id
        row = await self._pool.fetchrow(
            """SELECT outcome FROM sandbox_operations
                WHERE operation = 'authorize' AND reference = $1""",
            ours,
        )
        if row is None:
            return Outcome(NOT_FOUND)
        reference = "sbx_" + ours.removeprefix("pay_")
        decline = None if row["outcome"] == APPROVED else "generic_decline"
        return Outcome(row["outcome"], decline, reference)

    async def operation_status(self, payment_id: str, operation: str, reference: str) -> Outcome:
        """What became of a capture, void or refund (``reference``: the payment id, or the
        refund id): the sandbox approves every one it received."""
        outcome = await self._pool.fetchval(OPERATION_SQL, operation, reference)
        if outcome is None:
            return Outcome(NOT_FOUND)
        if operation == "refund":
            return Outcome(outcome, reference="sbx_" + reference.removeprefix("re_"))
        return Outcome(outcome)
