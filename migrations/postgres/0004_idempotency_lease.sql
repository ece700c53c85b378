-- A reservation is held by one server process (`holder`) until `lease_until` (Unix milliseconds),
-- which the holder renews while its write runs. A holder that died (kill -9, power loss) stops
-- renewing, so its keys are free to be taken over seconds later: the taker first looks for the
-- events the dead holder's write committed (they carry the key's digest in their metadata), and
-- answers with them, or runs the write itself. `intent_id` is the intent the write acts on (for a
-- create, the id it was given), where those events would be. Rows from before this migration have
-- no lease and count as expired.
ALTER TABLE idempotency_keys
    ADD COLUMN holder      text,
    ADD COLUMN lease_until bigint,
    ADD COLUMN intent_id   text;
