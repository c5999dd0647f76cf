-- durabus:edit-schema
-- durabus schema version 5: the CHECK constraints on state compare with =
-- instead of IN. SQLite evaluates an IN list of more than two constants by
-- building a temporary b-tree, and a CHECK constraint runs on every insert
-- and every change of state: that b-tree cost a third of each outbox
-- insert. The new constraints accept exactly the same values.
--
-- A CHECK constraint is not part of the file format, so it is changed in
-- place, by editing the table's SQL text in sqlite_schema, as SQLite
-- documents for changing constraints (lang_altertable.html, "Making Other
-- Kinds Of Table Schema Changes"); migrate runs this file with
-- writable_schema on and bumps the schema version, so that every
-- connection reloads the schema.
UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (state IN (''PENDING'', ''PROCESSING'', ''COMPLETED'', ''DEAD''))',
    'CHECK (state = ''PENDING'' OR state = ''PROCESSING'' OR state = ''COMPLETED'' OR state = ''DEAD'')')
WHERE type = 'table' AND name = '{p}outbox';

UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (state IN (''PROCESSING'', ''COMPLETED'', ''DEAD''))',
    'CHECK (state = ''PROCESSING'' OR state = ''COMPLETED'' OR state = ''DEAD'')')
WHERE type = 'table' AND name = '{p}inbox';

UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (state IN (''PENDING'', ''RECEIVED'', ''COMPLETED'', ''DEAD''))',
    'CHECK (state = ''PENDING'' OR state = ''RECEIVED'' OR state = ''COMPLETED'' OR state = ''DEAD'')')
WHERE type = 'table' AND name = '{p}deliveries';
