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
