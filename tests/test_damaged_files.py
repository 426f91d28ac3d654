"""Damaged result files (issue 11): a file that is missing, shorter or longer than recorded, or of the
same size with other bytes is never served as good. The size is checked when the download is
admitted, the sha256 while it streams (the last bytes wait for the verdict); either way the answer is
DATA_LOSS (HTTP 500 with the platform's body, IOTDA.018005), the download does not count against the
30 s limit, the task is marked (Failed, saying why; no file offered) and logged, and a create with
the same conditions re-runs it. HTTP downloads carry the digest (Repr-Digest, RFC 9530).

Through gRPC, raw HTTP and the official SDK, on the shared server (real workers); the races with a
re-run on a server of the test's own (SQLite and PostgreSQL), whose exports run when the test says.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import os
import secrets
import zipfile

import grpc
import pytest
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import SdkException, ServerResponseException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkiotda.v5 import IoTDAClient, ShowExportTaskRequest

from conftest import make_user, rpc_failure, wait_for
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.config import FilesConfig
from iotda_export_server.domain import errors
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.domain.exports import ExportService
from iotda_export_server.domain.jobs import ExportJobs
from iotda_export_server.domain.model import Caller
from iotda_export_server.runner.worker import run_export

Code = grpc.StatusCode
ROWS = 6000  # a zip of several 64 KiB chunks


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def _flip(path, at: float = 0.5):
    """One byte changed, the size kept (in place: the same file)."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(int(size * at))
        b = f.read(1)
        f.seek(int(size * at))
        f.write(bytes([b[0] ^ 0xFF]))


def _delete(path):
    path.unlink()


DAMAGES = {"truncated": _truncate, "flipped": _flip, "deleted": _delete}


# -- helpers ---------------------------------------------------------------------------------------

def create(user, task_id: str) -> epb.ExportTask:
    return user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=task_id)),
        metadata=user.metadata).export_task


def get(user, export_task_id: str) -> epb.ExportTask:
    return user.exports.GetExportTask(epb.GetExportTaskRequest(project_id=user.project_id,
                                                               export_task_id=export_task_id),
                                      metadata=user.metadata).export_task


def wait_success(user, export_task_id: str) -> epb.ExportTask:
    def done():
        t = get(user, export_task_id)
        assert t.status != "Failed", t
        return t.status == "Success" and t
    return wait_for(done, timeout=60, what=f"export {export_task_id} to succeed")


def finished(user, server, rows: int) -> tuple[epb.ExportTask, bytes]:
    """A finished export of a new batch task with `rows` sub-tasks, and its file's bytes."""
    t = create(user, seed_batch_task(server.store, user.project_id, "", rows, seed=rows + len(user.project_id)))
    wait_success(user, t.export_task_id)
    return t, server.server.files.path(t.export_task_id).read_bytes()


def grpc_download(user, export_task_id: str, offset: int = 0, limit: int = 0):
    """(the messages received, the failure or None)."""
    received = []
    try:
        for m in user.exports.ShowExportTask(epb.ShowExportTaskRequest(
                project_id=user.project_id, export_task_id=export_task_id, offset=offset, limit=limit),
                metadata=user.metadata):
            received.append(m)
    except grpc.RpcError as e:
        return received, rpc_failure(e)
    return received, None


def rewind_download_clock(server, user) -> None:
    """As if the user's last counted download happened more than 30 s ago."""
    owner = user.creds["principal_id"]
    with server.store.transaction(lock_key=owner) as tx:
        last = tx.download_limit(owner)
        tx.set_download_limit(owner, last[0] - 31_000, last[1], last[2])


def assert_data_loss(failure, export_task_id: str):
    assert failure is not None, "the damaged file was served"
    assert failure.code == Code.DATA_LOSS, (failure.code, failure.message)
    assert failure.error_code == "IOTDA.018005" and failure.error_info.reason == "DATA_LOSS"
    assert failure.resource_info.resource_name == export_task_id
    assert "damaged" in failure.message and export_task_id in failure.message


