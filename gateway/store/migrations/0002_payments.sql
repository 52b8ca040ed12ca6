-- Card tokens, payments, refunds and idempotency records.
-- CHECK constraints restate the core's invariants, so the database refuses
-- what the core should never produce.

CREATE TABLE tokens (
    id                 text PRIMARY KEY CHECK (id ~ '^tok_[A-Za-z0-9]+$'),
    merchant_id        text NOT NULL REFERENCES merchants (id),
    brand              text NOT NULL,
    last4              text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month          smallint NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year           smallint NOT NULL,
    fingerprint        text NOT NULL,
    holder_name        text,
    number_ciphertext  bytea NOT NULL,     -- AES-256-GCM, nonce prepended; never the plain number
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tokens_merchant ON tokens (merchant_id);

CREATE TABLE payments (
    id                   text PRIMARY KEY CHECK (id ~ '^pay_[A-Za-z0-9]+$'),
    merchant_id          text NOT NULL REFERENCES merchants (id),
    status               text NOT NULL CHECK (status IN ('processing', 'authorized', 'declined',
                             'failed', 'captured', 'partially_refunded', 'refunded', 'voided',
                             'expired')),
    amount               bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    currency             text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    capture_method       text NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    amount_capturable    bigint NOT NULL DEFAULT 0,
    amount_captured      bigint NOT NULL DEFAULT 0,
    amount_refunded      bigint NOT NULL DEFAULT 0,
    card_brand           text NOT NULL,
    card_last4           text NOT NULL CHECK (card_last4 ~ '^[0-9]{4}$'),
    card_exp_month       smallint NOT NULL,
    card_exp_year        smallint NOT NULL,
    card_fingerprint     text NOT NULL,
    token_id             text REFERENCES tokens (id),
    processor            text NOT NULL,
    processor_reference  text,
    decline_code         text,
    reference            text,
    description          text,
    metadata             jsonb NOT NULL DEFAULT '{}',
    customer             jsonb,
    idempotency_key      text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    authorized_at        timestamptz,
    CONSTRAINT payment_capturable_range CHECK (amount_capturable BETWEEN 0 AND amount),
    CONSTRAINT payment_captured_le_amount CHECK (amount_captured BETWEEN 0 AND amount),
    CONSTRAINT payment_refunded_le_captured CHECK (amount_refunded BETWEEN 0 AND amount_captured),
    CONSTRAINT payment_hold_only_when_authorized
        CHECK ((status = 'authorized') = (amount_capturable > 0)),
    CONSTRAINT payment_captured_states
        CHECK ((status IN ('captured', 'partially_refunded', 'refunded')) = (amount_captured > 0))
);
CREATE INDEX payments_merchant_list ON payments (merchant_id, created_at DESC, id DESC);
CREATE INDEX payments_processing ON payments (updated_at) WHERE status = 'processing';
CREATE INDEX payments_authorized ON payments (authorized_at) WHERE status = 'authorized';

CREATE TABLE refunds (
    id           text PRIMARY KEY CHECK (id ~ '^re_[A-Za-z0-9]+$'),
    merchant_id  text NOT NULL REFERENCES merchants (id),
    payment_id   text NOT NULL REFERENCES payments (id),
    amount       bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status       text NOT NULL CHECK (status IN ('succeeded')),
    reason       text CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON refunds (payment_id);

-- One row per (merchant, Idempotency-Key): claimed 'in_flight' with the request's
-- intent, completed with the exact answer given. The primary key is what makes
-- every gateway process agree.
CREATE TABLE idempotency_keys (
    merchant_id      text NOT NULL REFERENCES merchants (id),
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint      bytea NOT NULL CHECK (length(fingerprint) = 32),
    state            text NOT NULL CHECK (state IN ('in_flight', 'completed')),
    payment_id       text,          -- the payment the request created or acted on
    response_status  integer,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    PRIMARY KEY (merchant_id, key),
    CONSTRAINT idempotency_completed_has_answer
        CHECK ((state = 'completed') = (response_status IS NOT NULL AND response_body IS NOT NULL))
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
CREATE INDEX idempotency_keys_payment ON idempotency_keys (payment_id) WHERE state = 'in_flight';

-- The sandbox processor's own books (the processor's truth, not ours): what it
-- authorized, captured, voided and refunded. Recovery asks it by payment id.
CREATE TABLE sandbox_operations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id   text NOT NULL,
    operation    text NOT NULL CHECK (operation IN ('authorize', 'capture', 'void', 'refund')),
    reference    text NOT NULL,      -- our id for the operation: payment or refund id
    outcome      text NOT NULL,
    amount       bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (operation, reference)
);
CREATE INDEX sandbox_operations_payment ON sandbox_operations (payment_id);
