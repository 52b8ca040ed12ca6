"""Webhook endpoints and events over the API: validation, idempotency, the SSRF check at
create and update, and the reads. All SQL is in gateway/store/events.py.

An endpoint's secret is shown once, in the answer that created it. That answer is stored
for its Idempotency-Key with the secret left out (``"secret": null``) and completed with
the decrypted secret when replayed, so no secret is ever stored in the clear.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import orjson

import core_ext
from gateway.config import Settings
from gateway.http.answers import Answer, invalid_request, resource_missing
from gateway.http.params import check_unknown, page_query, require_id
from gateway.http.render import events_list, render_webhook_attempt, render_webhook_endpoint
from gateway.idempotency import IdempotencyStore
from gateway.ids import new_id
from gateway.store import events
from gateway.webhooks.addresses import check_url
from gateway.webhooks.secrets import SecretBox

validation = core_ext.validation
ENDPOINT_FIELDS = ("url", "enabled_events", "description")
UPDATE_FIELDS = ("url", "enabled_events", "description", "status")
ENDPOINT_STATUSES = ("enabled", "disabled")
DESCRIPTION_CHARS_MAX = 500
EVENT_TYPES_MAX = 50  # enabled_events entries
ATTEMPTS_SHOWN_MAX = 100  # GET /v1/events/{id}/deliveries, newest first
ALL_EVENTS = "*"


class WebhookService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        box: SecretBox,
        idempotency: IdempotencyStore,
        settings: Settings,
        deliveries_due: Callable[[], None] = lambda: None,
        endpoint_changed: Callable[[str], None] = lambda endpoint_id: None,
    ) -> None:
        self._pool = pool
        self._box = box
        self._idempotency = idempotency
        self._acquire_timeout_s = settings.db_acquire_timeout_ms / 1000
        self._allow_private = settings.webhook_allow_private
        # After a commit: deliveries due now (a retry), for this process's deliverer to
        # claim at once; an endpoint changed, for it to read again before its next send.
        self._deliveries_due = deliveries_due
        self._endpoint_changed = endpoint_changed

    def _acquire(self) -> Any:
        return self._pool.acquire(timeout=self._acquire_timeout_s)

    # --- endpoints ------------------------------------------------------------------------

    async def create_endpoint(
        self, merchant_id: str, body: object, key: str | None, event_format: str = "kassa"
    ) -> Answer:
        """A new endpoint, sent Kassa's events or (``event_format="stripe"``, an endpoint
        made through the Stripe-compatible tree) the same events as Stripe Events."""
        fields = _endpoint_fields(body, ENDPOINT_FIELDS, creating=True)
        claim, known = self._idempotency.prepare(
            merchant_id, key, "POST", "/v1/webhook_endpoints", body
        )
        if known:
            return await self._revealed(merchant_id, known)
        await self._check_url(fields["url"])
        endpoint_id, secret = new_id("we"), self._box.new_secret()
        with self._idempotency.guard(claim):
            async with self._acquire() as conn, conn.transaction():
                conflict = await self._idempotency.claim(conn, claim, None)
                if conflict:
                    return await self._revealed(merchant_id, conflict, conn)
                row = await events.insert_endpoint(
                    conn,
                    endpoint_id,
                    merchant_id,
                    fields["url"],
                    fields["enabled_events"],
                    fields.get("description"),
                    self._box.seal(secret, endpoint_id),
                    event_format,
                )
                rendered = render_webhook_endpoint(row, secret="")
                rendered["secret"] = None
                stored = Answer.of_json(201, rendered)
                await self._idempotency.complete(conn, claim, stored)
        self._idempotency.remember(claim, stored)
        rendered["secret"] = secret
        return Answer.of_json(201, rendered)

    async def _revealed(
        self, merchant_id: str, answer: Answer, conn: asyncpg.Connection | None = None
    ) -> Answer:
        """A replayed create answer, its secret put back from the endpoint (erased once the
        endpoint is deleted: then it stays null)."""
        if answer.status != 201:
            return answer
        body = orjson.loads(answer.body)
        if not isinstance(body, dict) or body.get("object") != "webhook_endpoint":
            return answer
        if conn is None:
            async with self._acquire() as own:
                row = await own.fetchrow(
                    "SELECT id, secret_ciphertext FROM webhook_endpoints "
                    "WHERE id = $1 AND merchant_id = $2",
                    body["id"],
                    merchant_id,
                )
        else:
            row = await conn.fetchrow(
                "SELECT id, secret_ciphertext FROM webhook_endpoints "
                "WHERE id = $1 AND merchant_id = $2",
                body["id"],
                merchant_id,
            )
        if row is not None and row["secret_ciphertext"] is not None:
            body["secret"] = self._box.open(bytes(row["secret_ciphertext"]), row["id"])
        return Answer(answer.status, orjson.dumps(body), dict(answer.headers), answer.storable)

    async def _check_url(self, url: str) -> None:
        reason = await check_url(url, self._allow_private)
        if reason is not None:
            raise invalid_request("parameter_invalid", reason, "url")

    async def get_endpoint(self, merchant_id: str, endpoint_id: str) -> dict[str, Any]:
        require_id("webhook_endpoint", endpoint_id, "we_")
        async with self._acquire() as conn:
            row = await events.endpoint(conn, endpoint_id, merchant_id)
        if row is None:
            raise resource_missing("webhook_endpoint", endpoint_id)
        return render_webhook_endpoint(row)

    async def list_endpoints(self, merchant_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        limit, starting_after = page_query(query, (), "we_")
        async with self._acquire() as conn:
            cursor = None
            if starting_after is not None:
                cursor = await events.endpoint(conn, starting_after, merchant_id)
                if cursor is None:
                    raise resource_missing(
                        "webhook_endpoint", starting_after, param="starting_after"
                    )
            rows = await events.endpoints_page(conn, merchant_id, cursor, limit + 1)
        return {
            "object": "list",
            "data": [render_webhook_endpoint(row) for row in rows[:limit]],
            "has_more": len(rows) > limit,
        }

    async def update_endpoint(
        self, merchant_id: str, endpoint_id: str, body: object, key: str | None
    ) -> Answer:
        require_id("webhook_endpoint", endpoint_id, "we_")
        changes = _endpoint_fields(body, UPDATE_FIELDS, creating=False)
        path = f"/v1/webhook_endpoints/{endpoint_id}"
        claim, known = self._idempotency.prepare(merchant_id, key, "POST", path, body)
        if known:
            return known
        if "url" in changes:
            await self._check_url(changes["url"])
        with self._idempotency.guard(claim):
            async with self._acquire() as conn, conn.transaction():
                conflict = await self._idempotency.claim(conn, claim, None)
                if conflict:
                    return conflict
                row = await events.update_endpoint(conn, endpoint_id, merchant_id, changes)
                if row is None:  # raised: the claim rolls back, a 404 is not stored
                    raise resource_missing("webhook_endpoint", endpoint_id)
                answer = Answer.of_json(200, render_webhook_endpoint(row))
                await self._idempotency.complete(conn, claim, answer)
        self._idempotency.remember(claim, answer)
        self._endpoint_changed(endpoint_id)
        return answer

    async def delete_endpoint(self, merchant_id: str, endpoint_id: str) -> dict[str, Any]:
        require_id("webhook_endpoint", endpoint_id, "we_")
        async with self._acquire() as conn, conn.transaction():
            if not await events.delete_endpoint(conn, endpoint_id, merchant_id):
                raise resource_missing("webhook_endpoint", endpoint_id)
        self._endpoint_changed(endpoint_id)
        return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}

    # --- events ---------------------------------------------------------------------------

    async def _event(
        self, conn: asyncpg.Connection, merchant_id: str, event_id: str, param: str = "id"
    ) -> asyncpg.Record:
        row = await events.event(conn, event_id, merchant_id)
        if row is None:
            raise resource_missing("event", event_id, param=param)
        return row

    async def get_event(self, merchant_id: str, event_id: str) -> bytes:
        """The event's JSON, exactly as delivered."""
        require_id("event", event_id, "evt_")
        async with self._acquire() as conn:
            row = await self._event(conn, merchant_id, event_id)
        return str(row["payload"]).encode()

    async def list_events(self, merchant_id: str, query: Mapping[str, str]) -> bytes:
        limit, starting_after = page_query(query, ("type",), "evt_")
        event_type = query.get("type")
        if event_type is not None and event_type not in core_ext.webhooks.EVENT_TYPES:
            raise invalid_request(
                "parameter_invalid",
                "type must be one of " + ", ".join(core_ext.webhooks.EVENT_TYPES),
                "type",
            )
        async with self._acquire() as conn:
            cursor = None
            if starting_after is not None:
                cursor = await self._event(conn, merchant_id, starting_after, "starting_after")
            rows = await events.events_page(conn, merchant_id, event_type, cursor, limit + 1)
        return events_list([row["payload"] for row in rows[:limit]], len(rows) > limit)

    async def list_events_of_types(
        self,
        merchant_id: str,
        event_types: tuple[str, ...] | None,
        limit: int,
        starting_after: str | None,
    ) -> tuple[list[str], bool]:
        """One page of the merchant's events (their stored JSON) of any of ``event_types``
        (None: all), newest first, and whether more follow; ``limit`` already checked."""
        if starting_after is not None:
            require_id("event", starting_after, "evt_")
        async with self._acquire() as conn:
            cursor = None
            if starting_after is not None:
                cursor = await self._event(conn, merchant_id, starting_after, "starting_after")
            rows = await events.events_of_types_page(
                conn, merchant_id, event_types, cursor, limit + 1
            )
        return [str(row["payload"]) for row in rows[:limit]], len(rows) > limit

    async def list_attempts(
        self, merchant_id: str, event_id: str, query: Mapping[str, str]
    ) -> dict[str, Any]:
        require_id("event", event_id, "evt_")
        _no_query(query)
        async with self._acquire() as conn:
            await self._event(conn, merchant_id, event_id)
            rows = await events.attempts(conn, event_id, ATTEMPTS_SHOWN_MAX + 1)
        return {
            "object": "list",
            "data": [render_webhook_attempt(row) for row in rows[:ATTEMPTS_SHOWN_MAX]],
            "has_more": len(rows) > ATTEMPTS_SHOWN_MAX,
        }

    async def retry_event(
        self, merchant_id: str, event_id: str, body: object, key: str | None
    ) -> Answer:
        require_id("event", event_id, "evt_")
        if not isinstance(body, dict):
            raise invalid_request("parameter_invalid", "request body must be a JSON object")
        check_unknown(body, ())
        queued: list[str] = []

        async def work(conn: asyncpg.Connection) -> tuple[Answer, list[events.NewEvent]]:
            await self._event(conn, merchant_id, event_id)
            queued.extend(await events.retry(conn, event_id))
            answer = {"object": "event_retry", "event_id": event_id, "endpoints": queued}
            return Answer.of_json(200, answer), []

        path = f"/v1/events/{event_id}/retry"
        answer = await self._idempotency.post(self._acquire, merchant_id, key, path, body, work)
        if queued:  # sent now, not at the next poll (a replay queued nothing)
            self._deliveries_due()
        return answer


