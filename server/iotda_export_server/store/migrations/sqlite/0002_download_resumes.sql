-- Version 2: a resumed download is free only a few times, at increasing offsets, soon after the
-- counted one (without this, asking for offset 1 over and over escaped the 30 s rule).
ALTER TABLE download_limits ADD COLUMN resume_offset INTEGER NOT NULL DEFAULT 0;
ALTER TABLE download_limits ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0;
