"""Rate limiting and the card-testing guard (core_ext.*.risk), both builds."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.conftest import load

BUILDS = ("compiled", "pure")
PROP = settings(max_examples=200, deadline=None)


@pytest.fixture(params=BUILDS, scope="module")
def risk(request):
    return load(request.param, "risk")


@pytest.fixture(scope="module")
def both():
    return load("compiled", "risk"), load("pure", "risk")


# ---- token bucket -------------------------------------------------------------------------


def test_a_new_key_gets_its_burst_then_waits_for_the_rate(risk):
    limiter = risk.RateLimiter()
    assert [limiter.take("k", 2.0, 3, 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("k", 2.0, 3, 100.0)
    assert wait == pytest.approx(0.5)  # one token at 2 a second
    assert limiter.take("k", 2.0, 3, 100.0 + wait) == 0.0  # and exactly then it is there
    assert limiter.take("k", 2.0, 3, 100.0 + wait) > 0


def test_keys_have_their_own_buckets(risk):
    limiter = risk.RateLimiter()
    assert limiter.take("a", 1.0, 1, 0.0) == 0.0
    assert limiter.take("a", 1.0, 1, 0.0) > 0
    assert limiter.take("b", 1.0, 1, 0.0) == 0.0


def test_zero_rate_is_unlimited(risk):
    limiter = risk.RateLimiter()
    assert all(limiter.take("k", 0.0, 1, 0.0) == 0.0 for _ in range(10_000))
    assert len(limiter) == 0  # nothing to remember for an unlimited key


def test_a_refused_request_spends_nothing(risk):
    limiter = risk.RateLimiter()
    limiter.take("k", 1.0, 1, 0.0)
    for _ in range(100):  # hammering while empty must not push the next token further out
        assert limiter.take("k", 1.0, 1, 0.5) == pytest.approx(0.5)
    assert limiter.take("k", 1.0, 1, 1.0) == 0.0


def test_the_table_is_bounded_and_forgets_the_oldest(risk):
    limiter = risk.RateLimiter(entries_max=2)
    limiter.take("a", 1.0, 1, 0.0)
    limiter.take("b", 1.0, 1, 0.0)
    limiter.take("c", 1.0, 1, 0.0)
    assert len(limiter) == 2
    assert limiter.take("a", 1.0, 1, 0.0) == 0.0  # forgotten: full again (fails open)
    assert limiter.take("c", 1.0, 1, 0.0) > 0  # remembered: still empty


def test_a_clock_that_goes_back_refills_nothing(risk):
    limiter = risk.RateLimiter()
    limiter.take("k", 1.0, 1, 100.0)
    assert limiter.take("k", 1.0, 1, 50.0) > 0


@given(
    rate=st.integers(1, 1000),
    burst=st.integers(1, 100),
    gaps=st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=200),
)
@PROP
def test_never_more_than_burst_plus_rate_times_elapsed(both, rate, burst, gaps):
    """The defining property of a token bucket, and both builds agree call by call."""
    compiled, pure = both
    limiters = compiled.RateLimiter(), pure.RateLimiter()
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        waits = [limiter.take("k", float(rate), float(burst), now) for limiter in limiters]
        assert waits[0] == pytest.approx(waits[1], abs=1e-12)
        assert waits[0] >= 0
        granted += waits[0] == 0.0
        assert granted <= burst + rate * now + 1e-9


@given(rate=st.integers(1, 50), burst=st.integers(1, 20))
@PROP
def test_retry_after_is_enough_and_not_too_much(risk, rate, burst):
    limiter = risk.RateLimiter()
    now = 10.0
    while (wait := limiter.take("k", float(rate), float(burst), now)) == 0.0:
        pass
    assert limiter.take("k", float(rate), float(burst), now + wait * 0.99) > 0
    assert limiter.take("k", float(rate), float(burst), now + wait) == 0.0
    assert math.isclose(wait, 1 / rate, rel_tol=1e-9) or wait < 1 / rate


# ---- velocity guard ----------------------------------------------------------------------


def limits(risk, window_s=60.0, merchant=0, card=0, declines=0):
    return risk.RiskLimits(window_s, merchant, card, declines)


def test_card_attempts_over_the_limit_are_refused(risk):
    guard, rule = risk.VelocityGuard(), limits(risk, card=3)
    results = [guard.check("m", "card-a", rule, 1.0 + i) for i in range(5)]
    assert results == [None, None, None, risk.CARD_ATTEMPTS, risk.CARD_ATTEMPTS]
    assert guard.check("m", "card-b", rule, 6.0) is None  # another card is fine
    assert guard.check("other", "card-a", rule, 6.0) is None  # so is another merchant


def test_declines_block_the_card_until_the_window_cools(risk):
    guard, rule = risk.VelocityGuard(), limits(risk, window_s=60.0, declines=2)
    assert guard.check("m", "c", rule, 1.0) is None
    guard.record_decline("m", "c", rule, 1.0)
    assert guard.check("m", "c", rule, 2.0) is None
    guard.record_decline("m", "c", rule, 2.0)
    assert guard.check("m", "c", rule, 3.0) == risk.CARD_DECLINES
    guard.record_decline("m", "c", rule, 3.0)
    # Sliding: early in the next window the previous one still weighs in (3 x 59/60)...
    assert guard.check("m", "c", rule, 61.0) == risk.CARD_DECLINES
    # ...less and less (3 x 20/60 = 1 < 2)...
    assert guard.check("m", "c", rule, 100.0) is None
    # ...and two windows later nothing overlaps any more.
    assert guard.check("m", "c", rule, 125.0) is None


def test_merchant_attempts_come_first(risk):
    guard, rule = risk.VelocityGuard(), limits(risk, merchant=2, card=1)
    assert guard.check("m", "a", rule, 0.0) is None
    assert guard.check("m", "a", rule, 0.0) == risk.CARD_ATTEMPTS
    assert guard.check("m", "b", rule, 0.0) == risk.MERCHANT_ATTEMPTS


def test_zero_limits_turn_the_rules_off(risk):
    guard, rule = risk.VelocityGuard(), limits(risk)
    for i in range(1000):
        guard.record_decline("m", "c", rule, float(i % 7))
        assert guard.check("m", "c", rule, float(i % 7)) is None


def test_bad_limits_are_refused(risk):
    with pytest.raises(ValueError):
        risk.RiskLimits(0.0, 1, 1, 1)
    with pytest.raises(ValueError):
        risk.RiskLimits(60.0, -1, 1, 1)


def test_the_guard_is_bounded(risk):
    guard, rule = risk.VelocityGuard(entries_max=10), limits(risk, card=1)
    for i in range(1000):
        guard.check("m", f"card-{i}", rule, 0.0)
    assert len(guard) <= 10


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["check", "decline"]),
            st.sampled_from(["m1", "m2"]),
            st.sampled_from(["a", "b", "c"]),
            st.floats(0, 30, allow_nan=False),
        ),
        max_size=150,
    ),
    merchant=st.integers(0, 20),
    card=st.integers(0, 10),
    declines=st.integers(0, 5),
)
@PROP
def test_both_builds_agree_and_never_let_more_than_the_limit_through(
    both, events, merchant, card, declines
):
    compiled, pure = both
    guards = compiled.VelocityGuard(), pure.VelocityGuard()
    rules = (
        compiled.RiskLimits(100.0, merchant, card, declines),
        pure.RiskLimits(100.0, merchant, card, declines),
    )
    now = 0.0
    allowed: dict[str, int] = {}
    for kind, merchant_id, fingerprint, gap in events:
        now = min(now + gap, 99.0)  # one fixed window: the estimate is the plain count
        if kind == "decline":
            for guard, rule in zip(guards, rules, strict=True):
                guard.record_decline(merchant_id, fingerprint, rule, now)
            continue
        verdicts = [
            guard.check(merchant_id, fingerprint, rule, now)
            for guard, rule in zip(guards, rules, strict=True)
        ]
        assert verdicts[0] == verdicts[1]
        if verdicts[0] is None:
            allowed[merchant_id] = allowed.get(merchant_id, 0) + 1
            allowed[merchant_id + fingerprint] = allowed.get(merchant_id + fingerprint, 0) + 1
            if merchant:
                assert allowed[merchant_id] <= merchant
            if card:
                assert allowed[merchant_id + fingerprint] <= card
