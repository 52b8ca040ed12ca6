"""The hosted checkout page: time to first byte under 200 concurrent sessions, and its
weight with everything it loads (issue 16: p99 <= 20 ms, <= 50 KB).

    python -m benchmarks.checkout_page            # about 15 s on 2 cores
    python -m benchmarks.checkout_page --json     # the figures as JSON too

``kassa serve --workers 2`` on a fresh embedded PostgreSQL, one merchant. It opens 200
checkout sessions over the API first, then loads their pages (``GET /checkout/{id}``,
each a database read of the session, its payment and its merchant, and a render) in two
shapes, with a connection per session (200 keep-alive connections, opened and warmed by a
first round that is not counted):

- ``open loop``: page loads at a steady rate (``--rate``, default 400/s), round-robin over
  the 200 sessions, each sent at its scheduled time whether or not earlier ones answered,
  and timed from that scheduled time (no coordinated omission). This is 200 buyers on
  their pages at once, which is what the target is stated for.
- ``burst``: all 200 pages requested in the same instant, ``--bursts`` times: the worst
  case of 200 buyers pressing reload together; its p99 is the queue of 200 requests on
  2 workers, reported beside the target, not against it.

TTFB is from the (scheduled) send to the answer's status line and headers, as aiohttp
returns them. The weight is the bytes of the HTML and of every stylesheet and script it
names (the page loads nothing else: no images, no fonts), as served, uncompressed.
The load generator runs on the same two cores as the server: its own cost is in the
figures.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import uvloop

from benchmarks.targets import kassa_server

SESSIONS = 200
RATE_PER_S_DEFAULT = 400
MEASURE_S_DEFAULT = 6.0
BURSTS_DEFAULT = 5
REQUEST_TIMEOUT_S = 10.0
TTFB_P99_TARGET_MS = 20.0
WEIGHT_TARGET_BYTES = 50 * 1024
ASSET = re.compile(r'(?:href|src)="(/checkout/static/[^"]+)"')


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest rank: the smallest value at or above ``pct`` percent of them."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def summary(name: str, ttfb_s: list[float], errors: int, seconds: float) -> dict:
    ordered = sorted(ttfb_s)
    return {
        "shape": name,
        "requests": len(ordered),
        "errors": errors,
        "achieved_per_s": round(len(ordered) / seconds, 1) if seconds else None,
        **{
            f"p{label}_ms": round(percentile(ordered, pct) * 1000, 2)
            for label, pct in (("50", 50), ("90", 90), ("99", 99), ("999", 99.9))
        },
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else None,
    }


async def open_sessions(base: str, secret: str) -> list[str]:
    headers = {"Authorization": f"Bearer {secret}"}
    body = {
        "amount": 1999,
        "currency": "eur",
        "success_url": "https://shop.example/thanks",
        "cancel_url": "https://shop.example/cart",
        "description": "2 items",
        "locale": "auto",
    }
    async with aiohttp.ClientSession(base, headers=headers) as api:

        async def one() -> str:
            async with api.post("/v1/checkout/sessions", json=body) as response:
                if response.status != 201:
                    raise RuntimeError(f"session create answered {response.status}")
                return str(urlsplit_path((await response.json())["url"]))

        return list(await asyncio.gather(*(one() for _ in range(SESSIONS))))


def urlsplit_path(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path


async def weight(base: str, path: str) -> dict:
    async with aiohttp.ClientSession(base) as client:
        async with client.get(path) as response:
            html = await response.read()
        parts = {"html": len(html)}
        for asset in ASSET.findall(html.decode()):
            async with client.get(asset) as response:
                parts[asset.rsplit("/", 1)[-1]] = len(await response.read())
    return {"bytes": sum(parts.values()), "parts": parts}


async def timed_get(client: aiohttp.ClientSession, path: str, scheduled: float) -> float | None:
    try:
        async with client.get(path) as response:
            ttfb = time.perf_counter() - scheduled  # headers are in: the first byte came
            await response.read()
            return ttfb if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def measure(base: str, paths: list[str], rate: int, seconds: float, bursts: int) -> list:
    connector = aiohttp.TCPConnector(limit=SESSIONS, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as client:
        # Warm-up, not counted: every connection opened, every page rendered once.
        await asyncio.gather(*(timed_get(client, p, time.perf_counter()) for p in paths))

        start = time.perf_counter()
        count = int(rate * seconds)
        pending = []
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(timed_get(client, paths[i % SESSIONS], scheduled)))
        steady = await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
        results = [
            summary(
                f"open loop {rate}/s over {SESSIONS} sessions",
                [t for t in steady if t is not None],
                sum(1 for t in steady if t is None),
                elapsed,
            )
        ]

        burst_times: list[float | None] = []
        burst_start = time.perf_counter()
        for _ in range(bursts):
            now = time.perf_counter()
            burst_times += await asyncio.gather(*(timed_get(client, p, now) for p in paths))
        results.append(
            summary(
                f"burst: {SESSIONS} at once, x{bursts}",
                [t for t in burst_times if t is not None],
                sum(1 for t in burst_times if t is None),
                time.perf_counter() - burst_start,
            )
        )
    return results


async def run(base: str, secret: str, rate: int, seconds: float, bursts: int) -> dict:
    paths = await open_sessions(base, secret)
    return {
        "weight": await weight(base, paths[0]),
        "ttfb": await measure(base, paths, rate, seconds, bursts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=RATE_PER_S_DEFAULT, help="page loads/s")
    parser.add_argument("--seconds", type=float, default=MEASURE_S_DEFAULT)
    parser.add_argument("--bursts", type=int, default=BURSTS_DEFAULT)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="kassa-checkout-bench-") as tmp,
        kassa_server("checkout-page", Path(tmp), args.workers, None, True) as (_, target),
    ):
        figures = uvloop.run(
            run(target.url, str(target.secret_key), args.rate, args.seconds, args.bursts)
        )
    page = figures["weight"]
    print(
        f"page weight: {page['bytes']} bytes "
        f"({', '.join(f'{k} {v}' for k, v in page['parts'].items())}); "
        f"target <= {WEIGHT_TARGET_BYTES}: {'met' if page['bytes'] <= WEIGHT_TARGET_BYTES else 'MISSED'}"
    )
    for shape in figures["ttfb"]:
        print(
            f"TTFB {shape['shape']}: {shape['requests']} requests, {shape['errors']} errors, "
            f"{shape['achieved_per_s']}/s; p50 {shape['p50_ms']} ms, p90 {shape['p90_ms']} ms, "
            f"p99 {shape['p99_ms']} ms, p99.9 {shape['p999_ms']} ms, max {shape['max_ms']} ms"
        )
    steady = figures["ttfb"][0]
    met = steady["p99_ms"] <= TTFB_P99_TARGET_MS and steady["errors"] == 0
    print(f"target p99 <= {TTFB_P99_TARGET_MS:g} ms (open loop): {'met' if met else 'MISSED'}")
    if args.json:
        sys.stdout.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
