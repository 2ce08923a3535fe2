-- Operations (account openings at a bank), version 2 of acctor's schema.
--
-- `record` is the whole operation as acctor keeps it, history included: what acctor
-- trusts. The typed columns are written from it in the same statement, for users'
-- queries and acctor's own listing filters.

CREATE TABLE operations (
    id           text COLLATE "C" PRIMARY KEY,
    customer_id  text NOT NULL,
    market       text NOT NULL,
    segment      text NOT NULL,
    state        text NOT NULL CHECK (state IN
                     ('in_progress', 'completed', 'rejected', 'cancelled', 'step_failed', 'failed')),
    path         text NOT NULL CHECK (path IN ('async', 'legacy')),
    request_id   text NOT NULL UNIQUE,
    tracking_id  text UNIQUE,
    iban         text,
    bic          text,
    bank_status  text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    -- Optimistic locking: a commit built from an older read is refused.
    version      bigint NOT NULL,
    record       jsonb NOT NULL
);
-- A customer's operations in progress (a create without `force` is refused while one
-- is). Not unique: a forced create adds another.
CREATE INDEX operations_open_by_customer ON operations (customer_id)
    WHERE state NOT IN ('completed', 'rejected', 'cancelled');
-- Listing is newest first (ids sort by creation time): the primary key serves the
-- unfiltered list read backwards; these serve the filtered ones.
CREATE INDEX operations_by_state ON operations (state, id);
CREATE INDEX operations_by_market ON operations (market, id);

-- How many operations are in each state, kept by the transactions that change one:
-- counting the table would read every row.
CREATE TABLE operation_counts (
    state  text PRIMARY KEY,
    n      bigint NOT NULL
);

-- Bank statuses received and not yet applied. `operation_id` is NULL while no
-- operation has the event's tracking id or request id: the commit that records the
-- tracking id adopts it. `seq` is drawn from the webhook inbox's sequence. `body` is
-- the reported status (status, iban, bic, reason).
CREATE TABLE operation_events (
    seq           bigint PRIMARY KEY,
    operation_id  text COLLATE "C" REFERENCES operations (id) ON DELETE CASCADE,
    event_id      text NOT NULL,
    tracking_id   text NOT NULL,
    request_id    text NOT NULL,
    source        text NOT NULL,
    body          jsonb NOT NULL,
    received_at   timestamptz NOT NULL
);
CREATE INDEX operation_events_by_operation ON operation_events (operation_id, seq)
    WHERE operation_id IS NOT NULL;
CREATE INDEX operation_events_unrouted ON operation_events (tracking_id, seq)
    WHERE operation_id IS NULL;

-- Operation events are deduplicated in `dedup` too, by (request id, status) hashed,
-- with `seq` NULL: a repeat within the TTL is a duplicate, and `expires_at` purges it
-- with the webhooks' records.

-- Operation timers in the due index (subject: the operation id, no payload): its next
-- wake-up, its escalation deadline, and its failure awaiting ops. The initial
-- migration's inline CHECK got PostgreSQL's generated name, `due_kind_check`.
ALTER TABLE due DROP CONSTRAINT due_kind_check;
ALTER TABLE due ADD CONSTRAINT due_kind_check CHECK (kind IN
    ('retry', 'poll', 'outbox', 'operation_wake', 'operation_deadline', 'operation_failed'));
