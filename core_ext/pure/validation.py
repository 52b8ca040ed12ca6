"""Request validation: JSON values in, a typed request or the first precise error out.

Errors come in a fixed order of precedence (unknown fields first, then the
fields in the order of API.md's example), so the same input always yields the
same first error. No message ever contains a card number or a cvc, and no free-text
field (reference, description, metadata values, customer.email) may hold one: card
numbers belong in payment_method only (see ``contains_card_number``).

Declarations of the C-level helpers and the typed fields are in
``core_ext/compiled/validation.pxd`` (where Cython reads them for the compiled build).
"""

import ipaddress
from collections.abc import Mapping

import cython

from core_ext.errors import CoreError

# The statuses a list may filter on are the state machine's (relative: each build reads
# its own twin).
from .states import STATUSES

AMOUNT_MIN = 1
AMOUNT_MAX = 99_999_999
METADATA_KEYS_MAX = 20
METADATA_KEY_CHARS_MAX = 40
METADATA_VALUE_CHARS_MAX = 500
REFERENCE_CHARS_MAX = 255
DESCRIPTION_CHARS_MAX = 1000
HOLDER_NAME_CHARS_MAX = 200
EMAIL_CHARS_MAX = 320
OBJECT_ID_CHARS_MAX = 255
IP_CHARS_MAX = 45  # the longest textual IPv6 address (IPv4-mapped); no zone ids
EXPIRY_YEARS_AHEAD_MAX = 50
JSON_DEPTH_MAX = 16  # containers nested in a request body; API bodies need 3
LIST_LIMIT_DEFAULT = 10
LIST_LIMIT_MAX = 100
CARD_RUN_DIGITS_MIN = 13  # a run of this many to CARD_RUN_DIGITS_MAX digits, Luhn-valid,
CARD_RUN_DIGITS_MAX = 19  # is a card number in free text (API.md)
CARD_DIGITS_MIN = 12  # a card number's digits (validation); what scrubbing redacts from
REDACTED = "[redacted]"

# C twins of the limits the hot path compares against (declared in compiled/validation.pxd;
# the public names above stay Python objects for callers and tests).
_METADATA_KEYS_MAX = METADATA_KEYS_MAX
_METADATA_KEY_CHARS_MAX = METADATA_KEY_CHARS_MAX
_METADATA_VALUE_CHARS_MAX = METADATA_VALUE_CHARS_MAX
_EMAIL_CHARS_MAX = EMAIL_CHARS_MAX
_OBJECT_ID_CHARS_MAX = OBJECT_ID_CHARS_MAX
_IP_CHARS_MAX = IP_CHARS_MAX
_JSON_DEPTH_MAX = JSON_DEPTH_MAX
_CARD_RUN_DIGITS_MIN = CARD_RUN_DIGITS_MIN
_CARD_RUN_DIGITS_MAX = CARD_RUN_DIGITS_MAX
_CARD_DIGITS_MIN = CARD_DIGITS_MIN

# ISO 4217 active alphabetic codes and their minor-unit exponents.
_EXPONENT_0 = ("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF").split()
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND".split()
_EXPONENT_4 = "CLF UYW".split()
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN "
    "BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB "
    "EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS "
    "KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN "
    "MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD "
    "SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS "
    "UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
).split()
CURRENCY_EXPONENTS = {
    **{code: 2 for code in _EXPONENT_2},
    **{code: 0 for code in _EXPONENT_0},
    **{code: 3 for code in _EXPONENT_3},
    **{code: 4 for code in _EXPONENT_4},
}
_EXPONENTS = CURRENCY_EXPONENTS  # typed dict (compiled/validation.pxd)

PAYMENT_FIELDS = (
    "amount",
    "currency",
    "capture",
    "confirm",
    "payment_method",
    "reference",
    "description",
    "metadata",
    "customer",
    "off_session",
)
CUSTOMER_ID_PREFIX = "cus_"  # "customer": "cus_..." names a saved customer
CARD_FIELDS = ("number", "exp_month", "exp_year", "cvc", "holder_name")
CUSTOMER_FIELDS = ("email", "ip")
CAPTURE_METHODS = ("automatic", "manual")
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
LIST_FIELDS = ("limit", "starting_after", "status")
CONFIRM_FIELDS = ("payment_method",)


def _invalid(param, message, code="parameter_invalid"):
    return CoreError(code, message, param=param)


def _check_unknown(body, allowed: tuple, prefix: str):
    if type(body) is dict:
        for key in cython.cast(dict, body):  # C dict iteration
            if key not in allowed:
                break
        else:
            return 0  # the common case: no unknown field, nothing to sort
    else:
        for key in body:
            if key not in allowed:
                break
        else:
            return 0
    first = min(str(k) for k in body if k not in allowed)
    raise _invalid(prefix + first, f"unknown parameter: {prefix}{first}", "parameter_unknown")


