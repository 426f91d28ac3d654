"""The Python client library (iotda_export_client) against a real in-process server: every method,
the fields of ExportApiError, atomic and resumable downloads, and credential resolution.

Downloads are limited to one per 30 s per user, so every test that downloads uses its own user
(the `user` fixture makes a fresh principal in a fresh project)."""

from __future__ import annotations

import io
import json
import os
import socket
import zipfile

import grpc
import pytest
import xlrd

from conftest import ServerThread, make_user
from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_client import (Credentials, CredentialsError, DownloadError, ExportApiError, ExportClient,
                                 ServerUnreachable, load_credentials)
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.runner.xls import HEADER


def client_for(server, user, **kw) -> ExportClient:
    return ExportClient(server.address, user.creds["token"], user.project_id, **kw)


@pytest.fixture
def client(server, user):
    with client_for(server, user) as c:
        yield c


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory):
    """A server without workers: exports stay Processing until cancelled (deterministic quotas)."""
    s = ServerThread(tmp_path_factory.mktemp("idle"), workers=0)
    yield s
    s.stop()


def server_file(server, export_task_id: str) -> bytes:
    return server.server.files.path(export_task_id).read_bytes()


def api_error(fn, *args, **kw) -> ExportApiError:
    with pytest.raises(ExportApiError) as info:
        fn(*args, **kw)
    return info.value


class Interrupted(Exception):
    pass


# -- export tasks ----------------------------------------------------------------------------------

def test_create_watch_get_list_download_delete(client, user, seed, server, tmp_path):
    task_id = seed(user, 1500)
    created = client.create_export(task_id)
    assert isinstance(created, epb.ExportTask)
    assert created.status == "Processing" and created.resource_condition.task_id == task_id
    assert created.app_type == "GLOBAL" and not created.HasField("app_id")

    events = list(client.watch(created.export_task_id))
    assert all(isinstance(e, epb.WatchProgressResponse) for e in events)
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    final = events[-1].export_task
    assert (final.status, final.progress, final.export_count) == ("Success", 100, 1500)
    assert client.get_export(created.export_task_id) == final

    page = client.list_exports()
    assert isinstance(page, epb.ListExportTasksResponse)
    assert [t.export_task_id for t in page.export_tasks] == [created.export_task_id] and page.page.count == 1
    assert client.list_exports(task_id=task_id).page.count == 1
    assert client.list_exports(resource_condition={"task_id": "0" * 24}).page.count == 0
    assert client.list_exports(app_type="APP").page.count == 0

    dest = tmp_path / "result.zip"
    path = client.download(created.export_task_id, dest)
    assert path == str(dest) and not os.path.exists(ExportClient.partial_path(dest))
    data = dest.read_bytes()
    assert data == server_file(server, created.export_task_id)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == [f"export-{created.export_task_id}.xls"]
        sheet = xlrd.open_workbook(file_contents=z.read(z.namelist()[0])).sheet_by_index(0)
    assert tuple(sheet.row_values(0)) == HEADER and sheet.nrows == 1501

    assert client.delete_export(created.export_task_id) is None
    err = api_error(client.get_export, created.export_task_id)
    assert (err.code, err.error_code, err.reason) == (grpc.StatusCode.NOT_FOUND, "IOTDA.018001", "NOT_FOUND")
    assert client.list_exports().page.count == 0


def test_app_scope_request_id_and_wait(client, user, seed):
    task_id = seed(user, 20)
    first = client.create_export(task_id, app_type="APP", request_id="req-1")
    assert first.app_type == "APP" and first.app_id == "default"
    again = client.create_export(task_id, app_type="APP", request_id="req-1")
    assert again.export_task_id == first.export_task_id
    final = client.wait(first.export_task_id, timeout=30)
    assert final.status == "Success" and final.export_count == 20
    assert [t.export_task_id for t in client.list_exports(app_type="APP", app_id="default").export_tasks] == \
        [first.export_task_id]


def test_paging_with_limit_offset_marker(client, user, seed):
    ids = [client.create_export(seed(user, 5)).export_task_id for _ in range(3)]
    newest_first = sorted(ids, reverse=True)
    page1 = client.list_exports(limit=2)
    assert [t.export_task_id for t in page1.export_tasks] == newest_first[:2] and page1.page.count == 3
    page2 = client.list_exports(limit=2, marker=page1.page.marker)
    assert [t.export_task_id for t in page2.export_tasks] == newest_first[2:]
    assert [t.export_task_id for t in client.list_exports(limit=1, offset=1).export_tasks] == newest_first[1:2]
    assert [t.export_task_id for t in client.iter_exports(page_size=2)] == newest_first
    for export_task_id in ids:
        assert client.wait(export_task_id, timeout=30).status == "Success"


