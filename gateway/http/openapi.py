"""The OpenAPI 3.1 description of the HTTP contract in API.md, served at ``GET /openapi.json``.

``DOCUMENT`` is built once at import; ``DOCUMENT_BYTES`` is what the app serves.
``tests/test_openapi.py`` holds the running server to it, so a change to a handler or a
rendered body that is not mirrored here fails the suite.
"""

from __future__ import annotations

import orjson

import core_ext
from core_ext import states, validation
from gateway.billing import service as billing_service
from gateway.checkout import handlers as checkout_pages
from gateway.checkout import service as checkout_service
from gateway.http.answers import BODY_BYTES_MAX, KEY_CHARS_MAX
from gateway.webhooks import service as webhook_service

# One fact stated once: every limit and enum below is the core's (or the HTTP layer's)
# own name, so the document cannot drift from what the server enforces.
AMOUNT_MIN = validation.AMOUNT_MIN
AMOUNT_MAX = validation.AMOUNT_MAX
METADATA_KEYS_MAX = validation.METADATA_KEYS_MAX
METADATA_KEY_CHARS_MAX = validation.METADATA_KEY_CHARS_MAX
METADATA_VALUE_CHARS_MAX = validation.METADATA_VALUE_CHARS_MAX
REFERENCE_CHARS_MAX = validation.REFERENCE_CHARS_MAX
DESCRIPTION_CHARS_MAX = validation.DESCRIPTION_CHARS_MAX
HOLDER_NAME_CHARS_MAX = validation.HOLDER_NAME_CHARS_MAX
EMAIL_CHARS_MAX = validation.EMAIL_CHARS_MAX
IP_CHARS_MAX = validation.IP_CHARS_MAX
OBJECT_ID_CHARS_MAX = validation.OBJECT_ID_CHARS_MAX
JSON_DEPTH_MAX = validation.JSON_DEPTH_MAX
LIST_LIMIT_MAX = validation.LIST_LIMIT_MAX
LIST_LIMIT_DEFAULT = validation.LIST_LIMIT_DEFAULT
IDEMPOTENCY_KEY_CHARS_MAX = KEY_CHARS_MAX
EVENT_TYPES = core_ext.webhooks.EVENT_TYPES
WEBHOOK_URL_CHARS_MAX = 2048
WEBHOOK_DESCRIPTION_CHARS_MAX = webhook_service.DESCRIPTION_CHARS_MAX
WEBHOOK_EVENT_TYPES_MAX = webhook_service.EVENT_TYPES_MAX
WEBHOOK_ATTEMPTS_SHOWN_MAX = webhook_service.ATTEMPTS_SHOWN_MAX
PRICE_INTERVALS = validation.PRICE_INTERVALS
INTERVAL_COUNT_MAX = validation.PRICE_INTERVAL_COUNT_MAX
TRIAL_DAYS_MAX = validation.SUBSCRIPTION_TRIAL_DAYS_MAX
CUSTOMER_NAME_CHARS_MAX = validation.CUSTOMER_NAME_CHARS_MAX
TEST_CLOCK_NAME_CHARS_MAX = validation.TEST_CLOCK_NAME_CHARS_MAX
DUNNING_RETRY_DAYS = core_ext.billing.DUNNING_RETRY_DAYS
SUBSCRIPTION_STATUSES = ("trialing", "active", "past_due", "canceled")
TEST_CLOCK_ADVANCE_DAYS_MAX = billing_service.TEST_CLOCK_ADVANCE_S_MAX // 86_400

CHECKOUT_LOCALES = checkout_service.LOCALES
CHECKOUT_EXPIRES_IN_S_MIN = checkout_service.EXPIRES_IN_S_MIN
CHECKOUT_EXPIRES_IN_S_MAX = checkout_service.EXPIRES_IN_S_MAX
CHECKOUT_EXPIRES_IN_S_DEFAULT = checkout_service.EXPIRES_IN_S_DEFAULT
CHECKOUT_URL_CHARS_MAX = checkout_service.URL_CHARS_MAX
CHECKOUT_ATTEMPTS_MAX = checkout_pages.ATTEMPTS_PER_SESSION_MAX
CHECKOUT_PAY_BODY_BYTES_MAX = checkout_pages.PAY_BODY_BYTES_MAX
CHECKOUT_LINK_VISITS_PER_S = checkout_pages.LINK_VISITS_PER_S
CHECKOUT_LINK_VISITS_BURST = checkout_pages.LINK_VISITS_BURST

PAYMENT_STATUSES = states.STATUSES
CAPTURE_METHODS = validation.CAPTURE_METHODS
REFUND_REASONS = validation.REFUND_REASONS

ERROR_TYPES = (
    "invalid_request_error",
    "card_error",
    "idempotency_error",
    "authentication_error",
    "rate_limit_error",
    "api_error",
)
ERROR_CODES = (
    "parameter_unknown",
    "parameter_missing",
    "parameter_invalid",
    "amount_too_small",
    "amount_too_large",
    "invalid_number",
    "invalid_expiry_month",
    "invalid_expiry_year",
    "invalid_cvc",
    "invalid_json",
    "json_too_deep",
    "request_too_large",
    "unsupported_media_type",
    "request_timeout",
    "request_invalid",
    "resource_missing",
    "method_not_allowed",
    "payment_state_invalid",
    "subscription_state_invalid",
    "test_clock_not_ready",
    "card_declined",
    "idempotency_key_in_use",
    "idempotency_key_reused",
    "api_key_missing",
    "api_key_invalid",
    "metrics_token_invalid",
    "rate_limited",
    "processor_error",
    "processor_timeout",
    "database_unavailable",
    "gateway_overloaded",
    "migrations_pending",
    "schema_too_new",
    "internal_error",
)

DESCRIPTION = f"""\
Kassa authorizes, captures, voids and refunds card payments.

* **Amounts are integers in the currency's minor unit** (cents for EUR, yen for JPY, fils for
  BHD: ISO 4217 exponents), `{AMOUNT_MIN} <= amount <= {AMOUNT_MAX}`. Never a decimal, never a float.
* `currency` is an ISO 4217 alphabetic code, accepted in any case, returned upper-case.
* IDs are opaque strings with a type prefix: `pay_`, `re_`, `tok_`, `evt_`, `we_`, `cs_`,
  `plink_`.
* Timestamps are RFC 3339 UTC strings.
* Requests and answers are JSON. Unknown fields are rejected (`400 parameter_unknown`);
  bodies over {BODY_BYTES_MAX // 1024} KiB answer `413`; a body whose `Content-Type` is not
  `application/json` answers `415 unsupported_media_type` and nothing runs.
* Every `POST` accepts an `Idempotency-Key` header: the same key with the same body returns
  the stored answer with `Idempotent-Replayed: true`; with another body,
  `422 idempotency_key_reused`; while the first request is still executing,
  `409 idempotency_key_in_use`.
* Another merchant's object answers `404 resource_missing`, never `403`.
* Every committed change writes an event (`GET /v1/events`), POSTed to the merchant's
  webhook endpoints subscribed to its type, signed with both the Standard Webhooks
  (`webhook-id`, `webhook-timestamp`, `webhook-signature`) and the Stripe
  (`Stripe-Signature`) scheme from the endpoint's one `whsec_` secret; at least once,
  retried on the schedule, in no guaranteed order (dedupe on `webhook-id`).
"""

JSON = "application/json"


# --- schema helpers ---------------------------------------------------------------------


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    """``schema`` or JSON null (OpenAPI 3.1: a type array, not ``nullable: true``)."""
    return {**schema, "type": [schema["type"], "null"]}


def closed_object(properties: dict, required: tuple[str, ...] = (), **extra: object) -> dict:
    """An object that rejects unknown fields, as the gateway does."""
    schema: dict = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return {**schema, **extra}


def record(properties: dict, **extra: object) -> dict:
    """A response object: every field is always present, nothing else is."""
    return closed_object(properties, tuple(properties), **extra)


def enum(values: tuple[str, ...], **extra: object) -> dict:
    return {"type": "string", "enum": list(values), **extra}


def prefixed_id(prefix: str) -> dict:
    return {"type": "string", "pattern": f"^{prefix}_[A-Za-z0-9]+$"}


TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."}
MINOR_UNITS = {"type": "integer", "minimum": 0, "maximum": AMOUNT_MAX}


def schemas() -> dict:
    return {**core_schemas(), **webhook_schemas(), **checkout_schemas(), **billing_schemas()}


