"""The chaos test's short form (``python -m benchmarks.chaos --short``), and its checkers.

The run itself needs nothing of this machine but pgserver's PostgreSQL binaries: it
starts its own cluster (to crash and restart it) and its own ``kassa serve``. The
checker tests feed made-up books to the functions that judge a run, so a checker that
could never find anything would fail here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter

import orjson
import pytest

from benchmarks import chaos
from tests.conftest import ROOT

CHAOS_SEED = 20261122  # fixed: a failure here replays with this seed
CHAOS_RUN_TIMEOUT_S = 200  # the short form takes about a minute on 2 cores
CHAOS_STOP_TIMEOUT_S = 60  # after SIGTERM it stops its gateway and cluster
SHORT_KILLS, SHORT_RESTARTS = chaos.SHORT["kills"], chaos.SHORT["restarts"]
MERCHANT, QUIET = "mer_1", "mer_2"  # of the made-up books: with endpoints, without


def run_short_chaos(summary_path) -> tuple[dict | None, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.chaos",
            "--short",
            "--seed",
            str(CHAOS_SEED),
            "--json",
            str(summary_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=CHAOS_RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the run then stops its PostgreSQL and its gateway.
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=CHAOS_STOP_TIMEOUT_S)
        pytest.fail(f"chaos run over {CHAOS_RUN_TIMEOUT_S} s:\n{output[-5000:]}")
    if not summary_path.exists():
        return None, output
    return orjson.loads(summary_path.read_bytes()), output


@pytest.mark.timeout(CHAOS_RUN_TIMEOUT_S + CHAOS_STOP_TIMEOUT_S + 30)
def test_short_chaos_run_loses_duplicates_and_unbalances_nothing(tmp_path):
    summary, output = run_short_chaos(tmp_path / "summary.json")
    assert summary is not None, output[-5000:]
    tail = output[-5000:]
    assert summary["kills"] >= SHORT_KILLS, tail
    assert summary["restarts"] >= SHORT_RESTARTS, tail
    for count in (
        "lost",
        "duplicated",
        "imbalanced",
        "stuck",
        "server_errors",
        "hangs",
        "not_recovered",
        "events_missing",
        "events_phantom",
        "deliveries_lost",
        "deliveries_bad",
        "deliveries_unwanted",
        "billing_wrong_periods",
        "billing_double_charged",
        "billing_unresolved",
    ):
        assert summary[count] == 0, f"{count}: {summary[count]}\n{tail}"
    # The billing proof ran: a year of renewals under kills, every good card paid monthly.
    assert summary["billing_kills"] >= chaos.SHORT["billing_kills"], tail
    good = summary["billing_subscriptions"] - summary["billing_declining"]
    assert summary["billing_paid"] == good * chaos.BILLING_PERIODS, tail
    assert summary["billing_captured"] == summary["billing_paid"], tail
    # The webhook proof ran: events, deliveries to each endpoint, a 410 disable.
    assert summary["events"] > 0 and summary["events_quiet"] > 0, tail
    assert summary["deliveries_acknowledged"] > 0, tail
    assert summary["receiver_answers"]["500"] > 0, tail
    assert summary["receiver_answers"]["hang"] > 0, tail
    assert summary["endpoints_disabled"] == 1, tail
    assert summary["down_503"] > 0, tail  # the gateway said so while the database was down
    assert summary["gateway_exit"] == 0, tail
    assert summary["failures"] == [], tail
    assert "verdict            PASS" in output


# --- the checkers, on made-up books ----------------------------------------------------


def payment(
    status: str, capturable: int, captured: int, refunded: int, payment_id: str = "pay_1"
) -> dict:
    return {
        "id": payment_id,
        "status": status,
        "amount": 1000,
        "amount_capturable": capturable,
        "amount_captured": captured,
        "amount_refunded": refunded,
    }


def checkout(refund: int | None = 300) -> chaos.FlowRecord:
    plan = chaos.FlowPlan("c1", 1000, chaos.APPROVE_CARD, 800, refund)
    record = chaos.FlowRecord(
        plan, chaos.StepResult(plan.key(1, "auth"), 201, payment("authorized", 1000, 0, 0))
    )
    record.capture = chaos.StepResult(plan.key(1, "capture"), 200, payment("captured", 0, 800, 0))
    if refund is not None:
        record.refund = chaos.StepResult(
            plan.key(1, "refund"), 201, {"id": "re_1", "payment_id": "pay_1", "amount": refund}
        )
    return record


def books(
    status: str = "partially_refunded",
    refunded: int = 300,
    refunds: tuple[int, ...] = (300,),
    processor_refunds: tuple[int, ...] = (300,),
    key: str = "chaos-1-c1-auth",
) -> chaos.Books:
    row = {
        "id": "pay_1",
        "merchant_id": MERCHANT,
        "idempotency_key": key,
        "status": status,
        "amount": 1000,
        "amount_capturable": 0,
        "amount_captured": 800,
        "amount_refunded": refunded,
    }
    refund_rows = [
        {"id": f"re_{n + 1}", "merchant_id": MERCHANT, "payment_id": "pay_1", "amount": amount}
        for n, amount in enumerate(refunds)
    ]
    return chaos.Books(
        payments={"pay_1": row},
        refunds={r["id"]: r for r in refund_rows},
        refunds_by_payment={"pay_1": refund_rows},
        ledger_events={"pay_1": Counter(authorize=1, capture=1, refund=len(refunds))},
        ledger_refund_ids=Counter(r["id"] for r in refund_rows),
        processor={"pay_1": Counter(authorize=1, capture=1, refund=len(processor_refunds))},
        processor_refunded=Counter({"pay_1": sum(processor_refunds)}),
    )


def judge(record: chaos.FlowRecord, held: chaos.Books) -> chaos.Findings:
    findings = chaos.Findings()
    chaos.check_flow(record, held, 1, findings)
    findings.duplicated += chaos.payment_duplicates("pay_1", held.payments["pay_1"], held)
    return findings


def test_books_that_hold_what_clients_were_told_pass():
    findings = judge(checkout(), books())
    assert (findings.lost, findings.duplicated, findings.undecided) == ([], [], 0)


def test_a_told_refund_missing_from_the_books_is_lost():
    findings = judge(
        checkout(), books(status="captured", refunded=0, refunds=(), processor_refunds=())
    )
    assert len(findings.lost) == 2  # the payment's state and the refund itself


def test_a_payment_under_another_key_is_lost():
    assert judge(checkout(), books(key="someone-else")).lost


def test_a_refund_made_twice_at_the_processor_is_duplicated():
    findings = judge(checkout(), books(processor_refunds=(300, 300)))
    assert findings.duplicated and not findings.lost


def test_two_refunds_for_one_refund_key_are_duplicated():
    findings = judge(checkout(), books(refunded=600, refunds=(300, 300)))
    assert len(findings.duplicated) >= 2  # more refunds than asked, more than told


def test_an_undecided_step_accepts_either_outcome_but_is_counted():
    record = checkout()
    record.refund = chaos.StepResult(record.refund.key)  # the client gave up on it
    for held in (books(), books(status="captured", refunded=0, refunds=(), processor_refunds=())):
        findings = judge(record, held)
        assert (findings.lost, findings.duplicated, findings.undecided) == ([], [], 1)


def test_error_bodies_must_have_the_api_shape_and_no_traceback():
    good = orjson.dumps(
        {
            "error": dict.fromkeys(chaos.ERROR_FIELDS, None)
            | {"type": "api_error", "code": "database_unavailable"}
        }
    )
    assert chaos.well_formed(503, good)
    assert not chaos.well_formed(500, b"Traceback (most recent call last): ...")
    assert not chaos.well_formed(503, b'{"error": "database down"}')
    assert not chaos.well_formed(503, b"<html>503</html>")


def test_a_seed_replays_the_same_checkouts():
    first = [chaos.plan_flow(7, n) for n in range(200)]
    assert first == [chaos.plan_flow(7, n) for n in range(200)]
    assert first != [chaos.plan_flow(8, n) for n in range(200)]
    assert {plan.card for plan in first} >= {chaos.APPROVE_CARD, chaos.TIMEOUT_CARD}
    for plan in first:
        assert 1 <= plan.capture_amount <= plan.amount
        assert plan.refund_amount is None or 1 <= plan.refund_amount <= plan.capture_amount


# --- the webhook checkers, on made-up events and deliveries ---------------------------

ENDPOINTS = {
    "we_all": chaos.Endpoint("we_all", "/all", "whsec_a", ("*",)),
    "we_some": chaos.Endpoint("we_some", "/some", "whsec_s", ("refund.succeeded",)),
    "we_gone": chaos.Endpoint("we_gone", "/gone", "whsec_g", ("payment.authorized",)),
}
T0 = 1_700_000_000.0  # the events' "created", unix seconds


def event(
    event_id: str, event_type: str, object_id: str, at: float = T0, merchant: str = MERCHANT
) -> chaos.EventRow:
    payload = orjson.dumps(
        {"id": event_id, "type": event_type, "data": {"object": {"id": object_id}}}
    ).decode()
    return chaos.EventRow(event_id, merchant, event_type, object_id, payload, at)


def the_events() -> dict[str, chaos.EventRow]:
    """The events of books(): the payment authorized, captured, refunded once."""
    rows = [
        event("evt_a", "payment.authorized", "pay_1"),
        event("evt_c", "payment.captured", "pay_1"),
        event("evt_r", "refund.succeeded", "re_1"),
    ]
    return {e.id: e for e in rows}


def hook_books(events=None, gone_disabled_at: float | None = None, **changes) -> chaos.WebhookBooks:
    events = the_events() if events is None else events
    deliveries = {
        (e.id, endpoint.id): "delivered"
        for e in events.values()
        if e.merchant_id == MERCHANT
        for endpoint in ENDPOINTS.values()
        if endpoint.subscribed(e.type)
    }
    status = {"we_all": ("enabled", None), "we_some": ("enabled", None)}
    status["we_gone"] = (
        ("enabled", None) if gone_disabled_at is None else ("disabled", gone_disabled_at)
    )
    fields = {
        "events": events,
        "deliveries": deliveries,
        "endpoint_status": status,
        "attempts": len(deliveries),
        "quiet_deliveries": 0,
        "quiet_attempts": 0,
        **changes,
    }
    return chaos.WebhookBooks(**fields)


def arrival(path: str, e: chaos.EventRow, answer: str = "200", **changes) -> chaos.WebhookArrival:
    fields = {
        "path": path,
        "webhook_id": e.id,
        "body_id": e.id,
        "body": e.payload.encode(),
        "verified": True,
        "answer": answer,
        **changes,
    }
    return chaos.WebhookArrival(**fields)


def arrivals_for(hooks: chaos.WebhookBooks) -> list[chaos.WebhookArrival]:
    """One acknowledged arrival per delivered row."""
    paths = {e.id: e.path for e in ENDPOINTS.values()}
    return [
        arrival(paths[endpoint_id], hooks.events[event_id])
        for (event_id, endpoint_id), state in hooks.deliveries.items()
        if state == "delivered"
    ]


def judge_hooks(
    hooks: chaos.WebhookBooks, arrivals=None, held: chaos.Books | None = None
) -> chaos.WebhookFindings:
    found = chaos.WebhookFindings()
    chaos.check_events(held or books(), hooks, found)
    chaos.check_deliveries(
        arrivals_for(hooks) if arrivals is None else arrivals, ENDPOINTS, hooks, MERCHANT, found
    )
    return found


def everything(found: chaos.WebhookFindings) -> list[str]:
    return (
        found.events_missing
        + found.events_phantom
        + found.deliveries_lost
        + found.deliveries_bad
        + found.deliveries_unwanted
    )


def test_events_and_deliveries_that_agree_with_the_books_pass():
    found = judge_hooks(hook_books())
    assert everything(found) == []
    assert found.counts["due"] == found.counts["delivered"] == 5  # all 3, some 1, gone 1
    assert found.counts["changes"] == 3


def test_a_committed_change_without_its_event_is_missing():
    events = the_events()
    del events["evt_c"]  # captured in the books, no payment.captured
    found = judge_hooks(hook_books(events))
    assert found.events_missing == ["pay_1: no payment.captured event"]


def test_an_event_of_a_change_that_did_not_commit_is_phantom():
    events = the_events()
    events["evt_x"] = event("evt_x", "refund.succeeded", "re_9")  # no such refund
    events["evt_v"] = event("evt_v", "payment.voided", "pay_1")  # the payment is refunded
    events["evt_a2"] = event("evt_a2", "payment.authorized", "pay_1")  # a second one
    found = judge_hooks(hook_books(events))
    assert len(found.events_phantom) == 3, found.events_phantom
    assert any("no such refund" in line for line in found.events_phantom)
    assert any("2 payment.authorized events" in line for line in found.events_phantom)


def test_a_delivery_the_receiver_never_acknowledged_is_lost():
    hooks = hook_books()
    acknowledged = arrivals_for(hooks)
    dropped = [a for a in acknowledged if not (a.path == "/all" and a.webhook_id == "evt_c")]
    # Attempts that failed or hung do not count; a 200 on a later attempt does.
    tried = [
        arrival("/all", hooks.events["evt_c"], "500"),
        arrival("/all", hooks.events["evt_c"], "hang"),
    ]
    found = judge_hooks(hooks, dropped + tried)
    assert found.deliveries_lost == [
        "evt_c (payment.captured) to /all: recorded delivered, never acknowledged"
    ]
    found = judge_hooks(hooks, dropped + tried + [arrival("/all", hooks.events["evt_c"])])
    assert everything(found) == []


def test_not_queued_or_left_pending_is_lost_and_a_duplicate_is_counted():
    hooks = hook_books()
    del hooks.deliveries[("evt_r", "we_some")]
    hooks.deliveries[("evt_a", "we_all")] = "pending"
    found = judge_hooks(
        hooks, [*arrivals_for(hook_books()), arrival("/gone", hooks.events["evt_a"])]
    )
    assert sorted(found.deliveries_lost) == [
        "evt_a (payment.authorized) to /all: still pending after the run",
        "evt_r (refund.succeeded) to /some: never queued",
    ]
    assert found.counts["duplicates"] == 1


def test_unverified_renamed_or_changed_deliveries_are_bad():
    hooks = hook_books()
    good = arrivals_for(hooks)
    e = hooks.events["evt_a"]
    for bad, why in (
        (arrival("/all", e, verified=False), "does not verify"),
        (arrival("/all", e, webhook_id="evt_c"), "webhook-id is not the event's id"),
        (arrival("/all", e, body=e.payload.encode() + b" "), "another body"),
        (arrival("/all", e, webhook_id="evt_zz", body_id="evt_zz"), "no such event"),
    ):
        found = judge_hooks(hooks, [*good, bad])
        assert any(why in line for line in found.deliveries_bad), (why, found.deliveries_bad)


def test_deliveries_nobody_subscribed_to_are_unwanted():
    events = the_events()
    events["evt_q"] = event("evt_q", "payment.authorized", "pay_q", merchant=QUIET)
    held = books()
    held.payments["pay_q"] = {
        **held.payments["pay_1"],
        "id": "pay_q",
        "merchant_id": QUIET,
        "status": "authorized",
        "amount_captured": 0,
    }
    hooks = hook_books(events, quiet_deliveries=1, quiet_attempts=1)
    stray = [
        arrival("/all", events["evt_q"]),  # the quiet merchant's event
        arrival("/some", events["evt_a"]),  # a type /some did not subscribe to
    ]
    found = judge_hooks(hooks, arrivals_for(hooks) + stray, held)
    assert len(found.deliveries_unwanted) == 3, found.deliveries_unwanted
    assert everything(found) == found.deliveries_unwanted


def test_a_disabled_endpoint_owes_only_the_events_before_its_disable():
    disabled_at = T0 + 100
    events = {
        "evt_early": event("evt_early", "payment.authorized", "pay_1"),  # canceled by it
        "evt_race": event("evt_race", "payment.authorized", "pay_1", at=disabled_at - 1),
        "evt_late": event("evt_late", "payment.authorized", "pay_1", at=disabled_at + 60),
    }
    hooks = hook_books(events, gone_disabled_at=disabled_at)
    hooks.deliveries[("evt_early", "we_gone")] = "canceled"
    del hooks.deliveries[("evt_race", "we_gone")]  # raced the disable: either way
    del hooks.deliveries[("evt_late", "we_gone")]
    arrivals = [*arrivals_for(hooks), arrival("/gone", events["evt_early"], "410")]
    found = chaos.WebhookFindings()
    chaos.check_deliveries(arrivals, ENDPOINTS, hooks, MERCHANT, found)
    assert everything(found) == []
    assert (found.counts["canceled_by_disable"], found.counts["after_disable"]) == (1, 2)
    assert found.counts["endpoints_disabled"] == 1

    # Queued after the disable: unwanted. An event well before it not queued: lost.
    hooks.deliveries[("evt_late", "we_gone")] = "canceled"
    events["evt_old"] = event("evt_old", "payment.authorized", "pay_1", at=T0 - 60)
    found = chaos.WebhookFindings()
    chaos.check_deliveries(arrivals, ENDPOINTS, hooks, MERCHANT, found)
    assert found.deliveries_unwanted == [
        "evt_late (payment.authorized) to /gone: queued after it was disabled"
    ]
    assert found.deliveries_lost == [
        "evt_old (payment.authorized) to /all: never queued",
        "evt_old (payment.authorized) to /gone: never queued",
    ]


def test_a_410_that_did_not_disable_the_endpoint_is_bad():
    hooks = hook_books()
    arrivals = [*arrivals_for(hooks), arrival("/gone", hooks.events["evt_a"], "410")]
    found = chaos.WebhookFindings()
    chaos.check_deliveries(arrivals, ENDPOINTS, hooks, MERCHANT, found)
    assert found.deliveries_bad == ["/gone is enabled, its receiver answered 410: yes"]


# --- the billing checks, on made-up books -----------------------------------------------


def billing_books() -> chaos.BillingBooks:
    """Two subscriptions as a good run leaves them: sub_good paid every period by its own
    payment, sub_bad's one invoice uncollectible and the subscription canceled."""
    invoices = [
        {
            "subscription_id": "sub_good",
            "period_index": n,
            "status": "paid",
            "payment_id": f"pay_{n}",
        }
        for n in range(chaos.BILLING_PERIODS)
    ]
    invoices.append(
        {
            "subscription_id": "sub_bad",
            "period_index": 0,
            "status": "uncollectible",
            "payment_id": None,
        }
    )
    return chaos.BillingBooks(
        invoices,
        {"sub_good": "active", "sub_bad": "canceled"},
        {f"in_{n}": 1 for n in range(chaos.BILLING_PERIODS)},
        [],
    )


