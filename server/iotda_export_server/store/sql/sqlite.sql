-- The SQLite store's queries (store/sqlite.py), by name: sqlite3's qmark parameters.
--
-- Each block is `-- name: <query_name>`, a comment line saying what it does, and one statement.
-- A `{slot}` is filled by the store with fixed text (column names, a run of placeholders), never a
-- value. store/sql/postgres.sql defines the same names, except where a dialect does the work another
-- way: here `insert_subtask` and `upsert_subtask_result` (executemany) stand for PostgreSQL's COPY
-- queries, and there is no advisory lock (BEGIN IMMEDIATE serialises every writer).

-- name: create_schema_migrations
-- The table of applied migrations, if missing.
CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);

-- name: has_schema_migrations
-- One row when the table of applied migrations exists.
SELECT name FROM sqlite_master WHERE name = 'schema_migrations';

-- name: schema_version
-- The version of the last applied migration (0: none).
SELECT coalesce(max(version), 0) FROM schema_migrations;

-- name: record_migration
-- Records a migration as applied: (version, applied_at in ms).
INSERT INTO schema_migrations VALUES (?, ?);

-- name: insert_principal
-- Adds a principal.
INSERT INTO principals ("user", principal_id, project_id, enterprise_project_id, token_sha256, ak, sk,
    policy, created_at, client_cert_subject, client_cert_san) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: principal_by
-- The principal whose {column} (a unique column, named by the store) is the value.
SELECT "user", principal_id, project_id, enterprise_project_id, ak, sk, policy, created_at,
    client_cert_subject, client_cert_san FROM principals WHERE "{column}" = ?;

-- name: list_principals
-- Every principal, oldest first.
SELECT "user", principal_id, project_id, enterprise_project_id, ak, sk, policy, created_at,
    client_cert_subject, client_cert_san FROM principals ORDER BY created_at;

-- name: count_principals
-- How many principals there are.
SELECT count(*) FROM principals;

-- name: owned_export_task_ids
-- The ids of the export tasks a principal owns.
SELECT export_task_id FROM export_tasks WHERE owner = ?;

-- name: delete_owned_export_tasks
-- Deletes the export tasks a principal owns.
DELETE FROM export_tasks WHERE owner = ?;

-- name: delete_owned_requests
-- Deletes a principal's idempotency records.
DELETE FROM export_requests WHERE owner = ?;

-- name: delete_download_limit
-- Deletes a principal's download mark.
DELETE FROM download_limits WHERE owner = ?;

-- name: delete_principal
-- Deletes a principal.
DELETE FROM principals WHERE principal_id = ?;

