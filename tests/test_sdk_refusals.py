"""Every refusal the README's error table documents, caused through the platform's official SDK
(huaweicloudsdkiotda, unchanged) against a live server, and read back as the SDK's users read it:
`status_code`, `error_code`, `error_msg` and `request_id` on its ClientRequestException /
ServerResponseException. A row added to the table without a scenario here fails the suite.
"""

from __future__ import annotations

import asyncio
import json
import re
import pathlib

import grpc
import pytest
from conftest import ServerThread, make_user, wait_for
from huaweicloudsdkcore.exceptions.exceptions import ServiceResponseException
from huaweicloudsdkiotda.v5 import (AddExportTask, CreateBatchTask, CreateBatchTaskRequest, CreateExportTaskRequest,
                                    DeleteBatchTaskRequest, ListExportTasksRequest, ShowExportTaskRequest)
from test_sdk import REQUEST_ID, SDK, Sdk

from iotda_export_server.domain.batches import seed_batch_task

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def documented_refusals() -> set[tuple[int, str]]:
    """(HTTP status, error code) of every row of the README's "Errors" table."""
    text = README.read_text()
    section = text[text.index("## Errors"):]
    start = section.index("|---")
    rows = section[start:section.index("\n\n", start)].splitlines()[1:]
    out = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for code in re.findall(r"(?:IOTDA|APIGW)\.\d+", cells[2]):
            out.add((int(cells[1]), code))
    return out


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """A server without export workers: its exports stay unfinished as long as a test needs."""
    s = ServerThread(tmp_path_factory.mktemp("quiet"), workers=0, http_addr="127.0.0.1:0")
    with grpc.insecure_channel(s.address) as channel:
        s.channel = channel
        yield s
    s.stop()


def refusal(sdk: Sdk, call, *args, **kwargs) -> ServiceResponseException:
    with pytest.raises(ServiceResponseException) as info:
        call(*args, **kwargs)
    e = info.value
    assert e.error_msg and e.error_msg != sdk.last.content.decode(errors="replace"), "the SDK did not parse the body"
    assert REQUEST_ID.match(e.request_id) and e.request_id == sdk.last.headers["X-Request-Id"]
    return e


