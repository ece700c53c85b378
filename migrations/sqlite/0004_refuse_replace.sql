-- REPLACE (`INSERT OR REPLACE`, `REPLACE INTO`, or an insert whose conflict clause is REPLACE)
-- resolves a conflict by deleting the existing row, and that delete fires no DELETE trigger unless
-- the connection turned `recursive_triggers` on, which an insider's own connection need not do. So
-- the append-only triggers of 0001 and 0002 could be bypassed by replacing a row.
--
-- These triggers run before SQLite resolves any conflict, and refuse an insert that would meet an
-- existing row. An append never meets one, except the loser of an optimistic-concurrency race,
-- which is refused here as the UNIQUE constraint would refuse it (the store reports it as a lost
-- race by this message).
CREATE TRIGGER events_refuse_replace_position BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE position = NEW.position)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: an insert over an existing position is refused');
END;

CREATE TRIGGER events_refuse_replace_version BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events
              WHERE aggregate_type = NEW.aggregate_type
                AND aggregate_id = NEW.aggregate_id
                AND sequence = NEW.sequence)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: an event of this stream version exists');
END;

-- Several processes may seal the same ordinals; they write identical rows and the store inserts
-- them with ON CONFLICT DO NOTHING. Only an insert that would meet a *different* seal is refused.
CREATE TRIGGER event_seals_refuse_replace BEFORE INSERT ON event_seals
WHEN EXISTS (SELECT 1 FROM event_seals
              WHERE (ordinal = NEW.ordinal
                     AND (position IS NOT NEW.position
                          OR leaf_hash IS NOT NEW.leaf_hash
                          OR chain_hash IS NOT NEW.chain_hash))
                 OR (position = NEW.position AND ordinal IS NOT NEW.ordinal))
BEGIN
    SELECT RAISE(ABORT, 'event seals are append-only: an insert over a different seal is refused');
END;
