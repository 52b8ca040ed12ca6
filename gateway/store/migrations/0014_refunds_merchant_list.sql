-- A merchant's refunds, newest first (GET /v1/refunds, and /stripe/v1/refunds, without a
-- payment filter): the page is read off this index. Without it each page sorted every
-- refund of every merchant (only refunds_payment existed), a cost that grew with the
-- whole table. The same shape as payments_merchant_list.
CREATE INDEX refunds_merchant_list ON refunds (merchant_id, created_at DESC, id DESC);
