"""Prometheus metrics: every name Kassa exposes, and the small functions that record them.

Names follow Prometheus conventions: a ``kassa_`` prefix, base units (seconds, minor
units), ``_total`` for counters, and label sets that are bounded by construction (route
templates, never paths; a fixed tuple of decline codes; ISO 4217 currencies the core has
already validated). Nothing from a request body, no card number and no key ever becomes a
label value.

Several worker processes (``kassa serve --workers N``) share one port, so a scrape reaches
whichever worker the kernel picks. The supervisor therefore points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before spawning the workers: each worker
writes its samples to memory-mapped files there, and ``/metrics`` (served by any worker)
merges all of them with a ``MultiProcessCollector``, so counters from every worker add up.
Without that variable (tests, ``create_app`` in-process) the default registry is used.

Gauges that can only be read in-process (pool in use, pipeline depth) cannot use a scrape
callback in multiprocess mode (the scraping worker cannot see another worker's pool), so
every worker samples them once a second (``gateway.observability.sample_forever``) and
the scraping worker samples again just before answering.
"""

from __future__ import annotations

import bisect
import collections
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

import core_ext

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Every SLO threshold is a bucket boundary, so an SLO's ratio is exact, not interpolated.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# Commit to 2xx: seconds when the deliverer keeps up, up to an hour when retries ran.
WEBHOOK_LATENCY_BUCKETS_S = (
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    *(60.0, 300.0, 1800.0, 3600.0),
)
WEBHOOK_ATTEMPTS_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8)  # the default schedule allows 8 attempts

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Decline codes a processor may give; anything else is counted as "other" so a processor
# cannot grow the label set without bound.
DECLINE_CODES = frozenset(
    {
        "generic_decline",
        "insufficient_funds",
        "lost_card",
        "stolen_card",
        "expired_card",
        "incorrect_cvc",
        "incorrect_number",
        "card_not_supported",
        "currency_not_supported",
        "do_not_honor",
        "fraudulent",
        "pickup_card",
        "processing_error",
        "try_again_later",
        "withdrawal_count_limit_exceeded",
        "card_velocity_exceeded",
        "authentication_required",
    }
)
AUTHORIZATION_OUTCOMES = ("approved", "declined", "error", "timeout")

# --- HTTP (RED) ---------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "kassa_http_requests",
    "HTTP requests answered, by route template, method and status class.",
    ["route", "method", "status_class"],
)
HTTP_REQUEST_DURATION = Histogram(
    "kassa_http_request_duration_seconds",
    "Time from the request reaching the application to its answer, by route template.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS_S,
)

# --- payments -----------------------------------------------------------------------------

AUTHORIZATIONS = Counter(
    "kassa_authorizations",
    "Processor authorizations by outcome (approved, declined, error, timeout) and decline code.",
    ["processor", "outcome", "decline_code"],
)
CAPTURES = Counter("kassa_captures", "Captures the processor accepted.", ["processor"])
VOIDS = Counter("kassa_voids", "Voids the processor accepted.", ["processor"])
REFUNDS = Counter("kassa_refunds", "Refunds the processor accepted.", ["processor"])
AUTHORIZED_AMOUNT = Counter(
    "kassa_authorized_amount_minor_units",
    "Approved authorization amounts in the currency's minor unit (ISO 4217 exponent).",
    ["currency"],
)
PAYMENTS_STUCK = Gauge(
    "kassa_payments_stuck_processing",
    "Payments still 'processing' after KASSA_RECOVERY_AFTER_S (recovery should settle them).",
    multiprocess_mode="livemostrecent",
)
RECOVERY_ACTIONS = Counter(
    "kassa_recovery_actions",
    "Payments recovery settled by asking the processor, by the settled result.",
    ["result"],
)
AUTHORIZATIONS_EXPIRED = Counter(
    "kassa_authorizations_expired", "Uncaptured authorizations expired by the background loop."
)
BACKGROUND_FAILURES = Counter(
    "kassa_background_pass_failures", "Background (recovery, expiry, sweep) passes that failed."
)

RATE_LIMITED = Counter(
    "kassa_rate_limited", "Requests refused with 429 rate_limit by the per-key token bucket."
)
RISK_DECLINES = Counter(
    "kassa_risk_declines",
    "Authorizations the card-testing rules declined (card_velocity_exceeded), by rule.",
    ["rule"],
)

# --- webhooks -----------------------------------------------------------------------------

# What became of a delivery after one attempt: delivered (2xx), retrying (scheduled
# again), failed (schedule exhausted), endpoint_disabled (410, or failing longer than the
# disable window), canceled (the endpoint was deleted or disabled meanwhile).
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed", "endpoint_disabled", "canceled")
WEBHOOK_DISABLE_REASONS = ("gone", "failing")  # 410 Gone; failing for the disable window
WEBHOOK_ENDPOINT_STATUSES = ("enabled", "disabled")

