"""The hosted checkout page in a real browser: Debian's Chromium driven by Python
Playwright, against a real `kassa serve --workers 2` and a real PostgreSQL. The shop is
another origin (a small server on another port) that the page sends the buyer back to.

Chromium cannot be downloaded here: scripts/install-browser installs Debian's package and
npm's axe-core (tests/browser), and scripts/test runs it before the suite.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, Request, async_playwright, expect

from gateway.testing import KassaServer, free_port
from tests.conftest import ROOT, Merchant, running_server
from tests.payments_helpers import APPROVED_VISA, future_expiry

CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = {375: ROOT / "docs" / "checkout-375.png", 1280: ROOT / "docs" / "checkout-1280.png"}
DECLINED_CARD = "4000000000000002"
AMEX = "378282246310005"
EXPECT_TIMEOUT_MS = 10_000
SERIOUS_IMPACTS = ("serious", "critical")

# Never skipped: scripts/test installs both first, so a missing one is a broken setup.
if not CHROMIUM.exists() or not AXE.exists():
    raise RuntimeError("tests/test_checkout_page.py needs scripts/install-browser to have run")


def test_install_browser_finds_everything_installed():
    """scripts/install-browser (scripts/test runs it first) has nothing left to install."""
    checked = subprocess.run(
        [str(ROOT / "scripts" / "install-browser"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (checked.returncode, checked.stderr) == (0, "")


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KassaServer]:
    with running_server(database_url, tmp_path_factory.mktemp("checkout-page")) as served:
        yield served


@pytest.fixture(scope="module")
async def shop() -> AsyncIterator[str]:
    """The merchant's own site, on another origin: where success and cancel lead."""

    async def thanks(request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>Thanks</title><h1>Thanks</h1>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/thanks", thanks)
    app.router.add_get("/cart", thanks)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"]
        )
        yield launched
        await launched.close()


@pytest.fixture
async def api(server: KassaServer, db, merchant: Merchant) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url, headers=merchant.headers) as session:
        yield session


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    opened.set_default_timeout(EXPECT_TIMEOUT_MS)
    yield opened
    await context.close()


async def open_session(api: aiohttp.ClientSession, shop: str, **changes: object) -> dict:
    body = {
        "amount": 1999,
        "currency": "eur",
        "success_url": f"{shop}/thanks?order=1001",
        "cancel_url": f"{shop}/cart",
        "description": "2 items",
        "locale": "en",
        **changes,
    }
    async with api.post("/v1/checkout/sessions", json=body) as response:
        assert response.status == 201
        return await response.json()


async def read(api: aiohttp.ClientSession, path: str) -> dict:
    async with api.get(path) as response:
        assert response.status == 200
        return await response.json()


async def authorizations(db, payment_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM sandbox_operations WHERE payment_id = $1 "
            "AND operation = 'authorize'",
            payment_id,
        )
    )


def expiry_text() -> str:
    month, year = future_expiry()
    return f"{month:02d}{year % 100:02d}"


async def fill_card(page: Page, number: str = APPROVED_VISA, name: str = "Ada Lovelace") -> None:
    """Type the card as a buyer does, field by field (what the script formats)."""
    await page.get_by_label("Card number").fill("")
    await page.get_by_label("Card number").press_sequentially(number)
    await page.get_by_label("Expiry date").fill("")
    await page.get_by_label("Expiry date").press_sequentially(expiry_text())
    await page.get_by_label("CVC").fill("1234" if number == AMEX else "123")
    await page.get_by_label("Name on card").fill(name)


async def axe_violations(page: Page) -> list[dict]:
    """axe-core's audit, injected from tests/browser/node_modules (never a CDN): the
    serious and critical violations."""
    await page.evaluate(AXE.read_text())
    results = await page.evaluate("axe.run(document)")
    return [v for v in results["violations"] if v["impact"] in SERIOUS_IMPACTS]


# --- paying ----------------------------------------------------------------------------------