-- name: insert_batch_task
-- Adds a batch task (its JSON fields as text).
INSERT INTO batch_tasks (task_id, project_id, instance_id, app_id, task_name, task_type, task_mode,
    need_confirm, task_ext_info, targets, targets_filter, document, task_policy, document_source, status,
    status_desc, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_subtask
-- Adds a sub-task (run once per row: executemany).
INSERT INTO subtasks (id, task_id, target, status, output, error_code, error_msg) VALUES (?, ?, ?, ?, ?, ?,
    ?);

-- name: batch_task
-- The batch task of this id in this project and instance.
SELECT task_id, project_id, instance_id, app_id, task_name, task_type, task_mode, need_confirm,
    task_ext_info, targets, targets_filter, document, task_policy, document_source, status, status_desc,
    create_time FROM batch_tasks WHERE task_id = ? AND project_id = ? AND instance_id = ?;

-- name: subtask_progress
-- A batch task's sub-tasks counted by status.
SELECT status, count(*) FROM subtasks WHERE task_id = ? GROUP BY status;

-- name: count_batch_tasks
-- How many batch tasks of a type a project's instance has ({filters}: AND app_id, status).
SELECT count(*) FROM batch_tasks WHERE project_id = ? AND instance_id = ? AND task_type = ?{filters};

-- name: list_batch_tasks
-- A page of them, newest id first, before the marker ({filters} as in count_batch_tasks).
SELECT task_id, project_id, instance_id, app_id, task_name, task_type, task_mode, need_confirm,
    task_ext_info, targets, targets_filter, document, task_policy, document_source, status, status_desc,
    create_time FROM batch_tasks WHERE project_id = ? AND instance_id = ? AND task_type = ?{filters} AND
    task_id < ? ORDER BY task_id DESC LIMIT ? OFFSET ?;

-- name: count_listed_subtasks
-- How many sub-tasks of a task match ({filters}: AND status, target).
SELECT count(*) FROM subtasks WHERE task_id = ?{filters};

-- name: list_subtasks
-- A page of them, newest id first, before the marker ({filters} as in count_listed_subtasks).
SELECT id, target, status, output, error_code, error_msg FROM subtasks WHERE task_id = ?{filters} AND id < ?
    ORDER BY id DESC LIMIT ? OFFSET ?;

-- name: subtask_rows
-- A keyset page of a task's sub-tasks in id order, after an id.
SELECT id, target, status, output, error_code, error_msg FROM subtasks WHERE task_id = ? AND id > ? ORDER BY
    id LIMIT ?;

-- name: subtask_columns
-- Every sub-task of a task in id order, without the id (the export's rows).
SELECT target, status, output, error_code, error_msg FROM subtasks WHERE task_id = ? ORDER BY id;

-- name: count_subtasks
-- How many sub-tasks a task has.
SELECT count(*) FROM subtasks WHERE task_id = ?;

-- name: subtask_statuses
-- The status of each of the given targets ({targets}: up to 500 placeholders) that is a sub-task of the task.
SELECT target, status FROM subtasks WHERE task_id = ? AND target IN ({targets});

-- name: upsert_subtask_result
-- Adds a sub-task, or updates the one of its target, keeping its id (executemany).
INSERT INTO subtasks (id, task_id, target, status, output, error_code, error_msg) VALUES (?, ?, ?, ?, ?, ?,
    ?) ON CONFLICT (task_id, target) DO UPDATE SET status = excluded.status, output = excluded.output,
    error_code = excluded.error_code, error_msg = excluded.error_msg;

-- name: set_batch_status
-- Sets a batch task's status and its description.
UPDATE batch_tasks SET status = ?, status_desc = ? WHERE task_id = ?;

-- name: delete_subtasks
-- Deletes a batch task's sub-tasks.
DELETE FROM subtasks WHERE task_id = ?;

-- name: delete_batch_task
-- Deletes a batch task.
DELETE FROM batch_tasks WHERE task_id = ?;

-- name: export_task
-- The export task of this id.
SELECT export_task_id, owner, project_id, instance_id, resource_type, batch_task_id, export_format,
    app_type, app_id, conditions_key, status, status_desc, progress, export_count, create_time, end_time,
    version, run_state, run_token, attempts, worker_id, lease_until, queued_at, file_generation, file_size,
    file_sha256, file_key FROM export_tasks WHERE export_task_id = ?;

-- name: export_tasks_by_ids
-- The export tasks of the given ids ({ids}: up to 500 placeholders) that exist.
SELECT export_task_id, owner, project_id, instance_id, resource_type, batch_task_id, export_format,
    app_type, app_id, conditions_key, status, status_desc, progress, export_count, create_time, end_time,
    version, run_state, run_token, attempts, worker_id, lease_until, queued_at, file_generation, file_size,
    file_sha256, file_key FROM export_tasks WHERE export_task_id IN ({ids});

-- name: export_task_same_conditions
-- The owner's export task of these conditions (unique).
SELECT export_task_id, owner, project_id, instance_id, resource_type, batch_task_id, export_format,
    app_type, app_id, conditions_key, status, status_desc, progress, export_count, create_time, end_time,
    version, run_state, run_token, attempts, worker_id, lease_until, queued_at, file_generation, file_size,
    file_sha256, file_key FROM export_tasks WHERE owner = ? AND conditions_key = ?;

-- name: count_export_tasks
-- How many export tasks the owner has.
SELECT count(*) FROM export_tasks WHERE owner = ?;

-- name: count_unfinished_export_tasks
-- How many of them are unfinished (Processing).
SELECT count(*) FROM export_tasks WHERE owner = ? AND status = 'Processing';

-- name: earliest_finished_export_task
-- The owner's finished export task created first (ties: the lower id).
SELECT export_task_id, owner, project_id, instance_id, resource_type, batch_task_id, export_format,
    app_type, app_id, conditions_key, status, status_desc, progress, export_count, create_time, end_time,
    version, run_state, run_token, attempts, worker_id, lease_until, queued_at, file_generation, file_size,
    file_sha256, file_key FROM export_tasks WHERE owner = ? AND status <> 'Processing' ORDER BY create_time,
    export_task_id LIMIT 1;

-- name: insert_export_task
-- Adds an export task.
INSERT INTO export_tasks (export_task_id, owner, project_id, instance_id, resource_type, batch_task_id,
    export_format, app_type, app_id, conditions_key, status, status_desc, progress, export_count,
    create_time, end_time, version, run_state, run_token, attempts, worker_id, lease_until, queued_at,
    file_generation, file_size, file_sha256, file_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: update_export_task
-- Sets columns ({sets}: column = placeholder, ...) of an export task and bumps its version.
UPDATE export_tasks SET {sets}, version = version + 1 WHERE export_task_id = ?;

-- name: update_export_task_of_run
-- The same, only while the given run is the task's current one.
UPDATE export_tasks SET {sets}, version = version + 1 WHERE export_task_id = ? AND run_token = ? AND
    run_state = 'running';

-- name: delete_export_task
-- Deletes an export task.
DELETE FROM export_tasks WHERE export_task_id = ?;

-- name: delete_task_requests
-- Deletes the idempotency records naming an export task.
DELETE FROM export_requests WHERE export_task_id = ?;

-- name: count_listed_export_tasks
-- How many export tasks of the owner in an instance match ({filters}: AND column = value).
SELECT count(*) FROM export_tasks WHERE owner = ? AND instance_id = ?{filters};

-- name: list_export_tasks
-- A page of them, newest id first, before the marker ({filters} as in count_listed_export_tasks).
SELECT export_task_id, owner, project_id, instance_id, resource_type, batch_task_id, export_format,
    app_type, app_id, conditions_key, status, status_desc, progress, export_count, create_time, end_time,
    version, run_state, run_token, attempts, worker_id, lease_until, queued_at, file_generation, file_size,
    file_sha256, file_key FROM export_tasks WHERE owner = ? AND instance_id = ?{filters} AND export_task_id
    < ? ORDER BY export_task_id DESC LIMIT ? OFFSET ?;

-- name: request_task_id
-- The export task an owner's request id created.
SELECT export_task_id FROM export_requests WHERE owner = ? AND request_id = ?;

-- name: insert_request
-- Records the export task a request id created: (owner, request_id, export_task_id, created_at).
INSERT INTO export_requests VALUES (?, ?, ?, ?);

-- name: count_exports_by_run_state
-- Export runs queued and running, by run state.
SELECT run_state, count(*) FROM export_tasks WHERE run_state IN ('queued', 'running') GROUP BY run_state;

-- name: has_queued_export
-- One row when an export is queued.
SELECT 1 FROM export_tasks WHERE run_state = 'queued' LIMIT 1;

-- name: claim_export
-- Takes the oldest queued export (the write lock makes it exclusive): running, under a new run and lease.
UPDATE export_tasks SET run_state = 'running', run_token = ?, worker_id = ?, lease_until = ?, attempts =
    attempts + 1, version = version + 1 WHERE export_task_id = (SELECT export_task_id FROM export_tasks
    WHERE run_state = 'queued' ORDER BY queued_at LIMIT 1) RETURNING export_task_id, owner, project_id,
    instance_id, resource_type, batch_task_id, export_format, app_type, app_id, conditions_key, status,
    status_desc, progress, export_count, create_time, end_time, version, run_state, run_token, attempts,
    worker_id, lease_until, queued_at, file_generation, file_size, file_sha256, file_key;

-- name: renew_lease
-- Extends the lease of a run while it is the task's current one.
UPDATE export_tasks SET lease_until = ? WHERE export_task_id = ? AND run_token = ? AND run_state = 'running';

-- name: running_exports
-- Every running export.
SELECT export_task_id, owner, project_id, instance_id, resource_type, batch_task_id, export_format,
    app_type, app_id, conditions_key, status, status_desc, progress, export_count, create_time, end_time,
    version, run_state, run_token, attempts, worker_id, lease_until, queued_at, file_generation, file_size,
    file_sha256, file_key FROM export_tasks WHERE run_state = 'running';

-- name: running_exports_expired
-- The running exports whose lease ended before a time.
SELECT export_task_id, owner, project_id, instance_id, resource_type, batch_task_id, export_format,
    app_type, app_id, conditions_key, status, status_desc, progress, export_count, create_time, end_time,
    version, run_state, run_token, attempts, worker_id, lease_until, queued_at, file_generation, file_size,
    file_sha256, file_key FROM export_tasks WHERE run_state = 'running' AND lease_until < ?;

-- name: all_export_file_ids
-- The id of every export task (their local files are the ones to keep).
SELECT export_task_id FROM export_tasks;

-- name: all_export_file_keys
-- The object key of every published result file.
SELECT file_key FROM export_tasks WHERE file_key IS NOT NULL;

-- name: download_limit
-- The owner's download mark.
SELECT last_at, export_task_id, file_generation, resume_offset, resumes FROM download_limits WHERE owner = ?;

-- name: set_download_limit
-- Counts a download: the owner's mark starts again at this one, with no resumes.
INSERT INTO download_limits (owner, last_at, export_task_id, file_generation, resume_offset, resumes) VALUES
    (?, ?, ?, ?, 0, 0) ON CONFLICT (owner) DO UPDATE SET last_at = excluded.last_at, export_task_id =
    excluded.export_task_id, file_generation = excluded.file_generation, resume_offset = 0, resumes = 0;

-- name: record_resume
-- Counts a free resume of the owner's last download, from an offset.
UPDATE download_limits SET resume_offset = ?, resumes = resumes + 1 WHERE owner = ?;

-- name: put_download_limit
-- Puts a whole mark back: (last_at, export_task_id, file_generation, resume_offset, resumes, owner).
UPDATE download_limits SET last_at = ?, export_task_id = ?, file_generation = ?, resume_offset = ?, resumes
    = ? WHERE owner = ?;