def _is_int(value):
    return type(value) is int


def _object(value, param):
    if not isinstance(value, dict):
        raise _invalid(param, f"{param or 'request body'} must be a JSON object")
    return value


def _storable(text: str):
    """PostgreSQL text and jsonb cannot hold NUL: a string with one is refused up front
    (else it would fail at the database as a 500)."""
    return "\x00" not in text


@cython.locals(i=cython.Py_ssize_t, c=cython.Py_UCS4)
def object_id_valid(text, prefix: str) -> bool:
    """``prefix`` then 1..255 characters of [A-Za-z0-9_] in all: the shape of every id
    Kassa issues. Anything else is unknown by construction (404 without a query)."""
    if not isinstance(text, str) or not 1 <= len(text) <= _OBJECT_ID_CHARS_MAX:
        return False
    if not text.startswith(prefix) or len(text) == len(prefix):
        return False
    for c in text:
        if not (("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_"):
            return False
    return True


def _optional_string(body: dict, name: str, prefix: str, chars_max, chars_min, free_text):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str) and chars_min <= len(value) <= chars_max and _storable(value):
        if free_text:
            _no_card_number(value, prefix + name)
        return value
    param = prefix + name  # only on the way to an error
    if not isinstance(value, str) or not chars_min <= len(value) <= chars_max:
        raise _invalid(param, f"{param} must be a string of {chars_min} to {chars_max} characters")
    raise _invalid(param, f"{param} must not contain NUL characters")


def _amount(value, param: str):
    if value is None:
        raise _invalid(param, f"{param} is required", "parameter_missing")
    if not _is_int(value):
        raise _invalid(param, f"{param} must be an integer number of minor units")
    if value < AMOUNT_MIN:
        raise _invalid(param, f"{param} must be at least {AMOUNT_MIN}", "amount_too_small")
    if value > AMOUNT_MAX:
        raise _invalid(param, f"{param} must be at most {AMOUNT_MAX}", "amount_too_large")
    return value


def _nests_deeper(value, depth):
    """1 if ``value`` (a container at level ``depth``) holds containers past JSON_DEPTH_MAX.
    Recursion stops at the limit, so the C stack never holds more than JSON_DEPTH_MAX frames."""
    if depth > _JSON_DEPTH_MAX:
        return 1
    if type(value) is dict:  # exact types: C iteration (subclasses take the generic path)
        for item in cython.cast(dict, value).values():
            if isinstance(item, (dict, list)) and _nests_deeper(item, depth + 1):
                return 1
        return 0
    if type(value) is list:
        for item in cython.cast(list, value):
            if isinstance(item, (dict, list)) and _nests_deeper(item, depth + 1):
                return 1
        return 0
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, (dict, list)) and _nests_deeper(item, depth + 1):
            return 1
    return 0


def json_too_deep() -> CoreError:
    """The 400 for a body nested past JSON_DEPTH_MAX (also what the gateway raises when
    the JSON parser itself stops at its own, deeper bound)."""
    return CoreError(
        "json_too_deep",
        f"request body nests objects and arrays deeper than {JSON_DEPTH_MAX} levels",
    )


def check_json_depth(value: object) -> None:
    """Refuse a body whose objects and arrays nest deeper than JSON_DEPTH_MAX (400
    json_too_deep), before anything else walks it."""
    if isinstance(value, (dict, list)) and _nests_deeper(value, 1):
        raise json_too_deep()


# --- cards ----------------------------------------------------------------------------


@cython.locals(
    total=cython.int, i=cython.Py_ssize_t, n=cython.Py_ssize_t, d=cython.int, double=cython.bint
)
def luhn_valid(digits: str) -> bool:
    n = len(digits)
    if n == 0:
        return False
    total = 0
    double = False
    for i in range(n - 1, -1, -1):
        d = ord(digits[i]) - 48
        if d < 0 or d > 9:
            return False
        if double:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        double = not double
    return total % 10 == 0


@cython.locals(i=cython.int, p6=cython.int)
def _prefix6(digits: str):
    p6 = 0
    for i in range(6):
        p6 = p6 * 10 + (ord(digits[i]) - 48)
    return p6


@cython.locals(p2=cython.int, p3=cython.int, p4=cython.int, p6=cython.int)
def _brand_of(digits: str):
    if len(digits) < 6:
        return "unknown"
    p6 = _prefix6(digits)
    p4 = p6 // 100
    p3 = p6 // 1000
    p2 = p6 // 10000
    if digits[0] == "4":
        return "visa"
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return "mastercard"
    if p2 == 34 or p2 == 37:
        return "amex"
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925:
        return "discover"
    if 3528 <= p4 <= 3589:
        return "jcb"
    if 300 <= p3 <= 305 or p4 == 3095 or p2 == 36 or p2 == 38 or p2 == 39:
        return "diners"
    if p2 == 62:
        return "unionpay"
    return "unknown"