def assert_marked(server, user, export_task_id: str):
    t = get(user, export_task_id)
    assert t.status == "Failed" and not t.file_available, t
    assert t.status_desc.startswith("the result file is damaged (") and "create the export again" in t.status_desc
    assert not server.server.files.path(export_task_id).exists(), "the damaged file was left in place"


def assert_rerun_serves_the_good_file(server, user, export_task_id: str, original: bytes, download):
    """A create with the same conditions re-runs the task; the new file is the undamaged one."""
    again = create(user, server.store.reader().export_task(export_task_id).batch_task_id)
    assert again.export_task_id == export_task_id and again.status == "Processing"
    done = wait_success(user, export_task_id)
    assert done.file_available and done.status_desc == ""
    rewind_download_clock(server, user)
    data = download()
    assert data == original  # the writer is deterministic: the re-run's file is the original's
    row = server.store.reader().export_task(export_task_id)
    assert hashlib.sha256(data).hexdigest() == row.file_sha256 and len(data) == row.file_size
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == [f"export-{export_task_id}.xls"]


# -- gRPC ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", list(DAMAGES))
def test_grpc_download_of_a_damaged_file_is_data_loss_not_counted_marked_and_re_runnable(
        server, channel, damage, caplog):
    caplog.set_level(logging.WARNING, logger="iotda_export.exports")
    user = make_user(server, channel)
    bad, original = finished(user, server, ROWS)
    good, good_bytes = finished(user, server, 20)
    assert len(original) > 2 * 64 * 1024
    DAMAGES[damage](server.server.files.path(bad.export_task_id))

    received, failure = grpc_download(user, bad.export_task_id)
    assert_data_loss(failure, bad.export_task_id)
    got = b"".join(m.body.data for m in received)
    if damage == "flipped":  # found at the end: the last chunk is never sent
        assert received and len(got) < len(original)
    else:  # found when admitted: nothing sent
        assert received == []
    # Not counted: another download right away is served.
    received, failure = grpc_download(user, good.export_task_id)
    assert failure is None and b"".join(m.body.data for m in received) == good_bytes
    assert_marked(server, user, bad.export_task_id)
    listed = user.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=user.project_id),
                                          metadata=user.metadata).export_tasks
    assert [t.status_desc for t in listed if t.export_task_id == bad.export_task_id] == \
        [get(user, bad.export_task_id).status_desc]
    # The next attempt is refused before any byte (and not counted either).
    rewind_download_clock(server, user)
    received, failure = grpc_download(user, bad.export_task_id)
    assert_data_loss(failure, bad.export_task_id)
    assert received == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "iotda_export.exports"]
    assert any(bad.export_task_id in w and "damaged" in w for w in warnings), warnings
    assert not any(user.creds["token"] in w for w in warnings)

    assert_rerun_serves_the_good_file(
        server, user, bad.export_task_id, original,
        lambda: b"".join(m.body.data for m in grpc_download(user, bad.export_task_id)[0]))


def test_a_resumed_download_hashes_the_prefix_and_a_limited_one_the_rest(server, channel):
    """A byte changed before the resume offset, or after the end of a limited range, is found too."""
    user = make_user(server, channel)
    before, _ = finished(user, server, ROWS)
    after, _ = finished(user, server, ROWS + 1)
    good, good_bytes = finished(user, server, 20)
    _flip(server.server.files.path(before.export_task_id), at=0.01)
    _flip(server.server.files.path(after.export_task_id), at=0.99)

    received, failure = grpc_download(user, before.export_task_id, offset=10_000)
    assert_data_loss(failure, before.export_task_id)
    assert_marked(server, user, before.export_task_id)
    received, failure = grpc_download(user, after.export_task_id, limit=1000)
    assert_data_loss(failure, after.export_task_id)
    assert received == []  # the range is one chunk: it is the last, and waits for the verdict
    assert_marked(server, user, after.export_task_id)
    received, failure = grpc_download(user, good.export_task_id)  # neither attempt counted
    assert failure is None and b"".join(m.body.data for m in received) == good_bytes
    # An undamaged file passes the same checks: resumed (free resumes of that download), and limited.
    received, failure = grpc_download(user, good.export_task_id, offset=100)
    assert failure is None and b"".join(m.body.data for m in received) == good_bytes[100:]
    received, failure = grpc_download(user, good.export_task_id, offset=200, limit=50)
    assert failure is None and b"".join(m.body.data for m in received) == good_bytes[200:250]


