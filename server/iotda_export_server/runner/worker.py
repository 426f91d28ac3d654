"""Export worker processes: claim a queued export, write its .xls/.zip, publish it.

Workers are spawned (never forked) so they hold no gRPC state, and they import nothing of the
transport. Each run is identified by a run token; progress and the final publish only take effect
while that run is still the task's current one, so a cancel, a delete or a re-run simply makes the
old run's writes no-ops. A lease, renewed by a heartbeat thread, lets the supervisor requeue the
export of a worker that died.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from .. import logs
from ..assembly import open_backend
from ..config import WorkerConfig
from ..domain import rules
from ..domain.errors import FilesUnavailable, StoreUnavailable, passes
from ..domain.exports import inner_file_name
from ..domain.jobs import Claim, ExportJobs
from .notices import ChangeAnnouncer
from .xls import XlsZipWriter

log = logging.getLogger("iotda_export.worker")

# Rows per block read from the store: big enough that the per-block costs (a fetch, a writer call)
# vanish, small enough that cancel/stop and progress are seen every ~25 ms at full speed.
READ_BATCH_ROWS = 4096
PROGRESS_EVERY_SECONDS = 0.2
# Added to a worker process's niceness when it starts.
WORKER_NICE_INCREMENT = 10
# mallopt's parameter number (malloc.h) and glibc's own default for it.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


class RunCancelled(Exception):
    """The run is no longer the task's current one (cancelled, deleted, re-queued)."""


class _Flag:
    """A stop flag safe to set from a signal handler (no lock), read like threading.Event."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class ShuttingDown(Exception):
    """The worker was asked to stop; the export goes back to the queue."""


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the server process dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _fixed_mmap_threshold() -> None:
    """glibc: every allocation of MMAP_THRESHOLD_BYTES or more gets its own mapping, returned to the
    system when freed. By default glibc raises that threshold (up to 32 MiB) whenever such a block is
    freed, so an export's growing tables (the shared-string dict doubles up to ~40 MiB) come from the
    heap in the next export and stay there: a worker's second 1M-row export peaked ~20 MB above its
    first (bench/PROFILE_NOTES.md). Setting the threshold turns that adjustment off."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        pass


def run_export(files, jobs: ExportJobs, claim: Claim,
               shutdown: "threading.Event | _Flag | None" = None) -> bool:
    """Runs one claimed export to Success or Failed (or back to the queue on shutdown). Returns
    True on Success."""
    task = claim.task
    stop = threading.Event()
    lost = threading.Event()

    def heartbeat():
        while not stop.wait(jobs.lease_ms / 3000):
            try:
                if not jobs.heartbeat(claim):
                    lost.set()
                    return
            except Exception as exc:  # a busy database: the next beat retries well within the lease
                log.warning("heartbeat failed for %s (%s)", task.export_task_id, exc, exc_info=not passes(exc))

    beat = threading.Thread(target=heartbeat, name="lease-heartbeat", daemon=True)
    beat.start()
    upload = None
    try:
        with jobs.rows(claim, READ_BATCH_ROWS) as rows:  # one consistent view for the whole export
            if rows is None:
                jobs.fail(claim, f"the batch task {task.batch_task_id} no longer exists")
                return False
            total = rows.total
            # The zip goes to a temporary file, or straight into the object store as it is written.
            upload = files.begin(task.export_task_id, claim.run_token)
            writer = XlsZipWriter(upload.path, inner_file_name(task.export_task_id), sink=upload.sink,
                                  temp_dir=upload.temp_dir)
            last_report = 0.0

            def after_batch(done: int) -> None:
                nonlocal last_report
                if lost.is_set():
                    raise RunCancelled()
                if shutdown is not None and shutdown.is_set():
                    raise ShuttingDown()
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY_SECONDS:
                    last_report = now
                    if not _report_progress(jobs, claim, done, total):
                        raise RunCancelled()

            with writer:
                write_subtasks(rows.blocks, writer, after_batch)
                rows_written = writer.finish()
        size, sha256 = upload.complete()
        if not jobs.succeed(claim, upload, rows_written, size, sha256):
            log.info("export %s finished but its run was superseded; file dropped", task.export_task_id)
            return False
        log.info("export %s succeeded: %d rows, %d bytes", task.export_task_id, rows_written, size)
        return True
    except ShuttingDown:
        log.info("export %s handed back to the queue: the worker is stopping", task.export_task_id)
        jobs.release(claim)
        return False
    except RunCancelled:
        log.info("export %s stopped: the run was cancelled, deleted or re-queued", task.export_task_id)
        return False
    except Exception as exc:
        if isinstance(exc, (FilesUnavailable, StoreUnavailable)):
            # Not the export's failure: the database or the files' store comes back, the lease (no
            # longer renewed) expires and the export runs again.
            log.warning("export %s interrupted: %s; it runs again once its lease expires", task.export_task_id, exc)
            return False
        log.exception("export %s failed", task.export_task_id)
        reason = _reason(exc)
        try:
            jobs.fail(claim, reason)
        except Exception:  # the lease will expire and the supervisor retries or fails it
            log.exception("could not record the failure of %s", task.export_task_id)
        return False
    finally:
        stop.set()
        if upload is not None:
            upload.abort()  # a no-op once published: only a run that did not publish leaves something


