"""Customers, saved cards, prices, subscriptions, invoices and test clocks over the API:
validation (the core's), idempotency, the rows and their events in one transaction each.
All SQL is in gateway/store/billing.py; the renewals themselves run in the scheduler
(gateway/billing/scheduler.py).

A subscription lives at its customer's time: the test clock's frozen time if the
customer was created on one, else the real clock. Periods and trials are computed by the
core (core_ext.billing) in whole unix seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

import core_ext
from gateway.config import Settings
from gateway.http.answers import Answer, invalid_request, resource_missing
from gateway.http.params import check_unknown, page_query, require_id
from gateway.http.render import (
    render_customer,
    render_customer_payment_method,
    render_invoice,
    render_price,
    render_subscription,
    render_test_clock,
)
from gateway.idempotency import IdempotencyStore, Work
from gateway.ids import new_id
from gateway.store import billing as store
from gateway.store import events

validation = core_ext.validation
calendar = core_ext.billing

PAYMENT_METHODS_SHOWN_MAX = 100  # GET /v1/customers/{id}/payment_methods, newest first
# One advance moves a clock at most this far: what it makes due is bounded (a year of
# monthly renewals is 12 per subscription; three years of weekly ones 157).
TEST_CLOCK_ADVANCE_S_MAX = 3 * 366 * calendar.SECONDS_PER_DAY
TIMESTAMP_YEAR_MIN, TIMESTAMP_YEAR_MAX = 1970, 9000  # a clock's time, and what it can reach

SUBSCRIPTION_STATE_INVALID = "subscription_state_invalid"
TEST_CLOCK_NOT_READY = "test_clock_not_ready"


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


def moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def parse_time(text: str, param: str) -> datetime:
    """An RFC 3339 timestamp with its offset, to whole UTC seconds."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in text.upper():
        raise invalid_request(
            "parameter_invalid",
            f"{param} must be an RFC 3339 timestamp with an offset, as 2027-01-31T10:00:00Z",
            param,
        )
    utc = parsed.astimezone(UTC).replace(microsecond=0)
    if not TIMESTAMP_YEAR_MIN <= utc.year <= TIMESTAMP_YEAR_MAX:
        raise invalid_request(
            "parameter_invalid",
            f"{param} must be in the years {TIMESTAMP_YEAR_MIN} to {TIMESTAMP_YEAR_MAX}",
            param,
        )
    return utc


