-- Read models projected from NEBULA_EVENTS by `nebula projector`. Every row can be
-- rebuilt from the stream (`nebula replay`); `version`/`last_seq` say which event last
-- touched a row.

CREATE TABLE projects (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    tags        jsonb       NOT NULL DEFAULT '{}',
    quotas      jsonb       NOT NULL,
    deleted     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    version     integer     NOT NULL,
    last_seq    bigint      NOT NULL
);

CREATE TABLE users (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    token_hash  text        NOT NULL UNIQUE,
    is_admin    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    version     integer     NOT NULL,
    last_seq    bigint      NOT NULL
);

CREATE TABLE memberships (
    project_id  uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('admin', 'member', 'reader')),
    since       timestamptz NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id);

CREATE TABLE images (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    format      text        NOT NULL,
    source      text        NOT NULL,
    sha256      text        NOT NULL,
    size        bigint      NOT NULL,
    min_disk_gb integer     NOT NULL DEFAULT 0,
    deleted     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    version     integer     NOT NULL,
    last_seq    bigint      NOT NULL
);
CREATE INDEX images_by_name ON images (name) WHERE NOT deleted;

CREATE TABLE nodes (
    id              text        PRIMARY KEY,     -- the operator-chosen node id
    aggregate_id    uuid        NOT NULL UNIQUE,
    region          text        NOT NULL,
    vcpus           integer     NOT NULL,
    ram_mb          bigint      NOT NULL,
    disk_gb         bigint      NOT NULL,
    cpu_ratio       real        NOT NULL,
    ram_ratio       real        NOT NULL,
    disk_ratio      real        NOT NULL,
    alloc_vcpus     integer     NOT NULL DEFAULT 0,
    alloc_ram_mb    bigint      NOT NULL DEFAULT 0,
    alloc_disk_gb   bigint      NOT NULL DEFAULT 0,
    instances       integer     NOT NULL DEFAULT 0,
    down            boolean     NOT NULL DEFAULT false,
    agent_version   text        NOT NULL,
    registered_at   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         integer     NOT NULL,
    last_seq        bigint      NOT NULL
);

CREATE TABLE node_claims (
    node_id     text        NOT NULL,
    instance_id uuid        NOT NULL,
    vcpus       integer     NOT NULL,
    ram_mb      bigint      NOT NULL,
    disk_gb     bigint      NOT NULL,
    PRIMARY KEY (node_id, instance_id)
);

CREATE TABLE instances (
    id                uuid        PRIMARY KEY,
    project_id        uuid        NOT NULL,
    owner_id          uuid        NOT NULL,
    name              text        NOT NULL,
    description       text        NOT NULL DEFAULT '',
    tags              jsonb       NOT NULL DEFAULT '{}',
    region            text        NOT NULL,
    vcpus             integer     NOT NULL,
    ram_mb            integer     NOT NULL,
    disk_gb           integer     NOT NULL,
    image_id          uuid        NOT NULL,
    user_data_size    integer     NOT NULL DEFAULT 0,
    user_data_sha256  text        NOT NULL,
    state             text        NOT NULL,
    node_id           text,
    error             text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    booted_at         timestamptz,
    version           integer     NOT NULL,
    last_seq          bigint      NOT NULL
);
CREATE INDEX instances_by_project ON instances (project_id, created_at, id);
CREATE INDEX instances_by_state ON instances (state);
CREATE INDEX instances_by_node ON instances (node_id) WHERE node_id IS NOT NULL;
CREATE INDEX instances_by_tags ON instances USING gin (tags);
