-- Version 3: principals get an immutable random id, and everything a principal owns (export tasks,
-- idempotency records, the download mark) is owned by that id instead of the user name, so a user
-- removed and added again under the same name is a new principal that inherits nothing. The per-user
-- advisory lock is taken on the id from this version on.
ALTER TABLE principals ADD COLUMN principal_id TEXT;
UPDATE principals SET principal_id = substr(md5(gen_random_uuid()::text), 1, 24);
ALTER TABLE principals ALTER COLUMN principal_id SET NOT NULL;
ALTER TABLE principals ADD CONSTRAINT principals_principal_id_key UNIQUE (principal_id);

-- Records of users removed before this version (removal left them behind): nobody can reach them
-- any more, and re-adding the name must not bring them back. Their files go with the start-up sweep.
DELETE FROM export_tasks t WHERE NOT EXISTS (SELECT 1 FROM principals p WHERE p."user" = t.owner);
DELETE FROM export_requests r WHERE NOT EXISTS (SELECT 1 FROM principals p WHERE p."user" = r.owner);
DELETE FROM download_limits d WHERE NOT EXISTS (SELECT 1 FROM principals p WHERE p."user" = d.owner);

-- owner: the user name -> the principal's id.
UPDATE export_tasks t SET owner = p.principal_id FROM principals p WHERE p."user" = t.owner;
UPDATE export_requests r SET owner = p.principal_id FROM principals p WHERE p."user" = r.owner;
UPDATE download_limits d SET owner = p.principal_id FROM principals p WHERE p."user" = d.owner;
