-- The state store of marketo-sync (PostgreSQL). See DESIGN.md section 3.

-- One row per synced record pair, with the canonical values both sides last agreed on.
CREATE TABLE links (
    object      TEXT        NOT NULL,
    marketo_key TEXT        NOT NULL,
    crm_key     TEXT        NOT NULL,
    base        JSONB       NOT NULL,
    base_hash   TEXT        NOT NULL,
    agreed_at   TIMESTAMPTZ NOT NULL,
    tombstone   JSONB       NULL,
    PRIMARY KEY (object, marketo_key)
);
CREATE INDEX links_by_crm_key ON links (object, crm_key);

-- The high watermark per (system, object, queue).
CREATE TABLE watermarks (
    system     TEXT        NOT NULL,
    object     TEXT        NOT NULL,
    queue      TEXT        NOT NULL,
    at         TIMESTAMPTZ NOT NULL,
    tie        TEXT        NULL,
    cursor_state JSONB     NULL,
    PRIMARY KEY (system, object, queue)
);

-- Every bulk export or import job the service created, written before it is enqueued.
CREATE TABLE bulk_jobs (
    direction    TEXT        NOT NULL CHECK (direction IN ('export', 'import')),
    id           TEXT        NOT NULL,
    kind         TEXT        NOT NULL,
    object       TEXT        NOT NULL,
    window_start TIMESTAMPTZ NULL,
    window_end   TIMESTAMPTZ NULL,
    state        TEXT        NOT NULL,
    bytes        BIGINT      NOT NULL,
    file_path    TEXT        NULL,
    file_offset  BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (direction, id)
);
CREATE INDEX bulk_jobs_by_state ON bulk_jobs (state);

-- Marketo calls and bulk-extract bytes per Marketo day (America/Chicago).
CREATE TABLE api_usage (
    day        DATE   NOT NULL PRIMARY KEY,
    calls      BIGINT NOT NULL,
    bulk_bytes BIGINT NOT NULL
);

-- The last Describe result per (side, object).
CREATE TABLE schemas (
    side       TEXT        NOT NULL,
    object     TEXT        NOT NULL,
    hash       TEXT        NOT NULL,
    schema     JSONB       NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (side, object)
);

-- One row per cycle.
CREATE TABLE cycles (
    id         UUID        NOT NULL PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at   TIMESTAMPTZ NULL,
    outcome    TEXT        NOT NULL,
    steps      JSONB       NOT NULL,
    counts     JSONB       NOT NULL,
    api_calls  BIGINT      NOT NULL,
    message    TEXT        NULL
);
CREATE INDEX cycles_by_start ON cycles (started_at);

-- Per-record failures; one row per (object, direction, record key).
CREATE TABLE sync_errors (
    id            UUID        NOT NULL PRIMARY KEY,
    object        TEXT        NOT NULL,
    direction     TEXT        NOT NULL,
    record_key    TEXT        NOT NULL,
    other_key     TEXT        NULL,
    payload       JSONB       NOT NULL,
    code          TEXT        NOT NULL,
    message       TEXT        NOT NULL,
    attempts      BIGINT      NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at  TIMESTAMPTZ NOT NULL,
    next_retry_at TIMESTAMPTZ NULL,
    status        TEXT        NOT NULL CHECK (status IN ('open', 'discarded', 'resolved')),
    UNIQUE (object, direction, record_key)
);
CREATE INDEX sync_errors_due ON sync_errors (status, next_retry_at);

-- Every conflict, with both values and the base.
CREATE TABLE conflicts (
    id            BIGSERIAL   NOT NULL PRIMARY KEY,
    object        TEXT        NOT NULL,
    marketo_key   TEXT        NOT NULL,
    crm_key       TEXT        NOT NULL,
    field         TEXT        NOT NULL,
    marketo_value JSONB       NOT NULL,
    crm_value     JSONB       NOT NULL,
    base_value    JSONB       NULL,
    winner        TEXT        NOT NULL,
    policy        TEXT        NOT NULL,
    at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX conflicts_by_at ON conflicts (at);

-- Which process runs which Marketo instance.
CREATE TABLE leases (
    instance    TEXT        NOT NULL PRIMARY KEY,
    holder      TEXT        NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
