"""The seed's rules, proved through the real gRPC API of real servers: the 5-unfinished quota under
concurrency, eviction at 51, same-conditions overwrite (and a failed re-run keeping the last good file),
app and instance scope, the one-download-per-30-s rule, idempotent creates, cancel, delete, ownership,
list paging, and a `kill -9` of a running server.

Servers: `server` (conftest, 2 workers) runs small exports for real; `idle_server` (no workers) keeps
exports Processing so the unfinished quota is deterministic; `manual_server` (no workers, one per test)
runs an export only when the test starts a real worker process, so every step of an overwrite happens
when the test says. Each test uses its own principal: quotas are per user.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile

import grpc
import pytest
import xlrd

from conftest import (RpcFailure, ServerThread, invalid_argument, make_user, refused, rpc_failure, store_snapshot, wait_for,
                      worker_process)
from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc
from iotda_export_server.domain import ids, rules
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.domain.errors import RateLimited
from iotda_export_server.domain.exports import ExportService
from iotda_export_server.domain.jobs import ExportJobs
from iotda_export_server.domain.model import Caller, ExportTask
from iotda_export_server.runner.worker import run_export

Code = grpc.StatusCode


# -- helpers ---------------------------------------------------------------------------------------

def create(user, task_id, metadata=(), **kw) -> epb.ExportTask:
    return user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=task_id), **kw),
        metadata=user.metadata + tuple(metadata)).export_task


def get(user, export_task_id, metadata=()) -> epb.ExportTask:
    return user.exports.GetExportTask(epb.GetExportTaskRequest(
        project_id=user.project_id, export_task_id=export_task_id), metadata=user.metadata + tuple(metadata)
    ).export_task


def list_tasks(user, metadata=(), **kw) -> epb.ListExportTasksResponse:
    return user.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=user.project_id, **kw),
                                        metadata=user.metadata + tuple(metadata))


def download(user, export_task_id, offset=0, limit=0) -> tuple[list, bytes]:
    chunks = list(user.exports.ShowExportTask(epb.ShowExportTaskRequest(
        project_id=user.project_id, export_task_id=export_task_id, offset=offset, limit=limit),
        metadata=user.metadata))
    return chunks, b"".join(c.body.data for c in chunks)


def watch_to_end(user, export_task_id, metadata=()) -> list:
    return list(user.exports.WatchProgress(epb.WatchProgressRequest(
        project_id=user.project_id, export_task_id=export_task_id), metadata=user.metadata + tuple(metadata),
        timeout=60))


def wait_status(user, export_task_id, status, timeout=30.0) -> epb.ExportTask:
    return wait_for(lambda: (t := get(user, export_task_id)).status == status and t, timeout,
                    what=f"export {export_task_id} to reach {status}")


def owner(user) -> str:
    """What owns the user's records in the store: the principal's immutable id."""
    return user.creds["principal_id"]


def store_task(server, export_task_id) -> ExportTask | None:
    return server.store.reader().export_task(export_task_id)


def owner_task_ids(server, user) -> set[str]:
    c = server.store.reader().conn  # a SQLite server
    return {r[0] for r in c.execute("SELECT export_task_id FROM export_tasks WHERE owner = ?", (owner(user),))}


def xls_rows(zip_bytes: bytes) -> list[list[str]]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        (name,) = z.namelist()
        book = xlrd.open_workbook(file_contents=z.read(name))
    sheet = book.sheet_by_index(0)
    return [sheet.row_values(i) for i in range(sheet.nrows)]


FAKE_ZIP = b"PK\x05\x06"  # what insert_finished_tasks writes as each task's file


def insert_finished_tasks(server, user, n: int, instance_id: str = "", with_files: bool = True,
                          start_ms: int | None = None) -> list[ExportTask]:
    """n finished (Success) export tasks of the user, written through the store API with ascending IDs
    and create times (earliest first), each with a result file, as if n real exports had run."""
    start_ms = start_ms if start_ms is not None else ids.now_ms() - 3_600_000
    tasks = []
    with server.store.transaction(lock_key=owner(user)) as tx:
        for i in range(n):
            batch_task_id = ids.new_id()
            key = json.dumps([user.project_id, instance_id, "BatchTask", batch_task_id, "xls", "GLOBAL", None],
                             separators=(",", ":"))
            t = ExportTask(
                export_task_id=ids.new_id(), owner=owner(user), project_id=user.project_id, instance_id=instance_id,
                resource_type="BatchTask", batch_task_id=batch_task_id, export_format="xls", app_type="GLOBAL",
                app_id=None, conditions_key=key, status="Success", status_desc=None, progress=100, export_count=1,
                create_time=start_ms + i * 1000, end_time=start_ms + i * 1000 + 500, version=3, run_state="done",
                run_token=None, attempts=1, worker_id=None, lease_until=None, queued_at=start_ms + i * 1000,
                file_generation=1 if with_files else 0, file_size=len(FAKE_ZIP) if with_files else None,
                file_sha256=hashlib.sha256(FAKE_ZIP).hexdigest() if with_files else None)
            tx.insert_export_task(t)
            tasks.append(t)
    if with_files:
        for t in tasks:
            server.server.files.path(t.export_task_id).write_bytes(FAKE_ZIP)
    return tasks


def rewind_download_clock(server, user) -> None:
    """As if the user's last counted download happened more than 30 s ago."""
    with server.store.transaction(lock_key=owner(user)) as tx:
        last = tx.download_limit(owner(user))
        assert last is not None
        tx.set_download_limit(owner(user), last[0] - 31_000, last[1], last[2])


