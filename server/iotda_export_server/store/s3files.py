"""Result files in an S3-compatible bucket (`--files-url s3://bucket/prefix`), for replicas and workers
on hosts that share no filesystem.

Each run writes its own object, `<prefix>/<export_task_id>/<run_token>.zip`, as a multipart upload
fed while the zip is written (parts of rules.S3_PART_BYTES from a bounded queue) and completed only
when the zip is whole and its sha256 known. The worker records that key in the row in the transaction
that marks Success, so publishing is atomic without a rename: a reader follows the key of the row it
read, the previous good object or the new complete one. Replaced, deleted and evicted objects are
deleted after the commit; what a crash leaves (an open upload, an object no row names) goes with
ExportJobs.recover and the sweep.

boto3 (sync, called from threads: the worker's own, asyncio.to_thread in the server), path-style
addressing for self-hosted stores, the standard AWS_* variables or a profile for credentials.
Failures to reach the store become FilesUnavailable, whose message never holds a credential.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import queue
import secrets
import threading
from typing import Iterator

import boto3
import botocore.exceptions
from botocore.config import Config
from urllib3.exceptions import HTTPError as Urllib3Error

from ..domain import rules
from ..domain.errors import FilesUnavailable
from ..domain.validation import RECORD_ID

log = logging.getLogger("iotda_export.files")
# botocore says at INFO where it found credentials and the endpoint, in every process: noise here.
_botocore_log = logging.getLogger("botocore")
_botocore_log.setLevel(max(_botocore_log.getEffectiveLevel(), logging.WARNING))

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_NO_UPLOAD_CODES = {"404", "NoSuchUpload"}
# Found missing before any request is sent: not the store's fault.
_NO_CREDENTIALS = (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)


class S3Files:
    sweep_while_running = True  # see ExportJobs.files_swept_periodically
    def __init__(self, bucket: str, prefix: str, scratch_dir, endpoint: str | None = None,
                 region: str | None = None):
        if not bucket:
            raise ValueError("--files-url s3://bucket/prefix: the bucket is missing")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.scratch_dir = scratch_dir  # the writer's working files (rows, deflated segments) stay local
        session = boto3.session.Session(region_name=region or None)  # region: flag, else AWS_REGION/profile
        # endpoint None: botocore reads AWS_ENDPOINT_URL (or the profile's), else AWS itself.
        self.client = session.client("s3", endpoint_url=endpoint or None, config=Config(
            s3={"addressing_style": "path"},  # self-hosted stores have no bucket DNS names
            retries={"max_attempts": rules.S3_MAX_ATTEMPTS, "mode": "standard"},
            connect_timeout=rules.S3_CONNECT_TIMEOUT_SECONDS, read_timeout=rules.S3_READ_TIMEOUT_SECONDS,
            max_pool_connections=64))
        self.where = f"s3://{bucket}/{self.prefix}" + (f" at {self.client.meta.endpoint_url}")

    def __str__(self) -> str:
        return self.where

    # -- keys --------------------------------------------------------------------------------------

    def _task_prefix(self, export_task_id: str) -> str:
        # IDs reaching here were validated; refuse anything else rather than build a key from it.
        if not RECORD_ID.match(export_task_id):
            raise ValueError(f"not an export task id: {export_task_id!r}")
        return f"{self.prefix}/{export_task_id}/" if self.prefix else f"{export_task_id}/"

    def key(self, export_task_id: str, run_token: str) -> str:
        return f"{self._task_prefix(export_task_id)}{run_token or secrets.token_hex(8)}.zip"

    def _task_of(self, key: str) -> str | None:
        rest = key[len(self.prefix) + 1:] if self.prefix else key
        task_id, _, name = rest.partition("/")
        return task_id if RECORD_ID.match(task_id) and name.endswith(".zip") and "/" not in name else None

    @contextlib.contextmanager
    def _reaching(self, doing: str) -> Iterator[None]:
        """Turns a store out of reach into FilesUnavailable (missing objects are the caller's case)."""
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _MISSING_CODES:
                raise FileNotFoundError(f"{doing}: no such object") from exc
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            raise FilesUnavailable(f"object store {self.where} refused {doing} ({code or status})") from exc
        except (botocore.exceptions.BotoCoreError, Urllib3Error, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise FilesUnavailable(f"object store {self.where} unreachable while {doing}"
                                   f" ({type(exc).__name__})") from exc

    def check_bucket(self) -> None:
        """At start-up: the bucket exists and answers (ValueError naming it otherwise)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ValueError(f"the bucket {self.bucket!r} does not exist at {self.client.meta.endpoint_url}:"
                                 " create it first (the service never creates buckets)") from None
            raise ValueError(f"the bucket {self.bucket!r} at {self.client.meta.endpoint_url} refused access"
                             f" ({code}): check the credentials (AWS_* variables or profile)") from None
        except _NO_CREDENTIALS:
            raise ValueError(f"no credentials for the bucket {self.bucket!r} at {self.client.meta.endpoint_url}:"
                             " set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE") from None
        except (botocore.exceptions.BotoCoreError, Urllib3Error, OSError) as exc:
            raise ValueError(f"the object store {self.client.meta.endpoint_url} of bucket {self.bucket!r} is"
                             f" unreachable ({type(exc).__name__}: {exc})") from None

    def check(self) -> None:
        """For the readiness probe: raises FilesUnavailable unless the bucket answers."""
        try:
            with self._reaching("checking the bucket"):
                self.client.head_bucket(Bucket=self.bucket)
        except FileNotFoundError as exc:
            raise FilesUnavailable(f"the bucket {self.bucket!r} is gone from {self.where}") from exc

    # -- writing -------------------------------------------------------------------------------------

    def begin(self, export_task_id: str, run_token: str = "") -> "S3Upload":
        return S3Upload(self, self.key(export_task_id, run_token))

    def publish(self, upload: "S3Upload", export_task_id: str) -> str:
        """The upload is complete already: its key is what the row records (from now on the
        object is the row's: abort() leaves it)."""
        upload._state = "published"
        return upload.key

    def drop(self, upload: "S3Upload") -> None:
        """A finished run's object that is not published (its run was superseded)."""
        upload.abort()

    def discard(self, key: str | None) -> None:
        """Deletes an object no row names any more (a replaced file)."""
        if key:
            with self._reaching("deleting a replaced file"):
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def remove(self, export_task_id: str, key: str | None = None) -> None:
        """The task's file at `key`; without a key every object of the task (deleted, evicted)."""
        with self._reaching("removing a file"):
            if key:
                self.client.delete_object(Bucket=self.bucket, Key=key)
                return
            for obj in self._objects(self._task_prefix(export_task_id)):
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])

    # -- reading -------------------------------------------------------------------------------------

    def open(self, export_task_id: str, key: str | None = None) -> tuple["S3Reader", int]:
        if not key:
            raise FileNotFoundError(f"export task {export_task_id} records no object key")
        with self._reaching("reading a file"):
            size = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        return S3Reader(self, key, size), size

    # -- recovery ------------------------------------------------------------------------------------

    def temp_files(self, export_task_id: str) -> list[tuple[str, str]]:
        """(key, upload id) of the task's multipart uploads open now (a dead run's)."""
        with self._reaching("listing uploads"):
            return [(u["Key"], u["UploadId"]) for u in self._uploads(self._task_prefix(export_task_id))]

    def drop_temp(self, temps: list[tuple[str, str]]) -> None:
        for key, upload_id in temps:
            self._abort(key, upload_id)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            with self._reaching("aborting an upload"):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except FileNotFoundError:
            pass  # gone already (completed or aborted by another process)
        except FilesUnavailable:
            log.warning("could not abort the upload of %s: the sweep retries", key)

    def sweep_orphans(self, reader, grace_seconds: float) -> list[str]:
        """Deletes objects no task records and aborts uploads no running task owns, both older than
        the grace (another host may have completed or begun one a moment ago). Returns their keys."""
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=grace_seconds)
        scope = f"{self.prefix}/" if self.prefix else ""
        removed = []
        with self._reaching("sweeping orphans"):
            # Uploads first and the keys after them: a run that completes between the two reads
            # records its key before the object listing can see the object.
            running = {t.export_task_id for t in reader.running_exports()}
            for u in self._uploads(scope):
                if u["Initiated"] < cutoff and self._task_of(u["Key"]) not in running:
                    self._abort(u["Key"], u["UploadId"])
                    removed.append(u["Key"])
            known = reader.all_export_file_keys()
            for obj in self._objects(scope):
                # Nor an object of a running task: its run may have completed the upload and not yet
                # recorded the key, and a store may date a multipart object from the upload's start
                # (S3 does), so a long run's object can look older than the grace.
                task = self._task_of(obj["Key"])
                if obj["Key"] not in known and obj["LastModified"] < cutoff and task and task not in running:
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                    removed.append(obj["Key"])
        return removed

    def _objects(self, prefix: str) -> Iterator[dict]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _uploads(self, prefix: str) -> Iterator[dict]:
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                  Prefix=prefix):
            yield from page.get("Uploads", []) or []


