"""Hypothesis fuzz of the core's validation and request fingerprints, in both builds.

Arbitrary JSON-like values (None, booleans, integers up to 10**100, floats with NaN, the
infinities, -0.0 and integral values, text with lone surrogates, NULs, astral and combining
characters, Unicode digits and digits with spaces, nested lists, objects with any keys) and
near-valid bodies (a valid payment, token, capture or refund body with up to three fields
deleted, replaced by such values, or joined by an unknown one) go into every validator of
``core_ext.{pure,compiled}.validation``. Each must return a value or raise ``CoreError``,
never anything else, must leave its input as it was, and both builds must give the same
answer (the same ``as_dict()``/value, or the same ``CoreError.as_tuple()``). What a
payment validation accepts is checked against API.md's rules, and every valid body drawn
from API.md's rules must be accepted. ``canonical_json`` and ``request_fingerprint`` take
every value ``orjson.loads`` can return, up to orjson's nesting limit of 1024: they raise
``ValueError`` exactly when containers nest deeper than ``MAX_DEPTH`` and otherwise agree
with ``json.dumps`` and across builds.

CI form (part of ``scripts/test``; derandomized, so every run draws the same examples)::

    .venv/bin/python -m pytest tests/core/test_validation_fuzz.py

A long run (``KASSA_FUZZ_EXAMPLES`` scales both fuzzers: the API fuzz runs that many
examples per operation, this one five times as many per property; ``KASSA_FUZZ_SEED=random``
draws fresh examples each run, an integer replays one seed)::

    KASSA_FUZZ_EXAMPLES=2000 KASSA_FUZZ_SEED=random .venv/bin/python -m pytest \\
        tests/core/test_validation_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from multidict import MultiDict, MultiDictProxy

import core_ext
from core_ext.errors import CoreError

EXAMPLES = 5 * int(os.environ.get("KASSA_FUZZ_EXAMPLES", "100"))
SEED_SETTING = os.environ.get("KASSA_FUZZ_SEED", "")
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=SEED_SETTING == "",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


pytestmark = pytest.mark.timeout(120 + EXAMPLES // 50)  # long runs take longer


def fuzz(test):
    """FUZZ settings, and a fixed seed if KASSA_FUZZ_SEED names one."""
    if SEED_SETTING not in ("", "random"):
        test = seed(int(SEED_SETTING))(test)
    return FUZZ(test)


PURE = core_ext.implementation("pure")
COMPILED = core_ext.implementation("compiled")
BUILDS = (COMPILED, PURE)
TODAY = (2026, 11)  # passed in (the core never reads the clock); expiries are relative to it

# --- arbitrary JSON-like values ------------------------------------------------------------

FIELD_NAMES = (
    "amount",
    "currency",
    "capture",
    "confirm",
    "payment_method",
    "reference",
    "description",
    "metadata",
    "customer",
    "type",
    "card",
    "token",
    "number",
    "exp_month",
    "exp_year",
    "cvc",
    "holder_name",
    "email",
    "ip",
    "reason",
    "limit",
    "starting_after",
    "status",
)
FIELD_VALUES = (
    "card",
    "token",
    "tok_",
    "tok_1",
    "pay_",
    "pay_1",
    "manual",
    "automatic",
    "eur",
    "EUR",
    "jpy",
    "xxx",
    "eu",
    "\u0130SK",
    "duplicate",
    "fraudulent",
    "requested_by_customer",
    "captured",
    "4242424242424242",
    "4242 4242 4242 4242",
    "378282246310005",
    "123",
    "1234",
    "ada@example.com",
    "a@b@c",
    "@",
    "203.0.113.9",
    "::1",
    "1::2::3",
    "010.0.0.1",
    "100",
    "101",
    "0",
    "10",
    "007",
    "",
)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
utf8_text = st.text(st.characters(codec="utf-8"), max_size=24)  # what orjson can return
digit_text = st.text(st.sampled_from("0123456789 "), max_size=24) | st.text(
    st.sampled_from("0123456789 \x00\t-\u0663\uff13\u00b2"), max_size=24
)
texts = any_text | utf8_text | digit_text | st.sampled_from(FIELD_VALUES)
integers = (
    st.integers()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from(
        (
            0,
            1,
            -1,
            12,
            13,
            999,
            1000,
            TODAY[0] - 1,
            TODAY[0],
            TODAY[0] + 50,
            TODAY[0] + 51,
            9999,
            10000,
            99_999_999,
            100_000_000,
            2**31 - 1,
            2**31,
            2**63 - 1,
            2**63,
            2**64 - 1,
            2**64,
            10**100,
            -(10**100),
        )
    )
)
floats = (
    st.floats()
    | st.integers(-(10**6), 10**6).map(float)
    | st.sampled_from(
        (
            math.nan,
            math.inf,
            -math.inf,
            -0.0,
            1e308,
            5e-324,
            1999.0,
            12.0,
            float(TODAY[0] + 4),
        )
    )
)
scalars = st.none() | st.booleans() | integers | floats | texts
keys = texts | st.sampled_from(FIELD_NAMES)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=6),
    max_leaves=25,
)

# --- valid bodies, by API.md's rules -----------------------------------------------------

CARDS = {  # number -> brand
    "4242424242424242": "visa",
    "4242 4242 4242 4242": "visa",
    "5555555555554444": "mastercard",
    "2223003122003222": "mastercard",
    "378282246310005": "amex",
    "6011111111111117": "discover",
    "3566002020360505": "jcb",
    "30569309025904": "diners",
    "6200000000000005": "unionpay",
    "4000000000000002": "visa",
    "4000000000000119": "visa",
}
clean_text = st.characters(codec="utf-8", exclude_characters="\x00")


def any_case(code: str):
    return st.lists(st.booleans(), min_size=3, max_size=3).map(
        lambda upper: "".join(
            c.upper() if u else c.lower() for c, u in zip(code, upper, strict=True)
        )
    )


currencies = st.sampled_from(sorted(PURE.validation.CURRENCY_EXPONENTS)).flatmap(any_case)
expiries = st.one_of(  # not in the past, at most 50 years ahead of TODAY
    st.tuples(st.integers(TODAY[1], 12), st.just(TODAY[0])),
    st.tuples(st.integers(1, 12), st.integers(TODAY[0] + 1, TODAY[0] + 50)),
)
valid_cards = st.builds(
    lambda number, expiry, holder: {
        "number": number,
        "exp_month": expiry[0],
        "exp_year": expiry[1],
        "cvc": "1234" if CARDS[number] == "amex" else "123",
        **({} if holder is None else {"holder_name": holder}),
    },
    st.sampled_from(sorted(CARDS)),
    expiries,
    st.none() | st.text(clean_text, min_size=1, max_size=200),
)
ip_addresses = st.ip_addresses().map(str)
emails = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(st.characters(codec="ascii", exclude_characters="@\x00"), min_size=1, max_size=20),
    st.text(st.characters(codec="ascii", exclude_characters="@\x00"), min_size=1, max_size=20),
)
valid_payments = st.fixed_dictionaries(
    {
        "amount": st.integers(1, 99_999_999),
        "currency": currencies,
        "payment_method": st.one_of(
            st.fixed_dictionaries({"type": st.just("card"), "card": valid_cards}),
            st.fixed_dictionaries(
                {
                    "type": st.just("token"),
                    "token": st.from_regex(r"tok_[A-Za-z0-9]{1,40}", fullmatch=True),
                }
            ),
        ),
    },
    optional={
        "capture": st.sampled_from(("automatic", "manual")),
        "confirm": st.booleans(),
        "reference": st.text(clean_text, min_size=1, max_size=255),
        "description": st.text(clean_text, max_size=1000),
        "metadata": st.dictionaries(
            st.text(clean_text, min_size=1, max_size=40),
            st.text(clean_text, max_size=500),
            max_size=20,
        ),
        "customer": st.fixed_dictionaries({}, optional={"email": emails, "ip": ip_addresses}),
    },
)
valid_tokens = st.fixed_dictionaries({"card": valid_cards})
valid_captures = st.fixed_dictionaries({}, optional={"amount": st.integers(1, 99_999_999)})
valid_refunds = st.fixed_dictionaries(
    {},
    optional={
        "amount": st.integers(1, 99_999_999),
        "reason": st.sampled_from(("duplicate", "fraudulent", "requested_by_customer")),
    },
)


def _places(value: object, path: tuple = ()):
    """Every container in ``value`` (where a field can be added) and every field in it."""
    if isinstance(value, dict):
        yield path, None
        for key, item in value.items():
            yield path, key
            yield from _places(item, (*path, key))


def _at(value: object, path: tuple) -> dict:
    for key in path:
        value = value[key]
    return value


@st.composite
def near_valid(draw, valid):
    """A valid body with up to three fields deleted, replaced or added."""
    body = copy.deepcopy(draw(valid))
    for _ in range(draw(st.integers(0, 3))):
        path, key = draw(st.sampled_from(list(_places(body))))
        container = _at(body, path)
        if key is None or draw(st.booleans()):  # add a field, known or not
            container[draw(keys)] = draw(json_values)
        elif draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(texts | integers | json_values)
    return body


# --- the properties --------------------------------------------------------------------


def outcome(function, *args) -> tuple:
    """("ok", the value as plain data) or ("error", CoreError.as_tuple()); anything else
    that escapes fails the test. The input must come out unchanged."""
    before = repr(args)
    try:
        result = function(*args)
    except CoreError as error:
        answer = ("error", error.as_tuple())
    except Exception as error:  # any other exception is exactly what this test is about
        raise AssertionError(
            f"{function.__module__}.{function.__name__}{args!r:.300} raised "
            f"{type(error).__name__}: {error}"
        ) from error
    else:
        answer = ("ok", result.as_dict() if hasattr(result, "as_dict") else result)
    assert repr(args) == before, f"{function.__name__} changed its input"
    return answer


def same_in_both_builds(name: str, *args) -> tuple:
    compiled, pure = (outcome(getattr(build.validation, name), *args) for build in BUILDS)
    assert compiled == pure and repr(compiled) == repr(pure), (name, args, compiled, pure)
    return compiled


BODY_VALIDATORS = (
    "validate_capture",
    "validate_void",
    "validate_refund",
    "check_json_depth",
    "currency_exponent",
)


@fuzz
@given(
    value=json_values
    | near_valid(valid_payments)
    | near_valid(valid_tokens)
    | near_valid(valid_captures)
    | near_valid(valid_refunds),
    today=st.just(TODAY) | st.tuples(st.integers(1970, 2200), st.integers(1, 12)),
)
def test_validators_answer_only_core_errors_and_both_builds_agree(value, today):
    same_in_both_builds("validate_payment", value, *today)
    same_in_both_builds("validate_token", value, *today)
    for name in BODY_VALIDATORS:
        same_in_both_builds(name, value)


@fuzz
@given(body=near_valid(valid_payments) | valid_payments)
def test_payment_validation_accepts_only_what_api_md_allows(body):
    kind, answer = same_in_both_builds("validate_payment", body, *TODAY)
    if kind == "error":
        status, type_, _code, param, message = answer
        assert (status, type_) == (400, "invalid_request_error")
        card = _card_of(body)
        number = card.get("number") if card is not None else None
        digits = number.replace(" ", "") if isinstance(number, str) else ""
        if len(digits) >= 12 and digits not in (param or ""):  # (unless it is a field's name)
            assert digits not in message  # the number is never echoed
        return
    assert answer["amount"] == body["amount"] and type(body["amount"]) is int
    assert 1 <= answer["amount"] <= 99_999_999
    assert answer["currency"] == body["currency"].upper()
    assert answer["currency"] in PURE.validation.CURRENCY_EXPONENTS
    assert answer["capture"] == body.get("capture", "automatic")
    assert answer["capture"] in ("automatic", "manual")
    assert answer["confirm"] is body.get("confirm", True)
    method = body.get("payment_method")
    if method is None:  # the payment waits in requires_payment_method
        assert answer["card"] is None and answer["token"] is None
    elif method["type"] == "card":
        card, given_card = answer["card"], method["card"]
        assert answer["token"] is None and set(method) == {"type", "card"}
        assert card["number"] == given_card["number"].replace(" ", "")
        assert card["number"].isascii() and card["number"].isdigit()
        assert 12 <= len(card["number"]) <= 19
        assert PURE.validation.luhn_valid(card["number"])
        assert card["brand"] == PURE.validation.card_brand(card["number"])
        assert card["last4"] == card["number"][-4:]
        assert type(card["exp_month"]) is int and 1 <= card["exp_month"] <= 12
        assert type(card["exp_year"]) is int
        assert (card["exp_year"], card["exp_month"]) >= TODAY
        assert card["exp_year"] <= TODAY[0] + 50
        assert card["cvc"].isascii() and card["cvc"].isdigit()
        assert len(card["cvc"]) == (4 if card["brand"] == "amex" else 3)
        assert card["holder_name"] is None or 1 <= len(card["holder_name"]) <= 200
    else:
        assert answer["card"] is None and set(method) == {"type", "token"}
        assert answer["token"] == method["token"] and answer["token"].startswith("tok_")
        assert len(answer["token"]) <= 255
    assert answer["reference"] is None or 1 <= len(answer["reference"]) <= 255
    assert answer["description"] is None or len(answer["description"]) <= 1000
    assert len(answer["metadata"]) <= 20
    for key, item in answer["metadata"].items():
        assert 1 <= len(key) <= 40 and type(item) is str and len(item) <= 500
    customer = answer["customer"]
    if customer is not None:
        assert set(customer) == {"email", "ip"}
        assert customer["email"] is None or "@" in customer["email"]
        if customer["ip"] is not None:
            ipaddress.ip_address(customer["ip"])
    assert set(body) <= set(PURE.validation.PAYMENT_FIELDS)


def _card_of(body: object):
    method = body.get("payment_method") if isinstance(body, dict) else None
    card = method.get("card") if isinstance(method, dict) else None
    return card if isinstance(card, dict) else None


@fuzz
@given(payment=valid_payments, token=valid_tokens, capture=valid_captures, refund=valid_refunds)
def test_every_valid_body_is_accepted(payment, token, capture, refund):
    assert same_in_both_builds("validate_payment", payment, *TODAY)[0] == "ok"
    assert same_in_both_builds("validate_token", token, *TODAY)[0] == "ok"
    assert same_in_both_builds("validate_capture", capture) == ("ok", capture.get("amount"))
    assert same_in_both_builds("validate_void", {}) == ("ok", None)
    assert same_in_both_builds("validate_refund", refund) == (
        "ok",
        (refund.get("amount"), refund.get("reason")),
    )


query_strings = texts | st.sampled_from(("1", "10", "100", "pay_1", "captured", "refunded"))
query_keys = st.sampled_from(("limit", "starting_after", "status")) | texts


@fuzz
@given(pairs=st.lists(st.tuples(query_keys, query_strings), max_size=6))
def test_list_query_answers_only_core_errors_on_any_query_string(pairs):
    """The gateway passes aiohttp's query: a MultiDictProxy of str to str, keys repeatable."""
    kind, answer = same_in_both_builds("validate_list_query", MultiDictProxy(MultiDict(pairs)))
    same_in_both_builds("validate_list_query", dict(pairs))
    if kind == "ok":
        limit, starting_after, status = answer
        assert 1 <= limit <= 100
        assert starting_after is None or starting_after.startswith("pay_")
        assert status is None or status in PURE.validation.STATUSES


