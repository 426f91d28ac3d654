"""Export-task rules: create (quotas, eviction, overwrite, idempotency), list, get, cancel, delete,
download admission. The task's run (its state machine, and the job lifecycle the workers drive) is
domain/jobs.py's.

Every per-user decision runs inside one store transaction locked for that user (SQLite: BEGIN
IMMEDIATE; PostgreSQL: an advisory transaction lock), so the counts cannot race.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import BinaryIO

from . import ids, pages, rules, validation
from .errors import (Codes, DataLoss, ExportTaskNotFound, FailedPrecondition, FilesUnavailable, BatchTaskNotFound,
                     OutOfRange, QuotaExceeded, RateLimited, Unauthenticated, invalid)
from .jobs import cancelled, created
from .model import Caller, ExportTask, InvalidResourceCondition, Page, ResourceCondition

log = logging.getLogger("iotda_export.exports")


@dataclass(frozen=True)
class CreateExportRequest:
    resource_type: str
    resource_condition: ResourceCondition | None  # None: not given (refused, it is mandatory)
    export_format: str
    app_type: str
    app_id: str
    request_id: str


@dataclass(frozen=True)
class ListExportFilter:
    resource_type: str
    # None: every export; the transport's InvalidResourceCondition: text it could not read, refused here.
    resource_condition: ResourceCondition | InvalidResourceCondition | None
    app_type: str
    app_id: str


@dataclass(frozen=True)
class Download:
    """An admitted download: the file to stream from `offset`, at most `length` bytes."""

    task: ExportTask
    file: BinaryIO  # opened under the same lock that publishes files: it is the file of `task`
    offset: int
    length: int
    file_name: str
    owner: str = ""
    # The user's download mark before this download, and the one it set (a store record, compared
    # whole): a download that turns out damaged is un-counted only while its mark is still current.
    previous_mark: tuple | None = None
    mark: tuple | None = None


def file_name(export_task_id: str) -> str:
    return f"export-{export_task_id}.zip"


def inner_file_name(export_task_id: str) -> str:
    return f"export-{export_task_id}.xls"


def damaged_description(reason: str) -> str:
    """The status_desc of a task whose result file was found damaged."""
    return f"the result file is damaged ({reason}); create the export again to re-run it"


def _require_principal(tx, caller: Caller) -> None:
    """Inside the principal's lock, before writing anything it owns: the principal still exists. A
    removal takes the same lock, so a call authenticated just before it cannot leave records behind."""
    if tx.principal_by("principal_id", caller.owner) is None:
        raise Unauthenticated()


class ExportService:
    """Export-task operations for callers. `files` is the store's ResultFiles."""

    def __init__(self, store, files, clock=ids.now_ms, on_change=None):
        self.store = store
        self.files = files
        self.clock = clock
        # Its point reads (get, list) cost less than a thread hop: the transport may run them inline.
        self.point_reads_inline = store.cheap_point_reads
        # Called with an export_task_id after a change this process made (wakes watchers and workers).
        self.on_change = on_change or (lambda _id: None)

    # -- create ----------------------------------------------------------------------------------

    def validate_create(self, r: CreateExportRequest) -> tuple[str, str | None]:
        """Returns (app_type, app_id) after checking every field; app_id resolved for APP."""
        app_type = r.app_type or rules.APP_TYPE_GLOBAL
        validation.collect(
            lambda: validation.require(r.resource_type, "resource_type") == rules.RESOURCE_TYPE_BATCH_TASK
            or _raise(invalid("resource_type", f"must be {rules.RESOURCE_TYPE_BATCH_TASK}")),
            lambda: validation.batch_task_id(r.resource_condition.task_id, "resource_condition.task_id")
            if r.resource_condition is not None else _raise(invalid("resource_condition", "is mandatory")),
            lambda: r.export_format in ("", rules.EXPORT_FORMAT_XLS)
            or _raise(invalid("export_format", "must be xls")),
            lambda: app_type in (rules.APP_TYPE_GLOBAL, rules.APP_TYPE_APP)
            or _raise(invalid("app_type", "must be GLOBAL or APP")),
            lambda: not r.app_id or validation.app_id(r.app_id),
            lambda: not r.request_id or validation.match(validation.REQUEST_ID, r.request_id, "request_id",
                                                         "must be 1-64 of [A-Za-z0-9_-]"),
        )
        # GLOBAL is the tenant's scope whatever app_id says: the seed gives app_id a meaning only with
        # APP, so with GLOBAL it is checked and then not part of the scope (nor of "same conditions").
        app_id = (r.app_id or rules.DEFAULT_APP_ID) if app_type == rules.APP_TYPE_APP else None
        return app_type, app_id

    def create(self, caller: Caller, r: CreateExportRequest) -> ExportTask:
        app_type, app_id = self.validate_create(r)
        task_id = r.resource_condition.task_id
        export_format = rules.EXPORT_FORMAT_XLS
        conditions_key = json.dumps([caller.project_id, caller.instance_id, r.resource_type, task_id,
                                     export_format, app_type, app_id], separators=(",", ":"))
        owner = caller.owner
        evicted: list[str] = []
        with self.store.transaction(lock_key=owner) as tx:
            _require_principal(tx, caller)
            if r.request_id:
                known = tx.request_task_id(owner, r.request_id)
                if known is not None and (task := tx.export_task(known)) is not None:
                    if task.conditions_key != conditions_key:
                        raise invalid("request_id", "was already used by a create with other conditions")
                    return task  # a retried create: the first call's result, nothing run again
            batch = tx.batch_task(caller.project_id, caller.instance_id, task_id, with_progress=False)
            if batch is None or (app_id is not None and batch.app_id != app_id):
                raise BatchTaskNotFound(task_id)
            now = self.clock()
            existing = tx.export_task_same_conditions(owner, conditions_key)
            if existing is not None and existing.unfinished:
                task = existing  # same conditions, already running: not started twice
            else:
                if tx.count_export_tasks(owner, unfinished_only=True) >= rules.MAX_UNFINISHED_EXPORT_TASKS_PER_USER:
                    raise QuotaExceeded(
                        f"The user already has {rules.MAX_UNFINISHED_EXPORT_TASKS_PER_USER} unfinished export"
                        " tasks; wait until one finishes.", quota_id="unfinished-export-tasks-per-user",
                        subject=f"user:{caller.principal.user}", limit=rules.MAX_UNFINISHED_EXPORT_TASKS_PER_USER,
                        error_code=Codes.EXPORT_UNFINISHED_LIMIT)
                if existing is not None:  # same conditions: re-run, the file is replaced on success
                    tx.update_export_task(existing.export_task_id, **created(now))
                    task = tx.export_task(existing.export_task_id)
                else:
                    while tx.count_export_tasks(owner) >= rules.MAX_EXPORT_TASKS_PER_USER:
                        oldest = tx.earliest_finished_export_task(owner)
                        if oldest is None:  # cannot happen while MAX_UNFINISHED < MAX_TASKS
                            break
                        tx.delete_export_task(oldest.export_task_id)
                        evicted.append(oldest.export_task_id)
                    task = ExportTask(
                        export_task_id=ids.new_id(), owner=owner, project_id=caller.project_id,
                        instance_id=caller.instance_id, resource_type=r.resource_type, batch_task_id=task_id,
                        export_format=export_format, app_type=app_type, app_id=app_id,
                        conditions_key=conditions_key, version=1, file_generation=0, file_size=None,
                        file_sha256=None, **created(now))
                    tx.insert_export_task(task)
            if r.request_id:
                tx.insert_request(owner, r.request_id, task.export_task_id, now)
        for export_task_id in evicted:  # after commit: a crash here leaves files the start-up sweep removes
            remove_files(self.files, export_task_id)
            self.on_change(export_task_id)
        self.on_change(task.export_task_id)
        return task

    # -- read ------------------------------------------------------------------------------------

    def get(self, caller: Caller, export_task_id: str) -> ExportTask:
        validation.export_task_id(export_task_id)
        task = self.store.reader().export_task(export_task_id)
        if task is None or not _visible(task, caller):
            raise ExportTaskNotFound(export_task_id)
        return task

    def list(self, caller: Caller, f: ListExportFilter, limit: int | None, offset: int | None,
             marker: str, item_size=None) -> tuple[list[ExportTask], Page]:
        """A page of the caller's export tasks; with `item_size` (encoded bytes of a task) it stops
        before rules.LIST_PAGE_BUDGET_BYTES."""
        limit, offset, marker = validation.paging(limit, offset, marker)
        filters = {}
        checks = []
        if f.resource_type:
            checks.append(lambda: f.resource_type == rules.RESOURCE_TYPE_BATCH_TASK
                          or _raise(invalid("resource_type", f"must be {rules.RESOURCE_TYPE_BATCH_TASK}")))
            filters["resource_type"] = f.resource_type
        condition = f.resource_condition
        if isinstance(condition, InvalidResourceCondition):
            checks.append(lambda: _raise(invalid("resource_condition", condition.reason)))
        elif condition is not None:
            def check_condition():
                filters["batch_task_id"] = validation.batch_task_id(condition.task_id, "resource_condition.task_id")
            checks.append(check_condition)
        if f.app_type:
            checks.append(lambda: f.app_type in (rules.APP_TYPE_GLOBAL, rules.APP_TYPE_APP)
                          or _raise(invalid("app_type", "must be GLOBAL or APP")))
            filters["app_type"] = f.app_type
        if f.app_id:
            checks.append(lambda: validation.app_id(f.app_id))
            filters["app_id"] = f.app_id
        validation.collect(*checks)
        # A principal belongs to one project, so the owner's tasks are all in caller.project_id.
        tasks, count = self.store.reader().list_export_tasks(caller.owner, caller.instance_id, filters, marker,
                                                             offset, limit)
        tasks = pages.fit(tasks, item_size)
        return tasks, Page(count=count, marker=tasks[-1].export_task_id if tasks else "")

    # -- cancel / delete -------------------------------------------------------------------------

    def cancel(self, caller: Caller, export_task_id: str) -> ExportTask:
        validation.export_task_id(export_task_id)
        with self.store.transaction(lock_key=caller.owner) as tx:
            task = tx.export_task(export_task_id)
            if task is None or not _visible(task, caller):
                raise ExportTaskNotFound(export_task_id)
            if task.unfinished:
                tx.update_export_task(export_task_id, **cancelled(self.clock()))
                task = tx.export_task(export_task_id)
        self.on_change(export_task_id)
        return task

    def delete(self, caller: Caller, export_task_id: str) -> None:
        validation.export_task_id(export_task_id)
        with self.store.transaction(lock_key=caller.owner) as tx:
            task = tx.export_task(export_task_id)
            if task is None or not _visible(task, caller):
                raise ExportTaskNotFound(export_task_id)
            tx.delete_export_task(export_task_id)
        # After commit: a worker finishing this task now finds its row gone and drops its file.
        remove_files(self.files, export_task_id)
        self.on_change(export_task_id)

    # -- download --------------------------------------------------------------------------------

    def admit_download(self, caller: Caller, export_task_id: str, offset: int, limit: int) -> Download:
        """Checks the task, its file and the user's download rate; counts the download.

        The file is opened, and its size compared with the recorded one, before the download counts:
        a missing or resized file is damaged (DataLoss; the task is marked, nothing counted)."""
        # A negative offset or limit is invalid whatever the file (INVALID_ARGUMENT); only an offset past
        # the end of this file is OUT_OF_RANGE (gRPC's own example of the difference).
        validation.collect(
            lambda: validation.export_task_id(export_task_id),
            lambda: offset >= 0 or _raise(invalid("offset", "must not be negative")),
            lambda: limit >= 0 or _raise(invalid("limit", "must not be negative")),
        )
        owner = caller.owner
        damage = None
        with self.store.transaction(lock_key=owner) as tx:
            task = tx.export_task(export_task_id)
            if task is None or not _visible(task, caller):
                raise ExportTaskNotFound(export_task_id)
            if task.file_damaged:
                then = ("it is running again" if task.unfinished
                        else "create the export again to re-run it")
                raise DataLoss(export_task_id, f"The result file of export task {export_task_id} was found damaged"
                                               f" and removed; {then}.")
            if not task.file_available:
                raise FailedPrecondition(
                    f"The export task {export_task_id} has no file yet (status {task.status}); download it"
                    " after it reaches Success.", subject=f"export-task:{export_task_id}",
                    violation_type="NOT_SUCCEEDED", error_code=Codes.EXPORT_FILE_NOT_READY)
            if offset > task.file_size:
                raise OutOfRange("offset", f"is past the end of the file ({task.file_size} bytes)")
            f, damage = self._open_checked(task)
            if damage is not None:
                self._mark_damaged(tx, task, damage)
            else:
                try:  # (the task is the caller's, so the principal exists: removal deletes its tasks)
                    previous, mark = self._count_download(tx, caller, task, offset)
                except BaseException:
                    f.close()
                    raise
        if damage is not None:
            raise self._damaged(task, damage)
        length = task.file_size - offset
        if limit:
            length = min(length, limit)
        return Download(task=task, file=f, offset=offset, length=length, file_name=file_name(export_task_id),
                        owner=owner, previous_mark=previous, mark=mark)

    def _open_checked(self, task: ExportTask) -> tuple[BinaryIO | None, str | None]:
        """(the open file, None), or (None, what is wrong with it): missing, or not the recorded size.
        A store out of reach raises FilesUnavailable (nothing is marked: the file may be fine)."""
        try:
            f, size = self.files.open(task.export_task_id, task.file_key)
        except FileNotFoundError:  # removed behind the service's back (a lost volume, by hand)
            return None, "the file is missing"
        if size != task.file_size:
            f.close()
            return None, f"{size} bytes instead of {task.file_size}"
        return f, None

    def _count_download(self, tx, caller: Caller, task: ExportTask, offset: int) -> tuple[tuple | None, tuple]:
        """Applies the one-download-per-30-s rule and counts the download (or a free resume of the last
        one); returns the user's mark before and after."""
        owner = caller.owner
        now = self.clock()
        last = tx.download_limit(owner)
        resuming = (offset > 0 and last is not None and last.export_task_id == task.export_task_id
                    and last.file_generation == task.file_generation and offset > last.resume_offset
                    and last.resumes < rules.DOWNLOAD_FREE_RESUMES
                    and now - last.last_at < rules.DOWNLOAD_RESUME_WINDOW_SECONDS * 1000)
        interval_ms = int(rules.DOWNLOAD_INTERVAL_SECONDS * 1000)
        if last is not None and not resuming and now - last.last_at < interval_ms:
            wait = (last.last_at + interval_ms - now) / 1000
            raise RateLimited(
                f"Downloads are limited to one every {rules.DOWNLOAD_INTERVAL_SECONDS:.0f} seconds per user;"
                f" retry in {wait:.1f} s.", quota_id="downloads-per-user-per-30s",
                subject=f"user:{caller.principal.user}",
                retry_after=wait, error_code=Codes.DOWNLOAD_RATE_LIMIT)
        if resuming:
            tx.record_resume(owner, offset)
        else:
            tx.set_download_limit(owner, now, task.export_task_id, task.file_generation)
        return last, tx.download_limit(owner)

    def verify_download(self, d: Download, sha256_hex: str) -> None:
        """After the whole file went through the digest (before the last bytes are sent): raises
        DataLoss, un-counting the download and marking the task, unless it is the recorded sha256."""
        if d.task.file_sha256 is not None and sha256_hex == d.task.file_sha256:
            return
        self.reject_download(d, "its sha256 differs from the recorded one")

    def reject_download(self, d: Download, reason: str) -> None:
        """The file of an admitted download turned out damaged while streaming: restores the user's
        previous download mark (only if the mark is still the one this download set: a later counted
        download stays counted) and marks the task, in one locked transaction; raises DataLoss."""
        with self.store.transaction(lock_key=d.owner) as tx:
            if d.mark is not None:
                tx.restore_download_limit(d.owner, d.mark, d.previous_mark)
            self._mark_damaged(tx, d.task, reason)
        raise self._damaged(d.task, reason)

    def abandon_download(self, d: Download) -> None:
        """The store of an admitted download's file went out of reach while streaming: not the user's
        doing, so the download is un-counted (the previous mark restored, if this download's mark is
        still current) and the user may download again at once; the file is not marked."""
        if d.mark is None:
            return
        with self.store.transaction(lock_key=d.owner) as tx:
            tx.restore_download_limit(d.owner, d.mark, d.previous_mark)

    def file_gone(self, d: Download) -> None:
        """The object an admitted download was reading is gone mid-stream (object storage: a re-run
        published a new file and deleted this one, or the task was deleted): not damage and not the
        user's doing, so the download is un-counted and they are told to start it again; raises."""
        self.abandon_download(d)
        raise FailedPrecondition(
            f"The result file of export task {d.task.export_task_id} was replaced or removed during the download"
            " (a re-run published a new one, or the task was deleted); download it again.",
            subject=f"export-task:{d.task.export_task_id}", violation_type="FILE_REPLACED",
            error_code=Codes.EXPORT_FILE_NOT_READY)

    def _mark_damaged(self, tx, task: ExportTask, reason: str) -> bool:
        """Under the owner's lock: the task's file (generation `task.file_generation`) is damaged. The
        file is removed and no longer offered (file_size and file_sha256 cleared, the generation kept);
        a finished task becomes Failed saying why, so GetExportTask and ListExportTasks show it and the
        next create with the same conditions re-runs it; a task already re-running keeps running. A
        no-op when stale: the task deleted, a newer file published, or the file already marked."""
        current = tx.export_task(task.export_task_id)
        if current is None or current.file_generation != task.file_generation or not current.file_available:
            return False
        values: dict = {"file_size": None, "file_sha256": None}
        if not current.unfinished:
            values.update(status=rules.STATUS_FAILED, status_desc=damaged_description(reason))
        tx.update_export_task(task.export_task_id, file_key=None, **values)
        # Under the lock: a re-run cannot publish in between (and with keys, only this file goes).
        self.files.remove(task.export_task_id, task.file_key)
        return True

    def _damaged(self, task: ExportTask, reason: str) -> DataLoss:
        log.warning("the result file of export task %s (generation %d) is damaged: %s; marked, not counted",
                    task.export_task_id, task.file_generation, reason)
        self.on_change(task.export_task_id)
        then = "it is running again" if task.unfinished else "create the export again to re-run it"
        return DataLoss(task.export_task_id, f"The result file of export task {task.export_task_id} is damaged"
                                             f" ({reason}); {then}.")


def remove_files(files, export_task_id: str) -> None:
    """After a commit that deleted the task: its file(s). A store out of reach leaves them to the
    sweep (no row names them any more) rather than failing a deletion that happened."""
    try:
        files.remove(export_task_id)
    except FilesUnavailable as exc:
        log.warning("the file of deleted export task %s stays until the sweep: %s", export_task_id, exc)


def _visible(task: ExportTask, caller: Caller) -> bool:
    return (task.owner == caller.owner and task.project_id == caller.project_id
            and task.instance_id == caller.instance_id)


def _raise(e: Exception):
    raise e
