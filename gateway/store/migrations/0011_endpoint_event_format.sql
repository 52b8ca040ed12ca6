-- What an endpoint is sent: Kassa's own event JSON (API.md "Events and webhooks"), or, for
-- an endpoint created through the Stripe-compatible tree, the same event as a Stripe Event
-- (`payment_intent.succeeded` with a PaymentIntent in `data.object`): a shop moving from
-- Stripe keeps its webhook handlers as they are. Every existing endpoint was made through
-- the native API.
ALTER TABLE webhook_endpoints
    ADD COLUMN event_format text NOT NULL DEFAULT 'kassa'
        CHECK (event_format IN ('kassa', 'stripe'));
