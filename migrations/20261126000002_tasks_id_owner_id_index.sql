-- no-transaction
-- Step 1 of 3 towards one foreign key on task_outputs (see 20261126000003):
-- the unique index on tasks (id, owner_id) it references. Built
-- CONCURRENTLY, so tasks stay writable while it is built on a large table;
-- that cannot run in a transaction, hence this file's first line and its
-- single statement. Should the build fail halfway, PostgreSQL leaves an
-- INVALID index behind that IF NOT EXISTS would keep: drop it
-- (DROP INDEX CONCURRENTLY tasks_id_owner_id_key) before running again.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS tasks_id_owner_id_key ON tasks (id, owner_id);
