-- An instance's addresses as its node last saw them: [{network, mac, ipv4}, ...].
ALTER TABLE instances ADD COLUMN addresses jsonb NOT NULL DEFAULT '[]';

-- SSH keypairs: each principal's OpenSSH public keys, by name (unique among the ones
-- not deleted, as the API checks).
CREATE TABLE keypairs (
    id          uuid        PRIMARY KEY,
    owner       text        NOT NULL,
    name        text        NOT NULL,
    public_key  text        NOT NULL,
    fingerprint text        NOT NULL,
    deleted     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    version     integer     NOT NULL,
    last_seq    bigint      NOT NULL
);
CREATE INDEX keypairs_by_owner ON keypairs (owner, name) WHERE NOT deleted;

-- The user an image's cloud-init installs keypairs for (`nebula instance ssh` logs in as it).
ALTER TABLE images ADD COLUMN default_user text NOT NULL DEFAULT '';