def checkout_schemas() -> dict:
    url = {
        "type": "string",
        "maxLength": CHECKOUT_URL_CHARS_MAX,
        "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s]+$",
        "description": "An absolute http or https URL.",
    }
    description = {"type": "string", "maxLength": DESCRIPTION_CHARS_MAX}
    session = {
        "id": prefixed_id("cs"),
        "object": {"const": "checkout_session"},
        "url": {
            "type": "string",
            "description": "The hosted page (KASSA_PUBLIC_URL, or the origin the create "
            "was sent to, + `/checkout/{id}`): send the buyer there. Its id is unguessable.",
        },
        "status": ref("CheckoutSessionStatus"),
        "payment_id": prefixed_id("pay"),
        "payment_link": nullable(
            {**prefixed_id("plink"), "description": "The link that opened it, if any."}
        ),
        "amount": ref("Amount"),
        "currency": ref("CurrencyCode"),
        "capture": ref("CaptureMethod"),
        "success_url": nullable({"type": "string"}),
        "cancel_url": nullable({"type": "string"}),
        "reference": nullable({"type": "string"}),
        "description": nullable({"type": "string"}),
        "customer_email": nullable({"type": "string"}),
        "locale": ref("CheckoutLocale"),
        "expires_at": TIMESTAMP,
        "completed": nullable({**TIMESTAMP, "description": "When its payment succeeded."}),
        "created": TIMESTAMP,
        "updated": TIMESTAMP,
    }
    link = {
        "id": prefixed_id("plink"),
        "object": {"const": "payment_link"},
        "url": {
            "type": "string",
            "description": "Reusable: each visit opens a fresh checkout session (`GET "
            "/pay/{id}`, 303 to its page); `410` once retired.",
        },
        "active": {"type": "boolean"},
        "amount": ref("Amount"),
        "currency": ref("CurrencyCode"),
        "capture": ref("CaptureMethod"),
        "description": nullable({"type": "string"}),
        "success_url": nullable({"type": "string"}),
        "created": TIMESTAMP,
        "updated": TIMESTAMP,
    }
    return {
        "CheckoutSessionStatus": enum(
            ("open", "complete", "expired"),
            description="open -> complete (its payment authorized) | expired (`expire`, or "
            "`expires_at` passed: its payment, holding no money, is canceled with it).",
        ),
        "CheckoutLocale": enum(
            CHECKOUT_LOCALES,
            description="The page's language; `auto` follows the buyer's Accept-Language "
            "(English when none matches).",
        ),
        "CheckoutSessionCreate": closed_object(
            {
                "amount": ref("Amount"),
                "currency": ref("Currency"),
                "capture": {**ref("CaptureMethod"), "default": "automatic"},
                "success_url": {
                    **url,
                    "description": "Where a paid buyer is sent (303), with "
                    "`session_id=cs_...` added to its query. Without it Kassa shows its own "
                    "receipt page.",
                },
                "cancel_url": {
                    **url,
                    "description": "The page's Cancel link; without it the page has none.",
                },
                "reference": {"type": "string", "minLength": 1, "maxLength": REFERENCE_CHARS_MAX},
                "description": description,
                "customer_email": {
                    "type": "string",
                    "format": "email",
                    "maxLength": EMAIL_CHARS_MAX,
                },
                "locale": {**ref("CheckoutLocale"), "default": "auto"},
                "expires_in": {
                    "type": "integer",
                    "minimum": CHECKOUT_EXPIRES_IN_S_MIN,
                    "maximum": CHECKOUT_EXPIRES_IN_S_MAX,
                    "default": CHECKOUT_EXPIRES_IN_S_DEFAULT,
                    "description": "Seconds until the session expires.",
                },
            },
            ("amount", "currency"),
            description="A hosted payment page around a new payment that waits in "
            "`requires_payment_method`.",
        ),
        "CheckoutSessionExpire": closed_object({}, description="Expire takes no parameters."),
        "CheckoutSession": record(session, description="A checkout session."),
        "PaymentLinkCreate": closed_object(
            {
                "amount": ref("Amount"),
                "currency": ref("Currency"),
                "description": description,
                "capture": {**ref("CaptureMethod"), "default": "automatic"},
                "success_url": {
                    **url,
                    "description": "Where each paid buyer is sent; without it Kassa's "
                    "own receipt page.",
                },
            },
            ("amount", "currency"),
        ),
        "PaymentLinkUpdate": closed_object(
            {"active": {"type": "boolean", "description": "false retires the link."}},
            ("active",),
        ),
        "PaymentLink": record(link, description="A reusable payment link."),
    }


def list_of(item: str) -> dict:
    return record(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref(item), "maxItems": LIST_LIMIT_MAX},
            "has_more": {"type": "boolean"},
        },
        description="Newest first.",
    )


def deleted(prefix: str, kind: str) -> dict:
    return record(
        {"id": prefixed_id(prefix), "object": {"const": kind}, "deleted": {"const": True}}
    )


def billing_schemas() -> dict:
    recurring = record(
        {
            "interval": enum(PRICE_INTERVALS),
            "interval_count": {"type": "integer", "minimum": 1, "maximum": INTERVAL_COUNT_MAX},
        }
    )
    customer_fields = {
        "email": nullable({"type": "string", "format": "email", "maxLength": EMAIL_CHARS_MAX}),
        "name": nullable({"type": "string", "maxLength": CUSTOMER_NAME_CHARS_MAX}),
        "metadata": ref("Metadata"),
    }
    return {
        "CustomerCreate": closed_object(
            {
                **customer_fields,
                "test_clock": {
                    **prefixed_id("clock"),
                    "description": "The customer and its subscriptions live at this test "
                    "clock's time.",
                },
            },
            description="A saved customer.",
        ),
        "CustomerUpdate": closed_object(
            customer_fields, description="Only the fields given change; null clears."
        ),
        "BillingCustomer": record(
            {
                "id": prefixed_id("cus"),
                "object": {"const": "customer"},
                **customer_fields,
                "test_clock": nullable(prefixed_id("clock")),
                "created": TIMESTAMP,
                "updated": TIMESTAMP,
            },
            description="A saved customer (not the buyer details of a payment).",
        ),
        "BillingCustomerList": list_of("BillingCustomer"),
        "BillingCustomerDeleted": deleted("cus", "customer"),
        "CustomerPaymentMethodCreate": closed_object(
            {
                "token": prefixed_id("tok"),
                "default": {
                    "type": "boolean",
                    "default": False,
                    "description": "Make it the card renewals charge (a customer's first "
                    "card is its default anyway).",
                },
            },
            ("token",),
        ),
        "CustomerPaymentMethod": record(
            {
                "id": prefixed_id("tok"),
                "object": {"const": "customer_payment_method"},
                "customer": prefixed_id("cus"),
                "default": {"type": "boolean"},
                "card": ref("Card"),
                "created": TIMESTAMP,
            },
            description="A card saved for reuse: a token of this customer's only.",
        ),
        "CustomerPaymentMethodList": list_of("CustomerPaymentMethod"),
        "CustomerPaymentMethodDeleted": deleted("tok", "customer_payment_method"),
        "PriceCreate": closed_object(
            {
                "amount": ref("Amount"),
                "currency": ref("Currency"),
                "recurring": closed_object(
                    {
                        "interval": enum(PRICE_INTERVALS),
                        "interval_count": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": INTERVAL_COUNT_MAX,
                            "default": 1,
                        },
                    },
                    ("interval",),
                ),
                "description": {"type": "string", "maxLength": DESCRIPTION_CHARS_MAX},
            },
            ("amount", "currency", "recurring"),
        ),
        "Price": record(
            {
                "id": prefixed_id("price"),
                "object": {"const": "price"},
                "amount": ref("Amount"),
                "currency": ref("CurrencyCode"),
                "recurring": recurring,
                "description": nullable({"type": "string"}),
                "created": TIMESTAMP,
            }
        ),
        "SubscriptionCreate": closed_object(
            {
                "customer": prefixed_id("cus"),
                "price": prefixed_id("price"),
                "trial_days": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": TRIAL_DAYS_MAX,
                    "default": 0,
                    "description": "Days before the first paid period; without a trial the "
                    "customer needs a default card (`400 parameter_missing`, param `customer`).",
                },
            },
            ("customer", "price"),
        ),
        "SubscriptionCancel": closed_object(
            {
                "at_period_end": {
                    "type": "boolean",
                    "default": False,
                    "description": "true: end when the current period ends; false: now "
                    "(an open invoice becomes uncollectible).",
                }
            }
        ),
        "SubscriptionStatus": enum(
            SUBSCRIPTION_STATUSES,
            description="trialing -> active at the trial's end; active -> past_due when a "
            "renewal is declined; past_due -> active when a retry is paid, canceled after "
            f"the last retry ({', '.join(map(str, DUNNING_RETRY_DAYS))} days after the first "
            "failure); any -> canceled by cancel.",
        ),
        "Subscription": record(
            {
                "id": prefixed_id("sub"),
                "object": {"const": "subscription"},
                "customer": prefixed_id("cus"),
                "price": prefixed_id("price"),
                "status": ref("SubscriptionStatus"),
                "amount": ref("Amount"),
                "currency": ref("CurrencyCode"),
                "recurring": recurring,
                "billing_cycle_anchor": {
                    **TIMESTAMP,
                    "description": "Periods count from it (the start, or the trial's end), "
                    "clamped to each month's length, never drifting.",
                },
                "current_period_start": TIMESTAMP,
                "current_period_end": TIMESTAMP,
                "trial_start": nullable(TIMESTAMP),
                "trial_end": nullable(TIMESTAMP),
                "cancel_at_period_end": {"type": "boolean"},
                "canceled_at": nullable(TIMESTAMP),
                "ended_at": nullable(TIMESTAMP),
                "test_clock": nullable(prefixed_id("clock")),
                "created": TIMESTAMP,
                "updated": TIMESTAMP,
            }
        ),
        "SubscriptionList": list_of("Subscription"),
        "Invoice": record(
            {
                "id": prefixed_id("in"),
                "object": {"const": "invoice"},
                "subscription": prefixed_id("sub"),
                "customer": prefixed_id("cus"),
                "period_index": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Which period of the subscription: exactly one invoice each.",
                },
                "period_start": TIMESTAMP,
                "period_end": TIMESTAMP,
                "amount": ref("Amount"),
                "currency": ref("CurrencyCode"),
                "status": enum(("open", "paid", "uncollectible")),
                "attempt_count": {"type": "integer", "minimum": 0},
                "next_payment_attempt": nullable(TIMESTAMP),
                "payment_id": nullable(
                    {**prefixed_id("pay"), "description": "The payment that paid it."}
                ),
                "created": TIMESTAMP,
                "updated": TIMESTAMP,
            }
        ),
        "InvoiceList": list_of("Invoice"),
        "TestClockCreate": closed_object(
            {
                "frozen_time": {**TIMESTAMP, "description": "RFC 3339 with an offset."},
                "name": {"type": "string", "maxLength": TEST_CLOCK_NAME_CHARS_MAX},
            },
            ("frozen_time",),
        ),
        "TestClockAdvance": closed_object(
            {
                "frozen_time": {
                    **TIMESTAMP,
                    "description": "Later than the clock's time, by at most "
                    f"{TEST_CLOCK_ADVANCE_DAYS_MAX} days.",
                }
            },
            ("frozen_time",),
        ),
        "TestClock": record(
            {
                "id": prefixed_id("clock"),
                "object": {"const": "test_clock"},
                "name": nullable({"type": "string"}),
                "frozen_time": TIMESTAMP,
                "status": enum(
                    ("ready", "advancing"),
                    description="advancing from an advance until every renewal, retry "
                    "and cancellation due up to frozen_time has run.",
                ),
                "created": TIMESTAMP,
                "updated": TIMESTAMP,
            }
        ),
    }


