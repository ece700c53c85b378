-- The console's overview counts intents by state and ring: an index answers it without reading
-- each row's folded state.
CREATE INDEX intent_view_status_ring ON intent_view (status, current_ring);
