-- acctor's PostgreSQL schema, version 6: the caller's Idempotency-Key of a queued
-- change to a Stripe catalogue. The same key again answers with the change it queued
-- (one change per key per account); NULL when the caller sent none.

ALTER TABLE stripe_pushes ADD COLUMN client_key text;

CREATE UNIQUE INDEX stripe_pushes_client_key ON stripe_pushes (account_id, client_key)
    WHERE client_key IS NOT NULL;
