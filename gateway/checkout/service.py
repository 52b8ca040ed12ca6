"""Checkout sessions and payment links: validation, idempotency and the changes of status,
each with its event in the same transaction. All SQL is in gateway/store/checkout.py.

A session is a page around one payment that waits in requires_payment_method. Paying
confirms that payment through ``PaymentService.confirm``, the API's own path (validation,
card-testing rules, idempotency, write-ahead, events); once the payment is authorized the
session is ``complete``. Its status moves only from ``open``:

  complete: right after the page's confirm succeeds, or, when that answer was lost (a
            processor timeout, a crash), by the background pass that finds an open session
            whose payment succeeded;
  expired:  by ``POST .../expire`` or by the background pass once ``expires_at`` is past;
            the payment, if it holds no money, is canceled in the same transaction.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import core_ext
from core_ext.errors import CoreError
from gateway.config import Settings
from gateway.http.answers import Answer, ApiError, invalid_request, resource_missing
from gateway.http.params import check_unknown, require_id
from gateway.http.render import render_checkout_session, render_payment, render_payment_link
from gateway.idempotency import IdempotencyStore, Work
from gateway.ids import new_id
from gateway.merchants import LimitDefaults, risk_limits
from gateway.payments import PaymentService
from gateway.store import checkout as store
from gateway.store import events, ledger, payments

if TYPE_CHECKING:  # both builds share the pure source's types
    from core_ext.pure.validation import PaymentRequest

states = core_ext.states
validation = core_ext.validation

LOCALES = ("auto", "en", "fi", "sv", "fr")
EXPIRES_IN_S_MIN = 1_800  # API.md: expires_in 1800..86400 seconds
EXPIRES_IN_S_MAX = 86_400
EXPIRES_IN_S_DEFAULT = 86_400
URL_CHARS_MAX = 2_048
SESSION_FIELDS = (
    "amount",
    "currency",
    "capture",
    "success_url",
    "cancel_url",
    "reference",
    "description",
    "customer_email",
    "locale",
    "expires_in",
)
LINK_FIELDS = ("amount", "currency", "description", "capture", "success_url")
LINK_UPDATE_FIELDS = ("active",)
# A payment in these states holds money: its session is complete, never expired.
PAID_STATUSES = frozenset(
    (states.AUTHORIZED, states.CAPTURED, states.PARTIALLY_REFUNDED, states.REFUNDED)
)
# A payment in these states can be canceled when its session expires (it holds no money).
CANCELABLE_STATUSES = frozenset(
    (states.REQUIRES_PAYMENT_METHOD, states.REQUIRES_CONFIRMATION, states.DECLINED, states.FAILED)
)
DUE_ROWS_MAX = 100  # sessions moved per background pass, so one pass stays short
COMPLETED_EVENT = "checkout.session.completed"
EXPIRED_EVENT = "checkout.session.expired"
CSRF_PURPOSE = b"kassa checkout csrf v1"
PAGE_PATH = "/checkout/"
LINK_PATH = "/pay/"


@dataclass(frozen=True)
class SessionFields:
    payment: PaymentRequest  # validated by the core, with no payment method
    success_url: str | None
    cancel_url: str | None
    customer_email: str | None
    locale: str
    expires_in_s: int


class CsrfTokens:
    """Per-session CSRF tokens, never stored: an HMAC of the session id under a key HKDF
    derives from the master key for this purpose alone (as the webhook secrets' key is)."""

    def __init__(self, master_key: bytes) -> None:
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CSRF_PURPOSE).derive(
            master_key
        )

    def token(self, session_id: str) -> str:
        return hmac.new(self._key, session_id.encode(), sha256).hexdigest()

    def valid(self, session_id: str, given: str) -> bool:
        return hmac.compare_digest(self.token(session_id).encode(), given.encode())


