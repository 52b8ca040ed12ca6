"""Checkout sessions and payment links over the API, and the hosted page over plain HTTP
(no browser: tests/test_checkout_page.py drives Chromium). A real Kassa in process on a
real port, a real PostgreSQL; the page is posted to as a browser with JavaScript off
would post it."""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from gateway.checkout import locales
from gateway.checkout.handlers import (
    ATTEMPTS_PER_SESSION_MAX,
    LINK_VISITS_BURST,
    LINK_VISITS_PER_S,
    with_session_id,
)
from gateway.http.appkeys import CHECKOUT
from tests.conftest import eventually
from tests.payments_helpers import APPROVED_VISA, future_expiry, get, post

SUCCESS_URL = "https://shop.example/thanks?order=1001"
CANCEL_URL = "https://shop.example/cart"
EXPECTED_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "form-action 'self' https://shop.example"
)
DECLINED_CARD = "4000000000000002"
TIMEOUT_CARD = "4000009990000005"
RECOVERY_WAIT_S = 20


def session_body(**changes: object) -> dict:
    body: dict = {
        "amount": 1999,
        "currency": "eur",
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        "reference": "order-1001",
        "description": "2 items",
        "locale": "en",
    }
    body.update(changes)
    return body


async def open_session(client, merchant, **changes: object) -> dict:
    status, body, _ = await post(client, "/v1/checkout/sessions", merchant, session_body(**changes))
    assert status == 201, body
    return body


def page_path(session: dict) -> str:
    return urlsplit(session["url"]).path


async def page_form(client, session: dict) -> dict[str, str]:
    """The hidden fields of the session's page form (CSRF token and attempt)."""
    response = await client.get(page_path(session))
    assert response.status == 200
    html = await response.text()
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))


def card_form(hidden: dict[str, str], number: str = APPROVED_VISA, **changes: str) -> dict:
    month, year = future_expiry()
    form = {
        **hidden,
        "number": " ".join(number[i : i + 4] for i in range(0, len(number), 4)),
        "expiry": f"{month:02d} / {year % 100:02d}",
        "cvc": "123",
        "name": "Ada Lovelace",
    }
    form.update(changes)
    return form


async def pay(client, session: dict, form: dict):
    return await client.post(page_path(session) + "/pay", data=form, allow_redirects=False)


async def processor_attempts(db: asyncpg.Pool, payment_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM sandbox_operations WHERE payment_id = $1 "
            "AND operation = 'authorize'",
            payment_id,
        )
    )


async def event_types(db: asyncpg.Pool, object_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT type FROM events WHERE object_id = $1 ORDER BY created_at, id", object_id
    )
    return [row["type"] for row in rows]


# --- sessions over the API -----------------------------------------------------------------


async def test_a_session_opens_around_a_payment_waiting_for_its_card(client, merchant):
    session = await open_session(client, merchant)
    assert session["object"] == "checkout_session"
    assert session["id"].startswith("cs_") and session["status"] == "open"
    assert session["url"] == f"http://{client.host}:{client.port}/checkout/{session['id']}"
    assert (session["amount"], session["currency"], session["capture"]) == (
        1999,
        "EUR",
        "automatic",
    )
    assert session["success_url"] == SUCCESS_URL and session["locale"] == "en"
    status, payment = await get(client, f"/v1/payments/{session['payment_id']}", merchant)
    assert status == 200 and payment["status"] == "requires_payment_method"
    assert payment["reference"] == "order-1001"
    status, read = await get(client, f"/v1/checkout/sessions/{session['id']}", merchant)
    assert status == 200 and read == session


async def test_urls_name_the_public_origin_when_it_is_set(app_factory, merchant):
    client = await app_factory(public_url="https://pay.example.com/")
    session = await open_session(client, merchant)
    assert session["url"] == f"https://pay.example.com/checkout/{session['id']}"
    status, link, _ = await post(
        client, "/v1/payment_links", merchant, {"amount": 500, "currency": "EUR"}
    )
    assert status == 201 and link["url"] == f"https://pay.example.com/pay/{link['id']}"


