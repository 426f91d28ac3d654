"""Every field of every RPC is validated by the server: a bad value gets INVALID_ARGUMENT (or the
documented code) whose BadRequest names the field and whose ErrorInfo carries the platform's code
(IOTDA.000006; IOTDA.000017 for `limit`), and the store is exactly as before. Huge strings and odd
unicode never make the server answer INTERNAL or UNKNOWN.

All refusals go through one module-scoped principal on the shared server: a refusal changes nothing,
which each case checks by comparing the project's rows in the store before and after.
"""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from conftest import invalid_argument, make_user, refused, rpc_failure, store_snapshot
from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.domain.batches import seed_batch_task

Code = grpc.StatusCode
DROP = object()  # "leave this field out of the request"


@pytest.fixture(scope="module")
def vuser(server, channel):
    return make_user(server, channel)


@pytest.fixture(scope="module")
def batch(vuser):
    """A batch task created through the API with explicit targets (still Processing)."""
    return vuser.batches.CreateBatchTask(bpb.CreateBatchTaskRequest(
        project_id=vuser.project_id, task_name="validation_targets", task_type="createCommands",
        targets=["dev_1", "dev_2", "dev_3"]), metadata=vuser.metadata).batchtask


@pytest.fixture(scope="module")
def export_batch(server, vuser):
    return seed_batch_task(server.store, vuser.project_id, "", 3, seed=7)


@pytest.fixture
def unchanged(server, vuser):
    """Asserts, after the test, that the store holds exactly what it held before."""
    before = store_snapshot(server, vuser.project_id)
    yield
    assert store_snapshot(server, vuser.project_id) == before


def call(user, service: str, method: str, request):
    stub = user.exports if service == "exports" else user.batches

    return lambda: getattr(stub, method)(request, metadata=user.metadata)


# -- CreateExportTask ------------------------------------------------------------------------------

CREATE_CASES = [
    ("resource_type missing", {"resource_type": ""}, "resource_type"),
    ("resource_type wrong", {"resource_type": "Device"}, "resource_type"),
    ("resource_type case", {"resource_type": "batchtask"}, "resource_type"),
    ("resource_type plural", {"resource_type": "BatchTasks"}, "resource_type"),
    ("resource_condition missing", {"resource_condition": DROP}, "resource_condition"),
    ("task_id empty", {"task_id": ""}, "resource_condition.task_id"),
    ("task_id not hex", {"task_id": "XYZ"}, "resource_condition.task_id"),
    ("task_id upper hex", {"task_id": "5F433CE0C24389024365FDFA"}, "resource_condition.task_id"),
    ("task_id too long", {"task_id": "0" * 25}, "resource_condition.task_id"),
    ("task_id newline", {"task_id": "5f433ce0c24389024365fdfa\n"}, "resource_condition.task_id"),
    ("task_id space", {"task_id": " 5f433ce0"}, "resource_condition.task_id"),
    ("task_id fullwidth", {"task_id": "５f433ce0"}, "resource_condition.task_id"),
    ("export_format csv", {"export_format": "csv"}, "export_format"),
    ("export_format case", {"export_format": "XLS"}, "export_format"),
    ("export_format xlsx", {"export_format": "xlsx"}, "export_format"),
    ("app_type lower", {"app_type": "app"}, "app_type"),
    ("app_type other", {"app_type": "TENANT"}, "app_type"),
    ("app_type space", {"app_type": "GLOBAL "}, "app_type"),
    ("app_id too long", {"app_type": "APP", "app_id": "a" * 37}, "app_id"),
    ("app_id space", {"app_type": "APP", "app_id": "my app"}, "app_id"),
    ("app_id slash", {"app_type": "APP", "app_id": "app/1"}, "app_id"),
    ("app_id dot", {"app_type": "APP", "app_id": "app.1"}, "app_id"),
    ("app_id accent", {"app_type": "APP", "app_id": "appé"}, "app_id"),
    ("app_id newline", {"app_type": "APP", "app_id": "app\n"}, "app_id"),
    ("app_id bad with GLOBAL", {"app_type": "GLOBAL", "app_id": "app 1"}, "app_id"),
    ("request_id space", {"request_id": "req 1"}, "request_id"),
    ("request_id too long", {"request_id": "r" * 65}, "request_id"),
    ("request_id newline", {"request_id": "req\n"}, "request_id"),
    ("request_id hash", {"request_id": "req#1"}, "request_id"),
    ("project_id empty", {"project_id": ""}, "project_id"),
    ("project_id space", {"project_id": "my project"}, "project_id"),
    ("project_id too long", {"project_id": "p" * 65}, "project_id"),
    ("project_id slash", {"project_id": "a/b"}, "project_id"),
]


