"""The Stripe-compatible tree, ``/stripe/v1/...`` (API.md "Stripe-compatible API").

The official Stripe SDKs work against Kassa by changing only their base address to
``http://HOST:PORT/stripe``. Each handler is thin: decode the form (``core_ext.forms``),
translate the parameters into the native request, call the same service the native
``/v1`` route calls (so one idempotency store, one ledger, one set of events), and render
the native answer in Stripe's shape (``shapes``) or Stripe's error (``errors``).

``ENDPOINTS`` is the one source of truth for what this tree serves: the router registers
exactly its rows, each request's parameters are checked against its row (an unknown one is
``400 parameter_unknown``, which the SDK raises as ``InvalidRequestError``), and
``conformance_markdown`` writes the conformance matrix (docs/stripe-conformance.md and the
README's "Switching from Stripe") from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aiohttp import web

import core_ext
from core_ext.errors import CoreError
from gateway.http.answers import JSON, REPLAYED_HEADER, Answer, ApiError, invalid_request
from gateway.http.appkeys import BILLING, CALLER, MERCHANT_ID, SERVICE, WEBHOOKS
from gateway.http.render import render_payment
from gateway.http.routes import key_from, read_body
from gateway.ids import ID_RANDOM_BYTES
from gateway.stripe import errors, shapes
from gateway.stripe.errors import StripeError

forms = core_ext.forms
validation = core_ext.validation

PREFIX = "/stripe"  # the SDK's base address is http://HOST:PORT/stripe
FORM = "application/x-www-form-urlencoded"
ID_CHARS_MAX = validation.OBJECT_ID_CHARS_MAX  # an id given as a parameter
URL_CHARS_MAX = 2048  # a webhook endpoint's url
DESCRIPTION_CHARS_MAX = validation.DESCRIPTION_CHARS_MAX
EVENT_TYPES_GIVEN_MAX = 50  # enabled_events entries, as the native tree's bound
CARD_FIELD_CHARS_MAX = 32  # a card number with spaces, a cvc: short by nature
HOLDER_NAME_CHARS_MAX = validation.HOLDER_NAME_CHARS_MAX
EMAIL_CHARS_MAX = validation.EMAIL_CHARS_MAX
CUSTOMER_NAME_CHARS_MAX = validation.CUSTOMER_NAME_CHARS_MAX

Form = dict[str, Any]
Handler = Callable[[web.Request, Form], Awaitable[web.Response]]
# The payment a request is about (a PaymentIntent in its path): a state error about it
# carries it as error.payment_intent, as Stripe's does.
PAYMENT_OF_REQUEST = web.RequestKey("stripe_payment_id", str)


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One accepted parameter: ``fields`` are the names accepted inside ``name[...]``."""

    name: str
    meaning: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # Stripe's path, as the router registers it under PREFIX
    summary: str
    handler: Handler
    params: tuple[Param, ...] = ()
    differences: tuple[str, ...] = ()
    # Native parameter names -> the Stripe parameter they came from, for error params.
    renames: Mapping[str, str] | None = None
    # The object it answers (``payment_intent``, ...; a list of them when ``listed``),
    # whose expandable fields (EXPANDERS) ``expand[]`` may name; "": expand is unknown.
    answers: str = ""
    listed: bool = False

    @property
    def expandable(self) -> tuple[str, ...]:
        """The ``expand[]`` paths it takes: its object's fields (``data.`` ones for a list)."""
        prefix = "data." if self.listed else ""
        return tuple(prefix + f for (kind, f) in EXPANDERS if kind == self.answers)

    @property
    def all_params(self) -> tuple[Param, ...]:
        if not self.expandable:
            return self.params
        paths = ", ".join(f"`{path}`" for path in self.expandable)
        return (*self.params, Param("expand", f"any of {paths}"))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.all_params)


class StripeFailure(Exception):
    """A Stripe error answer decided in this module (an unknown id, say)."""

    def __init__(self, answer: StripeError) -> None:
        super().__init__(answer.body["error"].get("message"))
        self.answer = answer


# --- Stripe's test payment methods -------------------------------------------------------------

# Stripe's magic test ids name API.md's sandbox cards: "pm_card_" + name and "tok_" + name.
# Each keeps its Stripe meaning (API.md "Sandbox test cards").
MAGIC_CARDS: dict[str, str] = {
    "visa": "4242424242424242",
    "mastercard": "5555555555554444",
    "amex": "378282246310005",
    "chargeDeclined": "4000000000000002",
    "chargeDeclinedInsufficientFunds": "4000000000009995",
    "chargeDeclinedLostCard": "4000000000009987",
    "chargeDeclinedExpiredCard": "4000000000000069",
    "chargeDeclinedIncorrectCvc": "4000000000000127",
    "chargeDeclinedProcessingError": "4000000000000119",
    "createDispute": "4000000000000259",
}
MAGIC_PAYMENT_METHOD_PREFIX = "pm_card_"
MAGIC_TOKEN_PREFIX = "tok_"
# Stripe's test cards take any future expiry: a fixed one keeps the native request (and so
# an Idempotency-Key's fingerprint) the same whenever it is sent. Within the native
# validation's 50 years ahead.
MAGIC_EXP_MONTH = 12
MAGIC_EXP_YEAR = 2040


def magic_number(method: str) -> str | None:
    """The sandbox number behind a Stripe magic id (``pm_card_visa``, ``tok_visa``)."""
    if method.startswith(MAGIC_PAYMENT_METHOD_PREFIX):
        return MAGIC_CARDS.get(method[len(MAGIC_PAYMENT_METHOD_PREFIX) :])
    if method.startswith(MAGIC_TOKEN_PREFIX):
        return MAGIC_CARDS.get(method[len(MAGIC_TOKEN_PREFIX) :])
    return None


def _magic_card(number: str) -> dict[str, Any]:
    cvc = "1234" if validation.card_brand(number) == "amex" else "123"
    return {"number": number, "exp_month": MAGIC_EXP_MONTH, "exp_year": MAGIC_EXP_YEAR, "cvc": cvc}


def _native_method(value: object, param: str = "payment_method") -> dict[str, Any] | None:
    """A Stripe ``payment_method`` parameter as the native one: a magic id is its sandbox
    card inline (no token is written: the hot path stays one payment), ``pm_X`` the token
    ``tok_X``; anything else is Stripe's 404."""
    method = forms.string(value, param, ID_CHARS_MAX)
    if method is None:
        return None
    number = magic_number(method)
    if number is not None:
        return {"type": "card", "card": _magic_card(number)}
    token = shapes.token_id_from_payment_method(method)
    if token is None:
        raise StripeFailure(errors.no_such("PaymentMethod", method, param))
    return {"type": "token", "token": token}


def _pm_of(row: asyncpg.Record) -> str | None:
    """The PaymentMethod a payment row was confirmed with, when it names a token."""
    token = row["token_id"]
    return None if token is None else shapes.payment_method_id(token)


