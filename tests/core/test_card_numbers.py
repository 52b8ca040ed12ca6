"""Card numbers in free text (core_ext.*.validation): the scan, redaction, and the
refusal of card numbers in a payment's free-text fields, on both builds."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_ext.errors import CoreError
from tests.core.test_validation import TODAY, body

PROP = settings(max_examples=300, deadline=None)
MESSAGE = "must not contain a card number: card numbers belong in payment_method only"


def luhn_check_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def reference_runs(text: str):
    """An independent reading of the rule: maximal runs of ASCII digits where one space
    or dash may stand between two digits; yields (start, end, digits)."""
    i, n = 0, len(text)
    while i < n:
        if not "0" <= text[i] <= "9":
            i += 1
            continue
        start, digits = i, ""
        while i < n:
            if "0" <= text[i] <= "9":
                digits += text[i]
                i += 1
            elif text[i] in " -" and i + 1 < n and "0" <= text[i + 1] <= "9":
                i += 1
            else:
                break
        end = start + len(text[start:i].rstrip(" -"))
        yield start, end, digits


def is_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and luhn_check_digit(digits[:-1]) == digits[-1]


def reference_contains(text: str) -> bool:
    return any(is_card(d) for _, _, d in reference_runs(text))


card_numbers = (
    st.integers(12, 18)
    .flatmap(lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n))
    .map(lambda p: p + luhn_check_digit(p))
)


@st.composite
def formatted(draw, numbers=card_numbers):
    """A valid card number, with single spaces or dashes between some digits."""
    number = draw(numbers)
    out = number[0]
    for ch in number[1:]:
        out += draw(st.sampled_from(("", "", "", " ", "-"))) + ch
    return out


# Text that cannot extend a run at its edges: not a digit, and not a separator next to one.
edge = st.text(alphabet=st.characters(exclude_characters="0123456789 -"), min_size=1, max_size=1)
noise = st.text(alphabet=st.sampled_from("abc xyz-.:@\u0663\uff13\n0123456789"), max_size=30)


@pytest.mark.parametrize(
    "text,found",
    [
        ("pay 4242 4242 4242 4242 now", True),
        ("4242-4242-4242-4242", True),
        ("order x4242424242424242y", True),
        ("378282246310005", True),  # 15 digits, amex
        ("4242424242424241", False),  # Luhn fails
        ("4242  4242 4242 4242", False),  # two separators end a run: 4 + 12 digits
        ("4242--4242-4242-4242", False),
        ("42424242424242421234", False),  # 20 digits: not a card
        ("424242424242", False),  # 12 digits: below the minimum
        ("\u0664\u0662\u0664\u0662" * 4, False),  # Arabic-Indic digits never count
        ("", False),
        ("order 1001", False),
    ],
)
def test_contains_card_number(core, text, found):
    assert core.validation.contains_card_number(text) is found
    assert reference_contains(text) is found


def test_redact_card_numbers(core):
    v = core.validation
    assert (
        v.redact_card_numbers("card 4242 4242 4242 4242, exp 12/30") == "card [redacted], exp 12/30"
    )
    assert (
        v.redact_card_numbers("a 378282246310005 b 4242-4242-4242-4242-")
        == "a [redacted] b [redacted]-"
    )
    text = "nothing to see 1234"
    assert v.redact_card_numbers(text) is text


@pytest.mark.parametrize(
    "text,scrubbed",
    [
        # Scrubbing errs towards redacting: a card number with digits glued on is still one
        # (the free-text rule would not refuse these 17- and 25-digit runs), ...
        ("param payment_method.card.42424242424242421", "param payment_method.card.[redacted]"),
        ("x" + "0" * 9 + "4242424242424242", "x[redacted]"),
        # ... and so is a Luhn-valid 12-digit number, which validation accepts as a card.
        ("12-digit 123456789015", "12-digit [redacted]"),
        # Runs that hold no Luhn-valid 12..19-digit number stay.
        ("order 12345678901", "order 12345678901"),
    ],
)
def test_scrubbing_redacts_more_than_the_free_text_rule_refuses(core, text, scrubbed):
    assert core.validation.redact_card_numbers(text) == scrubbed


@PROP
@given(text=noise | st.text(max_size=40))
def test_parity_and_rule(compiled, pure, text):
    found = compiled.validation.contains_card_number(text)
    assert found is pure.validation.contains_card_number(text)
    assert found is reference_contains(text)
    redacted = compiled.validation.redact_card_numbers(text)
    assert redacted == pure.validation.redact_card_numbers(text)
    assert not reference_contains(redacted)
    if found:  # scrubbing redacts at least what the free-text rule refuses
        assert redacted != text


@PROP
@given(before=noise, left=edge, number=formatted(), right=edge, after=noise)
def test_an_embedded_card_number_is_found_and_redacted(core, before, left, number, right, after):
    v = core.validation
    text = before + left + number + right + after
    assert v.contains_card_number(text)
    redacted = v.redact_card_numbers(text)
    assert number not in redacted
    assert left + "[redacted]" + right in redacted
    assert not v.contains_card_number(redacted) and not reference_contains(redacted)


# --- validate_payment refuses card numbers in free text ------------------------------


def error_of(core, b):
    with pytest.raises(CoreError) as info:
        core.validation.validate_payment(b, *TODAY)
    return info.value


@pytest.mark.parametrize(
    "changes,param",
    [
        ({"reference": "4242424242424242"}, "reference"),
        ({"description": "for card 4242 4242 4242 4242"}, "description"),
        ({"metadata": {"cart": "c_77", "note": "4242-4242-4242-4242"}}, "metadata.note"),
        ({"customer": {"email": "4242424242424242@example.com"}}, "customer.email"),
    ],
)
def test_card_numbers_in_free_text_are_refused(core, changes, param):
    error = error_of(core, body(**changes))
    assert (error.code, error.param, error.status) == ("parameter_invalid", param, 400)
    assert error.message == f"{param} {MESSAGE}"
    assert "4242" not in error.message


def test_free_text_without_card_numbers_is_fine(core):
    b = body(
        reference="order 4242 4242",
        description="4242424242424241",
        metadata={"a": "12345678901234567890123"},
    )
    core.validation.validate_payment(b, *TODAY)


def test_card_number_precedence_follows_the_fields(core):
    # The first field in API.md's order wins, and each field's own checks come first.
    card = "4242424242424242"
    b = body(
        reference=card,
        description=card,
        metadata={"k": card},
        customer={"email": card + "@example.com"},
    )
    assert error_of(core, b).param == "reference"
    del b["reference"]
    assert error_of(core, b).param == "description"
    del b["description"]
    assert error_of(core, b).param == "metadata.k"
    b["metadata"] = {"b": card, "a": "x" * 501}  # metadata keys in sorted order
    assert error_of(core, b).param == "metadata.a"
    b["metadata"] = {"b": card, "a": card}
    assert error_of(core, b).param == "metadata.a"
    del b["metadata"]
    assert error_of(core, b).param == "customer.email"
    b["customer"] = {"email": card}  # not an email address: that comes first
    error = error_of(core, b)
    assert (error.param, error.message) == (
        "customer.email",
        "customer.email must be an email address",
    )
    b = body(amount=0, reference=card)  # earlier fields still come first
    assert error_of(core, b).param == "amount"


@PROP
@given(
    field=st.sampled_from(("reference", "description", "metadata", "email")),
    before=noise,
    left=edge,
    number=formatted(),
    right=edge,
)
def test_any_embedded_card_number_is_refused_in_both_builds(
    compiled, pure, field, before, left, number, right
):
    text = (before + left + number + right)[:200]
    if not reference_contains(text):  # truncated away
        return
    if field == "metadata":
        b, param = body(metadata={"note": text}), "metadata.note"
    elif field == "email":
        b, param = body(customer={"email": "a@" + text.replace("@", "")}), "customer.email"
    else:
        b, param = body(**{field: text}), field
    answers = []
    for build in (compiled, pure):
        with pytest.raises(CoreError) as info:
            build.validation.validate_payment(b, *TODAY)
        answers.append(info.value.as_tuple())
    assert answers[0] == answers[1]
    assert answers[0][3] == param
    assert number not in answers[0][4]
