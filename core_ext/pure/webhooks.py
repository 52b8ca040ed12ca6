"""Webhooks: the pure computation behind a signed, retried delivery.

Everything here is a function of its arguments (the clock is passed in), so both builds
and the tests agree exactly; the gateway does the I/O (``gateway/webhooks``).

- Secrets and signatures. One secret, ``whsec_`` + base64 of 32 random bytes, signs every
  delivery twice: the Standard Webhooks scheme (what the ``standardwebhooks`` and ``svix``
  libraries verify) is keyed by the base64-decoded bytes, the Stripe scheme (what
  ``stripe.Webhook.construct_event`` verifies) by the whole secret string, because that is
  how Stripe's libraries use a ``whsec_`` secret.
- The retry schedule: the delays after each failed attempt, an HTTP ``Retry-After``
  honoured when it asks for longer, and when the schedule is exhausted.
- Which endpoint is subscribed to an event, and the status class an attempt is counted
  under in the metrics.
"""

import base64
import binascii
import datetime
import email.utils
import hashlib
from collections.abc import Sequence

import cython

SECRET_PREFIX = "whsec_"
SECRET_RANDOM_BYTES = 32  # API.md: "whsec_" + base64 of 32 random bytes

EVENT_TYPES = (
    "payment.authorized",
    "payment.declined",
    "payment.failed",
    "payment.captured",
    "payment.voided",
    "payment.canceled",
    "payment.expired",
    "refund.succeeded",
    "checkout.session.completed",
    "checkout.session.expired",
    # Customers and recurring billing (gateway/billing).
    "customer.created",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)
WILDCARD = "*"  # enabled_events ["*"]: every event type

# After attempt n fails, the next one waits DEFAULT_RETRY_SCHEDULE_S[n - 1] seconds:
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 27.6 h of trying, 8 attempts).
DEFAULT_RETRY_SCHEDULE_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
RETRY_SCHEDULE_STEPS_MAX = 50  # a bound on attempts per delivery (TigerBeetle style)
RETRY_DELAY_S_MAX = 30 * 86_400  # a longer delay would outlive the events' 30-day retention
RETRY_AFTER_S_MAX = 7 * 86_400  # a receiver cannot park a delivery for longer than a week

# The status class of one attempt, a bounded metric label: an HTTP answer's class, or why
# there was no answer. ``error`` strings recorded for an attempt start with one of the
# last three (the kind), optionally followed by ": " and a detail.
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
REFUSED_ADDRESS = "refused_address"
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", TIMEOUT, CONNECTION_ERROR, REFUSED_ADDRESS)
_ANSWER_CLASSES = ("2xx", "3xx", "4xx", "5xx")

# HMAC (RFC 2104) over SHA-256, whose blocks are 64 bytes: a key is padded to a block and
# XORed with these bytes, as the standard library's hmac module does it.
_HMAC_BLOCK_BYTES = 64
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


# --- secrets and signatures -----------------------------------------------------------------


def new_secret(random32: bytes) -> str:
    """An endpoint's secret from 32 random bytes (the caller draws them: no I/O here)."""
    if len(random32) != SECRET_RANDOM_BYTES:
        raise ValueError(f"a webhook secret is made of {SECRET_RANDOM_BYTES} random bytes")
    return SECRET_PREFIX + base64.b64encode(random32).decode("ascii")


def _secret_key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with " + SECRET_PREFIX)
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


# One key's HMAC-SHA256 states (``_hmac_sha256_states``), and one secret's two keys'.
HmacStates = tuple["hashlib._Hash", "hashlib._Hash"]
SigningKeys = tuple[HmacStates, HmacStates]


@cython.annotation_typing(False)
def _hmac_sha256_states(key: bytes) -> HmacStates:
    """HMAC-SHA256's inner and outer hash states for ``key``, each past its padded key
    block. ``hmac.digest`` hashes both blocks again on every call and sets up an OpenSSL
    MAC context: about 4.6 us a signature on the benchmark machine, where two copies of
    these states cost 1.6 us. The result is the same bytes (tests/core/test_webhooks.py
    compares them with ``hmac.digest``, and every receiver library verifies them)."""
    if len(key) > _HMAC_BLOCK_BYTES:
        key = hashlib.sha256(key).digest()
    block = key.ljust(_HMAC_BLOCK_BYTES, b"\0")
    return hashlib.sha256(block.translate(_INNER_PAD)), hashlib.sha256(block.translate(_OUTER_PAD))


