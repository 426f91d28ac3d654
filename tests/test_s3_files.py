"""Result files in an S3-compatible bucket (issue 16), on a real SeaweedFS: the worker streams the
zip into a multipart upload and publishes it by recording its key; downloads are ranged reads with
the sha256 check; replaced, deleted and orphaned objects leave nothing behind (the bucket is
listed); a store out of reach is UNAVAILABLE and the service recovers when it is back.

One server (SQLite, one worker process) on one store for the module; the test that stops the store
runs last."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import zipfile

import grpc
import pytest
import xlrd

from conftest import ServerThread, make_user, rpc_failure, seed_known, wait_for
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_client import ExportClient
from iotda_export_server.config import FilesConfig
from iotda_export_server.domain import rules
from iotda_export_server.runner.supervisor import Supervisor
from iotda_export_server.store.files import open_files
from s3_support import SeaweedS3

PREFIX = "results"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    store = SeaweedS3(tmp_path_factory.mktemp("s3")).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in store.env().items():  # this process and the workers it spawns
                mp.setenv(k, v)
            yield store
    finally:
        store.stop()


@pytest.fixture(scope="module")
def s3_server(s3, tmp_path_factory):
    s = ServerThread(tmp_path_factory.mktemp("data"), workers=1, http_addr="127.0.0.1:0",
                     files=FilesConfig(url=f"s3://{s3.bucket}/{PREFIX}"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def s3_channel(s3_server):
    with grpc.insecure_channel(s3_server.address) as ch:
        yield ch


def _client(user) -> ExportClient:
    return ExportClient("unused", user.creds["token"], user.project_id, channel=user.channel)


def _row(server, export_task_id: str):
    return server.store.reader().export_task(export_task_id)


def _export(client: ExportClient, batch_task_id: str):
    task = client.create_export(batch_task_id)
    final = client.wait(task.export_task_id, timeout=120)
    assert final.status == "Success", final
    return final


def _download(user, export_task_id: str, offset: int = 0) -> tuple[bytes, epb.ShowExportTaskResponse]:
    first, data = None, b""
    for msg in user.exports.ShowExportTask(epb.ShowExportTaskRequest(
            project_id=user.project_id, export_task_id=export_task_id, offset=offset), metadata=user.metadata):
        first = first or msg
        data += msg.body.data
    return data, first


def _http_file(server, user, export_task_id: str, query: str = "") -> tuple[int, bytes]:
    """The HTTP gateway's download (GET .../export-tasks/{id}/file)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        conn.request("GET", f"/v5/iot/{user.project_id}/export-tasks/{export_task_id}/file"
                     + (f"?{query}" if query else ""), headers={"X-Auth-Token": user.creds["token"]})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _rows_of(zip_bytes: bytes) -> list[list[str]]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        (name,) = z.namelist()
        book = xlrd.open_workbook(file_contents=z.read(name))
    rows = []
    for sheet in book.sheets():
        rows += [sheet.row_values(i) for i in range(1, sheet.nrows)]
    return rows


