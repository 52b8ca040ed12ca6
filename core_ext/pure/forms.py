"""Stripe's form encoding: ``application/x-www-form-urlencoded`` bodies with bracket nesting,
decoded into nested dicts and lists, and the typed coercions of the values in them.

This is what the ``/stripe/v1`` tree reads every request body (and query string) with. It
accepts exactly what Stripe's SDKs send (stripe-python's ``_api_encode`` then
``urllib.parse.urlencode``) and refuses anything else with a ``CoreError`` naming the
offending parameter the way Stripe's ``param`` does (``metadata[foo]``, ``items[0][price]``).

The decoded shape
- ``a=x`` is ``{"a": "x"}``; ``a[b][c]=x`` is ``{"a": {"b": {"c": "x"}}}``.
- ``a[0]=x&a[1]=y`` is ``{"a": ["x", "y"]}``: a container whose first key is ``0`` (or
  ``[]``) is a list, and its indices must then come as 0, 1, ..., n-1 in order (a key may
  repeat the last index to fill in that element: ``a[0][b]=1&a[0][c]=2``). ``a[]=x&a[]=y``
  appends, as Rack and PHP read it; ``[]`` always starts a new element.
- A container whose first key is anything else (``1``, ``foo``) is a dict. ``metadata[1]=x``
  is therefore ``{"1": "x"}``, and ``metadata[0]=x`` a list (the SDK encodes
  ``{"0": "x"}`` and ``["x"]`` the same way): ``string_map`` reads such a list back as a map.
- **An empty value decodes to ``None``: Stripe's "unset this field"** (``description=``
  clears the description, ``metadata[k]=`` deletes key ``k``, ``metadata=`` clears all).
  A parameter that is absent is simply not in the dict. So: key missing = not given,
  ``None`` = unset, a ``str`` = a value. Values are never anything else before coercion.
- Keys and values are percent-decoded with ``urllib.parse.unquote_plus``'s rules (``+`` is a
  space; a malformed ``%`` escape stays literal) before the brackets are read, as the SDK
  percent-encodes the brackets too. Percent-escapes must decode to UTF-8.

Refused (each a precise 400 ``CoreError`` unless said otherwise): a body over
``BODY_BYTES_MAX`` (413), more than ``PARAMETERS_MAX`` parameters, a key naming more than
``DEPTH_MAX`` levels, an empty name, unbalanced or stray brackets, text after the last ``]``,
array indices out of order or not canonical (``01``), the same parameter twice, a parameter
that is both a value and an object or array, and bytes that are not UTF-8.

What the SDK's encoding cannot carry (so no decoder could give it back): empty dicts and
lists (the SDK sends nothing for them), ``None`` (not sent), dict keys holding ``[`` or
``]``, an empty dict key, and a dict whose first key is ``0`` (it reads as a list).
"""

from typing import Any
from urllib.parse import unquote_plus

import cython

from core_ext.errors import CoreError

BODY_BYTES_MAX = 64 * 1024  # as native /v1 bodies (API.md): larger answers 413
PARAMETERS_MAX = 1000  # key=value pairs in one body; Stripe's largest creates send ~200
DEPTH_MAX = 10  # names in one key: a[b][c] names 3
INDEX_DIGITS_MAX = 4  # an array index past 9999 cannot occur within PARAMETERS_MAX
INTEGER_DIGITS_MAX = 18  # every 18-digit integer fits a signed 64-bit column
AMOUNT_MIN = 1  # API.md: 1 <= amount <= 99_999_999 minor units
AMOUNT_MAX = 99_999_999
EXPAND_ITEMS_MAX = 20  # expand[] entries in one request
EXPAND_PATH_CHARS_MAX = 5000  # Stripe's bound on one expand entry
EXPAND_DEPTH_MAX = 4  # Stripe expands at most four levels (a.b.c.d)
PARAM_CHARS_SHOWN_MAX = 200  # a parameter name quoted in an error is cut here

# Codes, in Stripe's vocabulary where it has one (the facade answers them as they are).
_INVALID = "parameter_invalid"
_INVALID_INTEGER = "parameter_invalid_integer"
_MISSING = "parameter_missing"
_TOO_SMALL = "amount_too_small"
_TOO_LARGE = "amount_too_large"

_BODY_BYTES_MAX = BODY_BYTES_MAX  # C twins (when compiled/forms.pxd declares them)
_PARAMETERS_MAX = PARAMETERS_MAX
_DEPTH_MAX = DEPTH_MAX


