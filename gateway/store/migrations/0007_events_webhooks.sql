-- Events, webhook endpoints and the delivery outbox.
--
-- An event is written in the same statement or transaction as the change it reports
-- (never otherwise), with one delivery row per enabled endpoint of its merchant subscribed
-- to its type: a merchant without endpoints gets no delivery rows at all. The deliverer
-- of every gateway process claims due rows (FOR UPDATE SKIP LOCKED), pushing
-- next_attempt_at forward as its lease, and POSTs outside any transaction: a crash lets
-- the lease lapse and the delivery goes out again, with the same webhook-id.

CREATE TABLE events (
    id          text PRIMARY KEY CHECK (id ~ '^evt_[A-Za-z0-9]+$'),
    merchant_id text NOT NULL,          -- checked per statement (events_merchant_exists)
    type        text NOT NULL,
    object_id   text NOT NULL,          -- the payment's or refund's id
    payload     text NOT NULL,          -- the event's JSON: the exact bytes delivered and read
    created_at  timestamptz NOT NULL    -- the event's "created" (also the latency's start)
);
CREATE INDEX events_merchant_list ON events (merchant_id, created_at DESC, id DESC);
CREATE INDEX events_merchant_type_list ON events (merchant_id, type, created_at DESC, id DESC);
CREATE INDEX events_created ON events (created_at);  -- the 30-day pruning
-- Events ride the authorization's batch: their merchant is checked once per statement, as
-- the other hot tables' are (0006), not by a foreign key's per-row query and row lock.
CREATE TRIGGER events_merchant_exists
    AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_new_rows_merchant();

CREATE TABLE webhook_endpoints (
    id                text PRIMARY KEY CHECK (id ~ '^we_[A-Za-z0-9]+$'),
    merchant_id       text NOT NULL REFERENCES merchants (id),
    url               text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    enabled_events    text[] NOT NULL CHECK (cardinality(enabled_events) >= 1),
    description       text,
    -- 'deleted' rows are kept (their attempts name them) but answer 404 and hold no secret.
    status            text NOT NULL CHECK (status IN ('enabled', 'disabled', 'deleted')),
    -- AES-256-GCM under a key HKDF derives from the master key, nonce prepended, the
    -- endpoint id bound as associated data; NULL once deleted.
    secret_ciphertext bytea CHECK ((secret_ciphertext IS NULL) = (status = 'deleted')),
    failing_since     timestamptz,      -- first failed attempt since the last success
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- The outbox's join (a merchant's enabled endpoints), and the merchant's list.
CREATE INDEX webhook_endpoints_enabled ON webhook_endpoints (merchant_id)
    WHERE status = 'enabled';
CREATE INDEX webhook_endpoints_merchant_list ON webhook_endpoints (merchant_id, created_at DESC, id DESC)
    WHERE status <> 'deleted';

CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints (id),
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed', 'canceled')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When the next attempt is due; while an attempt is in flight, when its lease lapses.
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
-- What the deliverers claim: only due-able rows are indexed, so the index stays as small
-- as the backlog however many deliveries are kept.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint_pending ON webhook_deliveries (endpoint_id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_delivered ON webhook_deliveries (updated_at)
    WHERE state = 'delivered';  -- pruned soon after delivery

-- Every attempt, for GET /v1/events/{id}/deliveries; pruned with its event.
CREATE TABLE webhook_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints (id),
    attempt          integer NOT NULL CHECK (attempt >= 1),
    status_code      integer,
    error            text,              -- timeout, connection_error, refused_address
    duration_ms      integer NOT NULL CHECK (duration_ms >= 0),
    next_attempt_at  timestamptz,       -- NULL: none (delivered, failed, disabled)
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_attempt_has_outcome CHECK ((status_code IS NULL) <> (error IS NULL))
);
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id, created_at DESC, id DESC);
