"""Customers, saved cards and recurring billing end to end (API.md "Customers, saved cards
and recurring billing"), black-box: a real `kassa serve` on two workers, whose schedulers
share the renewals, driven by test clocks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from gateway.testing import KassaServer
from tests.conftest import eventually, running_server
from tests.payments_helpers import APPROVED_MASTERCARD, APPROVED_VISA, card, get, post

DECLINED_CARD = "4000000000000002"  # generic_decline
INSUFFICIENT_FUNDS_CARD = "4000000000009995"
PROCESSOR_ERROR_CARD = "4000000000000119"  # 502 processor_error: no issuer answers
READY_TIMEOUT_S = 60.0  # a clock advance of these tests' size takes well under a second


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KassaServer]:
    # The dunning tests decline one card again and again: the card-testing rules (which
    # count per card) are the subject of other tests.
    with running_server(
        database_url,
        tmp_path_factory.mktemp("billing"),
        KASSA_VELOCITY_CARD_DECLINES_MAX="0",
        KASSA_VELOCITY_CARD_ATTEMPTS_MAX="0",
    ) as served:
        yield served


@pytest.fixture
async def api(server: KassaServer, db) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session


# --- helpers ------------------------------------------------------------------------------


async def created(api, merchant, path: str, body: object, status: int = 201) -> dict:
    got, answer, _ = await post(api, path, merchant, body)
    assert got == status, answer
    return answer


async def new_clock(api, merchant, frozen_time: str = "2027-01-31T10:00:00Z") -> dict:
    return await created(api, merchant, "/v1/test_clocks", {"frozen_time": frozen_time})


async def new_customer(api, merchant, clock: dict | None = None, **fields) -> dict:
    body = {"email": "ada@example.com", "name": "Ada", **fields}
    if clock is not None:
        body["test_clock"] = clock["id"]
    return await created(api, merchant, "/v1/customers", body)


async def save_card(
    api, merchant, customer: dict, number: str = APPROVED_VISA, default: bool = False
) -> dict:
    token = await created(api, merchant, "/v1/tokens", {"card": card(number)})
    saved = await created(
        api,
        merchant,
        f"/v1/customers/{customer['id']}/payment_methods",
        {"token": token["id"], "default": default},
        status=200,
    )
    assert saved["id"] == token["id"] and saved["customer"] == customer["id"]
    return saved


async def new_price(api, merchant, amount: int = 1500, interval: str = "month") -> dict:
    return await created(
        api,
        merchant,
        "/v1/prices",
        {"amount": amount, "currency": "eur", "recurring": {"interval": interval}},
    )


async def subscribe(api, merchant, customer: dict, price: dict, **fields) -> dict:
    body = {"customer": customer["id"], "price": price["id"], **fields}
    return await created(api, merchant, "/v1/subscriptions", body)


async def invoices_of(api, merchant, subscription: dict) -> list[dict]:
    status, body = await get(
        api, f"/v1/invoices?subscription={subscription['id']}&limit=100", merchant
    )
    assert status == 200, body
    return sorted(body["data"], key=lambda invoice: invoice["period_index"])


async def settled_invoices(api, merchant, subscription: dict, count: int) -> list[dict]:
    """The subscription's invoices once ``count`` exist and none is waiting on a charge
    due now (open with no attempt yet)."""

    async def check():
        invoices = await invoices_of(api, merchant, subscription)
        settled = all(i["status"] != "open" or i["attempt_count"] > 0 for i in invoices)
        return invoices if len(invoices) >= count and settled else None

    return await eventually(
        check, READY_TIMEOUT_S, f"{count} settled invoices of {subscription['id']}"
    )


async def advance(api, merchant, clock: dict, frozen_time: str) -> dict:
    moved = await created(
        api, merchant, f"/v1/test_clocks/{clock['id']}/advance", {"frozen_time": frozen_time}, 200
    )
    assert moved["frozen_time"] == frozen_time

    async def ready():
        status, body = await get(api, f"/v1/test_clocks/{clock['id']}", merchant)
        assert status == 200, body
        return body if body["status"] == "ready" else None

    return await eventually(ready, READY_TIMEOUT_S, f"{clock['id']} ready at {frozen_time}")


async def events_of(api, merchant, event_type: str) -> list[dict]:
    status, body = await get(api, f"/v1/events?type={event_type}&limit=100", merchant)
    assert status == 200, body
    return body["data"]


async def subscription_of(api, merchant, subscription: dict) -> dict:
    status, body = await get(api, f"/v1/subscriptions/{subscription['id']}", merchant)
    assert status == 200, body
    return body


async def dead_schedulers_charge(
    api, merchant, db, subscription: dict, invoice: dict, token: dict, attempt: int
) -> tuple[int, dict, str]:
    """What a scheduler that then died did for an invoice's attempt: wrote the attempt
    ahead (its card and key) and sent the charge, exactly as the scheduler sends it.
    (status, answer, the attempt's Idempotency-Key)."""
    key = f"kassa-invoice-{invoice['id']}-attempt-{attempt}"
    await db.execute(
        "INSERT INTO invoice_attempts (invoice_id, attempt, token_id, idempotency_key)"
        " VALUES ($1, $2, $3, $4)",
        invoice["id"],
        attempt,
        token["id"],
        key,
    )
    body = {
        "amount": invoice["amount"],
        "currency": invoice["currency"].upper(),
        "customer": subscription["customer"],
        "payment_method": {"type": "token", "token": token["id"]},
        "off_session": True,
        "description": f"subscription {subscription['id']}, period {invoice['period_index']}",
        "metadata": {"invoice": invoice["id"], "subscription": subscription["id"]},
    }
    status, answer, _ = await post(api, "/v1/payments", merchant, body, key=key)
    return status, answer, key


# --- customers ----------------------------------------------------------------------------


async def test_customers_are_created_read_updated_listed_by_email_and_deleted(
    api, merchant, other_merchant
):
    ada = await new_customer(api, merchant, email="ada@example.com", metadata={"crm": "42"})
    grace = await new_customer(api, merchant, email="grace@example.com", name="Grace")
    assert ada["id"].startswith("cus_") and ada["object"] == "customer"
    assert ada["metadata"] == {"crm": "42"} and ada["test_clock"] is None
    assert [
        e["data"]["object"]["id"] for e in await events_of(api, merchant, "customer.created")
    ] == [
        grace["id"],
        ada["id"],
    ]

    status, body = await get(api, f"/v1/customers/{ada['id']}", merchant)
    assert (status, body) == (200, ada)
    updated = await created(
        api, merchant, f"/v1/customers/{ada['id']}", {"name": "Ada Lovelace"}, status=200
    )
    assert updated["name"] == "Ada Lovelace" and updated["email"] == "ada@example.com"

    status, body = await get(api, "/v1/customers?email=grace@example.com", merchant)
    assert status == 200 and [c["id"] for c in body["data"]] == [grace["id"]]
    status, body = await get(api, "/v1/customers", merchant)
    assert [c["id"] for c in body["data"]] == [grace["id"], ada["id"]]

    # Another merchant's customer is unknown, never forbidden.
    status, body = await get(api, f"/v1/customers/{ada['id']}", other_merchant)
    assert status == 404 and body["error"]["code"] == "resource_missing"

    response = await api.delete(f"/v1/customers/{ada['id']}", headers=merchant.headers)
    assert response.status == 200
    assert await response.json() == {"id": ada["id"], "object": "customer", "deleted": True}
    status, body = await get(api, f"/v1/customers/{ada['id']}", merchant)
    assert status == 404


async def test_customer_fields_are_validated_and_a_card_number_is_refused(api, merchant):
    for body, param in (
        ({"email": "not-an-email"}, "email"),
        ({"name": "4242 4242 4242 4242"}, "name"),
        ({"metadata": {"note": "4242424242424242"}}, "metadata.note"),
        ({"test_clock": "clock_unknown"}, "test_clock"),
        ({"phone": "1"}, "phone"),
    ):
        status, answer, _ = await post(api, "/v1/customers", merchant, body)
        assert status in (400, 404), (body, answer)
        assert answer["error"]["param"] == param, answer
        assert "4242424242424242" not in str(answer)


# --- saved cards and off-session payments -------------------------------------------------


async def test_saved_cards_charge_only_their_own_customer_off_session(api, merchant):
    ada = await new_customer(api, merchant)
    bob = await new_customer(api, merchant, email="bob@example.com")
    first = await save_card(api, merchant, ada)
    assert first["default"] is True  # a customer's first card is its default
    second = await save_card(api, merchant, ada, APPROVED_MASTERCARD, default=True)
    status, listed = await get(api, f"/v1/customers/{ada['id']}/payment_methods", merchant)
    assert status == 200
    defaults = {m["id"]: m["default"] for m in listed["data"]}
    assert defaults == {first["id"]: False, second["id"]: True}
    assert "number" not in str(listed) and "cvc" not in str(listed)

    # A saved customer is charged off-session with its own card; the payment says so.
    body = {
        "amount": 500,
        "currency": "eur",
        "customer": ada["id"],
        "payment_method": {"type": "token", "token": first["id"]},
        "off_session": True,
    }
    status, payment, _ = await post(api, "/v1/payments", merchant, body)
    assert status == 201, payment
    assert payment["customer"] == ada["id"] and payment["off_session"] is True
    assert payment["status"] == "captured"

    # Another customer's card is refused, and so is saving it to another customer.
    status, answer, _ = await post(api, "/v1/payments", merchant, {**body, "customer": bob["id"]})
    assert status == 400 and answer["error"]["param"] == "payment_method.token", answer
    status, answer, _ = await post(
        api, f"/v1/customers/{bob['id']}/payment_methods", merchant, {"token": first["id"]}
    )
    assert status == 400 and answer["error"]["param"] == "token", answer

    # Off-session needs a saved customer; the inline customer object keeps its meaning.
    status, answer, _ = await post(
        api, "/v1/payments", merchant, {**body, "customer": {"email": "ada@example.com"}}
    )
    assert status == 400 and answer["error"]["param"] == "customer", answer
    inline = {
        "amount": 500,
        "currency": "eur",
        "payment_method": {"type": "card", "card": card()},
        "customer": {"email": "ada@example.com", "ip": "203.0.113.9"},
    }
    status, payment, _ = await post(api, "/v1/payments", merchant, inline)
    assert status == 201 and payment["customer"] is None and payment["off_session"] is False
    # A saved customer pays with a saved card, never a raw one.
    status, answer, _ = await post(api, "/v1/payments", merchant, {**inline, "customer": ada["id"]})
    assert status == 400 and answer["error"]["param"] == "payment_method", answer

    # A removed card can no longer charge the customer.
    response = await api.delete(
        f"/v1/customers/{ada['id']}/payment_methods/{first['id']}", headers=merchant.headers
    )
    assert response.status == 200
    status, answer, _ = await post(api, "/v1/payments", merchant, body)
    assert status == 400 and answer["error"]["param"] == "payment_method.token", answer


# --- subscriptions on a test clock --------------------------------------------------------


async def test_monthly_renewals_on_a_clock_one_invoice_per_period_clamped_to_month_ends(
    api, merchant, db
):
    clock = await new_clock(api, merchant, "2027-01-31T10:00:00Z")
    ada = await new_customer(api, merchant, clock)
    await save_card(api, merchant, ada)
    price = await new_price(api, merchant, 1500)
    subscription = await subscribe(api, merchant, ada, price)
    assert subscription["status"] == "active" and subscription["test_clock"] == clock["id"]
    assert subscription["current_period_start"] == "2027-01-31T10:00:00Z"
    assert subscription["current_period_end"] == "2027-02-28T10:00:00Z"
    first = await settled_invoices(api, merchant, subscription, 1)
    assert first[0]["status"] == "paid" and first[0]["attempt_count"] == 1

    await advance(api, merchant, clock, "2027-06-15T00:00:00Z")
    invoices = await settled_invoices(api, merchant, subscription, 5)
    assert [(i["period_index"], i["period_start"][:10], i["status"]) for i in invoices] == [
        (0, "2027-01-31", "paid"),
        (1, "2027-02-28", "paid"),
        (2, "2027-03-31", "paid"),
        (3, "2027-04-30", "paid"),
        (4, "2027-05-31", "paid"),
    ]
    renewed = await subscription_of(api, merchant, subscription)
    assert renewed["current_period_start"] == "2027-05-31T10:00:00Z"
    assert renewed["current_period_end"] == "2027-06-30T10:00:00Z"
    assert renewed["status"] == "active"

    # Each invoice was paid by its own captured, off-session payment of the customer.
    payments = await db.fetch(
        "SELECT id, status, amount, off_session, customer_id FROM payments WHERE customer_id = $1",
        ada["id"],
    )
    assert sorted(p["id"] for p in payments) == sorted(i["payment_id"] for i in invoices)
    assert all(
        (p["status"], p["amount"], p["off_session"]) == ("captured", 1500, True) for p in payments
    )
    paid_events = await events_of(api, merchant, "invoice.paid")
    assert sorted(e["data"]["object"]["id"] for e in paid_events) == sorted(
        i["id"] for i in invoices
    )
    # Advancing again to a time inside the same period bills nothing more.
    await advance(api, merchant, clock, "2027-06-20T00:00:00Z")
    assert len(await invoices_of(api, merchant, subscription)) == 5


async def test_a_trial_ends_into_the_first_paid_period(api, merchant):
    clock = await new_clock(api, merchant, "2027-03-01T12:00:00Z")
    ada = await new_customer(api, merchant, clock)
    await save_card(api, merchant, ada)
    subscription = await subscribe(
        api, merchant, ada, await new_price(api, merchant, 900), trial_days=14
    )
    assert subscription["status"] == "trialing"
    assert subscription["trial_end"] == "2027-03-15T12:00:00Z"
    assert subscription["current_period_end"] == "2027-03-15T12:00:00Z"

    await advance(api, merchant, clock, "2027-03-10T00:00:00Z")
    assert (await subscription_of(api, merchant, subscription))["status"] == "trialing"
    assert await invoices_of(api, merchant, subscription) == []

    await advance(api, merchant, clock, "2027-03-16T00:00:00Z")
    invoices = await settled_invoices(api, merchant, subscription, 1)
    assert [(i["period_start"], i["period_end"], i["status"]) for i in invoices] == [
        ("2027-03-15T12:00:00Z", "2027-04-15T12:00:00Z", "paid")
    ]
    active = await subscription_of(api, merchant, subscription)
    assert active["status"] == "active" and active["billing_cycle_anchor"] == "2027-03-15T12:00:00Z"


async def test_a_declined_renewal_is_retried_after_1_3_5_days_then_uncollectible_and_canceled(
    api, merchant, db
):
    clock = await new_clock(api, merchant, "2027-05-01T08:00:00Z")
    ada = await new_customer(api, merchant, clock)
    await save_card(api, merchant, ada, DECLINED_CARD)
    subscription = await subscribe(api, merchant, ada, await new_price(api, merchant, 2500))

    [invoice] = await settled_invoices(api, merchant, subscription, 1)
    assert (invoice["status"], invoice["attempt_count"]) == ("open", 1)
    assert invoice["next_payment_attempt"] == "2027-05-02T08:00:00Z"
    past_due = await subscription_of(api, merchant, subscription)
    assert past_due["status"] == "past_due"
    updates = await events_of(api, merchant, "customer.subscription.updated")
    assert [e["data"]["object"]["status"] for e in updates] == ["past_due"]

    # After the first retry (day 1) and before the second (day 3).
    await advance(api, merchant, clock, "2027-05-03T00:00:00Z")
    [invoice] = await invoices_of(api, merchant, subscription)
    assert (invoice["status"], invoice["attempt_count"]) == ("open", 2)
    assert invoice["next_payment_attempt"] == "2027-05-04T08:00:00Z"

    await advance(api, merchant, clock, "2027-05-10T00:00:00Z")
    [invoice] = await invoices_of(api, merchant, subscription)
    assert (invoice["status"], invoice["attempt_count"]) == ("uncollectible", 4)
    assert invoice["next_payment_attempt"] is None and invoice["payment_id"] is None
    canceled = await subscription_of(api, merchant, subscription)
    assert canceled["status"] == "canceled" and canceled["ended_at"] == "2027-05-06T08:00:00Z"

    # The schedulers count what they did, in every worker's samples together.
    response = await api.get("/metrics")
    exposition = await response.text()
    assert 'kassa_billing_charges_total{outcome="declined"}' in exposition
    assert 'kassa_billing_subscriptions_ended_total{reason="dunning"}' in exposition
    failed = await events_of(api, merchant, "invoice.payment_failed")
    assert [e["data"]["object"]["attempt_count"] for e in failed] == [4, 3, 2, 1]
    deleted = await events_of(api, merchant, "customer.subscription.deleted")
    assert [e["data"]["object"]["id"] for e in deleted] == [subscription["id"]]
    attempts = await db.fetch(
        "SELECT attempt, outcome, p.status, p.decline_code, p.off_session FROM invoice_attempts a"
        " JOIN payments p ON p.id = a.payment_id WHERE invoice_id = $1 ORDER BY attempt",
        invoice["id"],
    )
    assert [tuple(a) for a in attempts] == [
        (n, "declined", "declined", "generic_decline", True) for n in (1, 2, 3, 4)
    ]
    # Canceled: later periods bill nothing.
    await advance(api, merchant, clock, "2027-08-01T00:00:00Z")
    assert len(await invoices_of(api, merchant, subscription)) == 1


async def test_a_past_due_subscription_recovers_when_a_retry_is_paid(api, merchant):
    clock = await new_clock(api, merchant, "2027-05-01T08:00:00Z")
    ada = await new_customer(api, merchant, clock)
    await save_card(api, merchant, ada, INSUFFICIENT_FUNDS_CARD)
    subscription = await subscribe(api, merchant, ada, await new_price(api, merchant, 2500))
    [invoice] = await settled_invoices(api, merchant, subscription, 1)
    assert invoice["status"] == "open"
    # The customer saves a good card before the first retry: the retry charges it.
    await save_card(api, merchant, ada, APPROVED_VISA, default=True)
    await advance(api, merchant, clock, "2027-05-02T09:00:00Z")
    [invoice] = await invoices_of(api, merchant, subscription)
    assert (invoice["status"], invoice["attempt_count"]) == ("paid", 2)
    assert (await subscription_of(api, merchant, subscription))["status"] == "active"
    statuses = [
        e["data"]["object"]["status"]
        for e in await events_of(api, merchant, "customer.subscription.updated")
    ]
    assert statuses == ["active", "past_due"]  # newest first


async def test_a_charge_no_issuer_answered_is_retried_hourly_outside_dunning(api, merchant, db):
    """The processor erred: nothing was charged and the card is not at fault. The invoice
    is tried again an hour later, the subscription stays active (no dunning), and after
    ten attempts in all the invoice is uncollectible."""
    clock = await new_clock(api, merchant, "2027-05-01T08:00:00Z")
    ada = await new_customer(api, merchant, clock)
    await save_card(api, merchant, ada, PROCESSOR_ERROR_CARD)
    subscription = await subscribe(api, merchant, ada, await new_price(api, merchant, 2500))
    [invoice] = await settled_invoices(api, merchant, subscription, 1)
    assert (invoice["status"], invoice["attempt_count"]) == ("open", 1)
    assert invoice["next_payment_attempt"] == "2027-05-01T09:00:00Z"
    assert (await subscription_of(api, merchant, subscription))["status"] == "active"

    await advance(api, merchant, clock, "2027-05-01T10:30:00Z")
    [invoice] = await invoices_of(api, merchant, subscription)
    assert (invoice["status"], invoice["attempt_count"]) == ("open", 3)
    assert invoice["next_payment_attempt"] == "2027-05-01T11:00:00Z"
    assert (await subscription_of(api, merchant, subscription))["status"] == "active"

    await advance(api, merchant, clock, "2027-05-02T08:00:00Z")
    [invoice] = await invoices_of(api, merchant, subscription)
    assert (invoice["status"], invoice["attempt_count"]) == ("uncollectible", 10)
    canceled = await subscription_of(api, merchant, subscription)
    assert canceled["status"] == "canceled" and canceled["ended_at"] == "2027-05-01T17:00:00Z"
    outcomes = await db.fetch(
        "SELECT a.outcome, p.status, p.decline_code FROM invoice_attempts a"
        " JOIN payments p ON p.id = a.payment_id WHERE invoice_id = $1 ORDER BY attempt",
        invoice["id"],
    )
    assert [tuple(o) for o in outcomes] == [("failed", "failed", None)] * 10
    updates = await events_of(api, merchant, "customer.subscription.updated")
    assert all(e["data"]["object"]["status"] != "past_due" for e in updates)


async def test_an_attempt_whose_charge_failed_unanswered_before_a_crash_is_retried_soon(
    api, merchant, db
):
    """A scheduler died after its charge reached the payment path, and the payment was
    settled failed with no issuer's answer (as recovery settles one the processor never
    had). Its successor finds that payment and tries again an hour later, not on dunning's
    next day: the crash costs the customer nothing."""
    clock = await new_clock(api, merchant, "2027-05-01T08:00:00Z")
    ada = await new_customer(api, merchant, clock)
    await save_card(api, merchant, ada, DECLINED_CARD)
    subscription = await subscribe(api, merchant, ada, await new_price(api, merchant, 2500))
    [invoice] = await settled_invoices(api, merchant, subscription, 1)
    assert invoice["next_payment_attempt"] == "2027-05-02T08:00:00Z"  # dunning's day 1
    erring = await save_card(api, merchant, ada, PROCESSOR_ERROR_CARD)
    status, failed, _ = await dead_schedulers_charge(
        api, merchant, db, subscription, invoice, erring, 2
    )
    assert status == 502 and failed["error"]["code"] == "processor_error"
    await save_card(api, merchant, ada, APPROVED_VISA, default=True)

    await advance(api, merchant, clock, "2027-05-02T08:30:00Z")
    [invoice] = await invoices_of(api, merchant, subscription)
    assert (invoice["status"], invoice["attempt_count"]) == ("open", 2)
    assert invoice["next_payment_attempt"] == "2027-05-02T09:00:00Z"
    await advance(api, merchant, clock, "2027-05-02T09:30:00Z")
    [invoice] = await invoices_of(api, merchant, subscription)
    assert (invoice["status"], invoice["attempt_count"]) == ("paid", 3)
    assert (await subscription_of(api, merchant, subscription))["status"] == "active"


async def test_cancel_at_period_end_ends_it_then_and_cancel_now_at_once(api, merchant):
    clock = await new_clock(api, merchant, "2027-01-10T00:00:00Z")
    ada = await new_customer(api, merchant, clock)
    await save_card(api, merchant, ada)
    price = await new_price(api, merchant, 700)
    subscription = await subscribe(api, merchant, ada, price)
    await settled_invoices(api, merchant, subscription, 1)

    path = f"/v1/subscriptions/{subscription['id']}/cancel"
    scheduled = await created(api, merchant, path, {"at_period_end": True}, status=200)
    assert scheduled["status"] == "active" and scheduled["cancel_at_period_end"] is True
    await advance(api, merchant, clock, "2027-03-01T00:00:00Z")
    ended = await subscription_of(api, merchant, subscription)
    assert ended["status"] == "canceled" and ended["ended_at"] == "2027-02-10T00:00:00Z"
    assert len(await invoices_of(api, merchant, subscription)) == 1  # no renewal after it
    deleted = await events_of(api, merchant, "customer.subscription.deleted")
    assert [e["data"]["object"]["id"] for e in deleted] == [subscription["id"]]

    other = await subscribe(api, merchant, ada, price)
    await settled_invoices(api, merchant, other, 1)
    now = await created(api, merchant, f"/v1/subscriptions/{other['id']}/cancel", {}, status=200)
    assert now["status"] == "canceled" and now["ended_at"] == "2027-03-01T00:00:00Z"
    status, answer, _ = await post(api, f"/v1/subscriptions/{other['id']}/cancel", merchant, {})
    assert status == 409 and answer["error"]["code"] == "subscription_state_invalid"


async def test_a_subscription_needs_a_card_unless_it_starts_with_a_trial(api, merchant):
    ada = await new_customer(api, merchant)
    price = await new_price(api, merchant)
    status, answer, _ = await post(
        api, "/v1/subscriptions", merchant, {"customer": ada["id"], "price": price["id"]}
    )
    assert status == 400 and answer["error"]["param"] == "customer", answer
    status, answer, _ = await post(
        api, "/v1/subscriptions", merchant, {"customer": ada["id"], "price": "price_nope"}
    )
    assert status == 404 and answer["error"]["param"] == "price", answer
    trialing = await subscribe(api, merchant, ada, price, trial_days=7)
    assert trialing["status"] == "trialing" and trialing["test_clock"] is None
    # On the real clock, with a card: the first period is charged now.
    await save_card(api, merchant, ada)
    active = await subscribe(api, merchant, ada, price)
    [invoice] = await settled_invoices(api, merchant, active, 1)
    assert (invoice["status"], invoice["period_start"]) == ("paid", active["current_period_start"])


async def test_clock_moves_only_forward_and_every_post_is_idempotent(api, merchant):
    clock = await new_clock(api, merchant, "2027-01-01T00:00:00Z")
    path = f"/v1/test_clocks/{clock['id']}/advance"
    status, answer, _ = await post(api, path, merchant, {"frozen_time": "2026-12-31T00:00:00Z"})
    assert status == 400 and answer["error"]["param"] == "frozen_time"
    status, answer, _ = await post(api, path, merchant, {"frozen_time": "next tuesday"})
    assert status == 400 and answer["error"]["param"] == "frozen_time"

    body = {"frozen_time": "2027-02-01T00:00:00Z"}
    status, first, _ = await post(api, path, merchant, body, key="advance-1")
    assert status == 200
    status, again, response = await post(api, path, merchant, body, key="advance-1")
    assert (status, again) == (200, first)
    assert response.headers["Idempotent-Replayed"] == "true"
    body = {"email": "once@example.com"}
    status, one, _ = await post(api, "/v1/customers", merchant, body, key="customer-1")
    status, two, response = await post(api, "/v1/customers", merchant, body, key="customer-1")
    assert (status, two["id"]) == (201, one["id"])
    assert response.headers["Idempotent-Replayed"] == "true"
    status, listed = await get(api, "/v1/customers?email=once@example.com", merchant)
    assert len(listed["data"]) == 1


async def test_many_subscriptions_on_one_clock_get_exactly_one_invoice_per_period(
    api, merchant, db
):
    clock = await new_clock(api, merchant, "2027-01-15T00:00:00Z")
    price = await new_price(api, merchant, 1000)
    subscriptions = []
    for n in range(30):
        customer = await new_customer(api, merchant, clock, email=f"c{n}@example.com")
        await save_card(api, merchant, customer)
        subscriptions.append(await subscribe(api, merchant, customer, price))
    await advance(api, merchant, clock, "2027-07-20T00:00:00Z")  # periods 0..6
    counts = await db.fetch(
        "SELECT subscription_id, count(*) AS invoices, count(DISTINCT period_index) AS periods,"
        "       count(*) FILTER (WHERE status = 'paid') AS paid"
        "  FROM invoices GROUP BY subscription_id"
    )
    assert len(counts) == 30
    assert {(c["invoices"], c["periods"], c["paid"]) for c in counts} == {(7, 7, 7)}
    captured = await db.fetchval(
        "SELECT count(*) FROM payments WHERE status = 'captured' AND off_session"
    )
    assert captured == 30 * 7


async def test_the_database_refuses_a_second_invoice_for_a_period_and_a_second_success(
    api, merchant, db
):
    """The promises are constraints, not code: whatever a scheduler does, a period has one
    invoice and an invoice one successful attempt."""
    import asyncpg

    clock = await new_clock(api, merchant)
    ada = await new_customer(api, merchant, clock)
    saved = await save_card(api, merchant, ada)
    subscription = await subscribe(api, merchant, ada, await new_price(api, merchant))
    [invoice] = await settled_invoices(api, merchant, subscription, 1)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO invoices (id, merchant_id, subscription_id, customer_id, period_index,"
            " period_start, period_end, amount, currency, status, next_attempt_at)"
            " SELECT 'in_twin', merchant_id, subscription_id, customer_id, period_index,"
            " period_start, period_end, amount, currency, 'open', now()"
            " FROM invoices WHERE id = $1",
            invoice["id"],
        )
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO invoice_attempts (invoice_id, attempt, token_id, idempotency_key,"
            " outcome) VALUES ($1, 2, $2, 'another', 'succeeded')",
            invoice["id"],
            saved["id"],
        )


@pytest.mark.parametrize("key_swept", [False, True], ids=["key-kept", "key-swept"])
async def test_a_renewal_charged_before_a_crash_is_the_same_request_when_retried(
    server, api, merchant, db, key_swept
):
    """A scheduler that charged an attempt and died before recording it: its successor
    sends the same request (same Idempotency-Key, same body), the payment path answers it
    from its record, and the invoice is paid by that one payment, not a second one. Also
    once the key's record is swept (no scheduler ran for its retention): the payment is
    found by its own key column, and not made again."""
    clock = await new_clock(api, merchant, "2027-05-01T08:00:00Z")
    ada = await new_customer(api, merchant, clock)
    await save_card(api, merchant, ada, DECLINED_CARD)
    subscription = await subscribe(api, merchant, ada, await new_price(api, merchant, 2500))
    [invoice] = await settled_invoices(api, merchant, subscription, 1)
    assert invoice["attempt_count"] == 1
    good = await save_card(api, merchant, ada, APPROVED_VISA, default=True)
    status, charged, key = await dead_schedulers_charge(
        api, merchant, db, subscription, invoice, good, 2
    )
    assert status == 201 and charged["status"] == "captured"
    if key_swept:
        await db.execute(
            "DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2", merchant.id, key
        )
        # New worker processes: no in-process table remembers the key either.
        server.stop()
        server.start()
        await server.wait_ready_async(60, all_workers=True)

    await advance(api, merchant, clock, "2027-05-02T09:00:00Z")
    [invoice] = await invoices_of(api, merchant, subscription)
    assert (invoice["status"], invoice["attempt_count"]) == ("paid", 2)
    assert invoice["payment_id"] == charged["id"]
    captured = await db.fetchval(
        "SELECT count(*) FROM payments WHERE status = 'captured' AND metadata->>'invoice' = $1",
        invoice["id"],
    )
    assert captured == 1
