"""Observability: /metrics (in-process and summed over N worker processes), the access log,
request ids, and the background gauges."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import core_ext
from gateway import metrics, observability
from gateway.config import FIELDS
from gateway.http.appkeys import SETTINGS
from gateway.logs import JsonFormatter
from tests.payments_helpers import (
    APPROVED_VISA,
    ERROR_CARD,
    TIMEOUT_CARD,
    authorize,
    payment_body,
    post,
)
from tests.promtool import run as run_promtool

REQUESTS_R = 60
DEFAULT_POOL_MAX = int(FIELDS["db_pool_max"].default)


# --- helpers ------------------------------------------------------------------------------


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, missing: float | None = None, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``.

    No such sample is a failure (a series that is not exposed must not read as 0 and pass
    an assertion like ``== 0``), unless ``missing`` says what it means: a scrape taken
    before a labelled counter was first incremented has no series, which is 0 then.
    """
    found = [
        v
        for n, have, v in samples(text)
        if n == name and all(have.get(k) == want for k, want in labels.items())
    ]
    if not found:
        assert missing is not None, f"no {name}{labels or ''} in the exposition"
        return missing
    return sum(found)


def delta(before: str, after: str, name: str, **labels: str) -> float:
    """How much the series changed between two scrapes: it must exist in the second."""
    return value(after, name, **labels) - value(before, name, missing=0, **labels)


async def scrape(client) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return await response.text()


def exposed_names(text: str) -> set[str]:
    return {name for name, _, _ in samples(text)}


# --- in-process -----------------------------------------------------------------------------


async def test_requests_are_counted_by_route_template_method_and_status_class(client, merchant):
    before = await scrape(client)
    for _ in range(3):
        assert (await client.get("/v1/payments/pay_nope", headers=merchant.headers)).status == 404
    assert (await client.get("/v1/nothing", headers=merchant.headers)).status == 404
    assert (await client.get("/healthz")).status == 200
    after = await scrape(client)

    def requests(**labels: str) -> float:
        return delta(before, after, "kassa_http_requests_total", **labels)

    assert requests(route="/v1/payments/{id}", method="GET", status_class="4xx") == 3
    assert requests(route="unmatched", method="GET", status_class="4xx") == 1
    assert requests(route="/healthz", method="GET", status_class="2xx") == 1
    assert requests(route="/metrics", method="GET", status_class="2xx") == 1  # the first scrape
    assert requests() == 6
    histogram = "kassa_http_request_duration_seconds_bucket"
    buckets = {
        float(labels["le"])
        for name, labels, _ in samples(after)
        if name == histogram and labels["route"] == "/healthz"
    }
    assert set(metrics.LATENCY_BUCKETS_S) <= buckets
    assert "pay_nope" not in after  # a route template, never a path