async def test_pay_from_the_keyboard_with_the_number_formatted_and_its_brand_shown(
    api, shop, page, db
):
    session = await open_session(api, shop)
    await page.goto(session["url"])
    await page.get_by_label("Card number").focus()  # then only the keyboard
    await page.keyboard.type(APPROVED_VISA)
    await expect(page.get_by_label("Card number")).to_have_value("4242 4242 4242 4242")
    await expect(page.locator("#brand")).to_have_text("Visa")
    await page.keyboard.press("Tab")
    await page.keyboard.type(expiry_text())
    await expect(page.get_by_label("Expiry date")).to_have_value(re.compile(r"^\d\d / \d\d$"))
    await page.keyboard.press("Tab")
    await page.keyboard.type("123")
    await page.keyboard.press("Tab")
    await page.keyboard.type("Ada Lovelace")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Pay")).to_be_focused()
    async with page.expect_navigation(url=re.compile(r"/thanks")):
        await page.keyboard.press("Enter")
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"order": ["1001"], "session_id": [session["id"]]}
    done = await read(api, f"/v1/checkout/sessions/{session['id']}")
    assert done["status"] == "complete"
    payment = await read(api, f"/v1/payments/{session['payment_id']}")
    assert payment["status"] == "captured"
    assert await authorizations(db, session["payment_id"]) == 1


async def test_a_decline_then_another_card(api, shop, page, db):
    session = await open_session(api, shop)
    await page.goto(session["url"])
    await fill_card(page, DECLINED_CARD)
    await page.get_by_role("button", name="Pay").click()
    await expect(page.get_by_role("alert")).to_have_text(
        "Your card was declined. Try another card."
    )
    await expect(page.get_by_label("Card number")).to_have_value("")  # never echoed
    await expect(page.get_by_label("Name on card")).to_have_value("Ada Lovelace")
    await fill_card(page, AMEX)
    await expect(page.locator("#brand")).to_have_text("Amex")
    async with page.expect_navigation(url=re.compile(r"/thanks")):
        await page.get_by_role("button", name="Pay").click()
    payment = await read(api, f"/v1/payments/{session['payment_id']}")
    assert [a["outcome"] for a in payment["attempts"]] == ["declined", "authorized"]
    assert payment["card"]["brand"] == "amex"


async def test_a_double_click_and_a_double_post_authorize_once(api, shop, page, db):
    session = await open_session(api, shop)
    await page.goto(session["url"])
    await fill_card(page)
    # The same form posted twice at once (what a double click does without the script):
    # one attempt, one key, one authorization.
    statuses = await page.evaluate(
        """async () => {
            const form = new URLSearchParams(new FormData(document.getElementById("pay-form")));
            const post = () => fetch(document.getElementById("pay-form").action,
                {method: "POST", body: form, redirect: "manual"})
                .then(r => r.type === "opaqueredirect" ? 303 : r.status);
            return Promise.all([post(), post()]);
        }"""
    )
    # Each is sent on (303) or told to wait for the first (202, the waiting page).
    assert 303 in statuses and set(statuses) <= {303, 202}, statuses
    assert await authorizations(db, session["payment_id"]) == 1
    # And a real double click on a fresh session: the script submits once.
    second = await open_session(api, shop)
    await page.goto(second["url"])
    await fill_card(page)
    async with page.expect_navigation(url=re.compile(r"/thanks")):
        await page.get_by_role("button", name="Pay").dblclick()
    assert await authorizations(db, second["payment_id"]) == 1


async def test_a_reload_or_going_back_after_paying_pays_nothing_more(api, shop, page, db):
    session = await open_session(api, shop)
    await page.goto(session["url"])
    await fill_card(page)
    async with page.expect_navigation(url=re.compile(r"/thanks")):
        await page.get_by_role("button", name="Pay").click()
    await page.go_back()  # the page again: it is complete, so back to the shop
    await page.wait_for_url(re.compile(r"/thanks"))
    await page.goto(session["url"])
    await page.wait_for_url(re.compile(r"/thanks"))
    await page.reload()
    assert await authorizations(db, session["payment_id"]) == 1


