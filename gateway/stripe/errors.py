"""Kassa's errors as Stripe's: the status, body and headers a ``/stripe/v1`` answer gives for
a native ``ApiError``, chosen for the exception the official SDK raises.

stripe-python picks the class from the HTTP status first (``_api_requestor.py``
``specific_v1_api_error``): 429 (or 400 ``rate_limit``) ``RateLimitError``; 400 and 404
``IdempotencyError`` when the type is ``idempotency_error``, else ``InvalidRequestError``;
401 ``AuthenticationError``; 402 ``CardError``; 403 ``PermissionError``; anything else
``APIError``. And it retries 409s and 5xx by itself unless ``Stripe-Should-Retry: false``.
So (native -> Stripe):

| native | Stripe | SDK raises |
|---|---|---|
| 402 card_error (declines, the card-testing rules) | 402 card_error, Stripe's ``code`` (card_declined, expired_card, incorrect_cvc, ...) and ``decline_code`` | CardError |
| 502 processor_error | 402 card_error ``processing_error`` | CardError |
| 400 invalid_number, invalid_expiry_*, invalid_cvc (card input) | 402 card_error, same code | CardError |
| 409 payment_state_invalid | 400 ``payment_intent_unexpected_state`` | InvalidRequestError |
| 422 idempotency_key_reused | 400 idempotency_error | IdempotencyError |
| 409 idempotency_key_in_use | 409 idempotency_error ``idempotency_key_in_use``, retried by the SDK | APIError once retries run out |
| 401 authentication_error | 401 authentication_error | AuthenticationError |
| 429 rate_limit_error | 429 rate_limit_error ``rate_limit`` (``Retry-After`` kept) | RateLimitError |
| 404 resource_missing | 404 invalid_request_error ``resource_missing`` | InvalidRequestError |
| other 4xx invalid_request_error | 400 (404 stays), ``param`` in Stripe's bracket names | InvalidRequestError |
| 5xx api_error | the same status, api_error | APIError |

``idempotency_key_in_use`` stays 409, as Stripe answers it, rather than 400: the first
request is still running, and the SDK's own retry (``max_network_retries``) is what turns
it into the settled answer. ``Stripe-Should-Retry: false`` goes on answers a retry cannot
change: every other 409, a state error, load shedding (503 ``gateway_overloaded``: retries
would feed the overload; the client backs off by ``Retry-After``) and a processor timeout
(504: the outcome is settled by recovery, long after the SDK's retries).

``code`` is always Stripe's vocabulary (``STRIPE_CODES``, each in stripe 16.1.0's list of
error codes) or absent: a native code Stripe has no name for is dropped, its message kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.http.answers import ApiError
from gateway.logs import scrub
from gateway.stripe import shapes

SHOULD_RETRY_HEADER = "Stripe-Should-Retry"

# Codes passed on as they are: Kassa already uses Stripe's name.
STRIPE_CODES = frozenset(
    {
        "amount_too_large",
        "amount_too_small",
        "card_declined",
        "expired_card",
        "idempotency_key_in_use",
        "incorrect_cvc",
        "incorrect_number",
        "invalid_cvc",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_number",
        "parameter_invalid_empty",
        "parameter_invalid_integer",
        "parameter_invalid_string_blank",
        "parameter_invalid_string_empty",
        "parameter_missing",
        "parameter_unknown",
        "payment_intent_unexpected_state",
        "processing_error",
        "rate_limit",
        "resource_missing",
        "url_invalid",
        "email_invalid",
    }
)
# Card input a Stripe PaymentMethod create refuses as a card error (402), not a 400.
CARD_INPUT_CODES = frozenset(
    {
        "invalid_number",
        "incorrect_number",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_cvc",
        "incorrect_cvc",
    }
)
# Native codes whose answer a retry cannot change (Stripe-Should-Retry: false).
NOT_RETRYABLE_CODES = frozenset({"gateway_overloaded", "processor_timeout"})


@dataclass(frozen=True)
class StripeError:
    """One Stripe error answer: ``status``, ``body`` (``{"error": {...}}``, client text
    already scrubbed) and ``headers`` (``Retry-After``, ``Stripe-Should-Retry``)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        """The body as the bytes to send."""
        return orjson.dumps(self.body)

    def response(self) -> web.Response:
        """The answer as aiohttp sends it (building it is no I/O)."""
        return web.Response(
            status=self.status,
            body=self.encoded(),
            content_type="application/json",
            headers=self.headers,
        )


def stripe_param(native: str | None, renames: Mapping[str, str] | None = None) -> str | None:
    """A native parameter name as Stripe spells it. Dotted native paths become brackets
    (``metadata.cart`` -> ``metadata[cart]``); ``renames`` maps a native prefix to the
    Stripe parameter it came from (``{"payment_method.card": "card", "capture":
    "capture_method"}``: ``payment_method.card.number`` -> ``card[number]``), the longest
    prefix winning. A name that already has brackets (the form decoder's) is kept."""
    if native is None or "[" in native:
        return native
    names = native.split(".")
    if renames:
        for cut in range(len(names), 0, -1):
            prefix = ".".join(names[:cut])
            if prefix in renames:
                names = [renames[prefix], *names[cut:]]
                break
    return names[0] + "".join(f"[{n}]" for n in names[1:])


