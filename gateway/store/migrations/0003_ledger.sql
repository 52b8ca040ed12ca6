-- The double-entry ledger: append-only. Amounts are signed minor units
-- (positive = debit, negative = credit); every transaction sums to zero.
-- Balances are derived from entries on read (see README: a running balance row
-- per account would be a hot row every authorization locks until commit).

CREATE TABLE ledger_transactions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  text NOT NULL REFERENCES merchants (id),
    payment_id   text NOT NULL REFERENCES payments (id),
    refund_id    text REFERENCES refunds (id),
    event        text NOT NULL CHECK (event IN ('authorize', 'capture', 'void', 'expire', 'refund')),
    currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_transactions_payment ON ledger_transactions (payment_id);
CREATE INDEX ledger_transactions_created ON ledger_transactions (created_at);

CREATE TABLE ledger_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  bigint NOT NULL REFERENCES ledger_transactions (id),
    account         text COLLATE "C" NOT NULL,  -- C collation: prefix scans use the index
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount          bigint NOT NULL CHECK (amount <> 0)
);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_account ON ledger_entries (account) INCLUDE (amount);

-- Entries of one transaction are written by one statement; after each statement
-- every transaction it touched must balance and carry its transaction's currency.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    culprit bigint;
BEGIN
    SELECT e.transaction_id INTO culprit
      FROM ledger_entries e
      JOIN ledger_transactions t ON t.id = e.transaction_id
     WHERE e.transaction_id IN (SELECT DISTINCT transaction_id FROM new_entries)
     GROUP BY e.transaction_id
    HAVING sum(e.amount) <> 0 OR bool_or(e.currency <> t.currency)
     LIMIT 1;
    IF culprit IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', culprit
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_balanced();

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