SUBSCRIPTIONS = [("sub_good", False), ("sub_bad", True)]


def billing_found(books: chaos.BillingBooks) -> chaos.BillingFindings:
    found = chaos.BillingFindings(ready=True)
    chaos.check_billing(books, SUBSCRIPTIONS, found)
    return found


def test_good_billing_books_pass():
    found = billing_found(billing_books())
    assert (found.wrong_periods, found.double_charged, found.unresolved) == ([], [], [])
    assert (found.invoices, found.paid, found.uncollectible) == (14, 13, 1)
    assert found.captured == chaos.BILLING_PERIODS


def test_a_missing_period_a_second_capture_and_a_pending_attempt_are_found():
    books = billing_books()
    del books.invoices[5]  # period 5 never billed
    books.captures["in_3"] = 2  # charged twice
    books.pending.append(("in_7", 2))
    books.statuses["sub_bad"] = "past_due"
    found = billing_found(books)
    assert found.wrong_periods == [
        f"sub_good: periods {[n for n in range(chaos.BILLING_PERIODS) if n != 5]}, "
        f"want {list(range(chaos.BILLING_PERIODS))}"
    ]
    assert found.double_charged == ["in_3: 2 captures"]
    assert found.unresolved == ["sub_bad: past_due", "in_7 attempt 2 pending"]


def test_two_invoices_paid_by_one_payment_and_an_unready_clock_are_found():
    books = billing_books()
    books.invoices[1]["payment_id"] = "pay_0"
    found = chaos.BillingFindings(ready=False)
    chaos.check_billing(books, SUBSCRIPTIONS, found)
    assert found.double_charged == ["13 paid invoices, 12 payments"]
    assert found.unresolved == ["the test clock was not ready in time"]