@fuzz
@given(value=json_values)
def test_list_query_answers_only_core_errors_on_any_json(value):
    same_in_both_builds("validate_list_query", value)


@fuzz
@given(text=texts)
def test_luhn_and_brand_on_any_text(text):
    compiled, pure = COMPILED.validation, PURE.validation
    valid = compiled.luhn_valid(text)
    assert valid is pure.luhn_valid(text) and type(valid) is bool
    assert valid == _luhn(text)
    brand = compiled.card_brand(text)
    assert brand == pure.card_brand(text)
    assert brand in (
        "visa",
        "mastercard",
        "amex",
        "discover",
        "jcb",
        "diners",
        "unionpay",
        "unknown",
    )
    if not (text.isascii() and text.isdigit()) or len(text) < 6:
        assert brand == "unknown"


def _luhn(text: str) -> bool:
    if not (text.isascii() and text.isdigit()):
        return False
    total = 0
    for index, char in enumerate(reversed(text)):
        digit = int(char) * (2 if index % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


# --- canonical_json and request_fingerprint --------------------------------------------

orjson_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | utf8_text
)
orjson_values = st.recursive(
    orjson_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(utf8_text, children, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def deep_json(draw):
    """Any value orjson can return, nested inside up to orjson's limit of 1024 levels."""
    value = draw(orjson_values)
    inner = orjson.dumps(value)
    depth = min(
        draw(st.integers(0, 1024) | st.sampled_from((510, 511, 512, 513, 514))),
        1024 - nesting(value),
    )
    kinds = draw(st.integers(0, 2**depth - 1))  # one draw, not one per level: arrays or objects
    opens = [b"[" if kinds >> level & 1 else b'{"k":' for level in range(depth)]
    text = b"".join(opens) + inner + b"".join(b"]" if o == b"[" else b"}" for o in reversed(opens))
    return orjson.loads(text)


def nesting(value: object) -> int:
    """Containers on the deepest path: 0 for a scalar, 1 for [] (iterative: values go deeper
    than Python's recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            level += 1
            deepest = max(deepest, level)
            stack.extend(
                (child, level) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def fingerprint_outcome(idempotency, function: str, *args) -> tuple:
    try:
        return ("ok", getattr(idempotency, function)(*args))
    except ValueError as error:
        return ("ValueError", str(error))


@fuzz
@given(value=orjson_values | deep_json(), method=any_text, path=any_text, merchant=any_text)
def test_fingerprints_take_whatever_orjson_returns(value, method, path, merchant):
    max_depth = PURE.idempotency.MAX_DEPTH
    assert max_depth == COMPILED.idempotency.MAX_DEPTH
    for function, args in (
        ("canonical_json", (value,)),
        ("request_fingerprint", (method, path, merchant, value)),
    ):
        compiled, pure = (
            fingerprint_outcome(build.idempotency, function, *args) for build in BUILDS
        )
        assert compiled == pure, function
        if nesting(value) > max_depth:
            assert compiled == ("ValueError", "JSON value nested too deeply"), function
        else:
            assert compiled[0] == "ok", (function, compiled)
    if nesting(value) <= max_depth:
        canonical = PURE.idempotency.canonical_json(value)
        assert (
            canonical
            == json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        )
        assert orjson.loads(canonical) == value
        assert len(PURE.idempotency.request_fingerprint(method, path, merchant, value)) == 32


@fuzz
@given(a=orjson_values, b=orjson_values, fields=st.lists(any_text, min_size=6, max_size=6))
def test_fingerprints_differ_exactly_when_requests_do(a, b, fields):
    fingerprint = COMPILED.idempotency.request_fingerprint
    canonical = COMPILED.idempotency.canonical_json
    first, second = (fields[:3], a), (fields[3:], b)
    same = first[0] == second[0] and canonical(a) == canonical(b)
    assert (fingerprint(*first[0], a) == fingerprint(*second[0], b)) is same
    assert fingerprint(*first[0], a) != fingerprint(*first[0], [a])


def test_the_fuzzers_reach_both_sides():
    """The strategies above are not vacuous: near-valid bodies are sometimes accepted and
    sometimes refused, and deep values straddle MAX_DEPTH."""
    seen: set = set()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(body=near_valid(valid_payments), value=deep_json())
    def probe(body, value):
        seen.add(same_in_both_builds("validate_payment", body, *TODAY)[0])
        seen.add(nesting(value) > PURE.idempotency.MAX_DEPTH)

    probe()
    assert seen == {"ok", "error", True, False}
