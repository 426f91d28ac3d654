"""An export end to end: create, watch to Success, download in chunks, read the xls back."""

from __future__ import annotations

import hashlib
import io
import zipfile

import xlrd

from conftest import seed_known
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.runner.xls import HEADER


def create(user, task_id, **kw):
    return user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=task_id), **kw), metadata=user.metadata).export_task


def watch_to_end(user, export_task_id):
    return list(user.exports.WatchProgress(epb.WatchProgressRequest(
        project_id=user.project_id, export_task_id=export_task_id), metadata=user.metadata))


def download(user, export_task_id, offset=0):
    chunks = list(user.exports.ShowExportTask(epb.ShowExportTaskRequest(
        project_id=user.project_id, export_task_id=export_task_id, offset=offset), metadata=user.metadata))
    return chunks, b"".join(c.body.data for c in chunks)


def test_export_runs_to_success_and_the_file_holds_every_subtask(user):
    task_id, expected = seed_known(user, 2500)  # rows the test chose, not read back from the store
    created = create(user, task_id)
    assert created.status == "Processing" and created.progress == 1 and not created.HasField("end_time")
    events = watch_to_end(user, created.export_task_id)
    seqs = [e.sequence for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    progresses = [e.export_task.progress for e in events]
    assert progresses == sorted(progresses)
    final = events[-1].export_task
    assert final.status == "Success" and final.progress == 100 and final.export_count == 2500
    assert final.HasField("end_time") and final.file_available
    assert all(1 <= p <= 99 for p in progresses[:-1])

    chunks, data = download(user, created.export_task_id)
    assert all(len(c.body.data) <= 64 * 1024 for c in chunks)
    assert chunks[0].body.content_type == "application/zip"
    assert chunks[0].total_size == len(data) and chunks[0].sha256 == hashlib.sha256(data).hexdigest()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == [f"export-{created.export_task_id}.xls"]
        book = xlrd.open_workbook(file_contents=z.read(z.namelist()[0]))
    sheet = book.sheet_by_index(0)
    assert tuple(sheet.row_values(0)) == HEADER
    assert sheet.nrows == 2501
    for i, row in enumerate(expected, start=1):
        assert sheet.row_values(i) == row, f"row {i}"
