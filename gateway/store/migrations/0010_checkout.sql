-- Hosted checkout (API.md "Checkout sessions and payment links"): a session is the page a
-- buyer pays on, around one payment that waits in requires_payment_method; a payment link
-- is a reusable URL that opens a fresh session per visit.
--
-- The session's money (amount, currency, capture, reference, description) lives on its
-- payment, never twice: a session is read joined with its payment. Its CSRF token is not
-- stored: it is an HMAC of the session id under a key derived from the master key
-- (gateway/checkout/tokens.py), so nothing secret sits in these rows.

CREATE TABLE payment_links (
    id             text PRIMARY KEY CHECK (id ~ '^plink_[A-Za-z0-9]+$'),
    merchant_id    text NOT NULL REFERENCES merchants (id),
    -- The link's public address, fixed at creation (KASSA_PUBLIC_URL or the API's origin).
    url            text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    amount         bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    currency       text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    capture_method text NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    description    text,
    success_url    text CHECK (length(success_url) BETWEEN 1 AND 2048),
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE checkout_sessions (
    id              text PRIMARY KEY CHECK (id ~ '^cs_[A-Za-z0-9]+$'),
    merchant_id     text NOT NULL REFERENCES merchants (id),
    payment_id      text NOT NULL UNIQUE REFERENCES payments (id),
    payment_link_id text REFERENCES payment_links (id),
    url             text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),  -- the page's
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'complete', 'expired')),
    locale          text NOT NULL CHECK (locale IN ('auto', 'en', 'fi', 'sv', 'fr')),
    success_url     text CHECK (length(success_url) BETWEEN 1 AND 2048),
    cancel_url      text CHECK (length(cancel_url) BETWEEN 1 AND 2048),
    customer_email  text,
    expires_at      timestamptz NOT NULL,
    completed_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkout_session_completed_when_complete
        CHECK ((completed_at IS NOT NULL) = (status = 'complete')),
    CONSTRAINT checkout_session_expires_after_creation CHECK (expires_at > created_at)
);
-- What the expiry and completion passes scan: the open sessions, by deadline.
CREATE INDEX checkout_sessions_open ON checkout_sessions (expires_at) WHERE status = 'open';