# -- errors ------------------------------------------------------------------------------------------

def test_invalid_argument_carries_error_code_reason_and_field_violations(client):
    err = api_error(client.create_export, "not-hex", app_id="bad id!")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.error_code, err.reason) == ("IOTDA.000006", "INVALID_ARGUMENT")
    fields = [f for f, _ in err.field_violations]
    assert "resource_condition.task_id" in fields and "app_id" in fields
    assert err.retry_after is None
    assert str(err).startswith("INVALID_ARGUMENT IOTDA.000006: ")

    err = api_error(client.list_exports, limit=0)
    assert (err.error_code, err.reason) == ("IOTDA.000017", "LIMIT_OUT_OF_RANGE")
    assert err.field_violations == [("limit", "must be 1-50, got 0")]
    with pytest.raises(TypeError):
        client.list_exports(colour="blue")


def test_not_found_unauthenticated_and_permission_denied(server, channel, client, user):
    err = api_error(client.create_export, "0" * 24)
    assert (err.code, err.error_code) == (grpc.StatusCode.NOT_FOUND, "IOTDA.019001")

    with ExportClient(server.address, "not-a-token", user.project_id) as stranger:
        err = api_error(stranger.list_exports)
    assert (err.code, err.error_code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "IOTDA.000002",
                                                      "UNAUTHENTICATED")

    reader = make_user(server, channel, actions=["iotda:exporttasks:queryList"])
    with client_for(server, reader) as c:
        assert c.list_exports().page.count == 0
        err = api_error(c.create_export, "0" * 24)
    assert (err.code, err.error_code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "IOTDA.000003",
                                                      "PERMISSION_DENIED")
    assert err.metadata["action"] == "iotda:exporttasks:create"

    with ExportClient(server.address, user.creds["token"], "someone-elses-project") as c:
        assert api_error(c.list_exports).code == grpc.StatusCode.PERMISSION_DENIED


def test_unreachable_server_is_a_server_unreachable_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ExportClient(f"127.0.0.1:{port}", "token", "project", timeout=10) as c:
        err = api_error(c.list_exports)
    assert isinstance(err, ServerUnreachable)
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.error_code is None
    assert f"127.0.0.1:{port}" in str(err)


# -- downloads ---------------------------------------------------------------------------------------

def test_download_limit_error_says_when_to_retry(client, user, seed, tmp_path):
    export = client.create_export(seed(user, 50))
    assert client.wait(export.export_task_id, timeout=30).status == "Success"
    client.download(export.export_task_id, tmp_path)  # a directory: export-<id>.zip inside
    assert (tmp_path / f"export-{export.export_task_id}.zip").exists()

    second = tmp_path / "second.zip"
    err = api_error(client.download, export.export_task_id, second)
    assert (err.code, err.error_code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "IOTDA.018003",
                                                      "RATE_LIMIT_EXCEEDED")
    assert err.retry_after is not None and 0 < err.retry_after <= 30
    assert err.quota_violations and err.quota_violations[0][0].startswith("user:")
    assert not second.exists() and not os.path.exists(ExportClient.partial_path(second))


def test_download_resumes_from_an_offset_with_identical_bytes(client, user, seed, server, tmp_path):
    export = client.create_export(seed(user, 6000))  # ~170 KB zip: several 64 KiB chunks
    assert client.wait(export.export_task_id, timeout=30).status == "Success"
    expected = server_file(server, export.export_task_id)
    assert len(expected) > 2 * 64 * 1024

    dest = tmp_path / "export.zip"
    part = ExportClient.partial_path(dest)
    seen = []

    def interrupt_after_first_chunk(done, total):
        seen.append((done, total))
        raise Interrupted()

    with pytest.raises(Interrupted):
        client.download(export.export_task_id, dest, on_chunk=interrupt_after_first_chunk)
    assert seen == [(64 * 1024, len(expected))]
    assert not dest.exists(), "the destination must never hold half a file"
    assert os.path.getsize(part) == 64 * 1024

    # Resume from the partial file's end: the server does not count it as a new download.
    assert client.download(export.export_task_id, dest, offset=os.path.getsize(part)) == str(dest)
    assert dest.read_bytes() == expected and not os.path.exists(part)

    # Resume from an offset inside a partial file: the rest of it is replaced. (Free resumes must
    # start further on each time: rules.DOWNLOAD_FREE_RESUMES.)
    other = tmp_path / "other.zip"
    with open(ExportClient.partial_path(other), "wb") as f:
        f.write(expected[:70_000] + b"garbage after the offset")
    client.download(export.export_task_id, other, offset=70_000)
    assert other.read_bytes() == expected

    # A partial file that is not a prefix of the file fails verification and is removed.
    bad = tmp_path / "bad.zip"
    with open(ExportClient.partial_path(bad), "wb") as f:
        f.write(b"\0" * 80_000)
    with pytest.raises(DownloadError, match="sha256"):
        client.download(export.export_task_id, bad, offset=80_000)
    assert not bad.exists() and not os.path.exists(ExportClient.partial_path(bad))
    with pytest.raises(DownloadError, match="does not exist"):
        client.download(export.export_task_id, bad, offset=10)


