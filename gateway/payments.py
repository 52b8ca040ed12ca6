"""Payments: authorize, capture, void, refund, tokens and reads.

The core decides (validation, state machine, postings); this module does the
I/O around it in the order that keeps money safe:

  authorize: claim key + payment 'processing' (commit)  ->  processor  ->
             outcome + ledger + stored answer (commit)  ->  answer
  confirm:   claim key + existing payment -> 'processing' (one statement)  ->  the same
             processor call and settlement as authorize
  a create without a payment method, or with "confirm": false, and cancel: one
             transaction (key, payment, stored answer, event); no processor, no ledger
  capture / void / refund: under the payment's change lock (racing requests on one
             payment are serialized): claim key + operation 'pending' (commit)  ->
             processor  ->  amounts + ledger + refund + stored answer (commit)  ->  answer
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg
import orjson

import core_ext
from core_ext.errors import CoreError
from gateway import metrics
from gateway.cards import CardVault
from gateway.config import Settings
from gateway.http.answers import Answer, ApiError, api_error, invalid_request, resource_missing
from gateway.http.params import require_id
from gateway.http.render import (
    answer_for_authorization,
    render_payment,
    render_refund,
    render_token,
)
from gateway.idempotency import Claim, IdempotencyStore
from gateway.ids import keyed_id, new_id
from gateway.processors.base import (
    APPROVED,
    DECLINED,
    Connector,
    Outcome,
    ProcessorError,
    attempt_reference,
)
from gateway.store import billing as billing_store
from gateway.store import events, ledger, operations, payments
from gateway.store import idempotency as idempotency_keys
from gateway.store.authorizations import AuthorizationWrites, Intent, LostClaim, Settlement
from gateway.store.pipeline import Batcher, BatchSettings

states = core_ext.states
SUCCEEDED, FAILED = "succeeded", "failed"  # a settled operation's states
log = logging.getLogger("kassa.payments")


@dataclass(frozen=True)
class ResolvedCard:
    number: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    token_id: str | None


ID_PREFIXES = {"payment": "pay_", "refund": "re_", "token": "tok_"}
# The event a settled capture, void or refund writes (an authorization's: see
# store/authorizations.py EVENT_TYPES_BY_STATUS).
OPERATION_EVENTS = {
    "capture": "payment.captured",
    "void": "payment.voided",
    "refund": "refund.succeeded",
}


def _sources(legal: Callable[[str], object]) -> tuple[str, ...]:
    """The statuses the core allows a move from (asked once, at import): the gateway's SQL
    names the core's states, never its own list."""
    found = []
    for status in states.STATUSES:
        try:
            legal(status)
        except CoreError:
            continue
        found.append(status)
    return tuple(found)


# Confirm with a payment method given: attach it first where the core needs that.
def _confirm_with_method(status: str) -> object:
    if status == states.REQUIRES_PAYMENT_METHOD:
        status = states.attach_payment_method(status, 1, 0, 0, 0).status
    return states.confirm(status, 1, 0, 0, 0)


CONFIRMABLE_WITH_METHOD = _sources(_confirm_with_method)
# Confirm with the payment method the payment has (only requires_confirmation keeps one).
CONFIRMABLE_AS_IS = (states.REQUIRES_CONFIRMATION,)
CANCELED_EVENT = "payment.canceled"


def batch_settings(settings: Settings) -> BatchSettings:
    return BatchSettings(
        enabled=settings.group_commit,
        rows_max=settings.commit_batch_rows_max,
        wait_s=settings.commit_wait_ms / 1000,
        inflight_max=settings.pipeline_inflight_max,
        acquire_timeout_s=settings.db_acquire_timeout_ms / 1000,
    )