def card_brand(digits: str) -> str:
    if not _all_digits(digits):
        return "unknown"
    return _brand_of(digits)


@cython.locals(i=cython.Py_ssize_t, c=cython.Py_UCS4)
def _all_digits(text: str):
    if len(text) == 0:
        return False
    for c in text:
        if c < "0" or c > "9":
            return False
    return True


# --- card numbers in free text -----------------------------------------------------------
#
# The rule, kept simple on purpose: a *run* is a maximal stretch of ASCII digits in which
# single spaces or dashes may stand between two digits ("4242 4242-4242 4242"). Anything
# else ends it: another character, two separators in a row, a separator not followed by a
# digit. A run of CARD_RUN_DIGITS_MIN..CARD_RUN_DIGITS_MAX digits that passes luhn_valid
# is a card number. A longer run is not (an id of 25 digits is not a card), nor is a
# shorter one; other scripts' digits (Arabic-Indic, fullwidth) never count.
#
# Scrubbing (what Kassa echoes and logs) errs the other way, since a false positive costs
# only a "[redacted]": any run of CARD_DIGITS_MIN or more digits that is, or holds within
# it, a Luhn-valid number of CARD_DIGITS_MIN..CARD_RUN_DIGITS_MAX digits is redacted
# whole (a card number with digits glued on is still a card number).


@cython.locals(
    n=cython.Py_ssize_t,
    i=cython.Py_ssize_t,
    start=cython.Py_ssize_t,
    end=cython.Py_ssize_t,
    digits=cython.Py_ssize_t,
    c=cython.Py_UCS4,
    nxt=cython.Py_UCS4,
)
def _next_card_run(text: str, pos, scrubbing):
    """(start, end) of the first card-number run at or after ``pos``, or None; by the
    free-text rule, or the scrubbing rule when ``scrubbing``."""
    n = len(text)
    i = pos
    while i < n:
        c = text[i]
        if c < "0" or c > "9":
            i += 1
            continue
        start = i
        digits = 1
        i += 1
        end = i
        while i < n:
            c = text[i]
            if "0" <= c <= "9":
                digits += 1
                i += 1
                end = i
            elif (c == " " or c == "-") and i + 1 < n:
                nxt = text[i + 1]
                if nxt < "0" or nxt > "9":
                    break
                i += 1
            else:
                break
        if scrubbing:
            if digits >= _CARD_DIGITS_MIN and _run_holds_card(text, start, end, digits):
                return (start, end)
        elif _CARD_RUN_DIGITS_MIN <= digits <= _CARD_RUN_DIGITS_MAX and _run_luhn_valid(
            text, start, end
        ):
            return (start, end)
        i = end
    return None


def _run_luhn_valid(text: str, start, end):
    # Only runs of a card's length get here (rare in free text): the one Luhn of the core.
    return luhn_valid(text[start:end].replace(" ", "").replace("-", ""))


@cython.locals(size=cython.Py_ssize_t, first=cython.Py_ssize_t, n=cython.Py_ssize_t)
def _run_holds_card(text: str, start, end, digits) -> cython.bint:
    """Whether the run is a Luhn-valid card number, or holds one of CARD_DIGITS_MIN..
    CARD_RUN_DIGITS_MAX digits anywhere in it (only runs of 12 or more digits get here;
    a run of 12+ digits in free text is rare, so the windows' cost is too)."""
    run = text[start:end].replace(" ", "").replace("-", "")
    n = len(run)
    if n <= _CARD_RUN_DIGITS_MAX and luhn_valid(run):
        return True
    for size in range(_CARD_DIGITS_MIN, min(n, _CARD_RUN_DIGITS_MAX) + 1):
        for first in range(n - size + 1):
            if luhn_valid(run[first : first + size]):
                return True
    return False


def contains_card_number(text: str) -> bool:
    """True if ``text`` holds a card number by the free-text rule above (a Luhn-valid run
    of 13 to 19 digits, single spaces or dashes allowed between digits)."""
    return _next_card_run(text, 0, False) is not None


@cython.locals(pos=cython.Py_ssize_t, start=cython.Py_ssize_t, end=cython.Py_ssize_t)
def redact_card_numbers(text: str) -> str:
    """``text`` with every run the scrubbing rule above finds replaced by "[redacted]";
    ``text`` itself when it holds none. What is left holds no card number, by either rule:
    the runs are maximal and "[redacted]" cannot join two runs."""
    found = _next_card_run(text, 0, True)
    if found is None:
        return text
    pieces = []
    pos = 0
    while found is not None:
        start, end = found
        pieces.append(text[pos:start])
        pieces.append(REDACTED)
        pos = end
        found = _next_card_run(text, pos, True)
    pieces.append(text[pos:])
    return "".join(pieces)