WEBHOOK_DELIVERIES = Counter(
    "kassa_webhook_deliveries",
    "Webhook delivery attempts, by what became of the delivery (outcome) and the answer's "
    "status class (or timeout, connection_error, refused_address).",
    ["outcome", "status_class"],
)
WEBHOOK_DELIVERY_LATENCY = Histogram(
    "kassa_webhook_delivery_latency_seconds",
    "Time from an event's commit to the 2xx answer that delivered it (retries included).",
    buckets=WEBHOOK_LATENCY_BUCKETS_S,
)
WEBHOOK_HANDOFFS_DROPPED = Counter(
    "kassa_webhook_handoffs_dropped",
    "Webhook deliveries a process wrote but could not start sending in time (its slots were "
    "full): sent later through the claim path, once their lease lapsed.",
)
WEBHOOK_DELIVERY_ATTEMPTS = Histogram(
    "kassa_webhook_delivery_attempts",
    "Attempts a webhook delivery took, observed when it was delivered or failed.",
    buckets=WEBHOOK_ATTEMPTS_BUCKETS,
)
# Sampled from the database by every worker: they all see the same table, so the live
# workers' maximum is the answer (a dead worker's last sample must not linger: live).
WEBHOOK_OLDEST_PENDING = Gauge(
    "kassa_webhook_oldest_pending_seconds",
    "Age of the oldest webhook delivery that is due (pending, next attempt in the past); 0 if none.",
    multiprocess_mode="livemax",
)
WEBHOOK_ENDPOINTS = Gauge(
    "kassa_webhook_endpoints",
    "Webhook endpoints by status (enabled, disabled), sampled from the database.",
    ["status"],
    multiprocess_mode="livemax",
)
WEBHOOK_ENDPOINTS_DISABLED = Counter(
    "kassa_webhook_endpoints_disabled",
    "Webhook endpoints Kassa disabled, by reason: gone (the receiver answered 410), "
    "failing (every delivery failed for KASSA_WEBHOOK_DISABLE_AFTER_S).",
    ["reason"],
)

# --- recurring billing ----------------------------------------------------------------------

# A scheduler's charge of an invoice: succeeded (paid), declined, failed (processor error, or
# no card to charge), unknown (no answer yet: the same attempt is sent again after the lease).
BILLING_CHARGE_OUTCOMES = ("succeeded", "declined", "failed", "unknown")
BILLING_END_REASONS = ("period_end", "dunning")  # canceled at its period's end; retries spent
BILLING_BATCH_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

BILLING_CHARGES = Counter(
    "kassa_billing_charges",
    "Invoice charges the billing schedulers made, by outcome (succeeded, declined, failed, "
    "unknown: sent again after the lease).",
    ["outcome"],
)
BILLING_SUBSCRIPTIONS_ENDED = Counter(
    "kassa_billing_subscriptions_ended",
    "Subscriptions the schedulers canceled, by reason: period_end (canceled at the period's "
    "end), dunning (the last retry of an invoice was declined).",
    ["reason"],
)
BILLING_BATCH_DURATION = Histogram(
    "kassa_billing_batch_duration_seconds",
    "One claimed batch of due subscriptions, from its write-ahead to its record.",
    buckets=BILLING_BATCH_BUCKETS_S,
)

# --- processor client ---------------------------------------------------------------------

PROCESSOR_DURATION = Histogram(
    "kassa_processor_request_duration_seconds",
    "Processor call latency (including failed and timed-out calls).",
    ["processor", "operation"],
    buckets=LATENCY_BUCKETS_S,
)
PROCESSOR_ERRORS = Counter(
    "kassa_processor_errors",
    "Processor calls that failed (kind=error) or timed out (kind=timeout).",
    ["processor", "operation", "kind"],
)

# --- idempotency --------------------------------------------------------------------------

IDEMPOTENT_REPLAYS = Counter(
    "kassa_idempotency_replays", "Stored answers replayed for a repeated Idempotency-Key."
)
IDEMPOTENCY_CONFLICTS = Counter(
    "kassa_idempotency_conflicts",
    "Idempotency-Key refusals: 409 idempotency_key_in_use, 422 idempotency_key_reused.",
    ["code"],
)

# --- ledger -------------------------------------------------------------------------------

LEDGER_ENTRIES = Counter("kassa_ledger_entries_posted", "Ledger entries written.")
LEDGER_VERIFY_OK = Gauge(
    "kassa_ledger_verify_ok",
    "1 if the last periodic ledger balance check passed, 0 if it found a problem.",
    multiprocess_mode="livemostrecent",
)
LEDGER_VERIFY_TIMESTAMP = Gauge(
    "kassa_ledger_verify_timestamp_seconds",
    "Unix time of the last completed periodic ledger balance check.",
    multiprocess_mode="livemax",
)

