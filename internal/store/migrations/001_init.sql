-- durabus schema version 1. {p} is replaced by the table prefix.

-- outbox: one row per published event.
CREATE TABLE {p}outbox (
    id         INTEGER PRIMARY KEY,
    event_id   TEXT    NOT NULL UNIQUE,
    event_name TEXT    NOT NULL,
    publisher  TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('PENDING', 'PROCESSING', 'COMPLETED', 'DEAD')),
    message    BLOB    NOT NULL,
    sends      INTEGER NOT NULL DEFAULT 0,
    due_at     INTEGER NOT NULL,
    last_error TEXT,
    dead_by    TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX {p}outbox_due ON {p}outbox (publisher, due_at) WHERE state IN ('PENDING', 'PROCESSING');
CREATE INDEX {p}outbox_state ON {p}outbox (publisher, state, updated_at);

-- inbox: one row per received event and local handler.
CREATE TABLE {p}inbox (
    id         INTEGER PRIMARY KEY,
    consumer   TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    handler    TEXT    NOT NULL,
    event_name TEXT    NOT NULL,
    publisher  TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('PROCESSING', 'COMPLETED', 'DEAD')),
    message    BLOB    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    due_at     INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (consumer, event_id, handler)
);
CREATE INDEX {p}inbox_due ON {p}inbox (consumer, due_at) WHERE state = 'PROCESSING';
CREATE INDEX {p}inbox_state ON {p}inbox (consumer, state, updated_at);