def _no_card_number(text: str, param: str):
    """Refuse a free-text field holding a card number, without echoing it."""
    if _next_card_run(text, 0, False) is not None:
        raise _invalid(
            param,
            f"{param} must not contain a card number: card numbers belong in payment_method only",
        )
    return 0


@cython.cclass
class CardInput:
    """A validated card (fields in compiled/validation.pxd); repr never shows the number."""

    def __init__(
        self, number: str, exp_month: int, exp_year: int, cvc: str, holder_name: object, brand: str
    ):
        self.number = number
        self.exp_month = exp_month
        self.exp_year = exp_year
        self.cvc = cvc
        self.holder_name = holder_name
        self.brand = brand
        self.last4 = number[len(number) - 4 :]

    def as_dict(self) -> dict:
        return {
            "number": self.number,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
            "cvc": self.cvc,
            "holder_name": self.holder_name,
            "brand": self.brand,
            "last4": self.last4,
        }

    def __repr__(self):  # never the number or the cvc
        return f"CardInput(brand={self.brand!r}, last4={self.last4!r})"


def _card(value, prefix: str, today_year, today_month):
    card = _object(value, prefix[: len(prefix) - 1])
    _check_unknown(card, CARD_FIELDS, prefix)
    number = card.get("number")
    if number is None:
        raise _invalid(prefix + "number", "card number is required", "parameter_missing")
    if not isinstance(number, str):
        raise _invalid(prefix + "number", "card number must be a string", "invalid_number")
    digits = number.replace(" ", "")
    if not 12 <= len(digits) <= 19 or not _all_digits(digits):
        raise _invalid(prefix + "number", "card number must be 12 to 19 digits", "invalid_number")
    if not luhn_valid(digits):
        raise _invalid(prefix + "number", "card number failed the Luhn check", "invalid_number")
    brand = _brand_of(digits)
    exp_month = _expiry_month(card.get("exp_month"), prefix)
    exp_year = _expiry_year(card.get("exp_year"), prefix, today_year)
    if exp_year == today_year and exp_month < today_month:
        raise _invalid(prefix + "exp_month", "the card has expired", "invalid_expiry_month")
    cvc = _cvc(card.get("cvc"), prefix, 4 if brand == "amex" else 3)
    holder = _optional_string(card, "holder_name", prefix, HOLDER_NAME_CHARS_MAX, 1, False)
    return _card_input(digits, exp_month, exp_year, cvc, holder, brand)


@cython.locals(c=CardInput)
def _card_input(number: str, exp_month, exp_year, cvc: str, holder_name, brand: str):
    c = CardInput.__new__(CardInput)  # skips __init__'s argument parsing
    c.number = number
    c.exp_month = exp_month
    c.exp_year = exp_year
    c.cvc = cvc
    c.holder_name = holder_name
    c.brand = brand
    c.last4 = number[len(number) - 4 :]
    return c


def _expiry_month(value, prefix: str):
    # Param names are built only on the way to an error (the valid path allocates none).
    if value is None:
        raise _invalid(prefix + "exp_month", "exp_month is required", "parameter_missing")
    if not _is_int(value) or not 1 <= value <= 12:
        raise _invalid(
            prefix + "exp_month",
            "exp_month must be an integer from 1 to 12",
            "invalid_expiry_month",
        )
    return value


def _expiry_year(value, prefix: str, today_year):
    if value is None:
        raise _invalid(prefix + "exp_year", "exp_year is required", "parameter_missing")
    if not _is_int(value) or not 1000 <= value <= 9999:
        raise _invalid(
            prefix + "exp_year", "exp_year must be a four-digit year", "invalid_expiry_year"
        )
    if value < today_year:
        raise _invalid(prefix + "exp_year", "the card has expired", "invalid_expiry_year")
    if value > today_year + EXPIRY_YEARS_AHEAD_MAX:
        raise _invalid(
            prefix + "exp_year", "exp_year is too far in the future", "invalid_expiry_year"
        )
    return value


def _cvc(value, prefix: str, length):
    if value is None:
        raise _invalid(prefix + "cvc", "cvc is required", "parameter_missing")
    if not isinstance(value, str) or len(value) != length or not _all_digits(value):
        raise _invalid(
            prefix + "cvc", f"cvc must be a string of {length} digits for this card", "invalid_cvc"
        )
    return value


# --- payments ---------------------------------------------------------------------------