# -- unfinished exports: quota, cancel, watch, precondition (server without workers) ----------------

def test_unfinished_quota_cancel_and_watch(idle_server, tmp_path):
    user = make_user(idle_server, None)
    batch_ids = [seed_batch_task(idle_server.store, user.project_id, "", 3, seed=i) for i in range(6)]
    with client_for(idle_server, user) as c:
        running = [c.create_export(t) for t in batch_ids[:5]]
        assert all(t.status == "Processing" and t.progress == 1 for t in running)

        err = api_error(c.create_export, batch_ids[5])
        assert (err.code, err.error_code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "IOTDA.018002",
                                                          "QUOTA_EXCEEDED")
        assert err.quota_violations and err.retry_after is None and err.metadata["limit"] == "5"

        err = api_error(c.download, running[0].export_task_id, tmp_path / "x.zip")
        assert (err.code, err.error_code) == (grpc.StatusCode.FAILED_PRECONDITION, "IOTDA.018004")
        assert err.precondition_violations[0][0] == "NOT_SUCCEEDED"
        assert not (tmp_path / "x.zip.part").exists()

        stream = c.watch(running[0].export_task_id)
        assert next(stream).export_task.status == "Processing"
        cancelled = c.cancel_export(running[0].export_task_id)
        assert (cancelled.status, cancelled.status_desc) == ("Failed", "cancelled")
        rest = list(stream)
        assert rest[-1].export_task.status == "Failed" and rest[-1].export_task.status_desc == "cancelled"
        assert c.cancel_export(running[0].export_task_id) == c.get_export(running[0].export_task_id)

        with c.watch(running[1].export_task_id) as early:  # leaving the block cancels the stream
            assert next(early).export_task.status == "Processing"
        assert list(early) == []

        assert c.create_export(batch_ids[5]).status == "Processing"  # a slot is free again
        for t in running[1:]:
            c.cancel_export(t.export_task_id)


def test_instance_id_is_sent_and_scopes_the_tasks(server, user, tmp_path):
    batch_id = seed_batch_task(server.store, user.project_id, "inst-a", 10, seed=1)
    with client_for(server, user, instance_id="inst-a") as in_a, client_for(server, user) as default:
        assert in_a.metadata[-1] == ("instance-id", "inst-a")
        export = in_a.create_export(batch_id)
        assert api_error(default.create_export, batch_id).code == grpc.StatusCode.NOT_FOUND
        assert api_error(default.get_export, export.export_task_id).code == grpc.StatusCode.NOT_FOUND
        assert default.list_exports().page.count == 0
        assert in_a.wait(export.export_task_id, timeout=30).status == "Success"
    with client_for(server, user, instance_id="bad id") as bad:
        err = api_error(bad.list_exports)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field_violations[0][0] == "Instance-Id"


# -- batch tasks ---------------------------------------------------------------------------------------

def test_batch_tasks_create_show_list_record_export_delete(client):
    task = client.create_batch_task("demo_commands", "createCommands", ["dev_1", "dev_2", "dev_3"],
                                     document={"service_id": "Meter", "command_name": "reset"})
    assert isinstance(task, bpb.BatchTask)
    assert task.status == "Processing" and task.task_progress.total == 3 and list(task.targets) == \
        ["dev_1", "dev_2", "dev_3"]
    shown = client.show_batch_task(task.task_id)
    assert sorted(d.target for d in shown.task_details) == ["dev_1", "dev_2", "dev_3"] and shown.page.count == 3
    listed = client.list_batch_tasks("createCommands")
    assert [t.task_id for t in listed.batchtasks] == [task.task_id]

    err = api_error(client.delete_batch_task, task.task_id)
    assert (err.code, err.error_code) == (grpc.StatusCode.FAILED_PRECONDITION, "IOTDA.019002")

    results = [{"target": "dev_1", "status": "Success", "output": "done"},
               {"target": "dev_2", "status": "Fail", "error_code": "IOTDA.014016", "error_msg": "Device is offline."},
               bpb.SubtaskResult(target="dev_3", status="Success", output="done")]
    recorded = client.record_results(task.task_id, results)
    assert recorded.status == "PartialSuccess" and recorded.task_progress.fail == 1
    assert client.record_results(task.task_id, results).status == "PartialSuccess"  # idempotent
    failed = client.show_batch_task(task.task_id, task_detail_status="Fail")
    assert [(d.target, d.error.error_code, d.error.error_msg) for d in failed.task_details] == \
        [("dev_2", "IOTDA.014016", "Device is offline.")]
    assert client.show_batch_task(task.task_id, target="dev_3", limit=1).task_details[0].output == "done"

    err = api_error(client.record_results, task.task_id, [{"target": "dev_9", "status": "Success"}])
    assert (err.code, err.error_code) == (grpc.StatusCode.FAILED_PRECONDITION, "IOTDA.019003")
    err = api_error(client.create_batch_task, "x", "noSuchType", ["dev_1"])
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and ("task_type" in dict(err.field_violations))

    export = client.create_export(task.task_id)
    final = client.wait(export.export_task_id, timeout=30)
    assert final.status == "Success" and final.export_count == 3

    client.delete_batch_task(task.task_id)
    err = api_error(client.show_batch_task, task.task_id)
    assert (err.code, err.error_code) == (grpc.StatusCode.NOT_FOUND, "IOTDA.019001")


