"""Idempotency: request fingerprints, the verdict on a reused key, and a bounded
in-process fast-path table.

The database decides what a key means (unique constraint, stored answer);
``IdempotencyCache`` only saves a round trip for recent keys in this process. Both
answer a key they already hold through ``verdict``, so the precedence is decided once.
"""

import hashlib
import math

import cython

# Relative on purpose: each build gets its own table (compiled/idempotency.pxd cimports it).
from .table import LRUTable

NEW = "new"
REPLAY = "replay"
IN_FLIGHT = "in_flight"
REUSED = "reused"

# Containers nested deeper than this are refused: the compiled writer recurses
# on the C stack, and no valid API body comes near it (orjson stops at 1024).
MAX_DEPTH = 512

_MAX_DEPTH = MAX_DEPTH  # C int twin (compiled/idempotency.pxd)
_sha256 = hashlib.sha256
_PREFIXES_CACHED = 256
_PREFIXES = tuple(n.to_bytes(8, "big") for n in range(_PREFIXES_CACHED))

# JSON escapes for the characters that must be escaped, as json.dumps writes them.
_ESCAPES = tuple(
    {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}.get(chr(c), "\\u%04x" % c)
    for c in range(0x20)
)


@cython.locals(i=cython.Py_ssize_t, n=cython.Py_ssize_t, start=cython.Py_ssize_t, ch=cython.Py_UCS4)
def _write_str(out: list, s: str):
    # Copy unescaped runs as slices; most strings have no escapes at all.
    out.append('"')
    start = 0
    n = len(s)
    for i in range(n):
        ch = s[i]
        if ord(ch) < 0x20 or ch == '"' or ch == "\\":
            if i > start:
                out.append(s[start:i])
            if ord(ch) < 0x20:
                out.append(_ESCAPES[ord(ch)])
            else:
                out.append('\\"' if ch == '"' else "\\\\")
            start = i + 1
    if start == 0:
        out.append(s)
    elif start < n:
        out.append(s[start:])
    out.append('"')
    return 0


