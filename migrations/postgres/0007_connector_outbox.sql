-- The connector outbox (docs/connectors.md): one row per action owed to a connector, keyed by its
-- idempotency key (`<deployment id>:<RING>:<action>`), written by the outbox projection in the
-- transaction that moves its checkpoint, so an action is never lost and never queued twice.
-- The dispatchers of every server claim rows under a lease; times are wall-clock milliseconds since
-- the Unix epoch (operational state, not history: the history is the intent's dispatch events).
CREATE TABLE connector_outbox
(
    seq             BIGSERIAL PRIMARY KEY,
    idempotency_key TEXT    NOT NULL UNIQUE,
    deployment_id   TEXT    NOT NULL,
    ring            TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    -- The correlation id of the command that asked for it, carried onto its dispatch event.
    correlation_id  TEXT    NOT NULL,
    -- When the event that asked for the action was committed (its occurred_at).
    committed_ms    BIGINT  NOT NULL,
    -- pending, done (the connector accepted it), failed (refused for good), skipped (nothing to do).
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT  NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until_ms  BIGINT  NOT NULL DEFAULT 0,
    last_error      TEXT,
    first_call_ms   BIGINT,
    finished_ms     BIGINT
);

CREATE INDEX connector_outbox_pending ON connector_outbox (seq) WHERE state = 'pending';
CREATE INDEX connector_outbox_deployment ON connector_outbox (deployment_id, seq);

-- Where dispatch started: events up to this ordinal of the global stream were committed before
-- any connector was configured, and are not dispatched.
CREATE TABLE connector_dispatch_start
(
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    ordinal  BIGINT NOT NULL
);