def create_request(user, export_batch, overrides: dict) -> epb.CreateExportTaskRequest:
    fields = {"project_id": user.project_id, "resource_type": "BatchTask", "task_id": export_batch}
    fields.update(overrides)
    task_id = fields.pop("task_id")
    condition = fields.pop("resource_condition", None)
    req = epb.CreateExportTaskRequest(**fields)
    if condition is not DROP:
        req.resource_condition.task_id = task_id
    return req


@pytest.mark.parametrize("overrides,field", [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES])
def test_create_export_task_fields(vuser, export_batch, unchanged, overrides, field):
    invalid_argument(call(vuser, "exports", "CreateExportTask", create_request(vuser, export_batch, overrides)),
                     field)


def test_create_export_task_names_every_bad_field_at_once(vuser, export_batch, unchanged):
    f = invalid_argument(call(vuser, "exports", "CreateExportTask", create_request(
        vuser, export_batch, {"resource_type": "", "export_format": "csv", "app_type": "X", "request_id": "a b"})),
        "resource_type")
    assert set(f.fields) == {"resource_type", "export_format", "app_type", "request_id"}


def test_create_export_task_boundaries_pass_validation(vuser, unchanged):
    # 36-character app_id and a 24-hex task_id are valid: the refusal is that the batch task is unknown.
    for req in (epb.CreateExportTaskRequest(project_id=vuser.project_id, resource_type="BatchTask",
                                            resource_condition=epb.ResourceCondition(task_id="f" * 24),
                                            app_type="APP", app_id="A_-9" * 9, request_id="r" * 64,
                                            export_format="xls"),
                epb.CreateExportTaskRequest(project_id=vuser.project_id, resource_type="BatchTask",
                                            resource_condition=epb.ResourceCondition(task_id="a"))):
        f = refused(call(vuser, "exports", "CreateExportTask", req), Code.NOT_FOUND)
        assert f.error_code == "IOTDA.019001"


def test_app_id_with_global_scope_is_accepted_and_is_not_part_of_the_scope(server, channel):
    # The seed gives app_id a meaning only with app_type APP: with GLOBAL (given or by default) it is
    # checked, then the task has the tenant's scope, the same task as a create without app_id.
    user = make_user(server, channel)
    batch = seed_batch_task(server.store, user.project_id, "", 3, seed=11)
    plain = user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=batch)), metadata=user.metadata).export_task
    for extra in ({"app_type": "GLOBAL", "app_id": "app1"}, {"app_id": "app1"}):
        task = user.exports.CreateExportTask(epb.CreateExportTaskRequest(
            project_id=user.project_id, resource_type="BatchTask",
            resource_condition=epb.ResourceCondition(task_id=batch), **extra), metadata=user.metadata).export_task
        assert (task.export_task_id, task.app_type, task.HasField("app_id")) == (plain.export_task_id, "GLOBAL", False)


# -- ListExportTasks -------------------------------------------------------------------------------

