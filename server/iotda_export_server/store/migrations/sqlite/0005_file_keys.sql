-- Version 4: the object key of a task's published result file when the files live in an S3 bucket
-- (<prefix>/<export_task_id>/<run_token>.zip), written in the transaction that marks Success. Each
-- run uploads to a key of its own, so a reader follows the key of the row it read: the previous good
-- object or the new complete one, never a part. NULL with the local directory (<id>.zip there).
ALTER TABLE export_tasks ADD COLUMN file_key TEXT;
