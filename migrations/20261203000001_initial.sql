-- acctor's PostgreSQL schema, version 1.
--
-- Every object is created in the schema acctor connects with (`store.postgres.schema`,
-- "acctor" by default: acctor puts it first on the search_path), so this file names
-- no schema. Users may read every table; only acctor writes them.
--
-- Records acctor reads back whole are kept as JSON (`record`, `body`), beside typed
-- columns for the fields users query: the JSON is what acctor trusts, the columns are
-- written from it in the same statement.
--
-- Multi-node (a later version): accounts hash to `partition`, and a node owns a
-- partition through its row in `partition_leases`; every state-changing transaction
-- will check the writer's (partition, epoch) there, so a node that stalled past its
-- lease can no longer write. One process today: the table stays empty.

CREATE TABLE partition_leases (
    partition   integer PRIMARY KEY,
    owner       text NOT NULL,
    epoch       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Linked (and unlinked, kept) accounts. `record` is the whole account as acctor keeps
-- it, its access token sealed (`{"sealed": "v1:<key id>:<base64>"}`): never readable
-- without acctor's key.
CREATE TABLE accounts (
    id                    text PRIMARY KEY,
    partition             integer NOT NULL,
    provider              text NOT NULL,
    item_id               text NOT NULL,
    owner_id              text NOT NULL,
    status                text NOT NULL CHECK (status IN ('linked', 'unlinked')),
    created_at            timestamptz NOT NULL,
    cursor_updated_at     timestamptz,
    last_sync_finished_at timestamptz,
    sync_count            bigint NOT NULL DEFAULT 0,
    -- The key id sealing the access token: which keys the stored secrets need.
    secret_key_id         text,
    record                jsonb NOT NULL
);
-- One linked account per provider item.
CREATE UNIQUE INDEX accounts_linked_item ON accounts (provider, item_id) WHERE status = 'linked';
CREATE INDEX accounts_item ON accounts (item_id);
CREATE INDEX accounts_owner ON accounts (owner_id);

-- An account's aliases (e-mail, phone, an id of the caller's own). `live` while the
-- account is linked (then the alias is unique); an unlinked account keeps its aliases
-- as retired keys that still find it.
CREATE TABLE aliases (
    account_id  text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    alias       text NOT NULL,
    live        boolean NOT NULL,
    PRIMARY KEY (account_id, alias)
);
CREATE UNIQUE INDEX aliases_live ON aliases (alias) WHERE live;
CREATE INDEX aliases_alias ON aliases (alias);

-- The local copy of each account's transactions. `body` is the provider's object;
-- the typed columns are read from it (Plaid: `amount` is positive for money leaving
-- the account; `category` is the personal finance category's primary, else the first
-- legacy category). Rows of an account whose first sync has not committed yet (no
-- cursor) are being staged and are not part of the copy.
CREATE TABLE transactions (
    account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    transaction_id  text COLLATE "C" NOT NULL,
    date            date NOT NULL,
    amount          numeric,
    currency        text,
    name            text,
    merchant        text,
    pending         boolean,
    category        text,
    body            jsonb NOT NULL,
    PRIMARY KEY (account_id, transaction_id)
);
CREATE INDEX transactions_by_date ON transactions (account_id, date, transaction_id);

-- Webhooks received and not yet consumed by a committed sync. `account_id` is NULL
-- while the item is not linked: the entry is adopted when it is. `claimed`: a running
-- sync has read it (a repeat of it is then a new event).
CREATE SEQUENCE inbox_seq;
CREATE TABLE inbox (
    seq          bigint PRIMARY KEY,
    account_id   text REFERENCES accounts (id) ON DELETE CASCADE,
    provider     text NOT NULL,
    item_id      text NOT NULL,
    kind         text NOT NULL,
    received_at  timestamptz NOT NULL,
    claimed      boolean NOT NULL DEFAULT false,
    -- The verified body as received (text: JSON that jsonb would refuse, e.g. \u0000,
    -- must still be kept; cast with body::jsonb to query it).
    body         text NOT NULL
);
CREATE INDEX inbox_by_account ON inbox (account_id, seq) WHERE account_id IS NOT NULL;
CREATE INDEX inbox_unrouted ON inbox (provider, item_id) WHERE account_id IS NULL;

-- Webhook deduplication: a repeat of `key` before `expires_at` is a duplicate while
-- the entry it repeats (`seq`) is still pending and unclaimed.
CREATE TABLE dedup (
    key         bytea PRIMARY KEY,
    expires_at  timestamptz NOT NULL,
    seq         bigint
);
CREATE INDEX dedup_expiry ON dedup (expires_at);