def _error(param, message, code=_INVALID, status=400):
    return CoreError(code, message, param=param, status=status)


def _shown(param):
    """A parameter name fit to quote: bounded (the answer layer scrubs card numbers)."""
    return param if len(param) <= PARAM_CHARS_SHOWN_MAX else param[:PARAM_CHARS_SHOWN_MAX] + "..."


def param_name(names: list[str]) -> str:
    """``["a", "b", "0"]`` -> ``"a[b][0]"``: how Stripe names a nested parameter."""
    out = names[0]
    for i in range(1, len(names)):
        out += "[" + names[i] + "]"
    return out


def _unquote(text):
    """``unquote_plus(text)``, strictly UTF-8, with fast paths for what the SDK sends."""
    if "%" in text:
        # The SDK percent-encodes every bracket: replacing those escapes first (C-level
        # str.replace) leaves most keys with nothing else to decode. Equivalent to
        # unquote_plus: a "[" or "]" cannot start an escape or become a space.
        text = text.replace("%5B", "[").replace("%5D", "]")
        if "%" in text:
            text = text.replace("%5b", "[").replace("%5d", "]")
            if "%" in text:
                try:
                    return unquote_plus(text, errors="strict")
                except UnicodeDecodeError:
                    raise _error(
                        None, "the form body has a percent-escape that is not UTF-8"
                    ) from None
    if "+" in text:
        return text.replace("+", " ")
    return text


@cython.locals(i=cython.Py_ssize_t, j=cython.Py_ssize_t, n=cython.Py_ssize_t)
def _names(key):
    """The names in one key: ``a[b][]`` -> ``["a", "b", ""]``, or a CoreError."""
    i = key.find("[")
    if i < 0:
        if not key:
            raise _error(None, "a form parameter has an empty name")
        if "]" in key:
            raise _error(_shown(key), f"malformed parameter name: {_shown(key)}")
        return [key]
    if i == 0:
        raise _error(_shown(key), f"a form parameter has an empty name: {_shown(key)}")
    base = key[:i]
    if "]" in base:
        raise _error(_shown(key), f"malformed parameter name: {_shown(key)}")
    names = [base]
    n = len(key)
    while i < n:
        if key[i] != "[":
            raise _error(_shown(key), f"malformed parameter name (text after ']'): {_shown(key)}")
        j = key.find("]", i + 1)
        if j < 0:
            raise _error(_shown(key), f"malformed parameter name (unclosed '['): {_shown(key)}")
        segment = key[i + 1 : j]
        if "[" in segment:
            raise _error(_shown(key), f"malformed parameter name (nested '['): {_shown(key)}")
        names.append(segment)
        if len(names) > _DEPTH_MAX:
            raise _error(
                _shown(key), f"{_shown(key)} nests deeper than {DEPTH_MAX} levels", _INVALID
            )
        i = j + 1
    return names


@cython.locals(n=cython.Py_ssize_t)
def _index(segment):
    """A canonical array index (``0``, ``7``, ``12``; not ``01`` or ``-1``) or -1."""
    n = len(segment)
    if n == 0 or n > INDEX_DIGITS_MAX or not (segment.isascii() and segment.isdigit()):
        return -1
    if n > 1 and segment[0] == "0":
        return -1
    return int(segment)


def _new_container(next_name):
    # A container is a list when its first key is an index 0 or "[]", a dict otherwise.
    if next_name == "" or next_name == "0":
        return []
    return {}


# node and child are explicitly objects (a dict or a list each time round) and items a
# list: left to inference, one build of the same source typed node as the root's dict and
# indexed the list below with PyDict_GetItem (SystemError at run time).
@cython.locals(
    depth=cython.Py_ssize_t,
    last=cython.Py_ssize_t,
    index=cython.Py_ssize_t,
    node=object,
    child=object,
    items=list,
)
def _insert(root, names, value):
    node = root
    last = len(names) - 1
    for depth in range(last + 1):
        name = names[depth]
        if type(node) is dict:
            if depth == last:
                if name in node:
                    raise _twice(names, depth)
                node[name] = value
                return 0
            child = node.get(name)
            if child is None:
                if name in node:  # an unset leaf (None) holds the name already
                    raise _twice(names, depth)
                child = _new_container(names[depth + 1])
                node[name] = child
            elif type(child) is str:
                raise _twice(names, depth)
            node = child
        else:
            items = node
            size = len(items)
            if name == "":
                index = size
            else:
                index = _index(name)
                if index < 0 or not (index == size or (index == size - 1 and depth < last)):
                    here = param_name(names[: depth + 1])
                    raise _error(
                        _shown(here),
                        f"{_shown(here)}: array indices must be 0, 1, ... in order",
                    )
            if index == size:
                if depth == last:
                    items.append(value)
                    return 0
                child = _new_container(names[depth + 1])
                items.append(child)
            else:
                child = items[index]
                if child is None or type(child) is str:
                    raise _twice(names, depth)
            node = child
    return 0


