-- The outbox costs a delivery as few writes as it can: an endpoint subscribed to every
-- event must not slow the authorizations that write them (issue 14: within 10 %).
--
-- Measured with `python -m benchmarks.anatomy --webhooks` against the same without an
-- endpoint: each delivery cost PostgreSQL about 160 us, for a row inserted, updated by
-- the claim, updated again by the record (neither update can be HOT: both change indexed
-- columns), an attempt row, about 14 index entries, two foreign-key checks per row (each
-- a query and a FOR KEY SHARE lock, and every delivery of an endpoint locks the same
-- endpoint row), and an update of the endpoint row per recorded batch. Now:
--
-- * A delivery is inserted already leased to the process that wrote it, which sends it
--   straight after its commit (gateway/webhooks/deliverer.py): no claim update. A crash
--   lets the lease lapse and any deliverer claims it as before.
-- * A delivered row is deleted when its attempt is recorded: the attempt log keeps what
--   happened, and the table holds only the backlog (pending, failed and canceled rows,
--   which go with their event after 30 days). No surrogate id: a delivery is its
--   (event, endpoint).
-- * The references are checked once per statement (as 0006 does for the hot tables), and
--   events, whose deliveries and attempts no longer cascade, are deleted only with them.
-- * The attempt log has one index, the one its reads use.

DELETE FROM webhook_deliveries WHERE state = 'delivered';
DROP INDEX webhook_deliveries_delivered;
ALTER TABLE webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_event_id_fkey,
    DROP CONSTRAINT webhook_deliveries_endpoint_id_fkey,
    DROP CONSTRAINT webhook_deliveries_state_check,
    DROP CONSTRAINT webhook_deliveries_event_id_endpoint_id_key,
    DROP CONSTRAINT webhook_deliveries_pkey,
    DROP COLUMN id,
    ADD PRIMARY KEY (event_id, endpoint_id),
    ADD CONSTRAINT webhook_deliveries_state_check
        CHECK (state IN ('pending', 'failed', 'canceled'));
COMMENT ON COLUMN webhook_deliveries.next_attempt_at IS
    'when the next attempt is due; while one is in flight (or a new row waits for the '
    'process that wrote it), when its lease lapses';

ALTER TABLE webhook_attempts
    DROP CONSTRAINT webhook_attempts_event_id_fkey,
    DROP CONSTRAINT webhook_attempts_endpoint_id_fkey,
    DROP CONSTRAINT webhook_attempts_pkey,
    DROP COLUMN id;  -- and with it the old index on (event_id, created_at, id)
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id, created_at DESC, attempt DESC);

-- New deliveries name an existing event and an endpoint of the event's merchant; new
-- attempts name an existing event. One LATERAL index probe per new row (see 0006 for why
-- not a join).
CREATE FUNCTION webhook_check_new_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    culprit text;
BEGIN
    SELECT n.event_id || ' -> ' || n.endpoint_id INTO culprit
      FROM new_rows n
      LEFT JOIN LATERAL (SELECT e.merchant_id FROM events e WHERE e.id = n.event_id LIMIT 1) e
             ON true
      LEFT JOIN LATERAL (SELECT w.merchant_id FROM webhook_endpoints w
                          WHERE w.id = n.endpoint_id LIMIT 1) w
             ON true
     WHERE e.merchant_id IS NULL OR w.merchant_id IS DISTINCT FROM e.merchant_id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'delivery % names an event or an endpoint that does not exist for '
                        'its merchant', culprit
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_deliveries_references
    AFTER INSERT ON webhook_deliveries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_check_new_deliveries();

CREATE FUNCTION webhook_check_new_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    culprit text;
BEGIN
    SELECT n.event_id INTO culprit
      FROM (SELECT DISTINCT event_id FROM new_rows) n
      LEFT JOIN LATERAL (SELECT 1 AS found FROM events e WHERE e.id = n.event_id LIMIT 1) e
             ON true
     WHERE e.found IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'webhook attempts name event %, which does not exist', culprit
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_attempts_references
    AFTER INSERT ON webhook_attempts REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_check_new_attempts();

-- An event goes only with its deliveries and attempts (the pruning's one statement):
-- what the dropped ON DELETE CASCADE did, now refused instead of done behind its back.
CREATE FUNCTION events_check_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    culprit text;
BEGIN
    SELECT o.id INTO culprit
      FROM old_rows o
      LEFT JOIN LATERAL (SELECT 1 AS found FROM webhook_deliveries d
                          WHERE d.event_id = o.id LIMIT 1) d ON true
      LEFT JOIN LATERAL (SELECT 1 AS found FROM webhook_attempts a
                          WHERE a.event_id = o.id LIMIT 1) a ON true
     WHERE d.found IS NOT NULL OR a.found IS NOT NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event % was deleted with its deliveries or attempts left', culprit
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_deleted_alone
    AFTER DELETE ON events REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_check_deleted();

-- Endpoints are never deleted: a deleted one is a row with status 'deleted' and no
-- secret, which its attempts still name.
CREATE FUNCTION webhook_endpoints_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'webhook endpoints are never deleted (their attempts name them): '
                    'their status becomes deleted'
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER webhook_endpoints_never_deleted BEFORE DELETE ON webhook_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_endpoints_refuse_delete();
