"""The run of an export task, apart from the task: its state machine, and the job lifecycle the
workers and the supervisor drive (claim, heartbeat, progress, succeed, fail, release, recover), and
the read of an export's rows for the runner.

A task (domain/exports.py: the user's resource) has at most one current run. Its run columns are
run_state, run_token, worker_id, lease_until, queued_at and attempts; the columns a user sees
(status, status_desc, progress, export_count, end_time) move with them. Every change of run state
is one of the transitions below, written once, each giving the column values it sets:

    ============  ===============  ==========================  =====================================
    from          to               who, by which transition    what it sets or clears
    ============  ===============  ==========================  =====================================
    (none), done  queued           a create / a same-condition  status Processing, no status_desc,
                                   re-run: `created`            create_time now, no end_time,
                                                                attempts 0, and what `queued` sets
    running       queued           a stopping worker hands it   attempts - 1 (the attempt does not
                                   back: `released`             count), and what `queued` sets
    running       queued           its lease expired (worker    what `queued` sets: no run_token,
                                   lost), recover: `queued`     worker_id, lease_until; queued_at
                                                                now; progress 1, export_count 0
    queued        running          a worker's claim, in SQL     run_token, worker_id, lease_until
                                   (store `claim_export`)       set; attempts + 1
    running       done             the worker: `succeeded`      Success, progress 100, the rows
    running       done             the worker: `failed`         Failed with the reason
    queued,       done             the user's cancel:           Failed "cancelled"
    running                        `cancelled`
    running       done             recover after                Failed "interrupted N times"
                                   MAX_EXPORT_ATTEMPTS:
                                   `gave_up`
    ============  ===============  ==========================  =====================================

Every transition to done (`_finished`) sets end_time and clears run_token, worker_id and
lease_until. The claim stays in the store's SQL (one statement that picks the oldest queued run and
takes it, so two workers never get the same one); it sets exactly the columns of the table's
queued → running row. A run's own writes (progress, succeed, fail, release, and recover's, which
checks the run it found) take effect only while its run_token is still the task's current, running
one (the store's `expect_run_token`): a cancel, a delete or a re-run makes them no-ops.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from . import ids, rules
from .errors import FilesUnavailable
from .model import ExportTask

log = logging.getLogger("iotda_export.exports")  # the name the run's lines had inside exports.py

# The run states (export_tasks.run_state).
QUEUED = "queued"
RUNNING = "running"
DONE = "done"


# -- the transitions: the column values of each change of run state ------------------------------

def queued(now: int) -> dict:
    """A run going (back) to the queue, whatever sends it there: no run, and progress 1 with no rows
    while queued."""
    return dict(run_state=QUEUED, run_token=None, worker_id=None, lease_until=None, queued_at=now,
                progress=rules.PROGRESS_QUEUED, export_count=0)


def created(now: int) -> dict:
    """A create: a new task, or a same-conditions re-run of a finished one (whose file stays until
    the new run replaces it): Processing from now on, no attempt yet, queued."""
    return dict(status=rules.STATUS_PROCESSING, status_desc=None, create_time=now, end_time=None, attempts=0,
                **queued(now))


def released(now: int, claimed_attempts: int) -> dict:
    """A run handed back by a stopping worker: queued, and the claim's attempt does not count."""
    return dict(attempts=max(claimed_attempts - 1, 0), **queued(now))


def succeeded(now: int, rows: int) -> dict:
    """The run wrote its file (the caller records the file's columns with these)."""
    return _finished(now, rules.STATUS_SUCCESS, None, progress=rules.PROGRESS_DONE, export_count=rows)


def failed(now: int, reason: str) -> dict:
    """The run failed; `reason` is the task's status_desc."""
    return _finished(now, rules.STATUS_FAILED, reason)


def cancelled(now: int) -> dict:
    """The user cancelled the unfinished task."""
    return failed(now, "cancelled")


def gave_up(now: int, attempts: int) -> dict:
    """The run's worker was lost once too often (rules.MAX_EXPORT_ATTEMPTS)."""
    return failed(now, f"the export was interrupted {attempts} times (worker lost); giving up")


def _finished(now: int, status: str, status_desc: str | None, **values) -> dict:
    return dict(status=status, status_desc=status_desc, end_time=now, run_state=DONE, run_token=None,
                worker_id=None, lease_until=None, **values)


# -- the job lifecycle (driven by workers and the supervisor) ------------------------------------

@dataclass(frozen=True)
class Claim:
    task: ExportTask
    run_token: str
    claimed_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ExportRows:
    """What a claimed export writes, read from one consistent view of the store."""

    total: int  # the batch task's sub-tasks in that view
    # The sub-tasks in ID order, in blocks of five equal columns (targets, statuses, outputs,
    # error_codes, error_msgs): the store's stream_subtask_columns.
    blocks: Iterator[list[Sequence[str]]]