async def test_another_merchants_session_and_link_are_unknown(client, merchant, other_merchant):
    session = await open_session(client, merchant)
    status, body = await get(client, f"/v1/checkout/sessions/{session['id']}", other_merchant)
    assert status == 404 and body["error"]["code"] == "resource_missing"
    status, link, _ = await post(
        client, "/v1/payment_links", merchant, {"amount": 500, "currency": "EUR"}
    )
    assert status == 201
    status, body = await get(client, f"/v1/payment_links/{link['id']}", other_merchant)
    assert status == 404
    status, body, _ = await post(
        client, f"/v1/checkout/sessions/{session['id']}/expire", other_merchant
    )
    assert status == 404


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"success_url": "ftp://shop.example/x"}, "success_url", "parameter_invalid"),
        ({"success_url": "/thanks"}, "success_url", "parameter_invalid"),
        ({"cancel_url": "https:///nohost"}, "cancel_url", "parameter_invalid"),
        ({"cancel_url": "https://shop.example/a b"}, "cancel_url", "parameter_invalid"),
        ({"expires_in": 1799}, "expires_in", "parameter_invalid"),
        ({"expires_in": 86_401}, "expires_in", "parameter_invalid"),
        ({"expires_in": True}, "expires_in", "parameter_invalid"),
        ({"locale": "de"}, "locale", "parameter_invalid"),
        ({"amount": 0}, "amount", "amount_too_small"),
        ({"currency": "xxx"}, "currency", "parameter_invalid"),
        ({"capture": "later"}, "capture", "parameter_invalid"),
        ({"customer_email": "nobody"}, "customer_email", "parameter_invalid"),
        ({"description": "card 4242 4242 4242 4242"}, "description", "parameter_invalid"),
        ({"payment_method": {}}, "payment_method", "parameter_unknown"),
    ],
)
async def test_a_bad_session_field_is_named_and_changes_nothing(
    client, merchant, db, changes, param, code
):
    status, body, _ = await post(client, "/v1/checkout/sessions", merchant, session_body(**changes))
    assert status == 400, body
    assert (body["error"]["param"], body["error"]["code"]) == (param, code)
    assert await db.fetchval("SELECT count(*) FROM checkout_sessions") == 0
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


async def test_a_session_create_is_idempotent(client, merchant, db):
    body = session_body()
    status, first, _ = await post(client, "/v1/checkout/sessions", merchant, body, key="k-1")
    status2, again, response = await post(
        client, "/v1/checkout/sessions", merchant, body, key="k-1"
    )
    assert (status, status2) == (201, 201) and again == first
    assert response.headers["Idempotent-Replayed"] == "true"
    status, reused, _ = await post(
        client, "/v1/checkout/sessions", merchant, session_body(amount=5), key="k-1"
    )
    assert status == 422 and reused["error"]["code"] == "idempotency_key_reused"
    assert await db.fetchval("SELECT count(*) FROM checkout_sessions") == 1


async def test_expire_cancels_the_payment_and_writes_both_events(client, merchant, db):
    session = await open_session(client, merchant)
    path = f"/v1/checkout/sessions/{session['id']}/expire"
    status, expired, _ = await post(client, path, merchant)
    assert status == 200 and expired["status"] == "expired"
    _, payment = await get(client, f"/v1/payments/{session['payment_id']}", merchant)
    assert payment["status"] == "canceled"
    assert await event_types(db, session["id"]) == ["checkout.session.expired"]
    assert await event_types(db, session["payment_id"]) == ["payment.canceled"]
    status, again, _ = await post(client, path, merchant)
    assert status == 409 and again["error"]["code"] == "payment_state_invalid"
    status, listed = await get(client, "/v1/events?type=checkout.session.expired", merchant)
    assert status == 200
    assert [e["data"]["object"]["id"] for e in listed["data"]] == [session["id"]]


async def _status_is(client, merchant, session_id: str, status: str) -> bool:
    _, read = await get(client, f"/v1/checkout/sessions/{session_id}", merchant)
    return read["status"] == status


async def test_the_background_pass_expires_a_session_past_its_deadline(client, merchant, db):
    session = await open_session(client, merchant, expires_in=1800)
    await db.execute(
        "UPDATE checkout_sessions SET created_at = now() - interval '2 hours', "
        "expires_at = now() - interval '1 second' WHERE id = $1",
        session["id"],
    )
    moved = await client.app[CHECKOUT].run_due()
    # The app's own recovery loop runs the same pass (at start, then every 5 s): on a busy
    # machine it may take the session first, or hold it locked while this call skips it.
    # Either way the session expires exactly once.
    if moved == 0:
        await eventually(
            lambda: _status_is(client, merchant, session["id"], "expired"), 10, "the loop's pass"
        )
    else:
        assert moved == 1
    _, read = await get(client, f"/v1/checkout/sessions/{session['id']}", merchant)
    assert read["status"] == "expired"
    assert await event_types(db, session["id"]) == ["checkout.session.expired"]
    response = await client.get(page_path(session))
    assert response.status == 410
    assert "This checkout has expired" in await response.text()


