"""Kassa's objects and errors in Stripe's shapes (gateway/stripe), held to the official SDK.

The conformance test is generic: for each facade object, every field stripe 16.1.0's own
type annotations declare non-optional is present, with the JSON type the annotation says,
and a value from the allowed set where the annotation is a ``Literal`` (also where Stripe
widens it with ``| str``: Kassa sends only what Stripe documents). Nested objects are
checked against their own annotations, and no field is sent that the SDK does not declare.
The error mapping is checked by handing each answer to the SDK's own response handling."""

from __future__ import annotations

import ast
import inspect
import sys
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import stripe
from requests.structures import CaseInsensitiveDict
from stripe._api_requestor import _APIRequestor
from stripe._stripe_object import StripeObject, UntypedStripeObject

import core_ext
from core_ext.errors import CoreError
from gateway.http import answers
from gateway.http.answers import ApiError
from gateway.http.render import (
    answer_for_authorization,
    event_payload,
    render_customer,
    render_payment,
    render_refund,
    render_token,
    render_webhook_endpoint,
)
from gateway.stripe import errors, shapes

HEX = "0123456789abcdef" * 2
PAY = "pay_" + HEX
CREATED = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
NEW_STATUSES = ("requires_payment_method", "requires_confirmation", "canceled")
ALL_STATUSES = (*core_ext.states.STATUSES, *NEW_STATUSES)

# --- the SDK's annotations ------------------------------------------------------------------


def _type_checking_names(module) -> dict:
    """The names a stripe module imports only under ``if TYPE_CHECKING:`` (its annotations
    refer to them), imported for real."""
    names: dict = {}
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            exec(
                compile(ast.Module(body=node.body, type_ignores=[]), module.__file__, "exec"), names
            )
    return names


def annotations(cls) -> dict[str, Any]:
    """``typing.get_type_hints(cls, include_extras=True)`` of a stripe class, its public
    fields only, forward references resolved (nested classes by their enclosing ones)."""
    module = sys.modules[cls.__module__]
    local = _type_checking_names(module)
    scope = module
    for part in cls.__qualname__.split("."):
        scope = getattr(scope, part)
        local.update({k: v for k, v in vars(scope).items() if inspect.isclass(v)})
    hints = typing.get_type_hints(cls, localns=local, include_extras=True)
    return {
        k: v
        for k, v in hints.items()
        if not k.startswith("_")
        and k != "OBJECT_NAME"
        and typing.get_origin(v) is not typing.ClassVar
    }


def _optional(tp) -> bool:
    return type(None) in typing.get_args(tp)


def _literals(tp) -> list:
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    return [v for arg in typing.get_args(tp) for v in _literals(arg)]


def problems(cls, value, path: str = "") -> list[str]:
    """Every way ``value`` (JSON as a dict) breaks ``cls``'s annotations; [] if none."""
    if not isinstance(value, dict):
        return [f"{path or cls.__name__}: not an object"]
    hints = annotations(cls)
    if "object" not in hints and getattr(cls, "OBJECT_NAME", None):  # ListObject: a ClassVar
        hints["object"] = typing.Literal[cls.OBJECT_NAME]
    found = [f"{path}{k}: not a field of {cls.__qualname__}" for k in value if k not in hints]
    for name, tp in hints.items():
        here = f"{path}{name}"
        if name not in value:
            if not _optional(tp):
                found.append(f"{here}: required by the SDK, missing")
            continue
        found += _check(tp, value[name], here)
    return found


def _check(tp, value, here: str) -> list[str]:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if tp is Any or isinstance(tp, typing.TypeVar):  # ListObject[T]: items checked apart
        return []
    if value is None:
        return [] if _optional(tp) else [f"{here}: null, but not optional"]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return [] if value in args else [f"{here}: {value!r} not in {list(args)[:8]}..."]
    if origin is typing.Union:
        members = [a for a in args if a is not type(None)]
        literals = _literals(tp)
        if literals and str in members:  # Literal[...] | str: Stripe's documented values only
            return [] if value in literals else [f"{here}: {value!r} not one of {literals[:8]}"]
        tries = [_check(a, value, here) for a in members]
        return [] if any(not t for t in tries) else min(tries, key=len)
    if origin in (list, typing.List):  # noqa: UP006
        if not isinstance(value, list):
            return [f"{here}: not an array"]
        return [p for i, item in enumerate(value) for p in _check(args[0], item, f"{here}[{i}]")]
    if origin is UntypedStripeObject or tp is UntypedStripeObject or origin in (dict, typing.Dict):  # noqa: UP006
        if not isinstance(value, dict):
            return [f"{here}: not an object"]
        inner = args[-1] if args else Any
        return [p for k, v in value.items() for p in _check(inner, v, f"{here}[{k}]")]
    if inspect.isclass(tp) and issubclass(tp, StripeObject):
        return problems(tp, value, here + ".")
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{here}: not a boolean"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{here}: not an integer"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{here}: not a number"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{here}: not a string"]
    return [f"{here}: the test does not know the annotation {tp!r}"]