def test_health_and_context_manager(server, user):
    with client_for(server, user) as c:
        assert c.check_health() == "SERVING"
        assert c.check_health("iotda.export.v1.ExportTaskService") == "SERVING"
    with pytest.raises(ValueError):  # the channel is closed when the block ends
        c.list_exports()


# -- credentials -----------------------------------------------------------------------------------------

def write_json(path, doc) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def test_load_credentials_order_flags_env_file(tmp_path, monkeypatch):
    write_json(tmp_path / "data" / "credentials.json",
               {"user": "admin", "project_id": "p-file", "token": "t-file", "ak": "A", "sk": "S"})
    other = write_json(tmp_path / "other.json", {"project_id": "p-other", "token": "t-other"})
    flagged = write_json(tmp_path / "flagged.json", {"project_id": "p-flagged", "token": "t-flagged",
                                                     "address": "10.0.0.1:1"})

    # Only the file the server wrote: found in ./data, default address.
    c = load_credentials(env={}, cwd=tmp_path)
    assert c == Credentials("127.0.0.1:50051", "t-file", "p-file", None)
    assert c.sources["token"].endswith(os.path.join("data", "credentials.json"))
    monkeypatch.chdir(tmp_path)
    for key in ("IOTDA_EXPORT_ADDRESS", "IOTDA_EXPORT_TOKEN", "IOTDA_EXPORT_PROJECT", "IOTDA_EXPORT_CREDENTIALS",
                "IOTDA_EXPORT_INSTANCE_ID"):
        monkeypatch.delenv(key, raising=False)
    assert load_credentials().token == "t-file"  # the real environment and working directory

    # Environment over the file, value by value; IOTDA_EXPORT_CREDENTIALS over ./data.
    env = {"IOTDA_EXPORT_TOKEN": "t-env", "IOTDA_EXPORT_ADDRESS": "h:1"}
    assert load_credentials(env=env, cwd=tmp_path) == Credentials("h:1", "t-env", "p-file", None)
    env = {"IOTDA_EXPORT_CREDENTIALS": other, "IOTDA_EXPORT_INSTANCE_ID": "inst"}
    assert load_credentials(env=env, cwd=tmp_path) == Credentials("127.0.0.1:50051", "t-other", "p-other", "inst")

    # Flags over everything; a --credentials file counts as a flag.
    env = {"IOTDA_EXPORT_TOKEN": "t-env", "IOTDA_EXPORT_PROJECT": "p-env", "IOTDA_EXPORT_ADDRESS": "h:1"}
    assert load_credentials(token="t-flag", env=env, cwd=tmp_path) == Credentials("h:1", "t-flag", "p-env", None)
    assert load_credentials(credentials_file=flagged, env=env, cwd=tmp_path) == \
        Credentials("10.0.0.1:1", "t-flagged", "p-flagged", None)
    assert load_credentials(address="a:2", credentials_file=flagged, env=env, cwd=tmp_path).address == "a:2"


def test_load_credentials_refuses_when_nothing_is_found(tmp_path):
    with pytest.raises(CredentialsError, match="no credentials"):
        load_credentials(env={}, cwd=tmp_path)
    with pytest.raises(CredentialsError, match="no project"):
        load_credentials(token="t", env={}, cwd=tmp_path)
    with pytest.raises(CredentialsError, match="does not exist"):
        load_credentials(credentials_file="missing.json", env={}, cwd=tmp_path)
    with pytest.raises(CredentialsError, match="does not exist"):
        load_credentials(env={"IOTDA_EXPORT_CREDENTIALS": "missing.json"}, cwd=tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="cannot read"):
        load_credentials(credentials_file="broken.json", env={}, cwd=tmp_path)
    assert load_credentials(env={}, cwd=tmp_path, require_token=False).address == "127.0.0.1:50051"
