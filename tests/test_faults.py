"""Faults in the embedded mode: a full disk mid-export, a database held busy by another process."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time

import grpc
import pytest

from conftest import ServerThread, make_user, wait_for
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.config import FilesConfig
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.store.sqlite import DB_FILE_NAME


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs for the result files (the tests run as root, as CI does)."""
    mount = tmp_path / "files"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _create(user, task_id):
    return user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=task_id)), metadata=user.metadata).export_task


def _final(user, export_task_id):
    return list(user.exports.WatchProgress(epb.WatchProgressRequest(
        project_id=user.project_id, export_task_id=export_task_id), metadata=user.metadata, timeout=120))[-1].export_task


def test_a_full_disk_fails_the_export_with_a_reason_and_keeps_earlier_files(tmp_path, small_disk):
    server = ServerThread(tmp_path / "data", workers=1, files=FilesConfig(dir=str(small_disk)))
    try:
        with grpc.insecure_channel(server.address) as channel:
            user = make_user(server, channel)
            small = seed_batch_task(server.store, user.project_id, "", 500, seed=1)
            big = seed_batch_task(server.store, user.project_id, "", 200_000, seed=2)  # ~6 MiB zipped: cannot fit
            good = _final(user, _create(user, small).export_task_id)
            assert good.status == "Success"
            good_file = small_disk / f"{good.export_task_id}.zip"
            good_bytes = good_file.read_bytes()

            failed = _final(user, _create(user, big).export_task_id)
            assert failed.status == "Failed"
            assert "No space left on device" in failed.status_desc, failed.status_desc
            assert good_file.read_bytes() == good_bytes, "an earlier good file was touched"
            assert not [p for p in small_disk.iterdir() if p.name.endswith(".part")], "a temporary file was left"
            # The service still answers, and the failed task is listed with its reason.
            listed = user.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=user.project_id),
                                                  metadata=user.metadata).export_tasks
            assert {t.export_task_id: t.status for t in listed} == {good.export_task_id: "Success",
                                                                    failed.export_task_id: "Failed"}
    finally:
        server.stop()


def test_a_busy_database_is_waited_for_not_surfaced(server, channel, tmp_path):
    """Another process holds the SQLite write lock for a while: calls wait, then succeed."""
    user = make_user(server, channel)
    task_id = seed_batch_task(server.store, user.project_id, "", 10, seed=3)
    holder = sqlite3.connect(f"{server.data_dir}/{DB_FILE_NAME}", isolation_level=None, timeout=30,
                             check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release_later():
        time.sleep(1.5)  # the lock is held for a fixed time; the call below must outlast it, not fail
        holder.execute("COMMIT")
        holder.close()
        released.set()

    threading.Thread(target=release_later).start()
    started = time.monotonic()
    created = _create(user, task_id)
    assert released.is_set() and time.monotonic() - started >= 1.0
    assert created.status == "Processing"
    wait_for(lambda: _final(user, created.export_task_id).status == "Success", 60, what="the export to finish")