def conforms(cls, value) -> None:
    found = problems(cls, value)
    assert not found, "\n".join(found)


# --- native objects, rendered by Kassa's own renderer ----------------------------------------

AMOUNTS = {  # status -> (amount_capturable, amount_captured, amount_refunded) of 1000
    "requires_payment_method": (0, 0, 0),
    "requires_confirmation": (0, 0, 0),
    "processing": (0, 0, 0),
    "authorized": (1000, 0, 0),
    "declined": (0, 0, 0),
    "failed": (0, 0, 0),
    "captured": (0, 600, 0),  # a partial capture: 400 released
    "partially_refunded": (0, 1000, 300),
    "refunded": (0, 1000, 1000),
    "voided": (0, 0, 0),
    "canceled": (0, 0, 0),
    "expired": (0, 0, 0),
}


def payment(status: str, capture: str = "manual", **row) -> dict:
    """A payment as GET /v1/payments/{id} renders it (render_payment of a stored row)."""
    capturable, captured, refunded = AMOUNTS[status]
    before = status in ("requires_payment_method", "requires_confirmation")
    has_card = status != "requires_payment_method"
    fields = {
        "id": PAY,
        "status": status,
        "amount": 1000,
        "currency": "EUR",
        "amount_capturable": capturable,
        "amount_captured": captured,
        "amount_refunded": refunded,
        "capture_method": capture,
        "card_brand": "visa" if has_card else None,
        "card_last4": "4242" if has_card else None,
        "card_exp_month": 12 if has_card else None,
        "card_exp_year": 2030 if has_card else None,
        "card_fingerprint": "fp_" + HEX if has_card else None,
        "processor": "sandbox",
        "processor_reference": None if before or status == "canceled" else "sbx_1",
        "decline_code": "insufficient_funds" if status == "declined" else None,
        "reference": "order-1001",
        "description": "2 items",
        "metadata": '{"cart": "c_77"}',
        "created_at": CREATED,
        "updated_at": CREATED + timedelta(minutes=5),
        **row,
    }
    return render_payment(fields)


def refund_rendered(reason: str | None = "requested_by_customer") -> dict:
    return render_refund(
        {
            "id": "re_" + HEX,
            "payment_id": PAY,
            "amount": 300,
            "currency": "EUR",
            "status": "succeeded",
            "reason": reason,
            "created_at": CREATED,
        }
    )


def token_rendered() -> dict:
    card = {
        "brand": "mastercard",
        "last4": "4444",
        "exp_month": 1,
        "exp_year": 2031,
        "fingerprint": "fp_" + HEX,
    }
    return render_token("tok_" + HEX, card)


def customer_rendered(email: str | None = "ada@shop.example", clock: str | None = None) -> dict:
    row = {
        "id": "cus_" + HEX,
        "email": email,
        "name": None if email is None else "Ada",
        "metadata": '{"crm": "c_9"}' if email else "{}",
        "test_clock_id": clock,
        "created_at": CREATED,
        "updated_at": CREATED + timedelta(minutes=5),
    }
    return render_customer(row)


def endpoint_rendered(
    enabled=("payment.captured", "payment.voided", "payment.expired"), secret=None
):
    row = {
        "id": "we_" + HEX,
        "url": "https://shop.example/hooks",
        "enabled_events": list(enabled),
        "description": "orders",
        "status": "enabled",
        "created_at": CREATED,
        "updated_at": CREATED,
    }
    return render_webhook_endpoint(row, secret)


def event_rendered(event_type: str, obj: dict) -> dict:
    text = event_payload("evt_" + HEX, event_type, CREATED, orjson.dumps(obj))
    return orjson.loads(text)


# --- conformance --------------------------------------------------------------------------