async def test_payment_processor_and_idempotency_metrics(app_factory, merchant, db):
    client = await app_factory(processor_timeout_ms=200)
    before = await scrape(client)
    status, paid = await authorize(
        client, merchant, APPROVED_VISA, amount=500, currency="jpy", capture="automatic"
    )
    assert status == 201
    assert (await authorize(client, merchant, "4000000000009995"))[0] == 402
    assert (await authorize(client, merchant, ERROR_CARD))[0] == 502
    assert (await authorize(client, merchant, TIMEOUT_CARD, key="t-1"))[0] == 504
    assert (await authorize(client, merchant, TIMEOUT_CARD, key="t-1"))[0] == 409  # in use
    status, manual = await authorize(client, merchant, key="k-1")
    assert (await authorize(client, merchant, key="k-1"))[0] == 201  # replayed
    assert (await authorize(client, merchant, key="k-1", amount=7))[0] == 422  # reused
    assert (await post(client, f"/v1/payments/{manual['id']}/void", merchant))[0] == 200
    assert (await post(client, f"/v1/payments/{paid['id']}/refunds", merchant, {"amount": 100}))[
        0
    ] == 201
    after = await scrape(client)

    def change(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    authorizations = "kassa_authorizations_total"
    assert change(authorizations, processor="sandbox", outcome="approved") == 2
    assert change(authorizations, outcome="declined", decline_code="insufficient_funds") == 1
    assert change(authorizations, outcome="error") == 1
    assert change(authorizations, outcome="timeout") == 1
    assert change("kassa_processor_errors_total", operation="authorize", kind="timeout") == 1
    assert change("kassa_processor_errors_total", operation="authorize", kind="error") == 1
    assert change("kassa_processor_request_duration_seconds_count", operation="authorize") == 5
    assert change("kassa_captures_total", processor="sandbox") == 1  # the automatic capture
    assert change("kassa_voids_total") == 1
    assert change("kassa_refunds_total") == 1
    assert change("kassa_authorized_amount_minor_units_total", currency="JPY") == 500
    assert change("kassa_authorized_amount_minor_units_total", currency="EUR") == 1999
    assert change("kassa_idempotency_replays_total") == 1
    assert change("kassa_idempotency_conflicts_total", code="idempotency_key_in_use") == 1
    assert change("kassa_idempotency_conflicts_total", code="idempotency_key_reused") == 1
    # Group commit and the ledger report through the hooks pipeline.py and ledger.py expose:
    # an intent row for each of the five payments created and for the timeout's retry (its
    # claim lost to the first, in the database: 409); the replay and the reused key were
    # answered before that. A settlement row per processor answer recorded (approved,
    # declined, failed, the manual one; the timeout is settled later). Every ledger entry.
    payments = await db.fetchval("SELECT count(*) FROM payments")
    assert payments == 5
    assert change("kassa_pipeline_commit_batch_rows_sum", pipeline="intents") == payments + 1
    assert 1 <= change("kassa_pipeline_commit_batch_rows_count", pipeline="intents") <= payments + 1
    assert change("kassa_pipeline_commit_batch_rows_sum", pipeline="settlements") == 4
    assert change("kassa_pipeline_commit_duration_seconds_count", pipeline="settlements") == (
        change("kassa_pipeline_commit_batch_rows_count", pipeline="settlements")
    )
    entries = await db.fetchval("SELECT count(*) FROM ledger_entries")
    assert entries > 0
    assert change("kassa_ledger_entries_posted_total") == entries
    assert change("kassa_http_requests_total", route="/v1/payments", status_class="5xx") == 2
    # Card numbers and keys never reach a metric.
    assert APPROVED_VISA not in after and merchant.secret not in after


async def test_internal_gauges_and_histograms_are_exposed(client, merchant):
    assert (await client.get("/v1/balance", headers=merchant.headers)).status == 200
    await asyncio.sleep(observability.SAMPLE_INTERVAL_S * 2.5)  # a few loop-lag samples
    text = await scrape(client)
    settings = client.app[SETTINGS]
    assert value(text, "kassa_db_pool_max_connections") == settings.db_pool_max
    # Sampled while no request is running: every open connection is idle, and both states
    # add up to what the pool holds (at least its minimum).
    in_use = value(text, "kassa_db_pool_connections", state="in_use")
    idle = value(text, "kassa_db_pool_connections", state="idle")
    assert in_use == 0
    assert settings.db_pool_min <= idle <= settings.db_pool_max
    assert value(text, "kassa_db_pool_acquire_duration_seconds_count") >= 1
    assert value(text, "kassa_event_loop_lag_seconds_count") >= 2
    assert "kassa_pipeline_queue_depth" in exposed_names(text)
    assert value(text, "kassa_build_info", core="compiled" if core_ext.COMPILED else "pure") == 1


async def test_webhook_metrics_are_recorded_with_bounded_labels(client):
    before = await scrape(client)
    # No delivery yet: the families are exposed, and so are the disabled-endpoint series
    # (an alert on increase() must see the first one).
    for reason in metrics.WEBHOOK_DISABLE_REASONS:
        value(before, "kassa_webhook_endpoints_disabled_total", reason=reason)
    assert {
        "kassa_webhook_oldest_pending_seconds",
        "kassa_webhook_delivery_latency_seconds_count",
        "kassa_webhook_delivery_attempts_count",
    } <= exposed_names(before)

    classify = core_ext.webhooks.status_class
    metrics.webhook_attempts("retrying", classify(503, None), 1)
    metrics.webhook_attempts("retrying", classify(None, "timeout: no answer in 15 s"), 1)
    metrics.webhook_attempts("delivered", classify(204, None), 3)  # one batch's
    metrics.webhooks_delivered(latencies_s=[42.0], attempts=[3])
    metrics.webhook_attempts("failed", classify(None, "refused_address: 10.0.0.1 is private"), 1)
    metrics.webhooks_failed(attempts=[8])
    metrics.webhook_attempts("endpoint_disabled", classify(410, None), 1)
    metrics.webhook_endpoint_disabled("gone")
    metrics.webhook_attempts("made-up outcome", "a status nobody defined", 1)
    metrics.set_webhook_backlog(12.5, {"enabled": 3})
    # Read at once, with no await in between: the app's own deliverer samples these gauges
    # from the database every few seconds and may set them again at any await.
    gauges = metrics.exposition()[0].decode()
    after = await scrape(client)

    def attempts(**labels: str) -> float:
        return delta(before, after, "kassa_webhook_deliveries_total", **labels)

    assert attempts(outcome="retrying", status_class="5xx") == 1
    assert attempts(outcome="retrying", status_class="timeout") == 1
    assert attempts(outcome="delivered", status_class="2xx") == 3
    assert attempts(outcome="failed", status_class="refused_address") == 1
    assert attempts(outcome="endpoint_disabled", status_class="4xx") == 1
    assert attempts(outcome="other", status_class="other") == 1  # never a free-form label
    assert attempts() == 8
    latency = "kassa_webhook_delivery_latency_seconds"
    assert delta(before, after, f"{latency}_count") == 1
    assert delta(before, after, f"{latency}_bucket", le="60.0") == 1
    assert delta(before, after, f"{latency}_bucket", le="30.0") == 0
    assert delta(before, after, "kassa_webhook_delivery_attempts_count") == 2
    assert delta(before, after, "kassa_webhook_delivery_attempts_sum") == 11
    assert delta(before, after, "kassa_webhook_endpoints_disabled_total", reason="gone") == 1
    assert value(gauges, "kassa_webhook_oldest_pending_seconds") == 12.5
    assert value(gauges, "kassa_webhook_endpoints", status="enabled") == 3
    assert value(gauges, "kassa_webhook_endpoints", status="disabled") == 0
    metrics.set_webhook_backlog(0.0, {})


def test_a_batch_of_observations_is_the_same_as_observing_each():
    # gateway/metrics.py writes a histogram's batch through its private buckets and sum:
    # should prometheus_client change them, this says so.
    buckets = metrics.WEBHOOK_LATENCY_BUCKETS_S
    values = [0.0, buckets[0], buckets[0] + 1e-9, buckets[3], 7.5, buckets[-1], 10 * buckets[-1]]
    registries = [CollectorRegistry(), CollectorRegistry()]
    one_by_one, batched = (
        Histogram("latency_seconds", "a latency", buckets=buckets, registry=r) for r in registries
    )
    for v in values + values[:3]:
        one_by_one.observe(v)
    metrics._observe_all(batched, values)
    metrics._observe_all(batched, values[:3])
    metrics._observe_all(batched, [])
    exposed = [
        [s for s in samples(generate_latest(r).decode()) if not s[0].endswith("_created")]
        for r in registries
    ]
    assert exposed[0] == exposed[1]
    assert ("latency_seconds_count", {}, 10.0) in exposed[1]


async def test_stuck_payments_gauge_and_ledger_check(app_factory, merchant, db):
    # Recovery runs once at start, then not for an hour: it must not settle our payment.
    client = await app_factory(processor_timeout_ms=100, recovery_interval_s=3600)
    assert (await authorize(client, merchant))[0] == 201
    assert (await authorize(client, merchant, TIMEOUT_CARD))[0] == 504
    assert await observability.refresh_stuck_payments(db, 30) == 0  # not old enough yet
    await db.execute(
        "UPDATE payments SET updated_at = now() - interval '1 hour' WHERE status = 'processing'"
    )
    assert await observability.refresh_stuck_payments(db, 30) == 1
    assert await observability.check_ledger(db) is True
    text = await scrape(client)
    assert value(text, "kassa_payments_stuck_processing") == 1
    assert value(text, "kassa_ledger_verify_ok") == 1
    stamp = value(text, "kassa_ledger_verify_timestamp_seconds")
    assert abs(stamp - time.time()) < 60  # the check just ran, and says when
    # An unbalanced entry (written around the schema's balance trigger) is found.
    async with db.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        try:
            await conn.execute(
                """INSERT INTO ledger_entries (transaction_id, account, currency, amount)
                   SELECT id, 'merchant:x:EUR:available', 'EUR', 1
                     FROM ledger_transactions LIMIT 1"""
            )
        finally:
            await conn.execute("SET session_replication_role = DEFAULT")
    assert await observability.check_ledger(db) is False
    text = await scrape(client)
    assert value(text, "kassa_ledger_verify_ok") == 0
    assert stamp <= value(text, "kassa_ledger_verify_timestamp_seconds") <= time.time()


# --- request ids and the access log ---------------------------------------------------------


def access_lines(caplog) -> list[dict]:
    formatter = JsonFormatter()
    return [orjson.loads(formatter.format(r)) for r in caplog.records if r.name == "kassa.access"]


async def test_request_id_is_echoed_or_generated(client):
    response = await client.get("/healthz", headers={"X-Request-Id": "checkout-42"})
    assert response.headers["X-Request-Id"] == "checkout-42"
    for bad in ("x" * 201, "tab\there", "é-accented"):
        response = await client.get("/healthz", headers={"X-Request-Id": bad})
        generated = response.headers["X-Request-Id"]
        assert generated != bad and 1 <= len(generated) <= 200
    response = await client.get("/healthz")
    assert len(response.headers["X-Request-Id"]) == 32
    other = await client.get("/healthz")
    assert other.headers["X-Request-Id"] != response.headers["X-Request-Id"]


async def test_one_access_line_per_request_without_secrets(client, merchant, caplog):
    caplog.set_level(logging.INFO, logger="kassa.access")
    body = payment_body(APPROVED_VISA)
    response = await client.post(
        "/v1/payments", json=body, headers={**merchant.headers, "X-Request-Id": "req-1"}
    )
    assert response.status == 201
    payment_id = (await response.json())["id"]
    response = await client.get(
        f"/v1/payments/{payment_id}", headers={**merchant.headers, "X-Request-Id": "req-2"}
    )
    assert response.status == 200
    assert (await client.get("/v1/balance")).status == 401
    lines = access_lines(caplog)
    assert [line["request_id"] for line in lines[:2]] == ["req-1", "req-2"]
    assert len(lines) == 3
    first, second, third = lines
    assert first["route"] == "/v1/payments" and first["method"] == "POST"
    assert first["status"] == 201 and first["merchant_id"] == merchant.id
    assert first["level"] == "info" and 0 < first["latency_s"] < 10
    assert second["route"] == "/v1/payments/{id}"
    assert third["status"] == 401 and third["merchant_id"] is None
    formatter = JsonFormatter()
    everything = "\n".join(formatter.format(r) for r in caplog.records)
    assert APPROVED_VISA not in everything and merchant.secret not in everything
    assert payment_id not in everything  # routes are templates: no ids, no pasted numbers


def test_the_formatter_scrubs_card_numbers_and_keys():
    record = logging.LogRecord(
        "kassa.test",
        logging.WARNING,
        __file__,
        1,
        "card %s key %s",
        ("4242 4242 4242 4242", "sk_" + "a" * 43),
        None,
    )
    line = JsonFormatter().format(record)
    assert "4242 4242 4242 4242" not in line and "a" * 43 not in line
    assert orjson.loads(line)["message"] == "card [redacted] key sk_[redacted]"


# --- exposition format ----------------------------------------------------------------------


async def test_in_process_exposition_passes_promtool(client, merchant, promtool):
    await authorize(client, merchant)
    result = run_promtool(promtool, "check", "metrics", stdin=await scrape(client))
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


# --- several worker processes ------------------------------------------------------------


async def fresh_connection_get(url: str, headers: dict[str, str]) -> int:
    # A new connection per request: SO_REUSEPORT spreads connections, not requests.
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers=headers) as response,
    ):
        await response.read()
        return response.status


