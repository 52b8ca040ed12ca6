"""The OpenAPI document is valid, covers every route, and is true of the running server.

Every request the contract tests send goes through ``Contract.call``, which validates the
request body and parameters against the operation the document declares, then validates the
answer (status, content type, headers, body) against the response declared for that status.
An answer whose status the document does not declare fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import jsonschema
import orjson
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from gateway.http.openapi import DOCUMENT, ERROR_CODES
from gateway.stripe.routes import PREFIX as STRIPE_PREFIX
from tests.payments_helpers import APPROVED_VISA, ERROR_CARD, TIMEOUT_CARD, card, payment_body

DOC_URI = "urn:kassa:openapi"
REGISTRY = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(DOCUMENT))
RESOLVER = REGISTRY.resolver(base_uri=DOC_URI)
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
DECLINE_CARD = "4000000000000002"
NO_BODY = object()

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    # jsonschema only checks date-time with an optional package; check it here, always.
    if not isinstance(value, str):
        return True
    if not RFC3339.match(value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


# --- reading the document -----------------------------------------------------------------


def escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def pointer(*tokens: str) -> str:
    return "".join("/" + escape(str(token)) for token in tokens)


def deref(node: dict) -> dict:
    """An OpenAPI object, following its ``$ref`` (parameters, responses, headers)."""
    while "$ref" in node:
        node = RESOLVER.lookup(node["$ref"]).contents
    return node


def schema_errors(instance: object, schema_pointer: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{DOC_URI}#{schema_pointer}"}, registry=REGISTRY, format_checker=FORMATS
    )
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    ]


def assert_valid(instance: object, schema_pointer: str, what: str) -> None:
    errors = schema_errors(instance, schema_pointer)
    assert not errors, f"{what} does not match {schema_pointer}:\n  " + "\n  ".join(errors)


def operation(path: str, method: str) -> dict:
    assert path in DOCUMENT["paths"], f"{path} is not documented"
    assert method in DOCUMENT["paths"][path], f"{method.upper()} {path} is not documented"
    return DOCUMENT["paths"][path][method]


def operations() -> Iterator[tuple[str, str, dict]]:
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def walk(node: object, at: tuple = ()) -> Iterator[tuple[tuple, object]]:
    yield at, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*at, index))


def parameters_of(op: dict) -> dict[tuple[str, str], dict]:
    return {(p["in"], p["name"]): p for p in map(deref, op.get("parameters", []))}


# --- the document itself ------------------------------------------------------------------


def test_document_header():
    assert DOCUMENT["openapi"] == "3.1.0"
    info = DOCUMENT["info"]
    assert info["title"] and info["version"]
    assert "integers in the currency's minor unit" in info["description"]
    bearer = DOCUMENT["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")


def test_every_ref_resolves():
    refs = [
        (at, node["$ref"])
        for at, node in walk(DOCUMENT)
        if isinstance(node, dict) and isinstance(node.get("$ref"), str)
    ]
    refs += [
        (at, target)
        for at, node in walk(DOCUMENT)
        if at and at[-1] == "mapping"
        for target in node.values()
    ]  # discriminators
    assert len(refs) > 50
    for at, target in refs:
        try:
            RESOLVER.lookup(target)
        except Exception as exc:  # whatever the resolver raises: name the broken reference
            pytest.fail(f"{'/'.join(map(str, at))}: $ref {target!r} does not resolve: {exc!r}")


def test_every_schema_is_valid_draft_2020_12():
    schemas = dict(DOCUMENT["components"]["schemas"])
    for at, node in walk(DOCUMENT["paths"]):  # inline schemas of parameters and media types
        if at and at[-1] == "schema":
            schemas["/".join(map(str, at))] = node
    for name, parameter in DOCUMENT["components"]["parameters"].items():
        schemas[f"parameters/{name}"] = parameter["schema"]
    for name, header in DOCUMENT["components"]["headers"].items():
        schemas[f"headers/{name}"] = header["schema"]
    for name, schema in schemas.items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            pytest.fail(f"schema {name} is not valid Draft 2020-12: {exc.message}")


def test_operations_are_well_formed():
    operation_ids = [op["operationId"] for _, _, op in operations()]
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    for path, method, op in operations():
        where = f"{method.upper()} {path}"
        params = parameters_of(op)
        for name in re.findall(r"{(\w+)}", path):
            assert params.get(("path", name), {}).get("required") is True, where
        assert {n for (kind, n) in params if kind == "path"} == set(re.findall(r"{(\w+)}", path))
        assert op["responses"], where
        for status, answer in op["responses"].items():
            answer = deref(answer)
            assert answer["description"], f"{where} {status}"
            assert re.fullmatch(r"[1-5]\d\d", status), f"{where} {status}"
            if status in ("429", "503") and path.startswith("/v1/"):
                assert "Retry-After" in answer.get("headers", {}), f"{where} {status}"
        if path.startswith("/v1/"):
            assert op["security"] == [{"bearerAuth": []}], where
            assert "401" in op["responses"], where
        if method == "post" and path.startswith("/v1/"):  # the page's form: its own key
            assert ("header", "Idempotency-Key") in params, where
            assert "requestBody" in op, where
            success = next(s for s in op["responses"] if s.startswith("2"))
            assert "Idempotent-Replayed" in deref(op["responses"][success])["headers"], where


def test_error_codes_and_enums_are_documented():
    error = DOCUMENT["components"]["schemas"]["Error"]["properties"]["error"]
    description = error["properties"]["code"]["description"]
    for code in ERROR_CODES:
        assert f"`{code}`" in description
    for nullable in ("param", "decline_code", "payment_id"):
        assert error["properties"][nullable]["type"] == ["string", "null"]
    assert set(error["required"]) == {
        "type",
        "code",
        "message",
        "param",
        "decline_code",
        "payment_id",
    }


def test_payment_statuses_match_the_core():
    import core_ext

    schemas = DOCUMENT["components"]["schemas"]
    assert schemas["PaymentStatus"]["enum"] == list(core_ext.states.STATUSES)
    assert DOCUMENT["components"]["parameters"]["Status"]["schema"] == {
        "$ref": "#/components/schemas/PaymentStatus"
    }


def request_schema(path: str, method: str) -> str:
    return pointer("paths", path, method, "requestBody", "content", "application/json", "schema")


@pytest.mark.parametrize(
    "body,valid",
    [
        (payment_body(), True),
        (
            payment_body(
                capture="automatic", customer={"email": "ada@example.com", "ip": "203.0.113.9"}
            ),
            True,
        ),
        (payment_body(payment_method={"type": "token", "token": "tok_abc"}), True),
        (payment_body(amout=1), False),
        (payment_body(amount=0), False),
        (payment_body(amount=100_000_000), False),
        (payment_body(amount=19.99), False),
        (payment_body(currency="euro"), False),
        (payment_body(capture="later"), False),
        (payment_body(metadata={f"k{i}": "v" for i in range(21)}), False),
        (payment_body(metadata={"k" * 41: "v"}), False),
        (payment_body(metadata={"k": "v" * 501}), False),
        (payment_body(metadata={"k": 1}), False),
        (payment_body(payment_method={"type": "card", "card": card(cvc="12")}), False),
        (payment_body(payment_method={"type": "card", "card": card(exp_month=13)}), False),
        (payment_body(payment_method={"type": "card", "card": card(pin="0000")}), False),
        (payment_body(payment_method={"type": "token", "token": "tok_abc", "card": card()}), False),
        (payment_body(customer={"email": "ada@example.com", "phone": "1"}), False),
        (payment_body(reference="r" * 256), False),
        ({"amount": 1999, "currency": "eur"}, True),  # waits in requires_payment_method
        (payment_body(confirm=False), True),
        (payment_body(confirm="no"), False),
    ],
)
def test_payment_request_schema(body, valid):
    assert (not schema_errors(body, request_schema("/v1/payments", "post"))) is valid


# --- the document against the running app -------------------------------------------------


async def test_every_route_is_documented_and_every_documented_route_exists(client):
    routed = set()
    for route in client.app.router.routes():
        if route.method == "HEAD":
            continue
        # The Stripe-compatible tree's contract is Stripe's API reference, not this
        # document: its routes and parameters are listed by gateway/stripe/routes.py's
        # ENDPOINTS, published as docs/stripe-conformance.md (tests/test_stripe_facade.py).
        if route.resource.canonical.startswith(STRIPE_PREFIX):
            continue
        routed.add((route.resource.canonical, route.method.lower()))
    documented = {(path, method) for path, method, _ in operations()}
    assert routed - documented == set(), "routes the document does not describe"
    assert documented - routed == set(), "documented operations the app does not serve"


class Contract:
    """Send requests and hold both sides of each exchange to the document."""

    def __init__(self, client) -> None:
        self.client = client

    async def call(
        self,
        method: str,
        path: str,
        merchant=None,
        *,
        body: object = NO_BODY,
        data: bytes | None = None,
        params: dict | None = None,
        key: str | None = None,
        headers: dict | None = None,
        request_valid: bool = True,
        **path_values: str,
    ):
        op = operation(path, method)
        self.check_request(op, path, method, body, params or {}, key, request_valid)
        sent = dict(merchant.headers if merchant else {}, **(headers or {}))
        if key is not None:
            sent["Idempotency-Key"] = key
        kwargs: dict[str, Any] = {"headers": sent, "params": params}
        if body is not NO_BODY:
            kwargs["data"] = orjson.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["data"] = data
            sent.setdefault("Content-Type", "application/json")
        url = path.format(**path_values)
        async with self.client.request(method.upper(), url, **kwargs) as response:
            raw = await response.read()
            payload = self.check_response(op, path, method, response, raw)
        return response.status, payload, response.headers

    def check_request(
        self,
        op: dict,
        path: str,
        method: str,
        body: object,
        params: dict,
        key: str | None,
        request_valid: bool,
    ) -> None:
        declared = parameters_of(op)
        for name in params:
            assert ("query", name) in declared, f"{method.upper()} {path}: ?{name} undocumented"
        problems = []
        for (kind, name), parameter in declared.items():
            at = pointer(*self.parameter_location(op, path, method, kind, name), "schema")
            if kind == "query" and name in params:
                value = params[name]
                if parameter["schema"].get("type") == "integer":
                    value = int(value) if re.fullmatch(r"-?\d+", str(value)) else value
                problems += schema_errors(value, at)
            elif kind == "query" and parameter.get("required"):
                problems.append(f"query parameter {name} is required")
            elif kind == "header" and name == "Idempotency-Key" and key is not None:
                problems += schema_errors(key, at)
        if body is not NO_BODY:
            assert "requestBody" in op, f"{method.upper()} {path} documents no request body"
            problems += schema_errors(body, request_schema(path, method))
        if request_valid:
            assert not problems, (
                f"request to {method.upper()} {path} breaks the document: {problems}"
            )
        else:
            assert problems, f"the document accepts the invalid request to {method.upper()} {path}"

    @staticmethod
    def parameter_location(op: dict, path: str, method: str, kind: str, name: str) -> tuple:
        for index, parameter in enumerate(op.get("parameters", [])):
            if "$ref" in parameter:
                resolved = deref(parameter)
                if (resolved["in"], resolved["name"]) == (kind, name):
                    return ("components", "parameters", parameter["$ref"].rsplit("/", 1)[1])
            elif (parameter["in"], parameter["name"]) == (kind, name):
                return ("paths", path, method, "parameters", index)
        raise AssertionError(f"no parameter {kind} {name}")

    def check_response(self, op: dict, path: str, method: str, response, raw: bytes) -> object:
        where = f"{method.upper()} {path} answered {response.status}"
        status = str(response.status)
        assert status in op["responses"], (
            f"{where}, which the document does not declare (it declares "
            f"{sorted(op['responses'])}); body: {raw[:500]!r}"
        )
        answer = deref(op["responses"][status])
        assert response.content_type in answer["content"], f"{where} as {response.content_type}"
        for header in ("Idempotent-Replayed", "Retry-After"):
            if header in response.headers:
                assert header in answer.get("headers", {}), f"{where} with undocumented {header}"
                value: object = response.headers[header]
                schema = deref(answer["headers"][header])["schema"]
                if schema.get("type") == "integer":
                    value = int(value)
                assert jsonschema.Draft202012Validator(schema).is_valid(value), (where, header)
        if response.content_type != "application/json":
            return raw.decode()
        payload = orjson.loads(raw)
        assert_valid(
            payload,
            pointer(
                "paths",
                path,
                method,
                "responses",
                status,
                "content",
                response.content_type,
                "schema",
            ),
            f"{where}: {payload}",
        )
        return payload


@pytest.fixture
def api(client) -> Contract:
    return Contract(client)


async def test_served_document(api):
    status, served, _ = await api.call("get", "/openapi.json")
    assert status == 200 and served == DOCUMENT


def test_the_repository_carries_the_served_document():
    """docs/openapi.json is the reference a clone carries: it must be what the server serves."""
    from pathlib import Path

    from gateway.http.openapi import DOCS_REGENERATE, DOCUMENT_BYTES

    carried = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
    assert carried.exists(), f"docs/openapi.json is missing: run {DOCS_REGENERATE}"
    assert orjson.loads(carried.read_bytes()) == orjson.loads(DOCUMENT_BYTES), (
        f"docs/openapi.json differs from GET /openapi.json: run {DOCS_REGENERATE}"
    )


async def test_operations_endpoints(api, monkeypatch):
    from gateway.store import database

    assert (await api.call("get", "/healthz"))[:2] == (200, {"status": "ok"})
    status, ready, _ = await api.call("get", "/readyz")
    assert status == 200 and ready["status"] == "ready"
    monkeypatch.setattr(database, "LATEST_VERSION", database.LATEST_VERSION + 1)
    status, error, headers = await api.call("get", "/readyz")
    assert (status, error["error"]["code"]) == (503, "migrations_pending")
    assert "Retry-After" in headers


async def test_payment_lifecycle_contract(api, merchant):
    call = api.call
    # Manual capture, and its Idempotency-Key replayed and then reused with another body.
    manual = payment_body(APPROVED_VISA, capture="manual")
    status, held, _ = await call("post", "/v1/payments", merchant, body=manual, key="k-manual")
    assert (status, held["status"]) == (201, "authorized"), held
    status, again, headers = await call(
        "post", "/v1/payments", merchant, body=manual, key="k-manual"
    )
    assert (status, again, headers.get("Idempotent-Replayed")) == (201, held, "true")
    status, error, _ = await call(
        "post", "/v1/payments", merchant, body=payment_body(amount=2999), key="k-manual"
    )
    assert (status, error["error"]["code"]) == (422, "idempotency_key_reused")
    assert error["error"]["type"] == "idempotency_error"

    status, auto, _ = await call(
        "post", "/v1/payments", merchant, body=payment_body(capture="automatic"), key="k-auto"
    )
    assert (status, auto["status"], auto["amount_captured"]) == (201, "captured", 1999)

    # A token, and a payment with it.
    status, token, _ = await call(
        "post", "/v1/tokens", merchant, body={"card": card(holder_name="Ada Lovelace")}, key="k-tok"
    )
    assert (status, token["card"]["last4"]) == (201, "4242"), token
    by_token = payment_body(
        payment_method={"type": "token", "token": token["id"]}, capture="automatic"
    )
    status, paid, _ = await call("post", "/v1/payments", merchant, body=by_token)
    assert (status, paid["status"], paid["card"]) == (201, "captured", token["card"])

    # Capture part of the manual payment, refund part of that, read both back.
    status, captured, _ = await call(
        "post",
        "/v1/payments/{id}/capture",
        merchant,
        body={"amount": 1500},
        key="k-cap",
        id=held["id"],
    )
    assert (status, captured["status"], captured["amount_captured"]) == (200, "captured", 1500)
    status, refund, _ = await call(
        "post",
        "/v1/payments/{id}/refunds",
        merchant,
        id=held["id"],
        key="k-ref",
        body={"amount": 500, "reason": "requested_by_customer"},
    )
    assert (status, refund["amount"], refund["payment_id"]) == (201, 500, held["id"]), refund
    status, read, _ = await call("get", "/v1/refunds/{id}", merchant, id=refund["id"])
    assert (status, read) == (200, refund)
    status, payment, _ = await call("get", "/v1/payments/{id}", merchant, id=held["id"])
    assert (status, payment["status"], payment["amount_refunded"]) == (
        200,
        "partially_refunded",
        500,
    )

    # Void another authorization; voiding a captured payment is an illegal move.
    status, other, _ = await call("post", "/v1/payments", merchant, body=payment_body())
    assert status == 201
    status, voided, _ = await call(
        "post", "/v1/payments/{id}/void", merchant, id=other["id"], key="k-void"
    )
    assert (status, voided["status"], voided["amount_capturable"]) == (200, "voided", 0)
    status, error, _ = await call("post", "/v1/payments/{id}/void", merchant, id=auto["id"])
    assert (status, error["error"]["code"]) == (409, "payment_state_invalid"), error

    # Lists: a page, the next page, a status filter.
    status, page, _ = await call("get", "/v1/payments", merchant, params={"limit": "2"})
    assert (status, len(page["data"]), page["has_more"]) == (200, 2, True)
    assert [p["id"] for p in page["data"]] == [other["id"], paid["id"]]
    status, rest, _ = await call(
        "get", "/v1/payments", merchant, params={"limit": "10", "starting_after": paid["id"]}
    )
    assert (status, [p["id"] for p in rest["data"]], rest["has_more"]) == (
        200,
        [auto["id"], held["id"]],
        False,
    )
    status, listed, _ = await call("get", "/v1/payments", merchant, params={"status": "voided"})
    assert (status, [p["id"] for p in listed["data"]]) == (200, [other["id"]])

    # 1500 - 500 + 1999 + 1999 available; nothing held (the void released its hold).
    status, balance, _ = await call("get", "/v1/balance", merchant)
    assert (status, balance["currencies"]) == (
        200,
        [{"currency": "EUR", "pending": 0, "available": 4998}],
    )


async def test_declines_and_processor_errors_contract(api, merchant):
    status, error, _ = await api.call(
        "post", "/v1/payments", merchant, key="k-decline", body=payment_body(DECLINE_CARD)
    )
    assert status == 402, error
    assert (error["error"]["type"], error["error"]["code"], error["error"]["decline_code"]) == (
        "card_error",
        "card_declined",
        "generic_decline",
    )
    status, declined, _ = await api.call(
        "get", "/v1/payments/{id}", merchant, id=error["error"]["payment_id"]
    )
    assert (status, declined["status"], declined["decline_code"]) == (
        200,
        "declined",
        "generic_decline",
    )
    status, again, headers = await api.call(
        "post", "/v1/payments", merchant, key="k-decline", body=payment_body(DECLINE_CARD)
    )
    assert (status, again, headers.get("Idempotent-Replayed")) == (402, error, "true")

    status, error, _ = await api.call(
        "post", "/v1/payments", merchant, body=payment_body(ERROR_CARD)
    )
    assert (status, error["error"]["type"], error["error"]["code"]) == (
        502,
        "api_error",
        "processor_error",
    ), error
    status, failed, _ = await api.call(
        "get", "/v1/payments/{id}", merchant, id=error["error"]["payment_id"]
    )
    assert (status, failed["status"]) == (200, "failed")


async def test_payments_before_the_processor_contract(api, merchant):
    call = api.call
    without = {k: v for k, v in payment_body().items() if k != "payment_method"}
    status, waiting, _ = await call("post", "/v1/payments", merchant, body=without, key="k-w")
    assert (status, waiting["status"], waiting["card"]) == (201, "requires_payment_method", None)
    status, error, _ = await call("post", "/v1/payments/{id}/confirm", merchant, id=waiting["id"])
    assert (status, error["error"]["code"]) == (400, "parameter_missing"), error
    status, declined, _ = await call(
        "post",
        "/v1/payments/{id}/confirm",
        merchant,
        id=waiting["id"],
        key="k-c1",
        body={"payment_method": {"type": "card", "card": card(DECLINE_CARD)}},
    )
    assert (status, declined["error"]["decline_code"]) == (402, "generic_decline"), declined
    status, confirmed, _ = await call(
        "post",
        "/v1/payments/{id}/confirm",
        merchant,
        id=waiting["id"],
        key="k-c2",
        body={"payment_method": {"type": "card", "card": card()}},
    )
    assert (status, confirmed["status"], len(confirmed["attempts"])) == (201, "authorized", 2)
    status, error, _ = await call(
        "post", "/v1/payments/{id}/cancel", merchant, id=waiting["id"], key="k-x1"
    )
    assert (status, error["error"]["code"]) == (409, "payment_state_invalid"), error

    status, held, _ = await call(
        "post", "/v1/payments", merchant, body=payment_body(confirm=False), key="k-h"
    )
    assert (status, held["status"], held["attempts"]) == (201, "requires_confirmation", [])
    status, canceled, headers = await call(
        "post", "/v1/payments/{id}/cancel", merchant, id=held["id"], key="k-x2"
    )
    assert (status, canceled["status"]) == (200, "canceled"), canceled
    status, again, headers = await call(
        "post", "/v1/payments/{id}/cancel", merchant, id=held["id"], key="k-x2"
    )
    assert (status, again, headers.get("Idempotent-Replayed")) == (200, canceled, "true")
    status, error, _ = await call(
        "post", "/v1/payments/{id}/confirm", merchant, id=held["id"], body={}
    )
    assert (status, error["error"]["code"]) == (409, "payment_state_invalid"), error
    status, listed, _ = await call("get", "/v1/payments", merchant, params={"status": "canceled"})
    assert [p["id"] for p in listed["data"]] == [held["id"]]


async def test_checkout_contract(api, merchant):
    call = api.call
    body = {
        "amount": 1999,
        "currency": "eur",
        "success_url": "https://shop.example/thanks",
        "cancel_url": "https://shop.example/cart",
        "locale": "fi",
        "expires_in": 3600,
    }
    status, session, _ = await call(
        "post", "/v1/checkout/sessions", merchant, body=body, key="cs-1"
    )
    assert (status, session["status"], session["locale"]) == (201, "open", "fi"), session
    status, read, _ = await call("get", "/v1/checkout/sessions/{id}", merchant, id=session["id"])
    assert (status, read) == (200, session)
    status, expired, _ = await call(
        "post", "/v1/checkout/sessions/{id}/expire", merchant, id=session["id"], key="cs-x"
    )
    assert (status, expired["status"]) == (200, "expired")
    status, error, _ = await call(
        "post", "/v1/checkout/sessions/{id}/expire", merchant, id=session["id"]
    )
    assert (status, error["error"]["code"]) == (409, "payment_state_invalid")
    status, events, _ = await call(
        "get", "/v1/events", merchant, params={"type": "checkout.session.expired"}
    )
    assert [e["data"]["object"]["id"] for e in events["data"]] == [session["id"]]
    status, link, _ = await call(
        "post", "/v1/payment_links", merchant, body={"amount": 500, "currency": "sek"}
    )
    assert (status, link["active"], link["currency"]) == (201, True, "SEK")
    status, read, _ = await call("get", "/v1/payment_links/{id}", merchant, id=link["id"])
    assert (status, read) == (200, link)
    status, retired, _ = await call(
        "post", "/v1/payment_links/{id}", merchant, id=link["id"], body={"active": False}
    )
    assert (status, retired["active"]) == (200, False)
    status, error, _ = await call(
        "post",
        "/v1/checkout/sessions",
        merchant,
        body={**body, "success_url": "javascript:alert(1)"},
        request_valid=False,
    )
    assert (status, error["error"]["param"]) == (400, "success_url")


async def test_processor_timeout_contract(app_factory, merchant):
    api = Contract(await app_factory(processor_timeout_ms=100))
    body = payment_body(TIMEOUT_CARD)
    status, error, _ = await api.call("post", "/v1/payments", merchant, body=body, key="k-slow")
    assert (status, error["error"]["code"]) == (504, "processor_timeout"), error
    status, error, _ = await api.call("post", "/v1/payments", merchant, body=body, key="k-slow")
    assert (status, error["error"]["code"]) == (409, "idempotency_key_in_use"), error


async def test_operation_timeout_contract(app_factory, merchant):
    api = Contract(await app_factory())
    # A gateway whose processor answers slower than it waits: every call there times out.
    slow = Contract(await app_factory(sandbox_latency_ms=1000, processor_timeout_ms=100))
    for path, capture, body in (
        ("/v1/payments/{id}/capture", "manual", {}),
        ("/v1/payments/{id}/void", "manual", NO_BODY),
        ("/v1/payments/{id}/refunds", "automatic", {}),
    ):
        status, payment, _ = await api.call(
            "post", "/v1/payments", merchant, body=payment_body(capture=capture)
        )
        assert status == 201, payment
        status, error, _ = await slow.call(
            "post", path, merchant, body=body, key="k-" + path, id=payment["id"]
        )
        assert (status, error["error"]["code"]) == (504, "processor_timeout"), error
        status, error, _ = await api.call("post", path, merchant, body=body, id=payment["id"])
        assert (status, error["error"]["code"]) == (409, "payment_state_invalid"), error


async def test_client_errors_contract(api, merchant, other_merchant):
    async def expect(status: int, type_: str, code: str, *args: Any, **kwargs: Any) -> dict:
        got, body, _ = await api.call(*args, **kwargs)
        assert (got, body["error"]["type"], body["error"]["code"]) == (status, type_, code), body
        return body["error"]

    invalid = "invalid_request_error"
    error = await expect(
        400,
        invalid,
        "parameter_unknown",
        "post",
        "/v1/payments",
        merchant,
        body=payment_body(amout=1),
        request_valid=False,
    )
    assert error["param"] == "amout"
    await expect(400, invalid, "invalid_json", "post", "/v1/payments", merchant, data=b"{")
    await expect(
        400,
        invalid,
        "parameter_invalid",
        "get",
        "/v1/payments",
        merchant,
        params={"limit": "0"},
        request_valid=False,
    )
    await expect(
        400,
        invalid,
        "parameter_invalid",
        "post",
        "/v1/payments",
        merchant,
        body=payment_body(),
        key="k" * 256,
        request_valid=False,
    )
    for path, values in (
        ("/v1/payments", {}),
        ("/v1/tokens", {}),
        ("/v1/payments/{id}/capture", {"id": "pay_x"}),
        ("/v1/payments/{id}/void", {"id": "pay_x"}),
        ("/v1/payments/{id}/refunds", {"id": "pay_x"}),
    ):
        await expect(
            415,
            invalid,
            "unsupported_media_type",
            "post",
            path,
            merchant,
            data=b"{}",
            headers={"Content-Type": "text/plain"},
            **values,
        )
    await expect(
        413,
        invalid,
        "request_too_large",
        "post",
        "/v1/tokens",
        merchant,
        data=b'{"card": "' + b"x" * (70 * 1024) + b'"}',
    )

    await expect(401, "authentication_error", "api_key_missing", "get", "/v1/balance")
    await expect(
        401,
        "authentication_error",
        "api_key_invalid",
        "get",
        "/v1/balance",
        headers={"Authorization": "Bearer sk_test_not_a_key"},
    )

    await expect(
        404,
        invalid,
        "resource_missing",
        "get",
        "/v1/payments/{id}",
        merchant,
        id="pay_doesnotexist",
    )
    await expect(
        404, invalid, "resource_missing", "get", "/v1/refunds/{id}", merchant, id="re_doesnotexist"
    )
    await expect(
        404,
        invalid,
        "resource_missing",
        "post",
        "/v1/payments/{id}/capture",
        merchant,
        id="pay_doesnotexist",
        body={},
    )
    status, payment, _ = await api.call("post", "/v1/payments", merchant, body=payment_body())
    assert status == 201
    await expect(
        404,
        invalid,
        "resource_missing",
        "get",
        "/v1/payments/{id}",
        other_merchant,
        id=payment["id"],
    )
    await expect(
        400,
        invalid,
        "amount_too_large",
        "post",
        "/v1/payments/{id}/capture",
        merchant,
        id=payment["id"],
        body={"amount": 2000},
    )


# The core owns every limit and enum; the document states them by importing the core's
# names, so a changed limit cannot leave the document behind. Changing each name in the
# core and rebuilding the document must change the document.
CORE_FACTS = {
    # a name in core_ext.validation: how to read it in the document
    "AMOUNT_MAX": lambda d: d["components"]["schemas"]["Amount"]["maximum"],
    "AMOUNT_MIN": lambda d: d["components"]["schemas"]["Amount"]["minimum"],
    "METADATA_KEYS_MAX": lambda d: d["components"]["schemas"]["Metadata"]["maxProperties"],
    "METADATA_KEY_CHARS_MAX": lambda d: d["components"]["schemas"]["Metadata"]["propertyNames"][
        "maxLength"
    ],
    "METADATA_VALUE_CHARS_MAX": lambda d: d["components"]["schemas"]["Metadata"][
        "additionalProperties"
    ]["maxLength"],
    "LIST_LIMIT_MAX": lambda d: d["components"]["parameters"]["Limit"]["schema"]["maximum"],
    "LIST_LIMIT_DEFAULT": lambda d: d["components"]["parameters"]["Limit"]["schema"]["default"],
    "REFERENCE_CHARS_MAX": lambda d: d["components"]["schemas"]["PaymentCreate"]["properties"][
        "reference"
    ]["maxLength"],
    "DESCRIPTION_CHARS_MAX": lambda d: d["components"]["schemas"]["PaymentCreate"]["properties"][
        "description"
    ]["maxLength"],
    "HOLDER_NAME_CHARS_MAX": lambda d: d["components"]["schemas"]["CardInput"]["properties"][
        "holder_name"
    ]["maxLength"],
    "EMAIL_CHARS_MAX": lambda d: d["components"]["schemas"]["Customer"]["properties"]["email"][
        "maxLength"
    ],
    "IP_CHARS_MAX": lambda d: d["components"]["schemas"]["Customer"]["properties"]["ip"][
        "maxLength"
    ],
    "CAPTURE_METHODS": lambda d: tuple(d["components"]["schemas"]["CaptureMethod"]["enum"]),
    "REFUND_REASONS": lambda d: tuple(d["components"]["schemas"]["RefundReason"]["enum"]),
    "STATUSES": lambda d: tuple(d["components"]["schemas"]["PaymentStatus"]["enum"]),
}


@pytest.fixture
def rebuilt_document(monkeypatch):
    """Build the document again after ``monkeypatch`` changed the core; restore it after."""
    import importlib

    from gateway.http import openapi

    yield lambda: importlib.reload(openapi).DOCUMENT
    monkeypatch.undo()
    importlib.reload(openapi)


@pytest.mark.parametrize("name", sorted(CORE_FACTS))
def test_limits_and_enums_are_the_cores(name, monkeypatch, rebuilt_document):
    import core_ext

    read = CORE_FACTS[name]
    core_value = getattr(core_ext.validation, name)
    assert read(DOCUMENT) == core_value
    changed = (*core_value, "zz_new") if isinstance(core_value, tuple) else core_value - 1
    monkeypatch.setattr(core_ext.validation, name, changed)
    if name == "STATUSES":
        monkeypatch.setattr(core_ext.states, name, changed)
    assert read(rebuilt_document()) == changed, f"the document restates {name}"


def test_idempotency_key_length_is_the_gateways(monkeypatch, rebuilt_document):
    from gateway.http import answers

    def key_chars_max(document: dict) -> int:
        return document["components"]["parameters"]["IdempotencyKey"]["schema"]["maxLength"]

    assert key_chars_max(DOCUMENT) == answers.KEY_CHARS_MAX
    monkeypatch.setattr(answers, "KEY_CHARS_MAX", 64)
    assert key_chars_max(rebuilt_document()) == 64


async def test_settlement_report_contract(api, merchant):
    from datetime import UTC, datetime

    today = datetime.now(UTC).date().isoformat()
    status, paid, _ = await api.call(
        "post", "/v1/payments", merchant, body=payment_body(capture="automatic")
    )
    assert status == 201
    status, _, _ = await api.call(
        "post", "/v1/payments/{id}/refunds", merchant, body={"amount": 500}, id=paid["id"]
    )
    assert status == 201
    status, report, _ = await api.call(
        "get", "/v1/reports/settlement", merchant, params={"date": today}
    )
    assert (status, report["object"], report["date"]) == (200, "settlement_report", today)
    assert report["lines"] == [
        {
            "date": today,
            "merchant_id": merchant.id,
            "currency": "EUR",
            "captured_amount": 1999,
            "captured_count": 1,
            "refunded_amount": 500,
            "refunded_count": 1,
            "net_amount": 1499,
        }
    ]
    status, text, _ = await api.call(
        "get", "/v1/reports/settlement", merchant, params={"date": today, "format": "csv"}
    )
    assert status == 200
    assert text.splitlines() == [
        (
            "date,merchant_id,currency,captured_amount,captured_count,refunded_amount,"
            "refunded_count,net_amount"
        ),
        f"{today},{merchant.id},EUR,1999,1,500,1,1499",
    ]
    status, empty, _ = await api.call(
        "get", "/v1/reports/settlement", merchant, params={"date": "2000-01-01", "format": "json"}
    )
    assert (status, empty["lines"]) == (200, [])
    for params, code in (
        ({"date": "20240101"}, "parameter_invalid"),
        ({}, "parameter_invalid"),
        ({"date": today, "format": "xml"}, "parameter_invalid"),
    ):
        status, error, _ = await api.call(
            "get", "/v1/reports/settlement", merchant, params=params, request_valid=False
        )
        assert (status, error["error"]["code"]) == (400, code), (params, error)


async def test_billing_contract(api, merchant):
    """Every billing route, both sides held to the document, with the in-process
    scheduler renewing on a test clock and its events' objects documented too."""
    import asyncio

    call = api.call
    status, clock, _ = await call(
        "post", "/v1/test_clocks", merchant, body={"frozen_time": "2027-01-31T10:00:00Z"}
    )
    assert status == 201 and clock["status"] == "ready"
    status, customer, _ = await call(
        "post",
        "/v1/customers",
        merchant,
        body={"email": "ada@example.com", "name": "Ada", "test_clock": clock["id"]},
    )
    assert status == 201
    status, token, _ = await call("post", "/v1/tokens", merchant, body={"card": card()})
    assert status == 201
    status, saved, _ = await call(
        "post",
        "/v1/customers/{id}/payment_methods",
        merchant,
        body={"token": token["id"], "default": True},
        id=customer["id"],
    )
    assert status == 200 and saved["default"] is True
    status, _, _ = await call(
        "get", "/v1/customers/{id}/payment_methods", merchant, id=customer["id"]
    )
    assert status == 200
    status, _, _ = await call(
        "post", "/v1/customers/{id}", merchant, body={"name": "Ada L."}, id=customer["id"]
    )
    assert status == 200
    status, listed, _ = await call(
        "get", "/v1/customers", merchant, params={"email": "ada@example.com"}
    )
    assert status == 200 and [c["id"] for c in listed["data"]] == [customer["id"]]
    status, _, _ = await call("get", "/v1/customers/{id}", merchant, id=customer["id"])
    assert status == 200
    status, payment, _ = await call(
        "post",
        "/v1/payments",
        merchant,
        body={
            "amount": 100,
            "currency": "eur",
            "customer": customer["id"],
            "payment_method": {"type": "token", "token": token["id"]},
            "off_session": True,
        },
    )
    assert status == 201 and payment["off_session"] is True
    status, price, _ = await call(
        "post",
        "/v1/prices",
        merchant,
        body={"amount": 1500, "currency": "eur", "recurring": {"interval": "month"}},
    )
    assert status == 201
    status, _, _ = await call("get", "/v1/prices/{id}", merchant, id=price["id"])
    assert status == 200
    status, subscription, _ = await call(
        "post",
        "/v1/subscriptions",
        merchant,
        body={"customer": customer["id"], "price": price["id"]},
    )
    assert status == 201 and subscription["status"] == "active"
    status, clock, _ = await call(
        "post",
        "/v1/test_clocks/{id}/advance",
        merchant,
        body={"frozen_time": "2027-04-01T00:00:00Z"},
        id=clock["id"],
    )
    assert status == 200
    for _ in range(400):
        status, clock, _ = await call("get", "/v1/test_clocks/{id}", merchant, id=clock["id"])
        if clock["status"] == "ready":
            break
        await asyncio.sleep(0.05)
    assert clock["status"] == "ready"
    status, invoices, _ = await call(
        "get", "/v1/invoices", merchant, params={"subscription": subscription["id"]}
    )
    assert status == 200 and [i["status"] for i in invoices["data"]] == ["paid"] * 3
    status, _, _ = await call("get", "/v1/invoices/{id}", merchant, id=invoices["data"][0]["id"])
    assert status == 200
    status, _, _ = await call(
        "get", "/v1/subscriptions", merchant, params={"customer": customer["id"]}
    )
    assert status == 200
    status, _, _ = await call("get", "/v1/subscriptions/{id}", merchant, id=subscription["id"])
    assert status == 200
    status, canceled, _ = await call(
        "post",
        "/v1/subscriptions/{id}/cancel",
        merchant,
        body={"at_period_end": False},
        id=subscription["id"],
    )
    assert status == 200 and canceled["status"] == "canceled"
    status, events, _ = await call("get", "/v1/events", merchant, params={"limit": "100"})
    assert status == 200
    assert {"customer.created", "invoice.paid", "customer.subscription.deleted"} <= {
        e["type"] for e in events["data"]
    }
    status, _, _ = await call(
        "delete",
        "/v1/customers/{id}/payment_methods/{token}",
        merchant,
        id=customer["id"],
        token=token["id"],
    )
    assert status == 200
    status, _, _ = await call("delete", "/v1/customers/{id}", merchant, id=customer["id"])
    assert status == 200
