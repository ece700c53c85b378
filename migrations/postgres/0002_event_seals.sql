-- Seals of the global stream, written by the sealer projection as it reads events in their fixed
-- order: one row per event, `ordinal` counting from 1. `leaf_hash` is SHA-256 over the stored
-- event row (eucora_projections::integrity::leaf_hash); `chain_hash` = SHA-256(previous chain ‖ leaf).
-- `eucora replay` recomputes both from the events and names the first position that disagrees.
-- The leaves are the inputs of a later Merkle log; signed checkpoints will sign (ordinal, chain).
CREATE TABLE event_seals
(
    ordinal    bigint PRIMARY KEY,
    position   bigint NOT NULL UNIQUE,
    leaf_hash  text   NOT NULL,
    chain_hash text   NOT NULL
);

CREATE TRIGGER event_seals_refuse_update_delete
    BEFORE UPDATE OR DELETE ON event_seals
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER event_seals_refuse_truncate
    BEFORE TRUNCATE ON event_seals
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
