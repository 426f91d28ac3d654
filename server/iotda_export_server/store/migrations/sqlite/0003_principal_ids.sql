-- Version 3: principals get an immutable random id, and everything a principal owns (export tasks,
-- idempotency records, the download mark) is owned by that id instead of the user name, so a user
-- removed and added again under the same name is a new principal that inherits nothing.
-- SQLite cannot add a NOT NULL column without a default: the table is rebuilt (nothing references it).
CREATE TABLE principals_v3 (
    "user"                TEXT PRIMARY KEY,       -- the name, unique among current principals
    principal_id          TEXT NOT NULL UNIQUE,   -- 24 hex, made with the principal, never reused
    project_id            TEXT NOT NULL,
    enterprise_project_id TEXT NOT NULL,
    token_sha256          TEXT NOT NULL UNIQUE,   -- the bearer token itself is never stored
    ak                    TEXT NOT NULL UNIQUE,
    sk                    TEXT NOT NULL,          -- needed to verify AK/SK signatures; db file is 0600
    policy                TEXT NOT NULL,          -- JSON: {"Version": "1.1", "Statement": [...]}
    created_at            INTEGER NOT NULL
);
INSERT INTO principals_v3 ("user", principal_id, project_id, enterprise_project_id, token_sha256, ak, sk, policy,
                           created_at)
    SELECT "user", lower(hex(randomblob(12))), project_id, enterprise_project_id, token_sha256, ak, sk, policy,
           created_at FROM principals;
DROP TABLE principals;
ALTER TABLE principals_v3 RENAME TO principals;

-- Records of users removed before this version (removal left them behind): nobody can reach them
-- any more, and re-adding the name must not bring them back. Their files go with the start-up sweep.
DELETE FROM export_tasks WHERE owner NOT IN (SELECT "user" FROM principals);
DELETE FROM export_requests WHERE owner NOT IN (SELECT "user" FROM principals);
DELETE FROM download_limits WHERE owner NOT IN (SELECT "user" FROM principals);

-- owner: the user name -> the principal's id.
UPDATE export_tasks SET owner = (SELECT p.principal_id FROM principals p WHERE p."user" = export_tasks.owner);
UPDATE export_requests SET owner = (SELECT p.principal_id FROM principals p WHERE p."user" = export_requests.owner);
UPDATE download_limits SET owner = (SELECT p.principal_id FROM principals p WHERE p."user" = download_limits.owner);