def test_the_conformance_check_fails_on_what_it_should():
    good = shapes.refund(refund_rendered())
    conforms(stripe.Refund, good)
    assert problems(stripe.Refund, {k: v for k, v in good.items() if k != "amount"}) == [
        "amount: required by the SDK, missing"
    ]
    assert problems(stripe.Refund, {**good, "amount": "300"}) == ["amount: not an integer"]
    assert problems(stripe.Refund, {**good, "reason": "because"})  # Literal | str: Stripe's only
    assert problems(stripe.Refund, {**good, "object": "payment"})
    assert problems(stripe.Refund, {**good, "kassa_field": 1})
    intent = shapes.payment_intent(payment("declined"))
    broken = {**intent, "last_payment_error": {**intent["last_payment_error"], "type": "nope"}}
    assert problems(stripe.PaymentIntent, broken) == [
        "last_payment_error.type: 'nope' not one of "
        "['api_error', 'card_error', 'idempotency_error', 'invalid_request_error']"
    ]


def test_every_native_status_is_mapped():
    assert set(shapes.INTENT_STATUSES) == set(ALL_STATUSES)
    with pytest.raises(ValueError):
        shapes.intent_status("pending_review", "manual")


@pytest.mark.parametrize("capture", ["manual", "automatic"])
@pytest.mark.parametrize("status", ALL_STATUSES)
def test_payment_intent_conforms(status, capture):
    intent = shapes.payment_intent(
        payment(status, capture), payment_method="pm_" + HEX, customer=None
    )
    conforms(stripe.PaymentIntent, intent)


@pytest.mark.parametrize("status", [s for s in ALL_STATUSES if shapes.has_charge(payment(s))])
def test_charge_conforms(status):
    conforms(stripe.Charge, shapes.charge(payment(status), payment_method="pm_" + HEX))


def test_payment_method_refund_endpoint_and_list_conform():
    method = shapes.payment_method(token_rendered(), created=CREATED)
    conforms(stripe.PaymentMethod, method)
    conforms(stripe.Refund, shapes.refund(refund_rendered()))
    conforms(stripe.Refund, shapes.refund(refund_rendered(reason=None)))
    conforms(stripe.WebhookEndpoint, shapes.webhook_endpoint(endpoint_rendered()))
    conforms(stripe.WebhookEndpoint, shapes.webhook_endpoint(endpoint_rendered(["*"], "whsec_x")))
    conforms(stripe.Customer, shapes.customer(customer_rendered()))
    conforms(stripe.Customer, shapes.customer(customer_rendered(None, "clock_" + HEX)))
    listed = shapes.stripe_list([method], has_more=True, url="/v1/payment_methods")
    conforms(stripe.ListObject, listed)
    assert listed["object"] == "list" and listed["url"] == "/v1/payment_methods"
    for item in listed["data"]:
        conforms(stripe.PaymentMethod, item)


@pytest.mark.parametrize("native_type", sorted(shapes.EVENT_TYPES))
def test_event_conforms_with_its_object(native_type):
    obj, inner = payment("captured"), stripe.PaymentIntent
    if native_type.startswith("refund."):
        obj, inner = refund_rendered(), stripe.Refund
    elif native_type == "customer.created":
        obj, inner = customer_rendered(), stripe.Customer
    shaped = shapes.event(event_rendered(native_type, obj))
    conforms(stripe.Event, shaped)
    conforms(inner, shaped["data"]["object"])


def test_the_error_body_conforms():
    declined = payment("declined")
    body = stripe_answer(
        answers_error(answer_for_authorization(row_of(declined))),
        payment_intent=shapes.payment_intent(declined),
    ).body["error"]
    conforms(stripe.ErrorObject, body)


# --- values ---------------------------------------------------------------------------------


def test_ids_map_by_prefix_both_ways_and_malformed_ones_are_refused():
    assert shapes.payment_intent_id(PAY) == "pi_" + HEX
    assert shapes.charge_id(PAY) == "ch_" + HEX
    assert shapes.payment_method_id("tok_" + HEX) == "pm_" + HEX
    assert shapes.payment_id_from_intent("pi_" + HEX) == PAY
    assert shapes.payment_id_from_charge("ch_" + HEX) == PAY
    assert shapes.token_id_from_payment_method("pm_" + HEX) == "tok_" + HEX
    for bad in (
        "pi_" + HEX.upper(),
        "pi_" + HEX[:-1],
        "pi_" + HEX + "0",
        "pay_" + HEX,
        "pi_",
        7,
        None,
    ):
        assert shapes.payment_id_from_intent(bad) is None, bad
    assert shapes.token_id_from_payment_method("pm_card_visa") is None  # magic: the caller's
    assert shapes.payment_id_from_charge("pi_" + HEX) is None
    for bad in ("pi_" + HEX, "pay_xyz", "tok_" + HEX):
        with pytest.raises(ValueError):
            shapes.payment_intent_id(bad)