def _export(sdk: Sdk, task_id: str):
    return sdk.create_export_task(CreateExportTaskRequest(body=AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": task_id})))


def _finished_export(sdk: Sdk, server, user) -> str:
    export_task_id = _export(sdk, seed_batch_task(server.store, user.project_id, "", 3000, seed=3)).export_task_id

    def done():
        tasks = sdk.list_export_tasks(ListExportTasksRequest(limit=50)).export_tasks
        return any(t.export_task_id == export_task_id and t.status == "Success" for t in tasks)
    wait_for(done, timeout=60, interval=0.1, what="the export to succeed")
    return export_task_id


def s_invalid(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    return sdk, refusal(sdk, sdk.create_export_task, CreateExportTaskRequest(body=AddExportTask(
        resource_type="Device", resource_condition={"task_id": "ab"})))


def s_limit(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    return sdk, refusal(sdk, sdk.list_export_tasks, ListExportTasksRequest(limit=51))


def s_bad_format(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)  # text/plain: the SDK signs it UNSIGNED-PAYLOAD; the body is refused
    return sdk, refusal(sdk, sdk.client.do_http_request, "POST", "/v5/iot/{project_id}/export-tasks",
                        header_params={"Content-Type": "text/plain"}, body="resource_type=BatchTask",
                        response_type="CreateExportTaskResponse")


def s_offset(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    export_task_id = _finished_export(sdk, server, user)
    return sdk, refusal(sdk, sdk.client.do_http_request, "GET",
                        "/v5/iot/{project_id}/export-tasks/{export_task_id}/file",
                        path_params={"export_task_id": export_task_id}, query_params=[("offset", 10**9)],
                        header_params={"Content-Type": "application/json"}, response_type="ShowExportTaskResponse")


def s_unauthenticated(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK, sk="x" * 40)
    return sdk, refusal(sdk, sdk.list_export_tasks, ListExportTasksRequest())


def s_permission(server, quiet, user):
    reader = make_user(server, user.channel, actions=["iotda:exporttasks:queryList"])
    sdk = Sdk(server, reader.creds, SDK)
    return sdk, refusal(sdk, sdk.create_export_task, CreateExportTaskRequest(body=AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": "ab"})))


def s_export_not_found(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    return sdk, refusal(sdk, sdk.show_export_task, ShowExportTaskRequest(export_task_id="ab" * 12))


def s_batch_not_found(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    return sdk, refusal(sdk, sdk.create_export_task, CreateExportTaskRequest(body=AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": "ab" * 12})))


def s_not_ready(server, quiet, user):
    q = make_user(quiet, quiet.channel)
    sdk = Sdk(quiet, q.creds, SDK)
    export_task_id = _export(sdk, seed_batch_task(quiet.store, q.project_id, "", 2, seed=4)).export_task_id
    return sdk, refusal(sdk, sdk.show_export_task, ShowExportTaskRequest(export_task_id=export_task_id))


def s_batch_unfinished(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    created = sdk.create_batch_task(CreateBatchTaskRequest(body=CreateBatchTask(
        task_name="unfinished", task_type="createCommands", targets=["d1"])))
    return sdk, refusal(sdk, sdk.delete_batch_task, DeleteBatchTaskRequest(task_id=created.task_id))


def s_unknown_target(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    created = sdk.create_batch_task(CreateBatchTaskRequest(body=CreateBatchTask(
        task_name="targets", task_type="createCommands", targets=["d1"])))
    body = {"results": [{"target": "not_a_target", "status": "Success"}]}
    return sdk, refusal(sdk, sdk.client.do_http_request, "POST", "/v5/iot/{project_id}/batchtasks/{task_id}/results",
                        path_params={"task_id": created.task_id}, body=body,
                        header_params={"Content-Type": "application/json"}, response_type="CreateBatchTaskResponse")


def s_unfinished_quota(server, quiet, user):
    q = make_user(quiet, quiet.channel)
    sdk = Sdk(quiet, q.creds, SDK)
    for i in range(5):
        _export(sdk, seed_batch_task(quiet.store, q.project_id, "", 1, seed=10 + i))
    return sdk, refusal(sdk, _export, sdk, seed_batch_task(quiet.store, q.project_id, "", 1, seed=20))


def s_download_rate(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    export_task_id = _finished_export(sdk, server, user)
    assert sdk.show_export_task(ShowExportTaskRequest(export_task_id=export_task_id)).status_code == 200
    e = refusal(sdk, sdk.show_export_task, ShowExportTaskRequest(export_task_id=export_task_id))
    assert 1 <= int(sdk.last.headers["Retry-After"]) <= 30
    return sdk, e


def s_damaged(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    export_task_id = _finished_export(sdk, server, user)
    path = server.server.files.path(export_task_id)
    path.write_bytes(path.read_bytes()[:-10])  # truncated behind the service's back
    return sdk, refusal(sdk, sdk.show_export_task, ShowExportTaskRequest(export_task_id=export_task_id))


def s_too_many_targets(server, quiet, user):
    # A batch task without a fixed target list takes new targets from recorded results, up to 30,000.
    sdk = Sdk(server, user.creds, SDK)
    created = sdk.create_batch_task(CreateBatchTaskRequest(body=CreateBatchTask(
        task_name="by_group", task_type="createCommands", targets_filter={"group_ids": ["g1"]})))

    def record(first: int, count: int):
        body = {"results": [{"target": f"d{i}", "status": "Success"} for i in range(first, first + count)]}
        return sdk.client.do_http_request("POST", "/v5/iot/{project_id}/batchtasks/{task_id}/results",
                                          path_params={"task_id": created.task_id}, body=body,
                                          header_params={"Content-Type": "application/json"},
                                          response_type="CreateBatchTaskResponse")
    for first in range(0, 30_000, 10_000):
        record(first, 10_000)
    return sdk, refusal(sdk, record, 30_000, 1)


def _held_slots(server, user, limiter_name: str):
    """Every slot of one of the user's per-process caps, held as streams in flight would hold them."""
    limiter = getattr(server.server.servicers[0], limiter_name)
    owner = server.store.reader().principal_by("user", user.creds["user"]).principal_id
    return [limiter.acquire(owner) for _ in range(limiter.limit)]


def s_watch_streams(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    export_task_id = _export(sdk, seed_batch_task(server.store, user.project_id, "", 2, seed=5)).export_task_id
    held = _held_slots(server, user, "watch_slots")
    try:
        return sdk, refusal(sdk, sdk.client.do_http_request, "GET",
                            "/v5/iot/{project_id}/export-tasks/{export_task_id}/progress",
                            path_params={"export_task_id": export_task_id},
                            header_params={"Content-Type": "application/json"}, response_type="ShowExportTaskResponse")
    finally:
        for slot in held:
            slot.release()


def s_downloads(server, quiet, user):
    sdk = Sdk(server, user.creds, SDK)
    export_task_id = _finished_export(sdk, server, user)
    held = _held_slots(server, user, "download_slots")
    try:
        return sdk, refusal(sdk, sdk.show_export_task, ShowExportTaskRequest(export_task_id=export_task_id))
    finally:
        for slot in held:
            slot.release()


def s_unavailable(server, quiet, user, tmp_path):
    # The gateway up, the gRPC service behind it gone (as in the middle of a shutdown): 503.
    s = ServerThread(tmp_path / "halting", workers=0, http_addr="127.0.0.1:0")
    try:
        sdk = Sdk(s, s.admin, SDK)
        asyncio.run_coroutine_threadsafe(s.server.server.stop(0), s.loop).result(30)
        return sdk, refusal(sdk, sdk.list_export_tasks, ListExportTasksRequest())
    finally:
        s.stop()


SCENARIOS = {
    (400, "IOTDA.000006"): s_invalid, (400, "IOTDA.000017"): s_limit, (400, "IOTDA.000008"): s_bad_format,
    (401, "IOTDA.000002"): s_unauthenticated, (403, "IOTDA.000003"): s_permission,
    (404, "IOTDA.018001"): s_export_not_found, (404, "IOTDA.019001"): s_batch_not_found,
    (400, "IOTDA.018004"): s_not_ready, (400, "IOTDA.019002"): s_batch_unfinished,
    (400, "IOTDA.019003"): s_unknown_target, (403, "IOTDA.018002"): s_unfinished_quota,
    (403, "IOTDA.018003"): s_download_rate, (500, "IOTDA.018005"): s_damaged,
    (400, "IOTDA.019004"): s_too_many_targets, (403, "IOTDA.018006"): s_watch_streams,
    (403, "IOTDA.018007"): s_downloads,
    (503, "IOTDA.000503"): s_unavailable,
}
# Rows whose (status, code) pair is shared with another row: each gets its own scenario too.
EXTRA = {"offset past the end": ((400, "IOTDA.000006"), s_offset)}


def test_every_documented_refusal_has_a_scenario():
    assert documented_refusals() == set(SCENARIOS), "README's error table and the SDK scenarios differ"


@pytest.mark.parametrize("expected,scenario", [*SCENARIOS.items(), *EXTRA.values()],
                         ids=[f"{s}-{c}" for s, c in SCENARIOS] + list(EXTRA))
def test_the_sdk_surfaces_the_refusal(server, quiet, user, tmp_path, expected, scenario):
    args = (server, quiet, user, tmp_path) if scenario is s_unavailable else (server, quiet, user)
    sdk, e = scenario(*args)
    assert (e.status_code, e.error_code) == expected, str(e)
    body = json.loads(sdk.last.content)
    assert (body["error_code"], body["error_msg"]) == (e.error_code, e.error_msg)