class S3Upload:
    """A write-only stream into a multipart upload: `sink` for the zip writer. Bytes are hashed as
    they come; each full part goes to a bounded queue that one thread uploads from, so writing and
    uploading overlap and memory stays at a few parts. complete() uploads the rest and completes
    the object; abort() aborts the upload (and deletes the object if it was completed)."""

    def __init__(self, files: S3Files, key: str):
        self.files = files
        self.key = key
        self.path = None  # the writer writes to `sink`
        self.temp_dir = files.scratch_dir
        self.sink = self
        with files._reaching("starting an upload"):
            self.upload_id = files.client.create_multipart_upload(
                Bucket=files.bucket, Key=key, ContentType="application/zip")["UploadId"]
        self._digest = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        self._parts: list[dict] = []
        self._next_part = 1
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._state = "open"  # -> "completed" -> "published" | "aborted"
        self._thread = threading.Thread(target=self._upload_parts, name="s3-upload", daemon=True)
        self._thread.start()

    # The file-object side, as zipfile uses it (no tell(): zipfile then writes data descriptors).
    def write(self, data) -> int:
        if self._error is not None:
            raise self._error
        self._digest.update(data)
        self._size += len(data)
        self._buffer += data
        part = rules.S3_PART_BYTES
        while len(self._buffer) >= part:
            self._send(bytes(self._buffer[:part]))
            del self._buffer[:part]
        return len(data)

    def flush(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """zipfile closes what it was given only when it opened it; nothing to do."""

    def _send(self, data: bytes) -> None:
        number = self._next_part
        self._next_part += 1
        while True:  # blocks while the uploader is behind (bounded memory); stops on its failure
            if self._error is not None:
                raise self._error
            try:
                self._queue.put((number, data), timeout=0.5)
                return
            except queue.Full:
                continue

    def _upload_parts(self) -> None:
        files = self.files
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain: the writer sees the error at its next write
            number, data = item
            try:
                with files._reaching("uploading a part"):
                    etag = files.client.upload_part(Bucket=files.bucket, Key=self.key, UploadId=self.upload_id,
                                                    PartNumber=number, Body=data)["ETag"]
                self._parts.append({"PartNumber": number, "ETag": etag})
            except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
                self._error = exc

    def _stop_uploader(self) -> None:
        if self._thread.is_alive():
            while True:
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self._thread.join()

    def complete(self) -> tuple[int, str]:
        """Uploads the last part and completes the object; returns its size and sha256."""
        if self._buffer or self._next_part == 1:  # the last part may be short; a file has one at least
            self._send(bytes(self._buffer))
            self._buffer = bytearray()
        self._stop_uploader()
        if self._error is not None:
            raise self._error
        files = self.files
        with files._reaching("completing an upload"):
            files.client.complete_multipart_upload(
                Bucket=files.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])})
        self._state = "completed"
        return self._size, self._digest.hexdigest()

    def abort(self) -> None:
        """Idempotent; best effort (what fails here, the sweep removes later)."""
        if self._state in ("aborted", "published"):
            return
        state, self._state = self._state, "aborted"
        self._error = self._error or RuntimeError("the upload was aborted")
        self._stop_uploader()
        if state == "completed":
            try:
                self.files.discard(self.key)
            except FilesUnavailable:
                log.warning("could not delete the dropped object %s: the sweep removes it", self.key)
        else:
            self.files._abort(self.key, self.upload_id)


class S3Reader:
    """A read-only, seekable file over an object: ranged GETs of at most rules.S3_READ_WINDOW_BYTES,
    read from the response as asked (never a whole window in memory)."""

    def __init__(self, files: S3Files, key: str, size: int):
        self.files = files
        self.key = key
        self.size = size
        self._position = 0
        self._body = None
        self._body_end = 0

    def seek(self, position: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("only absolute positions")
        if position != self._position:
            self._close_body()
            self._position = position
        return position

    def tell(self) -> int:
        return self._position

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._position
        if n == 0 or self._position >= self.size:
            return b""
        files = self.files
        with files._reaching("reading a file"):
            if self._body is None:
                end = min(self._position + rules.S3_READ_WINDOW_BYTES, self.size)
                response = files.client.get_object(Bucket=files.bucket, Key=self.key,
                                                   Range=f"bytes={self._position}-{end - 1}")
                self._body, self._body_end = response["Body"], end
            data = self._body.read(min(n, self._body_end - self._position))
        if not data:  # the store ended the response early
            self._close_body()
            raise FilesUnavailable(f"object store {files.where} ended a read early")
        self._position += len(data)
        if self._position >= self._body_end:
            self._close_body()
        return data

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()

    def __enter__(self) -> "S3Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