# --- internals ----------------------------------------------------------------------------

COMMIT_BATCH_ROWS = Histogram(
    "kassa_pipeline_commit_batch_rows",
    "Items written per group-commit transaction.",
    ["pipeline"],
    buckets=BATCH_ROWS_BUCKETS,
)
COMMIT_DURATION = Histogram(
    "kassa_pipeline_commit_duration_seconds",
    "Time to acquire a connection, write a batch and commit it.",
    ["pipeline"],
    buckets=LATENCY_BUCKETS_S,
)
PIPELINE_DEPTH = Gauge(
    "kassa_pipeline_queue_depth",
    "Writes accepted by the commit pipelines and not yet answered.",
    multiprocess_mode="livesum",
)
PIPELINE_SHED = Counter(
    "kassa_pipeline_shed",
    "Writes refused with 503 gateway_overloaded because a pipeline was full.",
    ["pipeline"],
)
DB_POOL_CONNECTIONS = Gauge(
    "kassa_db_pool_connections",
    "Database pool connections by state (in_use, idle).",
    ["state"],
    multiprocess_mode="livesum",
)
DB_POOL_MAX = Gauge(
    "kassa_db_pool_max_connections",
    "Configured maximum size of the database pools.",
    multiprocess_mode="livesum",
)
DB_POOL_ACQUIRE = Histogram(
    "kassa_db_pool_acquire_duration_seconds",
    "Time waiting for a pooled database connection.",
    buckets=LATENCY_BUCKETS_S,
)
LOOP_LAG = Histogram(
    "kassa_event_loop_lag_seconds",
    "How late the event loop woke a sleeping task: time the loop was busy elsewhere.",
    buckets=LOOP_LAG_BUCKETS_S,
)
BUILD_INFO = Gauge(
    "kassa_build_info",
    "Always 1; labels say which core build the workers run.",
    ["core"],
    multiprocess_mode="livemax",
)


# --- recording functions (call sites in payments, pipeline, ledger, recovery) ------------


def decline_label(code: str | None) -> str:
    if not code:
        return "none"
    return code if code in DECLINE_CODES else "other"


def authorization(processor: str, outcome: str, decline_code: str | None = None) -> None:
    """One authorization answered by the processor (or not: error, timeout)."""
    AUTHORIZATIONS.labels(processor, outcome, decline_label(decline_code)).inc()


def amount_authorized(currency: str, amount: int) -> None:
    """``currency`` must be one the core validated (ISO 4217 table): bounded labels."""
    AUTHORIZED_AMOUNT.labels(currency.upper()).inc(amount)


def risk_decline(rule: str) -> None:
    """``rule`` is one of core_ext.risk.RULES: bounded labels."""
    RISK_DECLINES.labels(rule).inc()


def ledger_entries_posted(count: int) -> None:
    if count:
        LEDGER_ENTRIES.inc(count)


def commit_batch(pipeline: str, rows: int, seconds: float) -> None:
    """One group-commit transaction of ``rows`` items committed in ``seconds``."""
    COMMIT_BATCH_ROWS.labels(pipeline).observe(rows)
    COMMIT_DURATION.labels(pipeline).observe(seconds)


def pipeline_shed(pipeline: str) -> None:
    PIPELINE_SHED.labels(pipeline).inc()


def pipeline_depth(items: int) -> None:
    PIPELINE_DEPTH.set(items)


RECOVERY_RESULTS = frozenset({"approved", "declined", "failed"})
_WEBHOOK_STATUS_CLASSES = frozenset(core_ext.webhooks.STATUS_CLASSES)


def recovery_action(result: str) -> None:
    RECOVERY_ACTIONS.labels(result if result in RECOVERY_RESULTS else "other").inc()


def ledger_verified(ok: bool, at: float | None = None) -> None:
    LEDGER_VERIFY_OK.set(1 if ok else 0)
    LEDGER_VERIFY_TIMESTAMP.set(time.time() if at is None else at)


# Children by (outcome, status class): at most 5 x 7, looked up once per attempt.
_WEBHOOK_CHILDREN: dict[tuple[str, str], Any] = {}


def webhook_attempts(outcome: str, status_class: str, count: int) -> None:
    """``count`` delivery attempts ended so; ``status_class`` from
    ``core_ext.webhooks.status_class``."""
    key = (
        outcome if outcome in WEBHOOK_OUTCOMES else "other",
        status_class if status_class in _WEBHOOK_STATUS_CLASSES else "other",
    )
    child = _WEBHOOK_CHILDREN.get(key)
    if child is None:
        child = _WEBHOOK_CHILDREN[key] = WEBHOOK_DELIVERIES.labels(*key)
    child.inc(count)


