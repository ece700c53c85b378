-- Console sessions: a signed-in browser, known by the SHA-256 of its session cookie (never the
-- cookie), bound to the SHA-256 of the bearer token it signed in with. Each request looks the
-- token up as the API does, so revoking, rotating or expiring the token ends its sessions at once
-- on every replica. A session idle longer than the server's idle timeout is refused and deleted.
-- Times are microseconds since the epoch.
CREATE TABLE console_sessions
(
    session_hash text PRIMARY KEY,
    token_hash   text        NOT NULL,
    created_at   bigint      NOT NULL,
    last_seen_at bigint      NOT NULL
);

CREATE INDEX console_sessions_last_seen ON console_sessions (last_seen_at);
