-- iotda-export schema, version 1 (SQLite).
-- Invariants that a single row can express are constraints here; the per-user counts (5 unfinished,
-- 50 in all) are decided by domain/exports.py inside one BEGIN IMMEDIATE transaction.

CREATE TABLE principals (
    user                  TEXT PRIMARY KEY,
    project_id            TEXT NOT NULL,
    enterprise_project_id TEXT NOT NULL,
    token_sha256          TEXT NOT NULL UNIQUE,   -- the bearer token itself is never stored
    ak                    TEXT NOT NULL UNIQUE,
    sk                    TEXT NOT NULL,          -- needed to verify AK/SK signatures; db file is 0600
    policy                TEXT NOT NULL,          -- JSON: {"Version": "1.1", "Statement": [...]}
    created_at            INTEGER NOT NULL
);

CREATE TABLE batch_tasks (
    task_id          TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL,
    instance_id      TEXT NOT NULL,
    app_id           TEXT NOT NULL,
    task_name        TEXT NOT NULL,
    task_type        TEXT NOT NULL,
    task_mode        TEXT NOT NULL,
    need_confirm     INTEGER NOT NULL,
    task_ext_info    TEXT,                -- JSON or NULL
    targets          TEXT NOT NULL,       -- JSON list; empty when sub-tasks come from elsewhere
    targets_filter   TEXT,
    document         TEXT,
    task_policy      TEXT,
    document_source  TEXT NOT NULL,
    status           TEXT NOT NULL,
    status_desc      TEXT NOT NULL,
    create_time      INTEGER NOT NULL
);
CREATE INDEX batch_tasks_by_scope ON batch_tasks (project_id, instance_id, task_type, task_id);

CREATE TABLE subtasks (
    id          TEXT PRIMARY KEY,         -- 24 hex, the marker of ShowBatchTask's paging
    task_id     TEXT NOT NULL REFERENCES batch_tasks (task_id) ON DELETE CASCADE,
    target      TEXT NOT NULL,
    status      TEXT NOT NULL,
    output      TEXT NOT NULL,
    error_code  TEXT NOT NULL,
    error_msg   TEXT NOT NULL,
    UNIQUE (task_id, target)
);
CREATE INDEX subtasks_by_task ON subtasks (task_id, id);
CREATE INDEX subtasks_by_task_status ON subtasks (task_id, status, id);

CREATE TABLE export_tasks (
    export_task_id  TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,        -- the principal's user
    project_id      TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    resource_type   TEXT NOT NULL,
    batch_task_id   TEXT NOT NULL,
    export_format   TEXT NOT NULL,
    app_type        TEXT NOT NULL,
    app_id          TEXT,                 -- resolved resource space with APP; NULL with GLOBAL
    conditions_key  TEXT NOT NULL,        -- canonical form of the create's conditions
    status          TEXT NOT NULL CHECK (status IN ('Processing', 'Success', 'Failed')),
    status_desc     TEXT,
    progress        INTEGER NOT NULL CHECK (progress BETWEEN 1 AND 100),
    export_count    INTEGER NOT NULL,
    create_time     INTEGER NOT NULL,     -- epoch ms
    end_time        INTEGER,
    version         INTEGER NOT NULL,     -- +1 on every change: the watch sequence
    -- The job: queued -> running -> done. run_token names the current run; only it may finish.
    run_state       TEXT NOT NULL CHECK (run_state IN ('queued', 'running', 'done')),
    run_token       TEXT,
    attempts        INTEGER NOT NULL,
    worker_id       TEXT,
    lease_until     INTEGER,
    queued_at       INTEGER,
    -- The last good result file (file_generation 0: none yet).
    file_generation INTEGER NOT NULL,
    file_size       INTEGER,
    file_sha256     TEXT,
    CHECK ((status = 'Processing') = (run_state <> 'done'))
);
-- "Same conditions overwrite": at most one task per user and conditions.
CREATE UNIQUE INDEX export_tasks_same_conditions ON export_tasks (owner, conditions_key);
CREATE INDEX export_tasks_by_owner ON export_tasks (owner, export_task_id);
CREATE INDEX export_tasks_queue ON export_tasks (run_state, queued_at);

-- Idempotent creates (request_id): a retry returns the task of the first call.
CREATE TABLE export_requests (
    owner          TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    export_task_id TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (owner, request_id)
);

-- One download per 30 s per user: the last counted download of each user.
CREATE TABLE download_limits (
    owner           TEXT PRIMARY KEY,
    last_at         INTEGER NOT NULL,
    export_task_id  TEXT NOT NULL,
    file_generation INTEGER NOT NULL
);
