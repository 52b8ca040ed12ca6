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
    ):
        assert summary[count] == 0, f"{count}: {summary[count]}\n{tail}"
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
        "idempotency_key": key,
        "status": status,
        "amount": 1000,
        "amount_capturable": 0,
        "amount_captured": 800,
        "amount_refunded": refunded,
    }
    refund_rows = [
        {"id": f"re_{n + 1}", "payment_id": "pay_1", "amount": amount}
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