# --- plumbing -------------------------------------------------------------------------------


async def _params(request: web.Request) -> Form:
    """The request's parameters: the query string of a GET or DELETE, the form body of a
    POST (which must be form-encoded, as the SDK sends it)."""
    decoded: Form
    if request.method != "POST":
        decoded = forms.decode(request.rel_url.raw_query_string)
        return decoded
    if request.body_exists and request.content_type != FORM:
        raise invalid_request(
            "unsupported_media_type",
            f"request bodies under /stripe must be form-encoded: send 'Content-Type: {FORM}'",
            status=415,
        )
    decoded = forms.decode(await read_body(request))
    return decoded


def _check(params: Form, spec: tuple[Param, ...], names: tuple[str, ...]) -> None:
    """Refuse a parameter the endpoint's row does not list (``names``: its parameters'),
    at the top and one level in."""
    forms.reject_unknown(params, names)
    for p in spec:
        if p.fields and p.name in params:
            value = forms.object_(params[p.name], p.name)
            if value is not None:
                forms.reject_unknown(value, p.fields, p.name)


def _ok(shaped: object, replayed: bool = False) -> web.Response:
    response = web.Response(body=orjson.dumps(shaped), content_type=JSON)
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


def _intent_of(row: asyncpg.Record) -> shapes.JSON:
    """A payment row as the PaymentIntent every route shows (its PaymentMethod named)."""
    return shapes.payment_intent(render_payment(row), payment_method=_pm_of(row))


async def _intent_or_none(request: web.Request, payment_id: str) -> dict[str, Any] | None:
    try:
        row = await request.app[SERVICE].payment_row(request[MERCHANT_ID], payment_id)
    except ApiError:
        return None
    return _intent_of(row)


async def _failure(
    request: web.Request, error: ApiError, renames: Mapping[str, str] | None
) -> web.Response:
    """Stripe's answer for a native error; the PaymentIntent it is about filled in
    (``error.payment_intent``) for declines, and for state errors on a named intent."""
    payment_id = error.payment_id
    if payment_id is None and error.code == "payment_state_invalid":
        payment_id = request.get(PAYMENT_OF_REQUEST)
    intent = None if payment_id is None else await _intent_or_none(request, payment_id)
    return errors.stripe_error(error, payment_intent=intent, renames=renames).response()


async def _from_answer(
    request: web.Request,
    answer: Answer,
    shape: Callable[[dict[str, Any]], dict[str, Any]],
    renames: Mapping[str, str] | None,
) -> web.Response:
    """A native service's answer (given or replayed) in Stripe's shape."""
    replayed = answer.headers.get(REPLAYED_HEADER) == "true"
    if answer.status < 300:
        return _ok(shape(orjson.loads(answer.body)), replayed)
    error = errors.api_error_from_body(answer.status, answer.body, answer.headers)
    if error is None:  # every native non-2xx answer is API.md's error body
        raise RuntimeError(f"a native answer {answer.status} without an error body")
    return await _failure(request, error, renames)


# --- expand[] --------------------------------------------------------------------------------


async def _expanded_charge(request: web.Request, charge_id: str) -> shapes.JSON:
    payment_id = shapes.payment_id_from_charge(charge_id)
    if payment_id is None:  # ids we shaped ourselves: cannot be
        raise RuntimeError(f"an expandable charge id {charge_id!r} of no payment")
    row = await request.app[SERVICE].payment_row(request[MERCHANT_ID], payment_id)
    return shapes.charge(render_payment(row), payment_method=_pm_of(row))


async def _expanded_intent(request: web.Request, intent_id: str) -> shapes.JSON:
    payment_id = shapes.payment_id_from_intent(intent_id)
    if payment_id is None:
        raise RuntimeError(f"an expandable intent id {intent_id!r} of no payment")
    return _intent_of(await request.app[SERVICE].payment_row(request[MERCHANT_ID], payment_id))


async def _expanded_payment_method(request: web.Request, method_id: str) -> shapes.JSON:
    token_id = shapes.token_id_from_payment_method(method_id)
    if token_id is None and magic_number(method_id) is None:
        raise RuntimeError(f"an expandable payment method id {method_id!r} of no token")
    return await _payment_method_of(request, method_id, token_id)


# Which field of which object ``expand[]`` may turn from an id into that object, and how.
EXPANDERS: dict[tuple[str, str], Callable[[web.Request, str], Awaitable[shapes.JSON]]] = {
    ("payment_intent", "latest_charge"): _expanded_charge,
    ("payment_intent", "payment_method"): _expanded_payment_method,
    ("charge", "payment_intent"): _expanded_intent,
    ("charge", "payment_method"): _expanded_payment_method,
    ("refund", "charge"): _expanded_charge,
    ("refund", "payment_intent"): _expanded_intent,
}


def _expansions(endpoint: Endpoint, params: Form) -> tuple[str, ...]:
    """The endpoint's ``expand[]`` paths, each one it can expand, or Stripe's 400."""
    if "expand" not in params:
        return ()
    paths = forms.expand(params["expand"])
    allowed = endpoint.expandable
    for path in paths:
        if path not in allowed:
            instead = f"data.{path}" if f"data.{path}" in allowed else None
            raise StripeFailure(errors.not_expandable(path, instead))
    return tuple(dict.fromkeys(paths))  # each once, in the order given


async def _expand(request: web.Request, shaped: shapes.JSON, paths: tuple[str, ...]) -> None:
    """Replace the ids at ``paths`` (checked: ``field`` or ``data.field``) in ``shaped``
    by their objects; a null stays null."""
    for path in paths:
        listed, _, field = path.rpartition(".")
        objects = shaped["data"] if listed else [shaped]
        for obj in objects:
            value = obj.get(field)
            if isinstance(value, str):
                obj[field] = await EXPANDERS[(obj["object"], field)](request, value)