def write_subtasks(blocks: Iterator[list[Sequence[str]]], writer: XlsZipWriter,
                   after_batch: Callable[[int], None] | None = None) -> int:
    """Writes the blocks of sub-tasks (ExportJobs.rows's, read READ_BATCH_ROWS at a time) into the
    writer, and closes them; after_batch(rows done so far) runs after each block (and may raise to
    stop). Returns the rows written. A block goes to the writer as columns: no Python per row or
    cell here."""
    done = 0
    # The blocks make millions of short-lived tuples, each a trigger for the cyclic GC, which
    # then costs ~10 % of an export while finding nothing: refcounting frees all of it. Paused
    # for the loop (this process runs one export at a time), restored whatever happens.
    collecting = gc.isenabled()
    gc.disable()
    try:
        # Closed here, not whenever the generator is collected: the store's cursor must go before
        # the snapshot does, also when after_batch stops the export.
        with contextlib.closing(blocks):
            for columns in blocks:
                writer.write_columns(columns)
                done += len(columns[0])
                if after_batch is not None:
                    after_batch(done)
    finally:
        if collecting:
            gc.enable()
    return done


def _report_progress(jobs: ExportJobs, claim: Claim, done: int, total: int) -> bool:
    """False when the run is no longer current. A database hiccup is not the export's failure:
    the next report retries (the heartbeat keeps the lease)."""
    try:
        return jobs.progress(claim, done, total)
    except Exception as exc:  # noqa: BLE001
        log.warning("progress of %s not recorded (%s); continuing", claim.task.export_task_id, exc)
        return True


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"writing the file failed: {os.strerror(exc.errno)}"
    return f"the export failed: {type(exc).__name__}"


def worker_main(config: WorkerConfig, worker_id: str, parent_pid: int) -> None:
    """Runs exports until SIGTERM/SIGINT (or the server's death). A stop request lets the current
    row batch finish and gives the export back to the queue, so another start resumes it."""
    _die_with_parent()
    _fixed_mmap_threshold()
    # Signal handlers only set a plain flag and write to a pipe: taking a lock in a handler (as
    # threading.Event.set does) can deadlock the main thread that the signal interrupted while it
    # held that same lock, and a burst of signals nested handlers until RecursionError.
    stop = _Flag()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)

    def poke() -> None:
        try:
            os.write(wake_w, b"!")
        except BlockingIOError:  # the pipe is full: a wake-up is already pending
            pass

    def on_stop(_sig, _frame):
        stop.set()
        poke()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, lambda _s, _f: poke())  # the server: "an export was queued"
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # blocked by the supervisor until now
    logs.configure(f"worker[{worker_id}]", config.log)
    # Exports are batch work: on a shared host the API process's short calls go first (issue 5's
    # GetExportTask p99 while exports run). A worker alone on a host still gets every idle cycle.
    os.nice(WORKER_NICE_INCREMENT)
    # Notices to the server that started us (PostgreSQL's trigger tells every replica too).
    announce = ChangeAnnouncer(config.state.data_dir)
    store, files, jobs = open_backend(config, on_change=announce, on_finished=announce.finished)
    while not stop.is_set() and os.getppid() == parent_pid:
        try:
            claim = jobs.claim(worker_id)
        except Exception as exc:
            log.warning("claim failed (%s)", exc, exc_info=not passes(exc))
            claim = None
        if claim is None:
            select.select([wake_r], [], [], config.poll_seconds)
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            continue
        log.info("export %s claimed (attempt %d of %d)", claim.task.export_task_id, claim.task.attempts,
                 rules.MAX_EXPORT_ATTEMPTS)
        run_export(files, jobs, claim, stop)
    store.close()


def main(argv: list[str] | None = None) -> None:
    """The supervisor's child: its WorkerConfig is the JSON on stdin (never argv or the environment,
    which would show the database URL's password), read to its end before anything else."""
    parser = argparse.ArgumentParser(description="iotda-export worker process (started by the server; its"
                                                 " configuration is the JSON on stdin)")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    config = WorkerConfig.from_json(sys.stdin.read())
    sys.stdin.close()
    worker_main(config, args.worker_id, args.parent_pid)


if __name__ == "__main__":
    main()
