-- A disabled user's token is refused until the user is enabled again (a deleted user's
-- row goes, with their memberships).
ALTER TABLE users ADD COLUMN disabled boolean NOT NULL DEFAULT false;

-- An Idempotency-Key is claimed before its request is handled: no status and no
-- response while the request is in flight; a status and no response once it failed
-- (a retry runs again); both once answered (a retry gets the answer again). Records
-- expire after 24 hours and are purged by age.
ALTER TABLE idempotency_keys ALTER COLUMN status DROP NOT NULL;
ALTER TABLE idempotency_keys ALTER COLUMN response DROP NOT NULL;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
