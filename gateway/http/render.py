"""Objects as API.md shows them: database rows in, JSON-ready dicts (and answers) out."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson

import core_ext
from gateway.http.answers import Answer, ApiError, api_error

states = core_ext.states

# A row as read from the database, or as a batch write knows it will be once committed.
Row = asyncpg.Record | Mapping[str, Any]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# The statuses in which a payment's own columns hold its latest processor attempt (an
# expired payment's only if it was authorized first); see migration 0008.
ATTEMPT_STATUSES = frozenset(
    (
        states.PROCESSING,
        states.AUTHORIZED,
        states.DECLINED,
        states.FAILED,
        states.CAPTURED,
        states.PARTIALLY_REFUNDED,
        states.REFUNDED,
        states.VOIDED,
    )
)
ATTEMPT_OUTCOMES = {
    states.PROCESSING: "processing",
    states.DECLINED: "declined",
    states.FAILED: "failed",
}


def _card(row: Row) -> dict | None:
    if row["card_last4"] is None:  # before a payment method is given
        return None
    return {
        "brand": row["card_brand"],
        "last4": row["card_last4"],
        "exp_month": row["card_exp_month"],
        "exp_year": row["card_exp_year"],
        "fingerprint": row["card_fingerprint"],
    }


def _attempt(outcome: str, decline_code: object, brand: object, last4: object) -> dict:
    return {
        "outcome": outcome,
        "decline_code": decline_code,
        "card": {"brand": brand, "last4": last4},
    }


def render_attempts(row: Row) -> list[dict]:
    """Every processor attempt, oldest first: the finished ones kept in earlier_attempts,
    then the one the payment's own columns hold, if it has been to the processor."""
    earlier = row.get("earlier_attempts")
    attempts = (
        []
        if earlier is None
        else [
            _attempt(a["outcome"], a["decline_code"], a["card_brand"], a["card_last4"])
            for a in orjson.loads(earlier)
        ]
    )
    status = row["status"]
    if status in ATTEMPT_STATUSES or (
        status == states.EXPIRED and row.get("authorized_at") is not None
    ):
        attempts.append(
            _attempt(
                ATTEMPT_OUTCOMES.get(status, "authorized"),
                row["decline_code"],
                row["card_brand"],
                row["card_last4"],
            )
        )
    return attempts


def render_payment(row: Row) -> dict:
    return {
        "id": row["id"],
        "object": "payment",
        "status": row["status"],
        "amount": row["amount"],
        "currency": row["currency"],
        "amount_capturable": row["amount_capturable"],
        "amount_captured": row["amount_captured"],
        "amount_refunded": row["amount_refunded"],
        "capture": row["capture_method"],
        "card": _card(row),
        "processor": row["processor"],
        "processor_reference": row["processor_reference"],
        "decline_code": row["decline_code"],
        "reference": row["reference"],
        "description": row["description"],
        "metadata": orjson.loads(row["metadata"]),
        "customer": row.get("customer_id"),  # a saved customer's id (buyer details: never shown)
        "off_session": bool(row.get("off_session")),
        "attempts": render_attempts(row),
        "created": rfc3339(row["created_at"]),
        "updated": rfc3339(row["updated_at"]),
    }