@cython.locals(first=cython.bint, f=cython.double)
def _write(out: list, value: object, depth):
    # Exact types first (the common case: what orjson returns), without a method call;
    # then subclasses through the base type's own repr so an overridden __str__/__repr__
    # cannot change the bytes.
    if type(value) is str:
        _write_str(out, cython.cast(str, value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif type(value) is int:
        out.append(repr(value))  # int's own repr, exactly int.__repr__
    elif type(value) is dict:
        _write_dict(out, cython.cast(dict, value), depth)
    elif isinstance(value, str):
        _write_str(out, str.__str__(value))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        f = value
        if math.isnan(f) or math.isinf(f):
            raise ValueError(f"{value!r} is not a JSON number")
        out.append(float.__repr__(value))  # shortest round-trip repr: 1.0 stays "1.0"
    elif isinstance(value, dict):
        _write_dict(out, dict(value), depth)  # a subclass's items, through dict's own view
    elif isinstance(value, (list, tuple)):
        if depth >= _MAX_DEPTH:
            raise ValueError("JSON value nested too deeply")
        out.append("[")
        first = True
        for item in value:
            if not first:
                out.append(",")
            first = False
            _write(out, item, depth + 1)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON type")
    return 0


@cython.locals(first=cython.bint, keys=list)
def _write_dict(out: list, value: dict, depth):
    if depth >= _MAX_DEPTH:
        raise ValueError("JSON value nested too deeply")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
    out.append("{")
    first = True
    keys = sorted(value)
    for key in keys:
        if not first:
            out.append(",")
        first = False
        _write_str(out, key if type(key) is str else str.__str__(key))
        out.append(":")
        _write(out, value[key], depth + 1)
    out.append("}")
    return 0


def canonical_json(value: object) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8.

    Same text as ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False)``; 1, 1.0, true and "1" all differ.
    Lone surrogates are kept (surrogatepass) so distinct strings stay distinct.
    """
    out: list = []
    _write(out, value, 0)
    return "".join(out).encode("utf-8", "surrogatepass")


def request_fingerprint(method: object, path: object, merchant_id: object, body: object) -> bytes:
    """sha256 over (method, path, merchant, canonical body); each field length-prefixed."""
    # One buffer, one hash call: the same digest as feeding the fields one by one.
    buffer = [b"kassa.idempotency.v1\x00"]
    for part in (method, path, merchant_id):
        if not isinstance(part, str):
            raise TypeError(f"method, path and merchant_id must be str, not {type(part).__name__}")
        raw = cython.cast(str, part).encode("utf-8", "surrogatepass")
        buffer.append(_length_prefix(len(raw)))  # no separator can be forged in a field
        buffer.append(raw)
    buffer.append(canonical_json(body))  # last field: it runs to the end
    return _sha256(b"".join(buffer)).digest()


def _length_prefix(n):
    """``n.to_bytes(8, "big")``; the short lengths of method, path and merchant id come
    from a table built once."""
    if n < _PREFIXES_CACHED:
        return _PREFIXES[n]
    return n.to_bytes(8, "big")


def verdict(stored_fingerprint: bytes, completed: bool, fingerprint: bytes) -> str:
    """What a request carrying a key that is already held means (API.md):

    REUSED (422 idempotency_key_reused) when the bodies differ, whether or not the
    first request has finished: a different body outranks in-flight, so every gateway
    process answers it the same way; else IN_FLIGHT (409 idempotency_key_in_use)
    while the first is still executing; else REPLAY (send the stored answer).
    """
    if stored_fingerprint != fingerprint:
        return REUSED
    if not completed:
        return IN_FLIGHT
    return REPLAY


@cython.cclass
class _Entry:
    """One held key (fields in compiled/idempotency.pxd)."""


@cython.locals(e=_Entry)
def _entry(fingerprint: bytes, created, status_code, body: bytes):
    e = _Entry.__new__(_Entry)
    e.fingerprint = fingerprint
    e.created = created
    e.status_code = status_code
    e.body = body
    return e


@cython.cclass
class IdempotencyCache:
    """Bounded LRU of (merchant, key) -> in-flight or completed answer.

    Entries older than ``retention_s`` (from when the key was claimed) count as
    unknown.  Evicting an in-flight entry is harmless: the database still holds
    the claim and answers the next lookup the slow way.
    """

    def __init__(self, capacity: cython.Py_ssize_t, retention_s: cython.double):
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        if not retention_s > 0:
            raise ValueError("retention_s must be > 0")
        self.capacity = capacity
        self.retention_s = retention_s
        self._entries = LRUTable(capacity)

    @cython.locals(e=_Entry)
    def lookup(
        self, merchant_id: object, key: object, fingerprint: bytes, now: cython.double
    ) -> tuple:
        k = (merchant_id, key)
        e = self._entries.get(k)  # touches
        if e is None:
            return (NEW, None)
        if now - e.created > self.retention_s:
            self._entries.pop(k)
            return (NEW, None)
        answer = verdict(e.fingerprint, e.status_code != 0, fingerprint)
        if answer == REPLAY:
            return (REPLAY, (e.status_code, e.body))
        return (answer, None)

    def begin(
        self, merchant_id: object, key: object, fingerprint: bytes, now: cython.double
    ) -> None:
        self._store((merchant_id, key), _entry(fingerprint, now, 0, b""))

    @cython.locals(e=_Entry, created=cython.double)
    def complete(
        self,
        merchant_id: object,
        key: object,
        fingerprint: bytes,
        status_code: cython.int,
        body: bytes,
        now: cython.double,
    ) -> None:
        if not 100 <= status_code <= 599:
            raise ValueError(f"not an HTTP status code: {status_code}")
        k = (merchant_id, key)
        created = now
        e = self._entries.peek(k)
        # Retention runs from the claim, as in the database row.
        if e is not None and e.status_code == 0 and e.fingerprint == fingerprint:
            created = e.created
        self._store(k, _entry(fingerprint, created, status_code, body))

    def discard(self, merchant_id: object, key: object) -> None:
        self._entries.pop((merchant_id, key))

    def __len__(self) -> int:
        return len(self._entries)

    def _store(self, k, e):
        self._entries.put(k, e)  # most recent; evicts the least recent past capacity
        return 0