@pytest.mark.parametrize(
    "status,capture,expected",
    [
        ("requires_payment_method", "manual", "requires_payment_method"),
        ("requires_confirmation", "manual", "requires_confirmation"),
        ("processing", "manual", "processing"),
        ("authorized", "manual", "requires_capture"),
        ("authorized", "automatic", "processing"),
        ("declined", "manual", "requires_payment_method"),
        ("failed", "automatic", "requires_payment_method"),
        ("captured", "manual", "succeeded"),
        ("partially_refunded", "manual", "succeeded"),
        ("refunded", "automatic", "succeeded"),
        ("voided", "manual", "canceled"),
        ("canceled", "manual", "canceled"),
        ("expired", "manual", "canceled"),
    ],
)
def test_payment_intent_status(status, capture, expected):
    assert shapes.payment_intent(payment(status, capture))["status"] == expected


def test_payment_intent_values():
    intent = shapes.payment_intent(payment("captured"), payment_method="pm_" + HEX)
    assert intent["id"] == "pi_" + HEX and intent["object"] == "payment_intent"
    assert (intent["amount"], intent["amount_capturable"], intent["amount_received"]) == (
        1000,
        0,
        600,
    )
    assert intent["currency"] == "eur" and intent["capture_method"] == "manual"
    assert intent["created"] == int(CREATED.timestamp())
    assert intent["latest_charge"] == "ch_" + HEX and intent["payment_method"] == "pm_" + HEX
    assert intent["metadata"] == {"cart": "c_77"} and intent["description"] == "2 items"
    assert intent["livemode"] is False and intent["last_payment_error"] is None
    assert intent["canceled_at"] is None
    waiting = shapes.payment_intent(payment("requires_payment_method"))
    assert waiting["latest_charge"] is None and waiting["payment_method"] is None
    expired = shapes.payment_intent(payment("expired"))
    assert expired["cancellation_reason"] == "automatic"
    assert expired["canceled_at"] == int((CREATED + timedelta(minutes=5)).timestamp())


def test_a_decline_shows_in_the_intent_and_the_charge():
    declined = payment("declined")
    error = shapes.payment_intent(declined)["last_payment_error"]
    assert error["type"] == "card_error" and error["code"] == "card_declined"
    assert error["decline_code"] == "insufficient_funds" and error["charge"] == "ch_" + HEX
    charge = shapes.charge(declined)
    assert (charge["status"], charge["paid"], charge["captured"]) == ("failed", False, False)
    assert charge["failure_code"] == "card_declined"
    assert charge["outcome"]["network_status"] == "declined_by_network"
    assert charge["outcome"]["type"] == "issuer_declined"
    assert charge["outcome"]["reason"] == "insufficient_funds"
    expired_card = shapes.payment_intent(payment("declined", decline_code="expired_card"))
    assert expired_card["last_payment_error"]["code"] == "expired_card"
    velocity = shapes.charge(payment("declined", decline_code="card_velocity_exceeded"))
    assert velocity["outcome"]["type"] == "blocked"
    assert velocity["outcome"]["network_status"] == "not_sent_to_network"
    failed = payment("failed")
    assert shapes.payment_intent(failed)["last_payment_error"]["code"] == "processing_error"
    assert shapes.charge(failed)["outcome"]["network_status"] == "not_sent_to_network"


def test_a_payment_canceled_after_a_decline_keeps_the_error_and_the_charge():
    attempts = [{"outcome": "declined", "decline_code": "lost_card"}]
    canceled = {**payment("canceled", decline_code="lost_card"), "attempts": attempts}
    intent = shapes.payment_intent(canceled)
    assert intent["status"] == "canceled" and intent["latest_charge"] == "ch_" + HEX
    assert intent["last_payment_error"]["decline_code"] == "lost_card"
    assert shapes.charge(canceled)["status"] == "failed"
    never = payment("canceled")
    assert not shapes.has_charge(never) and shapes.payment_intent(never)["latest_charge"] is None
    with pytest.raises(ValueError):
        shapes.charge(never)