class CheckoutService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        payments_service: PaymentService,
        idempotency: IdempotencyStore,
        settings: Settings,
        tokens: CsrfTokens,
    ) -> None:
        self._pool = pool
        self.payments = payments_service
        self._idempotency = idempotency
        self._acquire_timeout_s = settings.db_acquire_timeout_ms / 1000
        self._public_url = settings.public_url
        self._limits = LimitDefaults.from_settings(settings)
        self.tokens = tokens
        # Visits per payment link (gateway/checkout/handlers.py holds them to a rate).
        self.link_visits = core_ext.risk.RateLimiter()

    def _acquire(self) -> Any:
        return self._pool.acquire(timeout=self._acquire_timeout_s)

    def base_url(self, request_origin: str) -> str:
        """Where buyers reach the pages: KASSA_PUBLIC_URL, else the origin asked."""
        return self._public_url or request_origin

    def risk(self, row: Mapping[str, Any] | asyncpg.Record) -> object:
        """The session's merchant's card-testing limits, as its API key would carry them."""
        return risk_limits(row, self._limits)

    # --- sessions over the API ---------------------------------------------------------

    async def create_session(
        self, merchant_id: str, body: object, key: str | None, origin: str
    ) -> Answer:
        fields = session_fields(body)

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            row = await self._insert_session(conn, merchant_id, fields, None, origin)
            return Answer.of_json(201, render_checkout_session(row)), []

        return await self._post(merchant_id, key, "/v1/checkout/sessions", body, work)

    async def _post(
        self, merchant_id: str, key: str | None, path: str, body: object, work: Work
    ) -> Answer:
        return await self._idempotency.post(
            self._acquire, merchant_id, key, path, body, work, self.payments.outbox
        )

    async def _insert_session(
        self,
        conn: asyncpg.Connection,
        merchant_id: str,
        fields: SessionFields,
        link_id: str | None,
        origin: str,
    ) -> asyncpg.Record:
        """The session's payment (requires_payment_method: no processor, no ledger) and
        the session, in the caller's transaction; the session as read back."""
        request = fields.payment
        payment_id, session_id = new_id("pay"), new_id("cs")
        customer = {"email": fields.customer_email, "ip": None} if fields.customer_email else None
        await payments.insert_unconfirmed(
            conn,
            states.REQUIRES_PAYMENT_METHOD,
            (
                payment_id,
                merchant_id,
                request.amount,
                request.currency,
                request.capture,
                None,
                None,
                None,
                None,
                None,
                None,
                self.payments.processor_name,
                request.reference,
                request.description,
                "{}",
                None if customer is None else orjson.dumps(customer).decode(),
                None,  # idempotency_key: the session's create has its own
                None,  # customer_id: a buyer on the page is no saved customer
            ),
        )
        await store.insert_session(
            conn,
            session_id,
            merchant_id,
            payment_id,
            link_id,
            self.base_url(origin) + PAGE_PATH + session_id,
            fields.locale,
            fields.success_url,
            fields.cancel_url,
            fields.customer_email,
            fields.expires_in_s,
        )
        row = await store.session(conn, session_id)
        if row is None:
            raise RuntimeError(f"session {session_id} vanished in its own transaction")
        return row

    async def get_session(self, merchant_id: str, session_id: str) -> dict[str, Any]:
        require_id("checkout_session", session_id, "cs_")
        async with self._acquire() as conn:
            row = await store.session(conn, session_id, merchant_id)
        if row is None:
            raise resource_missing("checkout_session", session_id)
        return render_checkout_session(row)

    async def expire_session(
        self, merchant_id: str, session_id: str, body: object, key: str | None
    ) -> Answer:
        require_id("checkout_session", session_id, "cs_")
        check_unknown(_object(body), ())
        path = f"/v1/checkout/sessions/{session_id}/expire"
        claim, known = self._idempotency.prepare(merchant_id, key, "POST", path, body)
        if known:
            return known
        handed: list[events.Handoff] = []
        with self._idempotency.guard(claim):
            async with self._acquire() as conn, conn.transaction():
                row = await store.session(conn, session_id, merchant_id, lock=True)
                if row is None:
                    raise resource_missing("checkout_session", session_id)
                conflict = await self._idempotency.claim(conn, claim, row["payment_id"])
                if conflict:
                    return conflict
                moved = None
                if row["status"] == "open" and row["payment_status"] not in PAID_STATUSES:
                    moved = await _expire_locked(conn, row)
                if moved is None:
                    reason = (
                        f"the checkout session is {row['status']}"
                        if row["status"] != "open"
                        else "the session's payment is being or has been paid"
                    )
                    # Raised: the claim rolls back, and a retry once settled runs again.
                    raise invalid_request(
                        "payment_state_invalid",
                        f"{reason}; only an open session can be expired",
                        status=409,
                    )
                updated, new_events = moved
                answer = Answer.of_json(200, render_checkout_session(updated))
                handed = await events.write(
                    conn, new_events, updated["updated_at"], self.payments.outbox.lease_s
                )
                await self._idempotency.complete(conn, claim, answer)
        self.payments.outbox.written(handed)
        self._idempotency.remember(claim, answer)
        return answer

    # --- payment links over the API -----------------------------------------------------

    async def create_link(
        self, merchant_id: str, body: object, key: str | None, origin: str
    ) -> Answer:
        request, success_url = link_fields(body)
        link_id = new_id("plink")

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            row = await store.insert_link(
                conn,
                link_id,
                merchant_id,
                self.base_url(origin) + LINK_PATH + link_id,
                request.amount,
                request.currency,
                request.capture,
                request.description,
                success_url,
            )
            return Answer.of_json(201, render_payment_link(row)), []

        return await self._post(merchant_id, key, "/v1/payment_links", body, work)

    async def get_link(self, merchant_id: str, link_id: str) -> dict[str, Any]:
        require_id("payment_link", link_id, "plink_")
        async with self._acquire() as conn:
            row = await store.link(conn, link_id, merchant_id)
        if row is None:
            raise resource_missing("payment_link", link_id)
        return render_payment_link(row)

    async def update_link(
        self, merchant_id: str, link_id: str, body: object, key: str | None
    ) -> Answer:
        require_id("payment_link", link_id, "plink_")
        fields = _object(body)
        check_unknown(fields, LINK_UPDATE_FIELDS)
        active = fields.get("active")
        if active is not True and active is not False:
            code = "parameter_missing" if active is None else "parameter_invalid"
            raise invalid_request(code, "active must be true or false", "active")

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            row = await store.set_link_active(conn, link_id, merchant_id, active)
            if row is None:  # raised: the claim rolls back, a 404 is not stored
                raise resource_missing("payment_link", link_id)
            return Answer.of_json(200, render_payment_link(row)), []

        return await self._post(merchant_id, key, f"/v1/payment_links/{link_id}", body, work)

    # --- what the pages need ------------------------------------------------------------

    async def page_session(self, session_id: str) -> asyncpg.Record | None:
        """The session for its page (no merchant key: its unguessable id is the secret)."""
        if not validation.object_id_valid(session_id, "cs_"):
            return None
        async with self._acquire() as conn:
            return await store.session(conn, session_id)

    async def open_from_link(self, link_id: str) -> asyncpg.Record | None:
        """A fresh session for one visit of an active link; the link's row if it is
        retired (no session), None if there is no such link. The session's URL is on the
        link's own origin (fixed by the merchant's create), never on the Host a visitor
        sent."""
        if not validation.object_id_valid(link_id, "plink_"):
            return None
        async with self._acquire() as conn, conn.transaction():
            link = await store.link(conn, link_id)
            if link is None or not link["active"]:
                return link
            request = validation.validate_payment(
                {
                    "amount": link["amount"],
                    "currency": link["currency"],
                    "capture": link["capture_method"],
                    "description": link["description"],
                },
                0,
                0,
            )
            fields = SessionFields(
                request, link["success_url"], None, None, "auto", EXPIRES_IN_S_DEFAULT
            )
            origin = _origin_of(link["url"])
            return await self._insert_session(conn, link["merchant_id"], fields, link_id, origin)

    async def complete_if_paid(self, session_id: str) -> asyncpg.Record | None:
        """Complete the open session whose payment succeeded, with its event, in one
        transaction; the session as it is afterwards (None if it vanished)."""
        handed: list[events.Handoff] = []
        async with self._acquire() as conn, conn.transaction():
            row = await store.session(conn, session_id, lock=True)
            if row is None or row["status"] != "open" or row["payment_status"] not in PAID_STATUSES:
                return row
            row, new_events = await _complete_locked(conn, row)
            handed = await events.write(
                conn, new_events, row["updated_at"], self.payments.outbox.lease_s
            )
        self.payments.outbox.written(handed)
        return row

    async def run_due(self) -> int:
        """The background pass: complete the open sessions whose payment succeeded and
        expire those past their deadline (canceling their payment), in one transaction;
        sessions moved."""
        new_events: list[events.NewEvent] = []
        handed: list[events.Handoff] = []
        async with self._acquire() as conn, conn.transaction():
            at = await store.now(conn)
            for row in await store.due(conn, DUE_ROWS_MAX):
                if row["payment_status"] in PAID_STATUSES:
                    _, written = await _complete_locked(conn, row)
                else:
                    moved = await _expire_locked(conn, row)
                    if moved is None:  # its payment is at the processor: a later pass
                        continue
                    written = moved[1]
                new_events.extend(written)
            if new_events:
                handed = await events.write(conn, new_events, at, self.payments.outbox.lease_s)
        self.payments.outbox.written(handed)
        return sum(1 for e in new_events if e.type in (COMPLETED_EVENT, EXPIRED_EVENT))


