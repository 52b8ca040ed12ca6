-- Merchants and their secret API keys. Only a SHA-256 of each key is stored:
-- keys are 256-bit random, so a fast hash is safe and lets auth look up by index.
CREATE TABLE merchants (
    id          text PRIMARY KEY CHECK (id ~ '^mer_[A-Za-z0-9]+$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY CHECK (id ~ '^key_[A-Za-z0-9]+$'),
    merchant_id  text NOT NULL REFERENCES merchants (id),
    key_hash     bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    key_hint     text NOT NULL,             -- the last 4 characters, to tell keys apart
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz                -- NULL: valid until revoked by a rotation
);
CREATE INDEX api_keys_merchant ON api_keys (merchant_id);
