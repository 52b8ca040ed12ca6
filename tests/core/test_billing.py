"""Recurring billing's calendar (core_ext.*.billing), both builds: periods tile time,
renewals never drift, month ends clamp and come back, trials and dunning dates."""

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

PROP = settings(max_examples=300, deadline=None)

# Anchors from 1900 to 2200, any second of the day: the clamping and leap-year rules are
# exercised on both sides of the epoch and across 1900 and 2100, which are not leap years.
ANCHORS = st.integers(
    int(datetime(1900, 1, 1, tzinfo=UTC).timestamp()),
    int(datetime(2200, 1, 1, tzinfo=UTC).timestamp()),
)
INTERVALS = st.sampled_from(("day", "week", "month", "year"))
COUNTS = st.integers(1, 12)  # with 600 years-long periods from 2200: still before 9999


def unix(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp())


def day_of(seconds: int) -> tuple[int, int, int]:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.year, moment.month, moment.day


def expected_month_boundary(anchor: int, months: int) -> int:
    """The oracle: the stdlib's calendar, month by month from the anchor."""
    start = datetime.fromtimestamp(anchor, UTC)
    total = start.year * 12 + start.month - 1 + months
    year, month = divmod(total, 12)
    day = min(start.day, calendar.monthrange(year, month + 1)[1])
    return int(start.replace(year=year, month=month + 1, day=day).timestamp())


def test_the_31st_clamps_to_each_months_length_and_comes_back(core):
    boundaries = [
        core.billing.period_end(unix(2027, 1, 31, 9, 30), n, "month", 1) for n in range(6)
    ]
    assert [day_of(b) for b in boundaries] == [
        (2027, 1, 31),
        (2027, 2, 28),
        (2027, 3, 31),
        (2027, 4, 30),
        (2027, 5, 31),
        (2027, 6, 30),
    ]
    assert all(datetime.fromtimestamp(b, UTC).time().isoformat() == "09:30:00" for b in boundaries)
    leap = core.billing.period_end(unix(2028, 1, 31), 1, "month", 1)
    assert day_of(leap) == (2028, 2, 29)
    assert day_of(core.billing.period_end(unix(2028, 2, 29), 1, "year", 1)) == (2029, 2, 28)
    assert day_of(core.billing.period_end(unix(2028, 2, 29), 4, "year", 1)) == (2032, 2, 29)


@PROP
@given(anchor=ANCHORS, months=st.integers(0, 1200))
def test_month_boundaries_agree_with_the_stdlib_calendar(core, anchor, months):
    assert core.billing.period_end(anchor, months, "month", 1) == expected_month_boundary(
        anchor, months
    )


