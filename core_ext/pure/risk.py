"""Risk: per-key rate limiting and the card-testing guard, pure computation on counters.

Two tables, both bounded LRUs keyed by strings the gateway hands in, both driven by a
clock the caller passes (``now``, seconds), so tests and both builds are deterministic:

- ``RateLimiter``: one token bucket per API key. ``take`` spends a token or says how
  long until one is available (the ``Retry-After`` of a 429).
- ``VelocityGuard``: sliding-window counters of authorization attempts per merchant and
  per card fingerprint, and of declines per card fingerprint. ``check`` names the first
  rule an authorization breaks (fixed precedence) or returns None.

Like every in-process table in Kassa these are fast paths, not the truth: each gateway
process counts what it sees. Evicting an entry forgets it (a bucket refills, a window
empties): the tables fail open, never towards refusing a good checkout. Both keep their
entries in the core's one ``LRUTable`` (cimported when compiled: see compiled/risk.pxd).
"""

import cython

# Relative on purpose: the pure build gets core_ext.pure.table, the compiled one
# core_ext.compiled.table (whose type compiled/risk.pxd cimports under the same name).
from .table import LRUTable

# Rule names, in the order ``VelocityGuard.check`` applies them (the first one breached wins).
MERCHANT_ATTEMPTS = "merchant_attempts"
CARD_ATTEMPTS = "card_attempts"
CARD_DECLINES = "card_declines"
RULES = (MERCHANT_ATTEMPTS, CARD_ATTEMPTS, CARD_DECLINES)
DECLINE_CODE = "card_velocity_exceeded"  # Stripe's decline code for velocity rules

ENTRIES_MAX_DEFAULT = 100_000
TOKEN_EPSILON = 1e-9  # float rounding: a caller who waited exactly the Retry-After gets in


@cython.cclass
class _Bucket:
    """One key's token bucket (fields in compiled/risk.pxd)."""


@cython.cclass
class RateLimiter:
    """Token buckets: ``rate_per_s`` tokens a second, at most ``burst`` held, one per request."""

    def __init__(self, entries_max: cython.Py_ssize_t = ENTRIES_MAX_DEFAULT):
        if entries_max < 1:
            raise ValueError("entries_max must be >= 1")
        self.entries_max = entries_max
        self._buckets = LRUTable(entries_max)

    @cython.locals(b=_Bucket, elapsed=cython.double, tokens=cython.double)
    def take(
        self, key: str, rate_per_s: cython.double, burst: cython.double, now: cython.double
    ) -> cython.double:
        """0.0 if a token was spent, else the seconds until the next token (nothing spent).

        ``rate_per_s <= 0`` means unlimited. A new key starts with a full bucket.
        """
        if rate_per_s <= 0:
            return 0.0
        if burst < 1:
            burst = 1
        b = self._buckets.get(key)  # touches: the key is now the most recent
        if b is None:
            b = _Bucket.__new__(_Bucket)
            b.tokens = burst
            b.updated = now
            self._buckets.put(key, b)  # forgets the least recent key past entries_max
        elapsed = now - b.updated
        if elapsed < 0:  # a clock that went back refills nothing
            elapsed = 0
        tokens = b.tokens + elapsed * rate_per_s
        if tokens > burst:
            tokens = burst
        b.updated = now
        if tokens >= 1 - TOKEN_EPSILON:
            b.tokens = max(tokens - 1, 0.0)
            return 0.0
        b.tokens = tokens
        return (1 - tokens) / rate_per_s

    def __len__(self) -> int:
        return len(self._buckets)


@cython.cclass
class RiskLimits:
    """One merchant's velocity limits; 0 turns a rule off."""

    def __init__(
        self,
        window_s: cython.double,
        merchant_attempts_max: cython.long,
        card_attempts_max: cython.long,
        card_declines_max: cython.long,
    ):
        if not window_s > 0:
            raise ValueError("window_s must be > 0")
        if merchant_attempts_max < 0 or card_attempts_max < 0 or card_declines_max < 0:
            raise ValueError("limits must be >= 0 (0: rule off)")
        self.window_s = window_s
        self.merchant_attempts_max = merchant_attempts_max
        self.card_attempts_max = card_attempts_max
        self.card_declines_max = card_declines_max

    def __repr__(self):
        return (
            f"RiskLimits(window_s={self.window_s}, merchant_attempts_max="
            f"{self.merchant_attempts_max}, card_attempts_max={self.card_attempts_max}, "
            f"card_declines_max={self.card_declines_max})"
        )


@cython.cclass
class _Window:
    """A sliding-window counter: this fixed window's count plus the previous one's,
    weighted by how much of it still overlaps the sliding window (O(1) memory)."""


@cython.locals(start=cython.double)
def _roll(w, now, window_s):
    start = now - (now % window_s)
    if start == w.start:
        return
    if 0 < start - w.start < 1.5 * window_s:  # the next window (float-tolerant)
        w.previous = w.current
    else:  # more than one whole window passed (or the clock went back): nothing overlaps
        w.previous = 0
    w.current = 0
    w.start = start


@cython.locals(overlap=cython.double)
def _estimate(w, now, window_s):
    _roll(w, now, window_s)
    overlap = 1.0 - (now - w.start) / window_s
    return w.current + w.previous * overlap


@cython.cclass
class VelocityGuard:
    """Counters behind the card-testing rules: attempts per merchant and per card, declines
    per card, each over the merchant's sliding window."""

    def __init__(self, entries_max: cython.Py_ssize_t = ENTRIES_MAX_DEFAULT):
        if entries_max < 3:
            raise ValueError("entries_max must be >= 3")
        self.entries_max = entries_max
        self._windows = LRUTable(entries_max)

    @cython.locals(w=_Window)
    def _window(self, key, now, window_s):
        w = self._windows.get(key)  # touches
        if w is None:
            w = _Window.__new__(_Window)
            w.start = now - (now % window_s)
            w.current = 0
            w.previous = 0
            self._windows.put(key, w)  # forgets the least recent past entries_max
        return w

    @cython.locals(merchant=_Window, card=_Window, declines=_Window, window_s=cython.double)
    def check(self, merchant_id: str, fingerprint: str, limits: RiskLimits, now: cython.double):
        """Count this authorization attempt; the first rule it breaks, or None.

        Every attempt counts, refused ones too: a card tester who keeps trying stays
        refused until the window has cooled down.
        """
        window_s = limits.window_s
        merchant = self._window(("m", merchant_id), now, window_s)
        card = self._window(("c", merchant_id, fingerprint), now, window_s)
        declines = self._window(("d", merchant_id, fingerprint), now, window_s)
        rule = None
        if (
            limits.merchant_attempts_max
            and _estimate(merchant, now, window_s) >= limits.merchant_attempts_max
        ):
            rule = MERCHANT_ATTEMPTS
        elif (
            limits.card_attempts_max and _estimate(card, now, window_s) >= limits.card_attempts_max
        ):
            rule = CARD_ATTEMPTS
        elif (
            limits.card_declines_max
            and _estimate(declines, now, window_s) >= limits.card_declines_max
        ):
            rule = CARD_DECLINES
        merchant.current += 1
        card.current += 1
        return rule

    @cython.locals(w=_Window)
    def record_decline(
        self, merchant_id: str, fingerprint: str, limits: RiskLimits, now: cython.double
    ) -> None:
        """The issuer (or a rule) declined this card: count it against the card."""
        w = self._window(("d", merchant_id, fingerprint), now, limits.window_s)
        _roll(w, now, limits.window_s)
        w.current += 1

    def __len__(self) -> int:
        return len(self._windows)
