-- acctor's PostgreSQL schema, version 4: the local copy of linked Stripe accounts.
--
-- `stripe_objects` holds each mirrored object as Stripe sent it (`body`), by account,
-- type (Stripe's list endpoint name: products, prices, customers, subscriptions,
-- invoices, payment_intents, charges, refunds, disputes, payouts) and Stripe's id. A
-- deleted object keeps its row with `body` NULL (a tombstone), so a late, older event
-- cannot bring it back. `stamp_at` (unix seconds) and `stamp_event` say what wrote the
-- row: the event's `created` and id, or the second a listing or retrieve was answered
-- (`stamp_event` NULL). Query the live copy with `WHERE body IS NOT NULL`.
--
-- `stripe_state` is each account's sync state (backfill progress per type, the
-- catch-up watermark), written in the same transaction as the objects it describes.
-- Both go with their account (ON DELETE CASCADE) when it is purged.

CREATE TABLE stripe_objects (
    account_id   text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    object_type  text NOT NULL,
    object_id    text COLLATE "C" NOT NULL,
    body         jsonb,
    stamp_at     bigint NOT NULL,
    stamp_event  text,
    version      bigint NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (account_id, object_type, object_id)
);

CREATE TABLE stripe_state (
    account_id  text PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    state       jsonb NOT NULL
);
