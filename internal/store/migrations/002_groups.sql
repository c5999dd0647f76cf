-- durabus schema version 2: consumer groups and per-group delivery.

-- groups: the consumer groups a publisher heard of (hello), per event name.
CREATE TABLE {p}groups (
    publisher  TEXT    NOT NULL,
    group_name TEXT    NOT NULL,
    event_name TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (publisher, group_name, event_name)
) WITHOUT ROWID;

-- deliveries: one row per outbox event and group expected to handle it.
CREATE TABLE {p}deliveries (
    outbox_id  INTEGER NOT NULL,
    group_name TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('PENDING', 'RECEIVED', 'COMPLETED', 'DEAD')),
    sends      INTEGER NOT NULL DEFAULT 0,
    due_at     INTEGER NOT NULL,
    replay     INTEGER NOT NULL DEFAULT 0,
    undelivered INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (outbox_id, group_name)
) WITHOUT ROWID;
CREATE INDEX {p}deliveries_due ON {p}deliveries (group_name, due_at) WHERE state IN ('PENDING', 'RECEIVED');

CREATE TRIGGER {p}outbox_deleted AFTER DELETE ON {p}outbox
BEGIN
    DELETE FROM {p}deliveries WHERE outbox_id = OLD.id;
END;

-- tracked: how many groups were expected when the event was published; 0
-- means none was known, and the first consumer's acks decide the state.
ALTER TABLE {p}outbox ADD COLUMN tracked INTEGER NOT NULL DEFAULT 0;

-- counters: totals kept across restarts, such as dropped deliveries.
CREATE TABLE {p}counters (
    publisher TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    value     INTEGER NOT NULL,
    PRIMARY KEY (publisher, name)
) WITHOUT ROWID;
