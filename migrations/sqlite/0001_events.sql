-- The event store, in cqrs-es's table shape (sqlite-es reads and writes these columns), extended
-- with the global position that the projection runner reads the whole store by.
--
-- `position` is the rowid alias with AUTOINCREMENT: SQLite has one writer at a time, so it is commit
-- order, it is never reused, and VACUUM never renumbers it. Optimistic concurrency rests on the
-- UNIQUE (aggregate_type, aggregate_id, sequence) constraint: the loser of a race gets a conflict.
CREATE TABLE events
(
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT                           NOT NULL,
    aggregate_id   TEXT                           NOT NULL,
    sequence       INTEGER CHECK (sequence >= 0) NOT NULL,
    event_type     TEXT                           NOT NULL,
    event_version  TEXT                           NOT NULL,
    payload        TEXT                           NOT NULL,
    metadata       TEXT                           NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence)
) STRICT;

-- Append-only for real: history is never edited or removed, whoever asks.
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE refused');
END;

CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE refused');
END;

-- Who may call the API: a subject acting in one role, known by the SHA-256 of its bearer token.
-- The token itself is never stored.
CREATE TABLE principals
(
    id         TEXT PRIMARY KEY,
    subject    TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('requester', 'cab_approver', 'deployer', 'auditor', 'admin')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
) STRICT;

-- Idempotency-Key records, per subject: the request's hash and, once answered, the response.
-- A row without a status is a request still in flight.
CREATE TABLE idempotency_keys
(
    subject       TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    status        INTEGER,
    response      TEXT,
    created_at    TEXT    NOT NULL,
    PRIMARY KEY (subject, key)
) STRICT;
