"""Chaos test: checkouts with client retries while gateway workers die and PostgreSQL restarts.

    python -m benchmarks.chaos                    # full: 30 kills, 5 database restarts
    python -m benchmarks.chaos --short            # CI (tests/test_chaos.py): 20 kills, 3 restarts
    python -m benchmarks.chaos --seed 7 --short   # replay a run: the seed fixes every random choice

Everything runs on 127.0.0.1 in a temporary directory: a private PostgreSQL cluster
started from the ``pgserver`` wheel's binaries (so it can be crashed and restarted at
will), ``kassa serve`` with N workers on it, and the load in this process.

Phase 1: checkouts (authorize manual -> capture -> sometimes a partial refund, each step
with its own Idempotency-Key, retried with the same key and body) while a random
worker is SIGKILLed every so often. Phase 2: the same load while PostgreSQL is stopped
(``immediate`` = a crash, or ``fast``), kept down a couple of seconds and started again.
Then, once recovery has settled every ``processing`` payment, the database is checked:
lost (a 2xx a client saw whose effect is not in the books in that state), duplicated
(one Idempotency-Key with two effects, here or at the processor), imbalanced
(``kassa ledger verify``), stuck (still ``processing``), plus 500s, malformed error
bodies and hangs (a request past its timeout).

Events and webhooks, throughout: before the load, three endpoints of the run's merchant
are created through the API, pointing at a receiver in this process (aiohttp on
127.0.0.1): ``/all`` (every type; answers 500 or hangs past the gateway's 2 s webhook
timeout now and then), ``/some`` (two types; sometimes 500) and ``/gone`` (one type; 410
from a seeded request number on, which disables it). A quarter of the clients pay for a
second merchant without endpoints. Once the deliveries have settled (bounded), in one
snapshot of the database: every committed change has its one event and every event is of
a committed change in the state it says (missing, phantom); every event was delivered to
every endpoint subscribed to its type and enabled when it was written: queued, recorded
delivered, and acknowledged by the receiver (a request it verified with the
``standardwebhooks`` package against the endpoint's secret and answered 200), with one
``webhook-id`` (the event id) and one body on every attempt (lost, bad). For ``/gone``,
disabled at D, that is owed for the events before D only: its deliveries still pending at
D are canceled (API.md: disabling cancels them; counted, never left pending), events after
D are not queued for it. No delivery row exists for the merchant without endpoints
(unwanted). Duplicates received are allowed (at least once) and counted.

Exit status 1 when any of these is non-zero, no endpoint was disabled by its 410, or
fewer kills/restarts than asked were achieved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import standardwebhooks
from aiohttp import web

from gateway import testing
from gateway.testing import KassaServer

ROOT = Path(__file__).resolve().parent.parent
HOST = testing.HOST

# --- timing (seconds) ------------------------------------------------------------------
REQUEST_TIMEOUT_S = 15.0  # one HTTP request; past it the request counts as a hang
STEP_DEADLINE_S = 60.0  # all attempts of one step (a key), then the client gives up
STEP_ATTEMPTS_MAX = 300  # ... or this many attempts
BACKOFF_FIRST_S = 0.05  # retry backoff doubles from here ...
BACKOFF_MAX_S = 1.0  # ... up to here (the gateway's Retry-After is 1 s)
KILL_INTERVAL_S = (0.6, 1.6)  # between two worker kills (uniform, seeded)
RESTART_UP_S = 4.0  # the load runs on a healthy database before each restart
RESTART_DOWN_S = 2.0  # the database stays down this long: the gateway must answer 503
RECOVERY_BOUND_S = 20.0  # after a restart, a new authorization must succeed within this
SETTLE_WAIT_S = 30.0  # for recovery to settle every 'processing' payment
READY_TIMEOUT_S = 90.0  # kassa serve ready, or all its workers serving again
PG_CTL_TIMEOUT_S = 60  # pg_ctl start/stop (-t)
GATEWAY_STOP_GRACE_S = 15.0  # SIGTERM -> exit, before it is killed
VERIFY_TIMEOUT_S = 120.0  # kassa ledger verify

# --- the gateway under test ------------------------------------------------------------
GATEWAY_ENV = {
    "KASSA_PROCESSOR_TIMEOUT_MS": "1000",
    "KASSA_RECOVERY_AFTER_S": "2",  # > the processor timeout, so recovery never races it
    "KASSA_RECOVERY_INTERVAL_S": "1",
    "KASSA_SANDBOX_LATENCY_MS": "20",  # so requests are in flight when a worker dies
    "KASSA_SHUTDOWN_GRACE_S": "5",
    "KASSA_DB_POOL_MAX": "8",
    "KASSA_LOG_LEVEL": "info",  # the "worker N (pid P) serving" lines find the workers
    # The load sends a handful of test cards at a high rate from one key: the abuse rules
    # (rate limit, card-testing velocity) would rightly refuse it, which is not what this
    # test measures. 0 turns each off.
    "KASSA_RATE_LIMIT_PER_S": "0",
    "KASSA_VELOCITY_MERCHANT_ATTEMPTS_MAX": "0",
    "KASSA_VELOCITY_CARD_ATTEMPTS_MAX": "0",
    "KASSA_VELOCITY_CARD_DECLINES_MAX": "0",
    # Webhooks to the receiver in this process (127.0.0.1), failing fast and retried soon,
    # so every delivery settles within the run.
    "KASSA_WEBHOOK_ALLOW_PRIVATE": "1",
    "KASSA_WEBHOOK_TIMEOUT_S": "2",
    "KASSA_WEBHOOK_RETRY_SCHEDULE_S": "1,1,2,2,3,5,5,5,5,5",
    # A killed worker's claimed renewals are taken up again this much later.
    "KASSA_BILLING_LEASE_S": "5",
}
WEBHOOK_TIMEOUT_S = float(GATEWAY_ENV["KASSA_WEBHOOK_TIMEOUT_S"])
RECOVERED = re.compile(r"recovered payment \S+ as (\w+)")

# --- the load ----------------------------------------------------------------------------
APPROVE_CARD = "4242424242424242"
TIMEOUT_CARD = "4000009990000005"  # outcome unknown until recovery settles it (approved)
DECLINE_CARD = "4000000000000002"  # 402, stored
ERROR_CARD = "4000000000000119"  # 502, payment failed, stored
CARD_SHARES = ((TIMEOUT_CARD, 0.05), (DECLINE_CARD, 0.03), (ERROR_CARD, 0.02))
AMOUNT_RANGE = (100, 50_000)  # minor units
PARTIAL_CAPTURE_SHARE = 0.3
REFUND_SHARE = 0.4
CURRENCY = "EUR"
ERROR_FIELDS = {"type", "code", "message", "param", "decline_code", "payment_id"}
PROBLEMS_SHOWN_MAX = 10


# =========================================================================================
# A PostgreSQL cluster of our own, to crash and restart at will
# =========================================================================================


class PostgresCluster:
    """initdb + pg_ctl from the pgserver wheel, on 127.0.0.1:port, data in ``workdir``."""

    def __init__(self, workdir: Path, port: int, fsync: bool) -> None:
        import pgserver._commands as commands  # the wheel's bin directory

        self.bin = Path(commands.POSTGRES_BIN_PATH)
        self.home = workdir / "postgres"
        self.data = self.home / "data"
        self.port = port
        self.fsync = fsync
        self.user = self._system_user()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _system_user(self) -> str | None:
        """PostgreSQL refuses to run as root: then run it as the unprivileged user pgserver
        itself uses, with the same permission fixes pgserver makes for it."""
        if os.geteuid() != 0:
            return None
        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists("pgserver")
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(self.bin)
        ensure_folder_permissions(self.bin, read | execute)
        ensure_folder_permissions(self.bin.parent / "lib", read)
        return "pgserver"

    def _run(self, *args: str, timeout: float = PG_CTL_TIMEOUT_S + 10) -> None:
        # Output to a file, never a pipe: the postmaster inherits pg_ctl's descriptors and
        # would keep a pipe open, so reading it to EOF would hang.
        with open(self.home / "pg_ctl.out", "ab") as out:
            subprocess.run(
                [str(self.bin / args[0]), *args[1:]],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                user=self.user,
            )

    def init(self) -> None:
        self.home.mkdir(parents=True)
        self.home.parent.chmod(0o755)  # the postgres user must traverse the work directory
        if self.user is not None:
            shutil.chown(self.home, self.user, self.user)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=utf8",
            "--no-sync",
        )
        # fsync off by default: we crash the server process, never the machine, so the
        # kernel's page cache survives every crash here and fsync would only spend the
        # shared disk's time. WAL is still written at each commit (what a crash needs).
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.home}'",
            "fsync": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.home / "server.log"),
            "-w",
            "-t",
            str(PG_CTL_TIMEOUT_S),
            "start",
        )

    def stop(self, mode: str) -> None:
        """``immediate``: a crash (no checkpoint, recovery on start); ``fast``: clean."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(PG_CTL_TIMEOUT_S), "stop"
        )

    def ensure_stopped(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.stop("immediate")


# =========================================================================================
# The gateway: kassa serve (gateway/testing.py), what its log says
# =========================================================================================


def make_gateway(workdir: Path, dsn: str, workers: int) -> KassaServer:
    """``kassa serve`` on the cluster, not started yet; the tests' throwaway master key."""
    return KassaServer(
        workdir,
        dsn,
        workers=workers,
        data_dir=workdir / "kassa",
        log_path=workdir / "gateway.log",
        env={**GATEWAY_ENV, "KASSA_MASTER_KEY": testing.TEST_MASTER_KEY},
    )


def unhandled_errors(gateway: KassaServer) -> list[str]:
    """Lines of the gateway's log that say a request failed unhandled (a 500)."""
    return [line[:300] for line in gateway.logs().splitlines() if "unhandled error" in line]


def recoveries(gateway: KassaServer) -> dict[str, int]:
    """Payments recovery settled, by outcome: the authorizations the chaos cut off."""
    return dict(Counter(RECOVERED.findall(gateway.logs())))


# =========================================================================================
# What the clients saw
# =========================================================================================


@dataclass
class Exchange:
    """One HTTP answer, for the database-down accounting."""

    sent: float
    received: float
    status: int


@dataclass
class Stats:
    requests: int = 0
    by_status: Counter = field(default_factory=Counter)
    connection_errors: int = 0
    hangs: int = 0
    server_errors: list[str] = field(default_factory=list)  # 500s and malformed bodies
    exchanges: list[Exchange] = field(default_factory=list)
    down_windows: list[tuple[float, float]] = field(default_factory=list)
    restart_modes: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    not_recovered: int = 0
    kills: int = 0
    restarts: int = 0

    def answer(self, sent: float, status: int, raw: bytes, what: str) -> None:
        self.requests += 1
        self.by_status[status] += 1
        self.exchanges.append(Exchange(sent, time.monotonic(), status))
        if status >= 500 and status not in (502, 503, 504):
            self.server_errors.append(f"{what}: {status} {raw[:200]!r}")
        elif not well_formed(status, raw):
            self.server_errors.append(f"{what}: malformed {status} body {raw[:200]!r}")


def well_formed(status: int, raw: bytes) -> bool:
    """A JSON object; for an error, exactly API.md's error shape; never a traceback."""
    if b"Traceback" in raw:
        return False
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(doc, dict):
        return False
    if status < 300:
        return True
    error = doc.get("error")
    return (
        set(doc) == {"error"}
        and isinstance(error, dict)
        and set(error) == ERROR_FIELDS
        and isinstance(error["type"], str)
        and isinstance(error["code"], str)
    )


def error_code(body: dict | None) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("code")
    return None


@dataclass
class StepResult:
    """A step's final, definitive answer (status None: the client gave up)."""

    key: str
    status: int | None = None
    body: dict | None = None
    attempts: int = 0


def retryable(step: str, status: int | None, body: dict | None) -> bool:
    if status is None or status in (429, 500, 503, 504):
        return True  # no answer, or API.md's "safe to retry with the same Idempotency-Key"
    # 409 in use: still executing, or its outcome is unknown until recovery settles it. Not
    # a 502: it is stored for its key (API.md), for a capture or refund too; a retry replays it.
    return status == 409 and error_code(body) == "idempotency_key_in_use"


class Client:
    def __init__(
        self, session: aiohttp.ClientSession, url: str, secret: str, stats: Stats, give_up_at: float
    ) -> None:
        self.session = session
        self.url = url
        self.secret = secret
        self.stats = stats
        self.give_up_at = give_up_at  # the run's hard deadline: no retries past it

    async def attempt(
        self, path: str, raw: bytes, key: str, what: str
    ) -> tuple[int | None, dict | None]:
        headers = {
            "Authorization": f"Bearer {self.secret}",
            "Idempotency-Key": key,
            "Content-Type": "application/json",
        }
        sent = time.monotonic()
        try:
            async with self.session.post(
                self.url + path,
                data=raw,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError:  # before ClientError: aiohttp's timeouts are both
            self.stats.requests += 1
            self.stats.hangs += 1
            return None, None
        except aiohttp.ClientError:
            self.stats.requests += 1
            self.stats.connection_errors += 1
            return None, None
        self.stats.answer(sent, status, body, what)
        try:
            return status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return status, None

    async def step(
        self,
        step: str,
        path: str,
        body: dict,
        key: str,
        rng: random.Random,
        deadline_s: float = STEP_DEADLINE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> StepResult:
        """POST until a definitive answer, always with the same key and the same body."""
        raw = orjson.dumps(body)
        result = StepResult(key)
        deadline = min(time.monotonic() + deadline_s, self.give_up_at)
        while result.attempts < STEP_ATTEMPTS_MAX and time.monotonic() < deadline:
            result.attempts += 1
            status, answer = await self.attempt(path, raw, key, f"{step} {key}")
            if not retryable(step, status, answer):
                result.status, result.body = status, answer
                return result
            backoff = min(backoff_max_s, BACKOFF_FIRST_S * 2 ** min(result.attempts, 10))
            await asyncio.sleep(backoff * rng.uniform(0.5, 1.0))
        return result


# =========================================================================================
# Checkouts
# =========================================================================================


@dataclass(frozen=True)
class FlowPlan:
    name: str
    amount: int
    card: str
    capture_amount: int | None  # None: no capture step
    refund_amount: int | None  # None: no refund step

    def key(self, seed: int, step: str) -> str:
        return f"chaos-{seed}-{self.name}-{step}"


def plan_flow(seed: int, index: int) -> FlowPlan:
    """Checkout ``index`` of run ``seed``: the same plan whatever the interleaving."""
    rng = random.Random(f"{seed}:{index}")
    amount = rng.randint(*AMOUNT_RANGE)
    card, roll = APPROVE_CARD, rng.random()
    for special, share in CARD_SHARES:
        if roll < share:
            card = special
            break
        roll -= share
    capture = amount if rng.random() >= PARTIAL_CAPTURE_SHARE else rng.randint(1, amount - 1)
    refund = rng.randint(1, capture) if rng.random() < REFUND_SHARE else None
    return FlowPlan(f"c{index}", amount, card, capture, refund)


def authorization_body(plan: FlowPlan) -> dict:
    return {
        "amount": plan.amount,
        "currency": CURRENCY.lower(),
        "capture": "manual",
        "payment_method": {
            "type": "card",
            "card": {
                "number": plan.card,
                "exp_month": 12,
                "exp_year": datetime.now(UTC).year + 4,
                "cvc": "123",
            },
        },
        "reference": f"chaos-{plan.name}",
    }


@dataclass
class FlowRecord:
    plan: FlowPlan
    authorize: StepResult
    capture: StepResult | None = None
    refund: StepResult | None = None


async def run_flow(client: Client, plan: FlowPlan, seed: int) -> FlowRecord:
    rng = random.Random(f"{seed}:{plan.name}:backoff")
    record = FlowRecord(
        plan,
        await client.step(
            "authorize", "/v1/payments", authorization_body(plan), plan.key(seed, "auth"), rng
        ),
    )
    if record.authorize.status != 201 or plan.capture_amount is None:
        return record
    payment_id = record.authorize.body["id"]
    record.capture = await client.step(
        "capture",
        f"/v1/payments/{payment_id}/capture",
        {"amount": plan.capture_amount},
        plan.key(seed, "capture"),
        rng,
    )
    if record.capture.status != 200 or plan.refund_amount is None:
        return record
    record.refund = await client.step(
        "refund",
        f"/v1/payments/{payment_id}/refunds",
        {"amount": plan.refund_amount, "reason": "requested_by_customer"},
        plan.key(seed, "refund"),
        rng,
    )
    return record


@contextlib.asynccontextmanager
async def load(
    clients: list[Client], seed: int, counter: Iterator[int], records: list[FlowRecord]
) -> AsyncIterator[None]:
    """Each of ``clients`` (one per concurrent checkout, some of them the same merchant's)
    runs checkouts back to back until the block ends; leaving it waits for the checkouts
    in progress (each bounded by its steps' deadlines)."""
    stopping = asyncio.Event()

    async def one_client(client: Client) -> None:
        while not stopping.is_set():
            records.append(await run_flow(client, plan_flow(seed, next(counter)), seed))

    tasks = [asyncio.create_task(one_client(client)) for client in clients]
    try:
        yield
    finally:
        stopping.set()
        await asyncio.gather(*tasks)


# =========================================================================================
# Webhooks: a receiver that fails, hangs and answers 410, and the endpoints pointing at it
# =========================================================================================


@dataclass(frozen=True)
class EndpointPlan:
    """One endpoint of the run's merchant and how its receiver answers a delivery."""

    path: str
    enabled_events: tuple[str, ...]
    fail_share: float  # answered 500
    hang_share: float  # answered only after the gateway's webhook timeout (it gave up)
    # The receiver answers 410 Gone from a request number drawn (seeded) in this range on:
    # the first 410 disables the endpoint.
    gone_from: tuple[int, int] | None = None


ENDPOINT_PLANS = (
    EndpointPlan("/all", ("*",), fail_share=0.15, hang_share=0.05),
    EndpointPlan("/some", ("payment.captured", "refund.succeeded"), fail_share=0.05, hang_share=0),
    EndpointPlan("/gone", ("payment.authorized",), 0.05, 0, gone_from=(40, 120)),
)
HANG_PAST_TIMEOUT_S = 1.0  # a hang answers this long after the gateway's timeout
QUIET_CLIENTS_SHARE = 0.25  # of the clients pay for the merchant without endpoints
# An event's statement may see an endpoint's state as of a little after the event's
# "created" (its transaction's start): within a statement timeout of the disable, an
# event of a just-disabled endpoint may or may not be queued for it.
DISABLE_RACE_S = 5.0
DELIVERY_SETTLE_S = 60.0  # after the load, for every pending delivery to be settled


@dataclass(frozen=True)
class WebhookArrival:
    """One request at the receiver: what it was and how it was answered."""

    path: str
    webhook_id: str | None
    body_id: str | None  # the event id inside the body
    body: bytes
    verified: bool  # the standardwebhooks package verified it with the endpoint's secret
    answer: str  # "200", "500", "410" or "hang"

    @property
    def acknowledged(self) -> bool:
        """Answered 2xx in time: the receiver took the event."""
        return self.answer == "200"


@dataclass(frozen=True)
class Endpoint:
    id: str
    path: str
    secret: str
    enabled_events: tuple[str, ...]

    def subscribed(self, event_type: str) -> bool:
        return "*" in self.enabled_events or event_type in self.enabled_events


class WebhookReceiver:
    """aiohttp on 127.0.0.1 in this process: answers each endpoint's deliveries by its plan
    (seeded draws, in arrival order), verifies each with the standardwebhooks package
    against the endpoint's secret, and records every request."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"{seed}:receiver")
        self.plans = {plan.path: plan for plan in ENDPOINT_PLANS}
        self.gone_from = {
            plan.path: self.rng.randint(*plan.gone_from)
            for plan in ENDPOINT_PLANS
            if plan.gone_from
        }
        self.secrets: dict[str, str] = {}
        self.arrivals: list[WebhookArrival] = []
        self.requests: Counter = Counter()  # path -> requests so far
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def _answer(self, plan: EndpointPlan) -> str:
        self.requests[plan.path] += 1
        roll = self.rng.random()
        if plan.path in self.gone_from and self.requests[plan.path] >= self.gone_from[plan.path]:
            return "410"
        if roll < plan.fail_share:
            return "500"
        if roll < plan.fail_share + plan.hang_share:
            return "hang"
        return "200"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        plan = self.plans.get(request.path)
        if plan is None:
            return web.Response(status=404)
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = False
        secret = self.secrets.get(plan.path)
        if secret is not None:
            try:
                standardwebhooks.Webhook(secret).verify(body, headers)
                verified = True
            except Exception:  # any failure to verify is the finding, whatever its kind
                verified = False
        try:
            body_id = orjson.loads(body).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            body_id = None
        answer = self._answer(plan)
        self.arrivals.append(
            WebhookArrival(plan.path, headers.get("webhook-id"), body_id, body, verified, answer)
        )
        if answer == "hang":
            await asyncio.sleep(WEBHOOK_TIMEOUT_S + HANG_PAST_TIMEOUT_S)
            return web.Response(status=200, text="too late")
        return web.Response(status=int(answer), text=answer)


async def register_endpoints(
    client: Client, receiver: WebhookReceiver, seed: int
) -> dict[str, Endpoint]:
    """Create the run's endpoints through the API (each POST with its Idempotency-Key);
    the receiver learns each secret from the create answer."""
    endpoints = {}
    for plan in ENDPOINT_PLANS:
        body = {
            "url": receiver.url(plan.path),
            "enabled_events": list(plan.enabled_events),
            "description": f"chaos {plan.path}",
        }
        result = await client.step(
            "endpoint",
            "/v1/webhook_endpoints",
            body,
            f"chaos-{seed}-endpoint{plan.path.replace('/', '-')}",
            random.Random(f"{seed}:{plan.path}"),
        )
        if result.status != 201 or result.body is None:
            raise RuntimeError(f"creating the {plan.path} endpoint answered {result.status}")
        endpoint = Endpoint(
            result.body["id"], plan.path, result.body["secret"], plan.enabled_events
        )
        receiver.secrets[plan.path] = endpoint.secret
        endpoints[endpoint.id] = endpoint
    return endpoints


# =========================================================================================
# Chaos
# =========================================================================================


async def kill_workers(gateway: KassaServer, kills: int, rng: random.Random, stats: Stats) -> None:
    """SIGKILL a random serving worker every KILL_INTERVAL_S until ``kills`` are done."""
    while stats.kills < kills:
        await asyncio.sleep(rng.uniform(*KILL_INTERVAL_S))
        pids = await gateway.wait_workers(1)
        victim = rng.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
            stats.kills += 1
        print(f"  kill {stats.kills:3d}: worker pid {victim}", flush=True)


async def restart_database(
    cluster: PostgresCluster,
    client: Client,
    restarts: int,
    seed: int,
    rng: random.Random,
    stats: Stats,
    records: list[FlowRecord],
) -> None:
    for index in range(restarts):
        await asyncio.sleep(RESTART_UP_S)
        mode = rng.choice(("immediate", "fast"))
        down_at = time.monotonic()
        await asyncio.to_thread(cluster.stop, mode)
        await asyncio.sleep(RESTART_DOWN_S)
        await asyncio.to_thread(cluster.start)
        up_at = time.monotonic()
        stats.down_windows.append((down_at, up_at))
        stats.restart_modes.append(mode)
        stats.restarts += 1
        recovery = await probe_recovery(client, seed, index, records)
        outcome = "NOT recovered" if recovery is None else f"recovered in {recovery:.1f} s"
        print(f"  restart {index + 1}: {mode}, down {up_at - down_at:.1f} s, {outcome}", flush=True)
        if recovery is None:
            stats.not_recovered += 1
        else:
            stats.recovery_s.append(recovery)


async def probe_recovery(
    client: Client, seed: int, index: int, records: list[FlowRecord]
) -> float | None:
    """Seconds from the database being back until a new authorization succeeds."""
    started = time.monotonic()
    plan = FlowPlan(f"probe{index}", 1000, APPROVE_CARD, None, None)
    result = await client.step(
        "authorize",
        "/v1/payments",
        authorization_body(plan),
        plan.key(seed, "auth"),
        random.Random(f"{seed}:probe{index}"),
        deadline_s=RECOVERY_BOUND_S,
        backoff_max_s=0.2,
    )
    records.append(FlowRecord(plan, result))
    return time.monotonic() - started if result.status == 201 else None


# =========================================================================================
# Checks, from the database
# =========================================================================================


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    imbalanced: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    undecided: int = 0  # steps the client gave up on (no definitive answer)
    checked: int = 0  # payments a client was told about, compared with the books
    unexpected: list[str] = field(default_factory=list)  # definitive but surprising answers


@dataclass
class Books:
    """What the database holds for the run's merchants, by payment id."""

    payments: dict[str, asyncpg.Record]
    refunds: dict[str, asyncpg.Record]
    refunds_by_payment: dict[str, list[asyncpg.Record]]
    ledger_events: dict[str, Counter]  # payment -> event -> transactions
    ledger_refund_ids: Counter  # refund id -> transactions
    processor: dict[str, Counter]  # payment -> operation -> operations
    processor_refunded: Counter  # payment -> refunded at the processor


async def read_books(conn: asyncpg.Connection, merchant_ids: list[str]) -> Books:
    payments = {
        r["id"]: r
        for r in await conn.fetch(
            """SELECT id, merchant_id, idempotency_key, status, amount, amount_capturable,
                  amount_captured, amount_refunded FROM payments
                WHERE merchant_id = any($1::text[])""",
            merchant_ids,
        )
    }
    refunds = {
        r["id"]: r
        for r in await conn.fetch(
            """SELECT id, merchant_id, payment_id, amount FROM refunds
                WHERE merchant_id = any($1::text[])""",
            merchant_ids,
        )
    }
    by_payment: dict[str, list[asyncpg.Record]] = {}
    for refund in refunds.values():
        by_payment.setdefault(refund["payment_id"], []).append(refund)
    events: dict[str, Counter] = {}
    refund_ids: Counter = Counter()
    for row in await conn.fetch(
        """SELECT payment_id, refund_id, event FROM ledger_transactions
                WHERE merchant_id = any($1::text[])""",
        merchant_ids,
    ):
        events.setdefault(row["payment_id"], Counter())[row["event"]] += 1
        if row["refund_id"] is not None:
            refund_ids[row["refund_id"]] += 1
    processor: dict[str, Counter] = {}
    refunded: Counter = Counter()
    for row in await conn.fetch(
        """SELECT payment_id, operation, outcome, amount FROM sandbox_operations
                WHERE payment_id = any($1::text[])""",
        list(payments),
    ):
        processor.setdefault(row["payment_id"], Counter())[row["operation"]] += 1
        if row["operation"] == "refund":
            refunded[row["payment_id"]] += row["amount"]
    return Books(payments, refunds, by_payment, events, refund_ids, processor, refunded)


def told_state(record: FlowRecord) -> tuple | None:
    """(status, capturable, captured, refunded) the client was last told, or None when a
    step got no definitive answer (then either outcome is legitimate)."""
    auth = record.authorize
    if auth.status == 402:
        return ("declined", 0, 0, 0)
    if auth.status == 502:
        return ("failed", 0, 0, 0)
    payment = auth.body
    if record.capture is not None:
        if record.capture.status is None:
            return None
        if record.capture.status == 200:
            payment = record.capture.body
    state = (
        payment["status"],
        payment["amount_capturable"],
        payment["amount_captured"],
        payment["amount_refunded"],
    )
    if record.refund is not None:
        if record.refund.status is None:
            return None
        if record.refund.status == 201:
            refunded = state[3] + record.refund.body["amount"]
            status = "refunded" if refunded == state[2] else "partially_refunded"
            state = (status, 0, state[2], refunded)
    return state


def payment_id_of(record: FlowRecord) -> str | None:
    auth = record.authorize
    if auth.status == 201:
        return auth.body["id"]
    if auth.status in (402, 502):
        return auth.body["error"]["payment_id"]
    return None


def check_flow(record: FlowRecord, books: Books, seed: int, findings: Findings) -> None:
    """Lost: a definitive answer the client saw that the books do not hold as told."""
    steps = [s for s in (record.authorize, record.capture, record.refund) if s is not None]
    findings.undecided += sum(1 for s in steps if s.status is None)
    for step in steps:
        if step.status is not None and not (200 <= step.status < 300 or step.status in (402, 502)):
            findings.unexpected.append(f"{step.key}: {step.status} {error_code(step.body)}")
    payment_id = payment_id_of(record)
    if payment_id is None:
        return
    findings.checked += 1
    row = books.payments.get(payment_id)
    if row is None or row["idempotency_key"] != record.plan.key(seed, "auth"):
        findings.lost.append(
            f"{record.plan.name}: payment {payment_id} the client was told "
            f"about is not in the books under its key"
        )
        return
    told = told_state(record)
    held = (row["status"], row["amount_capturable"], row["amount_captured"], row["amount_refunded"])
    if told is not None and held != told:
        findings.lost.append(f"{record.plan.name}: {payment_id} told {told}, books hold {held}")
    if record.refund is not None and record.refund.status == 201:
        refund = books.refunds.get(record.refund.body["id"])
        if refund is None or (refund["payment_id"], refund["amount"]) != (
            payment_id,
            record.refund.body["amount"],
        ):
            findings.lost.append(
                f"{record.plan.name}: refund {record.refund.body['id']} "
                f"the client was told about is not in the books as told"
            )
    refunds = books.refunds_by_payment.get(payment_id, [])
    if len(refunds) > (1 if record.refund is not None else 0):
        findings.duplicated.append(
            f"{record.plan.name}: {len(refunds)} refunds for "
            f"{payment_id}, the client asked for at most one"
        )
    if record.refund is not None and record.refund.status is not None:
        # Less than told is a lost refund, reported above; more is a refund made twice.
        told_refunded = record.refund.body["amount"] if record.refund.status == 201 else 0
        if sum(r["amount"] for r in refunds) > told_refunded:
            findings.duplicated.append(
                f"{record.plan.name}: refunds of {payment_id} total "
                f"{sum(r['amount'] for r in refunds)}, the client was "
                f"told {told_refunded}"
            )


async def check_duplicates(conn: asyncpg.Connection, books: Books, findings: Findings) -> None:
    for row in await conn.fetch(
        """SELECT merchant_id, idempotency_key, count(*) AS n FROM payments
                WHERE idempotency_key IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1"""
    ):
        findings.duplicated.append(f"key {row['idempotency_key']}: {row['n']} payments")
    for row in await conn.fetch(
        """SELECT operation, reference, count(*) AS n FROM sandbox_operations
                GROUP BY 1, 2 HAVING count(*) > 1"""
    ):
        findings.duplicated.append(
            f"processor: {row['n']} {row['operation']} operations for {row['reference']}"
        )
    for refund_id, n in books.ledger_refund_ids.items():
        if n > 1:
            findings.duplicated.append(f"ledger: {n} transactions for refund {refund_id}")
    for payment_id, row in books.payments.items():
        findings.duplicated += payment_duplicates(payment_id, row, books)


def payment_duplicates(payment_id: str, row: asyncpg.Record, books: Books) -> list[str]:
    """One payment's effects counted in our ledger and at the processor."""
    found = []
    events = books.ledger_events.get(payment_id, Counter())
    at_processor = books.processor.get(payment_id, Counter())
    refunds = books.refunds_by_payment.get(payment_id, [])
    for event, most in (("authorize", 1), ("capture", 1)):
        if events[event] > most:
            found.append(f"ledger: {events[event]} {event} transactions for {payment_id}")
    if events["void"] + events["expire"] > 1:
        found.append(f"ledger: {events['void'] + events['expire']} releases for {payment_id}")
    if events["refund"] != len(refunds):
        found.append(
            f"ledger: {events['refund']} refund transactions for {payment_id}, "
            f"{len(refunds)} refunds"
        )
    if sum(r["amount"] for r in refunds) != row["amount_refunded"]:
        found.append(
            f"{payment_id}: refunds total {sum(r['amount'] for r in refunds)}, "
            f"amount_refunded {row['amount_refunded']}"
        )
    if at_processor["authorize"] > 1:
        found.append(f"processor: {at_processor['authorize']} authorizations of {payment_id}")
    if at_processor["capture"] > events["capture"]:
        found.append(
            f"processor: {at_processor['capture']} captures of {payment_id}, "
            f"our books {events['capture']}"
        )
    if (
        at_processor["refund"] > len(refunds)
        or books.processor_refunded[payment_id] > row["amount_refunded"]
    ):
        found.append(
            f"processor: {at_processor['refund']} refunds "
            f"({books.processor_refunded[payment_id]}) of {payment_id}, our books "
            f"{len(refunds)} ({row['amount_refunded']})"
        )
    return found


async def check_processor_orphans(conn: asyncpg.Connection, findings: Findings) -> None:
    """A charge at the processor with no payment of ours, or one we recorded as not taken."""
    for row in await conn.fetch(
        """SELECT s.payment_id, p.status FROM sandbox_operations s
                 LEFT JOIN payments p ON p.id = s.payment_id
                WHERE s.operation = 'authorize' AND s.outcome = 'approved'
                  AND (p.id IS NULL OR p.status IN ('failed', 'declined'))"""
    ):
        findings.lost.append(
            f"processor approved {row['payment_id']}, our books: {row['status'] or 'no payment'}"
        )


async def wait_settled(conn: asyncpg.Connection) -> int:
    """Wait (bounded) for recovery to settle every 'processing' payment; how many remain."""
    deadline = time.monotonic() + SETTLE_WAIT_S
    while True:
        left = await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'processing'")
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


async def check_books(
    dsn: str, merchant_ids: list[str], records: list[FlowRecord], seed: int, gateway: KassaServer
) -> Findings:
    findings = Findings()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await wait_settled(conn)
        findings.stuck = [
            f"payment {r['id']} still processing"
            for r in await conn.fetch("SELECT id FROM payments WHERE status = 'processing'")
        ]
        findings.stuck += [
            f"key {r['key']} still in flight"
            for r in await conn.fetch("SELECT key FROM idempotency_keys WHERE state = 'in_flight'")
        ]
        books = await read_books(conn, merchant_ids)
        for record in records:
            check_flow(record, books, seed, findings)
        await check_duplicates(conn, books, findings)
        await check_processor_orphans(conn, findings)
    finally:
        await conn.close()
    # In a thread: the webhook receiver shares this event loop.
    findings.imbalanced = await asyncio.to_thread(ledger_verify, gateway)
    return findings


def ledger_verify(gateway: KassaServer) -> list[str]:
    done = gateway.cli("ledger", "verify", timeout=VERIFY_TIMEOUT_S)
    if done.returncode == 0:
        return []
    # Each problem is one stdout line; the verdict goes to stderr.
    problems = [line for line in done.stdout.splitlines() if line.strip()]
    return problems or [f"ledger verify exited {done.returncode}: {done.stderr.strip()[-300:]}"]


# =========================================================================================
# Checks of events and webhooks, from the database and the receiver
# =========================================================================================

# A payment in one of these states was authorized once: it has its payment.authorized.
AUTHORIZED_ONCE = frozenset(
    {"authorized", "captured", "partially_refunded", "refunded", "voided", "expired"}
)
# The states whose change has an event of the same name.
STATE_EVENTS = {
    "declined": "payment.declined",
    "failed": "payment.failed",
    "voided": "payment.voided",
    "expired": "payment.expired",
}


@dataclass(frozen=True)
class EventRow:
    id: str
    merchant_id: str
    type: str
    object_id: str
    payload: str
    created_at: float  # unix seconds


@dataclass
class WebhookBooks:
    """What the database holds of events and deliveries, read in one snapshot with the
    Books."""

    events: dict[str, EventRow]  # of both merchants
    deliveries: dict[tuple[str, str], str]  # (event, endpoint) -> state, the run's merchant
    endpoint_status: dict[str, tuple[str, float | None]]  # id -> status, disabled at
    attempts: int  # logged attempts of the run's merchant
    quiet_deliveries: int  # delivery rows of the merchant without endpoints (must be 0)
    quiet_attempts: int


@dataclass
class WebhookFindings:
    events_missing: list[str] = field(default_factory=list)  # a change without its event
    events_phantom: list[str] = field(default_factory=list)  # an event of no such change
    deliveries_lost: list[str] = field(default_factory=list)
    deliveries_bad: list[str] = field(default_factory=list)  # unverified, id or body unstable
    deliveries_unwanted: list[str] = field(default_factory=list)  # to whom nobody subscribed
    counts: Counter = field(default_factory=Counter)


def expected_events(payment: Mapping) -> list[str]:
    """The event types a payment's committed changes wrote, from the state it is in."""
    types = []
    if payment["status"] in AUTHORIZED_ONCE:
        types.append("payment.authorized")
    if payment["amount_captured"] > 0:
        types.append("payment.captured")
    if payment["status"] in STATE_EVENTS:
        types.append(STATE_EVENTS[payment["status"]])
    return types


def event_disagreement(event: EventRow, books: Books) -> str | None:
    """Why the event reports a change the books do not hold (None: they hold it)."""
    try:
        payload = orjson.loads(event.payload)
        said = (payload["id"], payload["type"], payload["data"]["object"]["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "its payload is not an event"
    if said != (event.id, event.type, event.object_id):
        return f"its payload says {said}"
    if event.type == "refund.succeeded":
        held = books.refunds.get(event.object_id)
        if held is None:
            return "no such refund"
    else:
        held = books.payments.get(event.object_id)
        if held is None:
            return "no such payment"
        if event.type not in expected_events(held):
            return f"the payment is {held['status']}, captured {held['amount_captured']}"
    if held.get("merchant_id") != event.merchant_id:
        return f"the object is {held.get('merchant_id')}'s"
    return None


def check_events(books: Books, hooks: WebhookBooks, found: WebhookFindings) -> None:
    """Every committed change has its one event; every event is of a committed change."""
    changes = Counter((e.object_id, e.type) for e in hooks.events.values())
    expected = [(pid, t) for pid, row in books.payments.items() for t in expected_events(row)]
    expected += [(refund_id, "refund.succeeded") for refund_id in books.refunds]
    for change in expected:
        if not changes[change]:
            found.events_missing.append(f"{change[0]}: no {change[1]} event")
    for (object_id, event_type), n in changes.items():
        if n > 1:
            found.events_phantom.append(f"{object_id}: {n} {event_type} events for one change")
    for event in hooks.events.values():
        reason = event_disagreement(event, books)
        if reason:
            found.events_phantom.append(f"{event.id} ({event.type} {event.object_id}): {reason}")
    found.counts["changes"] = len(expected)


def check_arrivals(
    arrivals: list[WebhookArrival],
    endpoints: dict[str, Endpoint],
    hooks: WebhookBooks,
    merchant_id: str,
    found: WebhookFindings,
) -> Counter:
    """Every request the receiver got: verified, its webhook-id the event's id and the
    same body on every attempt, of an event of the merchant its endpoint subscribed to.
    The acknowledged (verified, answered 200) deliveries by (path, event)."""
    by_path = {e.path: e for e in endpoints.values()}
    first_body: dict[tuple[str, str | None], bytes] = {}
    acknowledged: Counter = Counter()
    for a in arrivals:
        what = f"{a.path} {a.webhook_id}"
        fine = a.verified and a.webhook_id is not None and a.webhook_id == a.body_id
        if not a.verified:
            found.deliveries_bad.append(f"{what}: does not verify with the endpoint's secret")
        if a.webhook_id != a.body_id:
            found.deliveries_bad.append(f"{what}: webhook-id is not the event's id {a.body_id}")
        body = first_body.setdefault((a.path, a.webhook_id), a.body)
        if body != a.body:
            fine = False
            found.deliveries_bad.append(f"{what}: another body than its earlier attempt")
        event = hooks.events.get(a.body_id or "")
        endpoint = by_path.get(a.path)
        if event is None:
            fine = False
            found.deliveries_bad.append(f"{what}: no such event in the events table")
        elif (
            endpoint is None
            or event.merchant_id != merchant_id
            or not endpoint.subscribed(event.type)
        ):
            fine = False
            found.deliveries_unwanted.append(f"{what}: {event.type} of {event.merchant_id}")
        if fine and a.acknowledged:
            acknowledged[(a.path, a.webhook_id)] += 1
    return acknowledged


def check_deliveries(
    arrivals: list[WebhookArrival],
    endpoints: dict[str, Endpoint],
    hooks: WebhookBooks,
    merchant_id: str,
    found: WebhookFindings,
) -> None:
    """At least once per event and endpoint subscribed to its type and enabled when it
    was written: queued, delivered, and acknowledged by the receiver (a verified request
    it answered 200). For an endpoint disabled at D (the receiver answered 410), that is
    the events before D; its deliveries still pending at D are canceled (API.md: disabling
    cancels them), never left pending; events after D are not queued for it at all.
    Within DISABLE_RACE_S of D an event may go either way."""
    acknowledged = check_arrivals(arrivals, endpoints, hooks, merchant_id, found)
    counts = found.counts
    for event in hooks.events.values():
        if event.merchant_id != merchant_id:
            continue
        for endpoint in endpoints.values():
            if not endpoint.subscribed(event.type):
                continue
            what = f"{event.id} ({event.type}) to {endpoint.path}"
            state = hooks.deliveries.get((event.id, endpoint.id))
            _, disabled_at = hooks.endpoint_status.get(endpoint.id, ("missing", None))
            if disabled_at is not None and event.created_at > disabled_at - DISABLE_RACE_S:
                if event.created_at > disabled_at + DISABLE_RACE_S and state is not None:
                    found.deliveries_unwanted.append(f"{what}: queued after it was disabled")
                    continue
                if state is None:
                    counts["after_disable"] += 1
                    continue
            counts["due"] += 1
            if state is None:
                found.deliveries_lost.append(f"{what}: never queued")
            elif state == "pending":
                found.deliveries_lost.append(f"{what}: still pending after the run")
            elif state == "delivered" and not acknowledged[(endpoint.path, event.id)]:
                found.deliveries_lost.append(f"{what}: recorded delivered, never acknowledged")
            elif state == "delivered":
                counts["delivered"] += 1
            elif disabled_at is None:
                found.deliveries_lost.append(f"{what}: {state}, its endpoint enabled")
            else:
                counts[f"{state}_by_disable"] += 1  # pending (or the 410) when disabled
    counts["duplicates"] = sum(n - 1 for n in acknowledged.values())
    counts["acknowledged"] = len(acknowledged)
    answered_410 = {a.path for a in arrivals if a.answer == "410"}
    for endpoint in endpoints.values():
        status, _ = hooks.endpoint_status.get(endpoint.id, ("missing", None))
        if status != "enabled":
            counts["endpoints_disabled"] += 1
        if (endpoint.path in answered_410) != (status == "disabled"):
            found.deliveries_bad.append(
                f"{endpoint.path} is {status}, its receiver answered 410: "
                f"{'yes' if endpoint.path in answered_410 else 'no'}"
            )
    if hooks.quiet_deliveries or hooks.quiet_attempts:
        found.deliveries_unwanted.append(
            f"the merchant without endpoints has {hooks.quiet_deliveries} delivery rows and "
            f"{hooks.quiet_attempts} attempts"
        )


async def read_webhook_books(
    conn: asyncpg.Connection, merchant_id: str, quiet_id: str
) -> WebhookBooks:
    events = {
        r["id"]: EventRow(
            r["id"],
            r["merchant_id"],
            r["type"],
            r["object_id"],
            r["payload"],
            r["created_at"].timestamp(),
        )
        for r in await conn.fetch(
            """SELECT id, merchant_id, type, object_id, payload, created_at FROM events
                WHERE merchant_id = any($1::text[])""",
            [merchant_id, quiet_id],
        )
    }
    # A delivered delivery's row is deleted as its 2xx attempt is logged (migration 0009):
    # its state is read off the attempt log; the others are their rows'.
    deliveries_of = """SELECT d.event_id, d.endpoint_id, d.state FROM webhook_deliveries d
                         JOIN events e ON e.id = d.event_id WHERE e.merchant_id = $1
                       UNION
                       SELECT a.event_id, a.endpoint_id, 'delivered' FROM webhook_attempts a
                         JOIN events e ON e.id = a.event_id
                        WHERE e.merchant_id = $1 AND a.status_code BETWEEN 200 AND 299
                          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                           WHERE d.event_id = a.event_id
                                             AND d.endpoint_id = a.endpoint_id)"""
    attempts_of = """SELECT count(*) FROM webhook_attempts a
                       JOIN events e ON e.id = a.event_id WHERE e.merchant_id = $1"""
    deliveries = {
        (r["event_id"], r["endpoint_id"]): r["state"]
        for r in await conn.fetch(deliveries_of, merchant_id)
    }
    # A disabled endpoint's updated_at is when it was disabled: nothing changes it after.
    endpoint_status = {
        r["id"]: (r["status"], None if r["status"] == "enabled" else r["updated_at"].timestamp())
        for r in await conn.fetch(
            "SELECT id, status, updated_at FROM webhook_endpoints WHERE merchant_id = $1",
            merchant_id,
        )
    }
    return WebhookBooks(
        events=events,
        deliveries=deliveries,
        endpoint_status=endpoint_status,
        attempts=await conn.fetchval(attempts_of, merchant_id),
        quiet_deliveries=len(await conn.fetch(deliveries_of, quiet_id)),
        quiet_attempts=await conn.fetchval(attempts_of, quiet_id),
    )


async def wait_deliveries_settled(conn: asyncpg.Connection) -> tuple[int, float, int]:
    """Wait (bounded) until nothing is left to settle: no delivery pending, and no payment
    or operation whose recovery would write another event. The deliveries pending at the
    start, the seconds until none were, and how many are left."""
    started = time.monotonic()
    at_start = None
    while True:
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending') AS d,
                      (SELECT count(*) FROM payments WHERE status = 'processing')
                    + (SELECT count(*) FROM payment_operations WHERE state = 'pending') AS p"""
        )
        at_start = row["d"] if at_start is None else at_start
        waited = time.monotonic() - started
        if (row["d"] == 0 and row["p"] == 0) or waited > DELIVERY_SETTLE_S:
            return at_start, waited, row["d"]
        await asyncio.sleep(0.25)


async def check_webhooks(
    dsn: str,
    merchant_id: str,
    quiet_id: str,
    endpoints: dict[str, Endpoint],
    receiver: WebhookReceiver,
) -> WebhookFindings:
    found = WebhookFindings()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        pending, waited, left = await wait_deliveries_settled(conn)
        found.counts.update(pending_at_load_end=pending, pending_left=left)
        found.counts["drain_ms"] = int(waited * 1000)
        # One snapshot: a change and its event are read as of the same moment.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            books = await read_books(conn, [merchant_id, quiet_id])
            hooks = await read_webhook_books(conn, merchant_id, quiet_id)
    finally:
        await conn.close()
    check_events(books, hooks, found)
    check_deliveries(receiver.arrivals, endpoints, hooks, merchant_id, found)
    found.counts.update(
        events=sum(1 for e in hooks.events.values() if e.merchant_id == merchant_id),
        events_quiet=sum(1 for e in hooks.events.values() if e.merchant_id == quiet_id),
        attempts=hooks.attempts,
        requests=len(receiver.arrivals),
    )
    for arrival in receiver.arrivals:
        found.counts[f"answered_{arrival.answer}"] += 1
    return found


# =========================================================================================
# The run
# =========================================================================================


@dataclass
class Summary:
    seed: int
    requests: int
    kills: int
    kills_asked: int
    restarts: int
    restarts_asked: int
    restart_modes: list[str]
    by_status: dict[str, int]
    connection_errors: int
    down_by_status: dict[str, int]
    down_503: int
    hangs: int
    server_errors: int
    not_recovered: int
    recovery_s: list[float]
    checkouts: int
    checked: int
    recovered: dict[str, int]
    undecided: int
    unexpected: int
    lost: int
    duplicated: int
    imbalanced: int
    stuck: int
    # Events and webhooks
    events: int  # of the merchant with endpoints
    events_quiet: int  # of the merchant without
    events_missing: int  # a committed change without its event
    events_phantom: int  # an event of a change that did not commit (or two of one)
    deliveries_due: int  # (event, endpoint) pairs owed at least one delivery
    deliveries_acknowledged: int  # of them, delivered and answered 200 by the receiver
    duplicates_received: int  # acknowledged again (allowed: at least once)
    webhook_requests: int  # at the receiver, by answer in receiver_answers
    receiver_answers: dict[str, int]
    webhook_attempts: int  # in the attempt log
    endpoints_disabled: int
    canceled_by_disable: int  # pending at the disable (or its own 410)
    not_queued_after_disable: int
    pending_at_load_end: int
    delivery_drain_s: float  # after the load, until no delivery was pending
    deliveries_lost: int
    deliveries_bad: int  # unverified, webhook-id not the event's, body changed
    deliveries_unwanted: int  # for nobody subscribed (the merchant without endpoints)
    # Recurring billing (phase 3)
    billing_subscriptions: int
    billing_declining: int  # of them, paying with a declined card (dunning to the end)
    billing_invoices: int
    billing_paid: int
    billing_uncollectible: int
    billing_captured: int  # captured payments naming an invoice
    billing_unanswered: int  # attempts no issuer answered (cut off by a kill), tried again
    billing_kills: int
    billing_kills_asked: int
    billing_advance_s: float  # the advance, until the clock was ready again
    billing_wrong_periods: int  # subscriptions without exactly one invoice per period
    billing_double_charged: int  # invoices with more than one captured payment
    billing_unresolved: int  # invoices or attempts left open or pending
    gateway_exit: int | None
    gateway_stop_s: float
    elapsed_s: float
    failures: list[str]
    details: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def answers_while_down(stats: Stats) -> Counter:
    """Statuses of answers to requests in flight at some point while the database was down."""
    counted: Counter = Counter()
    for exchange in stats.exchanges:
        if any(
            exchange.sent <= up and exchange.received >= down for down, up in stats.down_windows
        ):
            counted[exchange.status] += 1
    return counted


def failures_of(summary: Summary) -> list[str]:
    failures = [
        f"{name} {value}"
        for name, value in (
            ("lost", summary.lost),
            ("duplicated", summary.duplicated),
            ("imbalanced", summary.imbalanced),
            ("stuck", summary.stuck),
            ("500s/malformed", summary.server_errors),
            ("hangs", summary.hangs),
            ("not recovered after a restart", summary.not_recovered),
            ("events missing", summary.events_missing),
            ("phantom events", summary.events_phantom),
            ("deliveries lost", summary.deliveries_lost),
            ("bad deliveries", summary.deliveries_bad),
            ("unwanted deliveries", summary.deliveries_unwanted),
            ("billing periods wrong", summary.billing_wrong_periods),
            ("billing invoices charged twice", summary.billing_double_charged),
            ("billing unresolved", summary.billing_unresolved),
        )
        if value
    ]
    if summary.billing_kills < summary.billing_kills_asked:
        failures.append(
            f"only {summary.billing_kills} of {summary.billing_kills_asked} billing kills"
        )
    if not summary.endpoints_disabled:
        failures.append("no endpoint was disabled by its 410")
    if summary.kills < summary.kills_asked:
        failures.append(f"only {summary.kills} of {summary.kills_asked} kills")
    if summary.restarts < summary.restarts_asked:
        failures.append(f"only {summary.restarts} of {summary.restarts_asked} restarts")
    if summary.restarts and not summary.down_503:
        failures.append("no 503 while the database was down")
    if summary.gateway_exit != 0:
        failures.append(f"kassa serve exited {summary.gateway_exit} on SIGTERM")
    return failures


def summarize(
    args: argparse.Namespace,
    stats: Stats,
    findings: Findings,
    hooks: WebhookFindings,
    billing: BillingFindings,
    records: list[FlowRecord],
    gateway_exit: int | None,
    gateway_stop_s: float,
    gateway: KassaServer,
    elapsed_s: float,
) -> Summary:
    log_problems = unhandled_errors(gateway)
    down = answers_while_down(stats)
    details = [
        f"{kind}: {line}"
        for kind, lines in (
            ("lost", findings.lost),
            ("duplicated", findings.duplicated),
            ("imbalanced", findings.imbalanced),
            ("stuck", findings.stuck),
            ("500", stats.server_errors),
            ("gateway log", log_problems),
            ("unexpected", findings.unexpected),
            ("event missing", hooks.events_missing),
            ("phantom event", hooks.events_phantom),
            ("delivery lost", hooks.deliveries_lost),
            ("bad delivery", hooks.deliveries_bad),
            ("unwanted delivery", hooks.deliveries_unwanted),
            ("billing period", billing.wrong_periods),
            ("billing double charge", billing.double_charged),
            ("billing unresolved", billing.unresolved),
        )
        for line in lines[:PROBLEMS_SHOWN_MAX]
    ]
    summary = Summary(
        seed=args.seed,
        requests=stats.requests,
        kills=stats.kills,
        kills_asked=args.kills,
        restarts=stats.restarts,
        restarts_asked=args.restarts,
        restart_modes=stats.restart_modes,
        by_status={str(k): v for k, v in sorted(stats.by_status.items())},
        connection_errors=stats.connection_errors,
        down_by_status={str(k): v for k, v in sorted(down.items())},
        down_503=down[503],
        hangs=stats.hangs,
        server_errors=len(stats.server_errors),
        not_recovered=stats.not_recovered,
        recovery_s=[round(s, 2) for s in stats.recovery_s],
        checkouts=len(records),
        checked=findings.checked,
        recovered=recoveries(gateway),
        undecided=findings.undecided,
        unexpected=len(findings.unexpected),
        lost=len(findings.lost),
        duplicated=len(findings.duplicated),
        imbalanced=len(findings.imbalanced),
        stuck=len(findings.stuck),
        events=hooks.counts["events"],
        events_quiet=hooks.counts["events_quiet"],
        events_missing=len(hooks.events_missing),
        events_phantom=len(hooks.events_phantom),
        deliveries_due=hooks.counts["due"],
        deliveries_acknowledged=hooks.counts["delivered"],
        duplicates_received=hooks.counts["duplicates"],
        webhook_requests=hooks.counts["requests"],
        receiver_answers={
            answer: hooks.counts[f"answered_{answer}"] for answer in ("200", "500", "hang", "410")
        },
        webhook_attempts=hooks.counts["attempts"],
        endpoints_disabled=hooks.counts["endpoints_disabled"],
        canceled_by_disable=hooks.counts["canceled_by_disable"] + hooks.counts["failed_by_disable"],
        not_queued_after_disable=hooks.counts["after_disable"],
        pending_at_load_end=hooks.counts["pending_at_load_end"],
        delivery_drain_s=round(hooks.counts["drain_ms"] / 1000, 1),
        deliveries_lost=len(hooks.deliveries_lost),
        deliveries_bad=len(hooks.deliveries_bad),
        deliveries_unwanted=len(hooks.deliveries_unwanted),
        billing_subscriptions=billing.subscriptions,
        billing_declining=billing.declining,
        billing_invoices=billing.invoices,
        billing_paid=billing.paid,
        billing_uncollectible=billing.uncollectible,
        billing_captured=billing.captured,
        billing_unanswered=billing.unanswered,
        billing_kills=billing.kills,
        billing_kills_asked=args.billing_kills,
        billing_advance_s=billing.advance_s,
        billing_wrong_periods=len(billing.wrong_periods),
        billing_double_charged=len(billing.double_charged),
        billing_unresolved=len(billing.unresolved),
        gateway_exit=gateway_exit,
        gateway_stop_s=round(gateway_stop_s, 2),
        elapsed_s=round(elapsed_s, 1),
        failures=[],
        details=details,
    )
    summary.failures = failures_of(summary)
    return summary


def print_summary(summary: Summary, short: bool) -> None:
    statuses = ", ".join(f"{k}: {v}" for k, v in summary.by_status.items()) or "none"
    down = ", ".join(f"{k}: {v}" for k, v in summary.down_by_status.items()) or "none"
    recovery = max(summary.recovery_s, default=0.0)
    recovered = ", ".join(f"{k} {v}" for k, v in sorted(summary.recovered.items()))
    answers = ", ".join(f"{k}: {v}" for k, v in summary.receiver_answers.items())
    verdict = "PASS" if summary.ok else "FAIL: " + "; ".join(summary.failures)
    lines = [
        f"chaos summary (seed {summary.seed}{', short' if short else ''})",
        (
            f"  requests           {summary.requests} ({summary.connection_errors} connection "
            "errors, retried)"
        ),
        (
            f"  checkouts          {summary.checkouts} ({summary.checked} payments checked "
            f"against the books, {summary.undecided} steps undecided, {summary.unexpected} "
            "unexpected answers)"
        ),
        (
            f"  recovered          {sum(summary.recovered.values())} payments settled by "
            f"recovery ({recovered or 'none'})"
        ),
        f"  kills              {summary.kills} (asked {summary.kills_asked})",
        (
            f"  restarts           {summary.restarts} (asked {summary.restarts_asked}: "
            f"{', '.join(summary.restart_modes) or '-'})"
        ),
        f"  answers by status  {statuses}",
        f"  while db down      {summary.down_503} x 503 ({down})",
        f"  max recovery       {recovery:.1f} s after a restart ({summary.recovery_s})",
        f"  hangs              {summary.hangs}",
        f"  500s               {summary.server_errors}",
        f"  lost               {summary.lost}",
        f"  duplicated         {summary.duplicated}",
        f"  imbalanced         {summary.imbalanced}",
        f"  stuck              {summary.stuck}",
        (
            f"  events             {summary.events} (+ {summary.events_quiet} of the merchant "
            f"without endpoints): {summary.events_missing} missing, {summary.events_phantom} "
            "phantom"
        ),
        (
            f"  webhooks           {summary.deliveries_acknowledged} of {summary.deliveries_due} "
            f"due deliveries acknowledged by the receiver (the other {summary.canceled_by_disable}"
            f" ended by the disable), {summary.duplicates_received} duplicates received "
            f"(allowed), {summary.webhook_attempts} attempts logged"
        ),
        f"  receiver           {summary.webhook_requests} requests ({answers})",
        (
            f"  endpoints disabled {summary.endpoints_disabled} (by 410; "
            f"{summary.not_queued_after_disable} later events not queued for it)"
        ),
        (
            f"  webhook backlog    {summary.pending_at_load_end} pending when the load ended, "
            f"settled in {summary.delivery_drain_s:.1f} s"
        ),
        f"  deliveries lost    {summary.deliveries_lost}",
        f"  bad deliveries     {summary.deliveries_bad}",
        (
            f"  unwanted           {summary.deliveries_unwanted} (deliveries nobody subscribed "
            "to: to the merchant without endpoints, after a disable)"
        ),
        (
            f"  billing            {summary.billing_subscriptions} subscriptions "
            f"({summary.billing_declining} declining), a year advanced in "
            f"{summary.billing_advance_s:.1f} s under {summary.billing_kills} kills: "
            f"{summary.billing_invoices} invoices ({summary.billing_paid} paid, "
            f"{summary.billing_uncollectible} uncollectible), {summary.billing_captured} "
            f"captured payments, {summary.billing_unanswered} attempts cut off by a kill "
            "and tried again"
        ),
        (
            f"  billing checks     {summary.billing_wrong_periods} subscriptions without one "
            f"invoice per period, {summary.billing_double_charged} invoices charged twice, "
            f"{summary.billing_unresolved} unresolved"
        ),
        f"  gateway stop       exit {summary.gateway_exit} in {summary.gateway_stop_s:.1f} s",
        f"  elapsed            {summary.elapsed_s:.1f} s",
        f"  verdict            {verdict}",
    ]
    lines += [f"  ! {line}" for line in summary.details]
    lines.append(
        f"replay: python -m benchmarks.chaos --seed {summary.seed}{' --short' if short else ''}"
    )
    print("\n".join(lines), flush=True)


async def run_chaos(
    args: argparse.Namespace, workdir: Path, cluster: PostgresCluster, gateway: KassaServer
) -> Summary:
    started = time.monotonic()
    stats, records = Stats(), []
    cluster.init()
    cluster.start()
    merchant_id, secret = gateway.create_merchant("chaos")
    quiet_id, quiet_secret = gateway.create_merchant("chaos-without-endpoints")
    billing_id, billing_secret = gateway.create_merchant("chaos-billing")
    receiver = WebhookReceiver(args.seed)
    await receiver.start()
    gateway.start()
    # One connection per request: the kernel spreads them over the workers (SO_REUSEPORT)
    # and no request is sent on a kept-alive connection to a worker that has since died.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await gateway.wait_ready_async(READY_TIMEOUT_S, all_workers=True)
            print(
                f"chaos: seed {args.seed}, {args.workers} workers, {args.clients} clients, "
                f"workdir {workdir}",
                flush=True,
            )
            give_up_at = time.monotonic() + args.deadline
            client = Client(session, gateway.url, secret, stats, give_up_at)
            quiet = Client(session, gateway.url, quiet_secret, stats, give_up_at)
            endpoints = await register_endpoints(client, receiver, args.seed)
            quiet_count = quiet_clients(args.clients)
            print(
                f"webhooks: endpoints {', '.join(e.path for e in endpoints.values())} on the "
                f"receiver at {receiver.url('')}; {quiet_count} of the clients pay for the "
                "merchant without endpoints",
                flush=True,
            )
            clients = [client] * (args.clients - quiet_count) + [quiet] * quiet_count
            counter, rng = itertools.count(), random.Random(args.seed)
            print(f"phase 1: {args.kills} worker kills under load", flush=True)
            async with load(clients, args.seed, counter, records):
                await kill_workers(gateway, args.kills, rng, stats)
            await gateway.wait_workers(args.workers)
            print(f"phase 2: {args.restarts} database restarts under load", flush=True)
            async with load(clients, args.seed, counter, records):
                await restart_database(
                    cluster, client, args.restarts, args.seed, rng, stats, records
                )
                await asyncio.sleep(RESTART_UP_S)
            await gateway.wait_workers(args.workers)
            billing, subscriptions = await billing_phase(
                session, gateway, billing_secret, args, rng
            )
        print("checking the subscriptions' invoices and payments", flush=True)
        check_billing(await read_billing_books(cluster.dsn, billing_id), subscriptions, billing)
        print("settling and checking the webhook deliveries", flush=True)
        hooks = await check_webhooks(cluster.dsn, merchant_id, quiet_id, endpoints, receiver)
        print("checking the books", flush=True)
        findings = await check_books(
            cluster.dsn, [merchant_id, quiet_id, billing_id], records, args.seed, gateway
        )
        gateway_exit, stop_s = gateway.stop(GATEWAY_STOP_GRACE_S)
    finally:
        await receiver.close()
    return summarize(
        args,
        stats,
        findings,
        hooks,
        billing,
        records,
        gateway_exit,
        stop_s,
        gateway,
        time.monotonic() - started,
    )


# =========================================================================================
# Phase 3: recurring billing on a test clock while workers die
# =========================================================================================

BILLING_CLOCK_START = "2027-01-31T10:00:00Z"  # the 31st: every short month clamps
BILLING_CLOCK_END = "2028-01-31T12:00:00Z"  # a year on: boundaries 0..12 have passed
BILLING_PERIODS = 13  # invoices of a subscription whose every renewal is paid
BILLING_DECLINE_SHARE = 0.05  # of the subscriptions pay with a declined card: dunning
BILLING_SETUP_CONCURRENCY = 16
BILLING_KILL_INTERVAL_S = (0.3, 0.8)  # between two kills during the advance
BILLING_READY_TIMEOUT_S = 180.0  # the clock ready again after the advance, kills and all
BILLING_AMOUNT = 1200


@dataclass
class BillingFindings:
    subscriptions: int = 0
    declining: int = 0
    invoices: int = 0
    paid: int = 0
    uncollectible: int = 0
    captured: int = 0
    unanswered: int = 0
    kills: int = 0
    advance_s: float = 0.0
    ready: bool = False
    wrong_periods: list[str] = field(default_factory=list)  # not one invoice per period
    double_charged: list[str] = field(default_factory=list)  # two captures for an invoice
    unresolved: list[str] = field(default_factory=list)  # open, pending, or not ended


async def billing_call(
    session: aiohttp.ClientSession, url: str, secret: str, path: str, body: dict, key: str
) -> dict:
    """One POST, retried with its key until a 2xx (a worker may die under it)."""
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": key}
    for attempt in range(STEP_ATTEMPTS_MAX):
        try:
            async with session.post(url + path, json=body, headers=headers) as response:
                answer = await response.json(content_type=None)
                if response.status < 300:
                    return answer
                if response.status < 500 and response.status not in (409, 429):
                    raise RuntimeError(f"POST {path}: {response.status} {answer}")
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(min(BACKOFF_FIRST_S * 2**attempt, BACKOFF_MAX_S))
    raise RuntimeError(f"POST {path}: no answer after {STEP_ATTEMPTS_MAX} attempts")


async def billing_setup(
    session: aiohttp.ClientSession, url: str, secret: str, count: int, seed: int
) -> tuple[dict, list[tuple[str, bool]]]:
    """A test clock and ``count`` monthly subscriptions on it, each its own customer and
    card; (the clock, [(subscription id, declining)])."""
    rng = random.Random(seed)
    clock = await billing_call(
        session, url, secret, "/v1/test_clocks", {"frozen_time": BILLING_CLOCK_START}, "clock"
    )
    price = await billing_call(
        session,
        url,
        secret,
        "/v1/prices",
        {"amount": BILLING_AMOUNT, "currency": CURRENCY, "recurring": {"interval": "month"}},
        "price",
    )
    declining = [rng.random() < BILLING_DECLINE_SHARE for _ in range(count)]
    gate = asyncio.Semaphore(BILLING_SETUP_CONCURRENCY)

    async def one(n: int) -> tuple[str, bool]:
        async with gate:
            customer = await billing_call(
                session,
                url,
                secret,
                "/v1/customers",
                {"email": f"sub{n}@example.com", "test_clock": clock["id"]},
                f"customer-{n}",
            )
            number = DECLINE_CARD if declining[n] else APPROVE_CARD
            expiry_year = datetime.now(UTC).year + 4  # valid whenever the run is
            card = {"number": number, "exp_month": 12, "exp_year": expiry_year, "cvc": "123"}
            token = await billing_call(
                session, url, secret, "/v1/tokens", {"card": card}, f"token-{n}"
            )
            await billing_call(
                session,
                url,
                secret,
                f"/v1/customers/{customer['id']}/payment_methods",
                {"token": token["id"]},
                f"card-{n}",
            )
            subscription = await billing_call(
                session,
                url,
                secret,
                "/v1/subscriptions",
                {"customer": customer["id"], "price": price["id"]},
                f"subscription-{n}",
            )
            return subscription["id"], declining[n]

    return clock, list(await asyncio.gather(*(one(n) for n in range(count))))


async def billing_phase(
    session: aiohttp.ClientSession,
    gateway: KassaServer,
    secret: str,
    args: argparse.Namespace,
    rng: random.Random,
) -> tuple[BillingFindings, list[tuple[str, bool]]]:
    """Subscriptions on one clock, advanced a year while workers are SIGKILLed."""
    found = BillingFindings()
    clock, subscriptions = await billing_setup(
        session, gateway.url, secret, args.subscriptions, args.seed
    )
    found.subscriptions = len(subscriptions)
    found.declining = sum(1 for _, declining in subscriptions if declining)
    print(
        f"phase 3: {found.subscriptions} subscriptions ({found.declining} declining) on "
        f"{clock['id']}, advanced {BILLING_CLOCK_START} -> {BILLING_CLOCK_END} under "
        f"{args.billing_kills} worker kills",
        flush=True,
    )
    started = time.monotonic()
    await billing_call(
        session,
        gateway.url,
        secret,
        f"/v1/test_clocks/{clock['id']}/advance",
        {"frozen_time": BILLING_CLOCK_END},
        "advance",
    )
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = time.monotonic() + BILLING_READY_TIMEOUT_S
    next_kill = time.monotonic() + rng.uniform(*BILLING_KILL_INTERVAL_S)
    while time.monotonic() < deadline:
        if found.kills < args.billing_kills and time.monotonic() >= next_kill:
            victim = rng.choice(await gateway.wait_workers(1))
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                found.kills += 1
            print(f"  billing kill {found.kills}: worker pid {victim}", flush=True)
            next_kill = time.monotonic() + rng.uniform(*BILLING_KILL_INTERVAL_S)
        try:
            async with session.get(
                f"{gateway.url}/v1/test_clocks/{clock['id']}", headers=headers
            ) as response:
                status = (await response.json(content_type=None)).get("status")
        except (TimeoutError, aiohttp.ClientError):
            status = None
        if status == "ready" and found.kills >= args.billing_kills:
            found.ready = True
            break
        await asyncio.sleep(0.1)
    found.advance_s = round(time.monotonic() - started, 1)
    return found, subscriptions


@dataclass
class BillingBooks:
    """What the billing checks read, in one snapshot."""

    invoices: list[dict]  # subscription_id, period_index, status, payment_id; in order
    statuses: dict[str, str]  # subscription id -> status
    captures: dict[str, int]  # invoice id (the payments' metadata) -> captured payments
    pending: list[tuple[str, int]]  # (invoice id, attempt) still pending
    unanswered: int = 0  # attempts whose payment failed with no issuer's answer


async def read_billing_books(dsn: str, merchant_id: str) -> BillingBooks:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            invoices = await conn.fetch(
                "SELECT subscription_id, period_index, status, payment_id FROM invoices"
                " WHERE merchant_id = $1 ORDER BY subscription_id, period_index",
                merchant_id,
            )
            statuses = await conn.fetch(
                "SELECT id, status FROM subscriptions WHERE merchant_id = $1", merchant_id
            )
            # Counted from the payments' own metadata, so even a charge no invoice records
            # (a second one for an invoice, say) is seen.
            captures = await conn.fetch(
                "SELECT metadata->>'invoice' AS invoice, count(*) AS n FROM payments"
                " WHERE merchant_id = $1 AND status = 'captured' AND metadata ? 'invoice'"
                " GROUP BY 1",
                merchant_id,
            )
            pending = await conn.fetch(
                "SELECT a.invoice_id, a.attempt FROM invoice_attempts a"
                " JOIN invoices i ON i.id = a.invoice_id"
                " WHERE i.merchant_id = $1 AND a.outcome = 'pending'",
                merchant_id,
            )
            unanswered = await conn.fetchval(
                "SELECT count(*) FROM invoice_attempts a JOIN invoices i ON i.id = a.invoice_id"
                " JOIN payments p ON p.id = a.payment_id"
                " WHERE i.merchant_id = $1 AND a.outcome = 'failed' AND p.decline_code IS NULL",
                merchant_id,
            )
    finally:
        await conn.close()
    return BillingBooks(
        [dict(row) for row in invoices],
        {row["id"]: row["status"] for row in statuses},
        {row["invoice"]: row["n"] for row in captures},
        [(row["invoice_id"], row["attempt"]) for row in pending],
        unanswered,
    )


def check_billing(
    books: BillingBooks, subscriptions: list[tuple[str, bool]], found: BillingFindings
) -> None:
    """Exactly one invoice per period (BILLING_PERIODS paid for a good card; one
    uncollectible and a canceled subscription for a declining one), at most one captured
    payment per invoice, no invoice or attempt left unresolved."""
    by_subscription: dict[str, list[dict]] = {}
    for row in books.invoices:
        by_subscription.setdefault(row["subscription_id"], []).append(row)
    found.invoices = len(books.invoices)
    found.paid = sum(1 for row in books.invoices if row["status"] == "paid")
    found.uncollectible = sum(1 for row in books.invoices if row["status"] == "uncollectible")
    found.captured = sum(books.captures.values())
    found.unanswered = books.unanswered
    for subscription_id, declining in subscriptions:
        rows = by_subscription.get(subscription_id, [])
        periods = [row["period_index"] for row in rows]
        want = [0] if declining else list(range(BILLING_PERIODS))
        if periods != want:
            found.wrong_periods.append(f"{subscription_id}: periods {periods}, want {want}")
        want_status = "uncollectible" if declining else "paid"
        unsettled = [row["period_index"] for row in rows if row["status"] != want_status]
        if unsettled:
            found.unresolved.append(f"{subscription_id}: periods {unsettled} not {want_status}")
        if declining and books.statuses.get(subscription_id) != "canceled":
            found.unresolved.append(f"{subscription_id}: {books.statuses.get(subscription_id)}")
    found.double_charged = [
        f"{invoice}: {n} captures" for invoice, n in sorted(books.captures.items()) if n > 1
    ]
    paid_by = [row["payment_id"] for row in books.invoices if row["status"] == "paid"]
    if len(set(paid_by)) != len(paid_by):
        found.double_charged.append(f"{len(paid_by)} paid invoices, {len(set(paid_by))} payments")
    found.unresolved += [
        f"{invoice} attempt {attempt} pending" for invoice, attempt in books.pending
    ]
    if not found.ready:
        found.unresolved.append("the test clock was not ready in time")


def quiet_clients(clients: int) -> int:
    """How many of the concurrent clients pay for the merchant without endpoints."""
    return max(1, round(clients * QUIET_CLIENTS_SHARE)) if clients > 1 else 0


SHORT = {
    "kills": 20,
    "restarts": 3,
    "clients": 8,
    "deadline": 150.0,
    "subscriptions": 100,
    "billing_kills": 4,
}
FULL = {
    "kills": 30,
    "restarts": 5,
    "clients": 16,
    "deadline": 300.0,
    "subscriptions": 400,
    "billing_kills": 8,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="fixes every random choice (default: a new one, printed)",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="the CI form: " + ", ".join(f"{k} {v}" for k, v in SHORT.items()),
    )
    parser.add_argument("--kills", type=int, help=f"worker SIGKILLs (full: {FULL['kills']})")
    parser.add_argument(
        "--restarts", type=int, help=f"database restarts (full: {FULL['restarts']})"
    )
    parser.add_argument(
        "--clients", type=int, help=f"concurrent checkouts (full: {FULL['clients']})"
    )
    parser.add_argument(
        "--subscriptions",
        type=int,
        help=f"subscriptions advanced a year in phase 3 (full: {FULL['subscriptions']})",
    )
    parser.add_argument(
        "--billing-kills",
        type=int,
        help=f"worker SIGKILLs during the clock advance (full: {FULL['billing_kills']})",
    )
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument(
        "--deadline",
        type=float,
        help=f"seconds after which clients stop retrying (full: {FULL['deadline']:.0f})",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="run PostgreSQL with fsync on (slower; we never crash the OS)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (logs, database) even on success",
    )
    parser.add_argument("--json", type=Path, help="also write the summary here as JSON")
    args = parser.parse_args(argv)
    for name, value in (SHORT if args.short else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    return args


def _terminate_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the cluster and the gateway are always stopped."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _terminate_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="kassa-chaos-"))
    cluster = PostgresCluster(workdir, testing.free_port(), args.fsync)
    gateway = make_gateway(workdir, cluster.dsn, args.workers)
    summary = None
    try:
        summary = asyncio.run(run_chaos(args, workdir, cluster, gateway))
    finally:
        gateway.stop(GATEWAY_STOP_GRACE_S)
        cluster.ensure_stopped()
        if summary is not None and summary.ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"chaos: work directory kept: {workdir}", file=sys.stderr, flush=True)
    print_summary(summary, args.short)
    if args.json:
        args.json.write_bytes(orjson.dumps(asdict(summary), option=orjson.OPT_INDENT_2))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
