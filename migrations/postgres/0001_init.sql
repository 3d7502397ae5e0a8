-- Runs, their series (stored as step-range chunks, see docs/storage.md), signals and API tokens.

CREATE TABLE runs (
    pk            BIGSERIAL PRIMARY KEY,
    run_id        TEXT        NOT NULL UNIQUE,
    name          TEXT        NOT NULL,
    project       TEXT        NOT NULL,
    tags          JSONB       NOT NULL,
    config        JSONB       NOT NULL,
    status        TEXT        NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'stopped')),
    status_reason TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    last_step     BIGINT
);
CREATE INDEX runs_by_project ON runs (project, created_at DESC, pk DESC);
CREATE INDEX runs_by_created ON runs (created_at DESC, pk DESC);

-- Metric names are shared by all runs; rows only ever get added, so servers may cache ids.
CREATE TABLE metric_names (
    id   SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

-- One row per (run, metric, chunk of 1024 consecutive steps). `data` packs the chunk's points
-- as little-endian (i64 step, f64 value) pairs sorted by step; `points` is their count.
CREATE TABLE series_chunks (
    run_pk    BIGINT  NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    metric_id INTEGER NOT NULL REFERENCES metric_names (id),
    chunk     BIGINT  NOT NULL,
    points    INTEGER NOT NULL,
    data      BYTEA   NOT NULL,
    PRIMARY KEY (run_pk, metric_id, chunk)
);
-- Point data does not compress: skip pglz on write and read.
ALTER TABLE series_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- Per-series summary kept in the ingest transaction. The value is stored as its IEEE-754 bits
-- so NaN survives in both stores (SQLite turns a NaN REAL into NULL).
CREATE TABLE run_metrics (
    run_pk          BIGINT  NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    metric_id       INTEGER NOT NULL REFERENCES metric_names (id),
    points          BIGINT  NOT NULL,
    last_step       BIGINT  NOT NULL,
    last_value_bits BIGINT  NOT NULL,
    PRIMARY KEY (run_pk, metric_id)
);

CREATE TABLE signals (
    id           BIGSERIAL PRIMARY KEY,
    run_pk       BIGINT      NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    kind         TEXT        NOT NULL CHECK (kind IN ('stop', 'checkpoint', 'set_hparam')),
    name         TEXT,
    value        DOUBLE PRECISION,
    keep_step    BIGINT,
    reason       TEXT        NOT NULL,
    source_rule  TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    acked_at     TIMESTAMPTZ,
    applied_step BIGINT
);
CREATE INDEX signals_by_run ON signals (run_pk, id);

CREATE TABLE api_tokens (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT        NOT NULL UNIQUE,
    token_hash TEXT        NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