def webhook_schemas() -> dict:
    endpoint_fields = {
        "url": {
            "type": "string",
            "maxLength": WEBHOOK_URL_CHARS_MAX,
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
            "description": "http or https; refused (`400 parameter_invalid`, param `url`) if "
            "its host resolves to a loopback, private or link-local address, unless the "
            "gateway runs with KASSA_WEBHOOK_ALLOW_PRIVATE=1, or if it carries credentials.",
            "examples": ["https://shop.example/webhooks"],
        },
        "enabled_events": {
            "type": "array",
            "minItems": 1,
            "maxItems": WEBHOOK_EVENT_TYPES_MAX,
            "items": {"type": "string", "enum": [*EVENT_TYPES, "*"]},
            "description": 'Event types, or `["*"]` for every one.',
        },
        "description": nullable({"type": "string", "maxLength": WEBHOOK_DESCRIPTION_CHARS_MAX}),
    }
    endpoint = {
        "id": prefixed_id("we"),
        "object": {"const": "webhook_endpoint"},
        "url": {"type": "string"},
        "enabled_events": {"type": "array", "items": {"type": "string"}},
        "description": nullable({"type": "string"}),
        "status": ref("WebhookEndpointStatus"),
        "created": TIMESTAMP,
        "updated": TIMESTAMP,
    }
    return {
        "EventType": enum(EVENT_TYPES),
        "WebhookEndpointStatus": enum(
            ("enabled", "disabled"),
            description="`disabled` by the merchant, after a `410 Gone`, or after its "
            "deliveries have all failed for KASSA_WEBHOOK_DISABLE_AFTER_S (5 days).",
        ),
        "WebhookEndpointCreate": closed_object(
            endpoint_fields, ("url", "enabled_events"), description="A new endpoint."
        ),
        "WebhookEndpointUpdate": closed_object(
            {**endpoint_fields, "status": ref("WebhookEndpointStatus")},
            description="Only the fields given change. Disabling cancels the endpoint's "
            "pending deliveries.",
        ),
        "WebhookEndpoint": record(endpoint, description="An endpoint; never its secret."),
        "WebhookEndpointCreated": record(
            {
                **endpoint,
                "secret": nullable(
                    {
                        "type": "string",
                        "pattern": "^whsec_[A-Za-z0-9+/]+=*$",
                        "description": "`whsec_` + base64 of 32 random bytes: shown only "
                        "in this answer (and its Idempotency-Key replays; null once the "
                        "endpoint is deleted).",
                    }
                ),
            },
            description="The endpoint just created, with its signing secret.",
        ),
        "WebhookEndpointList": record(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("WebhookEndpoint")},
                "has_more": {"type": "boolean"},
            }
        ),
        "WebhookEndpointDeleted": record(
            {
                "id": prefixed_id("we"),
                "object": {"const": "webhook_endpoint"},
                "deleted": {"const": True},
            }
        ),
        "Event": record(
            {
                "id": prefixed_id("evt"),
                "object": {"const": "event"},
                "type": ref("EventType"),
                "created": TIMESTAMP,
                "data": record(
                    {
                        "object": {
                            "oneOf": [
                                ref("Payment"),
                                ref("Refund"),
                                ref("CheckoutSession"),
                                ref("BillingCustomer"),
                                ref("Subscription"),
                                ref("Invoice"),
                            ],
                            "description": "The object as GET returned it right after the change.",
                        }
                    }
                ),
            },
            description="A committed change; the body POSTed to webhook endpoints, byte for byte.",
        ),
        "EventList": record(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("Event")},
                "has_more": {"type": "boolean"},
            }
        ),
        "WebhookAttempt": record(
            {
                "object": {"const": "webhook_attempt"},
                "event_id": prefixed_id("evt"),
                "endpoint_id": prefixed_id("we"),
                "attempt": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "1 for the first attempt of a delivery; a manual "
                    "retry starts a new delivery at 1.",
                },
                "status_code": nullable(
                    {"type": "integer", "description": "The endpoint's HTTP status."}
                ),
                "error": nullable(
                    {
                        "type": "string",
                        "description": "Without an answer: `timeout`, `connection_error` "
                        "or `refused_address`, then details.",
                    }
                ),
                "duration_ms": {"type": "integer", "minimum": 0},
                "next_attempt": nullable(
                    {**TIMESTAMP, "description": "When it is retried; null: it is not."}
                ),
                "created": TIMESTAMP,
            }
        ),
        "WebhookAttemptList": record(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("WebhookAttempt")},
                "has_more": {"type": "boolean"},
            },
            description=f"The event's delivery attempts, newest first, at most "
            f"{WEBHOOK_ATTEMPTS_SHOWN_MAX}.",
        ),
        "EventRetryCreate": closed_object({}, description="A retry takes no parameters."),
        "EventRetry": record(
            {
                "object": {"const": "event_retry"},
                "event_id": prefixed_id("evt"),
                "endpoints": {
                    "type": "array",
                    "items": prefixed_id("we"),
                    "description": "The enabled subscribed endpoints it is sent to now.",
                },
            }
        ),
    }