def _twice(names, depth):
    here = param_name(names[: depth + 1])
    return _error(
        _shown(here),
        f"{_shown(here)} is given more than once, or both as a value and as an object",
    )


@cython.locals(count=cython.Py_ssize_t)
def decode(body: bytes | str) -> dict[str, Any]:
    """Decode one form body (``bytes``, or ``str`` for a query string) as Stripe encodes it.

    Returns a dict of parameter name -> ``str`` | ``None`` (unset) | dict | list, nested as
    the brackets say (see the module docstring for the exact rules). Raises ``CoreError``
    (400, 413 for size) naming the offending parameter in ``param``; never anything else,
    whatever the bytes. Empty ``&``-separated pieces are skipped; ``a`` alone means ``a=``.
    """
    if isinstance(body, str):
        text = body
        if len(text) > _BODY_BYTES_MAX:
            raise _too_large()
    else:
        if len(body) > _BODY_BYTES_MAX:
            raise _too_large()
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise _error(None, "the form body is not valid UTF-8") from None
    root: dict[str, Any] = {}
    if not text:
        return root
    count = 0
    for piece in text.split("&"):
        if not piece:
            continue
        count += 1
        if count > _PARAMETERS_MAX:
            raise _error(None, f"a request has at most {PARAMETERS_MAX} parameters")
        raw_key, _, raw_value = piece.partition("=")
        # An empty value is Stripe's "unset": None (a non-empty raw value never decodes empty).
        value = _unquote(raw_value) if raw_value else None
        _insert(root, _names(_unquote(raw_key)), value)
    return root


def _too_large():
    return _error(
        None, f"request body exceeds {BODY_BYTES_MAX} bytes", "request_too_large", status=413
    )


# --- typed coercions ----------------------------------------------------------------------
# Each takes a decoded value (``str``, ``None`` for unset, or a container) and the
# parameter's Stripe name, and returns the typed value or raises ``CoreError`` naming it.
# ``None`` in gives ``None`` out unless ``required``; ``required`` refuses it as missing.


def _absent(value, param, required):
    if value is None and required:
        raise _error(param, f"missing required param: {param}", _MISSING)
    return value is None


@cython.locals(n=cython.Py_ssize_t, start=cython.Py_ssize_t)
def integer(value, param: str, required: bool = False, minimum=None, maximum=None):
    """A decimal integer as the SDK sends one (``str(int)``): ASCII digits with at most a
    leading ``-``; no ``+``, spaces, ``_``, decimal point or exponent, at most
    ``INTEGER_DIGITS_MAX`` digits. ``minimum``/``maximum`` bound it (inclusive)."""
    if _absent(value, param, required):
        return None
    if type(value) is not str:
        raise _error(param, f"Invalid integer: {param} must be an integer", _INVALID_INTEGER)
    text = value
    n = len(text)
    start = 1 if n > 0 and text[0] == "-" else 0
    digits = text[start:]
    if not (0 < len(digits) <= INTEGER_DIGITS_MAX and digits.isascii() and digits.isdigit()):
        raise _error(param, f"Invalid integer: {param} must be an integer", _INVALID_INTEGER)
    number = int(text)
    if minimum is not None and number < minimum:
        raise _error(param, f"{param} must be at least {minimum}", _INVALID_INTEGER)
    if maximum is not None and number > maximum:
        raise _error(param, f"{param} must be at most {maximum}", _INVALID_INTEGER)
    return number


def amount(value, param: str = "amount", required: bool = False):
    """An amount in minor units: an integer from ``AMOUNT_MIN`` to ``AMOUNT_MAX``
    (Stripe's codes ``amount_too_small`` / ``amount_too_large`` outside)."""
    number = integer(value, param, required)
    if number is None:
        return None
    if number < AMOUNT_MIN:
        raise _error(param, f"{param} must be at least {AMOUNT_MIN}", _TOO_SMALL)
    if number > AMOUNT_MAX:
        raise _error(param, f"{param} must be at most {AMOUNT_MAX}", _TOO_LARGE)
    return number


