"""Schemathesis against the ``/openapi.json`` served by a real ``kassa serve``.

Every operation of the document is fuzzed as a real merchant (``Authorization: Bearer``)
with schema-valid (positive) and schema-invalid (negative) requests, through Schemathesis's
examples, coverage and fuzzing phases. Every answer must pass: no 5xx, a declared status
code, a declared content type, a body that matches the declared schema, declared response
headers, invalid input never answered 2xx (nor 402), and a 2xx answer refused without the
key or with a wrong one (401). Two in three schema-valid cases are made to reach further
than the document alone can lead them: path ids and ``starting_after`` become the
merchant's own objects (payments in every state, refunds, and whatever the fuzzing itself
created), payment and token bodies get a sandbox test card, a real currency code or the
merchant's token. Schemathesis also mixes edge strings (NUL, astral and combining
characters, ids of every prefix) and the first and last days of the calendar into what it
generates. Beside the fuzzing, every undeclared method of every path must answer 405 with
RFC 9110's ``Allow``, and the inputs that broke the gateway before are sent on every run.

The schema is the served document: the fixture fetches ``/openapi.json`` from the running
gateway and requires it to be byte for byte ``gateway.http.openapi.DOCUMENT_BYTES``, from which
the tests are generated (one pytest item per operation; Schemathesis's lazy
``from_fixture`` loader does not work with pytest 9.2, whose nodes have no ``_nodeid``).

CI form (part of ``scripts/test``; a fixed seed, so every run draws the same cases)::

    .venv/bin/python -m pytest tests/test_fuzz_api.py

A long run (``KASSA_FUZZ_SEED=random`` draws a fresh seed each run, an integer replays
one; ~10,500 requests, 4.5 minutes here)::

    KASSA_FUZZ_EXAMPLES=1000 KASSA_FUZZ_SEED=random .venv/bin/python -m pytest \\
        tests/test_fuzz_api.py -p no:cacheprovider -s

``KASSA_FUZZ_EXAMPLES`` (default 100) is Hypothesis's ``max_examples`` for the fuzzing phase
of each operation (shared by the positive and negative modes); the examples and coverage
phases add their own cases (about 1,500 requests in all at the default, ~40 s here).
``-s`` prints how many requests each operation got, by mode, phase and answer. A failure
prints the request as a ``curl`` command and the check that failed.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import jsonschema
import orjson
import pytest
import schemathesis
from hypothesis import strategies as st

from gateway.http.openapi import DOCUMENT, DOCUMENT_BYTES
from gateway.store.merchants import create_merchant
from gateway.testing import KassaServer
from tests.conftest import SERVE_READY_TIMEOUT_S, USER_TABLES_SQL, subprocess_variables
from tests.payments_helpers import (
    APPROVED_AMEX,
    APPROVED_MASTERCARD,
    APPROVED_VISA,
    DECLINES,
    card,
    future_expiry,
    payment_body,
)

EXAMPLES = int(os.environ.get("KASSA_FUZZ_EXAMPLES", "100"))
SEED_SETTING = os.environ.get("KASSA_FUZZ_SEED", "20261122")
SEED = None if SEED_SETTING == "random" else int(SEED_SETTING)

# What invalid input may be answered with. Not 2xx, and not 402: a decline means the
# gateway sent an invalid request on to the processor. 404 for an unknown id, 409/422 for
# an Idempotency-Key conflict, 413 for a body over 64 KiB, 405 for a method the path does
# not serve, 429 for the rate limit. (5xx is not_a_server_error's business.)
REJECTED = ["400", "401", "404", "405", "409", "413", "422", "429"]

CHECKS = {
    "not_a_server_error": {"enabled": True},
    "status_code_conformance": {"enabled": True},
    "content_type_conformance": {"enabled": True},
    "response_schema_conformance": {"enabled": True},
    "response_headers_conformance": {"enabled": True},
    "negative_data_rejection": {"enabled": True, "expected-statuses": REJECTED},
    "ignored_auth": {"enabled": True},
    # Undeclared methods (which the coverage phase sends) are held to RFC 9110 by
    # test_undeclared_methods_answer_405_with_allow below, for every path at once, so that
    # a failure there does not hide what the fuzzing finds in each operation.
    "unsupported_method": {"enabled": False},
    "allow_header_conformance": {"enabled": False},
    # Inapplicable: the document cannot express every rule the gateway enforces (Luhn,
    # expiry not in the past, a 4-digit cvc for American Express only, ISO 4217 codes, IP
    # address syntax, a payment id that exists), so schema-valid requests are rightly
    # refused with 400/404; and the sandbox declines (402) some valid card numbers by design.
    "positive_data_acceptance": {"enabled": False},
    # These need the stateful phase, which this test does not run (it has no links).
    "use_after_free": {"enabled": False},
    "ensure_resource_availability": {"enabled": False},
    # No operation declares a required header but the API key, which ignored_auth covers.
    "missing_required_header": {"enabled": False},
}

# Values Schemathesis mixes into what it generates (only where they fit the schema in
# positive mode, only where they break it in negative mode): strings that have broken
# gateways before (NUL, which PostgreSQL text cannot hold; ids of every prefix; emoji and
# other astral or combining characters; numbers and keywords as text; long ids) and the
# days at the ends of the calendar.
EDGE_STRINGS = [
    "\x00",
    "a\x00b",
    "pay_\x00",
    "re_\x00",
    "tok_\x00",
    "pay_" + "0" * 300,
    "pay_",
    " ",
    "\t",
    "\u00e9\u0301",
    "\U0001f4b3",
    "\u202e",
    "\ufeff",
    "0",
    "-1",
    "1e999",
    "true",
    "null",
    "%00",
    "../",
    "4242424242424242",
    "4242 4242 4242 4242",
]
EDGE_DATES = ["0001-01-01", "9999-12-31", "2024-02-29", "1970-01-01", "2026-11-22"]

CONFIG = schemathesis.Config.from_dict(
    {
        **({} if SEED is None else {"seed": SEED}),
        "dictionaries": {
            "edge-strings": {"values": EDGE_STRINGS},
            "edge-dates": {"values": EDGE_DATES},
        },
        "parameters": {"query.date": {"dictionary": "edge-dates", "probability": 0.5}},
        "generation": {
            "mode": "all",  # positive and negative
            "max-examples": EXAMPLES,
            "deterministic": SEED is not None,
            "database": "none",
            "dictionaries": {"string": {"dictionary": "edge-strings", "probability": 0.2}},
        },
        "phases": {"stateful": {"enabled": False}},
        "checks": CHECKS,
        "request-timeout": 10,
    }
)

schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@dataclass
class Target:
    url: str = ""
    secret: str = ""
    payments: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


# Approved, and each decline. Not the processor-error and timeout cards: their 502 and 504
# are the sandbox's designed answers, which not_a_server_error cannot tell from a failure
# (tests/test_openapi.py holds those answers to the document).
TEST_CARDS = (APPROVED_VISA, APPROVED_MASTERCARD, APPROVED_AMEX, *DECLINES)
# Any case on input; two, zero and three decimals.
CURRENCIES = ("eur", "USD", "Jpy", "bhd", "KWD", "gbp")

# The running gateway; the hooks below read its ids when they draw.
TARGET = Target()
# (operation, generation mode, status) -> requests answered and validated.
SEEN: Counter = Counter()
# Ids of the objects the running test created (see _targets_grow_between_tests).
CREATED: list[str] = []


@schema.auth(refresh_interval=None, retry_on=[]).apply_to(path_regex="^/v1/")
class MerchantKey:
    """The merchant's secret key on every /v1 request, except where Schemathesis leaves the
    key out or breaks it on purpose (then the answer must be 401)."""

    def get(self, case, context):
        return TARGET.secret

    def set(self, case, secret, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {secret}"}


def _positive(case, location: str) -> bool:
    """Whether ``case`` generated this part of the request as schema-valid. Only such parts
    are made realistic below: a negative part stays exactly as Schemathesis broke it."""
    component = case.meta.components.get(location) if case.meta is not None else None
    return component is not None and not component.mode.is_negative


@schema.hook("flatmap_case")
def realistic_sometimes(context, case):
    """About half the schema-valid cases are made to reach deeper than the document can
    lead them: a path id or ``starting_after`` becomes one of the merchant's own objects
    (payments in every state, refunds), and a payment or token body gets a sandbox test
    card with a future expiry and the brand's cvc length, a real currency code, integral
    amounts and months as JSON integers, or the merchant's token, so that it passes the
    checks the document cannot express (Luhn, expiry, ISO 4217, an id that exists) and
    reaches the processor, the vault and the database (201, 402, 409)."""
    ids = TARGET.refunds if case.operation.path.startswith("/v1/refunds/") else TARGET.payments
    swaps = []
    if "id" in case.path_parameters and _positive(case, "path"):
        swaps.append(st.sampled_from(ids).map(lambda id_: ("path", "id", id_)))
    if "starting_after" in (case.query or {}) and _positive(case, "query"):
        swaps.append(
            st.sampled_from(TARGET.payments).map(lambda id_: ("query", "starting_after", id_))
        )
    if (
        isinstance(case.body, dict)
        and _positive(case, "body")
        and case.method == "POST"
        and case.operation.path in ("/v1/payments", "/v1/tokens")
    ):
        swaps.append(
            st.tuples(
                st.just("body"),
                st.sampled_from(TEST_CARDS),
                st.sampled_from(CURRENCIES),
                st.sampled_from(TARGET.tokens),
            )
        )
    if not swaps:
        return st.just(case)
    # Two in three: a case is made realistic or left as generated.
    return st.tuples(st.sampled_from((True, True, False)), st.tuples(*swaps)).map(
        lambda drawn: _swap(case, drawn[1]) if drawn[0] else case
    )


def _swap(case, swaps: tuple) -> object:
    for swap in swaps:
        if swap[0] == "path":
            case.path_parameters = {**case.path_parameters, swap[1]: swap[2]}
        elif swap[0] == "query":
            case.query = {**case.query, swap[1]: swap[2]}
        else:
            case.body = _plausible(case.body, *swap[1:])
    return case


def _plausible(body: dict, number: str, currency: str, token: str) -> dict:
    body = copy.deepcopy(body)
    if isinstance(body.get("currency"), str):
        body["currency"] = currency
    if isinstance(body.get("amount"), float):
        body["amount"] = int(body["amount"])  # 1834.0 is an integer to JSON Schema only
    method = body.get("payment_method")
    if isinstance(method, dict) and method.get("type") == "token":
        method["token"] = token
    card = method.get("card") if isinstance(method, dict) else body.get("card")
    if isinstance(card, dict):
        card.update(
            number=number, exp_year=future_expiry()[1], cvc="1234" if number[0] == "3" else "123"
        )
        if isinstance(card.get("exp_month"), float):
            card["exp_month"] = int(card["exp_month"])
    return body


async def _seed_objects(session: aiohttp.ClientSession, target: Target) -> None:
    """Real objects of the merchant in every state a path id can reach."""

    headers = {"Authorization": f"Bearer {target.secret}"}

    async def post(path: str, body: dict, expected: int) -> dict:
        async with session.post(target.url + path, json=body, headers=headers) as answer:
            payload = await answer.json()
            assert answer.status == expected, (path, body, answer.status, payload)
            return payload

    for _ in range(3):  # authorized: to capture or void
        target.payments.append((await post("/v1/payments", payment_body(), 201))["id"])
    for _ in range(3):  # captured: to refund
        captured = await post("/v1/payments", payment_body(capture="automatic"), 201)
        target.payments.append(captured["id"])
    refunded = await post(
        "/v1/payments", payment_body(APPROVED_AMEX, capture="automatic", amount=5000), 201
    )
    target.payments.append(refunded["id"])
    for amount in (1000, 4000):  # partially, then fully refunded
        refund = await post(f"/v1/payments/{refunded['id']}/refunds", {"amount": amount}, 201)
        target.refunds.append(refund["id"])
    voided = await post("/v1/payments", payment_body(), 201)
    await post(f"/v1/payments/{voided['id']}/void", {}, 200)
    target.payments.append(voided["id"])
    declined = await post("/v1/payments", payment_body(next(iter(DECLINES))), 402)
    target.payments.append(declined["error"]["payment_id"])
    target.tokens.append((await post("/v1/tokens", {"card": card(APPROVED_VISA)}, 201))["id"])


@pytest.fixture(scope="module")
async def fuzz_target(pool: asyncpg.Pool, database_url: str, tmp_path_factory):
    """One ``kassa serve`` for the whole module, a merchant, and its objects."""
    tables = await pool.fetchval(USER_TABLES_SQL)
    if tables:
        await pool.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    async with pool.acquire() as conn:
        key = await create_merchant(conn, "Fuzz Shop")
    tmp = tmp_path_factory.mktemp("fuzz")
    server = KassaServer(tmp, database_url, env=subprocess_variables(), log_path=tmp / "serve.log")
    server.start()
    try:
        await server.wait_ready_async(SERVE_READY_TIMEOUT_S)
        target = Target(server.url, key.secret)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/openapi.json") as answer:
                assert answer.status == 200
                assert await answer.read() == DOCUMENT_BYTES, "the served document differs"
            await _seed_objects(session, target)
        TARGET.__dict__.update(target.__dict__)
        yield target
        for (label, mode, status), count in sorted(SEEN.items()):
            print(f"fuzz: {label:35} {mode:20} {status}: {count}")
        print(f"fuzz: {sum(SEEN.values())} requests validated")
    finally:
        server.stop()


@pytest.mark.timeout(120 + EXAMPLES // 5)  # seconds per operation; long runs take longer
@schema.parametrize()
def test_api_conforms_to_its_document(case, fuzz_target: Target):
    response = case.call_and_validate(base_url=fuzz_target.url)
    mode = f"{case.meta.generation.mode.value}/{case.meta.phase.name.value}"
    outcome = str(response.status_code)
    # The buyer's pages (tag "pages") answer HTML: only the API's answers are JSON.
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    if response.status_code >= 400 and case.operation.path != "/readyz" and is_json:
        outcome += " " + response.json()["error"]["code"]
    SEEN[(case.operation.label, mode, outcome)] += 1
    # What the fuzzing creates becomes a target of the operations tested after this one.
    created = response.json().get("id") if response.status_code == 201 and is_json else None
    if response.status_code == 402:
        created = response.json()["error"]["payment_id"]
    if created:
        CREATED.append(created)


@pytest.fixture(autouse=True)
def _targets_grow_between_tests():
    """Ids created by one test join the targets before the next: while a test runs its
    lists stay fixed, so that Hypothesis can replay what it drew from them."""
    kinds = {"pay": TARGET.payments, "re": TARGET.refunds, "tok": TARGET.tokens}
    for created in CREATED:
        # Only the kinds the targets name; a session's, link's, customer's, price's or
        # clock's id is no path id any of these operations takes.
        kind = kinds.get(created.partition("_")[0])
        if kind is not None:
            kind.append(created)
    CREATED.clear()


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


async def test_undeclared_methods_answer_405_with_allow(fuzz_target: Target):
    """Every method a path does not serve: 405 method_not_allowed as an API.md error body,
    with the ``Allow`` header RFC 9110 requires, naming exactly the methods it serves."""
    error_schema = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/Error", "components": DOCUMENT["components"]}
    )
    headers = {"Authorization": f"Bearer {fuzz_target.secret}"}
    problems = []
    async with aiohttp.ClientSession() as session:
        for template, operations in DOCUMENT["paths"].items():
            served = {method.upper() for method in operations}
            served |= {"HEAD"} if "GET" in served else set()
            # Every path parameter filled; a second one (a customer's saved card) takes any
            # id of its shape.
            path = re.sub(r"{\w+}", fuzz_target.payments[0], template.replace("{token}", "tok_0"))
            for method in sorted(set(METHODS) - served):
                async with session.request(
                    method, fuzz_target.url + path, headers=headers
                ) as answer:
                    body = await answer.read()
                    allow = {m.strip() for m in answer.headers.get("Allow", "").split(",")}
                    error = (
                        orjson.loads(body) if answer.content_type == "application/json" else None
                    )
                    if (answer.status, allow) != (405, served) or not (
                        error_schema.is_valid(error)
                        and error["error"]["code"] == "method_not_allowed"
                    ):
                        problems.append(
                            f"{method} {path}: {answer.status} "
                            f"Allow={answer.headers.get('Allow')!r} {body[:120]!r}"
                        )
    assert not problems, f"{len(problems)} wrong answers, e.g.:\n" + "\n".join(problems[:5])


def _edge_cases() -> list[tuple[str, str, dict]]:
    """Inputs the fuzzers found to break the gateway, pinned so that every CI run sends them
    (a random draw may miss them): NUL, which PostgreSQL text cannot hold, in every string
    that reaches the database, and the first and last days of the calendar."""
    nul_fields = [
        ("reference", "a\x00b"),
        ("description", "\x00"),
        ("metadata", {"k": "\x00"}),
        ("metadata", {"k\x00": "v"}),
        ("customer", {"email": "a\x00@example.com"}),
        ("payment_method", {"type": "card", "card": card(holder_name="A\x00")}),
        ("payment_method", {"type": "token", "token": "tok_\x00"}),
    ]
    cases = [
        ("/v1/payments", "POST", {"body": payment_body(**{name: value})})
        for name, value in nul_fields
    ]
    cases.append(("/v1/tokens", "POST", {"body": {"card": card(holder_name="\x00")}}))
    for path, method in (
        ("/v1/payments/{id}", "GET"),
        ("/v1/payments/{id}/capture", "POST"),
        ("/v1/payments/{id}/void", "POST"),
        ("/v1/payments/{id}/refunds", "POST"),
        ("/v1/refunds/{id}", "GET"),
    ):
        prefix = "re" if path.startswith("/v1/refunds") else "pay"
        cases.append((path, method, {"path_parameters": {"id": f"{prefix}_\x00"}}))
    cases.append(("/v1/payments", "GET", {"query": {"starting_after": "pay_\x00"}}))
    for day in ("0001-01-01", "9999-12-31"):
        for format_ in ("json", "csv"):
            cases.append(
                ("/v1/reports/settlement", "GET", {"query": {"date": day, "format": format_}})
            )
    return cases


async def test_edge_inputs_found_by_fuzzing(fuzz_target: Target):
    """Each edge input answered as the document says (all the checks above, no 5xx), and
    refused (400) where the document refuses it."""
    headers = {"Authorization": f"Bearer {fuzz_target.secret}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        fresh = {}
        for operation, capture, number in (
            ("capture", "manual", "4111111111111111"),
            ("void", "manual", "4012888888881881"),
            ("refunds", "automatic", "5105105105105100"),
        ):
            # Cards the fuzzing never sends: its own have met the velocity limits by now.
            async with session.post(
                fuzz_target.url + "/v1/payments", json=payment_body(number, capture=capture)
            ) as answer:
                assert answer.status == 201, await answer.text()
                fresh[operation] = (await answer.json())["id"]
    cases = [(path, method, parts, None) for path, method, parts in _edge_cases()]
    # What the document refuses and the gateway must refuse too (negative_data_rejection
    # does not judge hand-made cases): a date that is not RFC 3339's YYYY-MM-DD (Python's
    # fromisoformat also takes 20240101 and 2024-W01-1), a customer.ip over 45 characters
    # (an IPv6 address with a zone id), and a JSON null body, which is not an object, on
    # capture, void and refund as on every other POST.
    cases += [
        ("/v1/reports/settlement", "GET", {"query": {"date": day}}, 400)
        for day in ("20240101", "2024-W01-1")
    ]
    cases.append(
        (
            "/v1/payments",
            "POST",
            {"body": payment_body(customer={"ip": "fe80::1%" + "e" * 40})},
            400,
        )
    )
    cases += [
        (
            f"/v1/payments/{{id}}/{operation}",
            "POST",
            {"path_parameters": {"id": payment_id}, "body": None, "media_type": "application/json"},
            400,
        )
        for operation, payment_id in fresh.items()
    ]
    problems = []
    for path, method, parts, expected in cases:
        case = schema[path][method].Case(headers=dict(headers), **parts)
        try:
            response = await asyncio.to_thread(case.call_and_validate, base_url=fuzz_target.url)
        except BaseExceptionGroup as failure:  # Schemathesis's FailureGroup, one per check
            titles = "; ".join(str(error).splitlines()[0] for error in failure.exceptions)
            problems.append(f"{method} {path} {parts}: {titles}")
        else:
            if expected is not None and response.status_code != expected:
                problems.append(
                    f"{method} {path} {parts}: {response.status_code}, not "
                    f"{expected}: {response.text[:200]}"
                )
    assert not problems, "\n".join(problems)
