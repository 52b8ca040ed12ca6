"""The hosted page's routes: no merchant key (a session's unguessable id is its secret),
HTML answers with API.md's Content-Security-Policy, and a plain form post that pays.

  GET  /checkout/{id}          the page: the form, or what the session's state says
  POST /checkout/{id}/pay      form-encoded; confirms the session's payment
  GET  /pay/{plink_id}         a fresh session per visit, 303 to its page (410 if retired)
  GET  /checkout/static/{name} the page's own CSS and JS, cached for a year

Paying confirms the payment through ``PaymentService.confirm``, with the merchant's own
card-testing limits and an Idempotency-Key made of the session and the attempt the form
carries: a double click, or the same form posted again after a reload, is the same
request, answered from the first (never a second authorization); another card after a
decline is the next attempt, a new key.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import orjson
from aiohttp import web

import core_ext
from core_ext.errors import CoreError
from gateway.checkout import locales
from gateway.checkout.page import (
    ASSETS,
    FormState,
    content_security_policy,
    form_page,
    notice_page,
    summary,
)
from gateway.checkout.service import PAID_STATUSES, CheckoutService
from gateway.http.answers import ApiError
from gateway.http.appkeys import CHECKOUT, SETTINGS
from gateway.http.middleware import DATABASE_UNAVAILABLE
from gateway.store.pipeline import Overloaded

log = logging.getLogger("kassa.checkout")

states = core_ext.states

ATTEMPTS_PER_SESSION_MAX = 5  # processor attempts one session may make (card testing)
PAY_BODY_BYTES_MAX = 4 * 1024  # the form is five short fields; anything larger is not it
PAY_FIELDS_MAX = 10
WAITING_REFRESH_S = 2  # the waiting page asks again this often (meta refresh, no script)
UNAVAILABLE_RETRY_AFTER_S = 5
# Each visit of a payment link writes a session and a payment: a crawler or a script
# looping on a link is held to this per link and worker process (a token bucket), so it
# cannot fill the database; a shared invoice link sees far fewer visits than this.
LINK_VISITS_PER_S = 5
LINK_VISITS_BURST = 50
STATIC_CACHE = "public, max-age=31536000, immutable"  # names carry their content's hash
FORM_TYPE = "application/x-www-form-urlencoded"
EXPIRY = re.compile(r"\s*([0-9]{1,2})\s*/?\s*([0-9]{2}|[0-9]{4})\s*")
# The core's parameter names (payment_method.card.*) and the page's fields.
FIELD_OF_PARAM = {
    "payment_method.card.number": "number",
    "payment_method.card.exp_month": "expiry",
    "payment_method.card.exp_year": "expiry",
    "payment_method.card.cvc": "cvc",
    "payment_method.card.holder_name": "name",
}
ERROR_OF_FIELD = {
    "number": "error_number",
    "expiry": "error_expiry",
    "cvc": "error_cvc",
    "name": "error_name",
}


def _html(
    text: str,
    status: int = 200,
    *urls: str | None,
) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    _protect(response, *urls)
    return response


def _protect(response: web.StreamResponse, *urls: str | None) -> None:
    response.headers["Content-Security-Policy"] = content_security_policy(*urls)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "Accept-Language"  # the language can follow the buyer's


def _see_other(location: str, *urls: str | None) -> web.Response:
    response = web.Response(status=303, headers={"Location": location})
    _protect(response, *urls)
    return response


def with_session_id(url: str, session_id: str) -> str:
    """``url`` with ``session_id=cs_...`` added to its query, the rest kept as it was."""
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + "session_id=" + session_id
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def attempts_made(row: asyncpg.Record) -> int:
    """The processor attempts the session's payment has made (API.md ``attempts``)."""
    earlier = row["earlier_attempts"]
    made = 0 if earlier is None else len(orjson.loads(earlier))
    if row["payment_status"] not in (states.REQUIRES_PAYMENT_METHOD, states.CANCELED):
        made += 1
    return made