def core_schemas() -> dict:
    return {
        # --- shared ------------------------------------------------------------------
        "Amount": {
            "type": "integer",
            "minimum": AMOUNT_MIN,
            "maximum": AMOUNT_MAX,
            "description": "Integer amount in the currency's minor unit (e.g. cents).",
            "examples": [1999],
        },
        "Currency": {
            "type": "string",
            "pattern": "^[A-Za-z]{3}$",
            "description": "ISO 4217 alphabetic code, any case on input.",
            "examples": ["eur"],
        },
        "CurrencyCode": {
            "type": "string",
            "pattern": "^[A-Z]{3}$",
            "description": "ISO 4217 alphabetic code, upper-case.",
            "examples": ["EUR"],
        },
        "Metadata": {
            "type": "object",
            "maxProperties": METADATA_KEYS_MAX,
            "propertyNames": {"minLength": 1, "maxLength": METADATA_KEY_CHARS_MAX},
            "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_CHARS_MAX},
            "description": f"Up to {METADATA_KEYS_MAX} string pairs, stored and returned as given.",
        },
        "PaymentStatus": enum(
            PAYMENT_STATUSES,
            description=(
                "requires_payment_method -> requires_confirmation | canceled | expired; "
                "requires_confirmation -> processing (confirm) | canceled | expired; "
                "processing -> authorized | declined | failed; declined | failed -> "
                "processing (confirm again, with another payment method) | canceled; "
                "authorized -> captured | voided | expired; captured -> partially_refunded -> "
                "refunded. The states before processing post nothing to the ledger, call no "
                "processor, and expire after KASSA_UNCONFIRMED_PAYMENT_TTL_S (24 hours)."
            ),
        ),
        "CaptureMethod": enum(CAPTURE_METHODS),
        "RefundReason": enum(REFUND_REASONS),
        # --- requests ----------------------------------------------------------------
        "CardInput": closed_object(
            {
                "number": {
                    "type": "string",
                    "description": "12 to 19 digits passing Luhn; spaces allowed. Never returned.",
                },
                "exp_month": {"type": "integer", "minimum": 1, "maximum": 12},
                "exp_year": {
                    "type": "integer",
                    "minimum": 1000,
                    "maximum": 9999,
                    "description": "Four digits; expiry not past.",
                },
                "cvc": {
                    "type": "string",
                    "pattern": "^[0-9]{3,4}$",
                    "description": "3 digits (4 for American Express). Never stored.",
                },
                "holder_name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": HOLDER_NAME_CHARS_MAX,
                },
            },
            ("number", "exp_month", "exp_year", "cvc"),
        ),
        "CardPaymentMethod": closed_object(
            {"type": {"const": "card"}, "card": ref("CardInput")}, ("type", "card")
        ),
        "TokenPaymentMethod": closed_object(
            {
                "type": {"const": "token"},
                "token": {**prefixed_id("tok"), "maxLength": OBJECT_ID_CHARS_MAX},
            },
            ("type", "token"),
        ),
        "Customer": closed_object(
            {
                "email": {"type": "string", "format": "email", "maxLength": EMAIL_CHARS_MAX},
                "ip": {
                    "type": "string",
                    "description": "IPv4 or IPv6 address.",
                    "maxLength": IP_CHARS_MAX,
                },
            }
        ),
        "PaymentMethod": {
            "oneOf": [ref("CardPaymentMethod"), ref("TokenPaymentMethod")],
            "discriminator": {
                "propertyName": "type",
                "mapping": {
                    "card": "#/components/schemas/CardPaymentMethod",
                    "token": "#/components/schemas/TokenPaymentMethod",
                },
            },
        },
        "PaymentCreate": closed_object(
            {
                "amount": ref("Amount"),
                "currency": ref("Currency"),
                "capture": {**ref("CaptureMethod"), "default": "automatic"},
                "confirm": {
                    "type": "boolean",
                    "default": True,
                    "description": "false: stop before the processor, in "
                    "`requires_confirmation`, until `POST /v1/payments/{id}/confirm`.",
                },
                "payment_method": {
                    **ref("PaymentMethod"),
                    "description": "Without it the payment waits in "
                    "`requires_payment_method` (nothing posted, no processor called).",
                },
                "reference": {"type": "string", "minLength": 1, "maxLength": REFERENCE_CHARS_MAX},
                "description": {"type": "string", "maxLength": DESCRIPTION_CHARS_MAX},
                "metadata": ref("Metadata"),
                "customer": {
                    "oneOf": [ref("Customer"), prefixed_id("cus")],
                    "description": "Buyer details (an object), or a saved customer's "
                    "`cus_` id (a string), who then pays with one of its saved cards "
                    "(`payment_method` of type `token`; another card: `400 parameter_invalid`).",
                },
                "off_session": {
                    "type": "boolean",
                    "default": False,
                    "description": "The buyer is absent (a renewal, a merchant-initiated "
                    "charge): needs a saved `customer` and a token; marked on the payment.",
                },
            },
            ("amount", "currency"),
        ),
        "PaymentConfirm": closed_object(
            {
                "payment_method": {
                    **ref("PaymentMethod"),
                    "description": "Optional for a `requires_confirmation` payment (its own "
                    "is used); required from `requires_payment_method`, `declined` and "
                    "`failed` (`400 parameter_missing`).",
                }
            }
        ),
        "PaymentCancel": closed_object({}, description="A cancel takes no parameters."),
        "CaptureCreate": closed_object(
            {
                "amount": {
                    **ref("Amount"),
                    "description": "At most amount_capturable; default all of it.",
                }
            }
        ),
        "VoidCreate": closed_object({}, description="A void takes no parameters."),
        "RefundCreate": closed_object(
            {
                "amount": {
                    **ref("Amount"),
                    "description": "Default: all that is captured and not yet refunded.",
                },
                "reason": ref("RefundReason"),
            }
        ),
        "TokenCreate": closed_object({"card": ref("CardInput")}, ("card",)),
        # --- answers -----------------------------------------------------------------
        "Card": record(
            {
                "brand": {"type": "string", "examples": ["visa", "mastercard", "amex"]},
                "last4": {"type": "string", "pattern": "^[0-9]{4}$"},
                "exp_month": {"type": "integer", "minimum": 1, "maximum": 12},
                "exp_year": {"type": "integer"},
                "fingerprint": {
                    "type": "string",
                    "description": "Keyed hash of the number, stable per merchant.",
                },
            }
        ),
        "Payment": record(
            {
                "id": prefixed_id("pay"),
                "object": {"const": "payment"},
                "status": ref("PaymentStatus"),
                "amount": ref("Amount"),
                "currency": ref("CurrencyCode"),
                "amount_capturable": MINOR_UNITS,
                "amount_captured": MINOR_UNITS,
                "amount_refunded": MINOR_UNITS,
                "capture": ref("CaptureMethod"),
                "card": {
                    "oneOf": [ref("Card"), {"type": "null"}],
                    "description": "null until a payment method is given.",
                },
                "processor": {"type": "string", "examples": ["sandbox"]},
                "processor_reference": nullable({"type": "string"}),
                "decline_code": nullable(
                    {"type": "string", "examples": ["insufficient_funds", "card_velocity_exceeded"]}
                ),
                "reference": nullable({"type": "string", "maxLength": REFERENCE_CHARS_MAX}),
                "description": nullable({"type": "string", "maxLength": DESCRIPTION_CHARS_MAX}),
                "metadata": ref("Metadata"),
                "customer": nullable(
                    {
                        **prefixed_id("cus"),
                        "description": "The saved customer charged; null for a payment "
                        "without one (buyer details are never shown).",
                    }
                ),
                "off_session": {
                    "type": "boolean",
                    "description": "Charged without the buyer present.",
                },
                "attempts": {
                    "type": "array",
                    "items": ref("PaymentAttempt"),
                    "description": "Every processor attempt, oldest first: one for a "
                    "one-step payment, none before the processor, one more per confirm "
                    "again after a decline or a failure.",
                },
                "created": TIMESTAMP,
                "updated": TIMESTAMP,
            }
        ),
        "PaymentAttempt": record(
            {
                "outcome": enum(("processing", "authorized", "declined", "failed")),
                "decline_code": nullable({"type": "string"}),
                "card": record(
                    {
                        "brand": {"type": "string"},
                        "last4": {"type": "string", "pattern": "^[0-9]{4}$"},
                    }
                ),
            },
            description="One authorization sent to the processor, and what it answered.",
        ),
        "PaymentList": record(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("Payment"), "maxItems": LIST_LIMIT_MAX},
                "has_more": {"type": "boolean"},
            },
            description="Newest first.",
        ),
        "Refund": record(
            {
                "id": prefixed_id("re"),
                "object": {"const": "refund"},
                "payment_id": prefixed_id("pay"),
                "amount": ref("Amount"),
                "currency": ref("CurrencyCode"),
                "status": enum(("succeeded",)),
                "reason": {"type": ["string", "null"], "enum": [*REFUND_REASONS, None]},
                "created": TIMESTAMP,
            }
        ),
        "Token": record(
            {
                "id": prefixed_id("tok"),
                "object": {"const": "token"},
                "card": ref("Card"),
            }
        ),
        "Balance": record(
            {
                "object": {"const": "balance"},
                "currencies": {
                    "type": "array",
                    "items": record(
                        {
                            "currency": ref("CurrencyCode"),
                            "pending": {
                                "type": "integer",
                                "description": "Sum of amount_capturable "
                                "over authorized payments, from the ledger.",
                            },
                            "available": {
                                "type": "integer",
                                "description": "Captured minus refunded, from the ledger.",
                            },
                        }
                    ),
                },
            }
        ),
        "SettlementLine": record(
            {
                "date": {"type": "string", "format": "date"},
                "merchant_id": prefixed_id("mer"),
                "currency": ref("CurrencyCode"),
                "captured_amount": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Captured on the day, minor units.",
                },
                "captured_count": {"type": "integer", "minimum": 0},
                "refunded_amount": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Refunded on the day, minor units.",
                },
                "refunded_count": {"type": "integer", "minimum": 0},
                "net_amount": {
                    "type": "integer",
                    "description": "captured_amount - "
                    "refunded_amount: negative when refunds outweigh captures.",
                },
            },
            description="One merchant's captures and refunds in one currency on one day.",
        ),
        "SettlementReport": record(
            {
                "object": {"const": "settlement_report"},
                "date": {"type": "string", "format": "date"},
                "lines": {"type": "array", "items": ref("SettlementLine")},
            }
        ),
        "Error": record(
            {
                "error": record(
                    {
                        "type": enum(ERROR_TYPES),
                        "code": {
                            "type": "string",
                            "description": "Stable, machine-readable: "
                            + ", ".join(f"`{code}`" for code in ERROR_CODES)
                            + ".",
                        },
                        "message": {"type": "string", "description": "For humans; may change."},
                        "param": nullable(
                            {
                                "type": "string",
                                "description": "The offending field, "
                                "dotted (`payment_method.card.number`).",
                            }
                        ),
                        "decline_code": nullable(
                            {
                                "type": "string",
                                "description": "Why a card_error "
                                "declined: the issuer's reason (`generic_decline`, "
                                "`insufficient_funds`...), or `card_velocity_exceeded` "
                                "when the card-testing rules declined without asking "
                                "the processor.",
                            }
                        ),
                        "payment_id": nullable(
                            {
                                "type": "string",
                                "description": "The payment a card_error or api_error concerns.",
                            }
                        ),
                    }
                )
            }
        ),
        "Health": record({"status": {"const": "ok"}}),
        "Readiness": record(
            {
                "status": {"const": "ready"},
                "schema_version": {
                    "type": "integer",
                    "description": "The database's schema version, the one this Kassa expects.",
                },
                "core": {"type": "string", "description": "Which build of the core is loaded."},
            }
        ),
    }


