-- The Merkle log (RFC 9162 section 2.1) over the global stream replaces the hash chain of
-- event_seals: one leaf per event in the stream's fixed order, leaf index from 0, kept as tiles of
-- 256 leaves. A tile row holds its leaves' hashes (32 bytes each, in order) and their events'
-- global positions (8 bytes big-endian each); `subtree` is the head of the tile's 256 leaves once it
-- is full (NULL while it fills). Rebuilt from the events by the log projection: an existing store's
-- log starts from its events as they are stored at this upgrade.
DROP TABLE event_seals;

CREATE TABLE log_tiles
(
    tile      INTEGER PRIMARY KEY,
    leaves    BLOB NOT NULL,
    positions BLOB NOT NULL,
    subtree   BLOB
) STRICT;

-- A tile only grows: its leaves and positions so far stay as they are.
CREATE TRIGGER log_tiles_only_grow BEFORE UPDATE ON log_tiles
    WHEN substr(NEW.leaves, 1, length(OLD.leaves)) IS NOT OLD.leaves
      OR substr(NEW.positions, 1, length(OLD.positions)) IS NOT OLD.positions
      OR (OLD.subtree IS NOT NULL AND NEW.subtree IS NOT OLD.subtree)
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: a tile may only grow');
END;

-- As in 0004: REPLACE would delete the row it meets without a DELETE trigger. An insert that meets
-- a tile is refused unless it only grows it (the store's upsert, from this or another process).
CREATE TRIGGER log_tiles_refuse_replace BEFORE INSERT ON log_tiles
WHEN EXISTS (SELECT 1 FROM log_tiles
              WHERE tile = NEW.tile
                AND (substr(NEW.leaves, 1, length(leaves)) IS NOT leaves
                     OR substr(NEW.positions, 1, length(positions)) IS NOT positions
                     OR (subtree IS NOT NULL AND NEW.subtree IS NOT subtree)))
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: a tile may only grow');
END;

CREATE TRIGGER log_tiles_refuse_delete BEFORE DELETE ON log_tiles
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: DELETE refused');
END;

-- Signed checkpoints (C2SP tlog-checkpoint, signed as a C2SP signed note), one per tree size.
CREATE TABLE log_checkpoints
(
    tree_size INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    note      TEXT NOT NULL,
    signed_at TEXT NOT NULL
) STRICT;

CREATE TRIGGER log_checkpoints_refuse_replace BEFORE INSERT ON log_checkpoints
WHEN EXISTS (SELECT 1 FROM log_checkpoints
              WHERE tree_size = NEW.tree_size AND (root IS NOT NEW.root OR note IS NOT NEW.note))
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are append-only: a different checkpoint of this size exists');
END;

CREATE TRIGGER log_checkpoints_refuse_update BEFORE UPDATE ON log_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are append-only: UPDATE refused');
END;

CREATE TRIGGER log_checkpoints_refuse_delete BEFORE DELETE ON log_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are append-only: DELETE refused');
END;
