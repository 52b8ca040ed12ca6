"""All SQL of ``events``, ``webhook_endpoints``, ``webhook_deliveries`` and
``webhook_attempts``: the outbox written with every change, the endpoints, the deliverers'
claims and records, and the pruning.

The outbox never commits on its own: ``outbox_ctes`` joins the authorization path's
settlement statement (gateway/store/authorizations.py), and ``write`` runs inside the
transaction of a capture, void, refund or expiry. A new delivery is written leased to
the process that wrote it (``next_attempt_at`` doubles as the lease), which is handed it
after the commit (``Handoff``) and sends it without a claim; the others are claimed by
state and time, never by an id cursor: ids commit out of order. A delivered row is
deleted as its attempt is logged (migration 0009 says why).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from gateway.http.render import event_payload
from gateway.ids import new_id

# A connection of the caller's, pooled or not.
Conn = asyncpg.Connection | PoolConnectionProxy

# The deliveries of new events: one per enabled endpoint of the event's merchant subscribed
# to its type or to everything. A merchant without endpoints joins nothing.
# Each is leased (for ``lease``, an SQL parameter) to the process that writes it.
_DELIVERIES_OF = """
INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)
SELECT e.id, w.id, now() + make_interval(secs => {lease}) FROM {events} e
  JOIN webhook_endpoints w
    ON w.merchant_id = e.merchant_id AND w.status = 'enabled'
   AND (e.type = ANY (w.enabled_events) OR '*' = ANY (w.enabled_events))
RETURNING event_id, endpoint_id"""


def outbox_ctes(first_parameter: int, created_at: str, only_objects_in: str) -> str:
    """CTEs writing events from five arrays at ``$first_parameter``... (id, merchant,
    type, object id, payload), only those whose object id is in the CTE
    ``only_objects_in`` (what the statement changed), with ``created_at`` (an SQL
    expression), and their deliveries, leased for the seconds at the sixth parameter
    (``outbox_parameters`` gives all six). The CTE ``outbox_deliveries`` has a row per
    delivery (``event_id``, ``endpoint_id``). The names are ours, never input."""
    p = [f"${first_parameter + i}" for i in range(6)]
    return f"""outbox_events AS (
    INSERT INTO events (id, merchant_id, type, object_id, payload, created_at)
    SELECT e.id, e.merchant_id, e.type, e.object_id, e.payload, {created_at}
      FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[],
                  {p[4]}::text[]) AS e (id, merchant_id, type, object_id, payload)
     WHERE e.object_id IN (SELECT id FROM {only_objects_in})
    RETURNING id, merchant_id, type
), outbox_deliveries AS ({_DELIVERIES_OF.format(events="outbox_events", lease=p[5] + "::float8")}
)"""


WRITE_SQL = f"""
WITH outbox_objects AS (SELECT unnest($4::text[]) AS id), {outbox_ctes(1, "$7", "outbox_objects")}
SELECT event_id, endpoint_id FROM outbox_deliveries
"""


@dataclass(frozen=True)
class NewEvent:
    id: str
    merchant_id: str
    type: str
    object_id: str
    payload: str  # the event's JSON, as delivered

    @classmethod
    def of(
        cls, merchant_id: str, event_type: str, object_id: str, created: datetime, rendered: bytes
    ) -> NewEvent:
        """A new event (a fresh ``evt_`` id) around its object's rendered JSON."""
        event_id = new_id("evt")
        return cls(
            event_id,
            merchant_id,
            event_type,
            object_id,
            event_payload(event_id, event_type, created, rendered),
        )


class Handoff(NamedTuple):  # a tuple: one is made per delivery, on the hot path
    """A delivery just committed, for the deliverer of the process that wrote it: the row
    was written leased to that process, which sends it with no claim of its own."""

    event_id: str
    endpoint_id: str
    payload: str  # the event's JSON, as delivered
    created_at: datetime  # the event's (the delivery latency's start)


class Outbox:
    """Where a process's committed deliveries go. Until a deliverer connects, new
    deliveries are due at once (lease 0) for whichever deliverer claims them; once one
    does, they are leased to it for ``lease_s`` and handed to it after each commit."""

    def __init__(self) -> None:
        self.lease_s = 0.0
        self._hand: Callable[[Sequence[Handoff]], None] | None = None

    def connect(self, lease_s: float, hand: Callable[[Sequence[Handoff]], None]) -> None:
        self.lease_s, self._hand = lease_s, hand

    def written(self, deliveries: Sequence[Handoff]) -> None:
        """Call after the commit that wrote ``deliveries``."""
        if deliveries and self._hand is not None:
            self._hand(deliveries)


