"""Kassa's objects in Stripe's shapes: pure functions from what ``gateway/http/render.py``
renders (API.md's native JSON, as dicts) to the JSON Stripe's API answers.

The objects are views, not copies: a PaymentIntent ``pi_X`` *is* the payment ``pay_X``, its
Charge is ``ch_X`` and a PaymentMethod ``pm_Y`` is the token ``tok_Y``; the ids map by their
prefix alone, so no lookup table exists to drift. Refunds (``re_``), events (``evt_``),
webhook endpoints (``we_``) and customers (``cus_``) keep their ids.

Conventions (Stripe's): timestamps are unix seconds, currencies lower-case, ``livemode`` is
false (Kassa's sandbox is test mode), and every field the SDK's type annotations declare
non-optional is present (tests/test_stripe_shapes.py holds each function to stripe 16.1.0's
own annotations). Optional fields an integration commonly reads are present as ``null``
rather than absent, because stripe-python raises ``AttributeError`` for a missing key.

Known differences from Stripe, by design:
- One Charge per payment: a payment confirmed again after a decline keeps ``ch_X``, which
  shows the latest attempt (Stripe makes a new charge per attempt).
- A charge's ``amount_refunded`` counts what a capture or void released as Stripe does (an
  uncaptured remainder, an uncaptured authorization voided or expired), so ``refunded`` is
  true for a voided payment; the native payment's ``amount_refunded`` counts refunds only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from gateway.ids import ID_RANDOM_BYTES

JSON = dict[str, Any]

LIVEMODE = False
OBJECT_IDS = re.compile(rf"[0-9a-f]{{{2 * ID_RANDOM_BYTES}}}")  # the part after the prefix

# --- ids ------------------------------------------------------------------------------------


def _suffix(object_id: object, prefix: str) -> str | None:
    """The random part of ``prefix_<hex>``, or None when ``object_id`` is not that shape."""
    if not isinstance(object_id, str) or not object_id.startswith(prefix + "_"):
        return None
    suffix = object_id[len(prefix) + 1 :]
    return suffix if OBJECT_IDS.fullmatch(suffix) else None


def _outbound(native_id: str, native_prefix: str, stripe_prefix: str) -> str:
    suffix = _suffix(native_id, native_prefix)
    if suffix is None:
        raise ValueError(f"not a Kassa {native_prefix}_ id: {native_id!r}")
    return f"{stripe_prefix}_{suffix}"


def payment_intent_id(payment_id: str) -> str:
    """``pay_X`` -> ``pi_X``. A malformed payment id is a bug here: ValueError."""
    return _outbound(payment_id, "pay", "pi")


def charge_id(payment_id: str) -> str:
    """``pay_X`` -> ``ch_X``, the payment's one charge. ValueError for a malformed id."""
    return _outbound(payment_id, "pay", "ch")


def payment_method_id(token_id: str) -> str:
    """``tok_X`` -> ``pm_X``. ValueError for a malformed id."""
    return _outbound(token_id, "tok", "pm")


def payment_id_from_intent(intent_id: object) -> str | None:
    """``pi_X`` (client text) -> ``pay_X``; None for anything else, which the caller answers
    ``404 resource_missing`` (errors.no_such) without a query."""
    suffix = _suffix(intent_id, "pi")
    return None if suffix is None else "pay_" + suffix


def payment_id_from_charge(charge: object) -> str | None:
    """``ch_X`` (client text) -> ``pay_X``; None for anything else (404)."""
    suffix = _suffix(charge, "ch")
    return None if suffix is None else "pay_" + suffix


def token_id_from_payment_method(method: object) -> str | None:
    """``pm_X`` (client text) -> ``tok_X``; None for anything else, including Stripe's magic
    ids (``pm_card_visa``), which the caller resolves before asking here."""
    suffix = _suffix(method, "pm")
    return None if suffix is None else "tok_" + suffix


def unix(rfc3339: str) -> int:
    """A rendered timestamp (``2026-11-22T10:00:00Z``) as unix seconds."""
    return int(datetime.fromisoformat(rfc3339).timestamp())


# --- statuses -------------------------------------------------------------------------------

PRE_PROCESSOR = ("requires_payment_method", "requires_confirmation")
CANCELED = ("voided", "canceled", "expired")
_INTENT_STATUS = {
    "requires_payment_method": "requires_payment_method",
    "requires_confirmation": "requires_confirmation",
    "processing": "processing",
    # "authorized" depends on the capture method (intent_status).
    "declined": "requires_payment_method",  # Stripe: a failed attempt wants another card
    "failed": "requires_payment_method",
    "captured": "succeeded",
    "partially_refunded": "succeeded",
    "refunded": "succeeded",
    "voided": "canceled",
    "canceled": "canceled",
    "expired": "canceled",
}
INTENT_STATUSES = (*_INTENT_STATUS, "authorized")  # every native status this module maps