@cython.cclass
class PaymentRequest:
    """A validated payment request (fields in compiled/validation.pxd)."""

    def __init__(
        self,
        amount,
        currency,
        capture,
        card,
        token,
        reference,
        description,
        metadata,
        customer,
        confirm=True,
        customer_id=None,
        off_session=False,
    ):
        self.amount = amount
        self.currency = currency
        self.capture = capture
        self.card = card
        self.token = token
        self.reference = reference
        self.description = description
        self.metadata = metadata
        self.customer = customer
        self.confirm = confirm
        self.customer_id = customer_id
        self.off_session = off_session

    def as_dict(self) -> dict:
        return {
            "amount": self.amount,
            "currency": self.currency,
            "capture": self.capture,
            "confirm": self.confirm,
            "card": None if self.card is None else self.card.as_dict(),
            "token": self.token,
            "reference": self.reference,
            "description": self.description,
            "metadata": self.metadata,
            "customer": self.customer,
            "customer_id": self.customer_id,
            "off_session": self.off_session,
        }


def currency_exponent(code: object) -> int:
    return _EXPONENTS[_currency_code(code)]


@cython.locals(c=cython.Py_UCS4)
def _currency_code(code):
    """``code`` upper-cased if it is a supported ISO 4217 code, else CoreError."""
    if not isinstance(code, str) or len(code) != 3:
        raise _invalid("currency", "currency must be a three-letter ISO 4217 code")
    for c in cython.cast(str, code):
        if c > "\x7f":  # str.isascii(), as a C loop
            raise _invalid("currency", "currency must be a three-letter ISO 4217 code")
    upper = cython.cast(str, code).upper()
    if upper not in _EXPONENTS:
        raise _invalid("currency", "currency is not a supported ISO 4217 code")
    return upper


def _currency(value):
    if value is None:
        raise _invalid("currency", "currency is required", "parameter_missing")
    return _currency_code(value)


def _payment_method(value, today_year, today_month):
    """(card, token), one of them set; (None, None) when no payment method is given (the
    payment then waits in requires_payment_method)."""
    if value is None:
        return None, None
    method = _object(value, "payment_method")
    _check_unknown(method, ("type", "card", "token"), "payment_method.")
    kind = method.get("type")
    if kind is None:
        raise _invalid(
            "payment_method.type", "payment_method.type is required", "parameter_missing"
        )
    if kind == "card":
        if "token" in method:
            raise _invalid(
                "payment_method.token", "a card payment takes no token", "parameter_unknown"
            )
        if method.get("card") is None:
            raise _invalid(
                "payment_method.card", "payment_method.card is required", "parameter_missing"
            )
        return _card(method["card"], "payment_method.card.", today_year, today_month), None
    if kind == "token":
        if "card" in method:
            raise _invalid(
                "payment_method.card", "a token payment takes no card", "parameter_unknown"
            )
        token = method.get("token")
        if token is None:
            raise _invalid(
                "payment_method.token", "payment_method.token is required", "parameter_missing"
            )
        if not object_id_valid(token, "tok_"):
            raise _invalid("payment_method.token", "payment_method.token must be a tok_ id")
        return None, token
    raise _invalid("payment_method.type", "payment_method.type must be card or token")


def _metadata_entry_ok(key: str, item):
    return (
        1 <= len(key) <= _METADATA_KEY_CHARS_MAX
        and _storable(key)
        and _next_card_run(key, 0, False) is None
        and isinstance(item, str)
        and len(item) <= _METADATA_VALUE_CHARS_MAX
        and _storable(item)
        and _next_card_run(item, 0, False) is None
    )


def _metadata(value):
    if value is None:
        return {}
    metadata = _object(value, "metadata")
    if len(metadata) > _METADATA_KEYS_MAX:
        raise _invalid("metadata", f"metadata has at most {METADATA_KEYS_MAX} keys")
    for key, item in metadata.items():
        if not _metadata_entry_ok(key, item):
            break
    else:
        return dict(metadata)  # all valid: no need to sort for the first error
    for key in sorted(metadata):
        if not 1 <= len(key) <= METADATA_KEY_CHARS_MAX or not _storable(key):
            raise _invalid(
                "metadata",
                f"metadata keys are 1 to {METADATA_KEY_CHARS_MAX} characters, without NUL",
            )
        if _next_card_run(key, 0, False) is not None:
            # A key is echoed in every answer that shows the payment: never a card number
            # (API.md "Conventions"), and the error names only "metadata", not the key.
            raise _invalid("metadata", "metadata keys must not contain a card number")
        item = metadata[key]
        if not isinstance(item, str) or len(item) > METADATA_VALUE_CHARS_MAX or not _storable(item):
            raise _invalid(
                f"metadata.{key}",
                "metadata values are strings of at most "
                f"{METADATA_VALUE_CHARS_MAX} characters, "
                "without NUL",
            )
        _no_card_number(item, f"metadata.{key}")
    raise AssertionError("unreachable: an entry failed the fast check")


