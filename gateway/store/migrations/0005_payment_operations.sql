-- Write-ahead records of captures, voids and refunds. One is committed 'pending',
-- together with the request's Idempotency-Key claim, before the processor is called;
-- the processor's answer settles it. A 'pending' operation whose answer was lost (a
-- timeout, a crash) is settled by recovery asking the processor what happened.
CREATE TABLE payment_operations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id       text NOT NULL REFERENCES payments (id),
    merchant_id      text NOT NULL REFERENCES merchants (id),
    operation        text NOT NULL CHECK (operation IN ('capture', 'void', 'refund')),
    amount           bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),  -- money it moves
    refund_id        text CHECK (refund_id ~ '^re_[A-Za-z0-9]+$'),
    reason           text CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    idempotency_key  text,          -- the request's key, completed with the settled answer
    state            text NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_operation_refund_has_id
        CHECK ((operation = 'refund') = (refund_id IS NOT NULL)),
    CONSTRAINT payment_operation_reason_only_refunds
        CHECK (reason IS NULL OR operation = 'refund')
);
-- At most one operation of unknown outcome per payment: until it is settled nothing
-- else may change the payment.
CREATE UNIQUE INDEX payment_operations_one_pending ON payment_operations (payment_id)
    WHERE state = 'pending';
CREATE INDEX payment_operations_pending ON payment_operations (updated_at)
    WHERE state = 'pending';

-- The sandbox's timeout card: every answer about its payment is lost on the way back,
-- though the sandbox did the operation. Set on the payment's 'authorize' row.
ALTER TABLE sandbox_operations ADD COLUMN answer_lost boolean NOT NULL DEFAULT false;
