"""The Stripe form decoder and its coercions (core_ext/pure/forms.py), on both builds.

The round trip is the contract: whatever the official SDK (stripe==16.1.0) encodes, with its
own encoder, decodes back to the structure it came from."""

from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stripe._encode import _api_encode

from core_ext.errors import CoreError


def sdk_body(params: dict) -> bytes:
    """Exactly the body stripe-python POSTs (_api_requestor: urlencode(list(_api_encode)))."""
    return urlencode(list(_api_encode(params))).encode()


def expected(value, raw_bool: bool = False):
    """What a value decodes to: strings as sent, "" as the unset marker None. The SDK
    lower-cases bools, except the items of a list that is a dict's value: those it sends as
    str(bool) (a list in a list it re-encodes as a dict, which lower-cases again)."""
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expected(v, raw_bool=not raw_bool) for v in value]
    if isinstance(value, bool):
        return str(value) if raw_bool else str(value).lower()
    text = str(value)
    return text if text else None


def names_deep(value) -> int:
    """Names in the longest key the SDK makes of ``value`` (a top-level key is 1)."""
    if isinstance(value, dict):
        return 1 + max((names_deep(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((names_deep(v) for v in value), default=0)
    return 0


# What the SDK's encoding can carry without loss (module docstring of forms.py): keys
# without brackets, non-empty; containers non-empty; a dict's first key not "0".
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
KEY = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True),
    st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="[]"), min_size=1, max_size=8
    ),
)
LEAF = st.one_of(TEXT, st.integers(-(10**12), 10**12), st.booleans())


def _nested(children):
    dicts = st.dictionaries(KEY, children, min_size=1, max_size=4).filter(
        lambda d: next(iter(d)) != "0"
    )
    return st.one_of(dicts, st.lists(children, min_size=1, max_size=4))


PARAMS = st.dictionaries(
    KEY, st.recursive(LEAF, _nested, max_leaves=30), min_size=0, max_size=8
).filter(lambda d: names_deep(d) <= 10)


@settings(max_examples=300, deadline=None)
@given(params=PARAMS)
def test_what_the_sdk_encodes_decodes_back(compiled, pure, params):
    body = sdk_body(params)
    assert compiled.forms.decode(body) == expected(params)
    assert pure.forms.decode(body) == expected(params)


def test_a_payment_intent_create_as_the_sdk_sends_it(core):
    params = {
        "amount": 1999,
        "currency": "eur",
        "capture_method": "manual",
        "confirm": True,
        "payment_method": "pm_card_visa",
        "payment_method_types": ["card"],
        "metadata": {"order": "1001", "note": "two + items & more", "gone": ""},
        "expand": ["latest_charge", "payment_method"],
        "description": "",
    }
    assert core.forms.decode(sdk_body(params)) == {
        "amount": "1999",
        "currency": "eur",
        "capture_method": "manual",
        "confirm": "true",
        "payment_method": "pm_card_visa",
        "payment_method_types": ["card"],
        "metadata": {"order": "1001", "note": "two + items & more", "gone": None},
        "expand": ["latest_charge", "payment_method"],
        "description": None,  # Stripe's "unset"
    }


@pytest.mark.parametrize(
    "body,decoded",
    [
        (b"", {}),
        (b"a=1&&b=2&", {"a": "1", "b": "2"}),  # empty pieces are skipped
        (b"a", {"a": None}),  # a bare key is a=
        (b"a[]=x&a[]=y", {"a": ["x", "y"]}),
        (b"a[0]=x&a[]=y", {"a": ["x", "y"]}),
        (b"a[][b]=1&a[][c]=2", {"a": [{"b": "1"}, {"c": "2"}]}),  # [] always appends
        (b"a[0][b]=1&a[0][c]=2&a[1][b]=3", {"a": [{"b": "1", "c": "2"}, {"b": "3"}]}),
        (b"m[1]=x&m[0]=y", {"m": {"1": "x", "0": "y"}}),  # first key not 0: a dict
        (b"a=x%3Dy%26z", {"a": "x=y&z"}),
        (b"a=%zz%", {"a": "%zz%"}),  # a malformed escape stays literal (unquote_plus)
        (b"caf%C3%A9=cr%C3%A8me+br%C3%BBl%C3%A9e", {"café": "crème brûlée"}),
        ("café=1".encode(), {"café": "1"}),  # raw UTF-8 is read as such
        (b"a%5Bb%5D%5Bc%5D=1", {"a": {"b": {"c": "1"}}}),
        (b"a[b]=&a[c]=1", {"a": {"b": None, "c": "1"}}),
    ],
)
def test_decodes(core, body, decoded):
    assert core.forms.decode(body) == decoded


