-- A tile is append-only as a whole. 0007's triggers let a tile grow by anything, so an insider
-- could append a leaf for an event never stored and have `replay` report it deleted. Now the
-- database itself holds a tile to its shape: 1 to 256 leaves, one 32-byte hash per 8-byte
-- position; the subtree head set when the tile is full, and only then; a full tile never changes;
-- a partial one only grows at its end (0007); a tile is begun only after the one before it is
-- full; and every leaf added names an event that is stored. Whether each hash is the hash of its
-- event the database cannot compute; the log recomputes it at start-up, as it runs, and in
-- `eucora replay`. A trigger cannot use WITH, so the slots of a tile are a table.
CREATE TABLE log_tile_slots
(
    slot INTEGER PRIMARY KEY
) STRICT;

INSERT INTO log_tile_slots (slot)
WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < 255)
SELECT n FROM s;

CREATE TRIGGER log_tile_slots_refuse_change BEFORE UPDATE ON log_tile_slots
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: its slots are fixed');
END;

CREATE TRIGGER log_tile_slots_refuse_delete BEFORE DELETE ON log_tile_slots
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: its slots are fixed');
END;

CREATE TRIGGER log_tiles_shape_on_insert BEFORE INSERT ON log_tiles
    WHEN length(NEW.positions) % 8 != 0 OR length(NEW.leaves) != length(NEW.positions) * 4
      OR length(NEW.positions) = 0 OR length(NEW.positions) > 2048
      OR ((NEW.subtree IS NOT NULL) != (length(NEW.positions) = 2048))
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: a tile holds 1 to 256 leaves, a hash for each position, and its subtree head once full');
END;

CREATE TRIGGER log_tiles_shape_on_update BEFORE UPDATE ON log_tiles
    WHEN length(NEW.positions) % 8 != 0 OR length(NEW.leaves) != length(NEW.positions) * 4
      OR length(NEW.positions) = 0 OR length(NEW.positions) > 2048
      OR ((NEW.subtree IS NOT NULL) != (length(NEW.positions) = 2048))
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: a tile holds 1 to 256 leaves, a hash for each position, and its subtree head once full');
END;

CREATE TRIGGER log_tiles_full_never_change BEFORE UPDATE ON log_tiles
    WHEN NEW.tile IS NOT OLD.tile
      OR (OLD.subtree IS NOT NULL AND (NEW.leaves IS NOT OLD.leaves
          OR NEW.positions IS NOT OLD.positions OR NEW.subtree IS NOT OLD.subtree))
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: a full tile never changes');
END;

CREATE TRIGGER log_tiles_begin_in_order BEFORE INSERT ON log_tiles
    WHEN NOT EXISTS (SELECT 1 FROM log_tiles WHERE tile = NEW.tile)
     AND (NEW.tile < 0 OR (NEW.tile > 0 AND NOT EXISTS (
          SELECT 1 FROM log_tiles WHERE tile = NEW.tile - 1 AND subtree IS NOT NULL)))
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: a tile is begun only after the tile before it is full');
END;

-- A leaf's position, read from its 8 big-endian bytes (hex digit by hex digit: SQLite has no
-- blob-to-integer cast), must be a stored event's.
CREATE TRIGGER log_tiles_name_events_on_insert BEFORE INSERT ON log_tiles
    WHEN NOT EXISTS (SELECT 1 FROM log_tiles WHERE tile = NEW.tile)
     AND EXISTS (SELECT 1 FROM log_tile_slots
                 WHERE slot < length(NEW.positions) / 8
                   AND NOT EXISTS (SELECT 1 FROM events WHERE position =
                 (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 1, 1)) - 1) * 1152921504606846976
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 2, 1)) - 1) * 72057594037927936
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 3, 1)) - 1) * 4503599627370496
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 4, 1)) - 1) * 281474976710656
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 5, 1)) - 1) * 17592186044416
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 6, 1)) - 1) * 1099511627776
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 7, 1)) - 1) * 68719476736
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 8, 1)) - 1) * 4294967296
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 9, 1)) - 1) * 268435456
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 10, 1)) - 1) * 16777216
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 11, 1)) - 1) * 1048576
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 12, 1)) - 1) * 65536
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 13, 1)) - 1) * 4096
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 14, 1)) - 1) * 256
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 15, 1)) - 1) * 16
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 16, 1)) - 1) * 1))
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: every leaf names a stored event');
END;

CREATE TRIGGER log_tiles_name_events_on_update BEFORE UPDATE ON log_tiles
    WHEN EXISTS (SELECT 1 FROM log_tile_slots
                 WHERE slot >= length(OLD.positions) / 8 AND slot < length(NEW.positions) / 8
                   AND NOT EXISTS (SELECT 1 FROM events WHERE position =
                 (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 1, 1)) - 1) * 1152921504606846976
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 2, 1)) - 1) * 72057594037927936
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 3, 1)) - 1) * 4503599627370496
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 4, 1)) - 1) * 281474976710656
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 5, 1)) - 1) * 17592186044416
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 6, 1)) - 1) * 1099511627776
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 7, 1)) - 1) * 68719476736
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 8, 1)) - 1) * 4294967296
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 9, 1)) - 1) * 268435456
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 10, 1)) - 1) * 16777216
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 11, 1)) - 1) * 1048576
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 12, 1)) - 1) * 65536
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 13, 1)) - 1) * 4096
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 14, 1)) - 1) * 256
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 15, 1)) - 1) * 16
                 + (instr('0123456789ABCDEF', substr(hex(substr(NEW.positions, slot * 8 + 1, 8)), 16, 1)) - 1) * 1))
BEGIN
    SELECT RAISE(ABORT, 'the log is append-only: every leaf names a stored event');
END;
