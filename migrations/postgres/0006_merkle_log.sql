-- The Merkle log (RFC 9162 section 2.1) over the global stream replaces the hash chain of
-- event_seals: one leaf per event in the stream's fixed order, leaf index from 0, kept as tiles of
-- 256 leaves. A tile row holds its leaves' hashes (32 bytes each, in order) and their events'
-- global positions (8 bytes big-endian each); `subtree` is the head of the tile's 256 leaves once it
-- is full (NULL while it fills). Rebuilt from the events by the log projection: an existing store's
-- log starts from its events as they are stored at this upgrade.
DROP TABLE event_seals;

CREATE TABLE log_tiles
(
    tile      bigint PRIMARY KEY,
    leaves    bytea NOT NULL,
    positions bytea NOT NULL,
    subtree   bytea
);

-- A tile only grows: its leaves and positions so far stay as they are.
CREATE FUNCTION log_tiles_only_grow() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_OP = 'DELETE'
        OR substring(NEW.leaves FROM 1 FOR length(OLD.leaves)) IS DISTINCT FROM OLD.leaves
        OR substring(NEW.positions FROM 1 FOR length(OLD.positions)) IS DISTINCT FROM OLD.positions
        OR (OLD.subtree IS NOT NULL AND NEW.subtree IS DISTINCT FROM OLD.subtree) THEN
        RAISE EXCEPTION 'the log is append-only: % refused', TG_OP;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER log_tiles_only_grow
    BEFORE UPDATE OR DELETE ON log_tiles
    FOR EACH ROW EXECUTE FUNCTION log_tiles_only_grow();

CREATE TRIGGER log_tiles_refuse_truncate
    BEFORE TRUNCATE ON log_tiles
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Signed checkpoints (C2SP tlog-checkpoint, signed as a C2SP signed note), one per tree size.
CREATE TABLE log_checkpoints
(
    tree_size bigint PRIMARY KEY,
    root      bytea       NOT NULL,
    note      text        NOT NULL,
    signed_at timestamptz NOT NULL
);

CREATE TRIGGER log_checkpoints_refuse_change
    BEFORE UPDATE OR DELETE ON log_checkpoints
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER log_checkpoints_refuse_truncate
    BEFORE TRUNCATE ON log_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