@pytest.mark.timeout(900)  # may include installing promtool
async def test_counters_add_up_over_worker_processes(
    serve_process, database_url, merchant, promtool
):
    server = await serve_process(database_url, workers=2)
    await workers_listening(server, 2)
    first = await scrape_url(server.url)
    statuses = await asyncio.gather(
        *[
            fresh_connection_get(server.url + "/v1/balance", merchant.headers)
            for _ in range(REQUESTS_R)
        ]
    )
    assert statuses == [200] * REQUESTS_R
    await asyncio.sleep(observability.SAMPLE_INTERVAL_S * 2.5)  # every worker sampled its pool
    second = await scrape_url(server.url)
    total = "kassa_http_requests_total"
    assert value(second, total, route="/v1/balance") == REQUESTS_R
    assert value(second, total, route="/v1/balance", method="GET", status_class="2xx") == REQUESTS_R
    # Everything between the two scrapes: the R requests and the first scrape itself.
    assert value(second, total) - value(first, total) == REQUESTS_R + 1
    assert (
        value(second, "kassa_http_request_duration_seconds_count", route="/v1/balance")
        == REQUESTS_R
    )
    # Both workers answered some of them, and the scrape merged both.
    pids = {line["pid"] for line in server_access_lines(server) if line["route"] == "/v1/balance"}
    assert len(pids) == 2, pids
    # A pool per live worker, summed (each at the default size: serve_process sets none).
    assert value(second, "kassa_db_pool_max_connections") == 2 * DEFAULT_POOL_MAX
    result = run_promtool(promtool, "check", "metrics", stdin=second)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


async def workers_listening(server, workers: int, timeout_s: float = 60) -> None:
    """Ready means one worker answered; wait until every worker's socket listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # Count the workers' own lines: the supervisor's "kassa: serving on" must not count.
    while len(re.findall(r"worker \d+ \(pid \d+\) serving on", server.logs())) < workers:
        assert loop.time() < deadline, server.logs()
        await asyncio.sleep(0.05)


async def scrape_url(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        return await response.text()


def server_access_lines(server) -> list[dict]:
    lines = []
    for raw in server.logs().splitlines():
        if raw.startswith("{"):
            entry = orjson.loads(raw)
            if entry.get("logger") == "kassa.access":
                lines.append(entry)
    return lines