async def test_the_recovery_loop_itself_expires_sessions_and_cancels_their_payment(
    app_factory, merchant, db
):
    client = await app_factory(recovery_interval_s=1)
    session = await open_session(client, merchant, expires_in=1800)
    await db.execute(
        "UPDATE checkout_sessions SET created_at = now() - interval '2 hours', "
        "expires_at = now() - interval '1 second' WHERE id = $1",
        session["id"],
    )
    deadline = time.monotonic() + RECOVERY_WAIT_S
    read: dict = {}
    while time.monotonic() < deadline:
        _, read = await get(client, f"/v1/checkout/sessions/{session['id']}", merchant)
        if read["status"] != "open":
            break
        await asyncio.sleep(0.3)
    assert read["status"] == "expired"
    _, payment = await get(client, f"/v1/payments/{session['payment_id']}", merchant)
    assert payment["status"] == "canceled"
    assert await event_types(db, session["id"]) == ["checkout.session.expired"]


# --- payment links over the API ------------------------------------------------------------


async def test_a_payment_link_opens_a_fresh_session_per_visit_until_retired(client, merchant, db):
    status, link, _ = await post(
        client,
        "/v1/payment_links",
        merchant,
        {"amount": 2500, "currency": "EUR", "description": "Invoice 7"},
        key="link-1",
    )
    assert status == 201 and link["active"] is True and link["id"].startswith("plink_")
    path = urlsplit(link["url"]).path
    first = await client.get(path, allow_redirects=False)
    second = await client.get(path, allow_redirects=False)
    assert first.status == second.status == 303
    assert first.headers["Location"] != second.headers["Location"]
    rows = await db.fetch("SELECT payment_link_id FROM checkout_sessions")
    assert [row["payment_link_id"] for row in rows] == [link["id"], link["id"]]
    status, retired, _ = await post(
        client, f"/v1/payment_links/{link['id']}", merchant, {"active": False}
    )
    assert status == 200 and retired["active"] is False
    gone = await client.get(path, allow_redirects=False)
    assert gone.status == 410
    assert "no longer active" in await gone.text()
    status, body, _ = await post(
        client, f"/v1/payment_links/{link['id']}", merchant, {"active": "no"}
    )
    assert status == 400 and body["error"]["param"] == "active"


async def test_link_visits_are_held_to_a_rate_per_link(client, merchant, db):
    status, link, _ = await post(
        client, "/v1/payment_links", merchant, {"amount": 900, "currency": "EUR"}
    )
    assert status == 201
    path = urlsplit(link["url"]).path
    # Visits one after another until one is refused. Each takes a commit, so on a slow
    # machine the bucket refills meanwhile: the burst is admitted, and at most what the
    # rate gave back in the time the visits took.
    started = time.monotonic()
    statuses: list[int] = []
    while 429 not in statuses:
        assert len(statuses) <= 10 * LINK_VISITS_BURST, "visits were never held to a rate"
        statuses.append((await client.get(path, allow_redirects=False)).status)
    elapsed_s = time.monotonic() - started
    admitted = len(statuses) - 1
    assert statuses[:admitted] == [303] * admitted
    assert LINK_VISITS_BURST <= admitted <= LINK_VISITS_BURST + LINK_VISITS_PER_S * elapsed_s + 1
    assert await db.fetchval("SELECT count(*) FROM checkout_sessions") == admitted


async def test_a_link_visit_never_takes_the_visitors_host_for_the_session_url(client, merchant, db):
    status, link, _ = await post(
        client, "/v1/payment_links", merchant, {"amount": 900, "currency": "EUR"}
    )
    assert status == 201
    visit = await client.get(
        urlsplit(link["url"]).path, headers={"Host": "evil.example"}, allow_redirects=False
    )
    assert visit.status == 303
    url = await db.fetchval("SELECT url FROM checkout_sessions")
    assert url.startswith(f"http://{client.host}:{client.port}/checkout/cs_")


# --- the page over plain HTTP (JavaScript off) ----------------------------------------------


async def test_the_page_has_its_labels_its_token_and_the_exact_policy(client, merchant):
    session = await open_session(client, merchant)
    response = await client.get(page_path(session))
    assert response.status == 200
    assert response.headers["Content-Security-Policy"] == EXPECTED_CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    html = await response.text()
    for label in ("Card number", "Expiry date", "CVC", "Name on card"):
        assert f">{label}<" in html
    assert ">Pay</button>" in html and f'href="{CANCEL_URL}"' in html
    assert "<style" not in html and "style=" not in html
    assert re.search(r"<script(?![^>]*\bsrc=\"/checkout/static/)", html) is None
    assert "€19.99" in html


