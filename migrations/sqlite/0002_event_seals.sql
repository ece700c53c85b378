-- Seals of the global stream, written by the sealer projection as it reads events in their fixed
-- order: one row per event, `ordinal` counting from 1. `leaf_hash` is SHA-256 over the stored
-- event row (eucora_projections::integrity::leaf_hash); `chain_hash` = SHA-256(previous chain ‖ leaf).
-- `eucora replay` recomputes both from the events and names the first position that disagrees.
-- The leaves are the inputs of a later Merkle log; signed checkpoints will sign (ordinal, chain).
CREATE TABLE event_seals
(
    ordinal    INTEGER PRIMARY KEY,
    position   INTEGER NOT NULL UNIQUE,
    leaf_hash  TEXT    NOT NULL,
    chain_hash TEXT    NOT NULL
) STRICT;

CREATE TRIGGER event_seals_refuse_update BEFORE UPDATE ON event_seals
BEGIN
    SELECT RAISE(ABORT, 'event seals are append-only: UPDATE refused');
END;

CREATE TRIGGER event_seals_refuse_delete BEFORE DELETE ON event_seals
BEGIN
    SELECT RAISE(ABORT, 'event seals are append-only: DELETE refused');
END;