async def _complete_locked(
    conn: asyncpg.Connection, row: asyncpg.Record
) -> tuple[asyncpg.Record, list[events.NewEvent]]:
    await store.finish_session(conn, row["id"], "complete")
    updated = await store.session(conn, row["id"])
    if updated is None:
        raise RuntimeError(f"session {row['id']} vanished while locked")
    return updated, [_session_event(updated, COMPLETED_EVENT)]


async def _expire_locked(
    conn: asyncpg.Connection, row: asyncpg.Record
) -> tuple[asyncpg.Record, list[events.NewEvent]] | None:
    """Expire the locked open session and cancel its payment if it holds no money (both
    with their events, in the caller's transaction); None if the payment is at the
    processor or paid (the payment's row lock, taken here, decides)."""
    new_events = []
    payment = await payments.lock(conn, row["payment_id"], row["merchant_id"])
    if payment is None:
        raise RuntimeError(f"the payment of session {row['id']} vanished")
    if payment["status"] in CANCELABLE_STATUSES:
        transition = states.cancel(
            payment["status"],
            payment["amount"],
            payment["amount_capturable"],
            payment["amount_captured"],
            payment["amount_refunded"],
        )
        updated_payment = await payments.cancel(conn, payment["id"], transition.status)
        await ledger.post(conn, transition, payment)  # moves nothing (the core's)
        new_events.append(
            events.NewEvent.of(
                row["merchant_id"],
                "payment.canceled",
                payment["id"],
                updated_payment["updated_at"],
                orjson.dumps(render_payment(updated_payment)),
            )
        )
    elif payment["status"] not in (states.CANCELED, states.EXPIRED):
        return None  # processing, or paid: never expire a session whose card is charged
    await store.finish_session(conn, row["id"], "expired")
    updated = await store.session(conn, row["id"])
    if updated is None:
        raise RuntimeError(f"session {row['id']} vanished while locked")
    new_events.append(_session_event(updated, EXPIRED_EVENT))
    return updated, new_events


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _session_event(row: asyncpg.Record, event_type: str) -> events.NewEvent:
    return events.NewEvent.of(
        row["merchant_id"],
        event_type,
        row["id"],
        row["updated_at"],
        orjson.dumps(render_checkout_session(row)),
    )


