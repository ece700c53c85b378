-- A tile is append-only as a whole. 0006's trigger let a tile grow by anything, so an insider
-- could append a leaf for an event never stored and have `replay` report it deleted. Now the
-- database itself holds a tile to its shape: 1 to 256 leaves, one 32-byte hash per 8-byte
-- position; the subtree head set when the tile is full, and only then; a full tile never changes;
-- a partial one only grows at its end; a tile is begun only after the one before it is full; and
-- every leaf added names an event that is stored. Whether each hash is the hash of its event the
-- database cannot compute; the log recomputes it at start-up, as it runs, and in `eucora replay`.
CREATE FUNCTION log_tile_position(positions bytea, slot integer) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS
$$ SELECT ('x' || encode(substring(positions FROM slot * 8 + 1 FOR 8), 'hex'))::bit(64)::bigint $$;

CREATE OR REPLACE FUNCTION log_tiles_only_grow() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    slots integer;
    kept  integer := 0;
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the log is append-only: DELETE refused';
    END IF;
    slots := length(NEW.positions) / 8;
    IF length(NEW.positions) % 8 <> 0 OR length(NEW.leaves) <> slots * 32
        OR slots = 0 OR slots > 256 THEN
        RAISE EXCEPTION 'the log is append-only: a tile holds 1 to 256 leaves, a 32-byte hash for each 8-byte position';
    END IF;
    IF (NEW.subtree IS NOT NULL) <> (slots = 256) THEN
        RAISE EXCEPTION 'the log is append-only: a tile''s subtree head is set when it is full, and only then';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.tile <> OLD.tile
            OR (OLD.subtree IS NOT NULL AND (NEW.leaves, NEW.positions, NEW.subtree)
                IS DISTINCT FROM (OLD.leaves, OLD.positions, OLD.subtree)) THEN
            RAISE EXCEPTION 'the log is append-only: a full tile never changes';
        END IF;
        IF substring(NEW.leaves FROM 1 FOR length(OLD.leaves)) IS DISTINCT FROM OLD.leaves
            OR substring(NEW.positions FROM 1 FOR length(OLD.positions)) IS DISTINCT FROM OLD.positions THEN
            RAISE EXCEPTION 'the log is append-only: a tile may only grow';
        END IF;
        kept := length(OLD.positions) / 8;
    ELSIF EXISTS (SELECT 1 FROM log_tiles WHERE tile = NEW.tile) THEN
        -- An upsert meeting the tile: the UPDATE, if any, is checked above.
        RETURN NEW;
    ELSIF NEW.tile < 0 OR (NEW.tile > 0 AND NOT EXISTS (
        SELECT 1 FROM log_tiles WHERE tile = NEW.tile - 1 AND subtree IS NOT NULL)) THEN
        RAISE EXCEPTION 'the log is append-only: tile % is begun only after the tile before it is full', NEW.tile;
    END IF;
    IF EXISTS (SELECT 1 FROM generate_series(kept, slots - 1) AS slot
               WHERE NOT EXISTS (SELECT 1 FROM events
                                 WHERE position = log_tile_position(NEW.positions, slot))) THEN
        RAISE EXCEPTION 'the log is append-only: every leaf names a stored event';
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER log_tiles_only_grow ON log_tiles;
CREATE TRIGGER log_tiles_only_grow
    BEFORE INSERT OR UPDATE OR DELETE ON log_tiles
    FOR EACH ROW EXECUTE FUNCTION log_tiles_only_grow();