# --- response and parameter helpers -----------------------------------------------------

ERROR_DESCRIPTIONS = {
    400: "Invalid request: a bad, missing or unknown parameter, malformed JSON "
    f"(`invalid_json`), objects and arrays nested deeper than {JSON_DEPTH_MAX} levels "
    "(`json_too_deep`), "
    "or an amount over what can be captured or refunded (`amount_too_large`).",
    401: "Missing (`api_key_missing`) or wrong, unknown or revoked (`api_key_invalid`) API "
    "key; on /metrics, a missing or wrong metrics token (`metrics_token_invalid`).",
    402: "The card was declined (`card_error` / `card_declined`); `decline_code` says why "
    "and `payment_id` names the stored declined payment.",
    404: "No such object for this merchant (`resource_missing`).",
    408: "The request body did not arrive within KASSA_BODY_READ_TIMEOUT_MS "
    "(`request_timeout`); nothing was executed.",
    409: "`payment_state_invalid` (illegal state transition, or an earlier capture, void or "
    "refund of the payment timed out and its outcome is being settled) or "
    "`idempotency_key_in_use` (the same key is still executing, or its outcome is not "
    "settled yet), `subscription_state_invalid` (the subscription is canceled already) or "
    "`test_clock_not_ready` (the clock is still advancing).",
    413: f"The request body exceeds {BODY_BYTES_MAX // 1024} KiB (`request_too_large`).",
    415: "The request has a body whose `Content-Type` is not `application/json` "
    "(`unsupported_media_type`); nothing was executed. A `charset` other than UTF-8 "
    "counts as another type; a request with no body needs no `Content-Type`.",
    422: "`idempotency_key_reused`: the same key was used with another request.",
    429: "Per-key rate limit hit (`rate_limit_error` / `rate_limited`); nothing was executed, "
    "retry after `Retry-After` seconds.",
    500: "Internal error (`internal_error`); safe to retry with the same Idempotency-Key.",
    502: "The processor failed (`processor_error`); for an authorization the payment is "
    "recorded `failed`, for a capture, void or refund nothing changed. The answer is "
    "stored: a retry with the same Idempotency-Key replays it.",
    503: "The database is unavailable (`database_unavailable`) or the gateway is at capacity "
    "(`gateway_overloaded`); see `Retry-After`.",
    504: "The processor timed out (`processor_timeout`): the outcome is unknown. An "
    "authorization stays `processing`, a capture, void or refund pending (the payment "
    "refuses other changes with 409), until recovery asks the processor and settles it. "
    "Retry with the same Idempotency-Key for the final answer.",
}
RETRY_AFTER_STATUSES = (429, 503)

# Answers stored under an Idempotency-Key and replayed with Idempotent-Replayed: true.
REPLAYABLE_STATUSES = (200, 201, 400, 402, 409, 502)


def json_content(schema: dict) -> dict:
    return {JSON: {"schema": schema}}


def headers_for(status: int, post: bool) -> dict:
    headers = {}
    if post and status in REPLAYABLE_STATUSES:
        headers["Idempotent-Replayed"] = {"$ref": "#/components/headers/IdempotentReplayed"}
    if status in RETRY_AFTER_STATUSES:
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return headers


def response(status: int, description: str, schema: dict, post: bool = False) -> dict:
    answer = {"description": description, "content": json_content(schema)}
    headers = headers_for(status, post)
    if headers:
        answer["headers"] = headers
    return answer


def error_responses(*statuses: int, post: bool = False) -> dict:
    return {
        str(status): response(status, ERROR_DESCRIPTIONS[status], ref("Error"), post)
        for status in statuses
    }


def param(name_or_parameter: str | dict) -> dict:
    """A shared parameter by its components name, or an operation's own one as given."""
    if isinstance(name_or_parameter, dict):
        return name_or_parameter
    return {"$ref": f"#/components/parameters/{name_or_parameter}"}


def path_id(prefix: str, description: str) -> dict:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "examples": [f"{prefix}_..."]},
    }