def outbox_parameters(new_events: Sequence[NewEvent], lease_s: float) -> list[object]:
    """The six parameters ``outbox_ctes`` reads: five arrays, then the deliveries' lease."""
    return [
        [e.id for e in new_events],
        [e.merchant_id for e in new_events],
        [e.type for e in new_events],
        [e.object_id for e in new_events],
        [e.payload for e in new_events],
        float(lease_s),
    ]


def handoffs(
    new_events: Sequence[NewEvent], created_at: datetime, deliveries: Sequence[tuple[str, str]]
) -> list[Handoff]:
    """The (event id, endpoint id) pairs ``outbox_deliveries`` wrote, with their events'
    payloads."""
    if not deliveries:
        return []
    payloads = {e.id: e.payload for e in new_events}
    return [
        Handoff(event_id, endpoint_id, payloads[event_id], created_at)
        for event_id, endpoint_id in deliveries
    ]


async def write(
    conn: Conn, new_events: Sequence[NewEvent], created_at: datetime, lease_s: float
) -> list[Handoff]:
    """Write events and their deliveries (leased for ``lease_s``) in the caller's
    transaction; the deliveries written, to hand to this process's deliverer once the
    transaction committed."""
    if not new_events:
        return []
    rows = await conn.fetch(WRITE_SQL, *outbox_parameters(new_events, lease_s), created_at)
    return handoffs(new_events, created_at, [(r["event_id"], r["endpoint_id"]) for r in rows])


# --- events -------------------------------------------------------------------------------

EVENTS_PAGE_SQL = """
SELECT id, payload, created_at FROM events
 WHERE merchant_id = $1
   AND ($2::text IS NULL OR type = $2)
   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
 ORDER BY created_at DESC, id DESC
 LIMIT $5
"""


# The same page, of any of several types (a Stripe event type stands for several of ours).
EVENTS_OF_TYPES_PAGE_SQL = """
SELECT id, payload, created_at FROM events
 WHERE merchant_id = $1
   AND ($2::text[] IS NULL OR type = any($2::text[]))
   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
 ORDER BY created_at DESC, id DESC
 LIMIT $5
"""


async def event(conn: Conn, event_id: str, merchant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM events WHERE id = $1 AND merchant_id = $2", event_id, merchant_id
    )


async def events_page(
    conn: Conn,
    merchant_id: str,
    event_type: str | None,
    cursor: asyncpg.Record | None,
    rows_max: int,
) -> list[asyncpg.Record]:
    """Newest first, after ``cursor`` (an event row) if given."""
    return await conn.fetch(
        EVENTS_PAGE_SQL,
        merchant_id,
        event_type,
        cursor["created_at"] if cursor else None,
        cursor["id"] if cursor else None,
        rows_max,
    )


async def events_of_types_page(
    conn: Conn,
    merchant_id: str,
    event_types: Sequence[str] | None,
    cursor: asyncpg.Record | None,
    rows_max: int,
) -> list[asyncpg.Record]:
    """As ``events_page``, of any of ``event_types`` (None: every type)."""
    return await conn.fetch(
        EVENTS_OF_TYPES_PAGE_SQL,
        merchant_id,
        None if event_types is None else list(event_types),
        cursor["created_at"] if cursor else None,
        cursor["id"] if cursor else None,
        rows_max,
    )


ATTEMPTS_SQL = """
SELECT * FROM webhook_attempts WHERE event_id = $1
 ORDER BY created_at DESC, attempt DESC, endpoint_id LIMIT $2
"""


async def attempts(conn: Conn, event_id: str, rows_max: int) -> list[asyncpg.Record]:
    """The event's delivery attempts, newest first."""
    return await conn.fetch(ATTEMPTS_SQL, event_id, rows_max)


# Sends the event again now to every enabled subscribed endpoint: a fresh delivery (its
# attempts counted from zero), whatever state an earlier one is in.
RETRY_SQL = """
INSERT INTO webhook_deliveries AS d (event_id, endpoint_id)
SELECT e.id, w.id FROM events e
  JOIN webhook_endpoints w
    ON w.merchant_id = e.merchant_id AND w.status = 'enabled'
   AND (e.type = ANY (w.enabled_events) OR '*' = ANY (w.enabled_events))
 WHERE e.id = $1
ON CONFLICT (event_id, endpoint_id) DO UPDATE
   SET state = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
RETURNING endpoint_id
"""


