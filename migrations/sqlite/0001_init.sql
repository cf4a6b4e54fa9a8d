-- The state store of marketo-sync (SQLite; timestamps are RFC 3339 UTC text, JSON is text).
-- See DESIGN.md section 3. Statements are idempotent (IF NOT EXISTS) because SQLite has no
-- migration lock: two processes opening a fresh file at once may both run this script.

-- One row per synced record pair, with the canonical values both sides last agreed on.
CREATE TABLE IF NOT EXISTS links (
    object      TEXT        NOT NULL,
    marketo_key TEXT        NOT NULL,
    crm_key     TEXT        NOT NULL,
    base        TEXT        NOT NULL,
    base_hash   TEXT        NOT NULL,
    agreed_at   TEXT        NOT NULL,
    tombstone   TEXT        NULL,
    PRIMARY KEY (object, marketo_key)
);
CREATE INDEX IF NOT EXISTS links_by_crm_key ON links (object, crm_key);

-- The high watermark per (system, object, queue).
CREATE TABLE IF NOT EXISTS watermarks (
    system     TEXT        NOT NULL,
    object     TEXT        NOT NULL,
    queue      TEXT        NOT NULL,
    at         TEXT        NOT NULL,
    tie        TEXT        NULL,
    cursor_state TEXT      NULL,
    PRIMARY KEY (system, object, queue)
);

-- Every bulk export or import job the service created, written before it is enqueued.
CREATE TABLE IF NOT EXISTS bulk_jobs (
    direction    TEXT        NOT NULL CHECK (direction IN ('export', 'import')),
    id           TEXT        NOT NULL,
    kind         TEXT        NOT NULL,
    object       TEXT        NOT NULL,
    window_start TEXT        NULL,
    window_end   TEXT        NULL,
    state        TEXT        NOT NULL,
    bytes        INTEGER      NOT NULL,
    file_path    TEXT        NULL,
    file_offset  INTEGER      NOT NULL,
    created_at   TEXT        NOT NULL,
    updated_at   TEXT        NOT NULL,
    PRIMARY KEY (direction, id)
);
CREATE INDEX IF NOT EXISTS bulk_jobs_by_state ON bulk_jobs (state);

-- Marketo calls and bulk-extract bytes per Marketo day (America/Chicago).
CREATE TABLE IF NOT EXISTS api_usage (
    day        TEXT   NOT NULL PRIMARY KEY,
    calls      INTEGER NOT NULL,
    bulk_bytes INTEGER NOT NULL
);

-- The last Describe result per (side, object).
CREATE TABLE IF NOT EXISTS schemas (
    side       TEXT        NOT NULL,
    object     TEXT        NOT NULL,
    hash       TEXT        NOT NULL,
    schema     TEXT        NOT NULL,
    fetched_at TEXT        NOT NULL,
    PRIMARY KEY (side, object)
);

-- One row per cycle.
CREATE TABLE IF NOT EXISTS cycles (
    id         BLOB        NOT NULL PRIMARY KEY,
    started_at TEXT        NOT NULL,
    ended_at   TEXT        NULL,
    outcome    TEXT        NOT NULL,
    steps      TEXT        NOT NULL,
    counts     TEXT        NOT NULL,
    api_calls  INTEGER      NOT NULL,
    message    TEXT        NULL
);
CREATE INDEX IF NOT EXISTS cycles_by_start ON cycles (started_at);

-- Per-record failures; one row per (object, direction, record key).
CREATE TABLE IF NOT EXISTS sync_errors (
    id            BLOB        NOT NULL PRIMARY KEY,
    object        TEXT        NOT NULL,
    direction     TEXT        NOT NULL,
    record_key    TEXT        NOT NULL,
    other_key     TEXT        NULL,
    payload       TEXT        NOT NULL,
    code          TEXT        NOT NULL,
    message       TEXT        NOT NULL,
    attempts      INTEGER      NOT NULL,
    first_seen_at TEXT        NOT NULL,
    last_seen_at  TEXT        NOT NULL,
    next_retry_at TEXT        NULL,
    status        TEXT        NOT NULL CHECK (status IN ('open', 'discarded', 'resolved')),
    UNIQUE (object, direction, record_key)
);
CREATE INDEX IF NOT EXISTS sync_errors_due ON sync_errors (status, next_retry_at);

-- Every conflict, with both values and the base.
CREATE TABLE IF NOT EXISTS conflicts (
    id            INTEGER     PRIMARY KEY AUTOINCREMENT,
    object        TEXT        NOT NULL,
    marketo_key   TEXT        NOT NULL,
    crm_key       TEXT        NOT NULL,
    field         TEXT        NOT NULL,
    marketo_value TEXT        NOT NULL,
    crm_value     TEXT        NOT NULL,
    base_value    TEXT        NULL,
    winner        TEXT        NOT NULL,
    policy        TEXT        NOT NULL,
    at            TEXT        NOT NULL
);
CREATE INDEX IF NOT EXISTS conflicts_by_at ON conflicts (at);

-- Which process runs which Marketo instance.
CREATE TABLE IF NOT EXISTS leases (
    instance    TEXT        NOT NULL PRIMARY KEY,
    holder      TEXT        NOT NULL,
    acquired_at TEXT        NOT NULL,
    expires_at  TEXT        NOT NULL
);