def test_charge_amounts_follow_stripe():
    authorized = shapes.charge(payment("authorized"))
    assert (authorized["status"], authorized["paid"], authorized["captured"]) == (
        "succeeded",
        True,
        False,
    )
    assert authorized["outcome"]["type"] == "authorized"
    partial = shapes.charge(payment("captured"))  # 600 of 1000 captured
    assert (partial["amount_captured"], partial["amount_refunded"], partial["refunded"]) == (
        600,
        400,
        False,
    )
    refunded = shapes.charge(payment("refunded"))
    assert (refunded["amount_refunded"], refunded["refunded"]) == (1000, True)
    voided = shapes.charge(payment("voided"))
    assert (voided["amount_refunded"], voided["refunded"], voided["captured"]) == (
        1000,
        True,
        False,
    )
    assert shapes.charge(payment("processing"))["status"] == "pending"
    details = shapes.charge(payment("captured"))["payment_method_details"]
    assert details["type"] == "card" and details["card"]["last4"] == "4242"


def test_payment_method_refund_event_endpoint_values():
    method = shapes.payment_method(token_rendered(), created=1_700_000_000)
    assert (
        method["id"] == "pm_" + HEX
        and method["type"] == "card"
        and method["created"] == 1_700_000_000
    )
    assert method["card"]["brand"] == "mastercard" and method["card"]["last4"] == "4444"
    assert "number" not in orjson.dumps(method).decode()
    refund = shapes.refund(refund_rendered())
    assert refund["id"] == "re_" + HEX and refund["charge"] == "ch_" + HEX
    assert refund["payment_intent"] == "pi_" + HEX and refund["currency"] == "eur"
    shaped = shapes.event(event_rendered("payment.captured", payment("captured")))
    assert shaped["id"] == "evt_" + HEX and shaped["type"] == "payment_intent.succeeded"
    assert shaped["data"]["object"]["id"] == "pi_" + HEX
    with pytest.raises(ValueError):
        shapes.event(event_rendered("payment.teleported", payment("captured")))
    endpoint = shapes.webhook_endpoint(endpoint_rendered())
    assert endpoint["enabled_events"] == ["payment_intent.succeeded", "payment_intent.canceled"]
    assert "secret" not in endpoint
    assert shapes.webhook_endpoint(endpoint_rendered(["*"], "whsec_x"))["secret"] == "whsec_x"
    assert set(shapes.native_event_types("payment_intent.canceled")) == {
        "payment.voided",
        "payment.canceled",
        "payment.expired",
    }
    assert shapes.native_event_types("*") == ("*",)
    assert shapes.native_event_types("charge.dispute.created") == ()


def test_customer_values():
    shaped = shapes.customer(customer_rendered())
    assert (shaped["id"], shaped["object"], shaped["created"]) == (
        "cus_" + HEX,
        "customer",
        int(CREATED.timestamp()),
    )
    assert (shaped["email"], shaped["name"], shaped["metadata"]) == (
        "ada@shop.example",
        "Ada",
        {"crm": "c_9"},
    )
    assert shaped["livemode"] is False and shaped["test_clock"] is None
    bare = shapes.customer(customer_rendered(None, "clock_" + HEX))
    assert (bare["email"], bare["name"], bare["metadata"]) == (None, None, {})
    assert bare["test_clock"] == "clock_" + HEX
    created = shapes.event(event_rendered("customer.created", customer_rendered()))
    assert created["type"] == "customer.created" and created["data"]["object"] == shaped


# --- errors, through the SDK's own handling -----------------------------------------------------


def row_of(rendered: dict) -> dict:
    """The fields answer_for_authorization reads, from a rendered payment."""
    return {
        "id": rendered["id"],
        "status": rendered["status"],
        "decline_code": rendered["decline_code"],
    }


def answers_error(answer) -> ApiError:
    """A native answer (as given and as the idempotency store replays it) as its ApiError."""
    error = errors.api_error_from_body(answer.status, answer.body, answer.headers)
    assert error is not None
    return error


def stripe_answer(error: ApiError, **kwargs) -> errors.StripeError:
    return errors.stripe_error(error, **kwargs)