def _customer(value):
    if value is None:
        return None
    customer = _object(value, "customer")
    _check_unknown(customer, CUSTOMER_FIELDS, "customer.")
    email = customer.get("email")
    if email is not None:
        if (
            not isinstance(email, str)
            or len(email) > _EMAIL_CHARS_MAX
            or not _storable(email)
            or not _email_shaped(email)
        ):
            raise _invalid("customer.email", "customer.email must be an email address")
        _no_card_number(email, "customer.email")
    ip = customer.get("ip")
    if ip is not None and not (isinstance(ip, str) and len(ip) <= _IP_CHARS_MAX and _ip_valid(ip)):
        raise _invalid("customer.ip", "customer.ip must be an IPv4 or IPv6 address")
    return {"email": email, "ip": ip}


@cython.locals(i=cython.Py_ssize_t, n=cython.Py_ssize_t, at=cython.Py_ssize_t, c=cython.Py_UCS4)
def _email_shaped(text: str):
    """local@domain: exactly one "@", with something on both sides (what
    ``local, at, domain = text.partition("@")`` and "@" not in domain checked)."""
    n = len(text)
    at = -1
    for i in range(n):
        c = text[i]
        if c == "@":
            if at >= 0:
                return False
            at = i
    return 0 < at < n - 1


@cython.locals(
    parts=cython.int, digits=cython.int, value=cython.int, c=cython.Py_UCS4, first_zero=cython.bint
)
def _ipv4_valid(text: str):
    """Dotted-quad IPv4 as ``ipaddress`` accepts it: 4 parts, 0..255, no leading zeros."""
    parts = 0
    digits = 0
    value = 0
    first_zero = False
    for c in text:
        if c == ".":
            if digits == 0:
                return False
            parts += 1
            digits = 0
            value = 0
        elif "0" <= c <= "9":
            if digits == 1 and first_zero:
                return False
            first_zero = digits == 0 and c == "0"
            digits += 1
            value = value * 10 + (ord(c) - 48)
            if digits > 3 or value > 255:
                return False
        else:
            return False
    return parts == 3 and digits > 0


def _ip_valid(text: str) -> bool:
    if ":" not in text:
        return _ipv4_valid(text)
    try:
        ipaddress.IPv6Address(text)  # rare on checkouts; the stdlib parser is exact
    except ValueError:
        return False
    return True


@cython.locals(b=dict, r=PaymentRequest)
def validate_payment(body: object, today_year: int, today_month: int) -> PaymentRequest:
    b = _object(body, None)
    _check_unknown(b, PAYMENT_FIELDS, "")
    amount = _amount(b.get("amount"), "amount")
    currency = _currency(b.get("currency"))
    capture = b.get("capture", "automatic")
    if capture not in CAPTURE_METHODS:
        raise _invalid("capture", "capture must be automatic or manual")
    confirm = b.get("confirm", True)
    if confirm is not True and confirm is not False:
        raise _invalid("confirm", "confirm must be true or false")
    card, token = _payment_method(b.get("payment_method"), today_year, today_month)
    reference = _optional_string(b, "reference", "", REFERENCE_CHARS_MAX, 1, True)
    description = _optional_string(b, "description", "", DESCRIPTION_CHARS_MAX, 0, True)
    metadata = _metadata(b.get("metadata"))
    customer_id, off_session = _saved_customer(b, card, token, confirm)
    customer = None if customer_id is not None else _customer(b.get("customer"))
    r = PaymentRequest.__new__(PaymentRequest)  # skips __init__'s argument parsing
    r.amount = amount
    r.currency = currency
    r.capture = capture
    r.card = card
    r.token = token
    r.reference = reference
    r.description = description
    r.metadata = metadata
    r.customer = customer
    r.confirm = confirm
    r.customer_id = customer_id
    r.off_session = off_session
    return r


def _saved_customer(b, card, token, confirm):
    """(customer_id, off_session): "customer" as a string names a saved customer (the
    object form keeps its meaning: buyer details). A saved customer pays with one of its
    saved cards, a token; off_session (the buyer absent) needs one, confirmed at once."""
    value = b.get("customer")
    customer_id = None
    if isinstance(value, str):
        if not object_id_valid(value, CUSTOMER_ID_PREFIX):
            raise _invalid("customer", "customer must be a cus_ id or an object of buyer details")
        customer_id = value
    off_session = b.get("off_session", False)
    if off_session is not True and off_session is not False:
        raise _invalid("off_session", "off_session must be true or false")
    if customer_id is not None and card is not None:
        raise _invalid(
            "payment_method",
            'a saved customer pays with one of its saved cards: {"type": "token", "token": ...}',
        )
    if off_session:
        if customer_id is None:
            raise _invalid(
                "customer",
                'an off_session payment charges a saved customer: "customer": "cus_..."',
                "parameter_missing",
            )
        if token is None:
            raise _invalid(
                "payment_method",
                "an off_session payment needs one of the customer's saved cards",
                "parameter_missing",
            )
        if not confirm:
            raise _invalid("confirm", "an off_session payment is confirmed at once")
    return customer_id, off_session


