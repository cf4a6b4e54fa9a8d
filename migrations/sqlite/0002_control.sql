-- Operator control: a pause of all sync work, shared by every process using this store.
CREATE TABLE IF NOT EXISTS control_pause (
    id           INTEGER     NOT NULL PRIMARY KEY CHECK (id = 1),
    reason       TEXT        NOT NULL,
    paused_until TEXT,
    paused_at    TEXT        NOT NULL
);
