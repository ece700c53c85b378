-- The event store, in cqrs-es's table shape (postgres-es reads and writes these columns), extended
-- with what the global stream needs.
--
-- `position` comes from a sequence, so its values become visible at commit, not in order: a reader
-- that only remembered "the highest position seen" would skip an event committed late by a slow
-- transaction. `xact_id` records the writing transaction, so a reader can take only transactions
-- older than every transaction still running (pg_snapshot_xmin) and order by (xact_id, position),
-- an order that never changes once read, without a global lock around writers.
--
-- Payloads stay `json`, not `jsonb`: the bytes are kept exactly as written, for integrity hashing.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    position       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    xact_id        xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_global_order ON events (xact_id, position);

-- Append-only for real: history is never edited or removed, whoever asks.
CREATE FUNCTION events_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER events_refuse_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_refuse_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Who may call the API: a subject acting in one role, known by the SHA-256 of its bearer token.
-- The token itself is never stored.
CREATE TABLE principals
(
    id         uuid PRIMARY KEY,
    subject    text        NOT NULL,
    role       text        NOT NULL CHECK (role IN ('requester', 'cab_approver', 'deployer', 'auditor', 'admin')),
    token_hash text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

-- Idempotency-Key records, per subject: the request's hash and, once answered, the response.
-- A row without a status is a request still in flight.
CREATE TABLE idempotency_keys
(
    subject      text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status       integer,
    response     text,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (subject, key)
);