# -- HTTP ------------------------------------------------------------------------------------------

class Http:
    """Raw HTTP to the gateway with X-Auth-Token."""

    def __init__(self, server, user):
        self.port, self.user = server.http_port, user

    def get_file(self, export_task_id: str, query: str = ""):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", f"/v5/iot/{self.user.project_id}/export-tasks/{export_task_id}/file"
                                + (f"?{query}" if query else ""),
                         headers={"X-Auth-Token": self.user.creds["token"]})
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()

    def error(self, export_task_id: str, status: int, error_code: str) -> dict:
        got, headers, body = self.get_file(export_task_id)
        assert got == status, (got, body[:300])
        assert headers["Content-Type"].startswith("application/json") and headers["X-Request-Id"]
        doc = json.loads(body)
        assert {"error_code", "error_msg", "code", "message", "details"} <= set(doc)
        assert doc["error_code"] == error_code and doc["error_msg"] == doc["message"]
        return doc


def test_http_downloads_carry_the_digest(server, channel):
    user = make_user(server, channel)
    t, data = finished(user, server, ROWS)
    status, headers, body = Http(server, user).get_file(t.export_task_id)
    assert status == 200 and body == data
    assert headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"
    status, headers, body = Http(server, user).get_file(t.export_task_id, "offset=100")  # a free resume
    assert status == 200 and body == data[100:]
    assert headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_http_download_of_a_damaged_file_is_500_with_the_platform_body(server, channel, damage):
    user = make_user(server, channel)
    api = Http(server, user)
    bad, original = finished(user, server, ROWS)
    good, good_bytes = finished(user, server, 20)
    DAMAGES[damage](server.server.files.path(bad.export_task_id))

    if damage == "flipped":
        # Found at the end, after the 200 went out: the connection is cut short of Content-Length,
        # so no client takes the body for the file.
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            api.get_file(bad.export_task_id)
    else:
        doc = api.error(bad.export_task_id, 500, "IOTDA.018005")
        assert "damaged" in doc["error_msg"] and doc["code"] == Code.DATA_LOSS.value[0]
    status, _, body = api.get_file(good.export_task_id)  # not counted
    assert status == 200 and body == good_bytes
    rewind_download_clock(server, user)
    doc = api.error(bad.export_task_id, 500, "IOTDA.018005")  # marked: 500 before any byte
    assert "damaged" in doc["error_msg"]
    assert_marked(server, user, bad.export_task_id)
    assert_rerun_serves_the_good_file(server, user, bad.export_task_id, original,
                                      lambda: api.get_file(bad.export_task_id)[2])


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_the_official_sdk_reads_the_data_loss_error(server, channel, damage):
    user = make_user(server, channel)
    sdk = IoTDAClient.new_builder().with_http_config(HttpConfig.get_default_config()).with_credentials(
        BasicCredentials(user.creds["ak"], user.creds["sk"], user.project_id)).with_endpoint(server.http_url).build()
    bad, original = finished(user, server, ROWS)
    good, good_bytes = finished(user, server, 20)
    DAMAGES[damage](server.server.files.path(bad.export_task_id))

    if damage == "flipped":  # a cut transfer: the SDK raises (requests' own error), never returns the body
        with pytest.raises((SdkException, requests.exceptions.RequestException)):
            sdk.show_export_task(ShowExportTaskRequest(export_task_id=bad.export_task_id))
    assert sdk.show_export_task(ShowExportTaskRequest(export_task_id=good.export_task_id)).raw_content == good_bytes
    rewind_download_clock(server, user)
    with pytest.raises(ServerResponseException) as info:  # the SDK's class for a 5xx it parsed
        sdk.show_export_task(ShowExportTaskRequest(export_task_id=bad.export_task_id))
    e = info.value
    assert (e.status_code, e.error_code) == (500, "IOTDA.018005")
    assert "damaged" in e.error_msg and len(e.request_id) == 32
    assert_marked(server, user, bad.export_task_id)