def should_retry(status: int, type: str, code: str | None) -> bool | None:
    """The ``Stripe-Should-Retry`` verdict for a Stripe answer: False where a retry cannot
    change it (module docstring), None to leave it to the SDK's defaults."""
    if code in NOT_RETRYABLE_CODES or code == "payment_intent_unexpected_state":
        return False
    if status == 409 and code != "idempotency_key_in_use":
        return False
    return None


def _card_error(error: ApiError, payment_intent: Mapping[str, Any] | None) -> dict[str, Any]:
    if error.code == "processor_error":
        code, message = shapes.PROCESSING_ERROR, shapes.PROCESSING_ERROR_MESSAGE
        decline_code = None
    else:
        code, message = shapes.decline(error.decline_code)
        decline_code = error.decline_code
    body: dict[str, Any] = {"type": "card_error", "code": code, "message": message}
    if decline_code is not None:
        body["decline_code"] = decline_code
    if error.payment_id is not None:
        body["charge"] = shapes.charge_id(error.payment_id)
    if payment_intent is not None:
        body["payment_intent"] = dict(payment_intent)
    return body


def stripe_error(
    error: ApiError,
    *,
    payment_intent: Mapping[str, Any] | None = None,
    renames: Mapping[str, str] | None = None,
) -> StripeError:
    """The Stripe answer for a native error (table in the module docstring).

    ``payment_intent``: the PaymentIntent (``shapes.payment_intent``) of the payment the
    error names (``error.payment_id``), which Stripe puts in ``error.payment_intent``; the
    caller reads and shapes it, as this module does no I/O. ``renames``: see
    ``stripe_param``. ``Retry-After`` is kept; ``Stripe-Should-Retry`` added per
    ``should_retry``.
    """
    status, kind, code = error.status, error.type, error.code
    card = kind == "card_error" or code == "processor_error"
    body: dict[str, Any]
    if card:
        status = 402
        body = _card_error(error, payment_intent)
    elif kind == "invalid_request_error" and code in CARD_INPUT_CODES:
        status = 402
        body = {"type": "card_error", "code": code, "message": scrub(error.message)}
    else:
        stripe_code: str | None = code if code in STRIPE_CODES else None
        if code == "payment_state_invalid":
            status, stripe_code = 400, "payment_intent_unexpected_state"
        elif code == "idempotency_key_reused":
            status = 400
        elif kind == "rate_limit_error":
            status, stripe_code = 429, "rate_limit"
        elif kind == "authentication_error":
            status = 401
        elif kind == "invalid_request_error" and status != 404:
            status = 400
        body = {"type": kind, "message": scrub(error.message)}
        if stripe_code is not None:
            body["code"] = stripe_code
        if payment_intent is not None and kind == "invalid_request_error":
            body["payment_intent"] = dict(payment_intent)
    param = stripe_param(error.param, renames)
    if param is not None:
        body["param"] = scrub(param)
    headers = {k: v for k, v in error.headers.items() if k == "Retry-After"}
    retry = should_retry(status, body["type"], body.get("code") or code)
    if retry is not None:
        headers[SHOULD_RETRY_HEADER] = "true" if retry else "false"
    return StripeError(status, {"error": body}, headers)


def api_error_from_body(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError | None:
    """A native error answer (as the idempotency store keeps and replays it: status, body
    bytes, headers) back as the ``ApiError`` it was, to translate a replay; None when the
    body is not API.md's error body (a 2xx, say)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    detail = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(detail, dict) or not isinstance(detail.get("type"), str):
        return None
    return ApiError(
        status,
        detail["type"],
        str(detail.get("code") or ""),
        str(detail.get("message") or ""),
        param=detail.get("param"),
        decline_code=detail.get("decline_code"),
        payment_id=detail.get("payment_id"),
        headers=dict(headers),
    )


def no_such(kind: str, object_id: str, param: str = "id") -> StripeError:
    """Stripe's 404 for an unknown or malformed id: ``No such payment_intent: 'pi_...'``.
    The id is quoted only when it is one of ours in shape (other client text is not
    echoed), and scrubbed even then."""
    shown = f": '{object_id}'" if _ours(object_id) else ""
    return StripeError(
        404,
        {
            "error": {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "message": scrub(f"No such {kind}{shown}"),
                "param": param,
            }
        },
    )


def not_expandable(path: str, instead: str | None = None) -> StripeError:
    """Stripe's 400 for an ``expand[]`` path the object has no expandable field at:
    ``This property cannot be expanded (customer).`` (and, for a list, the ``data.``
    path that would be)."""
    message = f"This property cannot be expanded ({path})."
    if instead is not None:
        message += f" You may want to try expanding '{instead}' instead."
    return StripeError(
        400,
        {"error": {"type": "invalid_request_error", "message": scrub(message), "param": "expand"}},
    )


def _ours(object_id: str) -> bool:
    prefix, _, suffix = object_id.partition("_")
    return prefix.isalpha() and len(prefix) <= 3 and bool(shapes.OBJECT_IDS.fullmatch(suffix))
