-- The hot tables' references are checked once per statement instead of once per row.
--
-- A foreign key is checked by a query per inserted row that also locks the parent row
-- FOR KEY SHARE. Every authorization inserts a payment, a key claim, a ledger transaction
-- and two entries, eight such checks, and all of a merchant's requests lock the same
-- merchant row, which under concurrency turns each lock into a MultiXact. Measured with
-- auto_explain (log_triggers) under wrk: the checks were about half of the statements'
-- time. The same invariants (and one more: a ledger transaction names a payment *of its
-- own merchant*) are now checked by statement-level triggers that join each statement's
-- new rows with their parents once, whatever the batch size.
--
-- What the dropped keys also did, refusing to delete a referenced parent, is kept by
-- refusing deletes: merchants, payments and refunds are never deleted (the ledger, which
-- names them, is append-only).

ALTER TABLE payments DROP CONSTRAINT payments_merchant_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_merchant_id_fkey;
ALTER TABLE ledger_transactions
    DROP CONSTRAINT ledger_transactions_merchant_id_fkey,
    DROP CONSTRAINT ledger_transactions_payment_id_fkey,
    DROP CONSTRAINT ledger_transactions_refund_id_fkey;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_transaction_id_fkey;

-- New payments and key claims name an existing merchant.
CREATE FUNCTION check_new_rows_merchant() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    culprit text;
BEGIN
    SELECT n.merchant_id INTO culprit
      FROM (SELECT DISTINCT merchant_id FROM new_rows) n
      LEFT JOIN LATERAL (SELECT 1 AS found FROM merchants m WHERE m.id = n.merchant_id LIMIT 1) m
             ON true
     WHERE m.found IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% names merchant %, which does not exist', TG_TABLE_NAME, culprit
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER payments_merchant_exists
    AFTER INSERT ON payments REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_new_rows_merchant();
CREATE TRIGGER idempotency_keys_merchant_exists
    AFTER INSERT ON idempotency_keys REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_new_rows_merchant();

-- A ledger transaction names a payment of its own merchant, and a refund of that payment.
CREATE FUNCTION ledger_check_transactions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    culprit bigint;
BEGIN
    SELECT n.id INTO culprit
      FROM new_transactions n
      LEFT JOIN LATERAL (SELECT p.merchant_id FROM payments p WHERE p.id = n.payment_id LIMIT 1) p
             ON true
      LEFT JOIN LATERAL (SELECT r.payment_id FROM refunds r WHERE r.id = n.refund_id LIMIT 1) r
             ON true
     WHERE p.merchant_id IS DISTINCT FROM n.merchant_id
        OR (n.refund_id IS NOT NULL AND r.payment_id IS DISTINCT FROM n.payment_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % names a payment or refund that does not exist '
                        'for its merchant', culprit
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_transactions_references
    AFTER INSERT ON ledger_transactions REFERENCING NEW TABLE AS new_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_transactions();

-- Entries name an existing transaction (the entries' own statement trigger, which already
-- checks each transaction's balance, now also refuses an entry without its transaction).
-- Every check probes its parents per new row through LATERAL ... LIMIT 1, which keeps the
-- planner on index lookups: it knows nothing of a transition table's size and would
-- otherwise hash-join it with a full scan of the parent table, a cost that grows with
-- the table.
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    culprit bigint;
BEGIN
    SELECT n.transaction_id INTO culprit
      FROM new_entries n
      LEFT JOIN LATERAL (SELECT t.id FROM ledger_transactions t WHERE t.id = n.transaction_id LIMIT 1) t
             ON true
     WHERE t.id IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entries name transaction %, which does not exist', culprit
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT x.transaction_id INTO culprit
      FROM (SELECT DISTINCT transaction_id FROM new_entries) x
     CROSS JOIN LATERAL (
           SELECT sum(e.amount) AS total, bool_or(e.currency <> t.currency) AS mixed
             FROM ledger_entries e
             JOIN ledger_transactions t ON t.id = e.transaction_id
            WHERE e.transaction_id = x.transaction_id) s
     WHERE s.total <> 0 OR s.mixed
     LIMIT 1;
    IF culprit IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', culprit
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted (the ledger names them)', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER merchants_never_deleted BEFORE DELETE ON merchants
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_delete();
CREATE TRIGGER payments_never_deleted BEFORE DELETE ON payments
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_delete();
CREATE TRIGGER refunds_never_deleted BEFORE DELETE ON refunds
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_delete();