class Page:
    """One request's view of a session: its language and the pieces every page shows."""

    def __init__(self, request: web.Request, row: asyncpg.Record) -> None:
        self.row = row
        self.lang = locales.choose(row["locale"], request.headers.get("Accept-Language"))
        self.messages = locales.messages(self.lang)
        self.amount = locales.format_amount(row["amount"], row["currency"], self.lang)

    @property
    def urls(self) -> tuple[str | None, str | None]:
        return self.row["success_url"], self.row["cancel_url"]

    def summary(self) -> str:
        return summary(
            self.messages, self.row["merchant_name"], self.amount, self.row["description"]
        )

    def notice(
        self, key: str, status: int, refresh_s: int | None = None, **names: str
    ) -> web.Response:
        text = self.messages[f"{key}_body"].format(**names)
        return _html(
            notice_page(
                self.lang,
                self.messages[f"{key}_title"],
                text,
                self.summary(),
                refresh_s=refresh_s,
            ),
            status,
            *self.urls,
        )

    def form(self, service: CheckoutService, state: FormState, status: int = 200) -> web.Response:
        row = self.row
        return _html(
            form_page(
                self.lang,
                self.messages,
                row["id"],
                service.tokens.token(row["id"]),
                row["merchant_name"],
                self.amount,
                row["description"],
                row["cancel_url"],
                state,
            ),
            status,
            *self.urls,
        )

    def decline_message(self, decline_code: str | None) -> str:
        return self.messages.get(
            f"decline_{decline_code}", self.messages["decline_generic_decline"]
        )


def _buyer_page(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A buyer's page answers HTML whatever fails: the database or the pipeline down is
    a page in the buyer's language saying nothing was charged (the write-ahead makes that
    true: a confirm interrupted here is settled by recovery), never an API error body."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except (*DATABASE_UNAVAILABLE, Overloaded) as exc:
            log.warning("checkout page unavailable: %s", type(exc).__name__)
            status = 503
        except Exception:
            log.exception("checkout page failed on %s", request.match_info.route.resource)
            status = 500
        lang = locales.choose("auto", request.headers.get("Accept-Language"))
        messages = locales.messages(lang)
        response = _html(
            notice_page(lang, messages["unavailable_title"], messages["unavailable_body"]),
            status,
        )
        response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_S)
        return response

    return answer


def _missing(request: web.Request, status: int = 404) -> web.Response:
    lang = locales.choose("auto", request.headers.get("Accept-Language"))
    messages = locales.messages(lang)
    return _html(notice_page(lang, messages["missing_title"], messages["missing_body"]), status)


async def _settled_page(
    request: web.Request, service: CheckoutService, row: asyncpg.Record
) -> web.Response | None:
    """The answer for a session that takes no payment now (complete, expired, its
    payment at the processor, its attempts spent); None if the form is what it needs."""
    if row["status"] == "open" and row["payment_status"] in PAID_STATUSES:
        row = await service.complete_if_paid(row["id"]) or row
    page = Page(request, row)
    if row["status"] == "complete":
        if row["success_url"]:
            return _see_other(with_session_id(row["success_url"], row["id"]), *page.urls)
        return _html(
            notice_page(
                page.lang,
                page.messages["complete_title"],
                page.messages["complete_body"].format(
                    amount=page.amount, merchant=row["merchant_name"]
                ),
                page.summary(),
                reference=f"{page.messages['receipt_reference']}: {row['payment_id']}",
            ),
            200,
            *page.urls,
        )
    if row["status"] == "expired" or row["expires_at"] <= datetime.now(UTC):
        return page.notice("expired", 410)
    if row["payment_status"] == states.PROCESSING:
        return page.notice("waiting", 202, refresh_s=WAITING_REFRESH_S)
    if row["payment_status"] not in (
        states.REQUIRES_PAYMENT_METHOD,
        states.DECLINED,
        states.FAILED,
    ):
        return page.notice("expired", 410)  # canceled or expired with the payment
    if attempts_made(row) >= ATTEMPTS_PER_SESSION_MAX:
        return _html(
            notice_page(
                page.lang,
                page.messages["expired_title"],
                page.messages["attempts_exhausted"],
                page.summary(),
            ),
            429,
            *page.urls,
        )
    return None


