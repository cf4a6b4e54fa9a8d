-- Totals kept by record_cycle in the cycle's own transaction (not derived from the retained
-- cycles), and the last successful cycle per object (the base of the status page's lag).

-- Record totals per object and direction ('none' for counts without a direction).
CREATE TABLE sync_totals (
    object     TEXT    NOT NULL,
    direction  TEXT    NOT NULL,
    read       BIGINT  NOT NULL DEFAULT 0,
    created    BIGINT  NOT NULL DEFAULT 0,
    updated    BIGINT  NOT NULL DEFAULT 0,
    deleted    BIGINT  NOT NULL DEFAULT 0,
    conflicts  BIGINT  NOT NULL DEFAULT 0,
    skipped    BIGINT  NOT NULL DEFAULT 0,
    failed     BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (object, direction)
);

-- Cycles and the Marketo calls they used, per outcome.
CREATE TABLE cycle_totals (
    outcome    TEXT    NOT NULL PRIMARY KEY,
    cycles     BIGINT  NOT NULL DEFAULT 0,
    api_calls  BIGINT  NOT NULL DEFAULT 0
);

-- The last succeeded or partial cycle that had counts for an object.
CREATE TABLE object_success (
    object     TEXT        NOT NULL PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at   TIMESTAMPTZ NOT NULL
);

-- The ledger summary groups open errors by object and direction.
CREATE INDEX sync_errors_by_object ON sync_errors (status, object, direction);

-- Backfill from the cycles recorded before this migration.
INSERT INTO sync_totals (object, direction, read, created, updated, deleted, conflicts, skipped, failed)
SELECT e->>'object',
       COALESCE(e->>'direction', 'none'),
       SUM(COALESCE((e->>'read')::BIGINT, 0)),
       SUM(COALESCE((e->>'created')::BIGINT, 0)),
       SUM(COALESCE((e->>'updated')::BIGINT, 0)),
       SUM(COALESCE((e->>'deleted')::BIGINT, 0)),
       SUM(COALESCE((e->>'conflicts')::BIGINT, 0)),
       SUM(COALESCE((e->>'skipped')::BIGINT, 0)),
       SUM(COALESCE((e->>'failed')::BIGINT, 0))
FROM cycles, jsonb_array_elements(cycles.counts) AS e
GROUP BY 1, 2;

INSERT INTO cycle_totals (outcome, cycles, api_calls)
SELECT outcome, COUNT(*), SUM(api_calls) FROM cycles GROUP BY outcome;

INSERT INTO object_success (object, started_at, ended_at)
SELECT e->>'object', MAX(cycles.started_at), MAX(cycles.ended_at)
FROM cycles, jsonb_array_elements(cycles.counts) AS e
WHERE cycles.outcome IN ('succeeded', 'partial') AND cycles.ended_at IS NOT NULL
GROUP BY 1;