def intent_status(status: str, capture_method: str) -> str:
    """A native payment status as a PaymentIntent status. ``authorized`` is
    ``requires_capture`` for manual capture; with automatic capture it is the moment
    between authorization and capture (or a capture whose outcome recovery is settling),
    which Stripe calls ``processing``. ValueError for a status not mapped here."""
    if status == "authorized":
        return "requires_capture" if capture_method == "manual" else "processing"
    try:
        return _INTENT_STATUS[status]
    except KeyError:
        raise ValueError(f"no PaymentIntent status for payment status {status!r}") from None


# --- declines -------------------------------------------------------------------------------

GENERIC_DECLINE_MESSAGE = "Your card was declined."
PROCESSING_ERROR = "processing_error"
PROCESSING_ERROR_MESSAGE = (
    "An error occurred while processing your card. Try again in a little bit."
)
VELOCITY_DECLINE = "card_velocity_exceeded"  # core_ext.risk.DECLINE_CODE

# decline_code -> (Stripe's error code, the message Stripe shows the buyer)
DECLINES: dict[str, tuple[str, str]] = {
    "generic_decline": ("card_declined", GENERIC_DECLINE_MESSAGE),
    "insufficient_funds": ("card_declined", "Your card has insufficient funds."),
    "lost_card": ("card_declined", GENERIC_DECLINE_MESSAGE),
    "stolen_card": ("card_declined", GENERIC_DECLINE_MESSAGE),
    "fraudulent": ("card_declined", GENERIC_DECLINE_MESSAGE),
    "do_not_honor": ("card_declined", GENERIC_DECLINE_MESSAGE),
    VELOCITY_DECLINE: (
        "card_declined",
        "Your card was declined for making repeated attempts too frequently or exceeding "
        "its amount limit.",
    ),
    "expired_card": ("expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "Your card's security code is incorrect."),
    "incorrect_number": ("incorrect_number", "Your card number is incorrect."),
    PROCESSING_ERROR: (PROCESSING_ERROR, PROCESSING_ERROR_MESSAGE),
}


def decline(decline_code: str | None) -> tuple[str, str]:
    """``(code, message)`` Stripe gives a decline with ``decline_code``; an unknown or
    missing one is a plain ``card_declined``."""
    return DECLINES.get(
        decline_code or "generic_decline", ("card_declined", GENERIC_DECLINE_MESSAGE)
    )


def _last_attempt_outcome(payment: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """``(outcome, decline_code)`` of the processor attempt that decides the payment's
    ``last_payment_error``, or None. Read from the status where it says (declined,
    failed), else from the newest of ``attempts`` (each ``{"outcome", "decline_code"}``),
    which a payment canceled after a decline still has."""
    status = payment["status"]
    if status in ("declined", "failed"):
        return status, payment.get("decline_code")
    attempts = payment.get("attempts") or ()
    if attempts and status in CANCELED:
        newest = attempts[-1]
        if newest.get("outcome") in ("declined", "failed"):
            return newest["outcome"], newest.get("decline_code")
    return None


def has_charge(payment: Mapping[str, Any]) -> bool:
    """Whether the payment went to the processor, so that its Charge ``ch_X`` exists. A
    payment still before the processor, or canceled or expired there, has none (404 for
    ``ch_X``): one that ended after an attempt shows it in ``attempts``, a processor
    reference or a decline code."""
    status = payment["status"]
    if status in PRE_PROCESSOR:
        return False
    if status in ("canceled", "expired"):
        return (
            bool(payment.get("attempts"))
            or payment.get("processor_reference") is not None
            or payment.get("decline_code") is not None
        )
    return True


def last_payment_error(
    payment: Mapping[str, Any], payment_method: JSON | None = None
) -> JSON | None:
    """The PaymentIntent's ``last_payment_error`` for a declined or failed attempt (the
    same fields as the 402 error's body), else None."""
    outcome = _last_attempt_outcome(payment)
    if outcome is None:
        return None
    result, decline_code = outcome
    if result == "failed":
        code, message, decline_code = PROCESSING_ERROR, PROCESSING_ERROR_MESSAGE, None
    else:
        code, message = decline(decline_code)
    return {
        "type": "card_error",
        "code": code,
        "decline_code": decline_code,
        "message": message,
        "charge": charge_id(payment["id"]),
        "param": None,
        "payment_method": payment_method,
        "doc_url": None,
    }


# --- objects ------------------------------------------------------------------------------


def _card_details(card: Mapping[str, Any] | None, *, on_charge: bool = False) -> JSON | None:
    """The card as a PaymentMethod's ``card`` (or, ``on_charge``, as a Charge's
    ``payment_method_details.card``: Stripe names a few fields differently there)."""
    if not card or card.get("last4") is None:
        return None
    details: JSON = {
        "brand": card["brand"],
        "last4": card["last4"],
        "exp_month": card["exp_month"],
        "exp_year": card["exp_year"],
        "fingerprint": card["fingerprint"],
        "funding": "unknown",  # Kassa does not know credit from debit
        "country": None,
        "checks": None,
        "wallet": None,
    }
    if on_charge:
        details.update(network=card["brand"], three_d_secure=None)
    else:
        details.update(display_brand=card["brand"], networks=None, three_d_secure_usage=None)
    return details


_NO_BILLING_DETAILS: JSON = {"address": None, "email": None, "name": None, "phone": None}


def payment_intent(
    payment: Mapping[str, Any],
    *,
    payment_method: str | None = None,
    customer: str | None = None,
) -> JSON:
    """A rendered payment (``render_payment``) as a PaymentIntent.

    ``payment_method`` is the ``pm_`` id the caller confirmed it with (the rendered payment
    carries the card, not the token), ``customer`` a ``cus_`` id; both None when unknown.
    Status: ``intent_status``; ``last_payment_error``: ``last_payment_error``;
    ``latest_charge`` ``ch_X`` once the processor was asked (``has_charge``). ValueError for
    a malformed id or an unmapped status.
    """
    status = payment["status"]
    capture_method = payment["capture"]
    canceled = status in CANCELED
    return {
        "id": payment_intent_id(payment["id"]),
        "object": "payment_intent",
        "amount": payment["amount"],
        "amount_capturable": payment["amount_capturable"],
        "amount_received": payment["amount_captured"],
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": unix(payment["updated"]) if canceled else None,
        # Stripe: "automatic" when it canceled the intent itself; null for an API cancel.
        "cancellation_reason": "automatic" if status == "expired" else None,
        "capture_method": capture_method,
        "client_secret": None,  # no publishable-key flows: the browser never talks to Kassa
        "confirmation_method": "automatic",
        "created": unix(payment["created"]),
        "currency": payment["currency"].lower(),
        "customer": customer or payment.get("customer"),  # a saved customer's
        "description": payment.get("description"),
        "last_payment_error": last_payment_error(payment),
        "latest_charge": charge_id(payment["id"]) if has_charge(payment) else None,
        "livemode": LIVEMODE,
        "metadata": dict(payment.get("metadata") or {}),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": payment_method,
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": intent_status(status, capture_method),
        "transfer_data": None,
        "transfer_group": None,
    }


def _released(payment: Mapping[str, Any]) -> int:
    """What a capture, void or expiry released of the authorization (never captured)."""
    status = payment["status"]
    if status in ("captured", "partially_refunded", "refunded"):
        return int(payment["amount"]) - int(payment["amount_captured"])
    if status == "voided" or (status == "expired" and _last_attempt_outcome(payment) is None):
        return int(payment["amount"])  # the whole authorization, released uncaptured
    return 0


def _outcome(payment: Mapping[str, Any]) -> JSON | None:
    status = payment["status"]
    attempt = _last_attempt_outcome(payment)
    if status == "processing":
        return None
    if attempt is None:
        return {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
            "advice_code": None,
        }
    result, decline_code = attempt
    if result == "failed":
        return {
            "network_status": "not_sent_to_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "The processor failed to authorize the payment.",
            "type": "invalid",
            "advice_code": "try_again_later",
        }
    if decline_code == VELOCITY_DECLINE:  # Kassa's own card-testing rules, not the issuer
        return {
            "network_status": "not_sent_to_network",
            "reason": VELOCITY_DECLINE,
            "risk_level": "elevated",
            "seller_message": "Kassa blocked this payment: too many attempts with this card.",
            "type": "blocked",
            "advice_code": "try_again_later",
        }
    return {
        "network_status": "declined_by_network",
        "reason": decline_code or "generic_decline",
        "risk_level": "normal",
        "seller_message": f"The bank returned the decline code `{decline_code or 'generic_decline'}`.",
        "type": "issuer_declined",
        "advice_code": None,
    }


def charge(payment: Mapping[str, Any], *, payment_method: str | None = None) -> JSON:
    """The Charge ``ch_X`` derived from the payment ``pay_X`` (its latest processor attempt).

    ``status``: ``pending`` while processing, ``failed`` after a decline or processor
    error, else ``succeeded``; ``paid`` when succeeded; ``captured`` once any amount was;
    ``amount_refunded`` refunds plus what was released (module docstring); ``outcome`` as
    Stripe's (issuer decline, Kassa's velocity block, processor error, approval).
    ValueError when the payment has no charge (``has_charge``): the caller answers 404.
    """
    if not has_charge(payment):
        raise ValueError(f"payment {payment['id']} never reached the processor: no charge")
    attempt = _last_attempt_outcome(payment)
    status = payment["status"]
    if status == "processing":
        charge_status = "pending"
    elif attempt is not None:
        charge_status = "failed"
    else:
        charge_status = "succeeded"
    failure = last_payment_error(payment)
    refunded = int(payment["amount_refunded"]) + _released(payment)
    card = _card_details(payment.get("card"), on_charge=True)
    return {
        "id": charge_id(payment["id"]),
        "object": "charge",
        "amount": payment["amount"],
        "amount_captured": payment["amount_captured"],
        "amount_refunded": refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": dict(_NO_BILLING_DETAILS),
        "calculated_statement_descriptor": None,
        "captured": int(payment["amount_captured"]) > 0,
        "created": unix(payment["created"]),
        "currency": payment["currency"].lower(),
        "customer": payment.get("customer"),  # a saved customer's id, if it paid
        "description": payment.get("description"),
        "disputed": False,
        "failure_code": None if failure is None else failure["code"],
        "failure_message": None if failure is None else failure["message"],
        "fraud_details": {},
        "livemode": LIVEMODE,
        "metadata": dict(payment.get("metadata") or {}),
        "on_behalf_of": None,
        "outcome": _outcome(payment),
        "paid": charge_status == "succeeded",
        "payment_intent": payment_intent_id(payment["id"]),
        "payment_method": payment_method,
        "payment_method_details": (None if card is None else {"type": "card", "card": card}),
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": None,
        "refunded": refunded >= int(payment["amount"]) and refunded > 0,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": charge_status,
        "transfer_data": None,
        "transfer_group": None,
    }


def payment_method(
    token: Mapping[str, Any], *, created: int | datetime, customer: str | None = None
) -> JSON:
    """A rendered token (``render_token``) as a PaymentMethod ``pm_`` of type card.

    ``created`` is the token's creation time (unix seconds or a datetime), which the
    rendered token does not carry. ValueError for a malformed token id."""
    created_s = int(created.timestamp()) if isinstance(created, datetime) else int(created)
    return {
        "id": payment_method_id(token["id"]),
        "object": "payment_method",
        "billing_details": dict(_NO_BILLING_DETAILS),
        "card": _card_details(token["card"]),
        "created": created_s,
        "customer": customer,  # the customer it is saved to (attached), if any
        "livemode": LIVEMODE,
        "metadata": {},
        "type": "card",
    }


def customer(rendered: Mapping[str, Any]) -> JSON:
    """A rendered customer (``render_customer``) as a Stripe Customer: the ``cus_`` id and
    the ``clock_`` test clock stay. What Kassa does not keep for a customer reads as Stripe
    shows it for one that has none (no address, balance 0, no currency yet, tax
    ``none``). ``delinquent`` and ``invoice_settings`` are absent rather than made up: the
    default saved card and a past-due subscription are not read here."""
    return {
        "id": rendered["id"],
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": unix(rendered["created"]),
        "currency": None,
        "default_source": None,
        "description": None,
        "discount": None,
        "email": rendered.get("email"),
        "livemode": LIVEMODE,
        "metadata": dict(rendered.get("metadata") or {}),
        "name": rendered.get("name"),
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": rendered.get("test_clock"),
    }


REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def refund(rendered: Mapping[str, Any]) -> JSON:
    """A rendered refund (``render_refund``) as a Stripe Refund: the ``re_`` id stays, its
    charge is ``ch_X`` and its PaymentIntent ``pi_X`` of the refunded payment ``pay_X``."""
    reason = rendered.get("reason")
    return {
        "id": rendered["id"],
        "object": "refund",
        "amount": rendered["amount"],
        "balance_transaction": None,
        "charge": charge_id(rendered["payment_id"]),
        "created": unix(rendered["created"]),
        "currency": rendered["currency"].lower(),
        "description": None,
        "destination_details": None,
        "failure_reason": None,
        "metadata": {},
        "payment_intent": payment_intent_id(rendered["payment_id"]),
        "reason": reason if reason in REFUND_REASONS else None,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": rendered["status"],
        "transfer_reversal": None,
    }


# --- events and webhook endpoints ---------------------------------------------------------

# Native event type -> Stripe's. Several native types are one Stripe type (a payment is
# canceled however it ended); types Stripe spells the same way map to themselves.
EVENT_TYPES: dict[str, str] = {
    "payment.authorized": "payment_intent.amount_capturable_updated",
    "payment.captured": "payment_intent.succeeded",
    "payment.declined": "payment_intent.payment_failed",
    "payment.failed": "payment_intent.payment_failed",
    "payment.voided": "payment_intent.canceled",
    "payment.canceled": "payment_intent.canceled",
    "payment.expired": "payment_intent.canceled",
    "refund.succeeded": "refund.created",
    "checkout.session.completed": "checkout.session.completed",
    "checkout.session.expired": "checkout.session.expired",
    "customer.created": "customer.created",
    "customer.subscription.created": "customer.subscription.created",
    "customer.subscription.updated": "customer.subscription.updated",
    "customer.subscription.deleted": "customer.subscription.deleted",
    "invoice.paid": "invoice.paid",
    "invoice.payment_failed": "invoice.payment_failed",
}
WILDCARD = "*"


def event_type(native_type: str) -> str:
    """A native event type as Stripe's; ValueError for one without a Stripe twin."""
    try:
        return EVENT_TYPES[native_type]
    except KeyError:
        raise ValueError(f"no Stripe event type for {native_type!r}") from None


def native_event_types(stripe_type: str) -> tuple[str, ...]:
    """The native types a Stripe event type stands for (``payment_intent.canceled`` ->
    voided, canceled, expired), for a ``type=`` filter or an endpoint's
    ``enabled_events``; ``("*",)`` for ``*``, ``()`` for a type Kassa never sends."""
    if stripe_type == WILDCARD:
        return (WILDCARD,)
    return tuple(native for native, mapped in EVENT_TYPES.items() if mapped == stripe_type)


def _object_of(rendered: Mapping[str, Any]) -> Any:
    kind = rendered.get("object")
    if kind == "payment":
        return payment_intent(rendered)
    if kind == "refund":
        return refund(rendered)
    if kind == "webhook_endpoint":
        return webhook_endpoint(rendered)
    if kind == "customer":
        return customer(rendered)
    return dict(rendered)  # shapes Stripe and Kassa share (checkout sessions, subscriptions)


def event(native: Mapping[str, Any]) -> JSON:
    """A native event (API.md's ``{"id", "object": "event", "type", "created", "data":
    {"object"}}``, parsed) as a Stripe Event: the ``evt_`` id stays, the type is
    ``event_type``'s (ValueError if it has none: list routes skip such events), and
    ``data.object`` is the object in its Stripe shape (a PaymentIntent's
    ``payment_method`` is null there: the stored event does not name the token)."""
    return {
        "id": native["id"],
        "object": "event",
        "api_version": None,
        "created": unix(native["created"]),
        "data": {"object": _object_of(native["data"]["object"])},
        "livemode": LIVEMODE,
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type(native["type"]),
    }


def _stripe_event_types(enabled: Iterable[str]) -> list[str]:
    out: list[str] = []
    for native in enabled:
        mapped = native if native == WILDCARD else EVENT_TYPES.get(native)
        if mapped is not None and mapped not in out:
            out.append(mapped)
    return out


def webhook_endpoint(rendered: Mapping[str, Any]) -> JSON:
    """A rendered endpoint (``render_webhook_endpoint``) as a Stripe WebhookEndpoint:
    ``enabled_events`` in Stripe's names (``*`` stays), ``secret`` only when the rendered
    endpoint has it (the answer that created it)."""
    shaped: JSON = {
        "id": rendered["id"],
        "object": "webhook_endpoint",
        "api_version": None,
        "application": None,
        "created": unix(rendered["created"]),
        "description": rendered.get("description"),
        "enabled_events": _stripe_event_types(rendered["enabled_events"]),
        "livemode": LIVEMODE,
        "metadata": {},
        "status": rendered["status"],
        "url": rendered["url"],
    }
    if "secret" in rendered:
        shaped["secret"] = rendered["secret"]
    return shaped


def stripe_list(data: Sequence[JSON], has_more: bool, url: str) -> JSON:
    """A page as Stripe lists it, e.g. ``url="/v1/payment_intents"`` (the path without the
    ``/stripe`` prefix, as Stripe's own); ``auto_paging_iter()`` pages on with the last
    item's id as ``starting_after``."""
    return {"object": "list", "data": list(data), "has_more": bool(has_more), "url": url}