def _state_after(page: Page) -> FormState:
    """The form for the session's next attempt, saying why the last one failed."""
    row = page.row
    state = FormState(attempt=attempts_made(row) + 1)
    if row["payment_status"] == states.DECLINED:
        state.alert = page.decline_message(row["decline_code"])
    elif row["payment_status"] == states.FAILED:
        state.alert = page.messages["decline_processing_error"]
    return state


@_buyer_page
async def session_page(request: web.Request) -> web.Response:
    service = request.app[CHECKOUT]
    row = await service.page_session(request.match_info["id"])
    if row is None:
        return _missing(request)
    settled = await _settled_page(request, service, row)
    if settled is not None:
        return settled
    page = Page(request, row)
    return page.form(service, _state_after(page))


async def _form_fields(request: web.Request) -> dict[str, str] | None:
    """The posted form's fields (first value each), or None if it is not a small
    form-encoded body that arrived in time."""
    if request.content_type != FORM_TYPE:
        return None
    if request.content_length is not None and request.content_length > PAY_BODY_BYTES_MAX:
        return None
    timeout_s = request.app[SETTINGS].body_read_timeout_ms / 1000
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while size <= PAY_BODY_BYTES_MAX:
                chunk = await request.content.read(PAY_BODY_BYTES_MAX + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        return None
    if size > PAY_BODY_BYTES_MAX:
        return None
    try:
        parsed = parse_qs(
            b"".join(chunks).decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=PAY_FIELDS_MAX,
        )
    except (UnicodeDecodeError, ValueError):
        return None
    return {name: values[0] for name, values in parsed.items()}


def _confirm_body(fields: dict[str, str], state: FormState, page: Page) -> dict[str, object] | None:
    """The confirm request's body from the form, or None with the form's own errors set
    (those the core cannot see: an expiry that is not MM / YY)."""
    number = fields.get("number", "").replace(" ", "").replace("-", "")
    expiry = EXPIRY.fullmatch(fields.get("expiry", ""))
    if expiry is None:
        state.errors["expiry"] = page.messages["error_expiry"]
        if not number.isdigit() or not core_ext.validation.luhn_valid(number):
            state.errors["number"] = page.messages["error_number"]
        return None
    year = int(expiry.group(2))
    card: dict[str, object] = {
        "number": number,
        "exp_month": int(expiry.group(1)),
        "exp_year": year + 2000 if year < 100 else year,
        "cvc": fields.get("cvc", "").strip(),
    }
    name = fields.get("name", "").strip()
    if name:
        card["holder_name"] = name
    return {"payment_method": {"type": "card", "card": card}}


def _field_error(state: FormState, page: Page, error: CoreError) -> None:
    name = FIELD_OF_PARAM.get(error.param or "", "number")
    key = ERROR_OF_FIELD[name]
    if name == "expiry" and "expired" in error.message:
        key = "error_expiry_past"
    state.errors[name] = page.messages[key]


@_buyer_page
async def pay(request: web.Request) -> web.Response:
    service = request.app[CHECKOUT]
    session_id = request.match_info["id"]
    row = await service.page_session(session_id)
    if row is None:
        return _missing(request)
    settled = await _settled_page(request, service, row)
    if settled is not None:
        return settled  # complete, expired, or busy: it says so and takes no payment
    page = Page(request, row)
    fields = await _form_fields(request)
    made = attempts_made(row)
    if fields is None or not service.tokens.valid(session_id, fields.get("csrf_token", "")):
        state = _state_after(page)
        state.alert = page.messages["error_stale"]
        return page.form(service, state, 403 if fields is not None else 400)
    attempt_text = fields.get("attempt", "")
    attempt = int(attempt_text) if attempt_text.isdigit() and len(attempt_text) <= 3 else 0
    # The form names its attempt: the next one, or the latest again (a double click, or a
    # form posted again after a reload), which its key answers from the first.
    if attempt not in (made, made + 1) or attempt < 1:
        state = _state_after(page)
        state.alert = page.messages["error_stale"]
        return page.form(service, state, 409)
    state = FormState(attempt=attempt)
    name = fields.get("name", "")
    state.name = "" if core_ext.validation.contains_card_number(name) else name[:200]
    state.expiry = fields.get("expiry", "")[:9] if fields.get("expiry", "").strip() else ""
    if core_ext.validation.contains_card_number(state.expiry):
        state.expiry = ""
    body = _confirm_body(fields, state, page)
    if body is None:
        state.alert = page.messages["error_form"]
        return page.form(service, state, 400)
    key = f"checkout_{session_id}_attempt_{attempt}"
    try:
        answer = await service.payments.confirm(
            row["merchant_id"], row["payment_id"], body, key, service.risk(row)
        )
    except CoreError as exc:  # the core's validation: nothing was claimed or sent
        _field_error(state, page, exc)
        state.alert = page.messages["error_form"]
        return page.form(service, state, 400)
    except ApiError as exc:
        if exc.status in (409, 504):  # busy or timed out: the page shows it settle
            return _see_other(f"/checkout/{session_id}", *page.urls)
        raise
    if 200 <= answer.status < 300:
        done = await service.complete_if_paid(session_id)
        if done is not None and done["status"] == "complete" and done["success_url"]:
            return _see_other(with_session_id(done["success_url"], session_id), *page.urls)
        return _see_other(f"/checkout/{session_id}", *page.urls)  # the receipt
    if answer.status in (409, 422):
        # The same attempt still running, or already answered with another card: the
        # page, read afresh, says which.
        return _see_other(f"/checkout/{session_id}", *page.urls)
    fresh = await service.page_session(session_id) or row
    fresh_page = Page(request, fresh)
    settled = await _settled_page(request, service, fresh)
    if settled is not None:
        return settled  # its attempts are spent, or it changed meanwhile
    next_state = _state_after(fresh_page)
    next_state.name = state.name
    if answer.status not in (402, 502):
        next_state.alert = fresh_page.messages["decline_processing_error"]
    return fresh_page.form(service, next_state, 200)


@_buyer_page
async def payment_link(request: web.Request) -> web.Response:
    service = request.app[CHECKOUT]
    link_id = request.match_info["id"]
    wait_s = service.link_visits.take(
        link_id, LINK_VISITS_PER_S, LINK_VISITS_BURST, time.monotonic()
    )
    if wait_s > 0:
        lang = locales.choose("auto", request.headers.get("Accept-Language"))
        messages = locales.messages(lang)
        busy = _html(
            notice_page(lang, messages["unavailable_title"], messages["unavailable_body"]), 429
        )
        busy.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
        return busy
    row = await service.open_from_link(link_id)
    if row is None:
        return _missing(request)
    if "active" in row:  # the link itself: it is retired
        lang = locales.choose("auto", request.headers.get("Accept-Language"))
        messages = locales.messages(lang)
        return _html(notice_page(lang, messages["retired_title"], messages["retired_body"]), 410)
    return _see_other(f"/checkout/{row['id']}")


async def static_asset(request: web.Request) -> web.Response:
    asset = ASSETS.get(request.match_info["name"])
    if asset is None:
        return _missing(request)
    return web.Response(
        body=asset.body,
        content_type=asset.content_type,
        charset="utf-8",
        headers={"Cache-Control": STATIC_CACHE, "X-Content-Type-Options": "nosniff"},
    )


def setup(app: web.Application) -> None:
    router = app.router
    router.add_get("/checkout/static/{name}", static_asset)
    router.add_get("/checkout/{id}", session_page)
    router.add_post("/checkout/{id}/pay", pay)
    router.add_get("/pay/{id}", payment_link)
