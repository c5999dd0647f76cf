-- durabus schema version 3: replays in the inbox, and the file's identity.

-- replay: the entry's latest run was asked for by a replay; its acks say so,
-- so that an older ack cannot complete the replay.
ALTER TABLE {p}inbox ADD COLUMN replay INTEGER NOT NULL DEFAULT 0;

-- meta: facts about this database file, such as the id under which its
-- bus claims events among replicas.
CREATE TABLE {p}meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
