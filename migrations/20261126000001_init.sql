-- meshgate initial schema (PostgreSQL 13+: gen_random_uuid() is built in).
--
-- Conventions: uuid keys default to gen_random_uuid(); timestamps are
-- timestamptz defaulting to now(); JSON is jsonb. Append-only high-volume
-- tables (task_outputs, history_events, supervisor_heartbeats) use bigserial
-- keys, which also give their order. CHECK constraints exist only where the
-- server chooses the value from a closed set; tasks.status is deliberately
-- unconstrained because daemons may report statuses the server does not know.
-- Foreign keys that would form cycles (tasks <-> directives, orchestrator task
-- ids) are added with ALTER TABLE at the end.

-- ---------------------------------------------------------------------------
-- Tenancy and authentication
-- ---------------------------------------------------------------------------

-- owners: the tenant; every owned row belongs to exactly one owner.
CREATE TABLE owners (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- users: people who hold API keys; requests act as the user's default owner.
CREATE TABLE users (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email             text        NOT NULL UNIQUE,
    default_owner_id  uuid        NOT NULL REFERENCES owners(id),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_default_owner_id_idx ON users (default_owner_id);

-- api_keys: user API keys, stored only as a hash plus a short display prefix.
CREATE TABLE api_keys (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       uuid        NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_hash      text        NOT NULL UNIQUE,
    key_prefix    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NULL,
    revoked_at    timestamptz NULL
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id, created_at);

-- ---------------------------------------------------------------------------
-- Daemons
-- ---------------------------------------------------------------------------

-- daemons: worker machines, one stable row per (owner, machine id); live
-- connection state (pod, connection id, lease) lives in Redis, not here.
CREATE TABLE daemons (
    id                    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id              uuid        NOT NULL REFERENCES owners(id),
    machine_id            text        NOT NULL,
    hostname              text        NOT NULL,
    max_concurrent_tasks  int         NOT NULL,
    working_directory     text,
    home_directory        text,
    worktrees_directory   text,
    last_connected_at     timestamptz,
    last_disconnected_at  timestamptz,
    last_heartbeat_at     timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT daemons_owner_machine_key UNIQUE (owner_id, machine_id)
);

-- ---------------------------------------------------------------------------
-- Contracts
-- ---------------------------------------------------------------------------

-- contracts: a unit of work with a type and phase; completed_deliverables maps
-- phase -> array of deliverable ids.
CREATE TABLE contracts (
    id                      uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id                uuid        NOT NULL REFERENCES owners(id),
    name                    text        NOT NULL,
    description             text,
    contract_type           text        NOT NULL
        CONSTRAINT contracts_contract_type_check
        CHECK (contract_type IN ('simple', 'specification')),
    phase                   text        NOT NULL,
    local_only              boolean     NOT NULL DEFAULT false,
    completed_deliverables  jsonb       NOT NULL DEFAULT '{}'::jsonb
        CONSTRAINT contracts_completed_deliverables_object_check
        CHECK (jsonb_typeof(completed_deliverables) = 'object'),
    orchestrator_task_id    uuid        NULL,  -- FK to tasks added below
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contracts_owner_id_idx ON contracts (owner_id, created_at);

-- contract_repositories: repositories (remote URL and/or local path) a contract works on.
CREATE TABLE contract_repositories (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    contract_id     uuid        NOT NULL REFERENCES contracts(id) ON DELETE CASCADE,
    repository_url  text,
    local_path      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contract_repositories_contract_id_idx ON contract_repositories (contract_id);

-- ---------------------------------------------------------------------------
-- Tasks
-- ---------------------------------------------------------------------------

-- tasks: coding tasks dispatched to daemons, with status, retries and results.
CREATE TABLE tasks (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id           uuid        NOT NULL REFERENCES owners(id),
    contract_id        uuid        NULL REFERENCES contracts(id),
    parent_task_id     uuid        NULL REFERENCES tasks(id),
    name               text        NOT NULL,
    plan               text        NOT NULL,
    status             text        NOT NULL DEFAULT 'pending',  -- no CHECK: daemon-reported
    is_supervisor      boolean     NOT NULL DEFAULT false,
    daemon_id          uuid        NULL REFERENCES daemons(id) ON DELETE SET NULL,
    repository_url     text,
    base_branch        text,
    target_branch      text,
    progress_summary   text,
    error_message      text,
    pr_url             text,
    version            int         NOT NULL DEFAULT 1,
    retry_count        int         NOT NULL DEFAULT 0
        CONSTRAINT tasks_retry_count_check CHECK (retry_count >= 0),
    max_retries        int         NOT NULL DEFAULT 3
        CONSTRAINT tasks_max_retries_check CHECK (max_retries >= 0),
    failed_daemon_ids  uuid[]      NOT NULL DEFAULT '{}',
    interrupted_at     timestamptz,
    started_at         timestamptz,
    completed_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    directive_id       uuid        NULL,  -- FK to directives added below
    directive_step_id  uuid        NULL   -- FK to directive_steps added below
);
-- Active tasks of a daemon (disconnect handling / orphan reaper, capacity).
CREATE INDEX tasks_daemon_active_idx ON tasks (daemon_id)
    WHERE status IN ('starting', 'running', 'initializing');
CREATE INDEX tasks_owner_status_idx ON tasks (owner_id, status);
CREATE INDEX tasks_contract_id_idx ON tasks (contract_id);
-- The contract's supervisor task (get_contract_supervisor_task).
CREATE INDEX tasks_contract_supervisor_idx ON tasks (contract_id) WHERE is_supervisor;
-- Dispatcher: oldest pending tasks across owners.
CREATE INDEX tasks_pending_created_idx ON tasks (created_at) WHERE status = 'pending';
CREATE INDEX tasks_parent_task_id_idx ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX tasks_directive_id_idx ON tasks (directive_id) WHERE directive_id IS NOT NULL;
CREATE INDEX tasks_directive_step_id_idx ON tasks (directive_step_id) WHERE directive_step_id IS NOT NULL;

-- task_outputs: parsed output events of a task; id gives their order.
CREATE TABLE task_outputs (
    id            bigserial        PRIMARY KEY,
    task_id       uuid             NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    owner_id      uuid             NOT NULL REFERENCES owners(id),
    message_type  text             NOT NULL,
    content       text             NOT NULL,
    tool_name     text,
    tool_input    jsonb,
    is_error      boolean,
    cost_usd      double precision,
    duration_ms   bigint,
    created_at    timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX task_outputs_task_id_id_idx ON task_outputs (task_id, id);

-- task_checkpoints: git checkpoints of a task, numbered per task.
CREATE TABLE task_checkpoints (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id            uuid        NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    checkpoint_number  int         NOT NULL,
    commit_sha         text,
    branch_name        text,
    message            text        NOT NULL,
    files_changed      jsonb,
    lines_added        int,
    lines_removed      int,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_checkpoints_task_number_key UNIQUE (task_id, checkpoint_number)
);

-- checkpoint_patches: gzip patches for task recovery (with or without a checkpoint), expiring.
CREATE TABLE checkpoint_patches (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id        uuid        NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    checkpoint_id  uuid        NULL REFERENCES task_checkpoints(id) ON DELETE CASCADE,
    patch_data     bytea       NOT NULL,
    base_sha       text,
    files_count    int,
    size_bytes     int         NOT NULL
        CONSTRAINT checkpoint_patches_size_bytes_check CHECK (size_bytes >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);
CREATE INDEX checkpoint_patches_task_created_idx ON checkpoint_patches (task_id, created_at DESC);
CREATE INDEX checkpoint_patches_expires_at_idx ON checkpoint_patches (expires_at);
CREATE INDEX checkpoint_patches_checkpoint_id_idx ON checkpoint_patches (checkpoint_id)
    WHERE checkpoint_id IS NOT NULL;

-- ---------------------------------------------------------------------------
-- Files
-- ---------------------------------------------------------------------------

-- files: documents (body as JSON elements), optionally synced from a repo file.
CREATE TABLE files (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id          uuid        NOT NULL REFERENCES owners(id),
    contract_id       uuid        NULL REFERENCES contracts(id),
    name              text        NOT NULL,
    description       text,
    summary           text,
    transcript        jsonb,
    body              jsonb       NOT NULL DEFAULT '[]'::jsonb,
    repo_file_path    text,
    repo_sync_status  text        NOT NULL DEFAULT 'none'
        CONSTRAINT files_repo_sync_status_check
        CHECK (repo_sync_status IN ('none', 'pending', 'synced', 'failed')),
    repo_synced_at    timestamptz,
    version           int         NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_owner_id_idx ON files (owner_id, created_at);
CREATE INDEX files_contract_id_idx ON files (contract_id) WHERE contract_id IS NOT NULL;

-- ---------------------------------------------------------------------------
-- History
-- ---------------------------------------------------------------------------

-- history_events: append-only audit/timeline of task, contract and checkpoint events.
-- contract_id/task_id carry no FK on purpose: history outlives deleted rows.
CREATE TABLE history_events (
    id             bigserial   PRIMARY KEY,
    owner_id       uuid        NOT NULL REFERENCES owners(id),
    contract_id    uuid        NULL,
    task_id        uuid        NULL,
    event_type     text        NOT NULL,
    event_subtype  text        NULL,
    phase          text        NULL,
    data           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz DEFAULT now()  -- nullable, as specified
);
CREATE INDEX history_events_owner_created_idx ON history_events (owner_id, created_at);
CREATE INDEX history_events_contract_id_idx ON history_events (contract_id) WHERE contract_id IS NOT NULL;
CREATE INDEX history_events_task_id_idx ON history_events (task_id) WHERE task_id IS NOT NULL;

-- ---------------------------------------------------------------------------
-- Supervisors
-- ---------------------------------------------------------------------------

-- supervisor_states: durable state of a contract's supervisor, restored after restarts.
CREATE TABLE supervisor_states (
    contract_id         uuid        PRIMARY KEY REFERENCES contracts(id) ON DELETE CASCADE,
    task_id             uuid        NOT NULL REFERENCES tasks(id),
    state               text        NOT NULL DEFAULT 'initializing',
    phase               text        NOT NULL,
    current_activity    text,
    progress            int         NOT NULL DEFAULT 0
        CONSTRAINT supervisor_states_progress_check CHECK (progress BETWEEN 0 AND 100),
    pending_task_ids    uuid[]      NOT NULL DEFAULT '{}',
    conversation        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    pending_questions   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    restoration_count   int         NOT NULL DEFAULT 0,
    last_restored_at    timestamptz,
    restoration_source  text,
    last_heartbeat_at   timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX supervisor_states_task_id_idx ON supervisor_states (task_id);

-- supervisor_heartbeats: append-only heartbeats reported by supervisor tasks.
CREATE TABLE supervisor_heartbeats (
    id                bigserial   PRIMARY KEY,
    task_id           uuid        NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    contract_id       uuid        NOT NULL,
    state             text        NOT NULL,
    phase             text        NOT NULL,
    current_activity  text,
    progress          int         NOT NULL
        CONSTRAINT supervisor_heartbeats_progress_check CHECK (progress BETWEEN 0 AND 100),
    pending_task_ids  uuid[]      NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX supervisor_heartbeats_task_created_idx ON supervisor_heartbeats (task_id, created_at DESC);

-- ---------------------------------------------------------------------------
-- Directives
-- ---------------------------------------------------------------------------

-- directives: long-running goals planned by an orchestrator task into a DAG of steps.
-- status: active / idle / paused / completed / failed (not constrained here).
CREATE TABLE directives (
    id                    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id              uuid        NOT NULL REFERENCES owners(id),
    contract_id           uuid        NULL REFERENCES contracts(id),
    title                 text        NOT NULL,
    status                text        NOT NULL DEFAULT 'active',
    orchestrator_task_id  uuid        NULL,  -- FK to tasks added below
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX directives_owner_id_idx ON directives (owner_id, status);
CREATE INDEX directives_contract_id_idx ON directives (contract_id) WHERE contract_id IS NOT NULL;

-- directive_steps: steps of a directive's DAG (depends_on = step ids), each run as a task.
CREATE TABLE directive_steps (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    directive_id  uuid        NOT NULL REFERENCES directives(id) ON DELETE CASCADE,
    name          text        NOT NULL,
    description   text,
    status        text        NOT NULL DEFAULT 'pending',
    depends_on    uuid[]      NOT NULL DEFAULT '{}',
    task_id       uuid        NULL REFERENCES tasks(id) ON DELETE SET NULL,
    position      int         NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);
CREATE INDEX directive_steps_directive_id_idx ON directive_steps (directive_id, position);
CREATE INDEX directive_steps_task_id_idx ON directive_steps (task_id) WHERE task_id IS NOT NULL;

-- ---------------------------------------------------------------------------
-- Foreign keys deferred for creation order (cycles between tables)
-- ---------------------------------------------------------------------------

ALTER TABLE tasks
    ADD CONSTRAINT tasks_directive_id_fkey
        FOREIGN KEY (directive_id) REFERENCES directives(id) ON DELETE SET NULL,
    ADD CONSTRAINT tasks_directive_step_id_fkey
        FOREIGN KEY (directive_step_id) REFERENCES directive_steps(id) ON DELETE SET NULL;

ALTER TABLE contracts
    ADD CONSTRAINT contracts_orchestrator_task_id_fkey
        FOREIGN KEY (orchestrator_task_id) REFERENCES tasks(id) ON DELETE SET NULL;

ALTER TABLE directives
    ADD CONSTRAINT directives_orchestrator_task_id_fkey
        FOREIGN KEY (orchestrator_task_id) REFERENCES tasks(id) ON DELETE SET NULL;
