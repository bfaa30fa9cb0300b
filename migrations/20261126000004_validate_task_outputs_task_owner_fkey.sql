-- Step 3 of 3: checks the lines stored before 20261126000003 against the
-- composite key. VALIDATE takes a lock that still allows inserts, updates
-- and deletes on task_outputs, so output keeps flowing while it scans. It
-- fails if an old line names another owner than its task's (which meshgate
-- never wrote: every line's owner comes from the task's ownership check).
ALTER TABLE task_outputs VALIDATE CONSTRAINT task_outputs_task_owner_fkey;
