"""What one webhook delivery costs the deliverer's process, away from the database.

``benchmarks.run``'s kassa-webhooks target measures the whole cost of webhooks (workers,
PostgreSQL, the receiver) on a machine shared with the load: a figure that moves by tens
of microseconds between runs. This one runs the real ``Deliverer`` and ``WebhookClient``
alone in this process, handing it deliveries as the gateway's commits do (``--batch`` at
a time, at ``--rate`` per second) and POSTing them to the benchmark's receiver on
loopback, and prints the CPU (user + system) this process and the receiver spent per
delivery. The database's part is left out on purpose: the endpoint is read once, the
claim finds nothing, and the record of each batch of attempts is a no-op, so what is
measured is the handoff, the signatures, the POST, the bookkeeping and the metrics.

    python -m benchmarks.deliverer                   # 12,000 deliveries at 1,200/s
    python -m benchmarks.deliverer --rate 2400 --batch 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from benchmarks.targets import webhook_receiver
from gateway.config import load_settings
from gateway.store import events
from gateway.webhooks import deliverer as module
from gateway.webhooks.secrets import SecretBox

ENDPOINT_ID = "we_bench"
SECRET = "whsec_" + "A" * 43 + "="  # any well-formed secret: nothing verifies here
# An event as large as a payment's (about 1.2 kB), sent as stored.
PAYLOAD = (
    '{"id":"evt_bench","type":"payment.authorized","data":{"object":{'
    + '"field":"a value of some length",' * 36
    + '"amount":1099}}}'
)
WARM_UP = 2000  # deliveries before the measured ones: connections open, caches warm


async def _record_nothing(
    conn: object,
    records: Sequence[events.AttemptRecord],
    health: dict[str, tuple[bool, bool]],
    disable_after_s: float,
) -> list[object]:
    return []


class _NoDatabase:
    """The pool the deliverer is given: an acquired connection that nothing uses."""

    def acquire(self) -> _NoDatabase:
        return self

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> bool:
        return False


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(url: str, receiver_pid: int, deliveries: int, rate: float, batch: int) -> None:
    events.record = _record_nothing  # type: ignore[assignment]
    module.ENDPOINT_CACHE_S = float("inf")  # read once, below
    deliverer = module.Deliverer(
        _NoDatabase(),  # type: ignore[arg-type]
        SecretBox(os.urandom(32)),
        load_settings({"KASSA_WEBHOOK_ALLOW_PRIVATE": "1"}),
    )
    deliverer._endpoints[ENDPOINT_ID] = module._Endpoint(
        url, module.webhooks.signing_keys(SECRET), time.monotonic(), False
    )

    async def claim_nothing(rows_max: int) -> int:
        return 0

    async def no_gauges() -> None:
        await asyncio.Event().wait()

    deliverer._claim = claim_nothing  # type: ignore[method-assign]
    deliverer._sample_forever = no_gauges  # type: ignore[method-assign]
    await deliverer.start()
    created = datetime.now(UTC)

    async def hand(count: int) -> None:
        interval_s = batch / rate
        start = time.monotonic()
        for n, first in enumerate(range(0, count, batch)):
            deliverer.handoff(
                [
                    events.Handoff(f"evt_{first + i}", ENDPOINT_ID, PAYLOAD, created)
                    for i in range(min(batch, count - first))
                ]
            )
            await asyncio.sleep(max(0.0, start + (n + 1) * interval_s - time.monotonic()))
        while deliverer._sending or deliverer._handed_count or deliverer._finished:
            await asyncio.sleep(0.01)

    await hand(WARM_UP)
    times = os.times()
    own, theirs, began = time.process_time(), _cpu_s(receiver_pid), time.monotonic()
    await hand(deliveries)
    own = time.process_time() - own
    user_s, system_s = os.times().user - times.user, os.times().system - times.system
    theirs = _cpu_s(receiver_pid) - theirs
    took = time.monotonic() - began
    await deliverer.close()
    print(f"{deliveries} deliveries in {took:.2f} s ({deliveries / took:,.0f}/s, {batch} a commit)")
    print(
        f"  deliverer (this process)  {own / deliveries * 1e6:7.1f} us CPU per delivery "
        f"(user {user_s / deliveries * 1e6:.1f}, system {system_s / deliveries * 1e6:.1f})"
    )
    print(f"  receiver                  {theirs / deliveries * 1e6:7.1f} us CPU per delivery")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=12_000)
    parser.add_argument("--rate", type=float, default=1200.0, help="deliveries handed per second")
    parser.add_argument("--batch", type=int, default=4, help="deliveries handed per commit")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="kassa-deliverer-") as workdir,
        webhook_receiver(Path(workdir)) as (receiver_url, receiver_pid),
    ):
        uvloop.run(
            _run(receiver_url + "/hook", receiver_pid, args.deliveries, args.rate, args.batch)
        )


if __name__ == "__main__":
    main()