async def test_javascript_off_a_plain_form_post_pays(api, shop, browser, db):
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    page.set_default_timeout(EXPECT_TIMEOUT_MS)
    try:
        session = await open_session(api, shop)
        await page.goto(session["url"])
        await page.get_by_label("Card number").fill("4242424242424241")  # a typo
        month, year = future_expiry()
        await page.get_by_label("Expiry date").fill(f"{month:02d}/{year % 100:02d}")
        await page.get_by_label("CVC").fill("123")
        await page.get_by_role("button", name="Pay").click()
        number = page.get_by_label("Card number")
        await expect(number).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#number-error")).to_have_text("Enter a valid card number.")
        assert await authorizations(db, session["payment_id"]) == 0
        await number.fill(APPROVED_VISA)
        await page.get_by_label("CVC").fill("123")
        async with page.expect_navigation(url=re.compile(r"/thanks")):
            await page.get_by_role("button", name="Pay").click()
        assert (await read(api, f"/v1/checkout/sessions/{session['id']}"))["status"] == "complete"
    finally:
        await context.close()


async def test_inline_errors_are_tied_to_their_fields(api, shop, page, db):
    session = await open_session(api, shop)
    await page.goto(session["url"])
    await page.get_by_label("Card number").press_sequentially("4242424242424241")
    await page.get_by_label("CVC").fill("12")
    await page.get_by_role("button", name="Pay").click()
    number = page.get_by_label("Card number")
    await expect(number).to_have_attribute("aria-invalid", "true")
    assert await page.evaluate("document.activeElement.id") == "number"
    described = (await number.get_attribute("aria-describedby") or "").split()
    assert "number-error" in described
    await expect(page.locator("#number-error")).to_have_text("Enter a valid card number.")
    await expect(page.get_by_label("Expiry date")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("CVC")).to_have_attribute("aria-invalid", "true")
    assert await authorizations(db, session["payment_id"]) == 0
    assert await axe_violations(page) == []


# --- the page's looks, language and rules -----------------------------------------------------


@pytest.mark.parametrize("width", [375, 1280])
async def test_the_page_fits_the_screen_and_is_photographed(api, shop, browser, width):
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    try:
        session = await open_session(api, shop, description="Order 1001: 2 items")
        await page.goto(session["url"])
        scroll_width = await page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= width, "no horizontal scrolling"
        for label in ("Card number", "Expiry date", "CVC", "Name on card"):
            box = await page.get_by_label(label).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
        button = await page.get_by_role("button", name="Pay").bounding_box()
        assert button is not None and button["height"] >= 44  # a thumb-sized target
        await page.get_by_label("Card number").press_sequentially(APPROVED_VISA)
        await page.get_by_label("Name on card").fill("Ada Lovelace")
        assert await axe_violations(page) == []
        await page.screenshot(path=str(SCREENSHOTS[width]), full_page=True)
    finally:
        await context.close()


LOCALIZED = {
    "en": (("Card number", "Expiry date", "CVC", "Name on card"), "Pay", "€1,234.56"),
    "fi": (("Kortin numero", "Voimassa", "CVC", "Nimi kortissa"), "Maksa", "1 234,56 €"),
    "sv": (("Kortnummer", "Giltigt till", "CVC", "Namn på kortet"), "Betala", "1 234,56 €"),
    "fr": (
        ("Numéro de carte", "Date d'expiration", "CVC", "Nom sur la carte"),
        "Payer",
        "1\u202f234,56 €",
    ),
}


@pytest.mark.parametrize("locale", sorted(LOCALIZED))
async def test_each_locale_labels_and_amount(api, shop, page, locale):
    labels, pay, amount = LOCALIZED[locale]
    session = await open_session(api, shop, locale=locale, amount=123456)
    await page.goto(session["url"])
    assert await page.get_attribute("html", "lang") == locale
    for label in labels:
        await expect(page.get_by_label(label, exact=False).first).to_be_visible()
    await expect(page.get_by_role("button", name=pay)).to_be_visible()
    shown = (await page.locator(".amount").inner_text()).replace("\u00a0", " ")
    assert shown == amount.replace("\u00a0", " ")
    assert await axe_violations(page) == []


async def test_auto_follows_the_browsers_language(api, shop, browser):
    context = await browser.new_context(locale="sv-SE")
    page = await context.new_page()
    try:
        session = await open_session(api, shop, locale="auto", currency="sek", amount=9900)
        await page.goto(session["url"])
        await expect(page.get_by_role("button", name="Betala")).to_be_visible()
        shown = (await page.locator(".amount").inner_text()).replace("\u00a0", " ")
        assert shown == "99,00 SEK"
    finally:
        await context.close()


