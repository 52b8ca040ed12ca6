"""Request fingerprints and the in-process idempotency table (core_ext.*.idempotency)."""

import importlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BUILDS = ("compiled", "pure")
PROP = settings(max_examples=200, deadline=None)
FP_A, FP_B = b"a" * 32, b"b" * 32


def load(kind):
    module = importlib.import_module(f"core_ext.{kind}.idempotency")
    if kind == "compiled":
        assert module.__file__.endswith((".so", ".pyd")), "run setup.py build_ext --inplace"
    return module


@pytest.fixture(params=BUILDS, scope="module")
def idem(request):
    return load(request.param)


@pytest.fixture(scope="module")
def both():
    return load("compiled"), load("pure")


leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)


def oracle(value):
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8", "surrogatepass")


# ---- canonical_json ---------------------------------------------------------------------


def test_canonical_json_example(idem):
    body = {"b": [1, 1.0, True, None, "x"], "a": {"z": 'q"\\\n\x01é', "y": -0.0}}
    assert idem.canonical_json(body) == (
        '{"a":{"y":-0.0,"z":"q\\"\\\\\\n\\u0001é"},"b":[1,1.0,true,null,"x"]}'.encode()
    )


def test_scalar_types_are_distinct(idem):
    encoded = [idem.canonical_json(v) for v in (1, 1.0, True, "1", None, "true", "null", 0, False)]
    assert len(set(encoded)) == len(encoded)
    assert idem.canonical_json({"a": 1}) != idem.canonical_json({"a": "1"})


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", object(), {1: "int key"}, [1, {"a": {2}}]])
def test_non_json_types_raise_type_error(idem, value):
    with pytest.raises(TypeError):
        idem.canonical_json(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"a": [math.nan]}])
def test_non_finite_floats_rejected(idem, value):
    with pytest.raises(ValueError):
        idem.canonical_json(value)


def test_nesting_limit(idem):
    ok = []
    for _ in range(idem.MAX_DEPTH - 1):
        ok = [ok]
    assert idem.canonical_json(ok) == b"[" * idem.MAX_DEPTH + b"]" * idem.MAX_DEPTH
    with pytest.raises(ValueError):
        idem.canonical_json([ok])


def test_subclasses_encode_as_their_base(idem):
    class Loud(str):
        def __str__(self):
            return "LOUD"

    class Weird(int):
        def __repr__(self):
            return "weird"

    assert idem.canonical_json({"k": Loud("v"), "n": Weird(7)}) == b'{"k":"v","n":7}'


def test_tuples_are_arrays_and_lone_surrogates_stay_distinct(idem):
    assert idem.canonical_json((1, "a")) == idem.canonical_json([1, "a"]) == b'[1,"a"]'
    assert idem.canonical_json("\ud800") != idem.canonical_json("\ud801")
    assert idem.canonical_json("\ud83d\ude00") != idem.canonical_json("\U0001f600")


@PROP
@given(value=json_values)
def test_canonical_json_matches_json_dumps(idem, value):
    assert idem.canonical_json(value) == oracle(value)


@PROP
@given(text=st.text(st.characters(codec=None, exclude_categories=()), max_size=30))
def test_string_escaping_round_trips(idem, text):
    encoded = idem.canonical_json(text)
    assert encoded == oracle(text)
    assert json.loads(encoded.decode("utf-8", "surrogatepass")) == text


# ---- request_fingerprint ----------------------------------------------------------------


def fp(idem, body, method="POST", path="/v1/payments", merchant="mer_1"):
    return idem.request_fingerprint(method, path, merchant, body)


def shuffled(data, value):
    if isinstance(value, dict):
        keys = data.draw(st.permutations(list(value)))
        return {k: shuffled(data, value[k]) for k in keys}
    if isinstance(value, list):
        return [shuffled(data, v) for v in value]
    return value


def leaf_paths(value, path=()):
    # Empty containers count as leaves: replacing one changes the body too.
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from leaf_paths(v, (*path, k))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from leaf_paths(v, (*path, i))
    else:
        yield path


def replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def get(value, path):
    for part in path:
        value = value[part]
    return value


def same_json(a, b):
    return type(a) is type(b) and repr(a) == repr(b)


def test_fingerprint_shape(idem):
    digest = fp(idem, {"amount": 100})
    assert isinstance(digest, bytes) and len(digest) == 32
    assert digest == fp(idem, {"amount": 100})


@PROP
@given(value=json_values, data=st.data())
def test_fingerprint_ignores_key_order(idem, value, data):
    other = shuffled(data, value)
    assert idem.canonical_json(other) == idem.canonical_json(value)
    assert fp(idem, other) == fp(idem, value)


