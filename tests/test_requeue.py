"""A run handed back to the queue shows what a queued export shows (issue 11): progress 1 and
export_count 0, whichever way it went back: a worker stopping (tests/test_shutdown.py, SIGTERM), an
expired lease found by the server's own sweep, or the embedded server's start-up recovery."""

from __future__ import annotations

import grpc

from conftest import make_user, wait_for
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.domain.jobs import ExportJobs
from iotda_export_server.testing import ServerThread


def _get(user, export_task_id: str) -> epb.ExportTask:
    return user.exports.GetExportTask(epb.GetExportTaskRequest(
        project_id=user.project_id, export_task_id=export_task_id), metadata=user.metadata).export_task


def _running_with_progress(server, user, rows: int, lease_seconds: float):
    """An export claimed by a (soon silent) worker that reported progress: (task, claim, jobs)."""
    t = user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=seed_batch_task(server.store, user.project_id, "", rows))),
        metadata=user.metadata).export_task
    jobs = ExportJobs(server.store, server.server.files, lease_seconds=lease_seconds)
    claim = jobs.claim("silent-worker")
    assert claim is not None and claim.task.export_task_id == t.export_task_id
    assert jobs.progress(claim, rows // 2, rows)
    running = _get(user, t.export_task_id)
    assert running.progress > 1 and running.export_count == rows // 2
    return t, claim, jobs


def test_an_expired_lease_requeues_with_progress_1_and_no_rows(tmp_path):
    # No export workers: what the server's sweep requeues stays queued for the test to look at.
    server = ServerThread(tmp_path / "data", workers=0)
    try:
        with grpc.insecure_channel(server.address) as channel:
            user = make_user(server, channel)
            t, claim, _ = _running_with_progress(server, user, 1000, lease_seconds=1)
            # The worker falls silent; the server's sweep (every second) finds the lease expired.
            wait_for(lambda: server.store.reader().export_task(t.export_task_id).run_state == "queued",
                     timeout=15, what="the sweep to requeue the export")
            queued = _get(user, t.export_task_id)
            assert (queued.status, queued.progress, queued.export_count) == ("Processing", 1, 0), queued
            row = server.store.reader().export_task(t.export_task_id)
            assert (row.run_token, row.worker_id, row.lease_until, row.attempts) == (None, None, None, 1)
    finally:
        server.stop()


def test_start_up_recovery_requeues_with_progress_1_and_no_rows(tmp_path):
    server = ServerThread(tmp_path / "data", workers=0)
    with grpc.insecure_channel(server.address) as channel:
        user = make_user(server, channel)
        t, _, _ = _running_with_progress(server, user, 800, lease_seconds=600)  # a lease far from expiring
    server.stop()
    server = ServerThread(tmp_path / "data", workers=0)  # owns the directory: the run is orphaned
    try:
        with grpc.insecure_channel(server.address) as channel:
            user.channel = channel
            queued = _get(user, t.export_task_id)
            assert (queued.status, queued.progress, queued.export_count) == ("Processing", 1, 0), queued
            assert server.store.reader().export_task(t.export_task_id).run_state == "queued"
    finally:
        server.stop()
