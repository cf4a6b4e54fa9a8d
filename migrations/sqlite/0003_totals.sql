-- Totals kept by record_cycle in the cycle's own transaction (not derived from the retained
-- cycles), and the last successful cycle per object (the base of the status page's lag).
-- Idempotent like the other SQLite scripts (no migration lock on SQLite).

-- Record totals per object and direction ('none' for counts without a direction).
CREATE TABLE IF NOT EXISTS sync_totals (
    object     TEXT    NOT NULL,
    direction  TEXT    NOT NULL,
    read       INTEGER NOT NULL DEFAULT 0,
    created    INTEGER NOT NULL DEFAULT 0,
    updated    INTEGER NOT NULL DEFAULT 0,
    deleted    INTEGER NOT NULL DEFAULT 0,
    conflicts  INTEGER NOT NULL DEFAULT 0,
    skipped    INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (object, direction)
);

-- Cycles and the Marketo calls they used, per outcome.
CREATE TABLE IF NOT EXISTS cycle_totals (
    outcome    TEXT    NOT NULL PRIMARY KEY,
    cycles     INTEGER NOT NULL DEFAULT 0,
    api_calls  INTEGER NOT NULL DEFAULT 0
);

-- The last succeeded or partial cycle that had counts for an object.
CREATE TABLE IF NOT EXISTS object_success (
    object     TEXT    NOT NULL PRIMARY KEY,
    started_at TEXT    NOT NULL,
    ended_at   TEXT    NOT NULL
);

-- The ledger summary groups open errors by object and direction.
CREATE INDEX IF NOT EXISTS sync_errors_by_object ON sync_errors (status, object, direction);

-- Backfill from the cycles recorded before this migration (only into empty tables, so that
-- running the script twice does not count them twice).
INSERT INTO sync_totals (object, direction, read, created, updated, deleted, conflicts, skipped, failed)
SELECT json_extract(e.value, '$.object'),
       COALESCE(json_extract(e.value, '$.direction'), 'none'),
       SUM(COALESCE(json_extract(e.value, '$.read'), 0)),
       SUM(COALESCE(json_extract(e.value, '$.created'), 0)),
       SUM(COALESCE(json_extract(e.value, '$.updated'), 0)),
       SUM(COALESCE(json_extract(e.value, '$.deleted'), 0)),
       SUM(COALESCE(json_extract(e.value, '$.conflicts'), 0)),
       SUM(COALESCE(json_extract(e.value, '$.skipped'), 0)),
       SUM(COALESCE(json_extract(e.value, '$.failed'), 0))
FROM cycles, json_each(cycles.counts) AS e
WHERE NOT EXISTS (SELECT 1 FROM sync_totals)
GROUP BY 1, 2;

INSERT INTO cycle_totals (outcome, cycles, api_calls)
SELECT outcome, COUNT(*), SUM(api_calls) FROM cycles
WHERE NOT EXISTS (SELECT 1 FROM cycle_totals)
GROUP BY outcome;

INSERT INTO object_success (object, started_at, ended_at)
SELECT json_extract(e.value, '$.object'), MAX(cycles.started_at), MAX(cycles.ended_at)
FROM cycles, json_each(cycles.counts) AS e
WHERE cycles.outcome IN ('succeeded', 'partial') AND cycles.ended_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM object_success)
GROUP BY 1;