@cython.annotation_typing(False)
def _hmac_sha256(states: HmacStates, prefix: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of ``prefix + body`` from ``_hmac_sha256_states``' states."""
    inner = states[0].copy()
    inner.update(prefix)
    inner.update(body)
    outer = states[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


@cython.annotation_typing(False)
def signing_keys(secret: str) -> SigningKeys:
    """What one secret signs with, worked out once per endpoint, not once per attempt: the
    HMAC states of the Standard Webhooks scheme's key (the secret's base64-decoded bytes)
    and of Stripe's (the whole secret string)."""
    return _hmac_sha256_states(_secret_key(secret)), _hmac_sha256_states(secret.encode())


@cython.annotation_typing(False)
def sign(keys: SigningKeys, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers that sign one attempt with ``signing_keys``: ``body`` exactly as sent,
    ``timestamp`` in unix seconds of this attempt (receivers refuse old ones, so each
    attempt signs anew)."""
    stamp = str(int(timestamp))  # whole unix seconds, whatever number the clock gave
    standard = _hmac_sha256(keys[0], (event_id + "." + stamp + ".").encode(), body)
    stripe = _hmac_sha256(keys[1], (stamp + ".").encode(), body)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + binascii.b2a_base64(standard, newline=False).decode("ascii"),
        "Stripe-Signature": "t=" + stamp + ",v1=" + stripe.hex(),
    }


@cython.annotation_typing(False)
def signature_headers(secret: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """``sign`` with ``secret``'s keys: the headers that sign one attempt."""
    headers: dict[str, str] = sign(signing_keys(secret), event_id, timestamp, body)
    return headers


# --- the retry schedule -------------------------------------------------------------------


def parse_retry_schedule(text: str) -> tuple[int, ...]:
    """``"5,300,1800"`` -> ``(5, 300, 1800)``: the seconds to wait after each failed attempt."""
    items = text.split(",")
    if not text.strip():
        raise ValueError("must be comma-separated positive integers (seconds), e.g. 5,300,1800")
    if len(items) > RETRY_SCHEDULE_STEPS_MAX:
        raise ValueError(f"must have at most {RETRY_SCHEDULE_STEPS_MAX} delays")
    delays = []
    for position, raw in enumerate(items, 1):
        item = raw.strip()
        # int() would also take "+5", "5_000" and non-ASCII digits: only plain digits here.
        if not (item.isascii() and item.isdigit()):
            raise ValueError(f"delay {position} ({item!r}) is not a positive integer of seconds")
        delay = int(item)
        if not 1 <= delay <= RETRY_DELAY_S_MAX:
            raise ValueError(f"delay {position} ({item}) must be from 1 to {RETRY_DELAY_S_MAX} s")
        delays.append(delay)
    return tuple(delays)


# Cython reads "float | None" as "exactly a float or None" (and "int" as exactly an int):
# annotation typing is off where a caller may fairly pass an int for a float (or a float
# clock reading for whole seconds), so both builds accept the same arguments.
@cython.annotation_typing(False)
@cython.locals(attempts=cython.Py_ssize_t)
def next_attempt_delay_s(
    schedule: tuple[int, ...], attempts_made: int, retry_after_s: float | None
) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones, or None when the
    schedule is exhausted (the delivery has failed). A longer ``Retry-After`` wins."""
    attempts = attempts_made
    if attempts < 1:
        raise ValueError("attempts_made must be >= 1: the delay follows a failed attempt")
    if attempts > len(schedule):
        return None
    delay: float = float(schedule[attempts - 1])
    if retry_after_s is not None and retry_after_s > delay:
        delay = float(retry_after_s)
    return delay


@cython.annotation_typing(False)
def parse_retry_after(value: str | None, now_unix: float) -> float | None:
    """An HTTP ``Retry-After`` (delta-seconds or an HTTP-date) as seconds from ``now_unix``;
    None when absent, malformed or in the past; at most RETRY_AFTER_S_MAX."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float
    if text.isascii() and text.isdigit():  # RFC 9110: delta-seconds = 1*DIGIT
        seconds = float(min(int(text), RETRY_AFTER_S_MAX))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": HTTP-dates are GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - now_unix
        if seconds < 0:
            return None
    return min(seconds, float(RETRY_AFTER_S_MAX))


# --- subscriptions and metric labels ------------------------------------------------------


def subscribed(enabled_events: Sequence[str], event_type: str) -> bool:
    """Whether an endpoint with ``enabled_events`` receives an event of ``event_type``."""
    for enabled in enabled_events:
        if enabled in (WILDCARD, event_type):
            return True
    return False


@cython.annotation_typing(False)
def status_class(status: int | None, error: str | None) -> str:
    """The label an attempt is counted under: its HTTP status class, else its error kind.

    A status outside 200-599 is not a usable answer and counts with the server errors; an
    attempt without an answer whose error names no known kind is a connection error.
    """
    if status is not None:
        if 200 <= status <= 599:
            return _ANSWER_CLASSES[status // 100 - 2]
        return "5xx"
    if error is not None:
        kind = error.split(":", 1)[0].strip()
        if kind in (TIMEOUT, REFUSED_ADDRESS):
            return kind
    return CONNECTION_ERROR