def test_a_query_string_decodes_too(core):
    assert core.forms.decode("limit=3&expand[]=data.latest_charge") == {
        "limit": "3",
        "expand": ["data.latest_charge"],
    }


def refused(core, body, code="parameter_invalid", status=400) -> CoreError:
    with pytest.raises(CoreError) as caught:
        core.forms.decode(body)
    assert (caught.value.code, caught.value.status) == (code, status), caught.value
    return caught.value


@pytest.mark.parametrize(
    "body,param",
    [
        (b"=x", None),
        (b"[a]=x", "[a]"),
        (b"a]=x", "a]"),
        (b"a[b=x", "a[b"),
        (b"a[b]c=x", "a[b]c"),
        (b"a[b[c]]=x", "a[b[c]]"),
        (b"a[b]]=x", "a[b]]"),
        (b"a=1&a=2", "a"),  # the same parameter twice
        (b"a=&a=2", "a"),
        (b"a=1&a[b]=2", "a"),  # a value and an object
        (b"a[b]=2&a=1", "a"),
        (b"a[b]=1&a[b][c]=2", "a[b]"),
        (b"a[0]=x&a[0]=y", "a[0]"),
        (b"a[0]=x&a[2]=y", "a[2]"),  # indices 0..n-1 in order
        (b"a[0]=x&a[b]=y", "a[b]"),
        (b"a[0]=x&a[01]=y", "a[01]"),
        (b"a[0]=x&a[-1]=y", "a[-1]"),
    ],
)
def test_malformed_keys_are_refused_naming_the_parameter(core, body, param):
    error = refused(core, body)
    assert error.param == param
    if param:
        assert param in error.message


def test_in_a_dict_brackets_name_an_ordinary_key(core):
    # m's first key is 1, so m is a dict, and "[]" names its key "" (once only).
    assert core.forms.decode(b"m[1]=x&m[]=z") == {"m": {"1": "x", "": "z"}}
    assert refused(core, b"m[1]=x&m[]=z&m[]=y").param == "m[]"


def test_depth_is_bounded(core):
    nine = b"a" + b"[b]" * 9
    assert core.forms.decode(nine + b"=1")  # 10 names
    error = refused(core, nine + b"[c]=1")
    assert error.param.startswith("a[b]") and "10" in error.message


def test_size_is_bounded(core):
    body = b"a=" + b"x" * (64 * 1024 - 2)
    assert core.forms.decode(body)["a"] == "x" * (64 * 1024 - 2)
    refused(core, body + b"x", "request_too_large", 413)


def test_parameter_count_is_bounded(core):
    body = "&".join(f"k{i}=v" for i in range(1000)).encode()
    assert len(core.forms.decode(body)) == 1000
    error = refused(core, body + b"&one=more")
    assert "1000" in error.message


@pytest.mark.parametrize("body", [b"a=\xff", b"a=%FF", b"%C3=1", b"a=%ED%A0%80"])
def test_bytes_that_are_not_utf8_are_refused(core, body):
    refused(core, body)


def test_a_long_parameter_name_is_cut_in_the_error(core):
    key = "a[" + "b" * 5000 + "][c]"
    error = refused(core, f"{key}=1&{key}=2".encode())
    assert len(error.param) < 300 and error.param.endswith("...")


@settings(max_examples=1500, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(alphabet="ab01[]=&%+5BD", max_size=60).map(str.encode),
    )
)
def test_any_bytes_decode_or_raise_core_error_and_both_builds_agree(compiled, pure, body):
    outcomes = []
    for build in (compiled, pure):
        try:
            outcomes.append(("ok", build.forms.decode(body)))
        except CoreError as exc:
            outcomes.append(("refused", exc.as_tuple()))
    assert outcomes[0] == outcomes[1]
    if outcomes[0][0] == "ok":
        assert isinstance(outcomes[0][1], dict)


# --- coercions ------------------------------------------------------------------------------


def raises(code, fn, *args, **kwargs) -> CoreError:
    with pytest.raises(CoreError) as caught:
        fn(*args, **kwargs)
    assert caught.value.code == code, caught.value
    return caught.value


@pytest.mark.parametrize("text,number", [("0", 0), ("1999", 1999), ("-5", -5), ("007", 7)])
def test_integer(core, text, number):
    assert core.forms.integer(text, "n") == number