def record(user, task_id, results) -> bpb.BatchTask:
    return user.batches.RecordSubtaskResults(bpb.RecordSubtaskResultsRequest(
        project_id=user.project_id, task_id=task_id,
        results=[bpb.SubtaskResult(target=t, status=s, output=o) for t, s, o in results]),
        metadata=user.metadata).batchtask


def files_in(server) -> set[str]:
    return {p.name for p in server.server.files.dir.iterdir()}


# -- at most 5 unfinished, under concurrency ---------------------------------------------------------

def test_twenty_concurrent_creates_by_one_user_admit_exactly_five(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    batch_ids = [seed_batch_task(idle_server.store, user.project_id, "", 2, seed=i) for i in range(22)]
    barrier = threading.Barrier(20)
    results: list = [None] * 20

    def go(i):
        barrier.wait(10)
        try:
            results[i] = create(user, batch_ids[i])
        except grpc.RpcError as err:
            results[i] = rpc_failure(err)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    admitted = [r for r in results if isinstance(r, epb.ExportTask)]
    refusals = [r for r in results if isinstance(r, RpcFailure)]
    assert len(admitted) == 5 and len(refusals) == 15, results
    for f in refusals:
        assert f.code == Code.RESOURCE_EXHAUSTED, f.message
        assert f.error_code == "IOTDA.018002" and f.error_info.reason == "QUOTA_EXCEEDED"
        assert f.error_info.metadata["limit"] == "5"
        assert f.quota_failure is not None and f.quota_failure.violations[0].subject == f"user:{user.creds['user']}"
    assert {t.status for t in admitted} == {"Processing"}
    assert owner_task_ids(idle_server, user) == {t.export_task_id for t in admitted}
    assert idle_server.store.reader().count_export_tasks(owner(user), unfinished_only=True) == 5

    # A 6th create, sequential: refused, and nothing at all changes in the store.
    before = store_snapshot(idle_server, user.project_id)
    f = refused(lambda: create(user, batch_ids[20]), Code.RESOURCE_EXHAUSTED)
    assert f.error_code == "IOTDA.018002" and "5 unfinished" in f.message
    assert store_snapshot(idle_server, user.project_id) == before

    # The limit is on unfinished tasks: once one is cancelled a new create is admitted again.
    user.exports.CancelExportTask(epb.CancelExportTaskRequest(
        project_id=user.project_id, export_task_id=admitted[0].export_task_id), metadata=user.metadata)
    sixth = create(user, batch_ids[21])
    assert sixth.status == "Processing"
    assert len(owner_task_ids(idle_server, user)) == 6


# -- at most 50: the 51st evicts the earliest ----------------------------------------------------------

def test_the_51st_create_evicts_the_earliest_finished_task_and_its_file(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    tasks = insert_finished_tasks(idle_server, user, 50)
    # tasks[0], the oldest, is still running (unfinished tasks are never evicted) ...
    with idle_server.store.transaction() as tx:
        tx.update_export_task(tasks[0].export_task_id, status="Processing", progress=1, end_time=None,
                              run_state="queued", file_generation=0, file_size=None)
    idle_server.server.files.remove(tasks[0].export_task_id)
    # ... and tasks[1] was re-run a moment ago, which refreshed its create time.
    with idle_server.store.transaction() as tx:
        tx.update_export_task(tasks[1].export_task_id, create_time=ids.now_ms() - 1000)
    earliest = tasks[2]
    assert f"{earliest.export_task_id}.zip" in files_in(idle_server)
    batch = seed_batch_task(idle_server.store, user.project_id, "", 3, seed=51)

    new = create(user, batch)

    assert new.status == "Processing"
    remaining = owner_task_ids(idle_server, user)
    assert len(remaining) == 50
    assert remaining == {t.export_task_id for t in tasks} - {earliest.export_task_id} | {new.export_task_id}
    assert f"{earliest.export_task_id}.zip" not in files_in(idle_server)
    assert f"{tasks[3].export_task_id}.zip" in files_in(idle_server)
    f = refused(lambda: get(user, earliest.export_task_id), Code.NOT_FOUND)
    assert f.error_code == "IOTDA.018001"
    assert list_tasks(user, limit=1).page.count == 50
    assert list_tasks(user, limit=1).export_tasks[0].export_task_id == new.export_task_id


def test_concurrent_creates_around_fifty_never_exceed_fifty(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    tasks = insert_finished_tasks(idle_server, user, 47)
    batch_ids = [seed_batch_task(idle_server.store, user.project_id, "", 2, seed=100 + i) for i in range(8)]
    counts: list[int] = []
    stop = threading.Event()

    def monitor():
        reader = idle_server.store.reader()  # this thread's own connection
        while not stop.is_set():
            counts.append(reader.count_export_tasks(owner(user)))
        idle_server.store.close()

    barrier = threading.Barrier(8)
    results: list = [None] * 8

    def go(i):
        barrier.wait(10)
        try:
            results[i] = create(user, batch_ids[i])
        except grpc.RpcError as err:
            results[i] = rpc_failure(err)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    watcher.join(10)

    admitted = [r for r in results if isinstance(r, epb.ExportTask)]
    refusals = [r for r in results if isinstance(r, RpcFailure)]
    assert len(admitted) == 5 and len(refusals) == 3, results
    assert all(f.error_code == "IOTDA.018002" for f in refusals)
    assert counts and max(counts) <= 50 and counts[-1] == 50
    remaining = owner_task_ids(idle_server, user)
    # 47 + 5 = 52: the two earliest went, with their files.
    assert remaining == {t.export_task_id for t in tasks[2:]} | {t.export_task_id for t in admitted}
    assert not {f"{t.export_task_id}.zip" for t in tasks[:2]} & files_in(idle_server)


# -- same conditions overwrite -------------------------------------------------------------------------

def test_same_conditions_rerun_replaces_the_file_and_a_failed_rerun_keeps_the_last_good_one(manual_server):
    s = manual_server
    user = make_user(s, s.channel)
    targets = ["dev_a", "dev_b", "dev_c"]
    batch = user.batches.CreateBatchTask(bpb.CreateBatchTaskRequest(
        project_id=user.project_id, task_name="overwrite_test", task_type="createCommands", targets=targets),
        metadata=user.metadata).batchtask
    assert record(user, batch.task_id, [(t, "Success", f"v1 {t}") for t in targets]).status == "Success"

    first = create(user, batch.task_id)
    assert first.status == "Processing" and first.progress == 1 and not first.file_available

    # Same conditions while it is Processing: the same task, not queued a second time.
    again = create(user, batch.task_id)
    assert again.export_task_id == first.export_task_id and again.create_time == first.create_time
    row = store_task(s, first.export_task_id)
    assert (row.run_state, row.attempts) == ("queued", 0)
    assert owner_task_ids(s, user) == {first.export_task_id}

    with worker_process(s):
        done1 = wait_status(user, first.export_task_id, "Success")
    row = store_task(s, first.export_task_id)
    assert (row.attempts, row.file_generation) == (1, 1)  # one run, one file
    assert done1.export_count == 3 and done1.file_available
    _, data1 = download(user, first.export_task_id)
    assert sorted(r[2] for r in xls_rows(data1)[1:]) == [f"v1 {t}" for t in targets]

    # The batch task's results change; the same conditions re-run the same task.
    record(user, batch.task_id, [(t, "Success", f"v2 {t}") for t in targets])
    rerun = create(user, batch.task_id)
    assert rerun.export_task_id == first.export_task_id
    assert rerun.status == "Processing" and rerun.progress == 1 and not rerun.HasField("end_time")
    assert rerun.create_time > first.create_time  # refreshed
    assert rerun.file_available  # the previous file stays downloadable while the re-run is Processing
    assert owner_task_ids(s, user) == {first.export_task_id}
    # A resume of the last download (same file) is served while the re-run waits: the old bytes.
    _, tail = download(user, first.export_task_id, offset=1)
    assert tail == data1[1:]

    with worker_process(s):
        wait_status(user, first.export_task_id, "Success")
    assert store_task(s, first.export_task_id).file_generation == 2
    # A resume no longer applies: the file changed, so this is a new download within 30 s.
    f = refused(lambda: download(user, first.export_task_id, offset=1), Code.RESOURCE_EXHAUSTED)
    assert f.error_code == "IOTDA.018003"
    rewind_download_clock(s, user)
    _, data2 = download(user, first.export_task_id)
    assert data2 != data1
    assert sorted(r[2] for r in xls_rows(data2)[1:]) == [f"v2 {t}" for t in targets]
    assert s.server.files.path(first.export_task_id).read_bytes() == data2

    # A re-run that fails (its batch task is deleted before a worker claims it) keeps the last good file.
    rerun2 = create(user, batch.task_id)
    assert rerun2.status == "Processing" and rerun2.file_available
    user.batches.DeleteBatchTask(bpb.DeleteBatchTaskRequest(project_id=user.project_id, task_id=batch.task_id),
                                 metadata=user.metadata)
    with worker_process(s):
        failed = wait_status(user, first.export_task_id, "Failed")
    assert "no longer exists" in failed.status_desc and failed.HasField("end_time")
    assert failed.file_available and failed.progress < 100
    _, tail = download(user, first.export_task_id, offset=1)  # resume of the last download: same file
    assert tail == data2[1:]
    assert s.server.files.path(first.export_task_id).read_bytes() == data2
    assert files_in(s) == {f"{first.export_task_id}.zip"}  # no temporary file left behind


# -- scope: app_type / app_id and instance-id --------------------------------------------------------

def test_app_type_and_app_id_scope(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    in_default = seed_batch_task(idle_server.store, user.project_id, "", 2, app_id="default", seed=1)
    in_app_a = seed_batch_task(idle_server.store, user.project_id, "", 2, app_id="app_A-1", seed=2)

    tenant = create(user, in_default)
    assert tenant.app_type == "GLOBAL" and not tenant.HasField("app_id")
    default_app = create(user, in_default, app_type="APP")
    assert default_app.app_type == "APP" and default_app.app_id == "default"
    assert default_app.export_task_id != tenant.export_task_id  # other conditions: another task
    app_a = create(user, in_app_a, app_type="APP", app_id="app_A-1")
    assert (app_a.app_type, app_a.app_id) == ("APP", "app_A-1")
    tenant_a = create(user, in_app_a, app_type="GLOBAL")  # the tenant scope reaches every app
    assert tenant_a.app_type == "GLOBAL"

    before = store_snapshot(idle_server, user.project_id)
    for kw, task_id in (({"app_type": "APP"}, in_app_a),  # APP without app_id: the default app only
                        ({"app_type": "APP", "app_id": "app_B"}, in_app_a),
                        ({"app_type": "APP", "app_id": "app_A-1"}, in_default)):
        f = refused(lambda: create(user, task_id, **kw), Code.NOT_FOUND)
        assert f.error_code == "IOTDA.019001" and f.resource_info.resource_name == task_id
    assert store_snapshot(idle_server, user.project_id) == before

    assert list_tasks(user, app_type="APP").page.count == 2
    assert [t.export_task_id for t in list_tasks(user, app_id="app_A-1").export_tasks] == [app_a.export_task_id]
    assert list_tasks(user, app_type="GLOBAL").page.count == 2


def test_instance_id_scopes_tasks_and_is_validated(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    inst1 = (("instance-id", "inst-1"),)
    inst2 = (("instance-id", "inst_2"),)
    batch_1 = seed_batch_task(idle_server.store, user.project_id, "inst-1", 2, seed=1)
    batch_default = seed_batch_task(idle_server.store, user.project_id, "", 2, seed=2)

    t = create(user, batch_1, metadata=inst1)
    assert get(user, t.export_task_id, inst1).export_task_id == t.export_task_id
    assert store_task(idle_server, t.export_task_id).instance_id == "inst-1"
    for md in ((), inst2):
        for call in (lambda: get(user, t.export_task_id, md),
                     lambda: watch_to_end(user, t.export_task_id, md),
                     lambda: user.exports.CancelExportTask(epb.CancelExportTaskRequest(
                         project_id=user.project_id, export_task_id=t.export_task_id), metadata=user.metadata + md),
                     lambda: user.exports.DeleteExportTask(epb.DeleteExportTaskRequest(
                         project_id=user.project_id, export_task_id=t.export_task_id), metadata=user.metadata + md)):
            assert refused(call, Code.NOT_FOUND).error_code == "IOTDA.018001"
        page = list_tasks(user, md)
        assert page.page.count == 0 and not page.export_tasks
    assert [x.export_task_id for x in list_tasks(user, inst1).export_tasks] == [t.export_task_id]
    assert get(user, t.export_task_id, inst1).status == "Processing"  # untouched by the refused calls

    # Batch tasks are per instance too.
    assert refused(lambda: create(user, batch_1), Code.NOT_FOUND).error_code == "IOTDA.019001"
    assert refused(lambda: create(user, batch_default, metadata=inst1), Code.NOT_FOUND).error_code == "IOTDA.019001"
    assert create(user, batch_default).export_task_id != t.export_task_id

    before = store_snapshot(idle_server, user.project_id)
    for bad in ("inst 1", "i" * 37, "inst/1", "inst.1", "inst:1", "%69nst"):
        md = (("instance-id", bad),)
        invalid_argument(lambda: create(user, batch_1, metadata=md), "Instance-Id")
        invalid_argument(lambda: list_tasks(user, md), "Instance-Id")
    assert store_snapshot(idle_server, user.project_id) == before


# -- downloads -------------------------------------------------------------------------------------

def test_download_is_limited_to_one_per_30_seconds_but_a_resume_is_admitted(user, seed, server):
    a = create(user, seed(user, 300))
    b = create(user, seed(user, 40))
    wait_status(user, a.export_task_id, "Success")
    wait_status(user, b.export_task_id, "Success")

    before = time.monotonic()
    chunks, data = download(user, a.export_task_id)
    assert chunks[0].total_size == len(data) and data[:2] == b"PK"

    f = refused(lambda: download(user, a.export_task_id), Code.RESOURCE_EXHAUSTED)
    assert f.error_code == "IOTDA.018003" and f.error_info.reason == "RATE_LIMIT_EXCEEDED"
    # The rest of the 30 s counted from the admitted download: at most 30, at least 30 minus the time
    # this test has spent since just before it (no fixed allowance for a slow machine).
    floor = 30 - (time.monotonic() - before) - 0.01
    delay = f.retry_info.retry_delay.seconds + f.retry_info.retry_delay.nanos / 1e9
    assert floor <= delay <= 30, (floor, delay)
    assert floor - 0.1 <= float(f.error_info.metadata["retry_after_seconds"]) <= 30
    assert f.quota_failure is not None and "30 seconds" in f.message
    # Another file is not a resume of the last download, even with an offset.
    assert refused(lambda: download(user, b.export_task_id, offset=10),
                   Code.RESOURCE_EXHAUSTED).error_code == "IOTDA.018003"

    # Resuming the last download (offset > 0, same file) is admitted and does not count again --
    # each resume from further on, at most DOWNLOAD_FREE_RESUMES times.
    chunks, tail = download(user, a.export_task_id, offset=100)
    assert tail == data[100:] and chunks[0].offset == 100
    assert refused(lambda: download(user, a.export_task_id, offset=100),  # not further on: a re-download
                   Code.RESOURCE_EXHAUSTED).error_code == "IOTDA.018003"
    assert refused(lambda: download(user, a.export_task_id, offset=5), Code.RESOURCE_EXHAUSTED)
    _, piece = download(user, a.export_task_id, offset=105, limit=10)
    assert piece == data[105:115]
    _, tail = download(user, a.export_task_id, offset=200)
    assert tail == data[200:]
    assert rules.DOWNLOAD_FREE_RESUMES == 3
    assert refused(lambda: download(user, a.export_task_id, offset=300),  # a 4th resume counts again
                   Code.RESOURCE_EXHAUSTED).error_code == "IOTDA.018003"

    f = refused(lambda: download(user, a.export_task_id, offset=len(data) + 1), Code.OUT_OF_RANGE)
    assert "offset" in f.fields
    invalid_argument(lambda: download(user, a.export_task_id, offset=-1), "offset")
    invalid_argument(lambda: download(user, a.export_task_id, limit=-1), "limit")


@pytest.fixture(scope="module")
def racing_server(tmp_path_factory):
    """A server whose per-user cap on downloads at once (2 by default) lets all eight racers reach the
    admission, where the one-per-30-s rule must then pick exactly one."""
    s = ServerThread(tmp_path_factory.mktemp("racing"), workers=1, max_downloads_per_user=8)
    yield s
    s.stop()


def test_simultaneous_downloads_by_one_user_admit_exactly_one(racing_server):
    """Eight downloads by one user at the same moment, through the gRPC API, five trials (the clock of
    the user's last download is rewound between trials): exactly one is admitted each time, every
    other is IOTDA.018003. (tests/test_rule_races.py runs the same race at the domain on both stores.)"""
    server = racing_server
    channel = grpc.insecure_channel(server.address)
    user = make_user(server, channel)

    def seed(u, n):
        return seed_batch_task(server.store, u.project_id, "", n, seed=n)
    tasks = [create(user, seed(user, 30)), create(user, seed(user, 31))]
    for t in tasks:
        wait_status(user, t.export_task_id, "Success")
    for trial in range(5):
        if trial:
            rewind_download_clock(server, user)
        barrier = threading.Barrier(8)
        results: list = [None] * 8

        def go(i):
            barrier.wait(10)
            try:
                results[i] = download(user, tasks[i % 2].export_task_id)[1]
            except grpc.RpcError as err:
                results[i] = rpc_failure(err)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        admitted = [r for r in results if isinstance(r, bytes)]
        refusals = [r for r in results if isinstance(r, RpcFailure)]
        assert len(admitted) == 1 and len(refusals) == 7, (trial, len(admitted), [f.message for f in refusals])
        assert admitted[0][:2] == b"PK"
        assert all(f.code == Code.RESOURCE_EXHAUSTED and f.error_code == "IOTDA.018003" for f in refusals), \
            [(f.code, f.error_code) for f in refusals]


def test_a_rerun_of_a_finished_task_counts_against_the_unfinished_limit(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    batches = [seed_batch_task(idle_server.store, user.project_id, "", 2, seed=i) for i in range(6)]
    finished = create(user, batches[0])
    user.exports.CancelExportTask(epb.CancelExportTaskRequest(
        project_id=user.project_id, export_task_id=finished.export_task_id), metadata=user.metadata)
    for b in batches[1:]:
        assert create(user, b).status == "Processing"
    before = store_snapshot(idle_server, user.project_id)
    f = refused(lambda: create(user, batches[0]), Code.RESOURCE_EXHAUSTED)  # the same conditions: a re-run
    assert f.error_code == "IOTDA.018002"
    assert store_snapshot(idle_server, user.project_id) == before
    assert get(user, finished.export_task_id).status == "Failed"


def test_download_before_success_is_a_failed_precondition_and_does_not_count(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    t = create(user, seed_batch_task(idle_server.store, user.project_id, "", 2, seed=3))
    f = refused(lambda: download(user, t.export_task_id), Code.FAILED_PRECONDITION)
    assert f.error_code == "IOTDA.018004"
    assert f.precondition.violations[0].type == "NOT_SUCCEEDED"
    assert idle_server.store.reader().download_limit(owner(user)) is None


def test_the_download_window_expires_after_30_seconds(user, seed, server):
    t = create(user, seed(user, 20))
    wait_status(user, t.export_task_id, "Success")
    now = [1_900_000_000_000]
    service = ExportService(server.store, server.server.files, clock=lambda: now[0])
    caller = Caller(principal=server.store.reader().principal_by("principal_id", owner(user)), project_id=user.project_id,
                    instance_id="")

    def admit(offset=0):
        d = service.admit_download(caller, t.export_task_id, offset, 0)
        d.file.close()
        return d

    admit()
    now[0] += 29_999
    with pytest.raises(RateLimited) as info:
        admit()
    assert info.value.retry_after == pytest.approx(0.001)
    now[0] += 1  # 30 s after the counted download
    assert admit().length > 0
    # The new download counted: the window starts again from here.
    now[0] += 10_000
    with pytest.raises(RateLimited) as info:
        admit()
    assert info.value.retry_after == pytest.approx(20.0)
    assert admit(offset=1).offset == 1  # a resume of it is still admitted


# -- idempotency, cancel, delete, ownership -------------------------------------------------------------

def test_request_id_retry_returns_the_same_task_without_rerunning(user, seed, server):
    batch = seed(user, 30)
    t = create(user, batch, request_id="req-1")
    done = wait_status(user, t.export_task_id, "Success")
    version = store_task(server, t.export_task_id).version

    retry = create(user, batch, request_id="req-1")
    assert retry.export_task_id == t.export_task_id
    assert (retry.status, retry.create_time, retry.end_time) == ("Success", done.create_time, done.end_time)
    assert store_task(server, t.export_task_id).version == version  # nothing ran, nothing changed

    # Without the same request_id, the same conditions are a new create: the task is re-run.
    rerun = create(user, batch, request_id="req-2")
    assert rerun.export_task_id == t.export_task_id and rerun.create_time > done.create_time
    done2 = wait_status(user, t.export_task_id, "Success")
    assert create(user, batch, request_id="req-2").create_time == done2.create_time


def test_a_retried_create_is_answered_even_at_the_unfinished_limit(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    batches = [seed_batch_task(idle_server.store, user.project_id, "", 2, seed=i) for i in range(6)]
    created = [create(user, b, request_id=f"r{i}") for i, b in enumerate(batches[:5])]
    before = store_snapshot(idle_server, user.project_id)
    assert create(user, batches[4], request_id="r4").export_task_id == created[4].export_task_id
    assert create(user, batches[0], request_id="r0") == created[0]
    assert store_snapshot(idle_server, user.project_id) == before
    assert refused(lambda: create(user, batches[5], request_id="r5"),
                   Code.RESOURCE_EXHAUSTED).error_code == "IOTDA.018002"


def test_cancel_fails_the_task_and_a_late_worker_finish_does_not_flip_it(manual_server):
    s = manual_server
    user = make_user(s, s.channel)
    t = create(user, seed_batch_task(s.store, user.project_id, "", 50, seed=5))
    jobs = ExportJobs(s.store, s.server.files)
    claim = jobs.claim("late-worker")  # the run starts (this server has no other work)
    assert claim is not None and claim.task.export_task_id == t.export_task_id

    cancelled = user.exports.CancelExportTask(epb.CancelExportTaskRequest(
        project_id=user.project_id, export_task_id=t.export_task_id), metadata=user.metadata).export_task
    assert cancelled.status == "Failed" and cancelled.status_desc == "cancelled"
    assert cancelled.HasField("end_time") and not cancelled.file_available

    # The worker now finishes its run: nothing it does may bring the task back.
    assert run_export(s.server.files, jobs, claim) is False
    temp = s.server.files.temp_path(t.export_task_id)
    temp.write_bytes(b"PK\x05\x06")
    assert jobs.succeed(claim, temp, rows=50, size=4, sha256="0" * 64) is False
    assert jobs.progress(claim, 10, 50) is False
    after = get(user, t.export_task_id)
    assert (after.status, after.status_desc, after.file_available) == ("Failed", "cancelled", False)
    assert files_in(s) == set()
    # The progress stream of a cancelled task ends at once with that state.
    assert [e.export_task.status for e in watch_to_end(user, t.export_task_id)] == ["Failed"]
    # Cancelling a finished task changes nothing.
    version = store_task(s, t.export_task_id).version
    user.exports.CancelExportTask(epb.CancelExportTaskRequest(
        project_id=user.project_id, export_task_id=t.export_task_id), metadata=user.metadata)
    assert store_task(s, t.export_task_id).version == version


def test_delete_removes_the_task_and_its_file(user, seed, server):
    t = create(user, seed(user, 25))
    wait_status(user, t.export_task_id, "Success")
    path = server.server.files.path(t.export_task_id)
    assert path.exists()
    user.exports.DeleteExportTask(epb.DeleteExportTaskRequest(
        project_id=user.project_id, export_task_id=t.export_task_id), metadata=user.metadata)
    assert not path.exists()
    assert store_task(server, t.export_task_id) is None
    assert refused(lambda: get(user, t.export_task_id), Code.NOT_FOUND).error_code == "IOTDA.018001"
    assert list_tasks(user).page.count == 0
    f = refused(lambda: user.exports.DeleteExportTask(epb.DeleteExportTaskRequest(
        project_id=user.project_id, export_task_id=t.export_task_id), metadata=user.metadata), Code.NOT_FOUND)
    assert f.error_code == "IOTDA.018001" and f.resource_info.resource_name == t.export_task_id
    unknown = ids.new_id()
    assert refused(lambda: user.exports.DeleteExportTask(epb.DeleteExportTaskRequest(
        project_id=user.project_id, export_task_id=unknown), metadata=user.metadata),
        Code.NOT_FOUND).error_code == "IOTDA.018001"


def test_deleting_an_unfinished_task_frees_its_slot(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    batches = [seed_batch_task(idle_server.store, user.project_id, "", 2, seed=i) for i in range(6)]
    created = [create(user, b) for b in batches[:5]]
    assert refused(lambda: create(user, batches[5]), Code.RESOURCE_EXHAUSTED).error_code == "IOTDA.018002"
    user.exports.DeleteExportTask(epb.DeleteExportTaskRequest(
        project_id=user.project_id, export_task_id=created[0].export_task_id), metadata=user.metadata)
    assert create(user, batches[5]).status == "Processing"


def test_another_users_task_is_not_found_for_every_operation(user, seed, server, channel):
    t = create(user, seed(user, 10))
    done = wait_status(user, t.export_task_id, "Success")
    neighbour = make_user(server, channel, project_id=user.project_id)  # same project, another user
    stranger = make_user(server, channel)  # another project
    for other in (neighbour, stranger):
        p, md, tid = other.project_id, other.metadata, t.export_task_id
        calls = {
            "get": lambda: other.exports.GetExportTask(epb.GetExportTaskRequest(project_id=p, export_task_id=tid),
                                                       metadata=md),
            "watch": lambda: other.exports.WatchProgress(epb.WatchProgressRequest(project_id=p, export_task_id=tid),
                                                         metadata=md),
            "download": lambda: other.exports.ShowExportTask(
                epb.ShowExportTaskRequest(project_id=p, export_task_id=tid), metadata=md),
            "cancel": lambda: other.exports.CancelExportTask(
                epb.CancelExportTaskRequest(project_id=p, export_task_id=tid), metadata=md),
            "delete": lambda: other.exports.DeleteExportTask(
                epb.DeleteExportTaskRequest(project_id=p, export_task_id=tid), metadata=md),
        }
        for name, call in calls.items():
            f = refused(call, Code.NOT_FOUND)
            assert f.error_code == "IOTDA.018001", name
        assert other.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=p), metadata=md).page.count == 0
        assert server.store.reader().download_limit(owner(other)) is None
    assert get(user, t.export_task_id) == done
    assert server.server.files.path(t.export_task_id).exists()


# -- list -----------------------------------------------------------------------------------------

def test_list_pages_newest_first_by_limit_offset_and_marker(idle_server, idle_channel):
    user = make_user(idle_server, idle_channel)
    tasks = insert_finished_tasks(idle_server, user, 23, with_files=False)
    insert_finished_tasks(idle_server, user, 2, instance_id="other-instance", with_files=False)
    newest_first = [t.export_task_id for t in reversed(tasks)]

    def ids_of(resp):
        return [t.export_task_id for t in resp.export_tasks]

    default = list_tasks(user)
    assert ids_of(default) == newest_first[:10] and default.page.count == 23
    seen, marker = [], ""
    for expected in (newest_first[:7], newest_first[7:14], newest_first[14:21], newest_first[21:]):
        page = list_tasks(user, limit=7, marker=marker)
        assert ids_of(page) == expected and page.page.count == 23
        assert page.page.marker == expected[-1]
        seen += ids_of(page)
        marker = page.page.marker
    assert seen == newest_first
    end = list_tasks(user, limit=7, marker=marker)
    assert not end.export_tasks and end.page.marker == ""
    assert ids_of(list_tasks(user, limit=5, offset=5)) == newest_first[5:10]
    assert ids_of(list_tasks(user, limit=5, offset=3, marker=newest_first[9])) == newest_first[13:18]
    assert ids_of(list_tasks(user, limit=50)) == newest_first
    assert ids_of(list_tasks(user, limit=50, offset=500)) == []
    assert ids_of(list_tasks(user, limit=1, marker="f" * 24)) == newest_first[:1]

    # Filters: resource_condition is JSON text.
    pick = tasks[4]
    for text in (json.dumps({"task_id": pick.batch_task_id}), '{ "task_id" : "%s" }' % pick.batch_task_id):
        resp = list_tasks(user, resource_condition=text)
        assert ids_of(resp) == [pick.export_task_id] and resp.page.count == 1
    assert list_tasks(user, resource_condition=json.dumps({"task_id": "abc"})).page.count == 0
    assert list_tasks(user, resource_type="BatchTask", app_type="GLOBAL").page.count == 23
    assert list_tasks(user, app_type="APP").page.count == 0

    before = store_snapshot(idle_server, user.project_id)
    for limit in (0, 51, -1):
        invalid_argument(lambda: list_tasks(user, limit=limit), "limit", "IOTDA.000017")
    for offset in (501, -1):
        invalid_argument(lambda: list_tasks(user, offset=offset), "offset")
    for marker in ("xyz", "F" * 24, "a" * 23, "a" * 25, "g" * 24, "a" * 24 + "\n", " " + "a" * 23):
        invalid_argument(lambda: list_tasks(user, marker=marker), "marker")
    for text in ("not json", "[]", '"x"', "null", '{"task_id": 5}', '{"other": "x"}', '{"task_id": "XYZ"}',
                 '{"task_id": "%s"}' % ("a" * 25), "{" * 100_000):
        f = refused(lambda: list_tasks(user, resource_condition=text), Code.INVALID_ARGUMENT)
        assert f.error_code == "IOTDA.000006" and f.fields[0].startswith("resource_condition"), (text, f.fields)
    invalid_argument(lambda: list_tasks(user, resource_type="Device"), "resource_type")
    invalid_argument(lambda: list_tasks(user, app_type="app"), "app_type")
    invalid_argument(lambda: list_tasks(user, app_id="a b"), "app_id")
    assert store_snapshot(idle_server, user.project_id) == before


# -- kill -9 of a running server ------------------------------------------------------------------------

class Serve:
    """`iotda-export serve` in a subprocess on a data directory."""

    def __init__(self, data_dir: pathlib.Path, log: pathlib.Path):
        self.log = open(log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotda_export_server.cli", "serve", "--data-dir", str(data_dir), "--grpc-addr",
             "127.0.0.1:0", "--workers", "1"], stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, "IOTDA_EXPORT_LOG_LEVEL": "WARNING"})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("serve printed no 'listening on' line within 60 s") from None
            m = re.search(r"listening on (\S+):(\d+) \(gRPC\)", line)
            if m:
                self.address = f"{m.group(1)}:{m.group(2)}"
                break
        self.channel = grpc.insecure_channel(self.address)
        self.stub = export_task_pb2_grpc.ExportTaskServiceStub(self.channel)

    def workers(self) -> list[int]:
        text = pathlib.Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(x) for x in text.split()]

    def kill9(self) -> None:
        workers = wait_for(self.workers, 30, what="the server's worker process")
        self.channel.close()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        # PR_SET_PDEATHSIG: the kernel kills the worker with its server.
        wait_for(lambda: not any(os.path.exists(f"/proc/{w}") and _alive(w) for w in workers), 30,
                 what="the worker to die with its server")

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def test_kill_9_mid_export_then_restart_resumes_it_and_a_task_that_keeps_crashing_fails(tmp_path):
    from iotda_export_server.app import seed
    from iotda_export_server.store import open_store

    data = tmp_path / "data"
    servers = [Serve(data, tmp_path / "serve.log")]
    try:
        creds = json.loads((data / "credentials.json").read_text())
        md = (("authorization", f"Bearer {creds['token']}"),)
        project = creds["project_id"]
        big = seed(data, 150_000)  # while the server runs, as `iotda-export seed` does

        def get_task(stub, export_task_id):
            return stub.GetExportTask(epb.GetExportTaskRequest(project_id=project, export_task_id=export_task_id),
                                      metadata=md).export_task

        def create_big(stub, **kw):
            return stub.CreateExportTask(epb.CreateExportTaskRequest(
                project_id=project, resource_type="BatchTask", resource_condition=epb.ResourceCondition(task_id=big),
                **kw), metadata=md).export_task

        t = create_big(servers[0].stub)
        wait_for(lambda: get_task(servers[0].stub, t.export_task_id).progress > 1, 60, what="the export to start")
        servers[0].kill9()
        store = open_store(data, None, migrate=False)
        row = store.reader().export_task(t.export_task_id)
        assert (row.status, row.run_state, row.attempts) == ("Processing", "running", 1)  # orphaned

        servers.append(Serve(data, tmp_path / "serve.log"))
        stub = servers[1].stub
        done = wait_for(lambda: (x := get_task(stub, t.export_task_id)).status != "Processing" and x, 120,
                        interval=0.2, what="the resumed export to finish")
        assert done.status == "Success", done.status_desc
        assert done.export_count == 150_000 and done.progress == 100
        assert done.create_time == t.create_time  # the same task, resumed, not a new one
        assert store.reader().export_task(t.export_task_id).attempts == 2
        files = data / "files"
        assert not list(files.glob("*.part"))
        assert (files / f"{t.export_task_id}.zip").exists()
        good = (files / f"{t.export_task_id}.zip").read_bytes()

        # A task whose runs keep dying: this is its third attempt when the server dies again.
        crashing = create_big(stub, app_type="APP")
        wait_for(lambda: get_task(stub, crashing.export_task_id).progress > 1, 60, what="the second export to start")
        with store.transaction() as tx:
            tx.update_export_task(crashing.export_task_id, attempts=rules.MAX_EXPORT_ATTEMPTS)
        servers[1].kill9()
        servers.append(Serve(data, tmp_path / "serve.log"))
        failed = get_task(servers[2].stub, crashing.export_task_id)  # recovered at start-up, before serving
        assert failed.status == "Failed" and failed.HasField("end_time")
        assert "interrupted 3 times" in failed.status_desc and not failed.file_available
        assert not list(files.glob("*.part"))
        assert (files / f"{t.export_task_id}.zip").read_bytes() == good
        assert get_task(servers[2].stub, t.export_task_id).status == "Success"
        store.close()
    finally:
        for s in servers:
            s.stop()