LIST_CASES = [
    ("limit 0", {"limit": 0}, "limit"), ("limit 51", {"limit": 51}, "limit"), ("limit -1", {"limit": -1}, "limit"),
    ("limit max int", {"limit": 2**31 - 1}, "limit"),
    ("offset -1", {"offset": -1}, "offset"), ("offset 501", {"offset": 501}, "offset"),
    ("marker short", {"marker": "a" * 23}, "marker"), ("marker long", {"marker": "a" * 25}, "marker"),
    ("marker not hex", {"marker": "g" * 24}, "marker"), ("marker upper", {"marker": "A" * 24}, "marker"),
    ("marker newline", {"marker": "a" * 24 + "\n"}, "marker"),
    ("resource_type", {"resource_type": "Device"}, "resource_type"),
    ("resource_condition not json", {"resource_condition": "task_id=abc"}, "resource_condition"),
    ("resource_condition list", {"resource_condition": '["abc"]'}, "resource_condition"),
    ("resource_condition other key", {"resource_condition": '{"device_id": "abc"}'}, "resource_condition"),
    ("resource_condition number", {"resource_condition": '{"task_id": 12}'}, "resource_condition"),
    ("resource_condition bad task_id", {"resource_condition": '{"task_id": "XYZ"}'}, "resource_condition.task_id"),
    ("resource_condition deep", {"resource_condition": "[" * 50_000}, "resource_condition"),
    ("app_type", {"app_type": "ALL"}, "app_type"),
    ("app_id", {"app_id": "a b"}, "app_id"),
    ("app_id long", {"app_id": "a" * 37}, "app_id"),
    ("project_id", {"project_id": "bad project"}, "project_id"),
]


@pytest.mark.parametrize("fields,field", [c[1:] for c in LIST_CASES], ids=[c[0] for c in LIST_CASES])
def test_list_export_tasks_params(vuser, unchanged, fields, field):
    req = epb.ListExportTasksRequest(**{"project_id": vuser.project_id, **fields})
    invalid_argument(call(vuser, "exports", "ListExportTasks", req), field,
                     "IOTDA.000017" if field == "limit" else "IOTDA.000006")


# -- export_task_id and project_id of the other export RPCs -------------------------------------------

BAD_EXPORT_IDS = ["", "a" * 37, "a b", "a/b", "..", "a.b", "ab\n", "é", "id%20"]
EXPORT_ID_RPCS = [("GetExportTask", epb.GetExportTaskRequest), ("WatchProgress", epb.WatchProgressRequest),
                  ("ShowExportTask", epb.ShowExportTaskRequest), ("CancelExportTask", epb.CancelExportTaskRequest),
                  ("DeleteExportTask", epb.DeleteExportTaskRequest)]


@pytest.mark.parametrize("method,request_class", EXPORT_ID_RPCS, ids=[m for m, _ in EXPORT_ID_RPCS])
def test_export_task_id_is_validated(vuser, unchanged, method, request_class):
    for bad in BAD_EXPORT_IDS:
        invalid_argument(call(vuser, "exports", method, request_class(project_id=vuser.project_id,
                                                                      export_task_id=bad)), "export_task_id")


def test_download_offset_and_limit_are_validated(vuser, unchanged):
    for fields, field in (({"offset": -1}, "offset"), ({"limit": -1}, "limit"), ({"offset": -(2**63)}, "offset")):
        invalid_argument(call(vuser, "exports", "ShowExportTask", epb.ShowExportTaskRequest(
            project_id=vuser.project_id, export_task_id="a" * 24, **fields)), field)


ALL_RPCS = [
    ("exports", "CreateExportTask", epb.CreateExportTaskRequest),
    ("exports", "ListExportTasks", epb.ListExportTasksRequest),
    ("exports", "ShowExportTask", epb.ShowExportTaskRequest),
    ("exports", "DeleteExportTask", epb.DeleteExportTaskRequest),
    ("exports", "GetExportTask", epb.GetExportTaskRequest),
    ("exports", "WatchProgress", epb.WatchProgressRequest),
    ("exports", "CancelExportTask", epb.CancelExportTaskRequest),
    ("batches", "CreateBatchTask", bpb.CreateBatchTaskRequest),
    ("batches", "ShowBatchTask", bpb.ShowBatchTaskRequest),
    ("batches", "ListBatchTasks", bpb.ListBatchTasksRequest),
    ("batches", "DeleteBatchTask", bpb.DeleteBatchTaskRequest),
    ("batches", "RecordSubtaskResults", bpb.RecordSubtaskResultsRequest),
]


