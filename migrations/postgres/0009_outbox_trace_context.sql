-- The W3C trace context (`traceparent`) of the command that queued each connector action, from
-- its event's metadata, so that the dispatch and its calls to the connector join that command's
-- trace. Null for actions queued before this migration and for commands that were not traced.
ALTER TABLE connector_outbox ADD COLUMN traceparent TEXT;
