-- Runs, their series (stored as step-range chunks, see docs/storage.md), signals and API tokens.
-- Same tables as migrations/postgres; timestamps are RFC 3339 text, JSON is text.

CREATE TABLE runs (
    pk            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    project       TEXT    NOT NULL,
    tags          TEXT    NOT NULL,
    config        TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'stopped')),
    status_reason TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    finished_at   TEXT,
    last_step     INTEGER
);
CREATE INDEX runs_by_project ON runs (project, created_at DESC, pk DESC);
CREATE INDEX runs_by_created ON runs (created_at DESC, pk DESC);

CREATE TABLE metric_names (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT    NOT NULL UNIQUE
);

-- One row per (run, metric, chunk of 1024 consecutive steps); `data` packs little-endian
-- (i64 step, f64 value) pairs sorted by step.
CREATE TABLE series_chunks (
    run_pk    INTEGER NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    metric_id INTEGER NOT NULL REFERENCES metric_names (id),
    chunk     INTEGER NOT NULL,
    points    INTEGER NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (run_pk, metric_id, chunk)
) WITHOUT ROWID;

-- The value is stored as its IEEE-754 bits: SQLite turns a NaN REAL into NULL.
CREATE TABLE run_metrics (
    run_pk          INTEGER NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    metric_id       INTEGER NOT NULL REFERENCES metric_names (id),
    points          INTEGER NOT NULL,
    last_step       INTEGER NOT NULL,
    last_value_bits INTEGER NOT NULL,
    PRIMARY KEY (run_pk, metric_id)
) WITHOUT ROWID;

-- AUTOINCREMENT: signal ids are SSE event ids and must never be reused.
CREATE TABLE signals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_pk       INTEGER NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    kind         TEXT    NOT NULL CHECK (kind IN ('stop', 'checkpoint', 'set_hparam')),
    name         TEXT,
    value        REAL,
    keep_step    INTEGER,
    reason       TEXT    NOT NULL,
    source_rule  TEXT,
    created_at   TEXT    NOT NULL,
    acked_at     TEXT,
    applied_step INTEGER
);
CREATE INDEX signals_by_run ON signals (run_pk, id);

CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    token_hash TEXT    NOT NULL UNIQUE,
    created_at TEXT    NOT NULL,
    revoked_at TEXT
);