@pytest.mark.parametrize(
    "value",
    ["", "+5", " 5", "5 ", "1.0", "1e3", "1_000", "--1", "-", "0x10", "١٢", "9" * 19, {}, ["1"]],
)
def test_integer_refuses_what_the_sdk_never_sends(core, value):
    error = raises("parameter_invalid_integer", core.forms.integer, value, "amount_to_capture")
    assert error.param == "amount_to_capture"


def test_integer_bounds_and_presence(core):
    f = core.forms
    assert f.integer(None, "limit") is None
    raises("parameter_missing", f.integer, None, "limit", required=True)
    assert f.integer("100", "limit", minimum=1, maximum=100) == 100
    raises("parameter_invalid_integer", f.integer, "0", "limit", minimum=1)
    raises("parameter_invalid_integer", f.integer, "101", "limit", maximum=100)


def test_amount(core):
    f = core.forms
    assert f.amount("99999999") == 99_999_999
    assert raises("amount_too_large", f.amount, "100000000").param == "amount"
    raises("amount_too_small", f.amount, "0")
    raises("amount_too_small", f.amount, "-1", "amount_to_capture")
    raises("parameter_missing", f.amount, None, required=True)
    raises("parameter_invalid_integer", f.amount, "19.99")


def test_boolean_enum_string(core):
    f = core.forms
    assert f.boolean("true", "confirm") is True and f.boolean("false", "confirm") is False
    for bad in ("True", "1", "yes", {}):
        raises("parameter_invalid", f.boolean, bad, "confirm")
    assert f.enum("manual", "capture_method", ("automatic", "manual")) == "manual"
    assert raises("parameter_invalid", f.enum, "later", "capture_method", ("a", "b")).param == (
        "capture_method"
    )
    assert f.string("x" * 10, "description", 10) == "x" * 10
    raises("parameter_invalid", f.string, "x" * 11, "description", 10)
    raises("parameter_invalid", f.string, "a\x00b", "description", 10)
    raises("parameter_invalid", f.string, {"a": "b"}, "description", 10)
    assert f.string(None, "description", 10) is None  # "" decoded: unset
    raises("parameter_missing", f.string, None, "currency", 3, required=True)
    assert f.object_({"number": "4242"}, "card") == {"number": "4242"}
    raises("parameter_invalid", f.object_, "x", "card")


def test_string_map(core):
    f = core.forms
    assert f.string_map(None, "metadata", 50, 40, 500) is None  # metadata= clears all
    assert f.string_map({"a": "1", "b": None}, "metadata", 50, 40, 500) == {"a": "1", "b": None}
    decoded = f.decode(sdk_body({"metadata": {"0": "x", "1": "y"}}))["metadata"]
    assert f.string_map(decoded, "metadata", 50, 40, 500) == {"0": "x", "1": "y"}
    error = raises("parameter_invalid", f.string_map, {"k" * 41: "v"}, "metadata", 50, 40, 500)
    assert error.param == "metadata[" + "k" * 41 + "]"
    assert raises("parameter_invalid", f.string_map, {"k": "v" * 501}, "metadata", 50, 40, 500)
    raises("parameter_invalid", f.string_map, {"k": {"nested": "v"}}, "metadata", 50, 40, 500)
    raises(
        "parameter_invalid", f.string_map, {str(i): "v" for i in range(51)}, "metadata", 50, 40, 500
    )
    raises("parameter_invalid", f.string_map, "text", "metadata", 50, 40, 500)


def test_expand(core):
    f = core.forms
    assert f.expand(None) == ()
    assert f.expand(f.decode(b"expand[]=latest_charge&expand[]=data.payment_method")["expand"]) == (
        "latest_charge",
        "data.payment_method",
    )
    assert raises("parameter_invalid", f.expand, "latest_charge").param == "expand"
    assert raises("parameter_invalid", f.expand, ["a.b.c.d.e"]).param == "expand[0]"
    raises("parameter_invalid", f.expand, ["ok", "a..b"])
    raises("parameter_missing", f.expand, [None])
    raises("parameter_invalid", f.expand, [{"a": "b"}])
    raises("parameter_invalid", f.expand, ["x"] * 21)


def test_reject_unknown_names_the_first_in_order(core):
    f = core.forms
    f.reject_unknown({"amount": "1"}, ("amount", "currency"))
    error = raises("parameter_unknown", f.reject_unknown, {"zz": "1", "bb": "2"}, ("amount",))
    assert error.param == "bb" and "bb" in error.message
    error = raises("parameter_unknown", f.reject_unknown, {"numbr": "4"}, ("number",), "card")
    assert error.param == "card[numbr]"
    assert f.param_name(["items", "0", "price"]) == "items[0][price]"
