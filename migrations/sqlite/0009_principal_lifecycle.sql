-- The access lifecycle: a token expires, and a principal can be revoked. Principals made before
-- this migration get 90 days from now (the default lifetime), so none is locked out at once and
-- none keeps a token that never expires. Times are RFC 3339 in UTC.
ALTER TABLE principals ADD COLUMN expires_at TEXT;
ALTER TABLE principals ADD COLUMN revoked_at TEXT;
UPDATE principals SET expires_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '+90 days');