class PaymentService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        connector: Connector,
        vault: CardVault,
        idempotency: IdempotencyStore,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._connector = connector
        self._vault = vault
        self._idempotency = idempotency
        self._processor_timeout_s = settings.processor_timeout_ms / 1000
        self._acquire_timeout_s = settings.db_acquire_timeout_ms / 1000
        self._velocity = core_ext.risk.VelocityGuard()
        # The deliveries written with each change go to this process's deliverer after the
        # commit (gateway/webhooks/deliverer.py connects it); others claim what it drops.
        self.outbox = events.Outbox()
        writes = AuthorizationWrites(answer_for_authorization, self.outbox)
        batching = batch_settings(settings)
        # Each batch kind is one statement (see store/authorizations.py): no transaction
        # around it, no BEGIN and COMMIT round trips.
        self._intents = Batcher(
            "intents", pool, writes.write_intents, batching, transactional=False
        )
        self._settlements = Batcher(
            "settlements", pool, writes.write_settlements, batching, transactional=False
        )

    async def close(self) -> None:
        await self._intents.close()
        await self._settlements.close()

    @property
    def processor_name(self) -> str:
        """The processor new payments are sent to (a payment row's ``processor``)."""
        return str(self._connector.name)

    @property
    def pipeline_depth(self) -> int:
        return self._intents.depth + self._settlements.depth

    def _acquire(self):
        return self._pool.acquire(timeout=self._acquire_timeout_s)

    # --- tokens ---------------------------------------------------------------------

    async def create_token(self, merchant_id: str, body: object, key: str | None) -> Answer:
        today = datetime.now(timezone.utc)
        card = core_ext.validation.validate_token(body, today.year, today.month)
        claim, known = self._idempotency.prepare(merchant_id, key, "POST", "/v1/tokens", body)
        if known:
            return known
        token_id = new_id("tok")
        fingerprint = self._vault.fingerprint(merchant_id, card.number)
        with self._idempotency.guard(claim):
            return await self._insert_token(merchant_id, card, token_id, fingerprint, claim)

    async def _insert_token(
        self, merchant_id: str, card: object, token_id: str, fingerprint: str, claim: Claim | None
    ) -> Answer:
        async with self._acquire() as conn, conn.transaction():
            conflict = await self._idempotency.claim(conn, claim, None)
            if conflict:
                return conflict
            await payments.insert_token(
                conn,
                token_id,
                merchant_id,
                card,
                fingerprint,
                self._vault.encrypt_number(card.number, token_id),
            )
            answer = Answer.of_json(
                201,
                render_token(
                    token_id,
                    {
                        "brand": card.brand,
                        "last4": card.last4,
                        "exp_month": card.exp_month,
                        "exp_year": card.exp_year,
                        "fingerprint": fingerprint,
                    },
                ),
            )
            await self._idempotency.complete(conn, claim, answer)
        self._idempotency.remember(claim, answer)
        return answer

    async def _resolve_card(
        self, merchant_id: str, card: object, token: str | None, customer_id: str | None = None
    ) -> ResolvedCard:
        if customer_id is not None:
            return await self._saved_card(merchant_id, customer_id, token)
        if card is not None:
            return ResolvedCard(
                card.number,
                card.brand,
                card.last4,
                card.exp_month,
                card.exp_year,
                self._vault.fingerprint(merchant_id, card.number),
                None,
            )
        row = await self._owned("token", token, merchant_id, param="payment_method.token")
        return self._card_of_token(row)

    def _card_of_token(self, row: asyncpg.Record) -> ResolvedCard:
        """A token's row (its columns, or SAVED_CARD_SQL's) as the card it keeps."""
        number = self._vault.decrypt_number(row["number_ciphertext"], row["id"])
        return ResolvedCard(
            number,
            row["brand"],
            row["last4"],
            row["exp_month"],
            row["exp_year"],
            row["fingerprint"],
            row["id"],
        )

    async def _saved_card(
        self, merchant_id: str, customer_id: str, token: str | None
    ) -> ResolvedCard:
        """A saved customer's own card (the core lets a saved customer pay only with a
        token): another customer's card, or one never saved, is refused."""
        async with self._acquire() as conn:
            row = await billing_store.saved_card(conn, merchant_id, customer_id, token)
        return self._saved_card_of(row, customer_id)

    def _saved_card_of(self, row: asyncpg.Record | None, customer_id: str) -> ResolvedCard:
        """The card of a SAVED_CARD_SQL row (gateway/store/billing.py), or the error."""
        if row is None or row["customer_id"] is None:
            raise resource_missing("customer", customer_id, param="customer")
        if row["id"] is None:
            raise invalid_request(
                "parameter_invalid",
                f"payment_method.token is not a saved card of customer {customer_id}",
                "payment_method.token",
            )
        return self._card_of_token(row)

    # --- authorization ----------------------------------------------------------------

    async def authorize(
        self,
        merchant_id: str,
        body: object,
        key: str | None,
        risk: object,
        saved_card: asyncpg.Record | None = None,
    ) -> Answer:
        """``risk``: the merchant's core_ext.risk.RiskLimits (gateway.merchants.Caller).
        ``saved_card``: the body's customer's card as its SAVED_CARD_SQL row, when the
        caller read it already (the billing scheduler reads a batch's cards in one query);
        used only if it is exactly that customer's and that token's."""
        today = datetime.now(timezone.utc)
        request = core_ext.validation.validate_payment(body, today.year, today.month)
        claim, known = self._idempotency.prepare(merchant_id, key, "POST", "/v1/payments", body)
        if known:
            return known
        if not request.confirm or (request.card is None and request.token is None):
            return await self._create_unconfirmed(merchant_id, request, claim)
        if (
            saved_card is not None
            and request.customer_id is not None
            and saved_card["customer_id"] == request.customer_id
            and saved_card["id"] == request.token
            and saved_card["merchant_id"] == merchant_id
        ):
            card = self._saved_card_of(saved_card, request.customer_id)
        else:
            card = await self._resolve_card(
                merchant_id, request.card, request.token, request.customer_id
            )
        with self._idempotency.guard(claim):
            answer = await self._authorize(merchant_id, request, card, claim, risk)
        self._idempotency.remember(claim, answer)
        return answer

    async def _authorize(
        self,
        merchant_id: str,
        request: object,
        card: ResolvedCard,
        claim: Claim | None,
        risk: object,
    ) -> Answer:
        intent = Intent(
            claim,
            new_id("pay"),
            merchant_id,
            request.amount,
            request.currency,
            request.capture,
            card.brand,
            card.last4,
            card.exp_month,
            card.exp_year,
            card.fingerprint,
            card.token_id,
            self._connector.name,
            request.reference,
            request.description,
            orjson.dumps(request.metadata).decode(),
            orjson.dumps(request.customer).decode() if request.customer else None,
            request.customer_id,
            request.off_session,
        )
        written = await self._intents.submit(intent)
        if isinstance(written, LostClaim):  # the key was claimed by an earlier request
            return self._idempotency.judge(claim, written.record)
        if claim is not None:
            self._idempotency.began(claim)
        return await self._attempt(written, card, risk)

    async def _attempt(self, row: asyncpg.Record, card: ResolvedCard, risk: object) -> Answer:
        """One processor attempt for a payment whose 'processing' intent is durable (a
        create's or a confirm's): card-testing rules, the processor, the settlement."""
        payment_id, merchant_id = row["id"], row["merchant_id"]
        # Risk rules run once per new attempt: a retry with the same key was answered
        # from its claim and never counts as a second attempt.
        rule = self._velocity.check(merchant_id, card.fingerprint, risk, time.monotonic())
        if rule is not None:
            metrics.risk_decline(rule)
            return await self.settle(row, Outcome(DECLINED, core_ext.risk.DECLINE_CODE))
        # The intent is durable: from here a crash leaves a 'processing' payment that
        # recovery settles by asking the processor, never a charge without a record.
        try:
            outcome = await asyncio.wait_for(
                self._connector.authorize(payment_id, card.number, row["amount"], row["currency"])
                if row["earlier_attempts"] is None  # the first attempt, as ever
                else self._connector.authorize(
                    payment_id,
                    card.number,
                    row["amount"],
                    row["currency"],
                    attempt_reference(payment_id, attempt_number(row)),
                ),
                self._processor_timeout_s,
            )
        except ProcessorError:
            outcome = Outcome("failed")
        except TimeoutError:
            raise api_error(
                504,
                "processor_timeout",
                "the processor did not answer in time; the outcome "
                "is unknown and will be settled by recovery. Retry with the same "
                "Idempotency-Key to get the final answer",
                payment_id=payment_id,
            ) from None
        if outcome.result == DECLINED:
            self._velocity.record_decline(merchant_id, card.fingerprint, risk, time.monotonic())
        return await self.settle(row, outcome)

    # --- payments before the processor: create, confirm, cancel ------------------------

    async def _create_unconfirmed(
        self, merchant_id: str, request: object, claim: Claim | None
    ) -> Answer:
        """A payment that waits before the processor: requires_payment_method without a
        payment method, requires_confirmation with one (a card is kept as a token, so
        confirm can send its number). Nothing is posted and no processor is called."""
        card = None
        if request.card is not None or request.token is not None:
            card = await self._resolve_card(
                merchant_id, request.card, request.token, request.customer_id
            )
        payment_id = new_id("pay")
        kept_card = card is not None and card.token_id is None
        token_id = new_id("tok") if kept_card else card.token_id if card else None
        status = states.REQUIRES_PAYMENT_METHOD if card is None else states.REQUIRES_CONFIRMATION
        with self._idempotency.guard(claim):
            async with self._acquire() as conn, conn.transaction():
                conflict = await self._idempotency.claim(conn, claim, payment_id)
                if conflict:
                    return conflict
                if kept_card and card is not None:
                    await payments.insert_token(
                        conn,
                        token_id,
                        merchant_id,
                        request.card,
                        card.fingerprint,
                        self._vault.encrypt_number(card.number, token_id),
                    )
                row = await payments.insert_unconfirmed(
                    conn,
                    status,
                    (
                        payment_id,
                        merchant_id,
                        request.amount,
                        request.currency,
                        request.capture,
                        *(
                            (card.brand, card.last4, card.exp_month, card.exp_year)
                            if card
                            else (None, None, None, None)
                        ),
                        card.fingerprint if card else None,
                        token_id,
                        self._connector.name,
                        request.reference,
                        request.description,
                        orjson.dumps(request.metadata).decode(),
                        orjson.dumps(request.customer).decode() if request.customer else None,
                        claim.key if claim is not None else None,
                        request.customer_id,
                    ),
                )
                answer = Answer.of_json(201, render_payment(row))
                await self._idempotency.complete(conn, claim, answer)
        self._idempotency.remember(claim, answer)
        return answer

    async def confirm(
        self, merchant_id: str, payment_id: str, body: object, key: str | None, risk: object
    ) -> Answer:
        """Start a processor attempt on an existing payment: from requires_confirmation
        (with its payment method or another), requires_payment_method, or declined and
        failed (with another payment method); then exactly the one-step create's path."""
        _require_id_shape("payment", payment_id)
        today = datetime.now(timezone.utc)
        given_card, given_token = core_ext.validation.validate_confirm(
            body, today.year, today.month
        )
        path = f"/v1/payments/{payment_id}/confirm"
        claim, known = self._idempotency.prepare(merchant_id, key, "POST", path, body)
        if known:
            return known
        row = await self._owned("payment", payment_id, merchant_id)
        card: ResolvedCard | None = None
        sources: tuple[str, ...] = ()
        if given_card is not None or given_token is not None:
            card = await self._resolve_card(
                merchant_id, given_card, given_token, row["customer_id"]
            )
            sources = CONFIRMABLE_WITH_METHOD
        elif row["status"] in CONFIRMABLE_AS_IS and row["token_id"] is not None:
            card = await self._resolve_card(merchant_id, None, row["token_id"])
            sources = CONFIRMABLE_AS_IS
        with self._idempotency.guard(claim):
            started = None
            if card is not None:
                async with self._acquire() as conn:
                    started = await payments.confirm(
                        conn,
                        payment_id,
                        merchant_id,
                        sources,
                        claim,
                        (
                            card.brand,
                            card.last4,
                            card.exp_month,
                            card.exp_year,
                            card.fingerprint,
                            card.token_id,
                        ),
                    )
            if started is None:
                return await self._not_confirmed(merchant_id, payment_id, claim, card is None)
            if claim is not None:
                self._idempotency.began(claim)
            answer = await self._attempt(started, card, risk)
        self._idempotency.remember(claim, answer)
        return answer

    async def _not_confirmed(
        self, merchant_id: str, payment_id: str, claim: Claim | None, no_method: bool
    ) -> Answer:
        """Why a confirm changed nothing: its key was claimed before (the verdict on it),
        no payment method to send, or a state confirm cannot start from (the core's 409).
        Nothing was claimed, so nothing is stored."""
        async with self._acquire() as conn:
            if claim is not None:
                record = await idempotency_keys.record(conn, claim.merchant_id, claim.key)
                if record is not None:
                    return self._idempotency.judge(claim, record)
            row = await payments.owned(conn, "payment", payment_id, merchant_id)
        if row is None:
            raise resource_missing("payment", payment_id)
        status = row["status"]
        if status in CONFIRMABLE_WITH_METHOD:
            if no_method:
                raise invalid_request(
                    "parameter_missing",
                    f"payment_method is required to confirm a payment that is {status}",
                    param="payment_method",
                )
        else:
            try:
                states.confirm(
                    status,
                    row["amount"],
                    row["amount_capturable"],
                    row["amount_captured"],
                    row["amount_refunded"],
                )
            except CoreError as exc:
                raise ApiError.from_core(exc) from None
        # Confirmable again by this read: it changed while the statement ran.
        raise invalid_request(
            "payment_state_invalid",
            "the payment changed while it was being confirmed; read it and retry",
            status=409,
        )

    async def cancel(
        self, merchant_id: str, payment_id: str, body: object, key: str | None
    ) -> Answer:
        """Cancel a payment that holds no money (before the processor, declined, failed):
        its status, the stored answer and payment.canceled in one transaction."""
        _require_id_shape("payment", payment_id)
        core_ext.validation.validate_cancel(body)
        path = f"/v1/payments/{payment_id}/cancel"
        claim, known = self._idempotency.prepare(merchant_id, key, "POST", path, body)
        if known:
            return known
        handed: list[events.Handoff] = []
        with self._idempotency.guard(claim):
            async with self._acquire() as conn, conn.transaction():
                row = await payments.lock(conn, payment_id, merchant_id)
                if row is None:
                    raise resource_missing("payment", payment_id)
                conflict = await self._idempotency.claim(conn, claim, payment_id)
                if conflict:
                    return conflict
                try:
                    transition = states.cancel(
                        row["status"],
                        row["amount"],
                        row["amount_capturable"],
                        row["amount_captured"],
                        row["amount_refunded"],
                    )
                except CoreError as exc:
                    # The key was claimed and the request judged: the verdict is the answer.
                    answer = Answer.of_error(ApiError.from_core(exc))
                else:
                    updated = await payments.cancel(conn, payment_id, transition.status)
                    await ledger.post(conn, transition, row)  # moves nothing (the core's)
                    answer = Answer.of_json(200, render_payment(updated))
                    handed = await events.write(
                        conn,
                        [
                            events.NewEvent.of(
                                merchant_id,
                                CANCELED_EVENT,
                                payment_id,
                                updated["updated_at"],
                                answer.body,
                            )
                        ],
                        updated["updated_at"],
                        self.outbox.lease_s,
                    )
                await self._idempotency.complete(conn, claim, answer)
        self.outbox.written(handed)
        self._idempotency.remember(claim, answer)
        return answer

    async def settle(self, row: asyncpg.Record, outcome: Outcome) -> Answer:
        """Record a processor's outcome for a 'processing' payment (request path and recovery)."""
        result = {APPROVED: "approved", DECLINED: "declined"}.get(outcome.result, "failed")
        transitions = [states.settle_authorization(result, row["amount"])]
        capture_unknown = False
        if transitions[0].status == states.AUTHORIZED and row["capture_method"] == "automatic":
            captured = await self._auto_capture(row["id"], row["amount"])
            if captured:
                t = transitions[0]
                transitions.append(
                    states.capture(
                        t.status,
                        row["amount"],
                        t.amount_capturable,
                        t.amount_captured,
                        t.amount_refunded,
                        None,
                    )
                )
            capture_unknown = captured is None
        # Never shed here: the processor has answered, the outcome must be recorded.
        return await self._settlements.submit(
            Settlement(
                row, tuple(transitions), outcome.reference, outcome.decline_code, capture_unknown
            ),
            sheddable=False,
        )

    async def _auto_capture(self, payment_id: str, amount: int) -> bool | None:
        """Capture right after authorizing: True if captured. False if the processor refused:
        the payment stays authorized (held, not taken), which the merchant can capture or
        void later. None if it timed out: the payment is recorded authorized with its
        capture pending, which recovery settles as it settles a timed-out capture."""
        try:
            await asyncio.wait_for(
                self._connector.capture(payment_id, amount), self._processor_timeout_s
            )
        except ProcessorError:
            log.warning("automatic capture of %s failed; it stays authorized", payment_id)
            return False
        except TimeoutError:
            log.warning("automatic capture of %s timed out; recovery will settle it", payment_id)
            return None
        return True

    # --- capture, void, refund --------------------------------------------------------

    async def capture(
        self, merchant_id: str, payment_id: str, body: object, key: str | None
    ) -> Answer:
        requested = core_ext.validation.validate_capture(body)
        return await self._change(merchant_id, payment_id, "capture", requested, None, body, key)

    async def void(
        self, merchant_id: str, payment_id: str, body: object, key: str | None
    ) -> Answer:
        core_ext.validation.validate_void(body)
        return await self._change(merchant_id, payment_id, "void", None, None, body, key)

    async def refund(
        self, merchant_id: str, payment_id: str, body: object, key: str | None
    ) -> Answer:
        requested, reason = core_ext.validation.validate_refund(body)
        return await self._change(merchant_id, payment_id, "refund", requested, reason, body, key)

    async def _change(
        self,
        merchant_id: str,
        payment_id: str,
        operation: str,
        requested: int | None,
        reason: str | None,
        body: object,
        key: str | None,
    ) -> Answer:
        _require_id_shape("payment", payment_id)
        path = f"/v1/payments/{payment_id}/{'refunds' if operation == 'refund' else operation}"
        claim, known = self._idempotency.prepare(merchant_id, key, "POST", path, body)
        if known:
            return known
        with self._idempotency.guard(claim):
            return await self._change_locked(
                merchant_id, payment_id, operation, requested, reason, claim
            )

    async def _change_locked(
        self,
        merchant_id: str,
        payment_id: str,
        operation: str,
        requested: int | None,
        reason: str | None,
        claim: Claim | None,
    ) -> Answer:
        async with self._acquire() as conn, _serialized(conn, payment_id):
            planned = await self._write_ahead(
                conn, merchant_id, payment_id, operation, requested, reason, claim
            )
            if isinstance(planned, Answer):
                answer = planned
            else:
                answer = await self._perform(conn, planned)
        self._idempotency.remember(claim, answer)
        return answer

    async def _write_ahead(
        self,
        conn: asyncpg.Connection,
        merchant_id: str,
        payment_id: str,
        operation: str,
        requested: int | None,
        reason: str | None,
        claim: Claim | None,
    ) -> asyncpg.Record | Answer:
        """Claim the key and commit the operation 'pending' before the processor is called,
        so a lost answer leaves a record recovery settles; or the answer, if the request
        ends here."""
        async with conn.transaction():
            row = await payments.lock(conn, payment_id, merchant_id)
            if row is None:
                raise resource_missing("payment", payment_id)
            conflict = await self._idempotency.claim(conn, claim, payment_id)
            if conflict:
                return conflict
            pending = await operations.pending_on(conn, payment_id)
            if pending is not None:
                # Raised, so the claim rolls back: once settled, a retry with the key runs.
                raise invalid_request(
                    "payment_state_invalid",
                    f"the outcome of an earlier {pending} of this "
                    "payment is unknown (the processor's answer was lost) and is being "
                    "settled; retry later",
                    status=409,
                )
            try:
                transition = _transition(operation, row, requested)
            except CoreError as exc:
                # The key was claimed and the request judged: the verdict is the answer.
                answer = Answer.of_error(ApiError.from_core(exc))
                await self._idempotency.complete(conn, claim, answer)
                return answer
            refund_id = None
            if operation == "refund":
                # With a key, every attempt sends the same refund id, which the processor
                # deduplicates: one key, one refund at the processor too.
                refund_id = (
                    new_id("re") if claim is None else keyed_id("re", claim.merchant_id, claim.key)
                )
            return await operations.insert_pending(
                conn,
                row,
                operation,
                transition.amount,
                refund_id,
                reason,
                claim.key if claim is not None else None,
            )

    async def _perform(self, conn: asyncpg.Connection, op: asyncpg.Record) -> Answer:
        try:
            await asyncio.wait_for(self._call_processor(op), self._processor_timeout_s)
        except ProcessorError:
            return await self.settle_operation(conn, op, approved=False)
        except TimeoutError:
            # The operation stays pending and its key in flight until recovery settles it.
            raise api_error(
                504,
                "processor_timeout",
                f"the processor did not answer the {op['operation']} "
                "in time; the outcome is unknown and will be settled by recovery. Retry "
                "with the same Idempotency-Key to get the final answer",
                payment_id=op["payment_id"],
            ) from None
        return await self.settle_operation(conn, op, approved=True)

    def _call_processor(self, op: asyncpg.Record) -> Awaitable[Outcome]:
        if op["operation"] == "capture":
            return self._connector.capture(op["payment_id"], op["amount"])
        if op["operation"] == "void":
            return self._connector.void(op["payment_id"], op["amount"])
        return self._connector.refund(op["payment_id"], op["refund_id"], op["amount"])

    async def settle_operation(
        self, conn: asyncpg.Connection, op: asyncpg.Record, approved: bool
    ) -> Answer:
        """Record the processor's verdict on a pending capture, void or refund (request path
        and recovery): apply it, or fail it changing nothing; complete its key either way."""
        handed: list[events.Handoff] = []
        async with conn.transaction():
            row = await payments.lock(conn, op["payment_id"], op["merchant_id"])
            if not await operations.finish(conn, op["id"], SUCCEEDED if approved else FAILED):
                return await self._settled_answer(conn, op, approved)
            if approved:
                answer, handed = await self._apply(conn, row, op)
            else:
                answer = Answer.of_error(
                    api_error(
                        502,
                        "processor_error",
                        f"the processor did not {op['operation']} the "
                        "payment; nothing changed. This answer is stored for the Idempotency-Key: "
                        "to try again, use a new key",
                        payment_id=op["payment_id"],
                    )
                )
            await self._idempotency.complete_key(
                conn, op["merchant_id"], op["idempotency_key"], answer
            )
        self.outbox.written(handed)
        return answer

    async def _settled_answer(
        self, conn: asyncpg.Connection, op: asyncpg.Record, approved: bool
    ) -> Answer:
        """Someone settled the operation first (recovery, while this answer was late):
        that settlement stands, and so does the answer it stored."""
        log.warning(
            "operation %s on %s was settled before its answer (%s) arrived",
            op["id"],
            op["payment_id"],
            "approved" if approved else "failed",
        )
        stored = await self._idempotency.stored(conn, op["merchant_id"], op["idempotency_key"])
        if stored is not None:
            return stored
        raise invalid_request(
            "payment_state_invalid",
            f"this {op['operation']} was settled meanwhile; read the payment for its outcome",
            status=409,
        )

    async def _apply(
        self, conn: asyncpg.Connection, row: asyncpg.Record, op: asyncpg.Record
    ) -> tuple[Answer, list[events.Handoff]]:
        """Apply the operation, its postings and its event; the answer and the webhook
        deliveries written."""
        operation, refund_id = op["operation"], op["refund_id"]
        # Nothing changes a payment while its operation is pending, so the move is the one
        # planned; a different one means corrupted data, never something to post.
        transition = _transition(operation, row, None if operation == "void" else op["amount"])
        if transition.amount != op["amount"]:
            raise RuntimeError(
                f"operation {op['id']} on {row['id']} planned {op['amount']}, "
                f"the payment now allows {transition.amount}"
            )
        updated = await payments.update_amounts(conn, row["id"], transition)
        refund_row = None
        if refund_id is not None:
            refund_row = await payments.insert_refund(
                conn, refund_id, row, transition.amount, op["reason"]
            )
        await ledger.post(conn, transition, row, refund_id)
        if refund_row is not None:
            answer = Answer.of_json(201, render_refund(refund_row))
            changed, at = refund_row, refund_row["created_at"]
        else:
            answer = Answer.of_json(200, render_payment(updated))
            changed, at = updated, updated["updated_at"]
        # The event carries the object exactly as answered, in this transaction.
        new_event = events.NewEvent.of(
            row["merchant_id"], OPERATION_EVENTS[operation], changed["id"], at, answer.body
        )
        return answer, await events.write(conn, [new_event], at, self.outbox.lease_s)

    # --- reads ---------------------------------------------------------------------------

    async def _owned(
        self, kind: str, object_id: str, merchant_id: str, param: str = "id"
    ) -> asyncpg.Record:
        """The merchant's own row, or 404: another merchant's id is indistinguishable
        from an unknown one (no existence oracle)."""
        _require_id_shape(kind, object_id, param)
        async with self._acquire() as conn:
            row = await payments.owned(conn, kind, object_id, merchant_id)
        if row is None:
            raise resource_missing(kind, object_id, param=param)
        return row

    async def get_payment(self, merchant_id: str, payment_id: str) -> dict:
        return render_payment(await self.payment_row(merchant_id, payment_id))

    async def payment_row(self, merchant_id: str, payment_id: str) -> asyncpg.Record:
        """The merchant's payment row, or 404: for views that show more than
        ``render_payment`` does (the Stripe tree names the payment's token)."""
        return await self._owned("payment", payment_id, merchant_id)

    async def list_payments(self, merchant_id: str, query: object) -> dict:
        rows, has_more = await self.list_payment_rows(merchant_id, query)
        return {
            "object": "list",
            "data": [render_payment(row) for row in rows],
            "has_more": has_more,
        }

    async def list_payment_rows(
        self, merchant_id: str, query: object
    ) -> tuple[list[asyncpg.Record], bool]:
        """One page of payment rows for a native list query, and whether more follow."""
        limit, starting_after, status = core_ext.validation.validate_list_query(query)
        cursor = None
        if starting_after is not None:
            cursor = await self._owned(
                "payment", starting_after, merchant_id, param="starting_after"
            )
        async with self._acquire() as conn:
            rows = await payments.list_page(conn, merchant_id, status, cursor, limit + 1)
        return rows[:limit], len(rows) > limit

    async def get_refund(self, merchant_id: str, refund_id: str) -> dict:
        return render_refund(await self._owned("refund", refund_id, merchant_id))

    async def list_refunds(
        self, merchant_id: str, payment_id: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[dict], bool]:
        """One page of the merchant's refunds (of one payment, if given), newest first, and
        whether more follow. ``limit`` is the caller's, already checked."""
        if payment_id is not None:
            await self._owned("payment", payment_id, merchant_id)
        cursor = None
        if starting_after is not None:
            cursor = await self._owned("refund", starting_after, merchant_id, "starting_after")
        async with self._acquire() as conn:
            rows = await payments.refunds_page(conn, merchant_id, payment_id, cursor, limit + 1)
        return [render_refund(row) for row in rows[:limit]], len(rows) > limit

    async def get_token(self, merchant_id: str, token_id: str) -> tuple[dict, datetime]:
        """The merchant's token as rendered, and when it was made; 404 if not theirs."""
        row = await self._owned("token", token_id, merchant_id)
        card = {
            "brand": row["brand"],
            "last4": row["last4"],
            "exp_month": row["exp_month"],
            "exp_year": row["exp_year"],
            "fingerprint": row["fingerprint"],
        }
        return render_token(row["id"], card), row["created_at"]

    def fingerprint(self, merchant_id: str, number: str) -> str:
        """The card's fingerprint for this merchant, as a payment with it would show."""
        return self._vault.fingerprint(merchant_id, number)

    async def balance(self, merchant_id: str) -> dict:
        async with self._acquire() as conn:
            return {"object": "balance", "currencies": await ledger.balance(conn, merchant_id)}