def test_an_export_is_streamed_into_the_bucket_and_downloaded_whole_and_by_range(s3, s3_server, s3_channel):
    user = make_user(s3_server, s3_channel)
    batch_task_id, expected = seed_known(user, 3000)
    final = _export(_client(user), batch_task_id)
    row = _row(s3_server, final.export_task_id)
    # Published by recording the run's own key; nothing else in the bucket, no upload left open.
    assert row.file_key.startswith(f"{PREFIX}/{final.export_task_id}/") and row.file_key.endswith(".zip")
    assert s3.objects(f"{PREFIX}/{final.export_task_id}/") == [row.file_key]
    assert s3.uploads(f"{PREFIX}/") == []
    stored = s3.client().get_object(Bucket=s3.bucket, Key=row.file_key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == row.file_sha256

    data, first = _download(user, final.export_task_id)
    assert data == stored and first.sha256 == row.file_sha256 and first.total_size == len(stored)
    assert _rows_of(data) == expected
    # The resumable offset is a ranged read (a free resume of the download just counted).
    tail, _ = _download(user, final.export_task_id, offset=len(stored) // 2)
    assert tail == stored[len(stored) // 2:]
    # The HTTP gateway streams the same bytes (another free resume, from an offset past the last).
    status, body = _http_file(s3_server, user, final.export_task_id, f"offset={len(stored) * 3 // 4}")
    assert (status, body) == (200, stored[len(stored) * 3 // 4:])


def test_a_rerun_replaces_the_object_and_a_delete_removes_it(s3, s3_server, s3_channel):
    user = make_user(s3_server, s3_channel)
    client = _client(user)
    batch_task_id, _ = seed_known(user, 500)
    first = _export(client, batch_task_id)
    old_key = _row(s3_server, first.export_task_id).file_key
    again = _export(client, batch_task_id)  # the same conditions: the same task runs again
    assert again.export_task_id == first.export_task_id
    new_key = _row(s3_server, first.export_task_id).file_key
    assert new_key != old_key
    assert s3.objects(f"{PREFIX}/{first.export_task_id}/") == [new_key]  # the replaced object is gone
    client.delete_export(first.export_task_id)
    assert s3.objects(f"{PREFIX}/{first.export_task_id}/") == []


def test_an_object_changed_behind_the_service_is_detected_by_its_sha256(s3, s3_server, s3_channel):
    user = make_user(s3_server, s3_channel)
    batch_task_id, _ = seed_known(user, 500)
    final = _export(_client(user), batch_task_id)
    row = _row(s3_server, final.export_task_id)
    client = s3.client()
    good = client.get_object(Bucket=s3.bucket, Key=row.file_key)["Body"].read()
    client.put_object(Bucket=s3.bucket, Key=row.file_key, Body=bytes(b ^ 0xFF for b in good[:64]) + good[64:])
    with pytest.raises(grpc.RpcError) as info:
        _download(user, final.export_task_id)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS, info.value
    row = _row(s3_server, final.export_task_id)
    assert row.status == rules.STATUS_FAILED and row.file_key is None
    assert s3.objects(f"{PREFIX}/{final.export_task_id}/") == []  # the damaged object is removed


def test_the_sweep_removes_orphaned_objects_and_aborts_abandoned_uploads(s3, s3_server, s3_channel):
    user = make_user(s3_server, s3_channel)
    batch_task_id, _ = seed_known(user, 200)
    kept = _row(s3_server, _export(_client(user), batch_task_id).export_task_id).file_key
    client = s3.client()
    # What crashes leave: an object no row records (a worker killed between completing and
    # publishing, or a task deleted while the store was down), and an upload no run owns.
    stray = f"{PREFIX}/{'a' * 24}/deadbeef.zip"
    client.put_object(Bucket=s3.bucket, Key=stray, Body=b"orphan")
    abandoned = f"{PREFIX}/{'b' * 24}/cafebabe.zip"
    client.create_multipart_upload(Bucket=s3.bucket, Key=abandoned)
    outside = "elsewhere/not-ours.zip"  # outside the prefix: never touched
    client.put_object(Bucket=s3.bucket, Key=outside, Body=b"x")
    jobs = s3_server.server.supervisor.jobs
    assert jobs.files_swept_periodically
    swept = jobs.sweep_files(grace_seconds=0)
    assert set(swept) >= {stray, abandoned}
    assert stray not in s3.objects() and kept in s3.objects() and outside in s3.objects()
    assert abandoned not in s3.uploads()
    client.delete_object(Bucket=s3.bucket, Key=outside)


def test_the_sweep_spares_the_object_of_a_running_task_not_yet_recorded(s3, s3_server):
    """A run completes its upload, then records the key with Success: between the two, its object is
    in the bucket and in no row. A sweep then (with no grace here: as when a store dates a multipart
    object from the upload's start and the run was long) must leave it; an unrecorded object of a
    task that is not running is an orphan."""
    running_task, idle_task = "c" * 24, "d" * 24
    completed = f"{PREFIX}/{running_task}/0123456789abcdef.zip"
    orphan = f"{PREFIX}/{idle_task}/0123456789abcdef.zip"
    client = s3.client()
    for key in (completed, orphan):
        client.put_object(Bucket=s3.bucket, Key=key, Body=b"zip")

    class Reader:  # the store's answers at that moment: the task runs, no row records either key
        def running_exports(self):
            return [types.SimpleNamespace(export_task_id=running_task)]

        def all_export_file_keys(self):
            return set()

    try:
        swept = s3_server.server.files.sweep_orphans(Reader(), grace_seconds=0)
        assert orphan in swept and completed not in swept
        assert completed in s3.objects() and orphan not in s3.objects()
    finally:
        client.delete_object(Bucket=s3.bucket, Key=completed)


def test_every_process_sweeps_the_bucket_while_it_runs(s3, s3_server):
    """Supervisor.run sweeps now and then (not only at start-up): an orphan a crash leaves while the
    service runs goes without a restart. Here with no grace (lease 0) and a short period."""
    stray = f"{PREFIX}/{'9' * 24}/feedface.zip"
    s3.client().put_object(Bucket=s3.bucket, Key=stray, Body=b"orphan")
    running = s3_server.server.supervisor
    supervisor = Supervisor(dataclasses.replace(running.config, lease_seconds=0), 0, running.jobs,
                            check_seconds=0.05, sweep_seconds=0.1)

    async def sweep_until_gone():
        task = asyncio.create_task(supervisor.run())
        try:
            deadline = time.monotonic() + 30
            while stray in await asyncio.to_thread(s3.objects, f"{PREFIX}/"):
                assert time.monotonic() < deadline, "the running sweep left the orphan"
                await asyncio.sleep(0.1)
        finally:
            task.cancel()

    asyncio.run(sweep_until_gone())


def test_an_upload_sends_bounded_parts_and_abort_leaves_nothing(s3, tmp_path):
    files = open_files(FilesConfig(url=f"s3://{s3.bucket}/unit"), tmp_path)
    data = bytes(range(256)) * (rules.S3_PART_BYTES * 5 // 2 // 256)  # two and a half parts
    upload = files.begin("c" * 24, "run1")
    for i in range(0, len(data), 100_003):  # the zip writer's writes are small and uneven
        upload.sink.write(data[i:i + 100_003])
    assert upload._queue.maxsize == 1  # at most one part waits while one is sent: bounded memory
    size, sha256 = upload.complete()
    assert (size, sha256) == (len(data), hashlib.sha256(data).hexdigest())
    reader, stored_size = files.open("c" * 24, upload.key)
    reader.seek(rules.S3_PART_BYTES - 10)
    assert reader.read(20) == data[rules.S3_PART_BYTES - 10:rules.S3_PART_BYTES + 10]
    reader.close()
    assert stored_size == len(data)
    files.remove("c" * 24)
    aborted = files.begin("d" * 24, "run2")
    aborted.sink.write(data[:rules.S3_PART_BYTES + 1])  # one part sent, the upload open
    aborted.abort()
    assert s3.objects("unit/") == [] and s3.uploads("unit/") == []


def test_a_missing_bucket_stops_the_start_naming_it(s3, tmp_path):
    r = subprocess.run([sys.executable, "-m", "iotda_export_server.cli", "serve", "--data-dir", str(tmp_path),
                        "--grpc-addr", "127.0.0.1:0", "--workers", "0", "--files-url", "s3://no-such-bucket/x"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r
    assert "'no-such-bucket' does not exist" in r.stderr and "create it first" in r.stderr, r.stderr
    assert s3.env()["AWS_SECRET_ACCESS_KEY"] not in r.stderr + r.stdout


def test_no_credentials_for_the_bucket_stops_the_start_saying_so(s3, tmp_path):
    """No AWS credentials anywhere: said as such, not as an object store that is unreachable."""
    env = {k: v for k, v in s3.env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **env)
    r = subprocess.run([sys.executable, "-m", "iotda_export_server.cli", "serve", "--data-dir", str(tmp_path),
                        "--grpc-addr", "127.0.0.1:0", "--workers", "0", "--files-url", f"s3://{s3.bucket}/x"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "no credentials" in r.stderr and "AWS_ACCESS_KEY_ID" in r.stderr, r.stderr
    assert "unreachable" not in r.stderr, r.stderr


def test_principal_remove_deletes_the_users_objects_from_the_bucket(s3, s3_server, s3_channel):
    user = make_user(s3_server, s3_channel)
    batch_task_id, _ = seed_known(user, 200)
    final = _export(_client(user), batch_task_id)
    assert s3.objects(f"{PREFIX}/{final.export_task_id}/")
    r = subprocess.run([sys.executable, "-m", "iotda_export_server.cli", "principal", "remove", "--data-dir",
                        s3_server.data_dir, "--files-url", f"s3://{s3.bucket}/{PREFIX}", "--user", user.creds["user"]],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r
    assert s3.objects(f"{PREFIX}/{final.export_task_id}/") == []


def _readyz(server) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{server.http_url}/readyz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_download_racing_a_rerun_that_deletes_its_object_fails_cleanly_and_is_not_counted(
        s3, s3_server, monkeypatch):
    """A re-run publishes a new object and deletes the one a download is reading: the download ends
    with FAILED_PRECONDITION saying to download again (not INTERNAL), is not counted, and the next
    download gets the new file whole."""
    # 4 KiB chunks, one ranged GET each, so the deletion is seen at the next chunk; a client window that
    # does not grow (no BDP probing: 64 KiB) keeps the server from sending the whole file ahead.
    monkeypatch.setattr(rules, "DOWNLOAD_CHUNK_BYTES", 4096)
    monkeypatch.setattr(rules, "S3_READ_WINDOW_BYTES", 4096)
    with grpc.insecure_channel(s3_server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        user = make_user(s3_server, channel)
        client = _client(user)
        batch_task_id, expected = seed_known(user, 8000)
        first = _export(client, batch_task_id)
        old_key = _row(s3_server, first.export_task_id).file_key
        stream = user.exports.ShowExportTask(epb.ShowExportTaskRequest(
            project_id=user.project_id, export_task_id=first.export_task_id), metadata=user.metadata)
        head = next(stream)
        assert head.total_size > 2 * 65536, head.total_size  # more than the client's window
        _export(client, batch_task_id)  # the same conditions: the task runs again, replacing the object
        assert _row(s3_server, first.export_task_id).file_key != old_key
        assert old_key not in s3.objects(f"{PREFIX}/{first.export_task_id}/")
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        failure = rpc_failure(info.value)
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION, failure
        assert "download it again" in failure.message, failure.message
        # Not counted: the next download starts at once (no 30 s wait) and is the new file, whole.
        data, again = _download(user, first.export_task_id)
        assert hashlib.sha256(data).hexdigest() == again.sha256 and _rows_of(data) == expected


def test_a_store_out_of_reach_is_unavailable_then_the_service_recovers(s3, s3_server, s3_channel):
    user = make_user(s3_server, s3_channel)
    batch_task_id, expected = seed_known(user, 300)
    final = _export(_client(user), batch_task_id)
    s3.kill()
    try:
        with pytest.raises(grpc.RpcError) as info:
            _download(user, final.export_task_id)
        failure = rpc_failure(info.value)
        assert failure.code == grpc.StatusCode.UNAVAILABLE, failure
        assert "object store" in failure.message and "unreachable" in failure.message, failure.message
        assert s3.env()["AWS_SECRET_ACCESS_KEY"] not in failure.message
        status, body = _http_file(s3_server, user, final.export_task_id)  # HTTP: 503, the platform's body
        assert status == 503 and json.loads(body)["error_code"] == "IOTDA.000503", (status, body[:300])
        # The task is still there and still Success: nothing was marked damaged.
        assert _row(s3_server, final.export_task_id).status == rules.STATUS_SUCCESS
        status, body = wait_for(lambda: (r := _readyz(s3_server))[0] == 503 and r, timeout=20,
                                what="/readyz to report the store")
        assert body["checks"]["files"].startswith("unreachable"), body
    finally:
        s3.start(create_bucket=False)
    # Back: the refused download was not counted (no 30 s wait), and the file is whole.
    data, first = _download(user, final.export_task_id)
    assert hashlib.sha256(data).hexdigest() == first.sha256 and _rows_of(data) == expected
    wait_for(lambda: _readyz(s3_server)[0] == 200, timeout=20, what="/readyz to be ready again")