def _serve(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
    spec, names = endpoint.all_params, endpoint.names  # once, not per request

    async def serve(request: web.Request) -> web.Response:
        try:
            params = await _params(request)
            _check(params, spec, names)
            paths = _expansions(endpoint, params)
            response = await endpoint.handler(request, params)
            if paths and response.status == 200 and response.body is not None:
                shaped = orjson.loads(response.body)  # type: ignore[arg-type]
                await _expand(request, shaped, paths)
                response = _ok(shaped, response.headers.get(REPLAYED_HEADER) == "true")
            return response
        except StripeFailure as exc:
            return exc.answer.response()
        except CoreError as exc:
            error = ApiError.from_core(exc)
        except ApiError as exc:
            error = exc
        return await _failure(request, error, endpoint.renames)

    return serve


def _path_id(
    request: web.Request, name: str, kind: str, native: Callable[[object], str | None]
) -> str:
    given = request.match_info[name]
    found = native(given)
    if found is None:
        raise StripeFailure(errors.no_such(kind, given, name))
    return found


def _intent_path(request: web.Request) -> str:
    payment_id = _path_id(request, "intent", "payment_intent", shapes.payment_id_from_intent)
    request[PAYMENT_OF_REQUEST] = payment_id
    return payment_id


def _same(prefix: str) -> Callable[[object], str | None]:
    """Ids Stripe and Kassa share (``re_``, ``we_``, ``evt_``): the id itself, if ours."""

    def native(given: object) -> str | None:
        if isinstance(given, str) and validation.object_id_valid(given, prefix):
            return given
        return None

    return native


def _page(params: Form) -> tuple[int, str | None]:
    limit = forms.integer(
        params.get("limit"), "limit", minimum=1, maximum=validation.LIST_LIMIT_MAX
    )
    after = forms.string(params.get("starting_after"), "starting_after", ID_CHARS_MAX)
    return (validation.LIST_LIMIT_DEFAULT if limit is None else limit), after


def _native_page(params: Form, kind: str, native: Callable[[object], str | None]) -> dict[str, str]:
    """A Stripe list's ``limit`` and ``starting_after`` as a native list's query."""
    limit, after = _page(params)
    query = {"limit": str(limit)}
    cursor = _after(after, kind, native)
    if cursor is not None:
        query["starting_after"] = cursor
    return query


def _after(after: str | None, kind: str, native: Callable[[object], str | None]) -> str | None:
    if after is None:
        return None
    found = native(after)
    if found is None:
        raise StripeFailure(errors.no_such(kind, after, "starting_after"))
    return found


def _metadata(params: Form) -> dict[str, str] | None:
    given = forms.string_map(
        params.get("metadata"),
        "metadata",
        validation.METADATA_KEYS_MAX,
        validation.METADATA_KEY_CHARS_MAX,
        validation.METADATA_VALUE_CHARS_MAX,
    )
    if given is None:
        return None
    # On a create, an unset key ("metadata[k]=") is simply not set.
    return {k: v for k, v in given.items() if v is not None}


# --- payment intents ---------------------------------------------------------------------------

CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
INTENT_RENAMES = {
    "capture": "capture_method",
    "customer.email": "receipt_email",
    "payment_method.token": "payment_method",
    "payment_method": "payment_method",
}
CAPTURE_RENAMES = {"amount": "amount_to_capture"}


def _intent_shape(payment_method: str | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda payment: shapes.payment_intent(payment, payment_method=payment_method)


async def create_intent(request: web.Request, params: Form) -> web.Response:
    native: dict[str, Any] = {
        "amount": forms.amount(params.get("amount"), "amount", True),
        "currency": forms.string(params.get("currency"), "currency", 3, True),
    }
    capture = forms.enum(params.get("capture_method"), "capture_method", CAPTURE_METHODS)
    native["capture"] = "manual" if capture == "manual" else "automatic"
    confirm = bool(forms.boolean(params.get("confirm"), "confirm"))  # Stripe: false
    native["confirm"] = confirm
    pm = forms.string(params.get("payment_method"), "payment_method", ID_CHARS_MAX)
    method = _native_method(pm)
    if method is not None:
        native["payment_method"] = method
    elif confirm:
        raise invalid_request(
            "parameter_missing",
            "confirm=true needs a payment_method (this gateway takes cards only)",
            "payment_method",
        )
    _card_only(params)
    customer = forms.string(params.get("customer"), "customer", ID_CHARS_MAX)
    off_session = forms.boolean(params.get("off_session"), "off_session")
    if customer is not None:
        # A saved customer pays with one of its saved cards (native "customer": "cus_").
        if not customer.startswith("cus_"):
            raise StripeFailure(errors.no_such("customer", customer, "customer"))
        native["customer"] = customer
    if off_session is not None:
        native["off_session"] = off_session
    description = forms.string(params.get("description"), "description", DESCRIPTION_CHARS_MAX)
    if description is not None:
        native["description"] = description
    metadata = _metadata(params)
    if metadata:
        native["metadata"] = metadata
    email = forms.string(params.get("receipt_email"), "receipt_email", validation.EMAIL_CHARS_MAX)
    if email is not None and customer is not None:
        raise invalid_request(
            "parameter_invalid",
            "receipt_email cannot go with customer here: the saved customer's email is used",
            "receipt_email",
        )
    if email is not None:
        native["customer"] = {"email": email}
    answer = await request.app[SERVICE].authorize(
        request[MERCHANT_ID], native, key_from(request), request[CALLER].risk
    )
    return await _from_answer(request, answer, _intent_shape(pm), INTENT_RENAMES)


def _card_only(params: Form) -> None:
    types = params.get("payment_method_types")
    if types is None:
        return
    if type(types) is not list or any(t != "card" for t in types):
        raise invalid_request(
            "parameter_invalid",
            "payment_method_types: this gateway takes cards only: ['card']",
            "payment_method_types",
        )


async def confirm_intent(request: web.Request, params: Form) -> web.Response:
    payment_id = _intent_path(request)
    pm = forms.string(params.get("payment_method"), "payment_method", ID_CHARS_MAX)
    method = _native_method(pm)
    native = {} if method is None else {"payment_method": method}
    service = request.app[SERVICE]
    merchant_id = request[MERCHANT_ID]
    answer = await service.confirm(
        merchant_id, payment_id, native, key_from(request), request[CALLER].risk
    )
    if pm is None and answer.status < 300:  # confirmed with the method it had: name it
        pm = _pm_of(await service.payment_row(merchant_id, payment_id))
    return await _from_answer(request, answer, _intent_shape(pm), INTENT_RENAMES)


async def capture_intent(request: web.Request, params: Form) -> web.Response:
    payment_id = _intent_path(request)
    amount = forms.amount(params.get("amount_to_capture"), "amount_to_capture")
    native = {} if amount is None else {"amount": amount}
    answer = await request.app[SERVICE].capture(
        request[MERCHANT_ID], payment_id, native, key_from(request)
    )
    return await _from_answer(request, answer, _intent_shape(None), CAPTURE_RENAMES)


# A PaymentIntent that holds an authorization is canceled by voiding it; a voided one is
# still sent to void, so a retry of that cancel with its key replays the void's answer.
CANCEL_BY_VOID = ("authorized", "voided")


async def cancel_intent(request: web.Request, params: Form) -> web.Response:
    payment_id = _intent_path(request)
    service = request.app[SERVICE]
    merchant_id = request[MERCHANT_ID]
    row = await service.payment_row(merchant_id, payment_id)
    change = service.void if row["status"] in CANCEL_BY_VOID else service.cancel
    answer = await change(merchant_id, payment_id, {}, key_from(request))
    return await _from_answer(request, answer, _intent_shape(_pm_of(row)), None)


async def retrieve_intent(request: web.Request, params: Form) -> web.Response:
    payment_id = _intent_path(request)
    row = await request.app[SERVICE].payment_row(request[MERCHANT_ID], payment_id)
    return _ok(_intent_of(row))


async def list_intents(request: web.Request, params: Form) -> web.Response:
    native = _native_page(params, "payment_intent", shapes.payment_id_from_intent)
    rows, has_more = await request.app[SERVICE].list_payment_rows(request[MERCHANT_ID], native)
    data = [_intent_of(r) for r in rows]
    return _ok(shapes.stripe_list(data, has_more, "/v1/payment_intents"))


# --- payment methods -------------------------------------------------------------------------

CARD_FIELDS = ("number", "exp_month", "exp_year", "cvc", "token")
METHOD_RENAMES = {"card.holder_name": "billing_details[name]"}


async def create_payment_method(request: web.Request, params: Form) -> web.Response:
    forms.enum(params.get("type"), "type", ("card",), required=True)
    card = forms.object_(params.get("card"), "card", required=True)
    token = forms.string(card.get("token"), "card[token]", ID_CHARS_MAX)
    if token is not None:
        number = magic_number(token) if token.startswith(MAGIC_TOKEN_PREFIX) else None
        if number is None or len(card) > 1:
            raise StripeFailure(errors.no_such("token", token, "card[token]"))
        native_card = _magic_card(number)
    else:
        native_card = {
            "number": forms.string(card.get("number"), "card[number]", CARD_FIELD_CHARS_MAX, True),
            "exp_month": forms.integer(card.get("exp_month"), "card[exp_month]", True),
            "exp_year": forms.integer(card.get("exp_year"), "card[exp_year]", True),
        }
        cvc = forms.string(card.get("cvc"), "card[cvc]", CARD_FIELD_CHARS_MAX)
        if cvc is not None:
            native_card["cvc"] = cvc
    billing = forms.object_(params.get("billing_details"), "billing_details")
    if billing is not None:
        name = forms.string(billing.get("name"), "billing_details[name]", HOLDER_NAME_CHARS_MAX)
        if name is not None:
            native_card["holder_name"] = name
    service = request.app[SERVICE]
    merchant_id = request[MERCHANT_ID]
    answer = await service.create_token(merchant_id, {"card": native_card}, key_from(request))
    if answer.status >= 300:
        return await _from_answer(request, answer, dict, METHOD_RENAMES)
    # The token's own creation time (the native answer does not carry it), so a replay
    # and a later retrieve show the same PaymentMethod.
    token, created = await service.get_token(merchant_id, orjson.loads(answer.body)["id"])
    replayed = answer.headers.get(REPLAYED_HEADER) == "true"
    return _ok(shapes.payment_method(token, created=created), replayed)


async def retrieve_payment_method(request: web.Request, params: Form) -> web.Response:
    given = request.match_info["method"]
    token_id = None
    if magic_number(given) is None:
        token_id = _path_id(request, "method", "PaymentMethod", shapes.token_id_from_payment_method)
    return _ok(await _payment_method_of(request, given, token_id))


async def _payment_method_of(
    request: web.Request, method_id: str, token_id: str | None
) -> shapes.JSON:
    """The PaymentMethod ``method_id`` as retrieve and expand[] show it: a magic id's card
    (``token_id`` None), else token ``token_id``'s, naming the customer it is saved to."""
    service, merchant_id = request.app[SERVICE], request[MERCHANT_ID]
    number = magic_number(method_id)
    if number is not None:
        return _magic_payment_method(method_id, number, service.fingerprint(merchant_id, number))
    if token_id is None:
        raise RuntimeError(f"PaymentMethod {method_id!r} is neither magic nor a token's")
    token, created = await service.get_token(merchant_id, token_id)
    customer = await request.app[BILLING].customer_of_token(merchant_id, token_id)
    return shapes.payment_method(token, created=created, customer=customer)


ATTACH_RENAMES = {"token": "payment_method"}


async def attach_payment_method(request: web.Request, params: Form) -> web.Response:
    """Save a card to a customer (native ``POST /v1/customers/{id}/payment_methods``). A
    magic id (``pm_card_visa``) attaches a new card of its number, as Stripe's test mode
    does: its token is made under a key derived from the request's, so a retry attaches
    the same one."""
    customer = forms.string(params.get("customer"), "customer", ID_CHARS_MAX, True)
    if not customer.startswith("cus_"):
        raise StripeFailure(errors.no_such("customer", customer, "customer"))
    service, merchant_id, key = request.app[SERVICE], request[MERCHANT_ID], key_from(request)
    number = magic_number(request.match_info["method"])
    if number is not None:
        card_key = None if key is None else "stripe-attach-card:" + _digest(key)
        made = await service.create_token(merchant_id, {"card": _magic_card(number)}, card_key)
        if made.status >= 300:
            return await _from_answer(request, made, dict, METHOD_RENAMES)
        token_id = orjson.loads(made.body)["id"]
    else:
        token_id = _path_id(request, "method", "PaymentMethod", shapes.token_id_from_payment_method)
    answer = await request.app[BILLING].attach_payment_method(
        merchant_id, customer, {"token": token_id}, key
    )
    if answer.status >= 300:
        return await _from_answer(request, answer, dict, ATTACH_RENAMES)
    token, created = await service.get_token(merchant_id, token_id)
    replayed = answer.headers.get(REPLAYED_HEADER) == "true"
    return _ok(shapes.payment_method(token, created=created, customer=customer), replayed)


async def detach_payment_method(request: web.Request, params: Form) -> web.Response:
    """Remove a saved card from its customer; the PaymentMethod, now of no customer."""
    token_id = _path_id(request, "method", "PaymentMethod", shapes.token_id_from_payment_method)
    merchant_id = request[MERCHANT_ID]
    answer = await request.app[BILLING].detach_token(merchant_id, token_id, key_from(request))
    if answer.status >= 300:
        return await _from_answer(request, answer, dict, ATTACH_RENAMES)
    token, created = await request.app[SERVICE].get_token(merchant_id, token_id)
    replayed = answer.headers.get(REPLAYED_HEADER) == "true"
    return _ok(shapes.payment_method(token, created=created), replayed)


async def list_customer_payment_methods(request: web.Request, params: Form) -> web.Response:
    customer_id = _customer_path(request)
    forms.enum(params.get("type"), "type", ("card",))
    saved, more = await request.app[BILLING].saved_cards(request[MERCHANT_ID], customer_id)
    data = [
        shapes.payment_method(token, created=created, customer=customer_id)
        for token, created in saved
    ]
    return _ok(shapes.stripe_list(data, more, f"/v1/customers/{customer_id}/payment_methods"))


def _digest(key: str) -> str:
    """A fixed-length name derived from an Idempotency-Key (for a second native request
    one Stripe request makes): whatever the key's length, it fits a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def _magic_payment_method(method: str, number: str, fingerprint: str) -> dict[str, Any]:
    """A magic id read back: its card, as a PaymentMethod of that id."""
    card = {
        "brand": validation.card_brand(number),
        "last4": number[-4:],
        "exp_month": MAGIC_EXP_MONTH,
        "exp_year": MAGIC_EXP_YEAR,
        "fingerprint": fingerprint,
    }
    # shapes.payment_method names a PaymentMethod after its token: shape it under a
    # token id of the right form, then give it the magic id it is read as.
    placeholder = "tok_" + "0" * (2 * ID_RANDOM_BYTES)
    return {**shapes.payment_method({"id": placeholder, "card": card}, created=0), "id": method}


# --- refunds and charges ---------------------------------------------------------------------


def _refunded_payment(params: Form) -> str:
    intent = forms.string(params.get("payment_intent"), "payment_intent", ID_CHARS_MAX)
    charge = forms.string(params.get("charge"), "charge", ID_CHARS_MAX)
    if intent is None and charge is None:
        raise invalid_request(
            "parameter_missing", "one of payment_intent or charge is required", "payment_intent"
        )
    payment_id = None
    if intent is not None:
        payment_id = shapes.payment_id_from_intent(intent)
        if payment_id is None:
            raise StripeFailure(errors.no_such("payment_intent", intent, "payment_intent"))
    if charge is not None:
        of_charge = shapes.payment_id_from_charge(charge)
        if of_charge is None or (payment_id is not None and of_charge != payment_id):
            raise StripeFailure(errors.no_such("charge", charge, "charge"))
        return of_charge
    if payment_id is None:  # cannot be: without a charge, the intent was given and mapped
        raise RuntimeError("no payment for a refund with neither intent nor charge")
    return payment_id


async def create_refund(request: web.Request, params: Form) -> web.Response:
    payment_id = _refunded_payment(params)
    request[PAYMENT_OF_REQUEST] = payment_id
    native: dict[str, Any] = {}
    amount = forms.amount(params.get("amount"), "amount")
    if amount is not None:
        native["amount"] = amount
    reason = forms.enum(params.get("reason"), "reason", shapes.REFUND_REASONS)
    if reason is not None:
        native["reason"] = reason
    answer = await request.app[SERVICE].refund(
        request[MERCHANT_ID], payment_id, native, key_from(request)
    )
    return await _from_answer(request, answer, shapes.refund, None)


async def retrieve_refund(request: web.Request, params: Form) -> web.Response:
    refund_id = _path_id(request, "refund", "refund", _same("re_"))
    return _ok(
        shapes.refund(await request.app[SERVICE].get_refund(request[MERCHANT_ID], refund_id))
    )


async def list_refunds(request: web.Request, params: Form) -> web.Response:
    limit, after = _page(params)
    payment_id = None
    if params.get("payment_intent") is not None or params.get("charge") is not None:
        payment_id = _refunded_payment(params)
    cursor = _after(after, "refund", _same("re_"))
    refunds, has_more = await request.app[SERVICE].list_refunds(
        request[MERCHANT_ID], payment_id, limit, cursor
    )
    return _ok(shapes.stripe_list([shapes.refund(r) for r in refunds], has_more, "/v1/refunds"))


async def retrieve_charge(request: web.Request, params: Form) -> web.Response:
    given = request.match_info["charge"]
    payment_id = _path_id(request, "charge", "charge", shapes.payment_id_from_charge)
    try:
        row = await request.app[SERVICE].payment_row(request[MERCHANT_ID], payment_id)
    except ApiError as exc:
        if exc.code != "resource_missing":
            raise
        raise StripeFailure(errors.no_such("charge", given, "charge")) from None
    payment = render_payment(row)
    if not shapes.has_charge(payment):  # never sent to the processor: no charge exists
        raise StripeFailure(errors.no_such("charge", given, "charge"))
    return _ok(shapes.charge(payment, payment_method=_pm_of(row)))


# --- customers -------------------------------------------------------------------------------


def _customer_path(request: web.Request) -> str:
    return _path_id(request, "customer", "customer", _same("cus_"))


def _customer_fields(params: Form) -> dict[str, Any]:
    """``email`` and ``name`` as given; an empty one (``email=``) clears it, as Stripe's."""
    native: dict[str, Any] = {}
    if "email" in params:
        native["email"] = forms.string(params["email"], "email", EMAIL_CHARS_MAX)
    if "name" in params:
        native["name"] = forms.string(params["name"], "name", CUSTOMER_NAME_CHARS_MAX)
    return native


async def create_customer(request: web.Request, params: Form) -> web.Response:
    native = _customer_fields(params)
    metadata = _metadata(params)
    if metadata:
        native["metadata"] = metadata
    clock = forms.string(params.get("test_clock"), "test_clock", ID_CHARS_MAX)
    if clock is not None:
        native["test_clock"] = clock
    answer = await request.app[BILLING].create_customer(
        request[MERCHANT_ID], native, key_from(request)
    )
    return await _from_answer(request, answer, shapes.customer, None)


async def retrieve_customer(request: web.Request, params: Form) -> web.Response:
    rendered = await request.app[BILLING].get_customer(
        request[MERCHANT_ID], _customer_path(request)
    )
    return _ok(shapes.customer(rendered))


async def update_customer(request: web.Request, params: Form) -> web.Response:
    customer_id = _customer_path(request)
    native = _customer_fields(params)
    billing = request.app[BILLING]
    merchant_id = request[MERCHANT_ID]
    patch = None
    if "metadata" in params:
        given = forms.string_map(
            params["metadata"],
            "metadata",
            validation.METADATA_KEYS_MAX,
            validation.METADATA_KEY_CHARS_MAX,
            validation.METADATA_VALUE_CHARS_MAX,
        )
        if given is None:  # "metadata=" clears every key
            native["metadata"] = {}
        else:  # Stripe merges the keys given (None: removed), under the customer's lock
            patch = given
    answer = await billing.update_customer(
        merchant_id, customer_id, native, key_from(request), metadata_patch=patch
    )
    return await _from_answer(request, answer, shapes.customer, None)


async def delete_customer(request: web.Request, params: Form) -> web.Response:
    deleted = await request.app[BILLING].delete_customer(
        request[MERCHANT_ID], _customer_path(request)
    )
    return _ok(deleted)  # {"id", "object": "customer", "deleted": true}: Stripe's


async def list_customers(request: web.Request, params: Form) -> web.Response:
    native = _native_page(params, "customer", _same("cus_"))
    email = forms.string(params.get("email"), "email", EMAIL_CHARS_MAX)
    if email is not None:
        native["email"] = email
    page = await request.app[BILLING].list_customers(request[MERCHANT_ID], native)
    data = [shapes.customer(c) for c in page["data"]]
    return _ok(shapes.stripe_list(data, page["has_more"], "/v1/customers"))


# --- webhook endpoints and events --------------------------------------------------------------


def _native_event_types(value: object) -> list[str]:
    if type(value) is not list or not 1 <= len(value) <= EVENT_TYPES_GIVEN_MAX:
        raise invalid_request(
            "parameter_invalid",
            f"enabled_events must be 1 to {EVENT_TYPES_GIVEN_MAX} event types, or ['*']",
            "enabled_events",
        )
    natives: list[str] = []
    for i, given in enumerate(value):
        here = f"enabled_events[{i}]"
        stripe_type = forms.string(given, here, ID_CHARS_MAX, True)
        found = shapes.native_event_types(stripe_type)
        if not found:
            raise invalid_request(
                "parameter_invalid",
                f"{here}: not an event type this gateway sends "
                f"(one of: {', '.join(sorted(set(shapes.EVENT_TYPES.values())))}, or *)",
                here,
            )
        natives.extend(t for t in found if t not in natives)
    return [shapes.WILDCARD] if shapes.WILDCARD in natives else natives


def _endpoint_fields(params: Form, creating: bool) -> dict[str, Any]:
    native: dict[str, Any] = {}
    url = forms.string(params.get("url"), "url", URL_CHARS_MAX, creating)
    if url is not None:
        native["url"] = url
    if creating or "enabled_events" in params:
        native["enabled_events"] = _native_event_types(params.get("enabled_events"))
    if "description" in params:  # "description=" clears it
        native["description"] = forms.string(
            params["description"], "description", DESCRIPTION_CHARS_MAX
        )
    return native


async def create_webhook_endpoint(request: web.Request, params: Form) -> web.Response:
    # Sent Stripe Events, so a shop's handlers written for Stripe read them as they are.
    answer = await request.app[WEBHOOKS].create_endpoint(
        request[MERCHANT_ID], _endpoint_fields(params, True), key_from(request), "stripe"
    )
    return await _from_answer(request, answer, shapes.webhook_endpoint, None)


def _endpoint_path(request: web.Request) -> str:
    return _path_id(request, "endpoint", "webhook_endpoint", _same("we_"))


async def retrieve_webhook_endpoint(request: web.Request, params: Form) -> web.Response:
    rendered = await request.app[WEBHOOKS].get_endpoint(
        request[MERCHANT_ID], _endpoint_path(request)
    )
    return _ok(shapes.webhook_endpoint(rendered))


async def update_webhook_endpoint(request: web.Request, params: Form) -> web.Response:
    endpoint_id = _endpoint_path(request)
    native = _endpoint_fields(params, False)
    disabled = forms.boolean(params.get("disabled"), "disabled")
    if disabled is not None:
        native["status"] = "disabled" if disabled else "enabled"
    answer = await request.app[WEBHOOKS].update_endpoint(
        request[MERCHANT_ID], endpoint_id, native, key_from(request)
    )
    return await _from_answer(request, answer, shapes.webhook_endpoint, None)


async def delete_webhook_endpoint(request: web.Request, params: Form) -> web.Response:
    deleted = await request.app[WEBHOOKS].delete_endpoint(
        request[MERCHANT_ID], _endpoint_path(request)
    )
    return _ok(deleted)  # {"id", "object": "webhook_endpoint", "deleted": true}: Stripe's


async def list_webhook_endpoints(request: web.Request, params: Form) -> web.Response:
    native = _native_page(params, "webhook_endpoint", _same("we_"))
    page = await request.app[WEBHOOKS].list_endpoints(request[MERCHANT_ID], native)
    data = [shapes.webhook_endpoint(e) for e in page["data"]]
    return _ok(shapes.stripe_list(data, page["has_more"], "/v1/webhook_endpoints"))


async def retrieve_event(request: web.Request, params: Form) -> web.Response:
    event_id = _path_id(request, "event", "event", _same("evt_"))
    payload = await request.app[WEBHOOKS].get_event(request[MERCHANT_ID], event_id)
    try:
        return _ok(shapes.event(orjson.loads(payload)))
    except ValueError:  # a type with no Stripe twin is not shown in this tree
        raise StripeFailure(errors.no_such("event", event_id)) from None


async def list_events(request: web.Request, params: Form) -> web.Response:
    limit, after = _page(params)
    stripe_type = forms.string(params.get("type"), "type", ID_CHARS_MAX)
    natives: tuple[str, ...] | None = None
    if stripe_type is not None and stripe_type != shapes.WILDCARD:
        natives = shapes.native_event_types(stripe_type)
    cursor = _after(after, "event", _same("evt_"))
    if natives == ():  # a type this gateway never sends: nothing to read
        return _ok(shapes.stripe_list([], False, "/v1/events"))
    payloads, has_more = await request.app[WEBHOOKS].list_events_of_types(
        request[MERCHANT_ID], natives, limit, cursor
    )
    data = []
    for payload in payloads:
        try:
            data.append(shapes.event(orjson.loads(payload)))
        except ValueError:  # no Stripe twin: skipped (every native type has one today)
            continue
    return _ok(shapes.stripe_list(data, has_more, "/v1/events"))


# --- the table (the one source of truth) ------------------------------------------------------

_PAGE = (
    Param("limit", f"1 to {validation.LIST_LIMIT_MAX}, default {validation.LIST_LIMIT_DEFAULT}"),
    Param("starting_after", "the id of the last object of the previous page"),
)
_LIST_DIFFERENCES = ("`ending_before` and `created` filters are not supported",)
_CUSTOMER_PARAMS = (
    Param("email", f"up to {EMAIL_CHARS_MAX} characters; empty clears it"),
    Param("name", f"up to {CUSTOMER_NAME_CHARS_MAX} characters; empty clears it"),
    Param("metadata", "up to 20 keys"),
)
_CUSTOMER_DIFFERENCES = (
    "no `description`, `phone`, `address`, `shipping`, `payment_method`, "
    "`invoice_settings`, `tax`, `balance` parameters; cards are saved by attaching "
    "PaymentMethods (`POST /v1/payment_methods/{method}/attach`)",
    "the Customer's `address`, `description`, `phone`, `shipping` read null, `balance` 0, "
    "`tax_exempt` `none`; it has no `delinquent` or `invoice_settings`",
)

ENDPOINTS: tuple[Endpoint, ...] = (
    # payment methods
    Endpoint(
        "POST",
        "/v1/payment_methods",
        "Create a PaymentMethod (a card, kept as a Kassa token `tok_X` = `pm_X`)",
        create_payment_method,
        (
            Param("type", "`card` only"),
            Param(
                "card",
                "`card[number]`, `card[exp_month]`, `card[exp_year]`, `card[cvc]`; or "
                "`card[token]` with a magic `tok_` id",
                CARD_FIELDS,
            ),
            Param("billing_details", "`billing_details[name]` (the card holder)", ("name",)),
        ),
        (
            "card input errors (bad number, expiry, cvc) are `402 card_error`, as Stripe's",
            "no `metadata`, `customer` or `billing_details` other than `name`",
        ),
        METHOD_RENAMES,
    ),
    Endpoint(
        "GET",
        "/v1/payment_methods/{method}",
        "Retrieve a PaymentMethod (also a magic id such as `pm_card_visa`)",
        retrieve_payment_method,
        differences=("a magic id reads back with `created` 0",),
    ),
    Endpoint(
        "POST",
        "/v1/payment_methods/{method}/attach",
        "Save a PaymentMethod to a customer, for later payments with it (also off-session)",
        attach_payment_method,
        (Param("customer", "a `cus_` id"),),
        (
            "a magic id (`pm_card_visa`) attaches a new PaymentMethod of its card, as in "
            "Stripe's test mode",
            "a card is saved to one customer (another: `400`); the first saved is the "
            "customer's default for Kassa's subscriptions (no `invoice_settings` here)",
        ),
        ATTACH_RENAMES,
    ),
    Endpoint(
        "POST",
        "/v1/payment_methods/{method}/detach",
        "Remove a PaymentMethod from its customer",
        detach_payment_method,
        differences=("one saved to no customer is `400 parameter_invalid`",),
        renames=ATTACH_RENAMES,
    ),
    # payment intents
    Endpoint(
        "POST",
        "/v1/payment_intents",
        "Create a PaymentIntent (a Kassa payment `pay_X` = `pi_X`), confirmed or not",
        create_intent,
        (
            Param("amount", "integer minor units, 1 to 99999999"),
            Param("currency", "ISO 4217, any case"),
            Param(
                "capture_method",
                "`automatic` (default), `automatic_async` (as automatic), `manual`",
            ),
            Param("confirm", "`true` sends it to the processor now; default `false`"),
            Param("payment_method", "`pm_X`, or a magic id (`pm_card_visa`, `tok_visa`, ...)"),
            Param("payment_method_types", "`[card]` only"),
            Param("description", f"up to {DESCRIPTION_CHARS_MAX} characters"),
            Param("metadata", "up to 20 keys"),
            Param(
                "receipt_email",
                "kept as the payment's customer email (no receipt is sent; reads back null)",
            ),
            Param("customer", "a `cus_` id: pays with one of its saved cards"),
            Param("off_session", "`true`: the buyer is absent (needs `customer`, `confirm`)"),
        ),
        (
            "no `setup_future_usage`, `return_url`, `automatic_payment_methods` (3-D Secure "
            "and redirects do not exist here)",
            "with `customer`, `payment_method` must be a `pm_X` attached to it; "
            "`receipt_email` cannot go with `customer`",
            "a magic id is echoed as given in the create answer; read back, `payment_method` "
            "names a PaymentMethod only if one was kept (`confirm=false` keeps the card as "
            "`pm_X`), else it is null",
        ),
        INTENT_RENAMES,
        answers="payment_intent",
    ),
    Endpoint(
        "GET",
        "/v1/payment_intents",
        "List PaymentIntents, newest first",
        list_intents,
        _PAGE,
        (*_LIST_DIFFERENCES, "no `customer` filter yet"),
        answers="payment_intent",
        listed=True,
    ),
    Endpoint(
        "GET",
        "/v1/payment_intents/{intent}",
        "Retrieve a PaymentIntent",
        retrieve_intent,
        differences=("no `client_secret`: publishable-key flows do not exist here",),
        answers="payment_intent",
    ),
    Endpoint(
        "POST",
        "/v1/payment_intents/{intent}/confirm",
        "Confirm a PaymentIntent (again after a decline, with another payment method)",
        confirm_intent,
        (Param("payment_method", "as on create; default: the one it has"),),
        renames=INTENT_RENAMES,
        answers="payment_intent",
    ),
    Endpoint(
        "POST",
        "/v1/payment_intents/{intent}/capture",
        "Capture a `requires_capture` PaymentIntent, all or part (the rest is released)",
        capture_intent,
        (Param("amount_to_capture", "at most `amount_capturable`; default all"),),
        renames=CAPTURE_RENAMES,
        answers="payment_intent",
    ),
    Endpoint(
        "POST",
        "/v1/payment_intents/{intent}/cancel",
        "Cancel a PaymentIntent (voids a `requires_capture` one)",
        cancel_intent,
        differences=("no `cancellation_reason` parameter; it reads null",),
        answers="payment_intent",
    ),
    # refunds and charges
    Endpoint(
        "POST",
        "/v1/refunds",
        "Refund a captured PaymentIntent or its Charge, all or part, any number of times",
        create_refund,
        (
            Param("payment_intent", "`pi_X`"),
            Param("charge", "`ch_X` (the same payment as `pi_X`)"),
            Param("amount", "default: all that is left"),
            Param("reason", "`duplicate`, `fraudulent`, `requested_by_customer`"),
        ),
        ("no `metadata`; refunds are never `pending`",),
        answers="refund",
    ),
    Endpoint(
        "GET",
        "/v1/refunds",
        "List refunds, newest first",
        list_refunds,
        (*_PAGE, Param("payment_intent", "only this one's"), Param("charge", "only this one's")),
        _LIST_DIFFERENCES,
        answers="refund",
        listed=True,
    ),
    Endpoint("GET", "/v1/refunds/{refund}", "Retrieve a refund", retrieve_refund, answers="refund"),
    Endpoint(
        "GET",
        "/v1/charges/{charge}",
        "Retrieve the Charge `ch_X` of PaymentIntent `pi_X`",
        retrieve_charge,
        differences=("one Charge per PaymentIntent, showing its latest processor attempt",),
        answers="charge",
    ),
    # customers (API.md "Customers, saved cards and recurring billing")
    Endpoint(
        "POST",
        "/v1/customers",
        "Create a customer (a Kassa customer, the same `cus_` id)",
        create_customer,
        (*_CUSTOMER_PARAMS, Param("test_clock", "a `clock_` id: the customer lives at its time")),
        _CUSTOMER_DIFFERENCES,
    ),
    Endpoint(
        "GET",
        "/v1/customers",
        "List customers, newest first",
        list_customers,
        (*_PAGE, Param("email", "only those with exactly this email (case-sensitive)")),
        (*_LIST_DIFFERENCES, "no `test_clock` filter"),
    ),
    Endpoint("GET", "/v1/customers/{customer}", "Retrieve a customer", retrieve_customer),
    Endpoint(
        "GET",
        "/v1/customers/{customer}/payment_methods",
        "List a customer's saved PaymentMethods, newest saved first",
        list_customer_payment_methods,
        (Param("type", "`card` only"),),
        ("one page of at most 100: no `limit`, `starting_after`, `allow_redisplay`",),
    ),
    Endpoint(
        "POST",
        "/v1/customers/{customer}",
        "Update a customer",
        update_customer,
        _CUSTOMER_PARAMS,
        (
            "`metadata[k]=v` keys merge into the customer's as Stripe's (`metadata[k]=` "
            "removes one, `metadata=` all), under the customer's row lock: concurrent "
            "updates lose no key",
        ),
    ),
    Endpoint(
        "DELETE",
        "/v1/customers/{customer}",
        "Delete a customer (its subscriptions are canceled now)",
        delete_customer,
    ),
    # webhook endpoints and events
    Endpoint(
        "POST",
        "/v1/webhook_endpoints",
        "Create a webhook endpoint (the answer holds its `secret`)",
        create_webhook_endpoint,
        (
            Param("url", "http or https; private addresses refused in production"),
            Param("enabled_events", "Stripe event types (see below), or `*`"),
            Param("description", ""),
        ),
        (
            "deliveries are Stripe Events (`payment_intent.succeeded` with the PaymentIntent "
            "in `data.object`), signed with `Stripe-Signature` (and Standard Webhooks) so "
            "`stripe.Webhook.construct_event` verifies them; an endpoint made through the "
            "native `/v1` gets Kassa's own event JSON",
            "no `api_version`, `metadata`, `connect`",
        ),
    ),
    Endpoint(
        "GET", "/v1/webhook_endpoints", "List webhook endpoints", list_webhook_endpoints, _PAGE
    ),
    Endpoint(
        "GET",
        "/v1/webhook_endpoints/{endpoint}",
        "Retrieve a webhook endpoint",
        retrieve_webhook_endpoint,
    ),
    Endpoint(
        "POST",
        "/v1/webhook_endpoints/{endpoint}",
        "Update a webhook endpoint",
        update_webhook_endpoint,
        (
            Param("url", ""),
            Param("enabled_events", ""),
            Param("description", ""),
            Param("disabled", "`true` or `false`"),
        ),
    ),
    Endpoint(
        "DELETE",
        "/v1/webhook_endpoints/{endpoint}",
        "Delete a webhook endpoint",
        delete_webhook_endpoint,
    ),
    Endpoint(
        "GET",
        "/v1/events",
        "List events, newest first, in Stripe's types",
        list_events,
        (*_PAGE, Param("type", "one Stripe event type, or `*`")),
        (*_LIST_DIFFERENCES, "no `types[]`, `delivery_success` filters"),
    ),
    Endpoint("GET", "/v1/events/{event}", "Retrieve an event", retrieve_event),
)


def setup(app: web.Application) -> None:
    """Register every row of ``ENDPOINTS`` under ``PREFIX``."""
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, PREFIX + endpoint.path, _serve(endpoint))


# --- the conformance matrix -------------------------------------------------------------------

KNOWN_DIFFERENCES = (
    "Kassa's own secret keys authenticate (`Authorization: Bearer`, as the SDK sends them); "
    "there are no publishable keys, `client_secret`s, Connect accounts (`Stripe-Account`) "
    "or live mode (`livemode` is false).",
    "`Stripe-Version` is accepted and ignored: objects have one shape.",
    "Cards only: no other payment method types, no 3-D Secure (`next_action` is null).",
    "`expand[]` turns ids into their objects one level deep: a PaymentIntent's "
    "`latest_charge` and `payment_method`, a Charge's `payment_intent` and `payment_method`, "
    "a refund's `charge` and `payment_intent` (`data.` ones on lists); any other path is "
    "refused (`400`, `This property cannot be expanded (...)`).",
    "A PaymentIntent's `status` `processing` also covers an automatic-capture payment "
    "between authorization and capture.",
    "A key still in flight answers `409 idempotency_key_in_use`, which the SDK retries "
    "(`max_network_retries`); state errors, load shedding (503) and processor timeouts "
    "(504) carry `Stripe-Should-Retry: false`.",
    "Idempotency-Keys are one store with the native `/v1` tree: a key used on one tree is "
    "taken on the other too (another request with it is refused as a reuse).",
    "Events keep Kassa's ids (`evt_`); `payment.authorized` is "
    "`payment_intent.amount_capturable_updated`, `payment.captured` "
    "`payment_intent.succeeded`, `refund.succeeded` `refund.created`.",
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def conformance_markdown() -> str:
    """The conformance matrix, from ``ENDPOINTS``, ``MAGIC_CARDS`` and the shapes' event
    types: written to docs/stripe-conformance.md and the README by the test run."""
    lines = [
        "| endpoint | what | parameters | differences from Stripe |",
        "|---|---|---|---|",
    ]
    for e in ENDPOINTS:
        params = "<br>".join(
            f"`{p.name}`" + (f": {_cell(p.meaning)}" if p.meaning else "") for p in e.all_params
        )
        lines.append(
            f"| `{e.method} {e.path}` | {_cell(e.summary)} | {params or '(none)'} | "
            f"{'<br>'.join(_cell(d) for d in e.differences) or '(none)'} |"
        )
    lines += [
        "",
        "Test payment methods (Stripe's magic ids, on API.md's sandbox cards):",
        "",
        "| payment method | token | card | outcome |",
        "|---|---|---|---|",
    ]
    for name, number in MAGIC_CARDS.items():
        lines.append(
            f"| `{MAGIC_PAYMENT_METHOD_PREFIX}{name}` | `{MAGIC_TOKEN_PREFIX}{name}` | "
            f"{number} | {_outcome(number)} |"
        )
    lines += ["", "Event types (Kassa's -> Stripe's):", ""]
    lines += [f"- `{native}` -> `{stripe}`" for native, stripe in shapes.EVENT_TYPES.items()]
    lines += ["", "Known differences everywhere:", ""]
    lines += [f"- {d}" for d in KNOWN_DIFFERENCES]
    return "\n".join(lines) + "\n"


DOCS_PATH = "docs/stripe-conformance.md"
README_PATH = "README.md"
README_START = "<!-- stripe-conformance: start (generated by python -m gateway.stripe.routes) -->"
README_END = "<!-- stripe-conformance: end -->"
DOCS_REGENERATE = "python -m gateway.stripe.routes"


def conformance_document() -> str:
    """docs/stripe-conformance.md: the matrix under a title saying where it comes from."""
    return (
        "# Stripe conformance matrix\n\n"
        'What `/stripe/v1` serves to Stripe\'s SDKs (API.md "Stripe-compatible API"). '
        "Generated from `gateway/stripe/routes.py` (`ENDPOINTS`, the table the router "
        f"serves) by `{DOCS_REGENERATE}`; tests/test_stripe_facade.py fails when this file "
        "differs. A parameter not listed is refused with `400 parameter_unknown`.\n\n"
        + conformance_markdown()
    )


def readme_with_matrix(readme: str) -> str:
    """``readme`` with the matrix between its markers; ValueError without them."""
    start = readme.index(README_START) + len(README_START)
    end = readme.index(README_END, start)
    return readme[:start] + "\n" + conformance_markdown() + readme[end:]


def _outcome(number: str) -> str:
    from gateway.processors.sandbox import SANDBOX_DECLINES, SANDBOX_ERROR_CARD

    if number == SANDBOX_ERROR_CARD:
        return "`402 card_error` `processing_error`"
    decline = SANDBOX_DECLINES.get(number)
    if decline is None:
        return "approved"
    code, _ = shapes.decline(decline)
    return f"`402 card_error` `{code}`, decline_code `{decline}`"


if __name__ == "__main__":
    # Regenerate docs/stripe-conformance.md and the README's matrix, in the checkout.
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent.parent
    (root / DOCS_PATH).write_text(conformance_document())
    readme = root / README_PATH
    readme.write_text(readme_with_matrix(readme.read_text()))
