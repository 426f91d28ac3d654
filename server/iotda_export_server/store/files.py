"""Result files on the data volume: `<files>/<export_task_id>.zip`, written under a temporary name
in the same directory and renamed into place, so a reader never sees half a file and a failed run
never touches the last good one."""

from __future__ import annotations

import os
import pathlib
import secrets
import time

from ..domain.validation import RECORD_ID

TEMP_SUFFIX = ".part"


class ResultFiles:
    def __init__(self, files_dir: str | os.PathLike):
        self.dir = pathlib.Path(files_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def path(self, export_task_id: str) -> pathlib.Path:
        # IDs reaching here were validated; refuse anything else rather than build a path from it.
        if not RECORD_ID.match(export_task_id):
            raise ValueError(f"not an export task id: {export_task_id!r}")
        return self.dir / f"{export_task_id}.zip"

    def temp_path(self, export_task_id: str) -> pathlib.Path:
        return self.dir / f"{self.path(export_task_id).name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"

    def publish(self, temp: pathlib.Path, export_task_id: str) -> None:
        os.replace(temp, self.path(export_task_id))
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # make the rename durable before the database says Success
        finally:
            os.close(fd)

    def temp_files(self, export_task_id: str) -> list[pathlib.Path]:
        """The temporary files of the task's runs that exist now."""
        return list(self.dir.glob(f"{self.path(export_task_id).name}.*{TEMP_SUFFIX}"))

    def remove(self, export_task_id: str) -> None:
        try:
            self.path(export_task_id).unlink()
        except FileNotFoundError:
            pass

    def sweep(self, known_ids: set[str], temp_older_than: float = 0) -> list[str]:
        """Remove temporary files (older than `temp_older_than` seconds: with shared files another
        host's worker may be writing one) and files of tasks that no longer exist (after a crash)."""
        removed = []
        cutoff = time.time() - temp_older_than
        for p in self.dir.iterdir():
            stem = p.name.split(".", 1)[0]
            try:
                if p.name.endswith(TEMP_SUFFIX):
                    if temp_older_than and p.stat().st_mtime > cutoff:
                        continue
                elif not (p.suffix == ".zip" and stem not in known_ids):
                    continue
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append(p.name)
        return removed