def sdk_raises(answer: errors.StripeError) -> stripe.StripeError:
    """What stripe-python raises for this answer (its _interpret_response, V1)."""
    headers = CaseInsensitiveDict({"Request-Id": "req_1", **answer.headers})
    with pytest.raises(stripe.StripeError) as caught:
        _APIRequestor()._interpret_response(answer.encoded(), answer.status, headers, "V1")
    return caught.value


def sdk_retries(answer: errors.StripeError) -> bool:
    """Whether stripe-python would retry this answer (with retries left)."""
    headers = CaseInsensitiveDict(answer.headers)
    client = stripe.RequestsClient()
    return client._should_retry((answer.encoded(), answer.status, headers), None, 0, 2)


def core_error(fn, *args) -> ApiError:
    with pytest.raises(CoreError) as caught:
        fn(*args)
    return ApiError.from_core(caught.value)


def test_a_decline_is_a_card_error_with_stripes_code_and_the_payment_intent():
    declined = payment("declined")
    intent = shapes.payment_intent(declined)
    answer = stripe_answer(
        answers_error(answer_for_authorization(row_of(declined))), payment_intent=intent
    )
    exc = sdk_raises(answer)
    assert type(exc) is stripe.CardError and exc.http_status == 402
    assert (exc.code, exc.error.decline_code) == ("card_declined", "insufficient_funds")
    assert exc.error.charge == "ch_" + HEX
    assert exc.error.payment_intent.id == "pi_" + HEX
    assert exc.error.payment_intent.status == "requires_payment_method"
    assert exc.user_message == "Your card has insufficient funds."
    assert not sdk_retries(answer)


@pytest.mark.parametrize(
    "decline_code,code",
    [
        ("generic_decline", "card_declined"),
        ("lost_card", "card_declined"),
        ("expired_card", "expired_card"),
        ("incorrect_cvc", "incorrect_cvc"),
        ("card_velocity_exceeded", "card_declined"),
        (None, "card_declined"),
    ],
)
def test_each_decline_code(decline_code, code):
    native = ApiError(
        402, "card_error", "card_declined", "declined", decline_code=decline_code, payment_id=PAY
    )
    exc = sdk_raises(stripe_answer(native))
    assert type(exc) is stripe.CardError
    assert (exc.code, exc.error.decline_code) == (code, decline_code)


def test_the_processor_error_is_a_card_error_processing_error():
    failed = payment("failed")
    answer = stripe_answer(
        answers_error(answer_for_authorization(row_of(failed))),
        payment_intent=shapes.payment_intent(failed),
    )
    exc = sdk_raises(answer)
    assert type(exc) is stripe.CardError and exc.code == "processing_error"
    assert exc.error.payment_intent.last_payment_error.code == "processing_error"


