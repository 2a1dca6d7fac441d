-- Events the projector could not decode or apply (malformed JSON, a value Postgres
-- refuses, an unknown type, a handler that failed): each is parked here, with the
-- error, in the same transaction that moves the checkpoint past it, so one bad event
-- never stops projection. `nebula replay` empties this table and parks again whatever
-- still fails. Not a read model: it is what the read models lack.
CREATE TABLE parked_events (
    seq         bigint      PRIMARY KEY,
    subject     text        NOT NULL,
    payload     bytea       NOT NULL,
    error       text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);

-- Every parking counts here, a replay's too: a counter for /metrics that only grows.
ALTER TABLE projection_checkpoints ADD COLUMN parked_total bigint NOT NULL DEFAULT 0;