async def retry(conn: Conn, event_id: str) -> list[str]:
    """Queue the event for every enabled subscribed endpoint now; their ids."""
    return sorted(row["endpoint_id"] for row in await conn.fetch(RETRY_SQL, event_id))


# --- endpoints ----------------------------------------------------------------------------

INSERT_ENDPOINT_SQL = """
INSERT INTO webhook_endpoints (id, merchant_id, url, enabled_events, description, status,
                               secret_ciphertext, event_format)
VALUES ($1, $2, $3, $4, $5, 'enabled', $6, $7)
RETURNING *
"""

ENDPOINT_SQL = """
SELECT * FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2 AND status <> 'deleted'
"""

ENDPOINTS_PAGE_SQL = """
SELECT * FROM webhook_endpoints
 WHERE merchant_id = $1 AND status <> 'deleted'
   AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
 ORDER BY created_at DESC, id DESC
 LIMIT $4
"""

UPDATE_ENDPOINT_SQL = """
UPDATE webhook_endpoints
   SET url = coalesce($3, url), enabled_events = coalesce($4, enabled_events),
       description = CASE WHEN $5 THEN $6 ELSE description END,
       status = coalesce($7, status),
       failing_since = CASE WHEN $7 = 'enabled' AND status <> 'enabled' THEN NULL
                            ELSE failing_since END,
       updated_at = now()
 WHERE id = $1 AND merchant_id = $2 AND status <> 'deleted'
RETURNING *
"""

DELETE_ENDPOINT_SQL = """
UPDATE webhook_endpoints SET status = 'deleted', secret_ciphertext = NULL, updated_at = now()
 WHERE id = $1 AND merchant_id = $2 AND status <> 'deleted'
RETURNING id
"""

CANCEL_PENDING_SQL = """
UPDATE webhook_deliveries SET state = 'canceled', updated_at = now()
 WHERE endpoint_id = any($1::text[]) AND state = 'pending'
"""


async def insert_endpoint(
    conn: Conn,
    endpoint_id: str,
    merchant_id: str,
    url: str,
    enabled_events: Sequence[str],
    description: str | None,
    secret_ciphertext: bytes,
    event_format: str = "kassa",
) -> asyncpg.Record:
    """A new endpoint; ``event_format`` is ``stripe`` for one sent Stripe Events."""
    row: asyncpg.Record | None = await conn.fetchrow(
        INSERT_ENDPOINT_SQL,
        endpoint_id,
        merchant_id,
        url,
        list(enabled_events),
        description,
        secret_ciphertext,
        event_format,
    )
    if row is None:  # INSERT ... RETURNING always answers one row
        raise RuntimeError(f"no endpoint written for {endpoint_id}")
    return row


async def endpoint(conn: Conn, endpoint_id: str, merchant_id: str) -> asyncpg.Record | None:
    """The merchant's endpoint (not deleted), or None."""
    return await conn.fetchrow(ENDPOINT_SQL, endpoint_id, merchant_id)


async def endpoints_page(
    conn: Conn, merchant_id: str, cursor: asyncpg.Record | None, rows_max: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        ENDPOINTS_PAGE_SQL,
        merchant_id,
        cursor["created_at"] if cursor else None,
        cursor["id"] if cursor else None,
        rows_max,
    )


