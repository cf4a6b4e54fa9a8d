-- Operator control: a pause of all sync work, shared by every process using this store.
CREATE TABLE IF NOT EXISTS control_pause (
    id           SMALLINT    NOT NULL PRIMARY KEY CHECK (id = 1),
    reason       TEXT        NOT NULL,
    paused_until TIMESTAMPTZ,
    paused_at    TIMESTAMPTZ NOT NULL
);
