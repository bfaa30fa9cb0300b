-- Whether the daemon marked a stored line as partial, so that a stream
-- replayed from PostgreSQL (PROTOCOL.md §2.1) says exactly what the live one
-- said. A constant default: PostgreSQL adds the column without rewriting the
-- table, and rows from before read as complete lines.
ALTER TABLE task_outputs ADD COLUMN is_partial boolean NOT NULL DEFAULT false;