@pytest.mark.parametrize("service,method,request_class", ALL_RPCS, ids=[m for _, m, _ in ALL_RPCS])
def test_project_id_is_validated_by_every_rpc(vuser, unchanged, service, method, request_class):
    for bad in ("", "my project", "p" * 65, "a/b", "proj\n", "проект"):
        invalid_argument(call(vuser, service, method, request_class(project_id=bad)), "project_id")


# -- CreateBatchTask -------------------------------------------------------------------------------

def in_days(days: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)).strftime("%Y%m%dT%H%M%SZ")


BATCH_CASES = [
    ("task_name missing", {"task_name": ""}, "task_name"),
    ("task_name space", {"task_name": "bad name"}, "task_name"),
    ("task_name too long", {"task_name": "n" * 129}, "task_name"),
    ("task_name punctuation", {"task_name": "name!"}, "task_name"),
    ("task_name hyphen", {"task_name": "name-1"}, "task_name"),
    ("task_name newline", {"task_name": "名前\n"}, "task_name"),
    ("task_type missing", {"task_type": ""}, "task_type"),
    ("task_type unknown", {"task_type": "upgrade"}, "task_type"),
    ("task_type case", {"task_type": "createcommands"}, "task_type"),
    ("targets over 30000", {"targets": [f"d{i}" for i in range(30_001)]}, "targets"),
    ("target space", {"targets": ["dev 1"]}, "targets[0]"),
    ("target too long", {"targets": ["ok", "x" * 129]}, "targets[1]"),
    ("target newline", {"targets": ["dev\n"]}, "targets[0]"),
    ("target accent", {"targets": ["dév"]}, "targets[0]"),
    ("target empty", {"targets": [""]}, "targets[0]"),
    ("targets duplicated", {"targets": ["a", "b", "a"]}, "targets"),
    ("no target source", {"targets": []}, "targets"),
    ("retry_count alone", {"task_policy": bpb.TaskPolicy(retry_count=2)}, "task_policy"),
    ("retry_interval alone", {"task_policy": bpb.TaskPolicy(retry_interval=5)}, "task_policy"),
    ("retry_count 6", {"task_policy": bpb.TaskPolicy(retry_count=6, retry_interval=5)}, "task_policy.retry_count"),
    ("retry_count negative", {"task_policy": bpb.TaskPolicy(retry_count=-1, retry_interval=5)},
     "task_policy.retry_count"),
    ("retry_interval 1441", {"task_policy": bpb.TaskPolicy(retry_count=2, retry_interval=1441)},
     "task_policy.retry_interval"),
    ("schedule_time format", {"task_policy": bpb.TaskPolicy(schedule_time="2030-01-01 00:00:00")},
     "task_policy.schedule_time"),
    ("schedule_time past", {"task_policy": bpb.TaskPolicy(schedule_time="20200101T000000Z")},
     "task_policy.schedule_time"),
    ("schedule_time 8 days", {"task_policy": bpb.TaskPolicy(schedule_time=in_days(8))}, "task_policy.schedule_time"),
    ("task_ext_info over 512", {"task_type": "firmwareUpgrade", "task_ext_info": {"note": "x" * 600}},
     "task_ext_info"),
    ("task_ext_info over 512 CJK", {"task_type": "firmwareUpgrade", "task_ext_info": {"note": "名" * 520}},
     "task_ext_info"),
    ("task_ext_info NaN", {"task_type": "firmwareUpgrade", "task_ext_info": {"n": float("nan")}}, "task_ext_info"),
    ("document NaN", {"document": {"n": float("inf")}}, "document"),
    ("task_mode unknown", {"task_type": "firmwareUpgrade", "task_mode": "FOO"}, "task_mode"),
    ("task_mode wrong type", {"task_mode": "GATEWAY"}, "task_mode"),
    ("need_confirm wrong type", {"need_confirm": True}, "need_confirm"),
    ("app_id", {"app_id": "a b"}, "app_id"),
    ("app_id long", {"app_id": "a" * 37}, "app_id"),
    ("targets_filter key", {"targets": [], "targets_filter": {"device_ids": ["g1"]}}, "targets_filter"),
    ("targets_filter not list", {"targets": [], "targets_filter": {"group_ids": "g1"}}, "targets_filter"),
    ("targets_filter empty", {"targets": [], "targets_filter": {"group_ids": []}}, "targets_filter"),
    ("targets_filter newline", {"targets": [], "targets_filter": {"group_ids": ["g1\n"]}}, "targets_filter"),
    ("targets_filter NaN", {"targets": [], "targets_filter": {"group_ids": [float("nan")]}}, "targets_filter"),
    ("document_source", {"targets": [], "document_source": "file id"}, "document_source"),
]


