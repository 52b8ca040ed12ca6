-- Per-merchant overrides of the abuse limits; NULL means "the gateway's default"
-- (KASSA_RATE_LIMIT_*, KASSA_VELOCITY_*). 0 turns a limit off.
ALTER TABLE merchants
    ADD COLUMN rate_limit_per_s                integer CHECK (rate_limit_per_s >= 0),
    ADD COLUMN rate_limit_burst                integer CHECK (rate_limit_burst >= 1),
    ADD COLUMN velocity_merchant_attempts_max  integer CHECK (velocity_merchant_attempts_max >= 0),
    ADD COLUMN velocity_card_attempts_max      integer CHECK (velocity_card_attempts_max >= 0),
    ADD COLUMN velocity_card_declines_max      integer CHECK (velocity_card_declines_max >= 0);
