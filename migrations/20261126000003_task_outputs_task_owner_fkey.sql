-- Step 2 of 3. task_outputs is the busiest insert of all (every output line
-- of every task). Its two foreign keys (task_id -> tasks, owner_id -> owners)
-- cost two index lookups and two row locks per stored line: in a 500-row
-- UNNEST insert they took more than half of the statement's time (pgbench
-- on the bench machine: 7.5-9.5 ms with both, 2.8 ms with none). One
-- composite key to the task's (id, owner_id) is one check per line, and a
-- stronger one: a line's owner must be its task's owner (owners are still
-- referenced, through tasks.owner_id). Deleting a task still deletes its
-- lines.
--
-- Added NOT VALID: new lines are checked from now on, and no lock is held
-- while existing rows are scanned; 20261126000004 validates them in a
-- transaction of its own, which lets inserts go on meanwhile.
ALTER TABLE task_outputs
    ADD CONSTRAINT task_outputs_task_owner_fkey
        FOREIGN KEY (task_id, owner_id) REFERENCES tasks (id, owner_id) ON DELETE CASCADE
        NOT VALID;

ALTER TABLE task_outputs
    DROP CONSTRAINT task_outputs_task_id_fkey,
    DROP CONSTRAINT task_outputs_owner_id_fkey;