def parameters() -> dict:
    return {
        "IdempotencyKey": {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Scoped to the merchant, kept at least 24 hours.",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": IDEMPOTENCY_KEY_CHARS_MAX,
                "pattern": "^[ -~]+$",
            },
        },
        "PaymentId": path_id("pay", "A payment id."),
        "RefundId": path_id("re", "A refund id."),
        "Limit": {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": LIST_LIMIT_MAX,
                "default": LIST_LIMIT_DEFAULT,
            },
        },
        "StartingAfter": {
            "name": "starting_after",
            "in": "query",
            "required": False,
            "description": "A payment id: list the payments older than it.",
            "schema": {"type": "string", "pattern": "^pay_", "maxLength": OBJECT_ID_CHARS_MAX},
        },
        "Status": {
            "name": "status",
            "in": "query",
            "required": False,
            "schema": ref("PaymentStatus"),
        },
        "EventId": path_id("evt", "An event id."),
        "WebhookEndpointId": path_id("we", "A webhook endpoint id."),
        "CheckoutSessionId": path_id("cs", "A checkout session id."),
        "PaymentLinkId": path_id("plink", "A payment link id."),
        "EventsStartingAfter": {
            "name": "starting_after",
            "in": "query",
            "required": False,
            "description": "An event id: list the events older than it.",
            "schema": {"type": "string", "pattern": "^evt_", "maxLength": OBJECT_ID_CHARS_MAX},
        },
        "EndpointsStartingAfter": {
            "name": "starting_after",
            "in": "query",
            "required": False,
            "description": "A webhook endpoint id: list the endpoints older than it.",
            "schema": {"type": "string", "pattern": "^we_", "maxLength": OBJECT_ID_CHARS_MAX},
        },
        "CustomerId": path_id("cus", "A customer id."),
        "CustomerTokenId": {
            "name": "token",
            "in": "path",
            "required": True,
            "description": "A saved card's token id.",
            "schema": {"type": "string", "examples": ["tok_..."]},
        },
        "PriceId": path_id("price", "A price id."),
        "SubscriptionId": path_id("sub", "A subscription id."),
        "InvoiceId": path_id("in", "An invoice id."),
        "TestClockId": path_id("clock", "A test clock id."),
        **{
            name: {
                "name": "starting_after",
                "in": "query",
                "required": False,
                "description": f"A {prefix}_ id: list the objects older than it.",
                "schema": {
                    "type": "string",
                    "pattern": f"^{prefix}_",
                    "maxLength": OBJECT_ID_CHARS_MAX,
                },
            }
            for name, prefix in (
                ("CustomersStartingAfter", "cus"),
                ("SubscriptionsStartingAfter", "sub"),
                ("InvoicesStartingAfter", "in"),
            )
        },
        "EmailFilter": {
            "name": "email",
            "in": "query",
            "required": False,
            "description": "Only the customers with exactly this email.",
            "schema": {"type": "string", "maxLength": EMAIL_CHARS_MAX},
        },
        "CustomerFilter": {
            "name": "customer",
            "in": "query",
            "required": False,
            "description": "Only this customer's subscriptions.",
            "schema": prefixed_id("cus"),
        },
        "SubscriptionFilter": {
            "name": "subscription",
            "in": "query",
            "required": False,
            "description": "Only this subscription's invoices.",
            "schema": prefixed_id("sub"),
        },
        "EventTypeFilter": {
            "name": "type",
            "in": "query",
            "required": False,
            "schema": ref("EventType"),
        },
    }


V1_ERRORS = (401, 429, 500, 503)  # any /v1 operation can answer these
POST_ERRORS = (400, 401, 408, 409, 413, 415, 422, 429, 500, 503)  # any /v1 POST can answer these
BEARER = [{"bearerAuth": []}]


def v1_get(
    operation_id: str,
    summary: str,
    tag: str,
    ok: dict,
    *,
    params: tuple = (),
    errors: tuple[int, ...] = (),
) -> dict:
    operation = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": BEARER,
        "responses": {"200": ok, **error_responses(*sorted({*V1_ERRORS, *errors}))},
    }
    if params:
        operation["parameters"] = [param(name) for name in params]
    return operation


def v1_post(
    operation_id: str,
    summary: str,
    tag: str,
    request: str,
    ok_status: int,
    ok: dict,
    *,
    body_required: bool,
    params: tuple = (),
    errors: tuple[int, ...] = (),
) -> dict:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": BEARER,
        "parameters": [param(name) for name in (*params, "IdempotencyKey")],
        "requestBody": {"required": body_required, "content": json_content(ref(request))},
        "responses": {
            str(ok_status): ok,
            **error_responses(*sorted({*POST_ERRORS, *errors}), post=True),
        },
    }


def ok(status: int, description: str, schema: str, post: bool = False) -> dict:
    return response(status, description, ref(schema), post)


# --- paths ------------------------------------------------------------------------------