def webhooks_delivered(latencies_s: Sequence[float], attempts: Sequence[int]) -> None:
    """Deliveries got their 2xx ``latencies_s`` after their events committed, on attempts
    ``attempts`` (one of each per delivery, a recorded batch's)."""
    # Clocks of two hosts may disagree: never a negative latency.
    _observe_all(WEBHOOK_DELIVERY_LATENCY, [max(s, 0.0) for s in latencies_s])
    _observe_all(WEBHOOK_DELIVERY_ATTEMPTS, attempts)


def webhooks_failed(attempts: Sequence[int]) -> None:
    """Deliveries exhausted their schedule, after ``attempts`` attempts each."""
    _observe_all(WEBHOOK_DELIVERY_ATTEMPTS, attempts)


def _observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe`` of every value, in one write per bucket touched and one for
    the sum. In multiprocess mode each write takes a lock, a getpid and a write to the
    memory map: observed one by one, a delivery's two histograms cost the deliverer 3.9 us
    (7 under the benchmark's load: py-spy), batched a tenth of that. This reads the
    histogram's own bounds and values (prometheus_client keeps them private, stable since
    0.4); tests/test_metrics.py checks the result against ``observe``, sample by sample."""
    if not values:
        return
    bounds = histogram._upper_bounds  # ascending, +Inf last: every value has a bucket
    counts = collections.Counter(bisect.bisect_left(bounds, v) for v in values)
    for index, count in counts.items():
        histogram._buckets[index].inc(count)
    histogram._sum.inc(sum(values))


def billing_charge(outcome: str | None) -> None:
    """One charge of an invoice ended; None: its outcome is unknown."""
    label = "unknown" if outcome is None else outcome
    BILLING_CHARGES.labels(label if label in BILLING_CHARGE_OUTCOMES else "other").inc()


def billing_subscriptions_ended(reason: str, count: int) -> None:
    if count:
        BILLING_SUBSCRIPTIONS_ENDED.labels(
            reason if reason in BILLING_END_REASONS else "other"
        ).inc(count)


def billing_batch(seconds: float) -> None:
    BILLING_BATCH_DURATION.observe(seconds)


def webhook_endpoint_disabled(reason: str) -> None:
    WEBHOOK_ENDPOINTS_DISABLED.labels(
        reason if reason in WEBHOOK_DISABLE_REASONS else "other"
    ).inc()


def set_webhook_backlog(oldest_pending_s: float, endpoints_by_status: Mapping[str, int]) -> None:
    """The database sample: the oldest due delivery's age, endpoint counts by status."""
    WEBHOOK_OLDEST_PENDING.set(max(oldest_pending_s, 0.0))
    for status in WEBHOOK_ENDPOINT_STATUSES:  # a status with no endpoint reads 0, not stale
        WEBHOOK_ENDPOINTS.labels(status).set(endpoints_by_status.get(status, 0))


# Labelled children by (route, method, status class): a bounded set (route templates,
# a fixed method set, five classes). labels() looks its child up through a lock and a
# tuple of label values on every call, ~5% of a worker's CPU per request when uncached.
_HTTP_CHILDREN: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def http_request(route: str, method: str, status: int, elapsed_s: float) -> None:
    """Count one answered request and observe its duration."""
    key = (route, method, status_class(status))
    children = _HTTP_CHILDREN.get(key)
    if children is None:
        children = (
            HTTP_REQUESTS.labels(*key),
            HTTP_REQUEST_DURATION.labels(route, method),
        )
        _HTTP_CHILDREN[key] = children
    children[0].inc()
    children[1].observe(elapsed_s)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "5xx"


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


def install() -> None:
    """Connect the hooks other modules expose to these metrics (``create_app`` calls it;
    calling it again re-connects them, e.g. after a test replaced an observer)."""
    from gateway.store import ledger, pipeline

    pipeline.set_observers(commit_batch, pipeline_shed)
    ledger.observe_entries = ledger_entries_posted
    import core_ext

    BUILD_INFO.labels("compiled" if core_ext.COMPILED else "pure").set(1)
    for rule in core_ext.risk.RULES:  # every rule's series exists from the start: rate() works
        RISK_DECLINES.labels(rule)
    # Likewise: the first disabled endpoint must be an increase from 0 the alert can see.
    for reason in WEBHOOK_DISABLE_REASONS:
        WEBHOOK_ENDPOINTS_DISABLED.labels(reason)


# --- exposition ---------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def exposition() -> tuple[bytes, str]:
    """The text format of every worker's metrics (or this process's, without a supervisor)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