@PROP
@given(anchor=ANCHORS, index=st.integers(0, 600), interval=INTERVALS, count=COUNTS)
def test_periods_tile_time_with_no_gap_and_no_overlap(core, anchor, index, interval, count):
    billing = core.billing
    start, end = billing.period_bounds(anchor, index, interval, count)
    following_start, _ = billing.period_bounds(anchor, index + 1, interval, count)
    assert start < end  # every period has a length
    assert end == following_start  # and the next one starts exactly where it ends
    # Every instant of the period belongs to it and to no other.
    for instant in (start, end - 1, (start + end) // 2):
        assert billing.period_index_at(anchor, instant, interval, count) == index
    assert billing.period_index_at(anchor, end, interval, count) == index + 1


@PROP
@given(anchor=ANCHORS, renewals=st.integers(1, 240), interval=INTERVALS, count=COUNTS)
def test_n_renewals_never_drift(core, anchor, renewals, interval, count):
    """Boundary n computed directly from the anchor is the one reached by renewing n
    times, each renewal stepping from the previous end."""
    billing = core.billing
    walked = anchor
    for _ in range(renewals):
        walked = billing.next_period_end(anchor, walked, interval, count)
    assert walked == billing.period_end(anchor, renewals, interval, count)
    if interval == "month":
        anchor_day = day_of(anchor)[2]
        year, month, day = day_of(walked)
        assert day == min(anchor_day, calendar.monthrange(year, month)[1])


@PROP
@given(anchor=ANCHORS, index=st.integers(0, 500))
def test_days_and_weeks_are_fixed_lengths(core, anchor, index):
    assert core.billing.period_end(anchor, index, "day", 1) == anchor + index * 86_400
    assert core.billing.period_end(anchor, index, "week", 2) == anchor + index * 14 * 86_400


@PROP
@given(anchor=ANCHORS, index=st.integers(0, 600), interval=INTERVALS, count=COUNTS)
def test_both_builds_agree(compiled, pure, anchor, index, interval, count):
    assert compiled.billing.period_end(anchor, index, interval, count) == pure.billing.period_end(
        anchor, index, interval, count
    )


def test_trial_end_is_whole_days_from_the_start(core):
    start = unix(2027, 3, 27, 23, 0)
    assert core.billing.trial_end(start, 0) == start
    assert core.billing.trial_end(start, 14) == int(
        (datetime.fromtimestamp(start, UTC) + timedelta(days=14)).timestamp()
    )
    # Out of range is a ValueError; not an int at all is refused too (the compiled build's
    # typed signature raises TypeError for it before the body runs).
    for bad in (-1, core.billing.TRIAL_DAYS_MAX + 1, 1.5, True, "3"):
        with pytest.raises((ValueError, TypeError)):
            core.billing.trial_end(start, bad)


def test_dunning_retries_after_1_3_and_5_days_then_gives_up(core):
    failed = unix(2027, 5, 1, 12)
    day = 86_400
    assert core.billing.DUNNING_RETRY_DAYS == (1, 3, 5)
    assert core.billing.retry_at(failed, failed, 1) == failed + day
    assert core.billing.retry_at(failed, failed + day, 2) == failed + 3 * day
    assert core.billing.retry_at(failed, failed + 3 * day, 3) == failed + 5 * day
    assert core.billing.retry_at(failed, failed + 5 * day, 4) is None
    # Counted in time: a retry run late, or after attempts outside dunning, moves nothing.
    assert core.billing.retry_at(failed, failed + day + 3_600, 3) == failed + 3 * day
    assert core.billing.retry_at(failed, failed + 4 * day, 2) == failed + 5 * day
    # And never past ATTEMPTS_MAX attempts in all.
    assert core.billing.retry_at(failed, failed, core.billing.ATTEMPTS_MAX) is None
    with pytest.raises(ValueError):
        core.billing.retry_at(failed, failed - 1, 1)
    for bad in (0, True, 1.5):
        with pytest.raises((ValueError, TypeError)):
            core.billing.retry_at(failed, failed, bad)


def test_a_charge_no_issuer_answered_is_retried_an_hour_later_up_to_ten_attempts(core):
    failed = unix(2027, 5, 1, 12)
    assert core.billing.ERROR_RETRY_S == 3_600 and core.billing.ATTEMPTS_MAX == 10
    assert core.billing.error_retry_at(failed, 1) == failed + 3_600
    assert core.billing.error_retry_at(failed, 9) == failed + 3_600
    assert core.billing.error_retry_at(failed, 10) is None
    for bad in (0, True, 1.5):
        with pytest.raises((ValueError, TypeError)):
            core.billing.error_retry_at(failed, bad)


def test_bad_schedules_are_refused(core):
    anchor = unix(2027, 1, 1)
    for interval, count in (("fortnight", 1), ("month", 0), ("month", 366), ("day", True)):
        with pytest.raises((ValueError, TypeError)):
            core.billing.period_end(anchor, 1, interval, count)
    with pytest.raises(ValueError):
        core.billing.period_end(anchor, -1, "month", 1)
    with pytest.raises(TypeError):
        core.billing.period_end(float(anchor), 1, "month", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        core.billing.period_index_at(anchor, anchor - 1, "month", 1)
    with pytest.raises(ValueError):  # past the year 9999
        core.billing.period_end(unix(9999, 6, 1), 12, "month", 1)