def paths() -> dict:
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive.",
                "tags": ["operations"],
                "responses": {"200": ok(200, "Alive.", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["operations"],
                "summary": "The database is reachable and its migrations are current.",
                "responses": {
                    "200": ok(200, "Ready.", "Readiness"),
                    "503": response(
                        503,
                        "Not ready (`api_error`): the database is "
                        "unreachable (`database_unavailable`), its schema "
                        "is older than this Kassa's (`migrations_pending`: "
                        "run `kassa migrate`) or newer "
                        "(`schema_too_new`); see `Retry-After`.",
                        ref("Error"),
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "tags": ["operations"],
                "responses": {
                    "200": response(200, "The OpenAPI 3.1 document.", {"type": "object"})
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics of every worker process (text exposition format).",
                "description": "Open unless KASSA_METRICS_TOKEN is set; then it needs "
                "`Authorization: Bearer <that token>` (never a merchant's key).",
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **error_responses(401),
                },
            }
        },
        "/v1/payments": {
            "post": v1_post(
                "createPayment",
                "Authorize (and with capture automatic, capture) a payment.",
                "payments",
                "PaymentCreate",
                201,
                ok(201, "Authorized, or captured with `capture: automatic`.", "Payment", True),
                body_required=True,
                errors=(402, 404, 502, 504),
            )
            | {
                "description": "Without `payment_method`, or with `confirm: false`, the "
                "payment is created in `requires_payment_method` or `requires_confirmation` "
                "(201): no processor is called and nothing is posted."
            },
            "get": v1_get(
                "listPayments",
                "List payments, newest first.",
                "payments",
                ok(200, "A page of payments.", "PaymentList"),
                params=("Limit", "StartingAfter", "Status"),
                errors=(400, 404),
            ),
        },
        "/v1/payments/{id}": {
            "get": v1_get(
                "getPayment",
                "Read a payment.",
                "payments",
                ok(200, "The payment.", "Payment"),
                params=("PaymentId",),
                errors=(404,),
            )
        },
        "/v1/payments/{id}/confirm": {
            "post": v1_post(
                "confirmPayment",
                "Send a payment waiting before the processor, or declined or failed, to the "
                "processor: exactly like a one-step create from here.",
                "payments",
                "PaymentConfirm",
                201,
                ok(
                    201,
                    "Authorized, or captured with `capture: automatic`; a decline answers "
                    "402 and a processor error 502, as a create does.",
                    "Payment",
                    True,
                ),
                body_required=False,
                params=("PaymentId",),
                errors=(402, 404, 502, 504),
            )
        },
        "/v1/payments/{id}/cancel": {
            "post": v1_post(
                "cancelPayment",
                "Cancel a payment in requires_payment_method, requires_confirmation, "
                "declined or failed (else 409 payment_state_invalid).",
                "payments",
                "PaymentCancel",
                200,
                ok(200, "The canceled payment.", "Payment", True),
                body_required=False,
                params=("PaymentId",),
                errors=(404,),
            )
        },
        "/v1/payments/{id}/capture": {
            "post": v1_post(
                "capturePayment",
                "Capture an authorized payment, once; the rest is released.",
                "payments",
                "CaptureCreate",
                200,
                ok(200, "The captured payment.", "Payment", True),
                body_required=False,
                params=("PaymentId",),
                errors=(404, 502, 504),
            )
        },
        "/v1/payments/{id}/void": {
            "post": v1_post(
                "voidPayment",
                "Release an authorized payment's hold.",
                "payments",
                "VoidCreate",
                200,
                ok(200, "The voided payment.", "Payment", True),
                body_required=False,
                params=("PaymentId",),
                errors=(404, 502, 504),
            )
        },
        "/v1/payments/{id}/refunds": {
            "post": v1_post(
                "refundPayment",
                "Refund part or all of a captured payment.",
                "refunds",
                "RefundCreate",
                201,
                ok(201, "The refund.", "Refund", True),
                body_required=False,
                params=("PaymentId",),
                errors=(404, 502, 504),
            )
        },
        "/v1/refunds/{id}": {
            "get": v1_get(
                "getRefund",
                "Read a refund.",
                "refunds",
                ok(200, "The refund.", "Refund"),
                params=("RefundId",),
                errors=(404,),
            )
        },
        "/v1/tokens": {
            "post": v1_post(
                "createToken",
                "Store a card; pay with the token later.",
                "tokens",
                "TokenCreate",
                201,
                ok(201, "The token.", "Token", True),
                body_required=True,
            )
        },
        "/v1/balance": {
            "get": v1_get(
                "getBalance",
                "The merchant's balance per currency, from the ledger.",
                "balance",
                ok(200, "The balance.", "Balance"),
            )
        },
        "/v1/reports/settlement": {
            "get": {
                **v1_get(
                    "getSettlementReport",
                    "What was captured and refunded on one UTC day, per currency, from the ledger.",
                    "reports",
                    {
                        "description": "The report: one line per currency with captures or refunds on "
                        "that day (none: no lines), as JSON or, with `format=csv`, as CSV "
                        "with a header row and the same columns.",
                        "content": {
                            **json_content(ref("SettlementReport")),
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    params=(
                        {
                            "name": "date",
                            "in": "query",
                            "required": True,
                            "description": "The UTC day, `YYYY-MM-DD`.",
                            "schema": {
                                "type": "string",
                                "format": "date",
                                "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                            },
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": enum(("json", "csv"), default="json"),
                        },
                    ),
                    errors=(400,),
                ),
                "description": "The merchant's own lines only. Money is in minor units; "
                "`net_amount` is `captured_amount - refunded_amount`. Any other "
                "query parameter answers `400 parameter_unknown`.",
            }
        },
    }


def webhook_paths() -> dict:
    return {
        "/v1/webhook_endpoints": {
            "post": v1_post(
                "createWebhookEndpoint",
                "Create a webhook endpoint; its secret is shown only in this answer.",
                "webhooks",
                "WebhookEndpointCreate",
                201,
                ok(201, "The endpoint, with its secret.", "WebhookEndpointCreated", True),
                body_required=True,
            ),
            "get": v1_get(
                "listWebhookEndpoints",
                "List webhook endpoints, newest first.",
                "webhooks",
                ok(200, "A page of endpoints.", "WebhookEndpointList"),
                params=("Limit", "EndpointsStartingAfter"),
                errors=(400, 404),
            ),
        },
        "/v1/webhook_endpoints/{id}": {
            "get": v1_get(
                "getWebhookEndpoint",
                "Read a webhook endpoint.",
                "webhooks",
                ok(200, "The endpoint.", "WebhookEndpoint"),
                params=("WebhookEndpointId",),
                errors=(404,),
            ),
            "post": v1_post(
                "updateWebhookEndpoint",
                "Change an endpoint's url, enabled_events, description or status.",
                "webhooks",
                "WebhookEndpointUpdate",
                200,
                ok(200, "The endpoint.", "WebhookEndpoint", True),
                body_required=False,
                params=("WebhookEndpointId",),
                errors=(404,),
            ),
            "delete": v1_get(
                "deleteWebhookEndpoint",
                "Delete an endpoint: its pending deliveries are canceled, its secret erased.",
                "webhooks",
                ok(200, "Deleted.", "WebhookEndpointDeleted"),
                params=("WebhookEndpointId",),
                errors=(404,),
            ),
        },
        "/v1/events": {
            "get": v1_get(
                "listEvents",
                "List events, newest first; kept at least 30 days.",
                "events",
                ok(200, "A page of events.", "EventList"),
                params=("Limit", "EventsStartingAfter", "EventTypeFilter"),
                errors=(400, 404),
            )
        },
        "/v1/events/{id}": {
            "get": v1_get(
                "getEvent",
                "Read an event: the body its webhooks deliver.",
                "events",
                ok(200, "The event.", "Event"),
                params=("EventId",),
                errors=(404,),
            )
        },
        "/v1/events/{id}/deliveries": {
            "get": v1_get(
                "listEventDeliveries",
                "Every delivery attempt of an event: endpoint, attempt, status or error, "
                "duration, next attempt.",
                "events",
                ok(200, "The attempts, newest first.", "WebhookAttemptList"),
                params=("EventId",),
                errors=(400, 404),
            )
        },
        "/v1/events/{id}/retry": {
            "post": v1_post(
                "retryEvent",
                "Send the event again now to every enabled endpoint subscribed to its type.",
                "events",
                "EventRetryCreate",
                200,
                ok(200, "Queued.", "EventRetry", True),
                body_required=False,
                params=("EventId",),
                errors=(404,),
            )
        },
    }


def checkout_paths() -> dict:
    return {
        "/v1/checkout/sessions": {
            "post": v1_post(
                "createCheckoutSession",
                "Open a hosted payment page: a session around a payment that waits in "
                "requires_payment_method.",
                "checkout",
                "CheckoutSessionCreate",
                201,
                ok(201, "The open session; send the buyer to its `url`.", "CheckoutSession", True),
                body_required=True,
            )
        },
        "/v1/checkout/sessions/{id}": {
            "get": v1_get(
                "getCheckoutSession",
                "Read a checkout session.",
                "checkout",
                ok(200, "The session.", "CheckoutSession"),
                params=("CheckoutSessionId",),
                errors=(404,),
            )
        },
        "/v1/checkout/sessions/{id}/expire": {
            "post": v1_post(
                "expireCheckoutSession",
                "Expire an open session (else 409 payment_state_invalid); its payment, "
                "holding no money, is canceled with it.",
                "checkout",
                "CheckoutSessionExpire",
                200,
                ok(200, "The expired session.", "CheckoutSession", True),
                body_required=False,
                params=("CheckoutSessionId",),
                errors=(404,),
            )
        },
        "/v1/payment_links": {
            "post": v1_post(
                "createPaymentLink",
                "Create a reusable payment link.",
                "checkout",
                "PaymentLinkCreate",
                201,
                ok(201, "The link.", "PaymentLink", True),
                body_required=True,
            )
        },
        "/v1/payment_links/{id}": {
            "get": v1_get(
                "getPaymentLink",
                "Read a payment link.",
                "checkout",
                ok(200, "The link.", "PaymentLink"),
                params=("PaymentLinkId",),
                errors=(404,),
            ),
            "post": v1_post(
                "updatePaymentLink",
                "Retire (`active: false`) or reactivate a payment link.",
                "checkout",
                "PaymentLinkUpdate",
                200,
                ok(200, "The link.", "PaymentLink", True),
                body_required=True,
                params=("PaymentLinkId",),
                errors=(404,),
            ),
        },
    }


def _html(description: str) -> dict:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def page_paths() -> dict:
    """The buyer's pages: HTML, no API key, the session id as the secret."""
    session_id = path_id("cs", "A checkout session id.")
    policy = (
        "Every page answers with `Content-Security-Policy: default-src 'self'; script-src "
        "'self'; style-src 'self'; img-src 'self'; font-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'` plus the session's success and cancel "
        "origins."
    )
    return {
        "/checkout/{id}": {
            "get": {
                "operationId": "checkoutPage",
                "summary": "The hosted payment page (HTML), in the session's language.",
                "description": policy,
                "tags": ["pages"],
                "parameters": [session_id],
                "responses": {
                    "200": _html("The card form, or the receipt once paid without success_url."),
                    "202": _html(
                        "The payment's outcome is not known yet (a processor timeout): a "
                        "waiting page that refreshes itself until recovery settles it."
                    ),
                    "303": {"description": "Paid: to success_url with session_id added."},
                    "404": _html("No such session."),
                    "410": _html("The session expired, or its payment was canceled."),
                    "429": _html(f"Its {CHECKOUT_ATTEMPTS_MAX} attempts are spent."),
                },
            }
        },
        "/checkout/{id}/pay": {
            "post": {
                "operationId": "checkoutPay",
                "summary": "Pay: the page's form (application/x-www-form-urlencoded: "
                "csrf_token, attempt, number, expiry, cvc, name).",
                "description": "Confirms the session's payment as `POST "
                "/v1/payments/{id}/confirm` does, with an Idempotency-Key made of the "
                "session and the form's attempt: posting one form twice authorizes once. "
                f"At most {CHECKOUT_ATTEMPTS_MAX} attempts per session; bodies over "
                f"{CHECKOUT_PAY_BODY_BYTES_MAX} bytes are refused. " + policy,
                "tags": ["pages"],
                "parameters": [session_id],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": {"type": "object"}}
                    },
                },
                "responses": {
                    "200": _html("Declined or failed: the reason, and the form for another card."),
                    "303": {
                        "description": "Paid (to success_url or the receipt), or its outcome "
                        "pending (to the page, which waits)."
                    },
                    "400": _html("A field is invalid (tied to its input); nothing was sent."),
                    "403": _html("The form's CSRF token is wrong; nothing was sent."),
                    "404": _html("No such session."),
                    "409": _html("The form is out of date (its attempt); nothing was sent."),
                    "410": _html("The session expired: it takes no payment."),
                    "429": _html(f"Its {CHECKOUT_ATTEMPTS_MAX} attempts are spent."),
                },
            }
        },
        "/pay/{id}": {
            "get": {
                "operationId": "paymentLinkVisit",
                "summary": "A payment link: opens a fresh checkout session per visit.",
                "tags": ["pages"],
                "parameters": [path_id("plink", "A payment link id.")],
                "responses": {
                    "303": {"description": "To the new session's page."},
                    "404": _html("No such link."),
                    "410": _html("The link is retired."),
                    "429": _html(
                        f"More than {CHECKOUT_LINK_VISITS_PER_S} visits a second (bursts of "
                        f"{CHECKOUT_LINK_VISITS_BURST}) of this link; see Retry-After."
                    ),
                },
            }
        },
        "/checkout/static/{name}": {
            "get": {
                "operationId": "checkoutAsset",
                "summary": "The page's own CSS and JS, named by their content's hash.",
                "tags": ["pages"],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The asset, `Cache-Control: public, "
                        "max-age=31536000, immutable`.",
                        "content": {
                            "text/css": {"schema": {"type": "string"}},
                            "text/javascript": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _html("No such asset."),
                },
            }
        },
    }


def billing_paths() -> dict:
    post_ok = {"post": True}
    return {
        "/v1/customers": {
            "post": v1_post(
                "createCustomer",
                "Create a saved customer (event customer.created).",
                "billing",
                "CustomerCreate",
                201,
                ok(201, "The customer.", "BillingCustomer", **post_ok),
                body_required=False,
                errors=(404,),
            ),
            "get": v1_get(
                "listCustomers",
                "List customers, newest first, optionally by email.",
                "billing",
                ok(200, "A page of customers.", "BillingCustomerList"),
                params=("Limit", "CustomersStartingAfter", "EmailFilter"),
                errors=(400, 404),
            ),
        },
        "/v1/customers/{id}": {
            "get": v1_get(
                "getCustomer",
                "Read a customer.",
                "billing",
                ok(200, "The customer.", "BillingCustomer"),
                params=("CustomerId",),
                errors=(404,),
            ),
            "post": v1_post(
                "updateCustomer",
                "Change a customer's email, name or metadata.",
                "billing",
                "CustomerUpdate",
                200,
                ok(200, "The customer.", "BillingCustomer", **post_ok),
                body_required=False,
                params=("CustomerId",),
                errors=(404,),
            ),
            "delete": v1_get(
                "deleteCustomer",
                "Delete a customer: its subscriptions are canceled now.",
                "billing",
                ok(200, "Deleted.", "BillingCustomerDeleted"),
                params=("CustomerId",),
                errors=(404,),
            ),
        },
        "/v1/customers/{id}/payment_methods": {
            "post": v1_post(
                "attachCustomerPaymentMethod",
                "Save a token's card for reuse by this customer only.",
                "billing",
                "CustomerPaymentMethodCreate",
                200,
                ok(200, "The saved card.", "CustomerPaymentMethod", **post_ok),
                body_required=True,
                params=("CustomerId",),
                errors=(404,),
            ),
            "get": v1_get(
                "listCustomerPaymentMethods",
                "List a customer's saved cards, newest first.",
                "billing",
                ok(200, "The saved cards.", "CustomerPaymentMethodList"),
                params=("CustomerId",),
                errors=(400, 404),
            ),
        },
        "/v1/customers/{id}/payment_methods/{token}": {
            "delete": v1_get(
                "detachCustomerPaymentMethod",
                "Remove a saved card: it no longer charges the customer.",
                "billing",
                ok(200, "Removed.", "CustomerPaymentMethodDeleted"),
                params=("CustomerId", "CustomerTokenId"),
                errors=(404,),
            )
        },
        "/v1/prices": {
            "post": v1_post(
                "createPrice",
                "Create a recurring price.",
                "billing",
                "PriceCreate",
                201,
                ok(201, "The price.", "Price", **post_ok),
                body_required=True,
            )
        },
        "/v1/prices/{id}": {
            "get": v1_get(
                "getPrice",
                "Read a price.",
                "billing",
                ok(200, "The price.", "Price"),
                params=("PriceId",),
                errors=(404,),
            )
        },
        "/v1/subscriptions": {
            "post": v1_post(
                "createSubscription",
                "Subscribe a customer to a price (event customer.subscription.created). "
                "Without a trial the first period's invoice is charged at once, off-session, "
                "to the customer's default card.",
                "billing",
                "SubscriptionCreate",
                201,
                ok(201, "The subscription.", "Subscription", **post_ok),
                body_required=True,
                errors=(404,),
            ),
            "get": v1_get(
                "listSubscriptions",
                "List subscriptions, newest first, optionally a customer's.",
                "billing",
                ok(200, "A page of subscriptions.", "SubscriptionList"),
                params=("Limit", "SubscriptionsStartingAfter", "CustomerFilter"),
                errors=(400, 404),
            ),
        },
        "/v1/subscriptions/{id}": {
            "get": v1_get(
                "getSubscription",
                "Read a subscription.",
                "billing",
                ok(200, "The subscription.", "Subscription"),
                params=("SubscriptionId",),
                errors=(404,),
            )
        },
        "/v1/subscriptions/{id}/cancel": {
            "post": v1_post(
                "cancelSubscription",
                "Cancel now (customer.subscription.deleted) or at the period's end "
                "(customer.subscription.updated, then deleted when it ends).",
                "billing",
                "SubscriptionCancel",
                200,
                ok(200, "The subscription.", "Subscription", **post_ok),
                body_required=False,
                params=("SubscriptionId",),
                errors=(404,),
            )
        },
        "/v1/invoices": {
            "get": v1_get(
                "listInvoices",
                "List invoices, newest first, optionally a subscription's.",
                "billing",
                ok(200, "A page of invoices.", "InvoiceList"),
                params=("Limit", "InvoicesStartingAfter", "SubscriptionFilter"),
                errors=(400, 404),
            )
        },
        "/v1/invoices/{id}": {
            "get": v1_get(
                "getInvoice",
                "Read an invoice.",
                "billing",
                ok(200, "The invoice.", "Invoice"),
                params=("InvoiceId",),
                errors=(404,),
            )
        },
        "/v1/test_clocks": {
            "post": v1_post(
                "createTestClock",
                "Create a test clock: sandbox time for the customers created on it.",
                "billing",
                "TestClockCreate",
                201,
                ok(201, "The clock, ready.", "TestClock", **post_ok),
                body_required=True,
            )
        },
        "/v1/test_clocks/{id}": {
            "get": v1_get(
                "getTestClock",
                "Read a test clock: ready once an advance's work has all run.",
                "billing",
                ok(200, "The clock.", "TestClock"),
                params=("TestClockId",),
                errors=(404,),
            )
        },
        "/v1/test_clocks/{id}/advance": {
            "post": v1_post(
                "advanceTestClock",
                "Move the clock forward: every renewal, retry and cancellation due up to "
                "frozen_time runs, in order; the clock is advancing until then, then ready.",
                "billing",
                "TestClockAdvance",
                200,
                ok(200, "The clock, advancing.", "TestClock", **post_ok),
                body_required=True,
                params=("TestClockId",),
                errors=(404,),
            )
        },
    }


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kassa payment gateway", "version": "1.0.0", "description": DESCRIPTION},
        "tags": [
            {"name": name}
            for name in (
                "payments",
                "refunds",
                "tokens",
                "balance",
                "reports",
                "webhooks",
                "events",
                "checkout",
                "pages",
                "billing",
                "operations",
            )
        ],
        "paths": {
            **paths(),
            **webhook_paths(),
            **checkout_paths(),
            **billing_paths(),
            **page_paths(),
        },
        "components": {
            "schemas": schemas(),
            "parameters": parameters(),
            "headers": {
                "IdempotentReplayed": {
                    "description": "`true` when this is the stored answer to an earlier "
                    "request with the same Idempotency-Key and body.",
                    "schema": {"const": "true"},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 0},
                },
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <secret key>`.",
                }
            },
        },
    }


DOCUMENT: dict = document()
DOCUMENT_BYTES: bytes = orjson.dumps(DOCUMENT)
# docs/openapi.json is this document, pretty-printed: python -m gateway.http.openapi
DOCS_REGENERATE = "python -m gateway.http.openapi > docs/openapi.json"

if __name__ == "__main__":
    import sys

    sys.stdout.buffer.write(orjson.dumps(DOCUMENT, option=orjson.OPT_INDENT_2) + b"\n")
