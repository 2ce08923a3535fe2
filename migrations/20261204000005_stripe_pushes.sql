-- acctor's PostgreSQL schema, version 5: local changes pushed to Stripe, and the audit
-- trail of every mirrored object.
--
-- `stripe_pushes` is each Stripe account's push queue: one row per local change to its
-- catalogue (products, prices), numbered per account (`seq`), with its status
-- (pending, pushed, conflict, failed, discarded) and the whole change as JSON
-- (`record`: the parameters, the base version it expects at Stripe, Stripe's answer,
-- Stripe's version when held as a conflict). The open ones:
--   SELECT * FROM stripe_pushes WHERE status IN ('pending', 'conflict', 'failed');
--
-- `stripe_audit` is every change of a mirrored object, both ways, oldest first by
-- `id`: `direction` inbound (an event, a backfill listing, a re-fetch, a drift repair)
-- or outbound (a local change queued, pushed, held, retried, discarded), `what`
-- happened, from where (`source`: `event evt_…`, `backfill`, `push_3`…), and the
-- object's `version` the write made (NULL for entries that wrote nothing).
-- Both go with their account (ON DELETE CASCADE) when it is purged.

CREATE TABLE stripe_pushes (
    account_id   text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    object_type  text NOT NULL,
    object_id    text COLLATE "C",
    action       text NOT NULL,
    status       text NOT NULL,
    created_at   timestamptz NOT NULL,
    record       jsonb NOT NULL,
    PRIMARY KEY (account_id, seq)
);

CREATE INDEX stripe_pushes_open ON stripe_pushes (account_id, seq)
    WHERE status IN ('pending', 'conflict', 'failed');

CREATE TABLE stripe_audit (
    id           bigserial PRIMARY KEY,
    account_id   text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    object_type  text NOT NULL,
    object_id    text COLLATE "C" NOT NULL,
    at           timestamptz NOT NULL,
    direction    text NOT NULL,
    what         text NOT NULL,
    source       text NOT NULL,
    push_seq     bigint,
    version      bigint
);

CREATE INDEX stripe_audit_object ON stripe_audit (account_id, object_type, object_id, id);