# --- validation -------------------------------------------------------------------------


def _object(body: object) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise invalid_request("parameter_invalid", "request body must be a JSON object")
    return body


def _money(body: Mapping[str, Any], names: tuple[str, ...], email: object = None) -> PaymentRequest:
    """amount, currency, capture, reference and description checked by the core's own
    payment validation (the same rules and messages as POST /v1/payments)."""
    today = datetime.now(UTC)
    payment_body = {name: body[name] for name in names if name in body}
    if email is not None:
        payment_body["customer"] = {"email": email}
    try:
        request: PaymentRequest = validation.validate_payment(payment_body, today.year, today.month)
        return request
    except CoreError as exc:
        error = ApiError.from_core(exc)
        if error.param == "customer.email":  # the session's own name for it
            error.param = "customer_email"
            error.message = "customer_email must be an email address"
        raise error from None


def check_url(value: object, param: str) -> str | None:
    """An absolute http(s) URL, or None when not given."""
    if value is None:
        return None
    message = f"{param} must be an absolute http:// or https:// URL"
    if not isinstance(value, str) or not 1 <= len(value) <= URL_CHARS_MAX:
        raise invalid_request("parameter_invalid", message, param)
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise invalid_request("parameter_invalid", message, param)
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise invalid_request("parameter_invalid", message, param) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise invalid_request("parameter_invalid", message, param)
    if validation.contains_card_number(value):
        raise invalid_request("parameter_invalid", f"{param} must not contain a card number", param)
    return value


def session_fields(body: object) -> SessionFields:
    """POST /v1/checkout/sessions, checked in API.md's order of its fields."""
    if not isinstance(body, dict):
        raise invalid_request("parameter_invalid", "request body must be a JSON object")
    fields: dict[str, Any] = body
    check_unknown(fields, SESSION_FIELDS)
    email = fields.get("customer_email")
    if email is not None and not isinstance(email, str):
        raise invalid_request(
            "parameter_invalid", "customer_email must be an email address", "customer_email"
        )
    request = _money(fields, ("amount", "currency", "capture", "reference", "description"), email)
    success_url = check_url(fields.get("success_url"), "success_url")
    cancel_url = check_url(fields.get("cancel_url"), "cancel_url")
    locale = fields.get("locale", "auto")
    if locale not in LOCALES:
        raise invalid_request(
            "parameter_invalid", "locale must be one of " + ", ".join(LOCALES), "locale"
        )
    expires_in = fields.get("expires_in", EXPIRES_IN_S_DEFAULT)
    if (
        not isinstance(expires_in, int)
        or isinstance(expires_in, bool)
        or not EXPIRES_IN_S_MIN <= expires_in <= EXPIRES_IN_S_MAX
    ):
        raise invalid_request(
            "parameter_invalid",
            f"expires_in must be an integer from {EXPIRES_IN_S_MIN} to {EXPIRES_IN_S_MAX} seconds",
            "expires_in",
        )
    return SessionFields(request, success_url, cancel_url, email, str(locale), expires_in)


def link_fields(body: object) -> tuple[PaymentRequest, str | None]:
    """POST /v1/payment_links: the money (as a payment's) and the success_url."""
    if not isinstance(body, dict):
        raise invalid_request("parameter_invalid", "request body must be a JSON object")
    check_unknown(body, LINK_FIELDS)
    request = _money(body, ("amount", "currency", "capture", "description"))
    return request, check_url(body.get("success_url"), "success_url")
