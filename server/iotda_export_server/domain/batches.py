"""Batch tasks: the resource an export reads, with the platform's shapes and rules."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from . import ids, pages, rules, validation
from .errors import BatchTaskNotFound, Codes, FailedPrecondition, invalid
from .model import BatchTask, Caller, Page, Subtask

# Each JSON field of a batch task and its size limit (characters of compact JSON text).
JSON_FIELDS = {"task_ext_info": rules.MAX_TASK_EXT_INFO_CHARS, "targets_filter": rules.MAX_TARGETS_FILTER_CHARS,
               "document": rules.MAX_DOCUMENT_CHARS}
SCHEDULE_TIME = re.compile(r"^[0-9]{8}T[0-9]{6}Z\Z")


@dataclass(frozen=True)
class CreateBatchRequest:
    app_id: str
    task_name: str
    task_type: str
    task_mode: str
    need_confirm: bool
    task_ext_info: dict | None
    targets: list[str]
    targets_filter: dict | None
    document: dict | None
    task_policy: dict | None  # {"schedule_time", "retry_count", "retry_interval"} when given
    document_source: str


@dataclass(frozen=True)
class SubtaskResult:
    target: str
    status: str
    output: str
    error_code: str
    error_msg: str


def _raise(e: Exception):
    raise e


def _check_policy(policy: dict | None) -> None:
    if not policy:
        return
    when = policy.get("schedule_time", "")
    if when:
        import datetime as dt
        if not SCHEDULE_TIME.match(when):
            raise invalid("task_policy.schedule_time", "must be yyyyMMdd'T'HHmmss'Z'")
        try:
            t = dt.datetime.strptime(when, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise invalid("task_policy.schedule_time", "must be yyyyMMdd'T'HHmmss'Z'") from None
        delta = t.timestamp() * 1000 - ids.now_ms()
        if not 0 <= delta <= 7 * 86400 * 1000:
            raise invalid("task_policy.schedule_time", "must be within the next 7 days")
    count, interval = policy.get("retry_count", 0), policy.get("retry_interval", 0)
    if bool(count) != bool(interval):
        raise invalid("task_policy", "retry_count and retry_interval must be given together")
    if not 0 <= count <= 5:
        raise invalid("task_policy.retry_count", "must be 0-5")
    if not 0 <= interval <= 1440:
        raise invalid("task_policy.retry_interval", "must be 0-1440 minutes")


def _check_targets(targets: list[str]) -> None:
    if len(targets) > rules.MAX_BATCH_TARGETS:
        raise invalid("targets", f"at most {rules.MAX_BATCH_TARGETS} targets, got {len(targets)}")
    for i, t in enumerate(targets):
        if not validation.DEVICE_ID.match(t) or "\n" in t:
            raise invalid(f"targets[{i}]", "must be 1-128 of [A-Za-z0-9_-]")
    if len(set(targets)) != len(targets):
        raise invalid("targets", "must not repeat a target")


def _check_filter(targets_filter: dict | None) -> None:
    if targets_filter is None:
        return
    groups = targets_filter.get("group_ids")
    if set(targets_filter) - {"group_ids"} or not isinstance(groups, list) or not groups \
            or not all(isinstance(g, str) and validation.DEVICE_ID.match(g) for g in groups):
        raise invalid("targets_filter", 'only {"group_ids": [<group id>, ...]} is supported')
    if len(groups) > rules.MAX_TARGET_GROUPS:
        raise invalid("targets_filter", f"at most {rules.MAX_TARGET_GROUPS} group_ids, got {len(groups)}")


class BatchService:
    def __init__(self, store, clock=ids.now_ms):
        self.store = store
        self.clock = clock

    def create(self, caller: Caller, r: CreateBatchRequest) -> BatchTask:
        upgrade = r.task_type in rules.UPGRADE_TASK_TYPES
        validation.collect(
            lambda: validation.match(validation.TASK_NAME, validation.require(r.task_name, "task_name"), "task_name",
                                     "must be 1-128 letters, digits, _ or CJK characters"),
            lambda: validation.require(r.task_type, "task_type") in rules.BATCH_TASK_TYPES
            or _raise(invalid("task_type", "must be one of " + ", ".join(rules.BATCH_TASK_TYPES))),
            lambda: not r.app_id or validation.app_id(r.app_id),
            lambda: r.task_mode in ("", "GATEWAY") or _raise(invalid("task_mode", "must be GATEWAY")),
            lambda: not r.task_mode or r.task_type in ("firmwareUpgrade", "softwareUpgrade")
            or _raise(invalid("task_mode", "is only for firmwareUpgrade and softwareUpgrade")),
            lambda: not r.need_confirm or upgrade
            or _raise(invalid("need_confirm", "is only for firmware, software and module upgrades")),
            # Characters of the JSON text, not of its \uXXXX escapes (ensure_ascii would count a CJK character 6 times).
            *(lambda name=name, limit=limit: getattr(r, name) is None
              or validation.json_object(getattr(r, name), name, limit) for name, limit in JSON_FIELDS.items()),
            lambda: _check_targets(r.targets),
            lambda: _check_filter(r.targets_filter),
            lambda: not r.document_source
            or validation.match(validation.FILE_ID, r.document_source, "document_source",
                                "must be 1-128 of [A-Za-z0-9_-]"),
            lambda: _check_policy(r.task_policy),
        )
        if not r.targets and r.targets_filter is None and not r.document_source:
            raise invalid("targets", "one of targets, targets_filter or document_source is mandatory")
        # Only one target source takes effect: targets > targets_filter > document_source.
        targets = r.targets
        targets_filter = r.targets_filter if not targets else None
        document_source = r.document_source if not targets and targets_filter is None else ""
        status = "Waitting" if r.need_confirm else "Processing"
        task = BatchTask(
            task_id=ids.new_id(), project_id=caller.project_id, instance_id=caller.instance_id,
            app_id=r.app_id or rules.DEFAULT_APP_ID, task_name=r.task_name, task_type=r.task_type,
            task_mode=r.task_mode, need_confirm=r.need_confirm, task_ext_info=r.task_ext_info, targets=targets,
            targets_filter=targets_filter, document=r.document, task_policy=r.task_policy,
            document_source=document_source, status=status, status_desc="", create_time=self.clock())
        with self.store.transaction() as tx:
            tx.insert_batch_task(task)
            tx.insert_subtasks(task.task_id, [(ids.new_id(), t, status, "", "", "") for t in targets])
            return tx.batch_task(caller.project_id, caller.instance_id, task.task_id)

    def _get(self, tx, caller: Caller, task_id: str) -> BatchTask:
        validation.batch_task_id(task_id)
        task = tx.batch_task(caller.project_id, caller.instance_id, task_id)
        if task is None:
            raise BatchTaskNotFound(task_id)
        return task

    def show(self, caller: Caller, task_id: str, detail_status: str, target: str, limit: int | None,
             offset: int | None, marker: str, task_size=None, detail_size=None
             ) -> tuple[BatchTask, list[Subtask], Page]:
        """The task and a page of its sub-tasks. With `task_size` and `detail_size` (encoded bytes of
        each), the page stops before the task and its details pass rules.LIST_PAGE_BUDGET_BYTES."""
        limit, offset, marker = validation.paging(limit, offset, marker)
        validation.collect(
            lambda: not detail_status or detail_status in rules.SUBTASK_STATUSES
            or _raise(invalid("task_detail_status", "must be one of " + ", ".join(rules.SUBTASK_STATUSES))),
            lambda: not target or validation.match(validation.DEVICE_ID, target, "target",
                                                   "must be 1-128 of [A-Za-z0-9_-]"),
        )
        reader = self.store.reader()
        task = self._get(reader, caller, task_id)
        details, count = reader.list_subtasks(task_id, detail_status, target, marker, offset, limit)
        details = pages.fit(details, detail_size, used=task_size(task) if task_size else 0)
        return task, details, Page(count=count, marker=details[-1].id if details else "")

    def list(self, caller: Caller, app_id: str, task_type: str, status: str, limit: int | None,
             offset: int | None, marker: str, item_size=None) -> tuple[list[BatchTask], Page]:
        """A page of the project's batch tasks; with `item_size` (encoded bytes of a task) it stops
        before rules.LIST_PAGE_BUDGET_BYTES."""
        limit, offset, marker = validation.paging(limit, offset, marker)
        validation.collect(
            lambda: validation.require(task_type, "task_type") in rules.BATCH_TASK_TYPES
            or _raise(invalid("task_type", "must be one of " + ", ".join(rules.BATCH_TASK_TYPES))),
            lambda: not app_id or validation.app_id(app_id),
            lambda: not status or status in rules.BATCH_STATUSES
            or _raise(invalid("status", "must be one of " + ", ".join(rules.BATCH_STATUSES))),
        )
        tasks, count = self.store.reader().list_batch_tasks(caller.project_id, caller.instance_id, task_type,
                                                            app_id, status, marker, offset, limit)
        tasks = pages.fit(tasks, item_size)
        return tasks, Page(count=count, marker=tasks[-1].task_id if tasks else "")

    def delete(self, caller: Caller, task_id: str) -> None:
        with self.store.transaction() as tx:
            task = self._get(tx, caller, task_id)
            if task.status not in rules.BATCH_FINISHED_STATUSES:
                raise FailedPrecondition(
                    f"The batch task {task_id} is {task.status}; only finished tasks (Success, Fail,"
                    " PartialSuccess, Stopped) can be deleted.", subject=f"batch-task:{task_id}",
                    violation_type="NOT_FINISHED", error_code=Codes.BATCH_TASK_NOT_FINISHED)
            tx.delete_batch_task(task_id)

    def record_results(self, caller: Caller, task_id: str, results: list[SubtaskResult]) -> BatchTask:
        if not results:
            raise invalid("results", "must hold at least one result")
        if len(results) > rules.MAX_RECORDED_RESULTS_PER_CALL:
            raise invalid("results", f"at most {rules.MAX_RECORDED_RESULTS_PER_CALL} per call, got {len(results)}")
        seen: set[str] = set()
        for i, r in enumerate(results):
            if not validation.DEVICE_ID.match(r.target) or "\n" in r.target:
                raise invalid(f"results[{i}].target", "must be 1-128 of [A-Za-z0-9_-]")
            if r.target in seen:
                raise invalid(f"results[{i}].target", "repeats an earlier result's target")
            seen.add(r.target)
            if r.status not in rules.SUBTASK_STATUSES or r.status == "Waitting":
                raise invalid(f"results[{i}].status", "must be one of Processing, Success, Fail, FailWaitRetry,"
                                                      " Stopped, Removed")
            if "\x00" in r.output or "\x00" in r.error_code or "\x00" in r.error_msg:
                raise invalid(f"results[{i}]", "output and error must not contain NUL characters")
            if len(r.output) > rules.MAX_OUTPUT_CHARS:
                raise invalid(f"results[{i}].output", f"must be at most {rules.MAX_OUTPUT_CHARS} characters")
            if len(r.error_code) > rules.MAX_ERROR_FIELD_CHARS or len(r.error_msg) > rules.MAX_ERROR_FIELD_CHARS:
                raise invalid(f"results[{i}].error", f"error_code and error_msg: at most"
                                                     f" {rules.MAX_ERROR_FIELD_CHARS} characters each")
        # Locked for the task: on PostgreSQL two calls adding targets at once must count one after the
        # other (SQLite's write lock serialises them anyway).
        with self.store.transaction(lock_key=f"batch-task:{task_id}") as tx:
            task = self._get(tx, caller, task_id)
            known = tx.subtask_statuses(task_id, [r.target for r in results])
            if task.targets:
                for i, r in enumerate(results):
                    if r.target not in known:
                        raise FailedPrecondition(
                            f"results[{i}].target {r.target!r} is not a target of batch task {task_id}.",
                            subject=f"batch-task:{task_id}", violation_type="UNKNOWN_TARGET",
                            error_code=Codes.BATCH_TASK_UNKNOWN_TARGET)
            # A task without a fixed target list (targets_filter, document_source) gains a sub-task per
            # new target, up to the platform's 30,000 (demo data seeded beyond it only takes updates).
            added = len(results) - len(known)
            if added and task.progress.total + added > rules.MAX_BATCH_TARGETS:
                raise FailedPrecondition(
                    f"The results would add {added} targets to batch task {task_id}, which has"
                    f" {task.progress.total} sub-tasks; a batch task holds at most {rules.MAX_BATCH_TARGETS}.",
                    subject=f"batch-task:{task_id}", violation_type="TOO_MANY_TARGETS",
                    error_code=Codes.BATCH_TASK_TOO_MANY_TARGETS)
            tx.upsert_subtask_results(task_id, [(ids.new_id(), r.target, r.status, r.output, r.error_code,
                                                 r.error_msg) for r in results])
            progress = tx.subtask_progress(task_id)
            status = batch_status(progress.__dict__, task.status)
            tx.set_batch_status(task_id, status, "" if status != "Fail" else "all sub-tasks failed")
            return tx.batch_task(caller.project_id, caller.instance_id, task_id)


def batch_status(counts: dict[str, int], current: str) -> str:
    """The batch task's status from its sub-tasks' counts, once every sub-task is final."""
    total = counts["total"]
    final = counts["success"] + counts["fail"] + counts["stopped"] + counts["removed"]
    if total == 0 or final < total:
        return "Processing" if current in ("Waitting", "Initializing") and final else current
    if counts["success"] == total - counts["removed"]:
        return "Success"
    if counts["success"] == 0 and counts["stopped"] == 0:
        return "Fail"
    if counts["success"] == 0:
        return "Stopped"
    return "PartialSuccess"


# -- demo data -----------------------------------------------------------------------------------

_OUTPUTS = ("upgrade finished, version {v}", "command delivered", "shadow updated", "device created")
_ERRORS = (("IOTDA.014016", "Device is offline."), ("IOTDA.014111", "Command request timed out."),
           ("IOTDA.014004", "The device does not exist."), ("IOTDA.020008", "Package download failed."))


def seed_batch_task(store, project_id: str, instance_id: str, subtasks: int, app_id: str = rules.DEFAULT_APP_ID,
                    seed: int | None = None) -> str:
    """Loads a finished firmware-upgrade batch task with `subtasks` realistic mixed outcomes (about
    85 % Success, 10 % Fail, 5 % Stopped). Any count, also beyond the API's 30,000 targets.

    The sub-tasks are made while the store inserts them (one stream: PostgreSQL's COPY, SQLite's
    executemany), so the database works while Python makes the next rows and no list of a million
    rows is held; the task's status, which depends on the outcomes, is set once they are in."""
    rng = random.Random(seed)
    task_id = ids.new_id()
    targets = [f"device_{rng.getrandbits(40):010x}_{i:07d}" for i in range(subtasks)]
    counts = {"total": subtasks, "success": 0, "fail": 0, "stopped": 0, "removed": 0}

    def rows():
        for target in targets:
            roll = rng.random()
            if roll < 0.85:
                counts["success"] += 1
                yield (ids.new_id(), target, "Success",
                       _OUTPUTS[0].format(v=f"1.{rng.randint(0, 9)}.{rng.randint(0, 99)}"), "", "")
            elif roll < 0.95:
                counts["fail"] += 1
                code, msg = rng.choice(_ERRORS)
                yield (ids.new_id(), target, "Fail", "", code, msg)
            else:
                counts["stopped"] += 1
                yield (ids.new_id(), target, "Stopped", "stopped by user", "", "")

    task = BatchTask(
        task_id=task_id, project_id=project_id, instance_id=instance_id, app_id=app_id,
        task_name=f"demo_firmware_upgrade_{subtasks}", task_type="firmwareUpgrade", task_mode="",
        need_confirm=False, task_ext_info=None,
        targets=targets if subtasks <= rules.MAX_BATCH_TARGETS else [],
        targets_filter=None, document={"package_id": "5f2b0b5d8e0e1d0c0b0a0908"}, task_policy=None,
        document_source="", status="Processing", status_desc="", create_time=ids.now_ms())
    with store.transaction() as tx:
        tx.insert_batch_task(task)
        tx.insert_subtasks(task_id, rows())
        tx.set_batch_status(task_id, batch_status(counts, "Processing"), "")
    return task_id
