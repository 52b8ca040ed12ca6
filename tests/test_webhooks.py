"""Events and webhooks end to end (API.md "Events and webhooks"), black-box: a real
`kassa serve` on two workers, a real receiver on 127.0.0.1, every delivery verified with
the standardwebhooks, svix and stripe packages' own verifiers."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import orjson
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.recovery import EVENT_RETENTION_S
from gateway.testing import KassaServer
from tests.conftest import eventually, running_server, subprocess_variables
from tests.payments_helpers import (
    DECLINES,
    ERROR_CARD,
    TIMEOUT_CARD,
    authorize,
    get,
    post,
)
from tests.test_metrics import delta, value
from tests.webhook_helpers import Receiver, hang, none_verifies, status, verify_all

TIMEOUT_S = 2  # KASSA_WEBHOOK_TIMEOUT_S: a lease is this plus the deliverer's 5 s margin
# KASSA_WEBHOOK_DISABLE_AFTER_S: an endpoint failing this long is disabled. Short here, so
# a test can watch it happen; every other test's endpoint fails for less (a retry 1-3 s
# after its first failure succeeds, or it is disabled or parked by Retry-After first).
DISABLE_AFTER_S = 3
AUTHORIZATION_TTL_S = 4  # uncaptured authorizations expire quickly here
DECLINED_CARD = next(iter(DECLINES))


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KassaServer]:
    """One `kassa serve --workers 2` for the module, with a short schedule and timeout."""
    with running_server(
        database_url,
        tmp_path_factory.mktemp("webhooks"),
        KASSA_WEBHOOK_ALLOW_PRIVATE="1",
        KASSA_WEBHOOK_RETRY_SCHEDULE_S="1,1,2",
        KASSA_WEBHOOK_TIMEOUT_S=str(TIMEOUT_S),
        KASSA_WEBHOOK_DISABLE_AFTER_S=str(DISABLE_AFTER_S),
        KASSA_PROCESSOR_TIMEOUT_MS="300",
        KASSA_RECOVERY_AFTER_S="1",
        KASSA_RECOVERY_INTERVAL_S="1",
        KASSA_AUTHORIZATION_TTL_S=str(AUTHORIZATION_TTL_S),
    ) as served:
        yield served


@pytest.fixture
async def api(server: KassaServer, db) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    served = Receiver()
    await served.start()
    yield served
    await served.close()


async def create_endpoint(api, merchant, url: str, events=("*",), **fields) -> dict:
    status_code, body, _ = await post(
        api,
        "/v1/webhook_endpoints",
        merchant,
        {"url": url, "enabled_events": list(events), **fields},
    )
    assert status_code == 201, body
    assert body["secret"].startswith("whsec_")
    return body


async def attempts_of(api, merchant, event_id: str) -> list[dict]:
    status_code, body = await get(api, f"/v1/events/{event_id}/deliveries", merchant)
    assert status_code == 200, body
    return body["data"]


async def wait_attempts(api, merchant, event_id, count, timeout_s=10.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        attempts = await attempts_of(api, merchant, event_id)
        if len(attempts) >= count:
            return attempts
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} attempts of {event_id}: {attempts}")


# A delivered delivery leaves no row (it is deleted as its 2xx attempt is logged): its
# state is read off the attempt log. The others are their rows'.
DELIVERY_STATES_SQL = """
SELECT state, created_at FROM webhook_deliveries WHERE {column} = $1
UNION ALL
SELECT 'delivered', a.created_at FROM webhook_attempts a
 WHERE a.{column} = $1 AND a.status_code BETWEEN 200 AND 299
   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                    WHERE d.event_id = a.event_id AND d.endpoint_id = a.endpoint_id)