async def test_an_expired_session_says_so_and_refuses_to_pay(api, shop, page, db):
    session = await open_session(api, shop)
    await page.goto(session["url"])
    await fill_card(page)
    async with api.post(f"/v1/checkout/sessions/{session['id']}/expire") as response:
        assert response.status == 200
    await page.get_by_role("button", name="Pay").click()  # the form loaded before
    await expect(page.get_by_role("heading", name="This checkout has expired")).to_be_visible()
    await page.goto(session["url"])
    await expect(page.get_by_role("heading", name="This checkout has expired")).to_be_visible()
    assert await page.locator("form").count() == 0
    assert await authorizations(db, session["payment_id"]) == 0
    payment = await read(api, f"/v1/payments/{session['payment_id']}")
    assert payment["status"] == "canceled"


async def test_a_payment_link_used_twice_makes_two_sessions_and_two_payments(api, shop, page, db):
    async with api.post(
        "/v1/payment_links",
        json={"amount": 700, "currency": "eur", "description": "Invoice 42"},
    ) as response:
        assert response.status == 201
        link = await response.json()
    for _ in range(2):
        await page.goto(link["url"])
        assert "/checkout/cs_" in page.url
        await fill_card(page)
        await page.get_by_role("button", name="Pay").click()
        await expect(page.get_by_role("heading", name="Payment received")).to_be_visible()
    rows = await db.fetch(
        "SELECT s.id, p.status FROM checkout_sessions s JOIN payments p ON p.id = s.payment_id "
        "WHERE s.payment_link_id = $1",
        link["id"],
    )
    assert len({row["id"] for row in rows}) == 2
    assert [row["status"] for row in rows] == ["captured", "captured"]
    async with api.post(f"/v1/payment_links/{link['id']}", json={"active": False}) as response:
        assert response.status == 200
    retired = await page.goto(link["url"])
    assert retired is not None and retired.status == 410
    await expect(
        page.get_by_role("heading", name="This payment link is no longer active")
    ).to_be_visible()


async def test_the_page_loads_nothing_from_another_origin_under_its_exact_policy(
    api, shop, page, server
):
    session = await open_session(api, shop)
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    response = await page.goto(session["url"])
    assert response is not None
    assert response.headers["content-security-policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"font-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self' {shop}"
    )
    await fill_card(page)
    async with page.expect_navigation(url=re.compile(r"/thanks")):
        await page.get_by_role("button", name="Pay").click()
    kassa = urlsplit(server.url).netloc
    elsewhere = [r.url for r in requests if urlsplit(r.url).netloc != kassa]
    # The only request to another origin is the buyer's own navigation back to the shop.
    assert elsewhere == [f"{shop}/thanks?order=1001&session_id={session['id']}"]
    assert [r.resource_type for r in requests if urlsplit(r.url).netloc == kassa] == [
        "document",
        "stylesheet",
        "script",
        "document",  # the form's post, answered 303 to the shop
    ]
    assert not [text for text in console if "Content Security Policy" in text]


async def test_no_full_card_number_in_any_page_url_log_or_row(api, shop, page, db, server):
    session = await open_session(api, shop)
    seen: list[str] = []

    async def keep(response) -> None:
        seen.append(response.url)
        seen.extend(response.headers.values())
        if response.request.resource_type == "document" and response.status != 303:
            seen.append(await response.text())

    page.on("response", lambda response: asyncio.ensure_future(keep(response)))
    await page.goto(session["url"])
    await fill_card(page, DECLINED_CARD)
    await page.get_by_role("button", name="Pay").click()
    await expect(page.get_by_role("alert")).not_to_be_empty()
    await fill_card(page)
    async with page.expect_navigation(url=re.compile(r"/thanks")):
        await page.get_by_role("button", name="Pay").click()
    await asyncio.sleep(0.2)  # the last bodies are read
    everything = "\n".join(seen) + server.logs()
    for number in (APPROVED_VISA, DECLINED_CARD):
        spaced = " ".join(number[i : i + 4] for i in range(0, 16, 4))
        assert number not in everything and spaced not in everything
    for table in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
        dump = await db.fetchval(
            f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table['tablename']} t"
        )
        assert APPROVED_VISA not in dump and DECLINED_CARD not in dump, table["tablename"]
