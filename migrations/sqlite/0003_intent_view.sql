-- The intent read model: one row per deployment intent, folded from the global stream by the
-- projection runner. `seq` is the ordinal of the intent's creation event in the global order (the
-- list's sort key and cursor); `stream_version` is the last event of the intent applied, so that a
-- second runner, or a replay, never applies an event twice. `state` is the folded state as JSON.
CREATE TABLE intent_view
(
    id             TEXT PRIMARY KEY,
    seq            INTEGER NOT NULL UNIQUE,
    status         TEXT    NOT NULL,
    current_ring   TEXT    NOT NULL,
    app_name       TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    state          TEXT    NOT NULL
) STRICT;

CREATE INDEX intent_view_status ON intent_view (status, seq);
CREATE INDEX intent_view_app ON intent_view (app_name, seq);

-- Where each persisted projection has read the global stream up to: the last position applied
-- and how many events that was (the ordinal).
CREATE TABLE projection_checkpoints
(
    projection TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    ordinal    INTEGER NOT NULL
) STRICT;