ORDER BY created_at, state
"""


async def delivery_states(db, endpoint_id: str) -> list[str]:
    rows = await db.fetch(DELIVERY_STATES_SQL.format(column="endpoint_id"), endpoint_id)
    return [row["state"] for row in rows]


def events_by_type(arrivals) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for arrival in arrivals:
        grouped.setdefault(arrival.event["type"], []).append(arrival.event)
    return grouped


# --- what is delivered ---------------------------------------------------------------------


async def test_every_change_is_delivered_signed_with_the_object_as_read(api, merchant, receiver):
    endpoint = await create_endpoint(api, merchant, receiver.url("/all"))
    secret = endpoint["secret"]

    _, approved = await authorize(api, merchant)  # manual capture
    status_code, captured, _ = await post(
        api, f"/v1/payments/{approved['id']}/capture", merchant, {}
    )
    assert status_code == 200
    status_code, refund, _ = await post(
        api, f"/v1/payments/{approved['id']}/refunds", merchant, {"amount": 500}
    )
    assert status_code == 201
    _, to_void = await authorize(api, merchant)
    status_code, voided, _ = await post(api, f"/v1/payments/{to_void['id']}/void", merchant)
    assert status_code == 200
    status_code, declined = await authorize(api, merchant, DECLINED_CARD)
    assert status_code == 402
    status_code, failed = await authorize(api, merchant, ERROR_CARD)
    assert status_code == 502
    status_code, automatic = await authorize(api, merchant, capture="automatic")
    assert (status_code, automatic["status"]) == (201, "captured")

    arrivals = await receiver.wait("/all", 9)
    await asyncio.sleep(0.3)
    assert len(receiver.at("/all")) == 9  # one delivery per event, no duplicates
    for arrival in arrivals:
        event = verify_all(secret, arrival)
        assert event["object"] == "event" and event["id"].startswith("evt_")
        assert arrival.headers["user-agent"].startswith("Kassa")
        # The body delivered is the event as GET returns it, byte for byte.
        response = await api.get(f"/v1/events/{event['id']}", headers=merchant.headers)
        assert await response.read() == arrival.body
    none_verifies(secret, arrivals[0])

    by_type = events_by_type(arrivals)
    assert by_type["payment.authorized"][0]["data"]["object"]["id"] in (
        approved["id"],
        to_void["id"],
        automatic["id"],
    )
    # Each event carries the object exactly as the change answered it.
    authorized_objects = {e["data"]["object"]["id"]: e for e in by_type["payment.authorized"]}
    assert authorized_objects[approved["id"]]["data"]["object"] == approved
    assert authorized_objects[to_void["id"]]["data"]["object"] == to_void
    captured_objects = {
        e["data"]["object"]["id"]: e["data"]["object"] for e in by_type["payment.captured"]
    }
    assert captured_objects[approved["id"]] == captured
    # An automatic capture commits authorize and capture at once: both carry the result.
    assert captured_objects[automatic["id"]] == automatic
    assert authorized_objects[automatic["id"]]["data"]["object"] == automatic
    assert by_type["refund.succeeded"][0]["data"]["object"] == refund
    assert by_type["payment.voided"][0]["data"]["object"] == voided
    assert by_type["payment.declined"][0]["data"]["object"]["id"] == declined["error"]["payment_id"]
    assert by_type["payment.declined"][0]["data"]["object"]["status"] == "declined"
    assert by_type["payment.failed"][0]["data"]["object"]["id"] == failed["error"]["payment_id"]
    assert by_type["payment.failed"][0]["data"]["object"]["status"] == "failed"

    # Counted for SREs (the 2-worker /metrics merges every worker's samples).
    async with api.get("/metrics") as response:
        exposition = await response.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    delivered = samples[
        ("kassa_webhook_deliveries_total", (("outcome", "delivered"), ("status_class", "2xx")))
    ]
    assert delivered >= 1
    # Each delivered attempt is one latency and one attempt count, batched as they are
    # recorded (gateway/metrics.py), every one in a bucket, none lost in the merge.
    latency = "kassa_webhook_delivery_latency_seconds"
    assert samples[(f"{latency}_count", ())] == delivered
    assert samples[(f"{latency}_bucket", (("le", "+Inf"),))] == delivered
    assert samples[("kassa_webhook_delivery_attempts_bucket", (("le", "1.0"),))] == delivered
    assert samples[("kassa_webhook_delivery_attempts_sum", ())] == delivered

    # Each delivery is logged: one attempt, 200.
    attempts = await wait_attempts(api, merchant, arrivals[0].webhook_id, 1)
    assert [(a["endpoint_id"], a["attempt"], a["status_code"], a["error"]) for a in attempts] == [
        (endpoint["id"], 1, 200, None)
    ]


async def test_expiry_and_recovery_write_their_events(api, merchant, receiver):
    endpoint = await create_endpoint(api, merchant, receiver.url("/later"))
    _, left = await authorize(api, merchant)  # never captured: expires
    status_code, lost = await authorize(api, merchant, TIMEOUT_CARD)
    assert status_code == 504  # recovery settles it (the sandbox then says approved)
    lost_id = lost["error"]["payment_id"]
    deadline = time.monotonic() + 20
    by_type: dict = {}
    while time.monotonic() < deadline:
        by_type = events_by_type(receiver.at("/later"))
        expired = [
            e for e in by_type.get("payment.expired", []) if e["data"]["object"]["id"] == left["id"]
        ]
        recovered = [
            e for e in by_type.get("payment.authorized", []) if e["data"]["object"]["id"] == lost_id
        ]
        if expired and recovered:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no expiry or recovery event: {sorted(by_type)}")
    for arrival in receiver.at("/later"):
        verify_all(endpoint["secret"], arrival)
    assert expired[0]["data"]["object"]["status"] == "expired"
    _, now_read = await get(api, f"/v1/payments/{left['id']}", merchant)
    assert expired[0]["data"]["object"] == now_read
    assert recovered[0]["data"]["object"]["status"] == "authorized"


# --- retries -------------------------------------------------------------------------------


async def test_failures_are_retried_with_the_same_webhook_id(api, merchant, receiver):
    receiver.plans["/500"] = [status(500)]
    receiver.plans["/hang"] = [hang(TIMEOUT_S + 1.5)]
    receiver.plans["/later"] = [status(503, **{"Retry-After": "3"})]
    receiver.plans["/redirect"] = [status(302, Location=receiver.url("/target"))]
    endpoints = {
        path: await create_endpoint(api, merchant, receiver.url(path), ["payment.authorized"])
        for path in ("/500", "/hang", "/later", "/redirect")
    }
    _, payment = await authorize(api, merchant)

    for path, endpoint in endpoints.items():
        first, second = (await receiver.wait(path, 2, timeout_s=15, what=path))[:2]
        assert first.webhook_id == second.webhook_id  # one event, one id on every attempt
        assert first.body == second.body
        verify_all(endpoint["secret"], second)
        assert second.event["data"]["object"]["id"] == payment["id"]
    gap = receiver.at("/later")[1].at - receiver.at("/later")[0].at
    assert gap >= 2.9, f"Retry-After 3 honoured over the schedule's 1 s: {gap:.2f} s"
    assert receiver.at("/target") == []  # the redirect was not followed

    event_id = receiver.at("/500")[0].webhook_id
    attempts = await wait_attempts(api, merchant, event_id, 8)
    by_endpoint: dict[str, list] = {}
    for attempt in reversed(attempts):  # listed newest first
        by_endpoint.setdefault(attempt["endpoint_id"], []).append(attempt)
    assert [(a["attempt"], a["status_code"]) for a in by_endpoint[endpoints["/500"]["id"]]] == [
        (1, 500),
        (2, 200),
    ]
    first_hang = by_endpoint[endpoints["/hang"]["id"]][0]
    assert first_hang["status_code"] is None and first_hang["error"].startswith("timeout")
    assert first_hang["next_attempt"] is not None
    assert [a["status_code"] for a in by_endpoint[endpoints["/redirect"]["id"]]] == [302, 200]
    assert by_endpoint[endpoints["/later"]["id"]][0]["status_code"] == 503


async def test_410_disables_the_endpoint_and_cancels_its_pending(api, merchant, receiver, db):
    # The first delivery is put off (Retry-After), the second answers 410 Gone.
    receiver.plans["/gone"] = [status(500, **{"Retry-After": "30"}), status(410)]
    endpoint = await create_endpoint(api, merchant, receiver.url("/gone"), ["payment.authorized"])
    await authorize(api, merchant)
    await receiver.wait("/gone", 1)
    await authorize(api, merchant)
    await receiver.wait("/gone", 2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, read = await get(api, f"/v1/webhook_endpoints/{endpoint['id']}", merchant)
        if read["status"] == "disabled":
            break
        await asyncio.sleep(0.1)
    assert read["status"] == "disabled"
    assert sorted(await delivery_states(db, endpoint["id"])) == ["canceled", "failed"]
    await authorize(api, merchant)  # a disabled endpoint is not subscribed
    await asyncio.sleep(0.5)
    assert len(await delivery_states(db, endpoint["id"])) == 2
    assert len(receiver.at("/gone")) == 2


async def test_an_endpoint_failing_past_the_disable_window_is_disabled(api, merchant, receiver, db):
    receiver.plans["/down"] = [status(500)] * 100  # every attempt fails
    endpoint = await create_endpoint(api, merchant, receiver.url("/down"), ["payment.authorized"])
    async with api.get("/metrics") as response:
        before = await response.text()
    _, first = await authorize(api, merchant)
    await receiver.wait("/down", 1)
    started = time.monotonic()
    await asyncio.sleep(1.5)
    await authorize(api, merchant)  # a second delivery, failing too
    deadline = started + DISABLE_AFTER_S + 10
    read: dict = {}
    while time.monotonic() < deadline:
        _, read = await get(api, f"/v1/webhook_endpoints/{endpoint['id']}", merchant)
        if read["status"] == "disabled":
            break
        await asyncio.sleep(0.1)
    assert read["status"] == "disabled", read
    # Not at its first failures (retried 1 and 2 s apart): once they had lasted the window.
    assert time.monotonic() - started >= DISABLE_AFTER_S - 0.5
    tried = len(receiver.at("/down"))
    assert tried >= 3, f"{tried} attempts before the endpoint was disabled"
    # Nothing of it stays pending (what was is canceled), and a new event is not queued
    # for it at all.
    await eventually(lambda: _settled(db, endpoint["id"], 2), 5)
    await authorize(api, merchant)
    await asyncio.sleep(1.5)
    assert len(await delivery_states(db, endpoint["id"])) == 2
    assert len(receiver.at("/down")) == tried
    async with api.get("/metrics") as response:
        after = await response.text()
    assert delta(before, after, "kassa_webhook_endpoints_disabled_total", reason="failing") == 1
    assert (
        value(after, "kassa_webhook_endpoints_disabled_total", missing=0, reason="gone")
        - value(before, "kassa_webhook_endpoints_disabled_total", missing=0, reason="gone")
        == 0
    )
    attempts = await attempts_of(api, merchant, receiver.at("/down")[0].webhook_id)
    assert attempts and {a["status_code"] for a in attempts} == {500}
    assert receiver.at("/down")[0].event["data"]["object"]["id"] == first["id"]


async def _settled(db, endpoint_id: str, count: int) -> bool:
    states = await delivery_states(db, endpoint_id)
    return len(states) == count and set(states) <= {"failed", "canceled"}


async def test_disable_and_delete_cancel_pending_deliveries(api, merchant, receiver, db):
    receiver.plans["/a"] = [status(503, **{"Retry-After": "60"})]
    receiver.plans["/b"] = [status(503, **{"Retry-After": "60"})]
    first = await create_endpoint(api, merchant, receiver.url("/a"))
    second = await create_endpoint(api, merchant, receiver.url("/b"))
    await authorize(api, merchant)
    await receiver.wait("/a", 1)
    await receiver.wait("/b", 1)
    await eventually(lambda: _pending(db, first["id"]), 5)
    await eventually(lambda: _pending(db, second["id"]), 5)

    status_code, disabled, _ = await post(
        api, f"/v1/webhook_endpoints/{first['id']}", merchant, {"status": "disabled"}
    )
    assert (status_code, disabled["status"]) == (200, "disabled")
    assert "secret" not in disabled
    assert await delivery_states(db, first["id"]) == ["canceled"]

    response = await api.delete(f"/v1/webhook_endpoints/{second['id']}", headers=merchant.headers)
    assert response.status == 200
    assert await response.json() == {
        "id": second["id"],
        "object": "webhook_endpoint",
        "deleted": True,
    }
    assert await delivery_states(db, second["id"]) == ["canceled"]
    assert (await get(api, f"/v1/webhook_endpoints/{second['id']}", merchant))[0] == 404
    response = await api.delete(f"/v1/webhook_endpoints/{second['id']}", headers=merchant.headers)
    assert response.status == 404
    _, listed = await get(api, "/v1/webhook_endpoints", merchant)
    assert [e["id"] for e in listed["data"]] == [first["id"]]
    # The deleted endpoint's secret is erased, not merely hidden.
    assert (
        await db.fetchval(
            "SELECT secret_ciphertext FROM webhook_endpoints WHERE id = $1", second["id"]
        )
        is None
    )


async def _pending(db, endpoint_id: str) -> bool:
    return await delivery_states(db, endpoint_id) == ["pending"]


# --- subscriptions -------------------------------------------------------------------------


async def test_no_endpoints_no_deliveries_and_one_type_gets_one_type(
    api, merchant, other_merchant, receiver, db
):
    await authorize(api, merchant, capture="automatic")
    assert (
        await db.fetchval("SELECT count(*) FROM events WHERE merchant_id = $1", merchant.id) == 2
    )  # payment.authorized and payment.captured, written though nobody listens
    assert (
        await db.fetchval(
            """SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
            WHERE e.merchant_id = $1""",
            merchant.id,
        )
        == 0
    )

    await create_endpoint(api, other_merchant, receiver.url("/captures"), ["payment.captured"])
    _, payment = await authorize(api, other_merchant)
    await post(api, f"/v1/payments/{payment['id']}/capture", other_merchant, {})
    arrivals = await receiver.wait("/captures", 1)
    await asyncio.sleep(0.5)
    assert [a.event["type"] for a in receiver.at("/captures")] == ["payment.captured"]
    assert arrivals[0].event["data"]["object"]["id"] == payment["id"]


# --- the API -------------------------------------------------------------------------------


async def test_endpoints_api_secret_idempotency_and_isolation(
    api, merchant, other_merchant, receiver
):
    body = {"url": receiver.url("/x"), "enabled_events": ["payment.captured"], "description": "crm"}
    status_code, created, _ = await post(api, "/v1/webhook_endpoints", merchant, body, key="we-1")
    assert status_code == 201
    assert set(created) == {
        "id",
        "object",
        "url",
        "enabled_events",
        "description",
        "status",
        "secret",
        "created",
        "updated",
    }
    assert (created["object"], created["status"], created["enabled_events"]) == (
        "webhook_endpoint",
        "enabled",
        ["payment.captured"],
    )
    # The same key replays the same endpoint with its secret; no second endpoint.
    status_code, again, response = await post(
        api, "/v1/webhook_endpoints", merchant, body, key="we-1"
    )
    assert (status_code, again) == (201, created)
    assert response.headers["Idempotent-Replayed"] == "true"

    later_answers = [
        await get(api, f"/v1/webhook_endpoints/{created['id']}", merchant),
        await get(api, "/v1/webhook_endpoints", merchant),
        (
            await post(
                api,
                f"/v1/webhook_endpoints/{created['id']}",
                merchant,
                {"enabled_events": ["*"], "description": None, "url": receiver.url("/y")},
            )
        )[:2],
    ]
    for status_code, answer in later_answers:
        assert status_code == 200, answer
        assert "whsec_" not in orjson.dumps(answer).decode()
    updated = later_answers[2][1]
    assert (updated["enabled_events"], updated["description"], updated["url"]) == (
        ["*"],
        None,
        receiver.url("/y"),
    )
    assert [e["id"] for e in later_answers[1][1]["data"]] == [created["id"]]

    # Another merchant's endpoint is unknown to this one.
    for path in (f"/v1/webhook_endpoints/{created['id']}",):
        status_code, answer = await get(api, path, other_merchant)
        assert (status_code, answer["error"]["code"]) == (404, "resource_missing")
    status_code, answer, _ = await post(
        api, f"/v1/webhook_endpoints/{created['id']}", other_merchant, {"status": "disabled"}
    )
    assert status_code == 404
    response = await api.delete(
        f"/v1/webhook_endpoints/{created['id']}", headers=other_merchant.headers
    )
    assert response.status == 404

    # Validation: unknown fields, event types, status.
    for bad, code, param in (
        ({**body, "secret": "whsec_x"}, "parameter_unknown", "secret"),
        (
            {"url": receiver.url("/x"), "enabled_events": ["payment.nope"]},
            "parameter_invalid",
            "enabled_events",
        ),
        ({"url": receiver.url("/x"), "enabled_events": []}, "parameter_invalid", "enabled_events"),
        ({"enabled_events": ["*"]}, "parameter_missing", "url"),
        ({"url": "ftp://example.com/", "enabled_events": ["*"]}, "parameter_invalid", "url"),
    ):
        status_code, answer, _ = await post(api, "/v1/webhook_endpoints", merchant, bad)
        assert (status_code, answer["error"]["code"], answer["error"]["param"]) == (
            400,
            code,
            param,
        ), answer
    status_code, answer, _ = await post(
        api, f"/v1/webhook_endpoints/{created['id']}", merchant, {"status": "paused"}
    )
    assert (status_code, answer["error"]["param"]) == (400, "status")


async def test_events_list_pages_filters_and_is_per_merchant(api, merchant, other_merchant):
    ids = []
    for _ in range(3):
        _, payment = await authorize(api, merchant)
        status_code, _, _ = await post(api, f"/v1/payments/{payment['id']}/capture", merchant, {})
        assert status_code == 200
        ids.append(payment["id"])
    _, page = await get(api, "/v1/events?limit=4", merchant)
    assert page["object"] == "list" and page["has_more"] is True
    assert len(page["data"]) == 4
    _, rest = await get(
        api, f"/v1/events?limit=4&starting_after={page['data'][-1]['id']}", merchant
    )
    assert (len(rest["data"]), rest["has_more"]) == (2, False)
    every = page["data"] + rest["data"]
    assert len({e["id"] for e in every}) == 6
    created = [e["created"] for e in every]
    assert created == sorted(created, reverse=True)  # newest first
    # The newest is the last capture.
    assert (every[0]["type"], every[0]["data"]["object"]["id"]) == ("payment.captured", ids[-1])

    _, captures = await get(api, "/v1/events?type=payment.captured", merchant)
    assert [e["data"]["object"]["id"] for e in captures["data"]] == ids[::-1]
    assert {e["type"] for e in captures["data"]} == {"payment.captured"}

    status_code, answer = await get(api, "/v1/events?type=payment.nope", merchant)
    assert (status_code, answer["error"]["param"]) == (400, "type")
    status_code, answer = await get(api, "/v1/events?colour=red", merchant)
    assert (status_code, answer["error"]["code"]) == (400, "parameter_unknown")

    event_id = every[0]["id"]
    for path in (f"/v1/events/{event_id}", f"/v1/events/{event_id}/deliveries"):
        status_code, answer = await get(api, path, other_merchant)
        assert (status_code, answer["error"]["code"]) == (404, "resource_missing"), path
    status_code, answer, _ = await post(api, f"/v1/events/{event_id}/retry", other_merchant)
    assert status_code == 404
    _, theirs = await get(api, "/v1/events", other_merchant)
    assert theirs["data"] == []


async def test_manual_retry_sends_again_and_is_listed(api, merchant, receiver):
    endpoint = await create_endpoint(api, merchant, receiver.url("/again"), ["payment.authorized"])
    await authorize(api, merchant)
    (first,) = await receiver.wait("/again", 1)
    await wait_attempts(api, merchant, first.webhook_id, 1)
    status_code, answer, _ = await post(
        api, f"/v1/events/{first.webhook_id}/retry", merchant, key="retry-1"
    )
    assert (status_code, answer["endpoints"]) == (200, [endpoint["id"]])
    second = (await receiver.wait("/again", 2))[1]
    assert second.webhook_id == first.webhook_id and second.body == first.body
    verify_all(endpoint["secret"], second)
    attempts = await wait_attempts(api, merchant, first.webhook_id, 2)
    assert [(a["endpoint_id"], a["status_code"]) for a in attempts] == [
        (endpoint["id"], 200),
        (endpoint["id"], 200),
    ]
    assert attempts[0]["duration_ms"] >= 0 and attempts[0]["next_attempt"] is None
    # The same key replays the answer and sends nothing more.
    status_code, replayed, response = await post(
        api, f"/v1/events/{first.webhook_id}/retry", merchant, key="retry-1"
    )
    assert (status_code, replayed, response.headers["Idempotent-Replayed"]) == (200, answer, "true")
    await asyncio.sleep(0.5)
    assert len(receiver.at("/again")) == 2


async def test_private_addresses_are_refused_without_the_flag(app_factory, merchant):
    client = await app_factory()  # KASSA_WEBHOOK_ALLOW_PRIVATE unset
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.1/hook", "http://[::1]/hook"):
        status_code, answer, _ = await post(
            client, "/v1/webhook_endpoints", merchant, {"url": url, "enabled_events": ["*"]}
        )
        assert (status_code, answer["error"]["code"], answer["error"]["param"]) == (
            400,
            "parameter_invalid",
            "url",
        ), url


# --- crashes -------------------------------------------------------------------------------


def _worker_holding(server: KassaServer, local_port: int) -> int:
    """The worker whose connection to the receiver has ``local_port``."""
    for pid in server.serving_workers():
        process = psutil.Process(pid)
        connections = getattr(process, "net_connections", process.connections)(kind="tcp")
        if any(c.laddr and c.laddr.port == local_port for c in connections):
            return pid
    raise AssertionError(f"no worker holds a connection from port {local_port}")


async def test_worker_killed_mid_delivery_delivers_again_after_the_lease(
    api, merchant, receiver, server, db
):
    receiver.plans["/held"] = [hang(TIMEOUT_S - 0.5)]  # held, within the timeout
    endpoint = await create_endpoint(api, merchant, receiver.url("/held"), ["payment.authorized"])
    await authorize(api, merchant)
    (first,) = await receiver.wait("/held", 1)
    killed_at = time.monotonic()
    pid = _worker_holding(server, first.peer_port)
    psutil.Process(pid).send_signal(signal.SIGKILL)

    second = (await receiver.wait("/held", 2, timeout_s=TIMEOUT_S + 15))[1]
    assert second.webhook_id == first.webhook_id and second.body == first.body
    verify_all(endpoint["secret"], second)
    assert second.at - killed_at >= 1.0  # after the lease, not at once
    await eventually(lambda: _states_are(db, endpoint["id"], ["delivered"]), 5)
    await server.wait_workers(2)


async def test_a_graceful_stop_hands_its_unfinished_deliveries_to_the_next_process(
    database_url, tmp_path, merchant, receiver, db
):
    """A stopping process does not sit on its leases: the delivery cut off mid-attempt and
    the one handed to it but not started (one slot per endpoint here) are due at once for
    the next process, which sends both long before the leases (timeout + 10 s) lapse."""
    timeout_s = 20
    lease_s = timeout_s + 10
    gateway = KassaServer(
        tmp_path,
        database_url,
        workers=1,
        env=subprocess_variables(
            KASSA_WEBHOOK_ALLOW_PRIVATE="1",
            KASSA_WEBHOOK_TIMEOUT_S=str(timeout_s),
            KASSA_WEBHOOK_ENDPOINT_CONCURRENCY="1",
        ),
    )
    receiver.plans["/slow"] = [hang(timeout_s - 1)]  # the first attempt hangs; then 200s
    gateway.start()
    try:
        await gateway.wait_ready_async(60)
        async with aiohttp.ClientSession(base_url=gateway.url) as api:
            endpoint = await create_endpoint(
                api, merchant, receiver.url("/slow"), ["payment.authorized"]
            )
            await authorize(api, merchant)
            (cut_off,) = await receiver.wait("/slow", 1)
            await authorize(api, merchant)  # waits for the endpoint's one slot
        await asyncio.sleep(0.3)
        assert len(receiver.at("/slow")) == 1
        assert (await asyncio.to_thread(gateway.stop)).exit_code == 0
        stopped_at = time.monotonic()
        gateway.start()
        await gateway.wait_ready_async(60)
        arrivals = await receiver.wait("/slow", 3, timeout_s=lease_s)
        assert time.monotonic() - stopped_at < lease_s / 2, "waited for the leases to lapse"
        ids = [a.webhook_id for a in arrivals]
        assert ids[0] == cut_off.webhook_id and cut_off.webhook_id in ids[1:]
        assert len(set(ids)) == 2  # the cut-off one again, and the one never started
        for arrival in arrivals:
            verify_all(endpoint["secret"], arrival)
        await eventually(lambda: _states_are(db, endpoint["id"], ["delivered", "delivered"]), 5)
    finally:
        gateway.stop()


async def _states_are(db, endpoint_id: str, states: list[str]) -> bool:
    return await delivery_states(db, endpoint_id) == states


# --- pruning -------------------------------------------------------------------------------


async def test_delivered_rows_go_at_once_and_events_past_retention_with_the_rest(
    api, merchant, receiver, db
):
    """A delivered delivery's row is deleted as its attempt is logged (the outbox holds
    only the backlog); the sweep (every KASSA_RECOVERY_INTERVAL_S) deletes events older
    than EVENT_RETENTION_S with their deliveries and attempts. Time is moved by ageing the
    events' timestamps: the window tested is the one shipped, just past and just inside."""
    receiver.plans["/gone"] = [status(410)]  # its one delivery ends 'failed'
    await create_endpoint(api, merchant, receiver.url("/kept"), ["payment.authorized"])
    gone = await create_endpoint(api, merchant, receiver.url("/gone"), ["payment.authorized"])
    await authorize(api, merchant)
    await eventually(lambda: _states_are(db, gone["id"], ["failed"]), 5)  # and it is disabled
    await authorize(api, merchant)
    await receiver.wait("/kept", 2)
    event_ids = [a.webhook_id for a in receiver.at("/kept")]
    for event_id in event_ids:
        await wait_attempts(api, merchant, event_id, 1)
    old_event = receiver.at("/gone")[0].webhook_id  # a failed delivery, a delivered one
    (edge_event,) = (e for e in event_ids if e != old_event)
    rows = "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1"
    assert await db.fetchval(rows, edge_event) == 0  # delivered: no row left
    assert await delivery_states_of_event(db, old_event) == ["delivered", "failed"]

    margin_s = 600.0  # far from the edge, next to the sweep's own timing
    for event_id, age_s in (
        (old_event, EVENT_RETENTION_S + margin_s),
        (edge_event, EVENT_RETENTION_S - margin_s),
    ):
        await db.execute(
            "UPDATE events SET created_at = now() - make_interval(secs => $2) WHERE id = $1",
            event_id,
            age_s,
        )

    async def swept() -> bool:
        return await db.fetchval("SELECT count(*) FROM events WHERE id = $1", old_event) == 0

    await eventually(swept, 10, "the sweep")  # the sweep runs every second here
    # The event past retention is gone, for the API too, with its deliveries and attempts.
    assert (await get(api, f"/v1/events/{old_event}", merchant))[0] == 404
    for table in ("webhook_deliveries", "webhook_attempts"):
        count = f"SELECT count(*) FROM {table} WHERE event_id = $1"  # our names, no input
        assert await db.fetchval(count, old_event) == 0, table
    # The event inside retention is kept, and so is its attempt log.
    assert (await get(api, f"/v1/events/{edge_event}", merchant))[0] == 200
    assert len(await attempts_of(api, merchant, edge_event)) == 1


