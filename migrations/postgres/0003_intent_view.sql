-- The intent read model: one row per deployment intent, folded from the global stream by the
-- projection runner. `seq` is the ordinal of the intent's creation event in the global order (the
-- list's sort key and cursor); `stream_version` is the last event of the intent applied, so that a
-- second runner, or a replay, never applies an event twice. `state` is the folded state as JSON.
CREATE TABLE intent_view
(
    id             text PRIMARY KEY,
    seq            bigint  NOT NULL UNIQUE,
    status         text    NOT NULL,
    current_ring   text    NOT NULL,
    app_name       text    NOT NULL,
    stream_version bigint  NOT NULL,
    state          text    NOT NULL
);

CREATE INDEX intent_view_status ON intent_view (status, seq);
CREATE INDEX intent_view_app ON intent_view (app_name, seq);

-- Where each persisted projection has read the global stream up to: the last position applied
-- and how many events that was (the ordinal).
CREATE TABLE projection_checkpoints
(
    projection text PRIMARY KEY,
    position   bigint  NOT NULL,
    ordinal    bigint  NOT NULL
);
