-- Rules and alerts (docs/rules.md, docs/alerts.md).

-- Every edit of a rule set is a new version; a run keeps the versions it started with.
CREATE TABLE rule_sets (
    id              INTEGER  PRIMARY KEY AUTOINCREMENT,
    name            TEXT     NOT NULL,
    version         INTEGER  NOT NULL,
    source          TEXT     NOT NULL,
    created_at      TEXT     NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE run_rule_sets (
    run_pk          INTEGER  NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    position        INTEGER  NOT NULL,
    rule_set_id     INTEGER  NOT NULL REFERENCES rule_sets (id),
    PRIMARY KEY (run_pk, position)
);

-- The last step the run's rules have seen, written in the ingest transaction that evaluated it;
-- a server whose in-memory rule state disagrees with it reloads that state.
ALTER TABLE runs ADD COLUMN rules_step INTEGER;

-- What rules did: one row per action of a firing. The key makes a replayed firing a no-op.
CREATE TABLE rule_events (
    id              INTEGER  PRIMARY KEY AUTOINCREMENT,
    run_pk          INTEGER  NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    rule_set        TEXT     NOT NULL,
    rule            TEXT     NOT NULL,
    action          TEXT     NOT NULL CHECK (action IN ('alert', 'stop', 'checkpoint', 'regulate')),
    severity        TEXT     NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    step            INTEGER  NOT NULL,
    message         TEXT     NOT NULL,
    trip_values     TEXT     NOT NULL,
    signal_id       INTEGER  REFERENCES signals (id) ON DELETE SET NULL,
    created_at      TEXT     NOT NULL,
    UNIQUE (run_pk, rule_set, rule, action, step)
);

CREATE TABLE webhooks (
    id              INTEGER  PRIMARY KEY AUTOINCREMENT,
    name            TEXT     NOT NULL UNIQUE,
    url             TEXT     NOT NULL,
    format          TEXT     NOT NULL CHECK (format IN ('json', 'slack', 'discord')),
    secret          TEXT     NOT NULL,
    min_severity    TEXT     NOT NULL CHECK (min_severity IN ('info', 'warning', 'critical')),
    created_at      TEXT     NOT NULL
);

-- One row per (alert, webhook), written in the transaction that raised the alert; the delivery
-- worker claims due rows and leases them by moving next_attempt_at.
CREATE TABLE webhook_outbox (
    id              INTEGER  PRIMARY KEY AUTOINCREMENT,
    webhook_id      INTEGER  NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        INTEGER  REFERENCES rule_events (id) ON DELETE CASCADE,
    message_id      TEXT     NOT NULL UNIQUE,
    state           TEXT     NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER  NOT NULL,
    next_attempt_at TEXT     NOT NULL,
    created_at      TEXT     NOT NULL,
    finished_at     TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    id              INTEGER  PRIMARY KEY AUTOINCREMENT,
    outbox_id       INTEGER  NOT NULL REFERENCES webhook_outbox (id) ON DELETE CASCADE,
    attempt         INTEGER  NOT NULL,
    started_at      TEXT     NOT NULL,
    status      INTEGER,
    latency_ms      REAL     NOT NULL,
    error       TEXT,
    outcome         TEXT     NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed'))
);
CREATE INDEX webhook_attempts_by_outbox ON webhook_attempts (outbox_id, id);