def validate_confirm(body: object, today_year: int, today_month: int) -> tuple:
    """POST /v1/payments/{id}/confirm: (card, token) of the payment method given, or
    (None, None) to confirm with the one the payment has."""
    body = _no_params(body)
    _check_unknown(body, CONFIRM_FIELDS, "")
    return _payment_method(body.get("payment_method"), today_year, today_month)


def validate_cancel(body: object) -> None:
    _check_unknown(_no_params(body), (), "")


def validate_token(body: object, today_year: int, today_month: int) -> CardInput:
    body = _object(body, None)
    _check_unknown(body, ("card",), "")
    if body.get("card") is None:
        raise _invalid("card", "card is required", "parameter_missing")
    return _card(body["card"], "card.", today_year, today_month)


def _no_params(body):
    if body is None:
        return {}
    return _object(body, None)


def validate_capture(body: object):
    body = _no_params(body)
    _check_unknown(body, ("amount",), "")
    if body.get("amount") is None:
        return None
    return _amount(body["amount"], "amount")


def validate_void(body: object) -> None:
    _check_unknown(_no_params(body), (), "")


def validate_refund(body: object) -> tuple:
    body = _no_params(body)
    _check_unknown(body, ("amount", "reason"), "")
    amount = None if body.get("amount") is None else _amount(body["amount"], "amount")
    reason = body.get("reason")
    if reason is not None and reason not in REFUND_REASONS:
        raise _invalid("reason", "reason must be duplicate, fraudulent or requested_by_customer")
    return amount, reason


def validate_list_query(query: object) -> tuple:
    if not isinstance(query, Mapping):
        raise _invalid(None, "the query must map parameter names to values")
    _check_unknown(query, LIST_FIELDS, "")
    limit = LIST_LIMIT_DEFAULT
    text = query.get("limit")
    if text is not None:
        if not (
            isinstance(text, str)
            and 1 <= len(text) <= 3
            and _all_digits(text)
            and 1 <= int(text) <= LIST_LIMIT_MAX
        ):
            raise _invalid("limit", f"limit must be an integer from 1 to {LIST_LIMIT_MAX}")
        limit = int(text)
    starting_after = query.get("starting_after")
    if starting_after is not None and not object_id_valid(starting_after, "pay_"):
        raise _invalid("starting_after", "starting_after must be a pay_ id")
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise _invalid("status", "status must be one of " + ", ".join(STATUSES))
    return limit, starting_after, status


# --- customers, saved cards and recurring billing ------------------------------------------

CUSTOMER_OBJECT_FIELDS = ("email", "name", "metadata", "test_clock")
CUSTOMER_UPDATE_FIELDS = ("email", "name", "metadata")
CUSTOMER_NAME_CHARS_MAX = 256
PAYMENT_METHOD_FIELDS = ("token", "default")
PRICE_FIELDS = ("amount", "currency", "recurring", "description")
RECURRING_FIELDS = ("interval", "interval_count")
PRICE_INTERVALS = ("day", "week", "month", "year")
PRICE_INTERVAL_COUNT_MAX = 365  # core_ext.billing.INTERVAL_COUNT_MAX
SUBSCRIPTION_FIELDS = ("customer", "price", "trial_days")
SUBSCRIPTION_TRIAL_DAYS_MAX = 730  # core_ext.billing.TRIAL_DAYS_MAX
SUBSCRIPTION_CANCEL_FIELDS = ("at_period_end",)
TEST_CLOCK_FIELDS = ("frozen_time", "name")
TEST_CLOCK_ADVANCE_FIELDS = ("frozen_time",)
TEST_CLOCK_NAME_CHARS_MAX = 300


def _customer_email(body):
    email = body.get("email")
    if email is None:
        return None
    if (
        not isinstance(email, str)
        or len(email) > _EMAIL_CHARS_MAX
        or not _storable(email)
        or not _email_shaped(email)
    ):
        raise _invalid("email", "email must be an email address")
    _no_card_number(email, "email")
    return email


def _required_id(body, name: str, prefix: str):
    value = body.get(name)
    if value is None:
        raise _invalid(name, f"{name} is required", "parameter_missing")
    if not object_id_valid(value, prefix):
        raise _invalid(name, f"{name} must be a {prefix} id")
    return value