@contextlib.asynccontextmanager
async def _serialized(conn: asyncpg.Connection, payment_id: str) -> AsyncIterator[None]:
    """Changes of one payment run one at a time, across every gateway process: a session
    lock held from the write-ahead commit through the processor call to the outcome's
    commit, as one transaction's row lock would be, yet on one connection (a second one
    per request would let requests waiting on a busy payment exhaust the pool)."""
    try:
        await operations.lock_changes(conn, payment_id)
        yield
    finally:
        try:
            await operations.unlock_changes(conn)
        except Exception:
            # A pooled connection still holding the lock would block the payment's changes
            # until it closed: close it now. The answer already decided stands.
            log.warning(
                "could not release the change lock of %s; closing the connection",
                payment_id,
                exc_info=True,
            )
            conn.terminate()
        except BaseException:  # cancelled while releasing
            conn.terminate()
            raise


def _require_id_shape(kind: str, object_id: str, param: str = "id") -> None:
    require_id(kind, object_id, ID_PREFIXES[kind], param)


def attempt_number(row: asyncpg.Record) -> int:
    """Which processor attempt the payment's own columns hold (1-based)."""
    earlier = row["earlier_attempts"]
    return 1 if earlier is None else len(orjson.loads(earlier)) + 1


def _transition(operation: str, row: asyncpg.Record, requested: int | None) -> object:
    amounts = (
        row["status"],
        row["amount"],
        row["amount_capturable"],
        row["amount_captured"],
        row["amount_refunded"],
    )
    if operation == "capture":
        return states.capture(*amounts, requested)
    if operation == "void":
        return states.void(*amounts)
    return states.refund(*amounts, requested)
