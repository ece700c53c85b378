-- A connector's own principal (role connector, subject connector:<name>) pushes its results.
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt with the same rows.
CREATE TABLE principals_next
(
    id         TEXT PRIMARY KEY,
    subject    TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('requester', 'cab_approver', 'deployer', 'auditor', 'admin', 'connector')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
) STRICT;
INSERT INTO principals_next (id, subject, role, token_hash, created_at, expires_at, revoked_at)
    SELECT id, subject, role, token_hash, created_at, expires_at, revoked_at FROM principals;
DROP TABLE principals;
ALTER TABLE principals_next RENAME TO principals;
