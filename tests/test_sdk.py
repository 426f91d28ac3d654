"""The platform's official Python SDK (huaweicloudsdkiotda 3.1.219), unchanged, against the live HTTP
gateway of a real server: AK/SK signing as the SDK does it (SDK-HMAC-SHA256, and the derived
V11-HMAC-SHA256 with a Region), every export-task and batch-task call, paging, the download byte for
byte, and the errors as the SDK's exceptions see them.

Each test runs twice, once per signing algorithm, each time as a fresh principal in its own project
(the download limit and the export quotas are per user).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile

import pytest
import xlrd
from conftest import make_user, seed_known, wait_for
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkcore.region.region import Region
from huaweicloudsdkiotda.v5 import (AddExportTask, CreateBatchTask, CreateBatchTaskRequest, CreateExportTaskRequest,
                                    DeleteBatchTaskRequest, DeleteExportTaskRequest, IoTDAClient,
                                    ListBatchTasksRequest, ListExportTasksRequest, ShowBatchTaskRequest,
                                    ShowExportTaskRequest)

from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.runner.xls import HEADER

HEX24 = re.compile(r"^[0-9a-f]{24}$")
EXPORT_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")  # yyyy-MM-dd'T'HH:mm:ss.SSS'Z'
BATCH_TIME = re.compile(r"^\d{8}T\d{6}Z$")  # yyyyMMdd'T'HHmmss'Z'
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")

SDK, V11 = "SDK-HMAC-SHA256", "V11-HMAC-SHA256"


class Sdk:
    """An IoTDAClient for one principal, built the way a newcomer would, plus a response hook
    (the SDK's own HttpHandler) that keeps every raw response to compare headers with."""

    def __init__(self, server, creds: dict, algorithm: str, sk: str | None = None, ak: str | None = None,
                 project_id: str | None = None):
        self.responses = []
        credentials = BasicCredentials(ak or creds["ak"], sk or creds["sk"], project_id or creds["project_id"])
        handler = HttpHandler().add_response_handler(lambda **kw: self.responses.append(kw["response"]))
        builder = IoTDAClient.new_builder().with_http_config(HttpConfig.get_default_config()) \
            .with_http_handler(handler)
        if algorithm == V11:
            credentials = credentials.with_derived_predicate(BasicCredentials.get_default_derived_predicate())
            builder = builder.with_credentials(credentials).with_region(Region("cn-north-4", server.http_url))
        else:
            builder = builder.with_credentials(credentials).with_endpoint(server.http_url)
        self.client = builder.build()
        self.algorithm = algorithm
        self.ak = ak or creds["ak"]

    def __getattr__(self, name):
        return getattr(self.client, name)

    @property
    def last(self):
        return self.responses[-1]

    def check_signed(self) -> None:
        """The last request was signed with this client's algorithm (V11: scope .../cn-north-4/iotdm)."""
        authorization = self.last.request.headers["Authorization"]
        if self.algorithm == V11:
            assert re.match(rf"^V11-HMAC-SHA256 Credential={self.ak}/\d{{8}}/cn-north-4/iotdm, ", authorization)
        else:
            assert authorization.startswith(f"SDK-HMAC-SHA256 Access={self.ak}, ")

    def refused(self, call, request, status: int, error_code: str) -> ClientRequestException:
        """Runs a call that must fail; checks the exception against the raw response it came from."""
        before = len(self.responses)
        with pytest.raises(ClientRequestException) as info:
            call(request)
        e = info.value
        assert len(self.responses) == before + 1, "exactly one HTTP exchange"
        assert (e.status_code, e.error_code) == (status, error_code), str(e)
        assert e.error_msg
        # The SDK reads request_id from the X-Request-Id header only: it must be the response's own.
        assert REQUEST_ID.match(e.request_id) and e.request_id == self.last.headers["X-Request-Id"]
        body = json.loads(self.last.content)
        assert {"error_code", "error_msg", "code", "message", "details"} <= set(body)
        assert body["error_code"] == error_code
        return e


@pytest.fixture(params=[SDK, V11], ids=["sdk-hmac", "v11-derived"])
def algorithm(request):
    return request.param


@pytest.fixture
def sdk(server, user, algorithm) -> Sdk:
    return Sdk(server, user.creds, algorithm)


def wait_all_finished(sdk: Sdk, n: int, what: str):
    """Polls ListExportTasks (the platform's only way to read status) until n tasks are finished."""
    def finished():
        r = sdk.list_export_tasks(ListExportTasksRequest(limit=50))
        return len(r.export_tasks) == n and all(t.status != "Processing" for t in r.export_tasks) and r
    return wait_for(finished, timeout=30, interval=0.1, what=what)


def create_export(sdk: Sdk, task_id: str, **kw):
    return sdk.create_export_task(CreateExportTaskRequest(body=AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": task_id}, **kw)))


# -- batch tasks ----------------------------------------------------------------------------------

def test_batch_tasks_create_show_list_delete(sdk, user, seed):
    targets = [f"dev_{i:02d}" for i in range(7)]
    created = sdk.create_batch_task(CreateBatchTaskRequest(body=CreateBatchTask(
        task_name="sdk_commands", task_type="createCommands", targets=targets,
        document={"service_id": "svc", "command_name": "reboot", "paras": {"delay": 3}})))
    sdk.check_signed()
    assert created.status_code == 201
    assert HEX24.match(created.task_id)
    assert (created.task_name, created.task_type, created.status) == ("sdk_commands", "createCommands", "Processing")
    assert created.targets == targets
    assert created.document == {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 3}}
    assert BATCH_TIME.match(created.create_time)
    assert created.task_progress.total == 7 and created.task_progress.processing == 7

    # ShowBatchTask pages the sub-tasks: limit + marker walk them all, newest first, once each.
    seen, marker = [], None
    while True:
        page = sdk.show_batch_task(ShowBatchTaskRequest(task_id=created.task_id, limit=3, marker=marker))
        assert page.batchtask.task_id == created.task_id and page.page.count == 7
        assert len(page.task_details) == (3 if len(seen) < 6 else 1)
        seen += [d.target for d in page.task_details]
        marker = page.page.marker
        if len(seen) == 7:
            break
    assert sorted(seen) == targets and len(set(seen)) == 7
    assert seen == sorted(seen, reverse=True)  # sub-tasks were created in target order; ids grow
    by_offset = sdk.show_batch_task(ShowBatchTaskRequest(task_id=created.task_id, limit=2, offset=5))
    assert [d.target for d in by_offset.task_details] == seen[5:7]

    one = sdk.show_batch_task(ShowBatchTaskRequest(task_id=created.task_id, target="dev_03"))
    assert [d.target for d in one.task_details] == ["dev_03"] and one.page.count == 1

    # The status filter on a seeded task with mixed outcomes: every Fail, nothing else.
    seeded = seed(user, 60)
    fails = sdk.show_batch_task(ShowBatchTaskRequest(task_id=seeded, task_detail_status="Fail", limit=50))
    assert fails.task_details and all(d.status == "Fail" and d.error.error_code.startswith("IOTDA.")
                                      for d in fails.task_details)
    all_rows = sdk.show_batch_task(ShowBatchTaskRequest(task_id=seeded, limit=50))
    progress = all_rows.batchtask.task_progress
    assert fails.page.count == progress.fail and all_rows.page.count == progress.total == 60

    listed = sdk.list_batch_tasks(ListBatchTasksRequest(task_type="createCommands"))
    assert [t.task_id for t in listed.batchtasks] == [created.task_id] and listed.page.count == 1
    upgrades = sdk.list_batch_tasks(ListBatchTasksRequest(task_type="firmwareUpgrade", limit=1))
    assert [t.task_id for t in upgrades.batchtasks] == [seeded] and upgrades.page.marker == seeded

    # Delete: only finished tasks; the running one is refused, the seeded (finished) one goes.
    sdk.refused(sdk.delete_batch_task, DeleteBatchTaskRequest(task_id=created.task_id), 400, "IOTDA.019002")
    assert sdk.delete_batch_task(DeleteBatchTaskRequest(task_id=seeded)).status_code == 204
    sdk.refused(sdk.show_batch_task, ShowBatchTaskRequest(task_id=seeded), 404, "IOTDA.019001")


# -- export tasks ---------------------------------------------------------------------------------

def test_create_export_task_returns_every_field(sdk, user, seed):
    task_id = seed(user, 12)
    app = create_export(sdk, task_id, export_format="xls", app_type="APP", app_id="default")
    sdk.check_signed()
    assert app.status_code == 201
    assert HEX24.match(app.export_task_id)
    assert app.resource_type == "BatchTask"
    assert app.resource_condition == {"task_id": task_id}
    assert app.export_format == "xls"
    assert app.status == "Processing" and app.end_time is None  # the create answers before any worker runs
    assert isinstance(app.export_count, int) and app.export_count == 0
    assert isinstance(app.progress, int) and app.progress == 1  # 1..100: 1 while queued
    assert EXPORT_TIME.match(app.create_time)
    assert (app.app_type, app.app_id) == ("APP", "default")
    # On the wire: JSON numbers, not strings (the SDK's model would coerce "5" to 5 silently).
    raw = json.loads(app.raw_content)
    assert type(raw["export_count"]) is int and type(raw["progress"]) is int

    tenant = create_export(sdk, task_id)  # defaults: xls, GLOBAL, no app_id
    assert tenant.status_code == 201 and tenant.export_task_id != app.export_task_id
    assert (tenant.export_format, tenant.app_type, tenant.app_id) == ("xls", "GLOBAL", None)

    done = wait_all_finished(sdk, 2, "both exports to finish")
    for t in done.export_tasks:
        assert (t.status, t.progress, t.export_count) == ("Success", 100, 12)
        assert EXPORT_TIME.match(t.end_time) and t.end_time >= t.create_time


def test_list_export_tasks_pages_by_limit_offset_and_marker(sdk, user, seed):
    batch_ids = [seed(user, n) for n in (3, 4, 5, 6)]
    created = [create_export(sdk, b).export_task_id for b in batch_ids]  # 4: under the 5-unfinished limit
    wait_all_finished(sdk, 4, "four exports to finish")
    newest_first = sorted(created, reverse=True)

    first = sdk.list_export_tasks(ListExportTasksRequest(resource_type="BatchTask", limit=3))
    sdk.check_signed()
    assert [t.export_task_id for t in first.export_tasks] == newest_first[:3]
    assert first.page.count == 4 and first.page.marker == newest_first[2]
    rest = sdk.list_export_tasks(ListExportTasksRequest(resource_type="BatchTask", limit=3,
                                                        marker=first.page.marker))
    assert [t.export_task_id for t in rest.export_tasks] == newest_first[3:]
    assert rest.page.count == 4 and rest.page.marker == newest_first[3]  # count: every match, all pages
    by_offset = sdk.list_export_tasks(ListExportTasksRequest(limit=2, offset=1))
    assert [t.export_task_id for t in by_offset.export_tasks] == newest_first[1:3]
    past_end = sdk.list_export_tasks(ListExportTasksRequest(limit=2, offset=4))
    assert past_end.export_tasks == [] and past_end.page.count == 4

    # resource_condition is JSON text in the query string.
    only = sdk.list_export_tasks(ListExportTasksRequest(resource_condition=json.dumps({"task_id": batch_ids[2]})))
    assert [t.export_task_id for t in only.export_tasks] == [created[2]]
    assert only.export_tasks[0].export_count == 5
    assert sdk.list_export_tasks(ListExportTasksRequest(app_type="APP")).export_tasks == []


def test_show_export_task_downloads_the_exact_zip(sdk, user, server):
    task_id, expected = seed_known(user, 3000)  # a zip of more than one 64 KiB gRPC chunk
    export_task_id = create_export(sdk, task_id).export_task_id
    wait_all_finished(sdk, 1, "the export to finish")

    resp = sdk.show_export_task(ShowExportTaskRequest(export_task_id=export_task_id))
    sdk.check_signed()
    assert resp.status_code == 200
    data = resp.raw_content
    assert isinstance(data, bytes) and data[:4] == b"PK\x03\x04" and len(data) > 64 * 1024
    assert sdk.last.headers["Content-Type"] == "application/zip"
    assert f'filename="export-{export_task_id}.zip"' in sdk.last.headers["Content-Disposition"]
    with open(os.path.join(server.data_dir, "files", f"{export_task_id}.zip"), "rb") as f:
        assert f.read() == data

    # The gRPC download of the same file (resuming at offset 1: the user's one download per 30 s is
    # spent, and a resume of the same file is not counted again) carries the same bytes.
    chunks = list(user.exports.ShowExportTask(epb.ShowExportTaskRequest(
        project_id=user.project_id, export_task_id=export_task_id, offset=1), metadata=user.metadata))
    assert chunks[0].total_size == len(data) and chunks[0].sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(c.body.data for c in chunks) == data[1:]

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == [f"export-{export_task_id}.xls"]
        book = xlrd.open_workbook(file_contents=z.read(z.namelist()[0]))
    sheet = book.sheet_by_index(0)
    assert tuple(sheet.row_values(0)) == HEADER and sheet.nrows == 3001
    assert [sheet.row_values(i) for i in range(1, 3001)] == expected  # the rows the test seeded

    # A second download within 30 s is refused as the platform refuses its rate limits: 403 with the
    # IOTDA code, which the SDK parses (a 429 on a GET would be swallowed by urllib3's retry).
    with pytest.raises(ClientRequestException) as info:
        sdk.show_export_task(ShowExportTaskRequest(export_task_id=export_task_id))
    assert (info.value.status_code, info.value.error_code) == (403, "IOTDA.018003")
    assert "retry in" in info.value.error_msg and info.value.request_id == sdk.last.headers["X-Request-Id"]
    assert 1 <= int(sdk.last.headers["Retry-After"]) <= 30


def test_delete_export_task(sdk, user, seed):
    task_id = seed(user, 5)
    export_task_id = create_export(sdk, task_id).export_task_id
    wait_all_finished(sdk, 1, "the export to finish")
    deleted = sdk.delete_export_task(DeleteExportTaskRequest(export_task_id=export_task_id))
    sdk.check_signed()
    assert deleted.status_code == 204 and sdk.last.content == b""
    assert sdk.list_export_tasks(ListExportTasksRequest()).export_tasks == []
    sdk.refused(sdk.delete_export_task, DeleteExportTaskRequest(export_task_id=export_task_id), 404, "IOTDA.018001")
    sdk.refused(sdk.show_export_task, ShowExportTaskRequest(export_task_id=export_task_id), 404, "IOTDA.018001")


# -- errors ---------------------------------------------------------------------------------------

def test_errors_are_client_request_exceptions_with_code_and_request_id(sdk, user, seed, server, channel,
                                                                       algorithm):
    task_id = seed(user, 3)
    # Invalid input (the SDK validates nothing: the server names the field).
    e = sdk.refused(sdk.create_export_task, CreateExportTaskRequest(body=AddExportTask(
        resource_type="Device", resource_condition={"task_id": task_id})), 400, "IOTDA.000006")
    assert "resource_type" in e.error_msg
    sdk.refused(sdk.create_export_task, CreateExportTaskRequest(), 400, "IOTDA.000006")  # an empty POST
    sdk.refused(sdk.create_export_task, CreateExportTaskRequest(body=AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": task_id}, app_id="a/b")), 400, "IOTDA.000006")
    sdk.refused(sdk.list_export_tasks, ListExportTasksRequest(marker="not-a-marker"), 400, "IOTDA.000006")
    sdk.refused(sdk.list_batch_tasks, ListBatchTasksRequest(), 400, "IOTDA.000006")  # task_type mandatory
    # limit out of range.
    for limit in (0, 51):
        sdk.refused(sdk.list_export_tasks, ListExportTasksRequest(limit=limit), 400, "IOTDA.000017")
        sdk.refused(sdk.list_batch_tasks, ListBatchTasksRequest(task_type="firmwareUpgrade", limit=limit),
                    400, "IOTDA.000017")
    # Not found: an export of a batch task that does not exist.
    sdk.refused(sdk.create_export_task, CreateExportTaskRequest(body=AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": "ab" * 12})), 404, "IOTDA.019001")
    # An id the SDK percent-encodes ("/" -> %2F) is refused, not routed into a file path.
    sdk.refused(sdk.show_export_task, ShowExportTaskRequest(export_task_id="../credentials"), 400, "IOTDA.000006")

    # Wrong SK, unknown AK: 401 IOTDA.000002.
    wrong_sk = Sdk(server, user.creds, algorithm, sk="x" * 40)
    wrong_sk.refused(wrong_sk.list_export_tasks, ListExportTasksRequest(), 401, "IOTDA.000002")
    assert wrong_sk.last.headers["WWW-Authenticate"]
    unknown_ak = Sdk(server, user.creds, algorithm, ak="NOSUCHAK000000000000")
    unknown_ak.refused(unknown_ak.list_export_tasks, ListExportTasksRequest(), 401, "IOTDA.000002")

    # Another project's path (valid signature, X-Project-Id = path project = not the principal's): 403.
    other = make_user(server, channel)
    elsewhere = Sdk(server, user.creds, algorithm, project_id=other.project_id)
    elsewhere.refused(elsewhere.list_export_tasks, ListExportTasksRequest(), 403, "IOTDA.000003")
    assert other.project_id in elsewhere.last.request.url

    # A principal whose policy lacks the action: 403, and nothing created.
    reader = make_user(server, channel, actions=["iotda:exporttasks:queryList"])
    limited = Sdk(server, reader.creds, algorithm)
    reader_task = seed(reader, 2)
    limited.refused(limited.create_export_task, CreateExportTaskRequest(body=AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": reader_task})), 403, "IOTDA.000003")
    assert limited.list_export_tasks(ListExportTasksRequest()).export_tasks == []