def batch_request(user, overrides: dict) -> bpb.CreateBatchTaskRequest:
    fields = {"project_id": user.project_id, "task_name": "valid_name", "task_type": "createCommands",
              "targets": ["dev_1"]}
    fields.update(overrides)
    structs = {k: fields.pop(k) for k in ("task_ext_info", "targets_filter", "document") if k in fields}
    req = bpb.CreateBatchTaskRequest(**fields)
    for name, value in structs.items():
        getattr(req, name).update(value)
    return req


@pytest.mark.parametrize("overrides,field", [c[1:] for c in BATCH_CASES], ids=[c[0] for c in BATCH_CASES])
def test_create_batch_task_fields(vuser, unchanged, overrides, field):
    invalid_argument(call(vuser, "batches", "CreateBatchTask", batch_request(vuser, overrides)), field)


def test_create_batch_task_limits_are_inclusive(server, channel):
    user = make_user(server, channel)
    ok = [
        {"task_name": "n" * 128}, {"task_name": "批量任务_1"}, {"targets": [f"d{i}" for i in range(30_000)]},
        {"targets": ["x" * 128]},
        {"task_policy": bpb.TaskPolicy(retry_count=5, retry_interval=1440, schedule_time=in_days(6.9))},
        {"task_type": "firmwareUpgrade", "need_confirm": True, "task_mode": "GATEWAY",
         "task_ext_info": {"note": "名" * 200}},
        {"targets": [], "targets_filter": {"group_ids": ["g1", "g_2"]}},
        {"targets": [], "document_source": "f" * 128},
    ]
    for overrides in ok:
        t = user.batches.CreateBatchTask(batch_request(user, overrides), metadata=user.metadata).batchtask
        assert len(t.task_id) == 24


# -- ShowBatchTask, ListBatchTasks, DeleteBatchTask --------------------------------------------------

SHOW_CASES = [
    ("task_id empty", {"task_id": ""}, "task_id"), ("task_id not hex", {"task_id": "XYZ"}, "task_id"),
    ("task_id long", {"task_id": "0" * 25}, "task_id"),
    ("task_detail_status", {"task_detail_status": "Done"}, "task_detail_status"),
    ("task_detail_status case", {"task_detail_status": "success"}, "task_detail_status"),
    ("target space", {"target": "a b"}, "target"), ("target long", {"target": "x" * 129}, "target"),
    ("limit 0", {"limit": 0}, "limit"), ("limit 51", {"limit": 51}, "limit"),
    ("offset -1", {"offset": -1}, "offset"), ("offset 501", {"offset": 501}, "offset"),
    ("marker", {"marker": "zz"}, "marker"),
]


@pytest.mark.parametrize("fields,field", [c[1:] for c in SHOW_CASES], ids=[c[0] for c in SHOW_CASES])
def test_show_batch_task_params(vuser, batch, unchanged, fields, field):
    req = bpb.ShowBatchTaskRequest(**{"project_id": vuser.project_id, "task_id": batch.task_id, **fields})
    invalid_argument(call(vuser, "batches", "ShowBatchTask", req), field,
                     "IOTDA.000017" if field == "limit" else "IOTDA.000006")


LIST_BATCH_CASES = [
    ("task_type missing", {"task_type": ""}, "task_type"), ("task_type unknown", {"task_type": "foo"}, "task_type"),
    ("status", {"status": "Done"}, "status"), ("status case", {"status": "success"}, "status"),
    ("app_id", {"app_id": "a b"}, "app_id"),
    ("limit 0", {"limit": 0}, "limit"), ("limit 51", {"limit": 51}, "limit"),
    ("offset 501", {"offset": 501}, "offset"), ("marker", {"marker": "f" * 23}, "marker"),
]