class ExportJobs:
    """Claiming, progress, completion and recovery of export runs."""

    def __init__(self, store, files, clock=ids.now_ms, lease_seconds: float = 30.0, on_change=None,
                 on_finished=None):
        self.store = store
        self.files = files
        self.clock = clock
        self.lease_ms = int(lease_seconds * 1000)
        # Told the id of each task a run changed, after the commit (watchers in other processes),
        # and (export_task_id, outcome, rows, seconds) of each run that ended (metrics).
        self.on_change = on_change or (lambda _export_task_id: None)
        self.on_finished = on_finished or (lambda _export_task_id, _outcome, _rows, _seconds: None)

    def _changed(self, claim: Claim, current: bool) -> bool:
        if current:
            self.on_change(claim.task.export_task_id)
        return current

    def claim(self, worker_id: str) -> Claim | None:
        if not self.store.reader().has_queued_export():
            return None
        token = secrets.token_hex(8)
        now = self.clock()
        with self.store.transaction() as tx:
            task = tx.claim_export(worker_id, token, now, now + self.lease_ms)
        if task is None:
            return None
        claim = Claim(task, token)
        return claim if self._changed(claim, True) else None

    @contextlib.contextmanager
    def rows(self, claim: Claim, block_rows: int) -> Iterator[ExportRows | None]:
        """The claimed export's rows, from one snapshot held for the whole `with` (rows recorded
        meanwhile do not reach the file); None when its batch task no longer exists. The blocks
        (at most `block_rows` rows each) are read lazily and closed, at the latest, before the
        snapshot ends: the store's cursor must not outlive it, also when the export stops early."""
        task = claim.task
        with self.store.snapshot() as snap:
            if snap.batch_task(task.project_id, task.instance_id, task.batch_task_id, with_progress=False) is None:
                yield None
                return
            total = snap.count_subtasks(task.batch_task_id)
            with contextlib.closing(snap.stream_subtask_columns(task.batch_task_id, block_rows)) as blocks:
                yield ExportRows(total, blocks)

    def heartbeat(self, claim: Claim) -> bool:
        """Extends the lease; False when the run is no longer current (cancelled, deleted, re-run)."""
        with self.store.transaction() as tx:
            return tx.renew_lease(claim.task.export_task_id, claim.run_token, self.clock() + self.lease_ms)

    def progress(self, claim: Claim, rows_done: int, rows_total: int) -> bool:
        """Records progress (1-99); False when the run is no longer current."""
        share = rows_done / rows_total if rows_total else 1.0
        progress = max(rules.PROGRESS_QUEUED, min(rules.PROGRESS_MAX_RUNNING, 1 + int(share * 98)))
        with self.store.transaction() as tx:
            current = tx.update_export_task(claim.task.export_task_id, expect_run_token=claim.run_token,
                                            progress=progress, export_count=rows_done,
                                            lease_until=self.clock() + self.lease_ms)
        return self._changed(claim, current)

    def succeed(self, claim: Claim, upload, rows: int, size: int, sha256: str) -> bool:
        """Publishes the file and marks Success in one locked step; False (file dropped) when the run
        is no longer current. The publish (a rename, or recording the complete object's key) happens
        under the lock so a concurrent delete either comes first (the row is gone) or removes the
        published file. A replaced object is deleted after the commit."""
        task_id = claim.task.export_task_id
        with self.store.transaction(lock_key=claim.task.owner) as tx:
            current = tx.export_task(task_id)
            if current is None or current.run_token != claim.run_token or current.run_state != RUNNING:
                self.files.drop(upload)
                return False
            key = self.files.publish(upload, task_id)
            tx.update_export_task(task_id, **succeeded(self.clock(), rows),
                                  file_generation=current.file_generation + 1, file_size=size, file_sha256=sha256,
                                  file_key=key)
        if current.file_key and current.file_key != key:
            try:
                self.files.discard(current.file_key)
            except FilesUnavailable:  # the sweep deletes it: no row names it any more
                log.warning("the replaced file of %s stays until the sweep: %s", task_id, current.file_key)
        self.on_finished(task_id, "success", rows, time.monotonic() - claim.claimed_at)
        return self._changed(claim, True)

    def release(self, claim: Claim) -> bool:
        """Gives a run back to the queue (the worker is stopping); the attempt does not count."""
        with self.store.transaction() as tx:
            current = tx.update_export_task(claim.task.export_task_id, expect_run_token=claim.run_token,
                                            **released(self.clock(), claim.task.attempts))
        return self._changed(claim, current)

    def fail(self, claim: Claim, reason: str) -> bool:
        with self.store.transaction(lock_key=claim.task.owner) as tx:
            current = tx.update_export_task(claim.task.export_task_id, expect_run_token=claim.run_token,
                                            **failed(self.clock(), reason))
        if current:
            self.on_finished(claim.task.export_task_id, "failed", 0, time.monotonic() - claim.claimed_at)
        return self._changed(claim, current)

    @property
    def files_swept_periodically(self) -> bool:
        """Object stores are swept while running (a crash between completing an object and recording
        it leaves one no start-up would see soon); the local directory at start-up only."""
        return bool(getattr(self.files, "sweep_while_running", False))

    def sweep_files(self, grace_seconds: float) -> list[str]:
        """Removes result files no task records and uploads no running task owns (older than the grace)."""
        return self.files.sweep_orphans(self.store.reader(), grace_seconds)

    def recover(self, only_expired: bool = True) -> list[str]:
        """Runs whose worker died: queue them again, or mark Failed after MAX_EXPORT_ATTEMPTS.

        With only_expired=False (start-up of the embedded server, which owns its data directory)
        every running export is orphaned and recovered at once."""
        changed = []
        orphans = []  # the dead runs' temporary files, listed before the task can be claimed again
        with self.store.transaction() as tx:
            now = self.clock()
            for task in tx.running_exports(lease_expired_before=now if only_expired else None):
                try:
                    orphans += self.files.temp_files(task.export_task_id)
                except FilesUnavailable as exc:  # the sweep aborts them later: requeue the task anyway
                    log.warning("the uploads of %s stay until the sweep: %s", task.export_task_id, exc)
                if task.attempts >= rules.MAX_EXPORT_ATTEMPTS:
                    values = gave_up(now, task.attempts)
                else:
                    values = queued(now)
                tx.update_export_task(task.export_task_id, expect_run_token=task.run_token, **values)
                changed.append(task.export_task_id)
        self.files.drop_temp(orphans)  # a later run of the task writes under another name
        return changed