@PROP
@given(value=json_values, data=st.data())
def test_fingerprint_changes_with_any_leaf(idem, value, data):
    path = data.draw(st.sampled_from(list(leaf_paths(value))))
    old = get(value, path)
    new = data.draw(leaves.filter(lambda v: not same_json(v, old)))
    assert fp(idem, replaced(value, path, new)) != fp(idem, value)


def test_fingerprint_depends_on_method_path_merchant_and_keys(idem):
    base = fp(idem, {"amount": 1})
    assert fp(idem, {"amount": 1}, method="PUT") != base
    assert fp(idem, {"amount": 1}, path="/v1/tokens") != base
    assert fp(idem, {"amount": 1}, merchant="mer_2") != base
    assert fp(idem, {"amounts": 1}) != base
    assert fp(idem, {"amount": 1, "x": None}) != base


def test_fingerprint_fields_are_delimited(idem):
    # Moving characters across a field boundary must not collide.
    assert idem.request_fingerprint("POST", "/v1/ab", "c", 1) != idem.request_fingerprint(
        "POST", "/v1/a", "bc", 1
    )
    assert idem.request_fingerprint("POS", "T/v1", "m", 1) != idem.request_fingerprint(
        "POST", "/v1", "m", 1
    )
    assert idem.request_fingerprint("POST", "/v1", "m1", "x") != idem.request_fingerprint(
        "POST", "/v1", "m", '1"x'
    )


def test_fingerprint_rejects_non_str_fields(idem):
    with pytest.raises(TypeError):
        idem.request_fingerprint(b"POST", "/v1", "m", {})
    with pytest.raises(TypeError):
        idem.request_fingerprint("POST", "/v1", "m", {"a": b"x"})


# ---- IdempotencyCache -------------------------------------------------------------------


def test_constants(idem):
    assert (idem.NEW, idem.REPLAY, idem.IN_FLIGHT, idem.REUSED) == (
        "new",
        "replay",
        "in_flight",
        "reused",
    )


@pytest.mark.parametrize(
    "stored,completed,fingerprint,expected",
    [
        (FP_A, True, FP_A, "replay"),
        (FP_A, False, FP_A, "in_flight"),
        (FP_A, True, FP_B, "reused"),
        (FP_A, False, FP_B, "reused"),  # a different body outranks in-flight
    ],
)
def test_verdict(idem, stored, completed, fingerprint, expected):
    assert idem.verdict(stored, completed, fingerprint) == expected


def test_verdict_is_exported_from_the_loaded_core():
    import core_ext

    assert core_ext.idempotency.verdict(FP_A, False, FP_B) == core_ext.idempotency.REUSED


@PROP
@given(stored=st.binary(max_size=4), completed=st.booleans(), fingerprint=st.binary(max_size=4))
def test_parity_verdict(both, stored, completed, fingerprint):
    compiled, pure = both
    answer = compiled.verdict(stored, completed, fingerprint)
    assert answer == pure.verdict(stored, completed, fingerprint)
    assert answer == ("reused" if stored != fingerprint else "replay" if completed else "in_flight")


def test_cache_lifecycle(idem):
    cache = idem.IdempotencyCache(10, 60.0)
    assert cache.lookup("m", "k", FP_A, 0.0) == ("new", None)
    cache.begin("m", "k", FP_A, 0.0)
    assert cache.lookup("m", "k", FP_A, 1.0) == ("in_flight", None)
    # A different body outranks in-flight (API.md): 422 on every process.
    assert cache.lookup("m", "k", FP_B, 1.0) == ("reused", None)
    cache.complete("m", "k", FP_A, 201, b'{"id":"pay_1"}', 2.0)
    assert cache.lookup("m", "k", FP_A, 3.0) == ("replay", (201, b'{"id":"pay_1"}'))
    assert cache.lookup("m", "k", FP_B, 3.0) == ("reused", None)
    assert len(cache) == 1


def test_keys_are_scoped_by_merchant(idem):
    cache = idem.IdempotencyCache(10, 60.0)
    cache.complete("m1", "k", FP_A, 201, b"x", 0.0)
    assert cache.lookup("m2", "k", FP_A, 0.0) == ("new", None)
    assert cache.lookup("m1", "k2", FP_A, 0.0) == ("new", None)


def test_retention_from_claim(idem):
    cache = idem.IdempotencyCache(10, 100.0)
    cache.begin("m", "k", FP_A, 0.0)
    cache.complete("m", "k", FP_A, 402, b"declined", 50.0)
    assert cache.lookup("m", "k", FP_A, 100.0) == ("replay", (402, b"declined"))
    assert cache.lookup("m", "k", FP_A, 100.5) == ("new", None)
    assert len(cache) == 0  # the stale entry is dropped