async def test_static_assets_are_cached_for_a_year(client, merchant):
    session = await open_session(client, merchant)
    html = await (await client.get(page_path(session))).text()
    for asset in re.findall(r'(?:href|src)="(/checkout/static/[^"]+)"', html):
        response = await client.get(asset)
        assert response.status == 200
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"


async def test_paying_with_the_form_redirects_to_success_and_completes(client, merchant, db):
    session = await open_session(client, merchant)
    form = card_form(await page_form(client, session))
    response = await pay(client, session, form)
    assert response.status == 303
    assert response.headers["Location"] == SUCCESS_URL + "&session_id=" + session["id"]
    reload = await client.get(page_path(session), allow_redirects=False)
    assert reload.status == 303 and reload.headers["Location"] == response.headers["Location"]
    _, read = await get(client, f"/v1/checkout/sessions/{session['id']}", merchant)
    assert read["status"] == "complete" and read["completed"] is not None
    assert await event_types(db, session["id"]) == ["checkout.session.completed"]
    # The same form posted again (a double submit, a reload): one authorization.
    again = await pay(client, session, form)
    assert again.status == 303
    assert await processor_attempts(db, session["payment_id"]) == 1
    _, payment = await get(client, f"/v1/payments/{session['payment_id']}", merchant)
    assert payment["status"] == "captured" and len(payment["attempts"]) == 1


async def test_a_decline_shows_its_reason_then_another_card_pays(client, merchant, db):
    session = await open_session(client, merchant, locale="fi")
    hidden = await page_form(client, session)
    declined = await pay(client, session, card_form(hidden, DECLINED_CARD))
    assert declined.status == 200
    html = await declined.text()
    assert "Korttisi hylättiin" in html
    assert DECLINED_CARD not in html and "4000 0000 0000 0002" not in html
    retry = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
    assert retry["attempt"] == "2"
    paid = await pay(client, session, card_form(retry))
    assert paid.status == 303
    _, payment = await get(client, f"/v1/payments/{session['payment_id']}", merchant)
    assert payment["status"] == "captured"
    assert [a["outcome"] for a in payment["attempts"]] == ["declined", "authorized"]


async def test_a_bad_field_is_tied_to_its_input_and_nothing_is_sent(client, merchant, db):
    session = await open_session(client, merchant)
    hidden = await page_form(client, session)
    response = await pay(client, session, card_form(hidden, "4242424242424241"))
    assert response.status == 400
    html = await response.text()
    assert 'id="number" name="number"' in html
    assert re.search(
        r'id="number"[^>]*aria-invalid="true"[^>]*aria-describedby="number-error"', html
    )
    assert "Enter a valid card number." in html
    assert await processor_attempts(db, session["payment_id"]) == 0


async def test_a_form_without_its_token_pays_nothing(client, merchant, db):
    session = await open_session(client, merchant)
    hidden = await page_form(client, session)
    response = await pay(client, session, card_form({**hidden, "csrf_token": "0" * 64}))
    assert response.status == 403
    assert await processor_attempts(db, session["payment_id"]) == 0


async def test_attempts_per_session_are_limited(client, merchant, db):
    session = await open_session(client, merchant)
    hidden = await page_form(client, session)
    for attempt in range(1, ATTEMPTS_PER_SESSION_MAX + 1):
        response = await pay(
            client, session, card_form({**hidden, "attempt": str(attempt)}, DECLINED_CARD)
        )
        assert response.status in (200, 429)
    exhausted = await pay(
        client,
        session,
        card_form({**hidden, "attempt": str(ATTEMPTS_PER_SESSION_MAX + 1)}),
    )
    assert exhausted.status == 429
    assert await processor_attempts(db, session["payment_id"]) == ATTEMPTS_PER_SESSION_MAX


async def test_the_merchants_card_testing_rules_hold_on_the_page(client, merchant, db):
    from gateway.store.merchants import set_limits

    async with db.acquire() as conn:
        await set_limits(conn, merchant.id, {"velocity_card_declines_max": 1})
    session = await open_session(client, merchant)
    hidden = await page_form(client, session)
    first = await pay(client, session, card_form(hidden, DECLINED_CARD))
    assert "Your card was declined" in await first.text()
    retry = card_form({**hidden, "attempt": "2"}, DECLINED_CARD)
    refused = await pay(client, session, retry)
    assert "Too many attempts with this card" in await refused.text()
    _, payment = await get(client, f"/v1/payments/{session['payment_id']}", merchant)
    assert payment["decline_code"] == "card_velocity_exceeded"
    assert await processor_attempts(db, session["payment_id"]) == 1  # refused before it


