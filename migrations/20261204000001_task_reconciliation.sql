-- What reconciliation (PROTOCOL.md §1.4) needs to know per task: when its
-- spawnTask last left and how often it was sent, whether its daemon has
-- confirmed it, since when the daemon's heartbeats leave it out, and which
-- daemon it was last released from, when. Nullable columns without a
-- default (and one constant default): PostgreSQL adds them without
-- rewriting the table.
ALTER TABLE tasks
    ADD COLUMN spawn_sent_at  timestamptz,
    ADD COLUMN spawn_attempts int NOT NULL DEFAULT 0,
    ADD COLUMN confirmed_at   timestamptz,
    ADD COLUMN missing_since  timestamptz,
    ADD COLUMN released_from  uuid,
    ADD COLUMN released_at    timestamptz;