def validate_customer(body: object, creating: bool) -> dict:
    """POST /v1/customers (``creating``) or /v1/customers/{id}: the fields given, checked
    (email, name, metadata; test_clock on create). Absent fields are not in the result;
    null clears email or name."""
    b = _no_params(body)
    _check_unknown(b, CUSTOMER_OBJECT_FIELDS if creating else CUSTOMER_UPDATE_FIELDS, "")
    fields = {}
    if "email" in b:
        fields["email"] = _customer_email(b)
    if "name" in b:
        fields["name"] = _optional_string(b, "name", "", CUSTOMER_NAME_CHARS_MAX, 0, True)
    if "metadata" in b or creating:
        fields["metadata"] = _metadata(b.get("metadata"))
    if creating:
        clock = b.get("test_clock")
        if clock is not None and not object_id_valid(clock, "clock_"):
            raise _invalid("test_clock", "test_clock must be a clock_ id")
        fields["test_clock"] = clock
    return fields


def validate_payment_method_attach(body: object) -> tuple:
    """POST /v1/customers/{id}/payment_methods: (token id, default)."""
    b = _no_params(body)
    _check_unknown(b, PAYMENT_METHOD_FIELDS, "")
    token = _required_id(b, "token", "tok_")
    default = b.get("default", False)
    if default is not True and default is not False:
        raise _invalid("default", "default must be true or false")
    return token, default


def validate_price(body: object) -> tuple:
    """POST /v1/prices: (amount, currency, interval, interval_count, description)."""
    b = _object(body, None)
    _check_unknown(b, PRICE_FIELDS, "")
    amount = _amount(b.get("amount"), "amount")
    currency = _currency(b.get("currency"))
    recurring = b.get("recurring")
    if recurring is None:
        raise _invalid("recurring", "recurring is required", "parameter_missing")
    recurring = _object(recurring, "recurring")
    _check_unknown(recurring, RECURRING_FIELDS, "recurring.")
    interval = recurring.get("interval")
    if interval is None:
        raise _invalid("recurring.interval", "recurring.interval is required", "parameter_missing")
    if interval not in PRICE_INTERVALS:
        raise _invalid("recurring.interval", "recurring.interval must be day, week, month or year")
    count = recurring.get("interval_count", 1)
    if not _is_int(count) or not 1 <= count <= PRICE_INTERVAL_COUNT_MAX:
        raise _invalid(
            "recurring.interval_count",
            f"recurring.interval_count must be an integer from 1 to {PRICE_INTERVAL_COUNT_MAX}",
        )
    description = _optional_string(b, "description", "", DESCRIPTION_CHARS_MAX, 0, True)
    return amount, currency, interval, count, description


def validate_subscription(body: object) -> tuple:
    """POST /v1/subscriptions: (customer id, price id, trial days)."""
    b = _object(body, None)
    _check_unknown(b, SUBSCRIPTION_FIELDS, "")
    customer = _required_id(b, "customer", "cus_")
    price = _required_id(b, "price", "price_")
    trial_days = b.get("trial_days", 0)
    if trial_days is None:
        trial_days = 0
    if not _is_int(trial_days) or not 0 <= trial_days <= SUBSCRIPTION_TRIAL_DAYS_MAX:
        raise _invalid(
            "trial_days", f"trial_days must be an integer from 0 to {SUBSCRIPTION_TRIAL_DAYS_MAX}"
        )
    return customer, price, trial_days


def validate_subscription_cancel(body: object) -> bool:
    """POST /v1/subscriptions/{id}/cancel: at_period_end (default false: now)."""
    b = _no_params(body)
    _check_unknown(b, SUBSCRIPTION_CANCEL_FIELDS, "")
    at_period_end = b.get("at_period_end", False)
    if at_period_end is not True and at_period_end is not False:
        raise _invalid("at_period_end", "at_period_end must be true or false")
    return at_period_end


def validate_test_clock(body: object, creating: bool) -> tuple:
    """POST /v1/test_clocks (``creating``) or .../advance: (frozen_time as the client's
    RFC 3339 text, name). The gateway parses the time."""
    b = _object(body, None)
    _check_unknown(b, TEST_CLOCK_FIELDS if creating else TEST_CLOCK_ADVANCE_FIELDS, "")
    frozen = b.get("frozen_time")
    if frozen is None:
        raise _invalid("frozen_time", "frozen_time is required", "parameter_missing")
    if not isinstance(frozen, str) or len(frozen) > 64:
        raise _invalid("frozen_time", "frozen_time must be an RFC 3339 timestamp")
    name = _optional_string(b, "name", "", TEST_CLOCK_NAME_CHARS_MAX, 0, True)
    return frozen, name