async def test_a_timeout_shows_a_waiting_page_until_recovery_settles(app_factory, merchant, db):
    client = await app_factory(processor_timeout_ms=200, recovery_after_s=1, recovery_interval_s=1)
    session = await open_session(client, merchant, success_url=None)
    hidden = await page_form(client, session)
    response = await pay(client, session, card_form(hidden, TIMEOUT_CARD))
    assert response.status == 303
    waiting = await client.get(page_path(session))
    assert waiting.status == 202
    html = await waiting.text()
    assert '<meta http-equiv="refresh" content="2">' in html
    # Recovery (every second here) asks the processor and settles the payment; the page,
    # refreshed as the buyer's browser would, then shows the receipt.
    deadline = time.monotonic() + RECOVERY_WAIT_S
    while time.monotonic() < deadline:
        if (await client.get(page_path(session))).status != 202:
            break
        await asyncio.sleep(0.5)
    receipt = await client.get(page_path(session))
    assert receipt.status == 200
    assert "Payment received" in await receipt.text()
    _, read = await get(client, f"/v1/checkout/sessions/{session['id']}", merchant)
    assert read["status"] == "complete"


async def test_an_expired_session_takes_no_payment(client, merchant, db):
    session = await open_session(client, merchant)
    hidden = await page_form(client, session)
    await post(client, f"/v1/checkout/sessions/{session['id']}/expire", merchant)
    response = await pay(client, session, card_form(hidden))
    assert response.status == 410
    assert await processor_attempts(db, session["payment_id"]) == 0


async def test_no_full_card_number_is_stored_or_echoed(client, merchant, db):
    session = await open_session(client, merchant)
    hidden = await page_form(client, session)
    declined = await pay(client, session, card_form(hidden, DECLINED_CARD))
    paid_form = card_form(
        dict(
            re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', await declined.text())
        )
    )
    paid = await pay(client, session, paid_form)
    for response in (declined, paid):
        assert DECLINED_CARD not in response.headers.get("Location", "")
        assert APPROVED_VISA not in response.headers.get("Location", "")
    tables = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    for table in tables:
        dump = await db.fetchval(
            f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table['tablename']} t"
        )
        assert APPROVED_VISA not in dump and DECLINED_CARD not in dump, table


# --- the page's pieces ---------------------------------------------------------------------


def test_every_catalog_has_the_same_messages():
    keys = set(locales.CATALOGS["en"])
    for locale, catalog in locales.CATALOGS.items():
        assert set(catalog) == keys, locale


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "written"),
    [
        (1999, "EUR", "en", "€19.99"),
        (123456789, "EUR", "fi", "1\u00a0234\u00a0567,89\u00a0€"),
        (123456, "SEK", "sv", "1\u00a0234,56\u00a0SEK"),
        (100005, "EUR", "fr", "1\u202f000,05\u00a0€"),
        (1234, "JPY", "en", "¥1,234"),
        (1234, "JPY", "fi", "1\u00a0234\u00a0¥"),
        (12345, "BHD", "en", "12.345\u00a0BHD"),
        (5, "USD", "en", "$0.05"),
    ],
)
def test_amounts_are_written_per_locale_and_exponent(amount, currency, locale, written):
    assert locales.format_amount(amount, currency, locale) == written


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, "en"),
        ("fi-FI,fi;q=0.9,en;q=0.8", "fi"),
        ("de-DE,sv;q=0.5,fr;q=0.7", "fr"),
        ("de, ja", "en"),
        ("fr;q=0, sv", "sv"),
        ("en;q=bad, fi;q=0.1", "fi"),
    ],
)
def test_accept_language_picks_the_locale_under_auto(header, chosen):
    assert locales.choose("auto", header) == chosen
    assert locales.choose("sv", header) == "sv"


def test_success_urls_keep_their_query():
    assert with_session_id("https://a.example/t", "cs_1") == "https://a.example/t?session_id=cs_1"
    assert (
        with_session_id("https://a.example/t?x=1&y=%20#frag", "cs_1")
        == "https://a.example/t?x=1&y=%20&session_id=cs_1#frag"
    )
    assert parse_qs(urlsplit(with_session_id(SUCCESS_URL, "cs_2")).query) == {
        "order": ["1001"],
        "session_id": ["cs_2"],
    }