async def update_endpoint(
    conn: Conn, endpoint_id: str, merchant_id: str, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Apply the given fields (url, enabled_events, description, status); a disabled
    endpoint's pending deliveries are canceled in the same transaction."""
    row = await conn.fetchrow(
        UPDATE_ENDPOINT_SQL,
        endpoint_id,
        merchant_id,
        changes.get("url"),
        changes.get("enabled_events"),
        "description" in changes,
        changes.get("description"),
        changes.get("status"),
    )
    if row is not None and row["status"] == "disabled":
        await cancel_pending(conn, [endpoint_id])
    return row


async def delete_endpoint(conn: Conn, endpoint_id: str, merchant_id: str) -> bool:
    """Delete the endpoint (its secret is erased) and cancel its pending deliveries."""
    if await conn.fetchval(DELETE_ENDPOINT_SQL, endpoint_id, merchant_id) is None:
        return False
    await cancel_pending(conn, [endpoint_id])
    return True


async def cancel_pending(conn: Conn, endpoint_ids: Sequence[str]) -> int:
    result = await conn.execute(CANCEL_PENDING_SQL, list(endpoint_ids))
    return int(result.split()[-1])


# --- the deliverers -----------------------------------------------------------------------

# The queue's statistics are never to be trusted: a delivered row is deleted as soon as its
# attempt is logged, so autovacuum analyzes a nearly empty table, and a plan cached then
# (asyncpg prepares every statement) outlives the backlog an outage builds. The statements
# below reach every row by key, and run where the planner may not choose a sequential scan
# instead: on a table it believes tiny it would, once per row of the batch, and a cached
# plan would keep doing so as the backlog grows (a throwaway harness, retries recorded in
# batches of 32 into a queue growing from 400 to 10,000 rows: 219 us of the backend's CPU
# a delivery, 39 us so). The transaction is the setting's scope (SET LOCAL): the pooled
# session is left as it was. Two round trips more, per batch of attempts or per claim.
QUEUE_BY_KEY_SQL = "SET LOCAL enable_seqscan = off"
# The record also plans for its parameters' values every time (what PostgreSQL chose for
# it by itself when measured: planning on every call in pg_stat_statements), so that its
# list of delivered keys is a constant, which PostgreSQL hashes (RECORD_SQL). Both
# settings in one round trip (asyncpg sends an execute without arguments as one simple
# query).
RECORD_SETTINGS_SQL = QUEUE_BY_KEY_SQL + "; SET LOCAL plan_cache_mode = force_custom_plan"


@contextlib.asynccontextmanager
async def _queue_by_key(conn: Conn, settings: str = QUEUE_BY_KEY_SQL) -> AsyncIterator[None]:
    async with conn.transaction():
        await conn.execute(settings)
        yield


# Claims due deliveries, at most $1 in all and, per endpoint, only as many as that
# endpoint has free slots in the claiming process ($5 for an endpoint not in $3/$4, the
# endpoints with sends in flight there and their free slots). The per-endpoint cap is in the
# claim, not after it: one endpoint's backlog must not be claimed and handed back over and
# over (a churn of row updates per delivery). The window runs over a bounded scan of the
# due index ($6 rows; candidates another process holds are skipped), then the candidates
# are locked with SKIP LOCKED, leased for $2 seconds (next_attempt_at pushed forward, so no
# other deliverer takes them until it lapses) and committed. The limit of the scan: while
# more than $6 due rows belong to endpoints already at their limit here, this process
# claims nothing newer; other processes, and the next slot freed, carry on. The event's
# payload comes with each; the endpoint, from the deliverer's cache (``endpoints``).
CLAIM_SQL = """
WITH scan AS (
    SELECT event_id, endpoint_id, next_attempt_at FROM webhook_deliveries
     WHERE state = 'pending' AND next_attempt_at <= now()
     ORDER BY next_attempt_at
     LIMIT $6
), ranked AS (
    SELECT s.event_id, s.endpoint_id, s.next_attempt_at,
           row_number() OVER (PARTITION BY s.endpoint_id ORDER BY s.next_attempt_at) AS n,
           coalesce(f.free, $5) AS free
      FROM scan s
      LEFT JOIN unnest($3::text[], $4::integer[]) AS f (endpoint_id, free)
             ON f.endpoint_id = s.endpoint_id
), candidates AS (
    SELECT event_id, endpoint_id FROM ranked WHERE n <= free ORDER BY next_attempt_at LIMIT $1
), due AS (
    -- Locked by key (RECORD_SQL says why never by a join with the queue), and due still
    -- in their newest version (another process may have claimed one since the scan): the
    -- state is tested after the lock, where it cannot make the partial index a path.
    SELECT d.event_id, d.endpoint_id, d.state, d.next_attempt_at FROM webhook_deliveries d
     WHERE d.event_id = ANY (ARRAY(SELECT event_id FROM candidates))
       AND (d.event_id, d.endpoint_id)
           = ANY (ARRAY(SELECT (event_id, endpoint_id) FROM candidates))
       FOR UPDATE SKIP LOCKED
), still_due AS (
    SELECT event_id, endpoint_id FROM due WHERE state = 'pending' AND next_attempt_at <= now()
), claimed AS (
    UPDATE webhook_deliveries d
       SET next_attempt_at = now() + make_interval(secs => $2)
     WHERE d.event_id = ANY (ARRAY(SELECT event_id FROM still_due))
       AND (d.event_id, d.endpoint_id)
           = ANY (ARRAY(SELECT (event_id, endpoint_id) FROM still_due))
    RETURNING d.event_id, d.endpoint_id, d.attempts
)
SELECT c.event_id, c.endpoint_id, c.attempts, e.payload, e.created_at
  FROM claimed c JOIN events e ON e.id = c.event_id
"""

# A batch of finished attempts, in one statement: a delivered row is deleted, the others
# take their new state (retrying, failed; canceled when the endpoint was no longer enabled:
# not sent, nothing logged); each sent attempt is logged. A delivery canceled meanwhile
# (its endpoint disabled or deleted) stays canceled, unless this attempt delivered it.
# Every row is found by its key, never by a join of the batch with the queue: the planner
# would plan that join from the queue's row estimate, and a queue is analyzed while nearly
# empty, so under a backlog it walked every pending row once per attempt (auto_explain
# under `benchmarks.run --closed-loop-targets kassa-webhooks`: up to 13,114 rows removed
# by the join filter for one batch). Per endpoint of the batch ($2..$4): a
# success clears failing_since, a failure starts it, and a 410 or failing for longer than
# $5 seconds disables it; an endpoint row is written only when one of these changes it
# (the batches of a healthy endpoint leave it alone). Returns the endpoints disabled now.
RECORD_SQL = """
WITH r AS (
    -- The attempts come as one JSON array of AttemptRecord arrays ($1): asyncpg encodes
    -- one text where eight arrays cost it about 1 us an element (6 us a delivery).
    SELECT a->>0 AS event_id, a->>1 AS endpoint_id, (a->>2)::integer AS attempt,
           (a->>3)::integer AS status_code, a->>4 AS error, (a->>5)::integer AS duration_ms,
           a->>6 AS state, (a->>7)::float8 AS delay_s
      FROM jsonb_array_elements($1::jsonb) AS a
), delivered AS (
    -- Sent and answered 2xx: the attempt log keeps it, whatever became of the row since
    -- (canceled, or claimed again once its lease lapsed, it was delivered all the same).
    -- The delivered attempts' event ids ($6) are the primary key's index condition, and
    -- their "event_id endpoint_id" keys ($7) a filter on it: given as parameters, which a
    -- custom plan makes constants, so PostgreSQL hashes the list and the filter costs
    -- each row one lookup. Built in the statement from r (ARRAY(SELECT ...)), the list
    -- was searched from end to end for every row: quadratic in the batch (batches of 300
    -- took the backend 42-63 us an attempt against 31-35 for 62). Ids hold no space.
    DELETE FROM webhook_deliveries d
     WHERE d.event_id = ANY ($6::text[])
       AND d.event_id || ' ' || d.endpoint_id = ANY ($7::text[])
       AND cardinality($6::text[]) > 0  -- else no scan at all
), found AS (
    -- Any other outcome's delivery, by one probe of the primary key per attempt: the
    -- LIMIT keeps it a probe, which the planner cannot turn into a join. The state is
    -- tested out here: inside, it would let the partial index of pending rows serve.
    SELECT r.*, d.row_ctid, d.row_state
      FROM (SELECT * FROM r WHERE r.state <> 'delivered') r
     CROSS JOIN LATERAL (
          SELECT d.ctid AS row_ctid, d.state AS row_state FROM webhook_deliveries d
           WHERE d.event_id = r.event_id AND d.endpoint_id = r.endpoint_id
           LIMIT 1) d
     WHERE d.row_state = 'pending'
), changed AS (
    -- A retry scheduled, or failed, or canceled: the row version probed, and not if it
    -- changed since (its new version has another ctid): whoever changed it decides.
    UPDATE webhook_deliveries d
       SET state = f.state, attempts = f.attempt, updated_at = now(),
           next_attempt_at = CASE WHEN f.state = 'pending'
                                  THEN now() + make_interval(secs => f.delay_s)
                                  ELSE d.next_attempt_at END
      FROM found f
     WHERE d.ctid = ANY (ARRAY(SELECT row_ctid FROM found))
       AND d.event_id = ANY (ARRAY(SELECT event_id FROM found))
       AND d.ctid = f.row_ctid AND d.state = f.row_state
       AND EXISTS (SELECT 1 FROM found)  -- else no scan at all
), logged AS (
    INSERT INTO webhook_attempts (event_id, endpoint_id, attempt, status_code, error,
                                  duration_ms, next_attempt_at)
    SELECT event_id, endpoint_id, attempt, status_code, error, duration_ms,
           CASE WHEN state = 'pending' THEN now() + make_interval(secs => delay_s) END
      FROM r
     WHERE state <> 'canceled'
       -- An event pruned while its attempt was in flight: nothing left to log it against,
       -- and one such attempt must not fail the batch it shares.
       AND EXISTS (SELECT 1 FROM events e WHERE e.id = r.event_id)
), h AS (
    SELECT * FROM unnest($2::text[], $3::boolean[], $4::boolean[]) AS h (id, ok, gone)
)
UPDATE webhook_endpoints w
   SET failing_since = CASE WHEN h.ok THEN NULL ELSE coalesce(w.failing_since, now()) END,
       status = CASE
           WHEN h.gone THEN 'disabled'
           WHEN NOT h.ok AND w.failing_since < now() - make_interval(secs => $5)
               THEN 'disabled'
           ELSE w.status END,
       updated_at = now()
  FROM h
 WHERE w.id = h.id AND w.status = 'enabled'
   AND (h.gone
        OR (h.ok AND w.failing_since IS NOT NULL)
        OR (NOT h.ok AND (w.failing_since IS NULL
                          OR w.failing_since < now() - make_interval(secs => $5))))
RETURNING w.id, w.status, h.gone
"""

# Deliveries handed to a deliverer that stops before sending them: due now, for any other.
# By key, as RECORD_SQL, and whatever their state: a row no longer pending is not claimed
# however due it is, and testing the state here would let the partial index serve.
RELEASE_SQL = """
UPDATE webhook_deliveries d SET next_attempt_at = now()
 WHERE d.event_id = ANY ($1::text[])
   AND (d.event_id, d.endpoint_id)
       = ANY (ARRAY(SELECT (e, n) FROM unnest($1::text[], $2::text[]) AS r (e, n)))
"""

ENDPOINTS_SQL = """
SELECT id, url, status, secret_ciphertext, event_format FROM webhook_endpoints
 WHERE id = any($1::text[])
"""


CLAIM_SCAN_ROWS = 1000  # due rows a claim looks at: the oldest first


async def claim(
    conn: Conn,
    rows_max: int,
    lease_s: float,
    free_by_endpoint: dict[str, int],
    per_endpoint: int,
) -> list[asyncpg.Record]:
    """Claim up to ``rows_max`` due deliveries for ``lease_s`` (one statement, committed),
    at most ``free_by_endpoint[e]`` of endpoint ``e`` (``per_endpoint`` for the others)."""
    async with _queue_by_key(conn):
        return await conn.fetch(
            CLAIM_SQL,
            rows_max,
            float(lease_s),
            list(free_by_endpoint),
            list(free_by_endpoint.values()),
            per_endpoint,
            CLAIM_SCAN_ROWS,
        )


async def endpoints(conn: Conn, endpoint_ids: Sequence[str]) -> list[asyncpg.Record]:
    """The endpoints a deliverer sends to (any status; a deleted one has no secret)."""
    return await conn.fetch(ENDPOINTS_SQL, list(endpoint_ids))


async def release(conn: Conn, deliveries: Sequence[tuple[str, str]]) -> None:
    """Make (event, endpoint) deliveries due now: their lease holder will not send them."""
    async with _queue_by_key(conn):
        await conn.execute(
            RELEASE_SQL,
            [event for event, _ in deliveries],
            [endpoint for _, endpoint in deliveries],
        )


class AttemptRecord(NamedTuple):  # a tuple: one is made per attempt
    # In RECORD_SQL's order: its parameter $1 is a JSON array of these, fields by position.
    event_id: str
    endpoint_id: str
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    # The delivery's state after it: pending (retrying), delivered, failed; canceled when
    # it was not sent (its endpoint no longer enabled): no attempt is logged.
    state: str
    delay_s: float  # when pending: until the next attempt


# Attempts per RECORD_SQL statement. A deliverer records what finished in 0.1 s (about
# 60 attempts a worker under the benchmark's load); one catching up on a backlog may
# finish many more, which go in statements of this many, in the same transaction. The
# delivered rows' filter is a hashed lookup, but the retries' (the event ids tested on
# the rows found by ctid) still searches the batch for each row: the bound keeps that
# square small. Before the delivered filter was hashed, batches of 300 cost the backend
# 42-63 us an attempt against 31-35 for 62.
RECORD_ROWS_MAX = 128


async def record(
    conn: Conn,
    records: Sequence[AttemptRecord],
    health: dict[str, tuple[bool, bool]],
    disable_after_s: float,
) -> list[asyncpg.Record]:
    """Record finished attempts and their endpoints' health ({id: (ok, gone)}) in one
    transaction (a statement per RECORD_ROWS_MAX attempts); the endpoints disabled now
    (``id``, ``gone``), whose pending deliveries are then canceled. Should the process
    stop in between, those deliveries are claimed and found not enabled: canceled all the
    same."""
    async with _queue_by_key(conn, RECORD_SETTINGS_SQL):
        # The endpoints' health goes with the first statement, once.
        first = record_arguments(records[:RECORD_ROWS_MAX], health, disable_after_s)
        disabled = await conn.fetch(RECORD_SQL, *first)
        for start in range(RECORD_ROWS_MAX, len(records), RECORD_ROWS_MAX):
            more = records[start : start + RECORD_ROWS_MAX]
            await conn.fetch(RECORD_SQL, *record_arguments(more, {}, disable_after_s))
    disabled = [row for row in disabled if row["status"] == "disabled"]
    if disabled:
        await cancel_pending(conn, [row["id"] for row in disabled])
    return disabled


def record_arguments(
    records: Sequence[AttemptRecord],
    health: dict[str, tuple[bool, bool]],
    disable_after_s: float,
) -> list[object]:
    """RECORD_SQL's parameters: the attempts as JSON, the endpoints' health, then the
    delivered attempts' event ids and their "event_id endpoint_id" keys."""
    ids = sorted(health)
    delivered = [r for r in records if r.state == "delivered"]
    return [
        orjson.dumps(records, default=tuple).decode(),  # a NamedTuple is not JSON by itself
        ids,
        [health[i][0] for i in ids],
        [health[i][1] for i in ids],
        float(disable_after_s),
        [r.event_id for r in delivered],
        [f"{r.event_id} {r.endpoint_id}" for r in delivered],
    ]


GAUGES_SQL = """
SELECT coalesce((SELECT extract(epoch FROM now() - min(next_attempt_at))::float8
                   FROM webhook_deliveries
                  WHERE state = 'pending' AND next_attempt_at <= now()), 0) AS oldest_due_s,
       (SELECT count(*) FROM webhook_endpoints WHERE status = 'enabled') AS enabled,
       (SELECT count(*) FROM webhook_endpoints WHERE status = 'disabled') AS disabled
"""


async def gauges(pool: asyncpg.Pool) -> asyncpg.Record:
    """The age of the oldest due delivery (seconds) and the endpoints by status."""
    row: asyncpg.Record | None = await pool.fetchrow(GAUGES_SQL)
    if row is None:  # a SELECT without FROM always answers one row
        raise RuntimeError("no webhook gauges")
    return row


# --- pruning ------------------------------------------------------------------------------

# Events past retention with their deliveries and attempts, in one statement (the events'
# delete trigger refuses one that leaves either behind). A delivered delivery is already
# gone: deleted as it was logged.
PRUNE_EVENTS_SQL = """
WITH old AS MATERIALIZED (
    SELECT id FROM events WHERE created_at < now() - make_interval(secs => $1)
     ORDER BY created_at LIMIT $2
), attempts_gone AS (
    DELETE FROM webhook_attempts WHERE event_id IN (SELECT id FROM old)
), deliveries_gone AS (
    -- By key (RECORD_SQL says why never by a join with the queue).
    DELETE FROM webhook_deliveries WHERE event_id = ANY (ARRAY(SELECT id FROM old))
)
DELETE FROM events WHERE id IN (SELECT id FROM old)
"""


async def prune_events(pool: asyncpg.Pool, older_than_s: float, rows_max: int) -> int:
    async with pool.acquire() as conn, _queue_by_key(conn):
        result = await conn.execute(PRUNE_EVENTS_SQL, float(older_than_s), rows_max)
    return int(result.split()[-1])