@pytest.mark.parametrize("fields,field", [c[1:] for c in LIST_BATCH_CASES], ids=[c[0] for c in LIST_BATCH_CASES])
def test_list_batch_tasks_params(vuser, unchanged, fields, field):
    req = bpb.ListBatchTasksRequest(**{"project_id": vuser.project_id, "task_type": "createCommands", **fields})
    invalid_argument(call(vuser, "batches", "ListBatchTasks", req), field,
                     "IOTDA.000017" if field == "limit" else "IOTDA.000006")


def test_delete_batch_task_id_is_validated(vuser, unchanged):
    for bad in ("", "XYZ", "0" * 25, "abc\n"):
        invalid_argument(call(vuser, "batches", "DeleteBatchTask",
                              bpb.DeleteBatchTaskRequest(project_id=vuser.project_id, task_id=bad)), "task_id")


# -- RecordSubtaskResults ----------------------------------------------------------------------------

def result(target="dev_1", status="Success", output="", error_code="", error_msg=""):
    return bpb.SubtaskResult(target=target, status=status, output=output,
                             error=bpb.SubtaskError(error_code=error_code, error_msg=error_msg))


RECORD_CASES = [
    ("no results", [], "results"),
    ("over 10000 results", [result(f"d{i}") for i in range(10_001)], "results"),
    ("status Waitting", [result(status="Waitting")], "results[0].status"),
    ("status unknown", [result(status="Done")], "results[0].status"),
    ("status empty", [result(status="")], "results[0].status"),
    ("status case", [result(status="success")], "results[0].status"),
    ("target space", [result(target="dev 1")], "results[0].target"),
    ("target empty", [result(target="")], "results[0].target"),
    ("target long", [result(target="x" * 129)], "results[0].target"),
    ("target newline", [result(target="dev_1\n")], "results[0].target"),
    ("target duplicated", [result(), result()], "results[1].target"),
    ("output too long", [result(output="o" * 32_768)], "results[0].output"),
    ("error_msg too long", [result(status="Fail", error_msg="e" * 1025)], "results[0].error"),
    ("error_code too long", [result(status="Fail", error_code="c" * 1025)], "results[0].error"),
    ("NUL in output", [result(output="a\x00b")], "results[0]"),
]


@pytest.mark.parametrize("results,field", [c[1:] for c in RECORD_CASES], ids=[c[0] for c in RECORD_CASES])
def test_record_subtask_results_fields(vuser, batch, unchanged, results, field):
    req = bpb.RecordSubtaskResultsRequest(project_id=vuser.project_id, task_id=batch.task_id, results=results)
    invalid_argument(call(vuser, "batches", "RecordSubtaskResults", req), field)


def test_record_subtask_results_task_id_is_validated(vuser, unchanged):
    for bad in ("", "XYZ", "0" * 25):
        invalid_argument(call(vuser, "batches", "RecordSubtaskResults", bpb.RecordSubtaskResultsRequest(
            project_id=vuser.project_id, task_id=bad, results=[result()])), "task_id")


def test_record_subtask_results_for_an_unknown_target_is_refused_whole(vuser, batch, unchanged):
    req = bpb.RecordSubtaskResultsRequest(project_id=vuser.project_id, task_id=batch.task_id,
                                          results=[result("dev_1"), result("dev_9")])
    f = refused(call(vuser, "batches", "RecordSubtaskResults", req), Code.FAILED_PRECONDITION)
    assert f.error_code == "IOTDA.019003"
    assert f.precondition.violations[0].type == "UNKNOWN_TARGET" and "results[1].target" in f.message


def test_record_subtask_results_for_an_unknown_batch_task_is_not_found(vuser, unchanged):
    req = bpb.RecordSubtaskResultsRequest(project_id=vuser.project_id, task_id="f" * 24, results=[result()])
    assert refused(call(vuser, "batches", "RecordSubtaskResults", req), Code.NOT_FOUND).error_code == "IOTDA.019001"