async def test_the_schema_refuses_orphan_deliveries_and_attempts(api, merchant, receiver, db):
    """The references the foreign keys held are checked per statement (migration 0009):
    a delivery names an event and an endpoint of the event's merchant, an attempt an event,
    and an event is deleted only with its deliveries and attempts."""
    endpoint = await create_endpoint(api, merchant, receiver.url("/hook"), ["payment.authorized"])
    await authorize(api, merchant)
    (arrival,) = await receiver.wait("/hook", 1)
    await wait_attempts(api, merchant, arrival.webhook_id, 1)
    insert_delivery = "INSERT INTO webhook_deliveries (event_id, endpoint_id) VALUES ($1, $2)"
    for event_id, endpoint_id in (
        ("evt_missing", endpoint["id"]),
        (arrival.webhook_id, "we_missing"),
    ):
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await db.execute(insert_delivery, event_id, endpoint_id)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "INSERT INTO webhook_attempts (event_id, endpoint_id, attempt, status_code, "
            "duration_ms) VALUES ('evt_missing', $1, 1, 200, 1)",
            endpoint["id"],
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute("DELETE FROM events WHERE id = $1", arrival.webhook_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint["id"])
    assert await delivery_states(db, endpoint["id"]) == ["delivered"]


async def delivery_states_of_event(db, event_id: str) -> list[str]:
    rows = await db.fetch(DELIVERY_STATES_SQL.format(column="event_id"), event_id)
    return sorted(row["state"] for row in rows)
