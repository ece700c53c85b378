-- Emergency changes awaiting retrospective CAB approval, for the list's `retro_approval` filter:
-- 'pending', 'overdue' (pending past its due time), or NULL for every other intent. Rows written
-- before this column existed are filled from their state; the projection keeps it from now on.
ALTER TABLE intent_view ADD COLUMN retro_approval TEXT;

UPDATE intent_view
SET retro_approval = CASE
        WHEN json_extract(state, '$.retro_approval_overdue') = 1 THEN 'overdue'
        ELSE 'pending' END
WHERE json_extract(state, '$.retro_approval_pending') = 1;

CREATE INDEX intent_view_retro ON intent_view (retro_approval, seq) WHERE retro_approval IS NOT NULL;