class BillingService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        idempotency: IdempotencyStore,
        settings: Settings,
        outbox: events.Outbox,
        work_written: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._idempotency = idempotency
        self._acquire_timeout_s = settings.db_acquire_timeout_ms / 1000
        self._outbox = outbox  # the deliveries each commit wrote go there after it
        # After a commit that made scheduler work due (a subscription, a clock advance):
        # wakes this process's scheduler; the others find it by polling.
        self.work_written = work_written

    def _acquire(self) -> Any:
        return self._pool.acquire(timeout=self._acquire_timeout_s)

    async def _idempotent(
        self, merchant_id: str, key: str | None, path: str, body: object, work: Work
    ) -> Answer:
        return await self._idempotency.post(
            self._acquire, merchant_id, key, path, body, work, self._outbox
        )

    # --- customers ------------------------------------------------------------------------

    async def create_customer(self, merchant_id: str, body: object, key: str | None) -> Answer:
        fields = validation.validate_customer(body, True)

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            clock_id = fields["test_clock"]
            if clock_id is not None and await store.clock(conn, clock_id, merchant_id) is None:
                raise resource_missing("test_clock", clock_id, param="test_clock")
            row = await store.insert_customer(
                conn,
                new_id("cus"),
                merchant_id,
                fields.get("email"),
                fields.get("name"),
                orjson.dumps(fields["metadata"]).decode(),
                clock_id,
            )
            answer = Answer.of_json(201, render_customer(row))
            event = events.NewEvent.of(
                merchant_id, "customer.created", row["id"], row["created_at"], answer.body
            )
            return answer, [event]

        return await self._idempotent(merchant_id, key, "/v1/customers", body, work)

    async def _customer(
        self, conn: asyncpg.Connection, merchant_id: str, customer_id: str, lock: bool = False
    ) -> asyncpg.Record:
        require_id("customer", customer_id, "cus_")
        row = await store.customer(conn, customer_id, merchant_id, lock)
        if row is None:
            raise resource_missing("customer", customer_id)
        return row

    async def get_customer(self, merchant_id: str, customer_id: str) -> dict[str, Any]:
        async with self._acquire() as conn:
            return render_customer(await self._customer(conn, merchant_id, customer_id))

    async def list_customers(self, merchant_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        limit, starting_after = page_query(query, ("email",), "cus_")
        email = query.get("email")
        if email is not None and (len(email) > validation.EMAIL_CHARS_MAX or "\x00" in email):
            raise invalid_request(
                "parameter_invalid",
                f"email must be at most {validation.EMAIL_CHARS_MAX} characters, without NUL",
                "email",
            )
        async with self._acquire() as conn:
            cursor = None
            if starting_after is not None:
                cursor = await store.customer(conn, starting_after, merchant_id)
                if cursor is None:
                    raise resource_missing("customer", starting_after, param="starting_after")
            rows = await store.customers_page(conn, merchant_id, email, cursor, limit + 1)
        return _page([render_customer(row) for row in rows], limit)

    async def update_customer(
        self,
        merchant_id: str,
        customer_id: str,
        body: object,
        key: str | None,
        metadata_patch: Mapping[str, str | None] | None = None,
    ) -> Answer:
        """Update the fields ``body`` gives. ``metadata_patch`` (Stripe's update: a key set
        to a value, or to None to remove it) is merged into the customer's metadata inside
        the transaction, its row locked, so two concurrent patches lose no key; the key's
        fingerprint is the patch, not its result."""
        require_id("customer", customer_id, "cus_")
        fields = validation.validate_customer(body, False)
        changes: dict[str, Any] = {k: v for k, v in fields.items() if k != "metadata"}
        if "metadata" in fields:
            changes["metadata_json"] = orjson.dumps(fields["metadata"]).decode()

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            written = dict(changes)
            if metadata_patch is not None:
                current = await self._customer(conn, merchant_id, customer_id, lock=True)
                merged = {**orjson.loads(current["metadata"]), **metadata_patch}
                kept = {k: v for k, v in merged.items() if v is not None}
                # The merged result within the bounds of a customer's metadata.
                validation.validate_customer({"metadata": kept}, False)
                written["metadata_json"] = orjson.dumps(kept).decode()
            row = await store.update_customer(conn, customer_id, merchant_id, written)
            if row is None:
                raise resource_missing("customer", customer_id)
            return Answer.of_json(200, render_customer(row)), []

        path = f"/v1/customers/{customer_id}"
        fingerprinted = body if metadata_patch is None else {"body": body, "patch": metadata_patch}
        return await self._idempotent(merchant_id, key, path, fingerprinted, work)

    async def delete_customer(self, merchant_id: str, customer_id: str) -> dict[str, Any]:
        """Delete the customer (kept for its payments and invoices, answering 404) and
        cancel its subscriptions now, each with its customer.subscription.deleted."""
        handed: list[events.Handoff] = []
        async with self._acquire() as conn, conn.transaction():
            row = await self._customer(conn, merchant_id, customer_id, lock=True)
            at = await self._time_of(conn, row["test_clock_id"], merchant_id)
            new_events = []
            for subscription_id in await store.customer_subscriptions(conn, customer_id):
                await store.cancel_now(conn, subscription_id, merchant_id, at)
                _, event = await self._subscription_event(
                    conn, merchant_id, subscription_id, "customer.subscription.deleted"
                )
                new_events.append(event)
            await store.delete_customer(conn, customer_id, merchant_id)
            handed = await events.write(conn, new_events, datetime.now(UTC), self._outbox.lease_s)
        self._outbox.written(handed)
        return {"id": customer_id, "object": "customer", "deleted": True}

    # --- saved cards ----------------------------------------------------------------------

    async def attach_payment_method(
        self, merchant_id: str, customer_id: str, body: object, key: str | None
    ) -> Answer:
        require_id("customer", customer_id, "cus_")
        token_id, make_default = validation.validate_payment_method_attach(body)

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            await self._customer(conn, merchant_id, customer_id, lock=True)
            token = await conn.fetchrow(
                "SELECT id FROM tokens WHERE id = $1 AND merchant_id = $2", token_id, merchant_id
            )
            if token is None:
                raise resource_missing("token", token_id, param="token")
            saved = await store.attach(conn, customer_id, token_id, make_default)
            if saved is None:
                raise invalid_request(
                    "parameter_invalid",
                    "this token is saved to another customer: a card belongs to one customer",
                    "token",
                )
            row = await store.payment_method(conn, customer_id, token_id)
            if row is None:  # saved just above, in this transaction
                raise RuntimeError(f"{token_id} not saved to {customer_id}")
            return Answer.of_json(200, render_customer_payment_method(row)), []

        path = f"/v1/customers/{customer_id}/payment_methods"
        return await self._idempotent(merchant_id, key, path, body, work)

    async def list_payment_methods(
        self, merchant_id: str, customer_id: str, query: Mapping[str, str]
    ) -> dict[str, Any]:
        check_unknown(query, ())
        rows = await self._saved_rows(merchant_id, customer_id)
        return _page(
            [render_customer_payment_method(row) for row in rows], PAYMENT_METHODS_SHOWN_MAX
        )

    async def _saved_rows(self, merchant_id: str, customer_id: str) -> list[asyncpg.Record]:
        """The customer's saved cards, newest saved first: PAYMENT_METHODS_SHOWN_MAX and
        one more, which says whether more follow."""
        async with self._acquire() as conn:
            await self._customer(conn, merchant_id, customer_id)
            return await store.payment_methods(conn, customer_id, PAYMENT_METHODS_SHOWN_MAX + 1)

    async def detach_payment_method(
        self, merchant_id: str, customer_id: str, token_id: str
    ) -> dict[str, Any]:
        require_id("token", token_id, "tok_")
        async with self._acquire() as conn, conn.transaction():
            await self._customer(conn, merchant_id, customer_id, lock=True)
            if not await store.detach(conn, customer_id, token_id):
                raise resource_missing("token", token_id)
        return {"id": token_id, "object": "customer_payment_method", "deleted": True}

    async def saved_cards(
        self, merchant_id: str, customer_id: str
    ) -> tuple[list[tuple[dict[str, Any], datetime]], bool]:
        """The customer's saved cards as ``list_payment_methods`` renders them, each with
        when its token was made (what the Stripe tree lists as PaymentMethods); and
        whether more are saved."""
        rows = await self._saved_rows(merchant_id, customer_id)
        cards = [
            (render_customer_payment_method(row), row["created_at"])
            for row in rows[:PAYMENT_METHODS_SHOWN_MAX]
        ]
        return cards, len(rows) > PAYMENT_METHODS_SHOWN_MAX

    async def customer_of_token(self, merchant_id: str, token_id: str) -> str | None:
        """The customer the merchant's token is saved to, or None (also for no such token)."""
        async with self._acquire() as conn:
            return await store.saved_to(conn, merchant_id, token_id)

    async def detach_token(self, merchant_id: str, token_id: str, key: str | None) -> Answer:
        """Remove a saved card from whichever customer it is saved to (Stripe's detach, a
        POST: idempotent by its key); the customer it was saved to, or 400 when it is
        saved to none."""
        require_id("token", token_id, "tok_")

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            customer_id = await store.saved_to(conn, merchant_id, token_id)
            if customer_id is not None:
                await self._customer(conn, merchant_id, customer_id, lock=True)
            if customer_id is None or not await store.detach(conn, customer_id, token_id):
                raise invalid_request(
                    "parameter_invalid",
                    "this card is saved to no customer, so it cannot be removed from one",
                    "token",
                )
            answer = {"id": token_id, "object": "customer_payment_method", "deleted": True}
            return Answer.of_json(200, {**answer, "customer": customer_id}), []

        path = f"/v1/tokens/{token_id}/detach"
        return await self._idempotent(merchant_id, key, path, {}, work)

    # --- prices ---------------------------------------------------------------------------

    async def create_price(self, merchant_id: str, body: object, key: str | None) -> Answer:
        amount, currency, interval, count, description = validation.validate_price(body)

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            row = await store.insert_price(
                conn, (new_id("price"), merchant_id, amount, currency, interval, count, description)
            )
            return Answer.of_json(201, render_price(row)), []

        return await self._idempotent(merchant_id, key, "/v1/prices", body, work)

    async def get_price(self, merchant_id: str, price_id: str) -> dict[str, Any]:
        require_id("price", price_id, "price_")
        async with self._acquire() as conn:
            row = await store.price(conn, price_id, merchant_id)
        if row is None:
            raise resource_missing("price", price_id)
        return render_price(row)

    # --- subscriptions --------------------------------------------------------------------

    async def _time_of(
        self, conn: asyncpg.Connection, clock_id: str | None, merchant_id: str
    ) -> datetime:
        """The time a customer lives at: its test clock's, or now, in whole seconds."""
        if clock_id is not None:
            clock = await store.clock(conn, clock_id, merchant_id)
            if clock is not None:
                frozen: datetime = clock["frozen_time"]
                return frozen
        return datetime.now(UTC).replace(microsecond=0)

    async def _subscription_event(
        self,
        conn: asyncpg.Connection,
        merchant_id: str,
        subscription_id: str,
        event_type: str,
        status: int = 200,
    ) -> tuple[Answer, events.NewEvent]:
        """The subscription as changed in this transaction: its answer, and its event
        carrying the same bytes."""
        row = await store.subscription(conn, subscription_id, merchant_id)
        if row is None:  # the caller changed it in this transaction
            raise RuntimeError(f"subscription {subscription_id} vanished")
        answer = Answer.of_json(status, render_subscription(row))
        event = events.NewEvent.of(
            merchant_id, event_type, subscription_id, row["updated_at"], answer.body
        )
        return answer, event

    async def create_subscription(self, merchant_id: str, body: object, key: str | None) -> Answer:
        customer_id, price_id, trial_days = validation.validate_subscription(body)

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            customer = await store.customer(conn, customer_id, merchant_id)
            if customer is None:
                raise resource_missing("customer", customer_id, param="customer")
            price = await store.price(conn, price_id, merchant_id)
            if price is None:
                raise resource_missing("price", price_id, param="price")
            if trial_days == 0 and not await conn.fetchval(store.HAS_DEFAULT_SQL, customer_id):
                raise invalid_request(
                    "parameter_missing",
                    f"customer {customer_id} has no saved card to charge: save one with "
                    "POST /v1/customers/{id}/payment_methods, or start with trial_days",
                    "customer",
                )
            start = unix(await self._time_of(conn, customer["test_clock_id"], merchant_id))
            subscription_id = new_id("sub")
            interval, count = price["interval"], price["interval_count"]
            trial: tuple[datetime | None, datetime | None]
            if trial_days:
                anchor = calendar.trial_end(start, trial_days)
                status, index, period = "trialing", -1, (start, anchor)
                trial = (moment(start), moment(anchor))
            else:
                anchor, status, index = start, "active", 0
                period = calendar.period_bounds(anchor, 0, interval, count)
                trial = (None, None)
            await store.insert_subscription(
                conn,
                (
                    subscription_id,
                    merchant_id,
                    customer_id,
                    price_id,
                    status,
                    moment(anchor),
                    *trial,
                    index,
                    moment(period[0]),
                    moment(period[1]),
                    customer["test_clock_id"],
                    # Trialing: due at the trial's end. Active: the first period's invoice
                    # is due now, and the scheduler charges it.
                    moment(period[1] if trial_days else start),
                ),
            )
            if not trial_days:
                await store.insert_invoice(
                    conn,
                    (
                        new_id("in"),
                        merchant_id,
                        subscription_id,
                        customer_id,
                        0,
                        moment(period[0]),
                        moment(period[1]),
                        price["amount"],
                        price["currency"],
                        moment(start),
                    ),
                )
            answer, event = await self._subscription_event(
                conn, merchant_id, subscription_id, "customer.subscription.created", 201
            )
            return answer, [event]

        answer = await self._idempotent(merchant_id, key, "/v1/subscriptions", body, work)
        if answer.status == 201:
            self.work_written()
        return answer

    async def _subscription(
        self, conn: asyncpg.Connection, merchant_id: str, subscription_id: str
    ) -> asyncpg.Record:
        require_id("subscription", subscription_id, "sub_")
        row = await store.subscription(conn, subscription_id, merchant_id)
        if row is None:
            raise resource_missing("subscription", subscription_id)
        return row

    async def get_subscription(self, merchant_id: str, subscription_id: str) -> dict[str, Any]:
        async with self._acquire() as conn:
            return render_subscription(await self._subscription(conn, merchant_id, subscription_id))

    async def list_subscriptions(
        self, merchant_id: str, query: Mapping[str, str]
    ) -> dict[str, Any]:
        limit, starting_after = page_query(query, ("customer",), "sub_")
        customer_id = query.get("customer")
        if customer_id is not None and not validation.object_id_valid(customer_id, "cus_"):
            raise invalid_request("parameter_invalid", "customer must be a cus_ id", "customer")
        async with self._acquire() as conn:
            cursor = None
            if starting_after is not None:
                cursor = await store.subscription(conn, starting_after, merchant_id)
                if cursor is None:
                    raise resource_missing("subscription", starting_after, param="starting_after")
            rows = await store.subscriptions_page(conn, merchant_id, customer_id, cursor, limit + 1)
        return _page([render_subscription(row) for row in rows], limit)

    async def cancel_subscription(
        self, merchant_id: str, subscription_id: str, body: object, key: str | None
    ) -> Answer:
        """Cancel now (an open invoice becomes uncollectible), or at the period's end."""
        require_id("subscription", subscription_id, "sub_")
        at_period_end = validation.validate_subscription_cancel(body)

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            row = await self._subscription(conn, merchant_id, subscription_id)
            await conn.execute("SELECT 1 FROM subscriptions WHERE id = $1 FOR UPDATE", row["id"])
            if row["status"] == "canceled":
                raise invalid_request(
                    SUBSCRIPTION_STATE_INVALID,
                    "the subscription is canceled already",
                    status=409,
                )
            if at_period_end:
                await store.set_cancel_at_period_end(conn, subscription_id, merchant_id, True)
                event_type = "customer.subscription.updated"
            else:
                at = await self._time_of(conn, row["test_clock_id"], merchant_id)
                await store.cancel_now(conn, subscription_id, merchant_id, at)
                event_type = "customer.subscription.deleted"
            answer, event = await self._subscription_event(
                conn, merchant_id, subscription_id, event_type
            )
            return answer, [event]

        path = f"/v1/subscriptions/{subscription_id}/cancel"
        return await self._idempotent(merchant_id, key, path, body, work)

    # --- invoices -------------------------------------------------------------------------

    async def list_invoices(self, merchant_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        limit, starting_after = page_query(query, ("subscription",), "in_")
        subscription_id = query.get("subscription")
        if subscription_id is not None and not validation.object_id_valid(subscription_id, "sub_"):
            raise invalid_request(
                "parameter_invalid", "subscription must be a sub_ id", "subscription"
            )
        async with self._acquire() as conn:
            cursor = None
            if starting_after is not None:
                cursor = await store.invoice(conn, starting_after, merchant_id)
                if cursor is None:
                    raise resource_missing("invoice", starting_after, param="starting_after")
            rows = await store.invoices_page(conn, merchant_id, subscription_id, cursor, limit + 1)
        return _page([render_invoice(row) for row in rows], limit)

    async def get_invoice(self, merchant_id: str, invoice_id: str) -> dict[str, Any]:
        require_id("invoice", invoice_id, "in_")
        async with self._acquire() as conn:
            row = await store.invoice(conn, invoice_id, merchant_id)
        if row is None:
            raise resource_missing("invoice", invoice_id)
        return render_invoice(row)

    # --- test clocks ----------------------------------------------------------------------

    async def create_test_clock(self, merchant_id: str, body: object, key: str | None) -> Answer:
        text, name = validation.validate_test_clock(body, True)
        frozen = parse_time(text, "frozen_time")

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            row = await store.insert_clock(conn, new_id("clock"), merchant_id, name, frozen)
            return Answer.of_json(201, render_test_clock(row)), []

        return await self._idempotent(merchant_id, key, "/v1/test_clocks", body, work)

    async def get_test_clock(self, merchant_id: str, clock_id: str) -> dict[str, Any]:
        require_id("test_clock", clock_id, "clock_")
        async with self._acquire() as conn:
            row = await store.clock(conn, clock_id, merchant_id)
        if row is None:
            raise resource_missing("test_clock", clock_id)
        return render_test_clock(row)

    async def advance_test_clock(
        self, merchant_id: str, clock_id: str, body: object, key: str | None
    ) -> Answer:
        """Move the clock forward: it is 'advancing' until every scheduler has run what
        became due up to its new time, then 'ready'."""
        require_id("test_clock", clock_id, "clock_")
        text, _ = validation.validate_test_clock(body, False)
        target = parse_time(text, "frozen_time")

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            row = await store.clock(conn, clock_id, merchant_id)
            if row is None:
                raise resource_missing("test_clock", clock_id)
            if target <= row["frozen_time"]:
                raise invalid_request(
                    "parameter_invalid",
                    "frozen_time must be later than the clock's time: a clock only moves forward",
                    "frozen_time",
                )
            if target - row["frozen_time"] > timedelta(seconds=TEST_CLOCK_ADVANCE_S_MAX):
                raise invalid_request(
                    "parameter_invalid",
                    f"a clock advances at most {TEST_CLOCK_ADVANCE_S_MAX // 86_400} days at once",
                    "frozen_time",
                )
            moved = await store.advance_clock(conn, clock_id, merchant_id, target)
            if moved is None:
                raise invalid_request(
                    TEST_CLOCK_NOT_READY,
                    "the clock is still advancing: wait until its status is ready",
                    status=409,
                )
            return Answer.of_json(200, render_test_clock(moved)), []

        path = f"/v1/test_clocks/{clock_id}/advance"
        answer = await self._idempotent(merchant_id, key, path, body, work)
        if answer.status == 200:
            self.work_written()
        return answer


# --- queries ------------------------------------------------------------------------------


def _page(rendered: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    return {"object": "list", "data": rendered[:limit], "has_more": len(rendered) > limit}
