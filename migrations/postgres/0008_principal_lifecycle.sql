-- The access lifecycle: a token expires, and a principal can be revoked. Principals made before
-- this migration get 90 days from now (the default lifetime), so none is locked out at once and
-- none keeps a token that never expires.
ALTER TABLE principals ADD COLUMN expires_at timestamptz;
ALTER TABLE principals ADD COLUMN revoked_at timestamptz;
UPDATE principals SET expires_at = now() + interval '90 days';
ALTER TABLE principals ALTER COLUMN expires_at SET NOT NULL;