def render_refund(row: asyncpg.Record) -> dict:
    return {
        "id": row["id"],
        "object": "refund",
        "payment_id": row["payment_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "reason": row["reason"],
        "created": rfc3339(row["created_at"]),
    }


def render_token(token_id: str, card: dict) -> dict:
    return {"id": token_id, "object": "token", "card": card}


def answer_for_authorization(row: Row) -> Answer:
    """The answer a settled authorization gives (and replays) for its payment row."""
    status = row["status"]
    if status == states.DECLINED:
        return Answer.of_error(
            ApiError(
                402,
                "card_error",
                "card_declined",
                "the card was declined",
                decline_code=row["decline_code"],
                payment_id=row["id"],
            )
        )
    if status == states.FAILED:
        return Answer.of_error(
            api_error(
                502,
                "processor_error",
                "the processor failed to authorize the payment; "
                "it is recorded as failed and no money moved",
                payment_id=row["id"],
            )
        )
    return Answer.of_json(201, render_payment(row))


# --- events and webhook endpoints ---------------------------------------------------------


def event_payload(event_id: str, event_type: str, created: datetime, rendered: bytes) -> str:
    """An event's JSON (API.md), around its object's already rendered JSON: the exact text
    stored, delivered and read back. Ids and types are ours, never client text."""
    return (
        f'{{"id":"{event_id}","object":"event","type":"{event_type}",'
        f'"created":"{rfc3339(created)}","data":{{"object":{rendered.decode()}}}}}'
    )


def events_list(payloads: list[str], has_more: bool) -> bytes:
    """A list of events from their stored JSON, without parsing it again."""
    return (
        '{"object":"list","data":['
        + ",".join(payloads)
        + '],"has_more":'
        + ("true" if has_more else "false")
        + "}"
    ).encode()


def render_webhook_endpoint(row: Row, secret: str | None = None) -> dict:
    """An endpoint as API.md shows it; ``secret`` only in the answer that created it."""
    rendered = {
        "id": row["id"],
        "object": "webhook_endpoint",
        "url": row["url"],
        "enabled_events": list(row["enabled_events"]),
        "description": row["description"],
        "status": row["status"],
        "created": rfc3339(row["created_at"]),
        "updated": rfc3339(row["updated_at"]),
    }
    if secret is not None:
        rendered["secret"] = secret
    return rendered


def render_webhook_attempt(row: Row) -> dict:
    next_attempt = row["next_attempt_at"]
    return {
        "object": "webhook_attempt",
        "event_id": row["event_id"],
        "endpoint_id": row["endpoint_id"],
        "attempt": row["attempt"],
        "status_code": row["status_code"],
        "error": row["error"],
        "duration_ms": row["duration_ms"],
        "next_attempt": None if next_attempt is None else rfc3339(next_attempt),
        "created": rfc3339(row["created_at"]),
    }


# --- checkout sessions and payment links ---------------------------------------------------


def render_checkout_session(row: Row) -> dict:
    """A session as API.md shows it, from its row joined with its payment
    (gateway/store/checkout.py SESSION_SELECT): the money is the payment's."""
    completed = row["completed_at"]
    return {
        "id": row["id"],
        "object": "checkout_session",
        "url": row["url"],
        "status": row["status"],
        "payment_id": row["payment_id"],
        "payment_link": row["payment_link_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "capture": row["capture_method"],
        "success_url": row["success_url"],
        "cancel_url": row["cancel_url"],
        "reference": row["reference"],
        "description": row["description"],
        "customer_email": row["customer_email"],
        "locale": row["locale"],
        "expires_at": rfc3339(row["expires_at"]),
        "completed": None if completed is None else rfc3339(completed),
        "created": rfc3339(row["created_at"]),
        "updated": rfc3339(row["updated_at"]),
    }


# --- customers, saved cards and recurring billing -----------------------------------------


def _moment(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


def render_customer(row: Row) -> dict:
    return {
        "id": row["id"],
        "object": "customer",
        "email": row["email"],
        "name": row["name"],
        "metadata": orjson.loads(row["metadata"]),
        "test_clock": row["test_clock_id"],
        "created": rfc3339(row["created_at"]),
        "updated": rfc3339(row["updated_at"]),
    }


def render_customer_payment_method(row: Row) -> dict:
    """A saved card: the token (its id) saved to a customer."""
    return {
        "id": row["id"],
        "object": "customer_payment_method",
        "customer": row["customer_id"],
        "default": row["is_default"],
        "card": {
            "brand": row["brand"],
            "last4": row["last4"],
            "exp_month": row["exp_month"],
            "exp_year": row["exp_year"],
            "fingerprint": row["fingerprint"],
        },
        "created": rfc3339(row["saved_at"]),
    }


def render_price(row: Row) -> dict:
    return {
        "id": row["id"],
        "object": "price",
        "amount": row["amount"],
        "currency": row["currency"],
        "recurring": {"interval": row["interval"], "interval_count": row["interval_count"]},
        "description": row["description"],
        "created": rfc3339(row["created_at"]),
    }


def render_subscription(row: Row) -> dict:
    """A subscription row joined with its price's amount, currency and interval."""
    return {
        "id": row["id"],
        "object": "subscription",
        "customer": row["customer_id"],
        "price": row["price_id"],
        "status": row["status"],
        "amount": row["amount"],
        "currency": row["currency"],
        "recurring": {"interval": row["interval"], "interval_count": row["interval_count"]},
        "billing_cycle_anchor": rfc3339(row["billing_anchor"]),
        "current_period_start": rfc3339(row["current_period_start"]),
        "current_period_end": rfc3339(row["current_period_end"]),
        "trial_start": _moment(row["trial_start"]),
        "trial_end": _moment(row["trial_end"]),
        "cancel_at_period_end": row["cancel_at_period_end"],
        "canceled_at": _moment(row["canceled_at"]),
        "ended_at": _moment(row["ended_at"]),
        "test_clock": row["test_clock_id"],
        "created": rfc3339(row["created_at"]),
        "updated": rfc3339(row["updated_at"]),
    }


def render_payment_link(row: Row) -> dict:
    return {
        "id": row["id"],
        "object": "payment_link",
        "url": row["url"],
        "active": row["active"],
        "amount": row["amount"],
        "currency": row["currency"],
        "capture": row["capture_method"],
        "description": row["description"],
        "success_url": row["success_url"],
        "created": rfc3339(row["created_at"]),
        "updated": rfc3339(row["updated_at"]),
    }


def render_invoice(row: Row) -> dict:
    return {
        "id": row["id"],
        "object": "invoice",
        "subscription": row["subscription_id"],
        "customer": row["customer_id"],
        "period_index": row["period_index"],
        "period_start": rfc3339(row["period_start"]),
        "period_end": rfc3339(row["period_end"]),
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "attempt_count": row["attempt_count"],
        "next_payment_attempt": _moment(row["next_attempt_at"]),
        "payment_id": row["payment_id"],
        "created": rfc3339(row["created_at"]),
        "updated": rfc3339(row["updated_at"]),
    }


def render_test_clock(row: Row) -> dict:
    return {
        "id": row["id"],
        "object": "test_clock",
        "name": row["name"],
        "frozen_time": rfc3339(row["frozen_time"]),
        "status": row["status"],
        "created": rfc3339(row["created_at"]),
        "updated": rfc3339(row["updated_at"]),
    }
