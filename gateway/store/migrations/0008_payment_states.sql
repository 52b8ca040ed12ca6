-- Payments that exist before the card (API.md "Payments"): requires_payment_method and
-- requires_confirmation before processing, canceled, and new attempts after a decline or
-- a processor failure.
--
-- A payment created without a payment method has no card yet: the card columns become
-- nullable, all five together, and only the states that may never have had a card
-- (requires_payment_method, and canceled or expired, which it can reach) may lack one.
-- A card given with "confirm": false is kept as a token (encrypted, as POST /v1/tokens
-- keeps one), so confirm can send its number later: its token_id is set.
--
-- Attempts: the payment's own columns (card, status, decline_code, processor_reference)
-- are its latest processor attempt, so the one-step authorization, by far the common
-- path, writes no extra row and makes no extra round trip: its insert and its settlement
-- are unchanged. Only a new attempt on a declined or failed payment (or canceling one)
-- moves the finished attempt into earlier_attempts, a jsonb array appended to by the same
-- conditional UPDATE that starts the new attempt (one statement, the row rewritten
-- anyway). A table of attempts would cost an INSERT per retry and a join on every read
-- and list; the array is read with the row, and NULL (nothing stored) for the payments
-- that never retried. Its entries: {"outcome", "decline_code", "card_brand",
-- "card_last4", "processor_reference"}.
--
-- idempotency_key now names the key of the request that started the latest attempt (a
-- create or a confirm): the settlement completes that key, as it did the create's.

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('requires_payment_method', 'requires_confirmation', 'processing',
                      'authorized', 'declined', 'failed', 'captured', 'partially_refunded',
                      'refunded', 'voided', 'expired', 'canceled'));

ALTER TABLE payments
    ALTER COLUMN card_brand DROP NOT NULL,
    ALTER COLUMN card_last4 DROP NOT NULL,
    ALTER COLUMN card_exp_month DROP NOT NULL,
    ALTER COLUMN card_exp_year DROP NOT NULL,
    ALTER COLUMN card_fingerprint DROP NOT NULL,
    ADD COLUMN earlier_attempts jsonb,
    ADD CONSTRAINT payment_card_whole
        CHECK (num_nulls(card_brand, card_last4, card_exp_month, card_exp_year,
                         card_fingerprint) IN (0, 5)),
    ADD CONSTRAINT payment_card_when_needed
        CHECK (card_last4 IS NOT NULL
               OR status IN ('requires_payment_method', 'canceled', 'expired')),
    ADD CONSTRAINT payment_no_card_before_one
        CHECK (status <> 'requires_payment_method' OR card_last4 IS NULL),
    -- Confirm sends the stored card's number: a card waiting for confirmation is a token.
    ADD CONSTRAINT payment_confirmable_card_kept
        CHECK (status <> 'requires_confirmation' OR token_id IS NOT NULL),
    ADD CONSTRAINT payment_earlier_attempts_array
        CHECK (earlier_attempts IS NULL OR jsonb_typeof(earlier_attempts) = 'array');

-- What the expiry loop scans: the (few) payments waiting before the processor.
CREATE INDEX payments_unconfirmed ON payments (created_at)
    WHERE status IN ('requires_payment_method', 'requires_confirmation');
