-- iotda-export schema, version 1 (PostgreSQL). The same tables as the SQLite schema; the per-user
-- counts are decided by domain/exports.py under pg_advisory_xact_lock of the user.

CREATE TABLE principals (
    "user"                TEXT PRIMARY KEY,
    project_id            TEXT NOT NULL,
    enterprise_project_id TEXT NOT NULL,
    token_sha256          TEXT NOT NULL UNIQUE,   -- the bearer token itself is never stored
    ak                    TEXT NOT NULL UNIQUE,
    sk                    TEXT NOT NULL,          -- needed to verify AK/SK signatures
    policy                TEXT NOT NULL,
    created_at            BIGINT NOT NULL
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
    task_ext_info    TEXT,
    targets          TEXT NOT NULL,
    targets_filter   TEXT,
    document         TEXT,
    task_policy      TEXT,
    document_source  TEXT NOT NULL,
    status           TEXT NOT NULL,
    status_desc      TEXT NOT NULL,
    create_time      BIGINT NOT NULL
);
CREATE INDEX batch_tasks_by_scope ON batch_tasks (project_id, instance_id, task_type, task_id);

CREATE TABLE subtasks (
    id          TEXT PRIMARY KEY,
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
    owner           TEXT NOT NULL,
    project_id      TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    resource_type   TEXT NOT NULL,
    batch_task_id   TEXT NOT NULL,
    export_format   TEXT NOT NULL,
    app_type        TEXT NOT NULL,
    app_id          TEXT,
    conditions_key  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('Processing', 'Success', 'Failed')),
    status_desc     TEXT,
    progress        INTEGER NOT NULL CHECK (progress BETWEEN 1 AND 100),
    export_count    BIGINT NOT NULL,
    create_time     BIGINT NOT NULL,
    end_time        BIGINT,
    version         INTEGER NOT NULL,
    run_state       TEXT NOT NULL CHECK (run_state IN ('queued', 'running', 'done')),
    run_token       TEXT,
    attempts        INTEGER NOT NULL,
    worker_id       TEXT,
    lease_until     BIGINT,
    queued_at       BIGINT,
    file_generation INTEGER NOT NULL,
    file_size       BIGINT,
    file_sha256     TEXT,
    CHECK ((status = 'Processing') = (run_state <> 'done'))
);
CREATE UNIQUE INDEX export_tasks_same_conditions ON export_tasks (owner, conditions_key);
CREATE INDEX export_tasks_by_owner ON export_tasks (owner, export_task_id);
CREATE INDEX export_tasks_queue ON export_tasks (queued_at) WHERE run_state = 'queued';
CREATE INDEX export_tasks_running ON export_tasks (lease_until) WHERE run_state = 'running';

CREATE TABLE export_requests (
    owner          TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    export_task_id TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (owner, request_id)
);

CREATE TABLE download_limits (
    owner           TEXT PRIMARY KEY,
    last_at         BIGINT NOT NULL,
    export_task_id  TEXT NOT NULL,
    file_generation INTEGER NOT NULL
);

-- Watchers on every replica learn of changes: the payload is only the id (NOTIFY is a hint, the
-- row is re-read; a polling backstop covers lost notifications).
CREATE FUNCTION iotda_export_notify_task_v1() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('iotda_export_tasks_v1', OLD.export_task_id);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('iotda_export_tasks_v1', NEW.export_task_id);
    IF NEW.run_state = 'queued' THEN
        PERFORM pg_notify('iotda_export_jobs_v1', NEW.export_task_id);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER iotda_export_notify_task_v1 AFTER INSERT OR UPDATE OR DELETE ON export_tasks
    FOR EACH ROW EXECUTE FUNCTION iotda_export_notify_task_v1();
