-- An intent's external change reference (a ServiceNow CHG number, a Jira key), for the list's
-- `change_ref` filter. Intents requested before references were recorded have none; the
-- projection keeps the column from now on.
ALTER TABLE intent_view ADD COLUMN change_ref TEXT;

UPDATE intent_view SET change_ref = json_extract(state, '$.change_ref')
WHERE json_extract(state, '$.change_ref') IS NOT NULL;

CREATE INDEX intent_view_change_ref ON intent_view (change_ref, seq) WHERE change_ref IS NOT NULL;
