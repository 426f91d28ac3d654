"""Starts and watches the export worker processes of one server.

Each worker is a fresh interpreter (`python -m iotda_export_server.runner.worker`): it inherits no
gRPC state (gRPC does not survive fork) and does not re-import the caller's main module, as
multiprocessing's spawn would. Its WorkerConfig arrives as JSON on its stdin, written once: the
database URL may hold a password, which its argv (ps) or environment (/proc/<pid>/environ) would
show. A worker that dies is replaced, and the exports whose lease ran out are queued again (or
failed after too many attempts) by ExportJobs.recover.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time

from ..config import WorkerConfig
from ..domain import rules
from ..domain.errors import passes
from ..domain.jobs import ExportJobs

log = logging.getLogger("iotda_export.supervisor")
NOTIFY_MIN_INTERVAL_SECONDS = 0.1


def spawn_worker(config: WorkerConfig, worker_id: str, **popen_args) -> subprocess.Popen:
    """An export worker process of this process (it stops when this process dies) on `config`, which
    it reads from its stdin. `popen_args`: more of subprocess.Popen's (cwd, env, stdout, ...)."""
    p = subprocess.Popen([sys.executable, "-m", "iotda_export_server.runner.worker", "--worker-id", worker_id,
                          "--parent-pid", str(os.getpid())], stdin=subprocess.PIPE, close_fds=True, **popen_args)
    try:  # far less than a pipe's buffer: never blocks
        p.stdin.write(config.to_json().encode())
        p.stdin.close()
    except BrokenPipeError:  # the worker died at once (a supervisor starts another)
        pass
    return p


class Supervisor:
    def __init__(self, config: WorkerConfig, count: int, jobs: ExportJobs, on_change=None,
                 check_seconds: float = 1.0, sweep_seconds: float = rules.FILES_SWEEP_SECONDS):
        self.config = config
        self.sweep_seconds = sweep_seconds
        self.count = count
        self.jobs = jobs
        self.on_change = on_change or (lambda _id: None)
        self.check_seconds = check_seconds
        self.processes: list[subprocess.Popen] = []
        self.stopping = False
        self._last_notify = 0.0

    def _spawn(self) -> subprocess.Popen:
        worker_id = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
        # The child starts with SIGUSR1 blocked (the mask survives exec) and unblocks it once its
        # handler is installed: a wake-up sent while it boots must not kill it.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            p = spawn_worker(self.config, worker_id)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        log.info("worker %s started (pid %d)", worker_id, p.pid)
        return p

    def start(self) -> None:
        self.processes = [self._spawn() for _ in range(self.count)]

    def notify(self) -> None:
        """A new export is queued: wake idle workers now rather than at their next poll."""
        # Coalesced: a storm of creates must not become a storm of signals (the worker's handler is
        # not re-entrant); a worker not woken now polls the queue within its poll interval anyway.
        now = time.monotonic()
        if now - self._last_notify < NOTIFY_MIN_INTERVAL_SECONDS:
            return
        self._last_notify = now
        for p in self.processes:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    async def run(self) -> None:
        """Replace dead workers; requeue exports whose worker stopped renewing its lease; now and
        then (object stores only) sweep the result files that a crash left behind."""
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.check_seconds)
            if self.jobs.files_swept_periodically and time.monotonic() - last_sweep >= self.sweep_seconds:
                last_sweep = time.monotonic()
                try:
                    swept = await asyncio.to_thread(self.jobs.sweep_files, 2 * self.config.lease_seconds)
                    if swept:
                        log.info("removed %d orphaned result files: %s", len(swept), ", ".join(swept))
                except Exception as exc:
                    log.warning("the result files' sweep failed (%s); it runs again later", exc,
                                exc_info=not passes(exc))
            for i, p in enumerate(self.processes):
                if p.poll() is not None and not self.stopping:
                    log.warning("worker pid %d exited with %s; starting another", p.pid, p.returncode)
                    self.processes[i] = self._spawn()
            try:
                changed = await asyncio.to_thread(self.jobs.recover)
            except Exception as exc:
                log.warning("lease recovery failed (%s); retrying", exc, exc_info=not passes(exc))
                continue
            for export_task_id in changed:
                log.warning("export %s lost its worker; queued again or failed", export_task_id)
                self.on_change(export_task_id)
            if changed:
                self.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: each worker hands its export back to the queue after the current row batch;
        one that does not exit in time is killed (its lease then expires and it is recovered)."""
        self.stopping = True
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
