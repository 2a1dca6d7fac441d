-- One row per projection: the last stream sequence it applied. A projector writes
-- this row in the same transaction as the read-model rows it covers, so after a crash
-- it resumes exactly after the last committed event.
CREATE TABLE projection_checkpoints (
    projection  text        PRIMARY KEY,
    last_seq    bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