def boolean(value, param: str, required: bool = False):
    """``"true"`` or ``"false"`` (what the SDK sends for a Python bool), nothing else."""
    if _absent(value, param, required):
        return None
    if value == "true":
        return True
    if value == "false":
        return False
    raise _error(param, f"Invalid boolean: {param} must be true or false")


def enum(value, param: str, allowed: tuple[str, ...], required: bool = False):
    """One of ``allowed`` (strings), exactly."""
    if _absent(value, param, required):
        return None
    if type(value) is str and value in allowed:
        return value
    raise _error(param, f"Invalid {param}: must be one of " + ", ".join(allowed))


def string(value, param: str, chars_max: int, required: bool = False):
    """A string of 1 to ``chars_max`` characters without NUL (an empty one is the unset
    marker ``None``, returned as such)."""
    if _absent(value, param, required):
        return None
    if type(value) is not str:
        raise _error(param, f"Invalid {param}: must be a string")
    if len(value) > chars_max:
        raise _error(param, f"Invalid {param}: must be at most {chars_max} characters")
    if "\x00" in value:
        raise _error(param, f"Invalid {param}: must not contain NUL characters")
    return value


def object_(value, param: str, required: bool = False):
    """A nested object (``a[b]=...``): the dict, ``None`` when unset or absent."""
    if _absent(value, param, required):
        return None
    if type(value) is not dict:
        raise _error(param, f"Invalid {param}: must be an object ({param}[...]=...)")
    return value


def string_map(
    value,
    param: str,
    keys_max: int,
    key_chars_max: int,
    value_chars_max: int,
):
    """A map of strings such as ``metadata``: ``None`` for ``metadata=`` (clear all), else a
    dict of key -> ``str`` or ``None`` (``metadata[k]=`` deletes ``k``). A list decoded
    from ``metadata[0]=...`` (the SDK encodes the keys ``"0"``, ``"1"`` as indices) is read
    back as the map it was."""
    if value is None:
        return None
    if type(value) is list:
        items = {str(i): v for i, v in enumerate(value)}
    elif type(value) is dict:
        items = value
    else:
        raise _error(param, f"Invalid {param}: must be an object ({param}[key]=value)")
    if len(items) > keys_max:
        raise _error(param, f"Invalid {param}: at most {keys_max} keys")
    for key, item in items.items():
        here = param + "[" + key + "]"
        if len(key) > key_chars_max:
            raise _error(
                _shown(here), f"Invalid {param}: keys are at most {key_chars_max} characters"
            )
        if item is not None:
            string(item, _shown(here), value_chars_max)
    return items


def expand(value, param: str = "expand") -> tuple[str, ...]:
    """``expand[0]=a&expand[1]=b.c`` (or ``expand[]=``) -> ``("a", "b.c")``; absent -> ``()``.
    At most ``EXPAND_ITEMS_MAX`` paths of at most ``EXPAND_DEPTH_MAX`` dotted names."""
    if value is None:
        return ()
    if type(value) is not list:
        raise _error(param, f"Invalid {param}: must be an array ({param}[]=field)")
    if len(value) > EXPAND_ITEMS_MAX:
        raise _error(param, f"Invalid {param}: at most {EXPAND_ITEMS_MAX} paths")
    paths = []
    for i, item in enumerate(value):
        here = f"{param}[{i}]"
        path = string(item, here, EXPAND_PATH_CHARS_MAX, True)
        names = path.split(".")
        if len(names) > EXPAND_DEPTH_MAX or "" in names:
            raise _error(
                here, f"Invalid {here}: a dotted path of at most {EXPAND_DEPTH_MAX} fields"
            )
        paths.append(path)
    return tuple(paths)


def reject_unknown(params: dict[str, Any], allowed: tuple[str, ...], prefix: str = "") -> None:
    """Refuse a parameter not in ``allowed`` (Stripe: ``parameter_unknown``), naming the
    first one in sorted order so the same body always gives the same error. ``prefix`` is
    the enclosing parameter (``card`` for ``card[...]``)."""
    unknown = [k for k in params if k not in allowed]
    if unknown:
        first = min(unknown)
        here = prefix + "[" + first + "]" if prefix else first
        raise _error(
            _shown(here), f"Received unknown parameter: {_shown(here)}", "parameter_unknown"
        )