# -- races with a re-run and with other downloads (on a server of the test's own) -----------------

@pytest.fixture(params=["sqlite", "postgres"])
def own_server(request, tmp_path):
    """A server of the test alone, without workers (its exports run when the test says), on SQLite or
    on a PostgreSQL database of its own."""
    import pg_support as ps
    from iotda_export_server.store import open_store
    from iotda_export_server.testing import ServerThread

    db, config = None, {}
    if request.param == "postgres":
        db = ps.TestDatabase().create()
        open_store(tmp_path / "migrate", db.url, migrate=True).close()
        config = dict(database=db.url, files=FilesConfig(dir=str(tmp_path / "files")))
    s = ServerThread(tmp_path / "data", workers=0, **config)
    try:
        with grpc.insecure_channel(s.address) as ch:
            s.channel = ch
            yield s
    finally:
        s.stop()
        if db is not None:
            db.drop()


def _run_all(s) -> None:
    jobs = ExportJobs(s.store, s.server.files)
    while (claim := jobs.claim(f"test-{secrets.token_hex(3)}")) is not None:
        assert run_export(s.server.files, jobs, claim)


def _caller(s, user) -> Caller:
    return Caller(principal=s.store.reader().principal_by("principal_id", user.creds["principal_id"]),
                  project_id=user.project_id, instance_id="")


def test_a_damaged_file_found_while_a_re_run_is_queued_leaves_the_re_run_alone(own_server):
    s = own_server
    user = make_user(s, s.channel)
    batch = seed_batch_task(s.store, user.project_id, "", 500, seed=7)
    t = create(user, batch)
    _run_all(s)
    original = s.server.files.path(t.export_task_id).read_bytes()
    assert create(user, batch).status == "Processing"  # the re-run, queued; the last good file stays
    _truncate(s.server.files.path(t.export_task_id))

    received, failure = grpc_download(user, t.export_task_id)
    assert_data_loss(failure, t.export_task_id)
    assert "running again" in failure.message
    row = s.store.reader().export_task(t.export_task_id)
    assert (row.status, row.run_state, row.file_available) == ("Processing", "queued", False)
    _run_all(s)  # the re-run publishes a new file
    received, failure = grpc_download(user, t.export_task_id)
    assert failure is None and b"".join(m.body.data for m in received) == original


def test_a_stale_damage_verdict_neither_marks_a_newer_file_nor_uncounts_a_later_download(own_server):
    s = own_server
    user = make_user(s, s.channel)
    batches = [seed_batch_task(s.store, user.project_id, "", 50 + i, seed=i) for i in range(2)]
    a, b = create(user, batches[0]), create(user, batches[1])
    _run_all(s)
    now = [2_000_000_000_000]
    service = ExportService(s.store, s.server.files, clock=lambda: now[0])
    caller = _caller(s, user)
    owner = user.creds["principal_id"]

    first = service.admit_download(caller, a.export_task_id, 0, 0)
    first.file.close()
    now[0] += 31_000
    later = service.admit_download(caller, b.export_task_id, 0, 0)  # counted: the user's mark is now its
    later.file.close()
    create(user, batches[0])  # task a re-runs and publishes generation 2
    _run_all(s)
    assert s.store.reader().export_task(a.export_task_id).file_generation == 2

    with pytest.raises(errors.DataLoss):  # the verdict on generation 1 arrives late
        service.reject_download(first, "its sha256 differs from the recorded one")
    row = s.store.reader().export_task(a.export_task_id)
    assert (row.status, row.file_generation, row.file_available) == ("Success", 2, True)
    assert s.server.files.path(a.export_task_id).exists()
    assert tuple(s.store.reader().download_limit(owner)) == tuple(later.mark)  # still counted

    # Its own verdict does un-count the later download: the mark goes back to the first's.
    with pytest.raises(errors.DataLoss):
        service.reject_download(later, "its sha256 differs from the recorded one")
    assert tuple(s.store.reader().download_limit(owner)) == tuple(first.mark)
    assert get(user, b.export_task_id).status == "Failed"
