"""Recurring billing's calendar: period boundaries, trial ends and dunning retry dates.

Everything here is a function of its arguments, in integer unix seconds (UTC), so both
builds and the tests agree exactly; the gateway does the I/O (``gateway/billing``).

Periods count from the subscription's anchor and are never computed by adding to the
previous end: boundary ``n`` is the anchor moved by ``n * interval_count`` intervals, in
one step. So nothing drifts, however many renewals run: an anchor of 31 January gives
28 (or 29) February, 31 March, 30 April, 31 May... A month or a year keeps the anchor's
time of day and its day of the month, clamped to the month's length; a day is 86,400
seconds and a week 7 of them (UTC has no daylight saving, and unix time no leap seconds).

Period ``n`` is ``[boundary(n), boundary(n + 1))``: consecutive periods share their
boundary, so they tile time with no gap and no overlap, and ``period_index_at`` finds the
one period holding any instant at or after the anchor.
"""

import cython

INTERVALS = ("day", "week", "month", "year")
INTERVAL_COUNT_MAX = 365  # a price renews at least every 365 intervals (Stripe: 3 years)
TRIAL_DAYS_MAX = 730  # Stripe's own bound on a trial
PERIOD_INDEX_MAX = 100_000  # boundaries past this are refused: no caller needs them
# Dunning: a declined renewal is retried this many days after its first failure; when the
# last retry is declined too, the invoice is uncollectible and the subscription canceled.
DUNNING_RETRY_DAYS = (1, 3, 5)
# A charge no issuer answered is tried again this much later, outside dunning; an invoice
# is attempted at most ATTEMPTS_MAX times in all (the invoice_attempts table's bound).
ERROR_RETRY_S = 3_600
ATTEMPTS_MAX = 10

SECONDS_PER_DAY = 86_400
_DAYS_PER_WEEK = 7
_MONTHS_PER_YEAR = 12
# Unix seconds of 0001-01-01 and 9999-12-31T23:59:59: the years a boundary may fall in.
UNIX_S_MIN = -62_135_596_800
UNIX_S_MAX = 253_402_300_799


