-- Customers, saved cards and recurring billing (API.md "Customers, saved cards and
-- recurring billing"), and test clocks.
--
-- The two promises of recurring billing are constraints here, not code: one invoice per
-- subscription period (UNIQUE (subscription_id, period_index)) and one charge per invoice
-- attempt (PRIMARY KEY (invoice_id, attempt), each attempt's Idempotency-Key derived from
-- both), so no number of schedulers, and no crash of one, can bill a period twice.
--
-- Every gateway process runs a scheduler. It claims due subscriptions (next_action_at at
-- or before their time: the real clock's, or their test clock's frozen_time) with FOR
-- UPDATE SKIP LOCKED, leases them (leased_until) and acts outside the claim's
-- transaction; a crash lets the lease lapse and another process takes the subscription
-- up again, where the attempt rows say what was already sent.

CREATE TABLE test_clocks (
    id           text PRIMARY KEY CHECK (id ~ '^clock_[A-Za-z0-9]+$'),
    merchant_id  text NOT NULL REFERENCES merchants (id),
    name         text,
    frozen_time  timestamptz NOT NULL,
    -- advancing: an advance moved frozen_time and the work due up to it is still running.
    status       text NOT NULL CHECK (status IN ('ready', 'advancing')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX test_clocks_advancing ON test_clocks (id) WHERE status = 'advancing';

CREATE TABLE customers (
    id             text PRIMARY KEY CHECK (id ~ '^cus_[A-Za-z0-9]+$'),
    merchant_id    text NOT NULL REFERENCES merchants (id),
    email          text,
    name           text,
    metadata       jsonb NOT NULL DEFAULT '{}',
    test_clock_id  text REFERENCES test_clocks (id),
    -- A deleted customer is kept (its payments and invoices name it) but answers 404.
    deleted        boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_merchant_list ON customers (merchant_id, created_at DESC, id DESC)
    WHERE NOT deleted;
CREATE INDEX customers_merchant_email ON customers (merchant_id, email) WHERE NOT deleted;

-- A saved card is a token attached to one customer: the token's number stays encrypted
-- where POST /v1/tokens put it. A token belongs to at most one customer.
CREATE TABLE customer_payment_methods (
    customer_id  text NOT NULL REFERENCES customers (id),
    token_id     text NOT NULL UNIQUE REFERENCES tokens (id),
    is_default   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, token_id)
);
CREATE UNIQUE INDEX customer_payment_methods_one_default
    ON customer_payment_methods (customer_id) WHERE is_default;

CREATE TABLE prices (
    id              text PRIMARY KEY CHECK (id ~ '^price_[A-Za-z0-9]+$'),
    merchant_id     text NOT NULL REFERENCES merchants (id),
    amount          bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    interval        text NOT NULL CHECK (interval IN ('day', 'week', 'month', 'year')),
    interval_count  integer NOT NULL CHECK (interval_count BETWEEN 1 AND 365),
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prices_merchant ON prices (merchant_id);

CREATE TABLE subscriptions (
    id                    text PRIMARY KEY CHECK (id ~ '^sub_[A-Za-z0-9]+$'),
    merchant_id           text NOT NULL REFERENCES merchants (id),
    customer_id           text NOT NULL REFERENCES customers (id),
    price_id              text NOT NULL REFERENCES prices (id),
    status                text NOT NULL
                          CHECK (status IN ('trialing', 'active', 'past_due', 'canceled')),
    -- Boundary 0 of the paid periods: the start, or the trial's end.
    billing_anchor        timestamptz NOT NULL,
    trial_start           timestamptz,
    trial_end             timestamptz,
    -- -1 while trialing (the current period is the trial), then 0, 1, ...
    current_period_index  integer NOT NULL CHECK (current_period_index >= -1),
    current_period_start  timestamptz NOT NULL,
    current_period_end    timestamptz NOT NULL,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    canceled_at           timestamptz,
    ended_at              timestamptz,
    test_clock_id         text REFERENCES test_clocks (id),
    -- When the scheduler next has work here (on the subscription's clock): the period's
    -- end, or its open invoice's next attempt; NULL once canceled.
    next_action_at        timestamptz,
    leased_until          timestamptz,  -- a scheduler holds it until then
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscription_period_ordered CHECK (current_period_start < current_period_end),
    CONSTRAINT subscription_trial_index
        CHECK ((current_period_index = -1) = (status = 'trialing')),
    CONSTRAINT subscription_canceled_rests
        CHECK ((status = 'canceled') = (next_action_at IS NULL))
);
CREATE INDEX subscriptions_merchant_list ON subscriptions (merchant_id, created_at DESC, id DESC);
CREATE INDEX subscriptions_customer ON subscriptions (customer_id);
-- What the schedulers scan: only subscriptions with work to come, real time and test
-- clocks apart, oldest due first.
CREATE INDEX subscriptions_due_real ON subscriptions (next_action_at)
    WHERE next_action_at IS NOT NULL AND test_clock_id IS NULL;
CREATE INDEX subscriptions_due_clock ON subscriptions (test_clock_id, next_action_at)
    WHERE next_action_at IS NOT NULL AND test_clock_id IS NOT NULL;

CREATE TABLE invoices (
    id               text PRIMARY KEY CHECK (id ~ '^in_[A-Za-z0-9]+$'),
    merchant_id      text NOT NULL REFERENCES merchants (id),
    subscription_id  text NOT NULL REFERENCES subscriptions (id),
    customer_id      text NOT NULL REFERENCES customers (id),
    period_index     integer NOT NULL CHECK (period_index >= 0),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    amount           bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    currency         text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status           text NOT NULL CHECK (status IN ('open', 'paid', 'uncollectible')),
    attempt_count    integer NOT NULL DEFAULT 0 CHECK (attempt_count BETWEEN 0 AND 10),
    first_failed_at  timestamptz,       -- on the subscription's clock; dunning counts from it
    next_attempt_at  timestamptz,       -- on the subscription's clock; NULL once resolved
    payment_id       text REFERENCES payments (id),  -- the successful charge
    created_at       timestamptz NOT NULL DEFAULT now(),  -- real time
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subscription_id, period_index),
    CONSTRAINT invoice_paid_has_payment CHECK ((status = 'paid') = (payment_id IS NOT NULL)),
    CONSTRAINT invoice_open_is_due CHECK ((status = 'open') = (next_attempt_at IS NOT NULL))
);
-- A subscription's invoices are found through UNIQUE (subscription_id, period_index): a
-- second index on the same columns would only cost every renewal another insert.
CREATE INDEX invoices_merchant_list ON invoices (merchant_id, created_at DESC, id DESC);

-- Each charge of an invoice, written before the payment path is asked (the attempt's
-- write-ahead): a scheduler taking over after a crash sends the same attempt again, with
-- the same Idempotency-Key and card, and the payment path answers it from its record.
CREATE TABLE invoice_attempts (
    invoice_id       text NOT NULL REFERENCES invoices (id),
    attempt          integer NOT NULL CHECK (attempt BETWEEN 1 AND 10),
    token_id         text REFERENCES tokens (id),  -- NULL: the customer had no card
    idempotency_key  text NOT NULL,
    outcome          text NOT NULL DEFAULT 'pending'
                     CHECK (outcome IN ('pending', 'succeeded', 'declined', 'failed')),
    payment_id       text REFERENCES payments (id),
    decline_code     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (invoice_id, attempt)
);
-- At most one successful charge per invoice, whatever else went wrong.
CREATE UNIQUE INDEX invoice_attempts_one_success ON invoice_attempts (invoice_id)
    WHERE outcome = 'succeeded';

-- A payment for a saved customer names it; an off-session one (the buyer absent: a
-- renewal, a merchant-initiated charge) says so. An attempt found pending after a crash is
-- looked up by its key among the off-session payments before it is sent again: the
-- Idempotency-Key's record may have been swept (after KASSA_IDEMPOTENCY_RETENTION_S) while
-- no scheduler ran, and the payment's own key column is kept for ever.
ALTER TABLE payments
    ADD COLUMN customer_id text,
    ADD COLUMN off_session boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT payment_off_session_has_customer
        CHECK (NOT off_session OR customer_id IS NOT NULL);
CREATE INDEX payments_off_session_key ON payments (merchant_id, idempotency_key)
    WHERE off_session;

-- A subscription's periods are billed in order: the next one opens only once the open
-- invoice is paid or uncollectible, so at most one is open at a time.
CREATE UNIQUE INDEX invoices_one_open ON invoices (subscription_id) WHERE status = 'open';