# --- validation ---------------------------------------------------------------------------


def _no_query(query: Mapping[str, str]) -> None:
    check_unknown(query, ())


def _endpoint_fields(body: object, allowed: tuple[str, ...], creating: bool) -> dict[str, Any]:
    """The endpoint fields of a create or update body, checked in API.md's order; an
    update takes only the fields given."""
    if not isinstance(body, dict):
        raise invalid_request("parameter_invalid", "request body must be a JSON object")
    check_unknown(body, allowed)
    fields: dict[str, Any] = {}
    url = body.get("url")
    if url is None:
        if creating:
            raise invalid_request("parameter_missing", "url is required", "url")
    elif not isinstance(url, str) or "\x00" in url:
        raise invalid_request("parameter_invalid", "url must be a string", "url")
    else:
        fields["url"] = url
    enabled = body.get("enabled_events")
    if enabled is None:
        if creating:
            raise invalid_request(
                "parameter_missing", "enabled_events is required", "enabled_events"
            )
    else:
        fields["enabled_events"] = _enabled_events(enabled)
    if "description" in body:
        description = body["description"]
        if description is not None and not (
            isinstance(description, str)
            and len(description) <= DESCRIPTION_CHARS_MAX
            and "\x00" not in description
        ):
            raise invalid_request(
                "parameter_invalid",
                f"description must be a string of at most {DESCRIPTION_CHARS_MAX} characters",
                "description",
            )
        if description is not None and validation.contains_card_number(description):
            raise invalid_request(
                "parameter_invalid",
                "description must not contain a card number",
                "description",
            )
        fields["description"] = description
    if "status" in body:
        status = body["status"]
        if status not in ENDPOINT_STATUSES:
            raise invalid_request(
                "parameter_invalid", "status must be enabled or disabled", "status"
            )
        fields["status"] = status
    return fields


def _enabled_events(value: object) -> list[str]:
    known = core_ext.webhooks.EVENT_TYPES
    message = 'enabled_events must be ["*"] or a non-empty list of event types: ' + ", ".join(known)
    if not isinstance(value, list) or not 1 <= len(value) <= EVENT_TYPES_MAX:
        raise invalid_request("parameter_invalid", message, "enabled_events")
    if value == [ALL_EVENTS]:
        return [ALL_EVENTS]
    chosen: list[str] = []
    for item in value:
        if not isinstance(item, str) or item not in known:
            raise invalid_request("parameter_invalid", message, "enabled_events")
        if item not in chosen:
            chosen.append(item)
    return chosen