# -- huge strings and odd unicode ------------------------------------------------------------------

ODD = ["x" * 2_000_000, "\x00", "\u202egnp.exe", "😀" * 1000, "a\u0301", "\ufeffBOM", "名前", "١٢٣",
       "ｆｕｌｌ", "line\u2028sep", "\U0010ffff", "\t", " ", "%00", "'; DROP TABLE export_tasks; --", "*", "?"]


def odd_requests(user, batch_id, value):
    pid = user.project_id
    yield "exports", "CreateExportTask", epb.CreateExportTaskRequest(
        project_id=pid, resource_type=value, resource_condition=epb.ResourceCondition(task_id=batch_id))
    yield "exports", "CreateExportTask", epb.CreateExportTaskRequest(
        project_id=pid, resource_type="BatchTask", resource_condition=epb.ResourceCondition(task_id=value))
    yield "exports", "CreateExportTask", epb.CreateExportTaskRequest(
        project_id=pid, resource_type="BatchTask", resource_condition=epb.ResourceCondition(task_id=batch_id),
        app_type="APP", app_id=value, request_id=value, export_format=value)
    yield "exports", "ListExportTasks", epb.ListExportTasksRequest(project_id=pid, resource_condition=value)
    yield "exports", "ListExportTasks", epb.ListExportTasksRequest(project_id=pid, marker=value, app_id=value,
                                                                   app_type=value, resource_type=value)
    yield "exports", "GetExportTask", epb.GetExportTaskRequest(project_id=pid, export_task_id=value)
    yield "exports", "ShowExportTask", epb.ShowExportTaskRequest(project_id=pid, export_task_id=value)
    yield "exports", "WatchProgress", epb.WatchProgressRequest(project_id=value, export_task_id=value)
    yield "exports", "DeleteExportTask", epb.DeleteExportTaskRequest(project_id=pid, export_task_id=value)
    req = bpb.CreateBatchTaskRequest(project_id=pid, task_name=value, task_type=value, targets=[value, value],
                                     document_source=value, app_id=value)
    req.document.update({"text": value})
    yield "batches", "CreateBatchTask", req
    req = bpb.CreateBatchTaskRequest(project_id=pid, task_name="odd", task_type="firmwareUpgrade", targets=["d"])
    req.task_ext_info.update({value[:100]: value})
    req.targets_filter.update({"group_ids": [value]})
    yield "batches", "CreateBatchTask", req
    yield "batches", "ShowBatchTask", bpb.ShowBatchTaskRequest(project_id=pid, task_id=value, target=value,
                                                               task_detail_status=value, marker=value)
    yield "batches", "ListBatchTasks", bpb.ListBatchTasksRequest(project_id=pid, task_type=value, status=value,
                                                                 app_id=value, marker=value)
    yield "batches", "DeleteBatchTask", bpb.DeleteBatchTaskRequest(project_id=pid, task_id=value)
    yield "batches", "RecordSubtaskResults", bpb.RecordSubtaskResultsRequest(
        project_id=pid, task_id=batch_id, results=[result(target=value, status=value, output=value,
                                                          error_code=value, error_msg=value)])


@pytest.mark.parametrize("value", ODD, ids=[f"odd{i}" for i in range(len(ODD))])
def test_huge_strings_and_odd_unicode_never_yield_internal(vuser, batch, unchanged, value):
    for service, method, req in odd_requests(vuser, batch.task_id, value):
        try:
            response = call(vuser, service, method, req)()
            if hasattr(response, "__next__"):
                list(response)
        except grpc.RpcError as err:
            f = rpc_failure(err)
            assert f.code not in (Code.INTERNAL, Code.UNKNOWN, Code.UNAVAILABLE), (method, f.message)
            assert f.error_code and f.error_code.startswith("IOTDA."), (method, f.code, f.message)
            if f.code == Code.INVALID_ARGUMENT:
                assert f.fields, (method, f.message)  # the refused field is named
        else:
            pytest.fail(f"{method} accepted {value[:20]!r}: every request here holds an invalid field")