def test_complete_without_begin_starts_retention(idem):
    cache = idem.IdempotencyCache(10, 100.0)
    cache.complete("m", "k", FP_A, 201, b"x", 500.0)
    assert cache.lookup("m", "k", FP_A, 600.0)[0] == "replay"
    assert cache.lookup("m", "k", FP_A, 600.1)[0] == "new"


def test_in_flight_entries_expire_too(idem):
    cache = idem.IdempotencyCache(10, 5.0)
    cache.begin("m", "k", FP_A, 0.0)
    assert cache.lookup("m", "k", FP_A, 6.0) == ("new", None)


def test_lru_eviction(idem):
    cache = idem.IdempotencyCache(3, 1000.0)
    for key in ("a", "b", "c"):
        cache.complete("m", key, FP_A, 201, key.encode(), 0.0)
    assert cache.lookup("m", "a", FP_A, 1.0)[0] == "replay"  # a is now most recent
    cache.begin("m", "d", FP_A, 2.0)  # evicts b, the least recent
    assert len(cache) == 3
    assert cache.lookup("m", "b", FP_A, 3.0) == ("new", None)
    assert cache.lookup("m", "d", FP_A, 3.0) == ("in_flight", None)
    assert cache.lookup("m", "c", FP_A, 3.0) == ("replay", (201, b"c"))
    assert cache.lookup("m", "a", FP_A, 3.0) == ("replay", (201, b"a"))
    cache.complete("m", "e", FP_A, 201, b"e", 4.0)  # evicts d (c, a were looked up later)
    assert cache.lookup("m", "d", FP_A, 5.0) == ("new", None)
    assert len(cache) == 3


def test_capacity_zero_stores_nothing(idem):
    cache = idem.IdempotencyCache(0, 10.0)
    cache.begin("m", "k", FP_A, 0.0)
    assert len(cache) == 0
    assert cache.lookup("m", "k", FP_A, 0.0) == ("new", None)


def test_discard(idem):
    cache = idem.IdempotencyCache(10, 10.0)
    cache.begin("m", "k", FP_A, 0.0)
    cache.discard("m", "k")
    cache.discard("m", "missing")
    assert len(cache) == 0
    assert cache.lookup("m", "k", FP_A, 1.0) == ("new", None)


@pytest.mark.parametrize("args", [(-1, 10.0), (10, 0.0), (10, -1.0)])
def test_cache_rejects_bad_configuration(idem, args):
    with pytest.raises(ValueError):
        idem.IdempotencyCache(*args)


@pytest.mark.parametrize("code", [0, 99, 600])
def test_complete_rejects_non_http_status(idem, code):
    cache = idem.IdempotencyCache(10, 10.0)
    with pytest.raises(ValueError):
        cache.complete("m", "k", FP_A, code, b"", 0.0)


# ---- compiled and pure agree ------------------------------------------------------------


@PROP
@given(
    value=json_values,
    method=st.sampled_from(("POST", "GET")),
    path=st.text(max_size=20),
    merchant=st.text(max_size=12),
)
def test_parity_canonical_json_and_fingerprint(both, value, method, path, merchant):
    compiled, pure = both
    assert compiled.canonical_json(value) == pure.canonical_json(value)
    assert compiled.request_fingerprint(method, path, merchant, value) == pure.request_fingerprint(
        method, path, merchant, value
    )


cache_ops = st.lists(
    st.tuples(
        st.sampled_from(("lookup", "begin", "complete", "discard")),
        st.sampled_from(("m1", "m2")),
        st.sampled_from(("k1", "k2", "k3", "k4")),
        st.sampled_from((FP_A, FP_B)),
        st.floats(0, 5),
    ),
    max_size=30,
)


@PROP
@given(ops=cache_ops, capacity=st.integers(0, 4))
def test_parity_cache(both, ops, capacity):
    caches = [m.IdempotencyCache(capacity, 7.0) for m in both]
    now = 0.0
    for op, merchant, key, fingerprint, step in ops:
        now += step
        results = []
        for cache in caches:
            if op == "lookup":
                results.append(cache.lookup(merchant, key, fingerprint, now))
            elif op == "begin":
                results.append(cache.begin(merchant, key, fingerprint, now))
            elif op == "complete":
                results.append(cache.complete(merchant, key, fingerprint, 201, key.encode(), now))
            else:
                results.append(cache.discard(merchant, key))
            results.append(len(cache))
        assert results[:2] == results[2:]
        assert results[1] <= capacity
