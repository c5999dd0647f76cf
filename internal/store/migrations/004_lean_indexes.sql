-- durabus schema version 4: indexes that serve the real queries and cost
-- little per event. A row is written into few indexes when it is published
-- or received, and moves between none when it completes.

-- Due rows: only those the relay may still send by itself. Rows that track
-- groups are re-sent per group (deliveries) and wait here with due_at =
-- 9223372036854775807 ("never"), so they need no entry.
DROP INDEX {p}outbox_due;
CREATE INDEX {p}outbox_due ON {p}outbox (publisher, due_at)
    WHERE state IN ('PENDING', 'PROCESSING') AND due_at < 9223372036854775807;

-- The janitor finds old rows by creation time (a row completes after it
-- is created), dead rows by their own small index.
DROP INDEX {p}outbox_state;
CREATE INDEX {p}outbox_created ON {p}outbox (created_at);
CREATE INDEX {p}outbox_dead ON {p}outbox (publisher, updated_at) WHERE state = 'DEAD';

DROP INDEX {p}inbox_state;
CREATE INDEX {p}inbox_created ON {p}inbox (created_at);
CREATE INDEX {p}inbox_dead ON {p}inbox (consumer, updated_at) WHERE state = 'DEAD';

-- expected: the groups (a JSON array) an event that tracks groups was
-- published for, while it has no delivery rows yet. Delivery rows are
-- written only when needed: a first re-send, an ack that does not finish
-- the event, a replay. An event whose one group completes it in time never
-- gets any.
ALTER TABLE {p}outbox ADD COLUMN expected TEXT;
