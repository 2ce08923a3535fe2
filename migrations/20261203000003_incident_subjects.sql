-- acctor's PostgreSQL schema, version 3: incidents about operations, runtime flags.
--
-- An incident is about an account or, now, an operation (an account opening): exactly
-- one of `account_id` and `operation_id` is set. Existing rows are all about accounts
-- and satisfy the check as they are. At most one open incident per (operation, kind),
-- as per (account, kind) already (`incidents_one_open`; NULL account ids never
-- collide in it).

ALTER TABLE incidents ALTER COLUMN account_id DROP NOT NULL;
ALTER TABLE incidents ADD COLUMN operation_id text;
ALTER TABLE incidents ADD CONSTRAINT incidents_one_subject
    CHECK ((account_id IS NULL) <> (operation_id IS NULL));
CREATE UNIQUE INDEX incidents_one_open_per_operation ON incidents (operation_id, kind)
    WHERE resolved_at IS NULL AND operation_id IS NOT NULL;
CREATE INDEX incidents_by_operation ON incidents (operation_id, id)
    WHERE operation_id IS NOT NULL;

-- Runtime flags, per (flag, market, segment): the current value, and every change with
-- the value it replaced (`from_value` NULL: the flag had never been set). A set writes
-- both in one transaction, the flag's row locked, so one flag's changes chain.
CREATE TABLE flags (
    name        text NOT NULL,
    market      text NOT NULL,
    segment     text NOT NULL,
    enabled     boolean NOT NULL,
    updated_at  timestamptz NOT NULL,
    updated_by  text NOT NULL,
    version     bigint NOT NULL,
    PRIMARY KEY (name, market, segment)
);
CREATE TABLE flag_changes (
    seq         bigserial PRIMARY KEY,
    name        text NOT NULL,
    market      text NOT NULL,
    segment     text NOT NULL,
    from_value  boolean,
    to_value    boolean NOT NULL,
    changed_by  text NOT NULL,
    reason      text,
    changed_at  timestamptz NOT NULL
);
CREATE INDEX flag_changes_by_flag ON flag_changes (name, market, segment, seq);