@cython.locals(
    era=cython.longlong,
    yoe=cython.longlong,
    mp=cython.longlong,
    doy=cython.longlong,
    doe=cython.longlong,
)
def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@cython.locals(
    era=cython.longlong,
    doe=cython.longlong,
    yoe=cython.longlong,
    y=cython.longlong,
    doy=cython.longlong,
    mp=cython.longlong,
    d=cython.longlong,
    m=cython.longlong,
)
def _civil_from_days(z):
    """(year, month, day) of a day count since 1970-01-01 (the inverse of the above)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return (y, m, d)


def _days_in_month(y, m):
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return 29 if leap else 28
    if m in (4, 6, 9, 11):
        return 30
    return 31


def _check_schedule(interval: object, interval_count: object) -> None:
    if interval not in INTERVALS:
        raise ValueError("interval must be one of " + ", ".join(INTERVALS))
    if (
        not isinstance(interval_count, int)
        or isinstance(interval_count, bool)
        or not 1 <= interval_count <= INTERVAL_COUNT_MAX
    ):
        raise ValueError(f"interval_count must be an integer from 1 to {INTERVAL_COUNT_MAX}")


def _check_instant(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be integer unix seconds")
    if not UNIX_S_MIN <= value <= UNIX_S_MAX:
        raise ValueError(f"{name} is outside the years 1 to 9999")


def _moved(anchor: int, steps: int, interval: str) -> int:
    """The anchor moved by ``steps`` intervals in one step, month ends clamped."""
    if interval == "day":
        return anchor + steps * SECONDS_PER_DAY
    if interval == "week":
        return anchor + steps * _DAYS_PER_WEEK * SECONDS_PER_DAY
    months = steps * (_MONTHS_PER_YEAR if interval == "year" else 1)
    days = anchor // SECONDS_PER_DAY
    time_of_day = anchor - days * SECONDS_PER_DAY
    y, m, d = _civil_from_days(days)
    total = y * _MONTHS_PER_YEAR + (m - 1) + months
    year = total // _MONTHS_PER_YEAR
    month = total - year * _MONTHS_PER_YEAR + 1
    day = min(d, _days_in_month(year, month))
    boundary: int = _days_from_civil(year, month, day) * SECONDS_PER_DAY + time_of_day
    return boundary


def period_end(anchor: int, index: int, interval: str, interval_count: int) -> int:
    """Boundary ``index`` of the periods counted from ``anchor``: the start of period
    ``index`` and the end of period ``index - 1`` (boundary 0 is the anchor itself).
    Computed from the anchor directly, never from an earlier boundary."""
    _check_instant("anchor", anchor)
    _check_schedule(interval, interval_count)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= PERIOD_INDEX_MAX:
        raise ValueError(f"index must be an integer from 0 to {PERIOD_INDEX_MAX}")
    boundary = _moved(anchor, index * interval_count, interval)
    _check_instant("the boundary", boundary)
    return boundary


def period_bounds(anchor: int, index: int, interval: str, interval_count: int) -> tuple[int, int]:
    """(start, end) of period ``index``."""
    return (
        period_end(anchor, index, interval, interval_count),
        period_end(anchor, index + 1, interval, interval_count),
    )


def period_index_at(anchor: int, instant: int, interval: str, interval_count: int) -> int:
    """The period holding ``instant`` (at or after the anchor): the one ``n`` with
    ``boundary(n) <= instant < boundary(n + 1)``."""
    _check_instant("instant", instant)
    if instant < anchor:
        raise ValueError("instant is before the anchor: no period holds it")
    # An estimate from the shortest possible interval, then corrected by a few steps:
    # months are 28..31 days, years 365..366, so the estimate is off by at most a couple.
    _check_schedule(interval, interval_count)
    shortest_days = {"day": 1, "week": 7, "month": 28, "year": 365}[interval] * interval_count
    n = min((instant - anchor) // (shortest_days * SECONDS_PER_DAY), PERIOD_INDEX_MAX - 1)
    while n > 0 and period_end(anchor, n, interval, interval_count) > instant:
        n -= 1
    while period_end(anchor, n + 1, interval, interval_count) <= instant:
        n += 1
    return n


def next_period_end(anchor: int, previous_end: int, interval: str, interval_count: int) -> int:
    """The boundary after ``previous_end`` (a boundary or any instant after the anchor),
    found through the anchor: walking boundary by boundary with this lands exactly on
    ``period_end(anchor, n, ...)``, never on a drifted date."""
    n = period_index_at(anchor, previous_end, interval, interval_count)
    return period_end(anchor, n + 1, interval, interval_count)


def trial_end(start: int, trial_days: int) -> int:
    """When a trial of ``trial_days`` days begun at ``start`` ends (0 days: at once)."""
    _check_instant("start", start)
    if (
        not isinstance(trial_days, int)
        or isinstance(trial_days, bool)
        or not 0 <= trial_days <= TRIAL_DAYS_MAX
    ):
        raise ValueError(f"trial_days must be an integer from 0 to {TRIAL_DAYS_MAX}")
    return start + trial_days * SECONDS_PER_DAY


def retry_at(first_failure: int, declined_at: int, attempts_made: int) -> object:
    """When to charge a declined invoice again: the first of DUNNING_RETRY_DAYS after its
    first failure (at ``first_failure``) still ahead of this decline (at ``declined_at``);
    None when none is, or once ATTEMPTS_MAX attempts have been made: the invoice is
    uncollectible. Counted in time, not in attempts, so an attempt that failed outside
    dunning (error_retry_at) moves no retry."""
    _check_instant("first_failure", first_failure)
    _check_instant("declined_at", declined_at)
    _check_attempts(attempts_made)
    if declined_at < first_failure:
        raise ValueError("declined_at must not be before first_failure")
    if attempts_made >= ATTEMPTS_MAX:
        return None
    for days in DUNNING_RETRY_DAYS:
        due = first_failure + days * SECONDS_PER_DAY
        if due > declined_at:
            return due
    return None


def _check_attempts(attempts_made: object) -> None:
    if not isinstance(attempts_made, int) or isinstance(attempts_made, bool) or attempts_made < 1:
        raise ValueError("attempts_made must be an integer of at least 1")


def error_retry_at(failed_at: int, attempts_made: int) -> object:
    """When to charge again after an attempt no card issuer answered (the processor erred,
    or the gateway died before the processor had it: nothing was charged, and the card is
    not at fault): ERROR_RETRY_S later, outside dunning; None once ATTEMPTS_MAX attempts
    have been made: the invoice is uncollectible."""
    _check_instant("failed_at", failed_at)
    _check_attempts(attempts_made)
    if attempts_made >= ATTEMPTS_MAX:
        return None
    return failed_at + ERROR_RETRY_S