def test_card_input_errors_are_card_errors_with_stripes_param():
    today = (2026, 11)
    body = {
        "amount": 1000,
        "currency": "eur",
        "payment_method": {
            "type": "card",
            "card": {"number": "4242424242424241", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        },
    }
    native = core_error(core_ext.validation.validate_payment, body, *today)
    exc = sdk_raises(stripe_answer(native, renames={"payment_method.card": "card"}))
    assert type(exc) is stripe.CardError
    assert (exc.code, exc.param) == ("invalid_number", "card[number]")


def test_a_state_error_is_payment_intent_unexpected_state():
    native = core_error(core_ext.states.capture, "voided", 1000, 0, 0, 0, None)
    assert native.status == 409
    answer = stripe_answer(native, payment_intent=shapes.payment_intent(payment("voided")))
    exc = sdk_raises(answer)
    assert type(exc) is stripe.InvalidRequestError and exc.http_status == 400
    assert exc.code == "payment_intent_unexpected_state"
    assert exc.error.payment_intent.status == "canceled"
    assert answer.headers[errors.SHOULD_RETRY_HEADER] == "false"


def test_idempotency_reuse_is_an_idempotency_error():
    answer = stripe_answer(answers_error(answers.key_reused()))
    exc = sdk_raises(answer)
    assert type(exc) is stripe.IdempotencyError and exc.http_status == 400


def test_a_key_in_use_is_a_409_the_sdk_retries():
    answer = stripe_answer(answers_error(answers.key_in_use()))
    assert answer.status == 409 and answer.body["error"]["code"] == "idempotency_key_in_use"
    assert sdk_retries(answer)  # the first request finishes; the retry gets its answer
    assert type(sdk_raises(answer)) is stripe.APIError  # once retries run out


def test_authentication_rate_limit_and_missing_objects():
    auth = sdk_raises(
        stripe_answer(ApiError(401, "authentication_error", "api_key_invalid", "invalid key"))
    )
    assert type(auth) is stripe.AuthenticationError
    limited = stripe_answer(
        ApiError(429, "rate_limit_error", "rate_limited", "slow down", headers={"Retry-After": "2"})
    )
    assert limited.headers == {"Retry-After": "2"}
    assert type(sdk_raises(limited)) is stripe.RateLimitError
    missing = sdk_raises(stripe_answer(answers.resource_missing("payment", PAY, "intent")))
    assert type(missing) is stripe.InvalidRequestError and missing.http_status == 404
    assert (missing.code, missing.param) == ("resource_missing", "intent")
    no_such = sdk_raises(errors.no_such("payment_intent", "pi_" + HEX, "intent"))
    assert type(no_such) is stripe.InvalidRequestError and no_such.code == "resource_missing"
    assert "pi_" + HEX in str(no_such.user_message)
    assert (
        "4242424242424242"
        not in errors.no_such("payment_intent", "pi_4242424242424242").encoded().decode()
    )


def test_parameter_errors_keep_their_param_in_brackets():
    unknown = core_error(
        core_ext.validation.validate_payment, {"amount": 1, "colour": "red"}, 2026, 11
    )
    exc = sdk_raises(stripe_answer(unknown))
    assert type(exc) is stripe.InvalidRequestError and (exc.code, exc.param) == (
        "parameter_unknown",
        "colour",
    )
    with pytest.raises(CoreError) as caught:
        core_ext.forms.integer("1.5", "amount_to_capture")
    exc = sdk_raises(stripe_answer(ApiError.from_core(caught.value)))
    assert (exc.code, exc.param) == ("parameter_invalid_integer", "amount_to_capture")
    with pytest.raises(CoreError) as caught:
        core_ext.forms.decode(b"metadata[a]=1&metadata[a]=2")
    exc = sdk_raises(stripe_answer(ApiError.from_core(caught.value)))
    assert type(exc) is stripe.InvalidRequestError and exc.param == "metadata[a]"
    assert exc.code is None  # "parameter_invalid" is not in Stripe's vocabulary
    meta = answers.invalid_request("parameter_invalid", "bad", "metadata.cart")
    assert sdk_raises(stripe_answer(meta)).param == "metadata[cart]"
    too_big = sdk_raises(
        stripe_answer(answers.invalid_request("request_too_large", "big", status=413))
    )
    assert type(too_big) is stripe.InvalidRequestError


def test_server_errors_and_which_are_retried():
    overloaded = stripe_answer(
        answers.api_error(503, "gateway_overloaded", "at capacity", headers={"Retry-After": "1"})
    )
    assert type(sdk_raises(overloaded)) is stripe.APIError and overloaded.status == 503
    assert overloaded.headers == {"Retry-After": "1", errors.SHOULD_RETRY_HEADER: "false"}
    assert not sdk_retries(overloaded)
    database = stripe_answer(answers.api_error(503, "database_unavailable", "retry"))
    assert errors.SHOULD_RETRY_HEADER not in database.headers and sdk_retries(database)
    timeout = stripe_answer(answers.api_error(504, "processor_timeout", "unknown", payment_id=PAY))
    assert type(sdk_raises(timeout)) is stripe.APIError and not sdk_retries(timeout)
    other_conflict = stripe_answer(answers.invalid_request("conflict", "x", status=409))
    assert other_conflict.status == 400  # a client's mistake: InvalidRequestError, not retried
    assert errors.should_retry(409, "invalid_request_error", None) is False


def test_every_code_sent_is_in_stripes_vocabulary():
    vocabulary = set(_literals(annotations(stripe.PaymentIntent.LastPaymentError)["code"]))
    sent = set(errors.STRIPE_CODES) | {code for code, _ in shapes.DECLINES.values()}
    assert sent <= vocabulary, sent - vocabulary


def test_client_text_in_an_error_is_scrubbed():
    native = answers.invalid_request(
        "parameter_unknown", "unknown parameter: 4242424242424242", "metadata.4242424242424242"
    )
    text = errors.stripe_error(native).encoded().decode()
    assert "4242424242424242" not in text
