"""Where result files live: a local directory (the embedded default, `file:///path` or --files-dir)
or an S3-compatible bucket (`s3://bucket/prefix`, store/s3files.py). Both give the same operations:

- begin(export_task_id) -> an Upload a worker writes the zip into (a temporary file, or a multipart
  upload), complete() when whole (size, sha256), abort() otherwise;
- publish(upload, export_task_id) -> the key to record with Success (under the owner's lock);
- open(export_task_id, key) -> (a readable, seekable file, its size), FileNotFoundError if missing;
- drop(upload) when the run was superseded, remove(export_task_id, key=None), discard(key),
  temp_files()/drop_temp() for dead runs, and
  sweep_orphans() for what a crash left behind.

Local: `<files>/<export_task_id>.zip`, written under a temporary name in the same directory and
renamed into place, so a reader never sees half a file and a failed run never touches the last good
one. Files that cannot be reached raise domain.errors.FilesUnavailable.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import secrets
import time
from typing import BinaryIO
from urllib.parse import urlsplit

from ..config import FilesConfig
from ..domain.validation import RECORD_ID

TEMP_SUFFIX = ".part"


class LocalUpload:
    """A run's file in the making: a temporary file in the files directory."""

    sink = None  # the writer writes to `path` itself

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.temp_dir = path.parent
        self.key: str | None = None

    def complete(self) -> tuple[int, str]:
        """The size and sha256 of the written (fsynced) file."""
        h = hashlib.sha256()
        size = 0
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return size, h.hexdigest()

    def abort(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ResultFiles:
    def __init__(self, files_dir: str | os.PathLike):
        self.dir = pathlib.Path(files_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def __str__(self) -> str:
        return str(self.dir)

    def path(self, export_task_id: str) -> pathlib.Path:
        # IDs reaching here were validated; refuse anything else rather than build a path from it.
        if not RECORD_ID.match(export_task_id):
            raise ValueError(f"not an export task id: {export_task_id!r}")
        return self.dir / f"{export_task_id}.zip"

    def temp_path(self, export_task_id: str) -> pathlib.Path:
        return self.dir / f"{self.path(export_task_id).name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"

    def begin(self, export_task_id: str, run_token: str = "") -> LocalUpload:
        return LocalUpload(self.temp_path(export_task_id))

    def publish(self, temp: "pathlib.Path | LocalUpload", export_task_id: str) -> None:
        """Renames the finished file into place (durably); the key to record is None: the id says where."""
        os.replace(getattr(temp, "path", temp), self.path(export_task_id))
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # make the rename durable before the database says Success
        finally:
            os.close(fd)

    def drop(self, upload: "pathlib.Path | LocalUpload") -> None:
        """A finished run's file that is not published (its run was superseded)."""
        LocalUpload(pathlib.Path(getattr(upload, "path", upload))).abort()

    def open(self, export_task_id: str, key: str | None = None) -> tuple[BinaryIO, int]:
        f = open(self.path(export_task_id), "rb")
        try:
            return f, os.fstat(f.fileno()).st_size
        except BaseException:
            f.close()
            raise

    def temp_files(self, export_task_id: str) -> list[pathlib.Path]:
        """The temporary files of the task's runs that exist now."""
        return list(self.dir.glob(f"{self.path(export_task_id).name}.*{TEMP_SUFFIX}"))

    def drop_temp(self, temps: list) -> None:
        for path in temps:  # a later run of the task writes under another random name
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def remove(self, export_task_id: str, key: str | None = None) -> None:
        try:
            self.path(export_task_id).unlink()
        except FileNotFoundError:
            pass

    def discard(self, key: str | None) -> None:
        """A replaced file: the rename already took its place."""

    def sweep_orphans(self, reader, grace_seconds: float = 0) -> list[str]:
        return self.sweep(reader.all_export_file_ids(), temp_older_than=grace_seconds)

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


def open_files(config: FilesConfig, data_dir: str | os.PathLike):
    """The result files of a process, where `config` resolved against `data_dir` says (a local
    directory, or an S3 bucket with its scratch space in `data_dir`). An S3 bucket is checked now
    (ValueError naming it when it is missing or out of reach), so a misconfigured process stops at
    start-up."""
    config = config.resolved(data_dir)
    if config.dir is not None:
        return ResultFiles(config.dir)
    from .s3files import S3Files
    parts = urlsplit(config.url)
    files = S3Files(parts.netloc, parts.path.strip("/"), scratch_dir=data_dir, endpoint=config.s3_endpoint,
                    region=config.s3_region)
    files.check_bucket()
    return files