-- The due-time index: retries (`subject` an account id, `payload` the retry record as
-- JSON), polls (`due_at` is the anchor: the last sync or the link) and outbox messages
-- (`subject` the message id, 20 digits). One entry per (kind, subject); millisecond
-- times.
CREATE TABLE due (
    kind     text NOT NULL CHECK (kind IN ('retry', 'poll', 'outbox')),
    subject  text COLLATE "C" NOT NULL,
    due_at   timestamptz NOT NULL,
    payload  bytea NOT NULL DEFAULT '\x',
    PRIMARY KEY (kind, subject)
);
CREATE INDEX due_by_time ON due (kind, due_at, subject);

-- Incidents: at most one open per (account, kind).
CREATE SEQUENCE incident_id_seq;
CREATE TABLE incidents (
    id           bigint PRIMARY KEY,
    account_id   text NOT NULL,
    kind         text NOT NULL,
    severity     text NOT NULL,
    opened_at    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    resolved_at  timestamptz,
    occurrences  integer NOT NULL,
    details      jsonb NOT NULL
);
CREATE UNIQUE INDEX incidents_one_open ON incidents (account_id, kind) WHERE resolved_at IS NULL;
CREATE INDEX incidents_by_account ON incidents (account_id, id);

-- Messages waiting to leave acctor (alerts today). `payload` is the exact body sent
-- on every attempt (text, not jsonb, which would re-order it).
CREATE SEQUENCE outbox_id_seq;
CREATE TABLE outbox (
    id               bigint PRIMARY KEY,
    destination      text NOT NULL,
    event_type       text NOT NULL,
    payload          text NOT NULL,
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    attempts         integer NOT NULL,
    last_error       text
);

-- The readiness probe's one row: /readyz writes it to prove the database takes writes.
CREATE TABLE readiness_probe (
    id      integer PRIMARY KEY CHECK (id = 1),
    at      timestamptz NOT NULL
);

-- Ingests a batch of verified webhooks in one round trip (the caller's transaction
-- commits them together: many webhooks share one commit). Per webhook, in order:
-- resolve its item to a linked account, drop it as a duplicate while the entry its
-- dedup key points at is still pending and unclaimed, else append it to the inbox
-- (kept for the item when it is not linked) and point its dedup key at it. Takes the
-- items' advisory locks, which linking takes too, so a link and an ingest of the same
-- item cannot miss each other's writes.
CREATE FUNCTION ingest_webhooks(
    p_provider  text[],
    p_item      text[],
    p_kind      text[],
    p_key       bytea[],
    p_body      text[],
    p_received  timestamptz[],
    p_expires   timestamptz[]
) RETURNS TABLE (out_seq bigint, out_account text, out_duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    i        integer;
    acc      text;
    seen     record;
    pending  boolean;
    s        bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(l.h)
    FROM (
        SELECT DISTINCT hashtextextended(u.p || chr(31) || u.it, 0) AS h
        FROM unnest(p_provider, p_item) AS u(p, it)
        ORDER BY 1
    ) AS l;
    FOR i IN 1 .. coalesce(array_length(p_key, 1), 0) LOOP
        acc := NULL;
        SELECT a.id INTO acc FROM accounts a
        WHERE a.provider = p_provider[i] AND a.item_id = p_item[i] AND a.status = 'linked';
        SELECT d.expires_at, d.seq INTO seen FROM dedup d WHERE d.key = p_key[i];
        pending := false;
        IF FOUND AND seen.expires_at > p_received[i] THEN
            IF seen.seq IS NULL THEN
                pending := true;
            ELSE
                SELECT EXISTS (
                    SELECT 1 FROM inbox e
                    WHERE e.seq = seen.seq
                      AND ((e.account_id IS NULL AND e.provider = p_provider[i] AND e.item_id = p_item[i])
                           OR (acc IS NOT NULL AND e.account_id = acc AND NOT e.claimed))
                ) INTO pending;
            END IF;
        END IF;
        IF pending THEN
            out_seq := NULL;
            out_account := acc;
            out_duplicate := true;
            RETURN NEXT;
            CONTINUE;
        END IF;
        s := nextval('inbox_seq');
        INSERT INTO inbox (seq, account_id, provider, item_id, kind, received_at, body)
        VALUES (s, acc, p_provider[i], p_item[i], p_kind[i], p_received[i], p_body[i]);
        INSERT INTO dedup (key, expires_at, seq) VALUES (p_key[i], p_expires[i], s)
        ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at, seq = EXCLUDED.seq;
        out_seq := s;
        out_account := acc;
        out_duplicate := false;
        RETURN NEXT;
    END LOOP;
END
$$;
