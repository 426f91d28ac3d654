"""Batch tasks through the gRPC API: create (targets become sub-tasks; need_confirm waits), show with
paged, filtered sub-tasks, list by type/status/app, delete only when finished, RecordSubtaskResults
(idempotent) and the batch status derived from the sub-tasks (Success / Fail / PartialSuccess).
"""

from __future__ import annotations

import re

import grpc

from conftest import make_user, refused, store_snapshot
from iotda.export.v1 import batch_task_pb2 as bpb

Code = grpc.StatusCode


def create_batch(user, **kw) -> bpb.BatchTask:
    fields = {"task_name": "batch_test", "task_type": "createCommands"}
    fields.update(kw)
    return user.batches.CreateBatchTask(bpb.CreateBatchTaskRequest(project_id=user.project_id, **fields),
                                        metadata=user.metadata).batchtask


def show(user, task_id, **kw) -> bpb.ShowBatchTaskResponse:
    return user.batches.ShowBatchTask(bpb.ShowBatchTaskRequest(project_id=user.project_id, task_id=task_id, **kw),
                                      metadata=user.metadata)


def list_batches(user, **kw) -> bpb.ListBatchTasksResponse:
    return user.batches.ListBatchTasks(bpb.ListBatchTasksRequest(project_id=user.project_id, **kw),
                                       metadata=user.metadata)


def record(user, task_id, results) -> bpb.BatchTask:
    return user.batches.RecordSubtaskResults(bpb.RecordSubtaskResultsRequest(
        project_id=user.project_id, task_id=task_id, results=[
            bpb.SubtaskResult(target=r[0], status=r[1], output=r[2] if len(r) > 2 else "",
                              error=bpb.SubtaskError(error_code=r[3], error_msg=r[4]) if len(r) > 3 else None)
            for r in results]), metadata=user.metadata).batchtask


def delete_batch(user, task_id):
    return user.batches.DeleteBatchTask(bpb.DeleteBatchTaskRequest(project_id=user.project_id, task_id=task_id),
                                        metadata=user.metadata)


def progress(t: bpb.BatchTask) -> dict:
    p = t.task_progress
    return {k: getattr(p, k) for k in ("total", "processing", "success", "fail", "waitting", "fail_wait_retry",
                                       "stopped", "removed") if getattr(p, k)}


def test_create_turns_each_target_into_a_subtask(user):
    targets = [f"dev_{i:02d}" for i in range(25)]
    t = create_batch(user, targets=targets, app_id="app_1", document={"service_id": "svc", "command_name": "on"},
                     task_policy=bpb.TaskPolicy(retry_count=2, retry_interval=10))
    assert re.fullmatch(r"[0-9a-f]{24}", t.task_id)
    assert re.fullmatch(r"\d{8}T\d{6}Z", t.create_time)
    assert (t.status, t.task_type, t.app_id, list(t.targets)) == ("Processing", "createCommands", "app_1", targets)
    assert progress(t) == {"total": 25, "processing": 25}
    assert dict(t.document) == {"service_id": "svc", "command_name": "on"}
    assert (t.task_policy.retry_count, t.task_policy.retry_interval) == (2, 10)
    shown = show(user, t.task_id, limit=50)
    assert shown.page.count == 25 and shown.batchtask.task_id == t.task_id
    assert sorted(d.target for d in shown.task_details) == targets
    assert {d.status for d in shown.task_details} == {"Processing"}
    assert create_batch(user, targets=["x1"]).app_id == "default"  # no app_id: the default resource space


def test_need_confirm_subtasks_wait(user):
    t = create_batch(user, task_type="firmwareUpgrade", need_confirm=True, targets=["d1", "d2", "d3"],
                     task_ext_info={"version": "2.0"})
    assert t.status == "Waitting" and t.need_confirm
    assert progress(t) == {"total": 3, "waitting": 3}
    assert {d.status for d in show(user, t.task_id).task_details} == {"Waitting"}
    # Once sub-tasks start reaching final states the task is running.
    after = record(user, t.task_id, [("d1", "Success", "upgraded")])
    assert after.status == "Processing" and progress(after) == {"total": 3, "waitting": 2, "success": 1}


def test_show_pages_sub_tasks_by_limit_offset_marker_and_filters(user):
    targets = [f"d{i:02d}" for i in range(25)]
    t = create_batch(user, targets=targets)
    record(user, t.task_id, [(f"d{i:02d}", "Success", f"out {i}") for i in range(10)]
           + [(f"d{i:02d}", "Fail", "", "IOTDA.014016", "Device is offline.") for i in range(10, 15)])
    newest_first = list(reversed(targets))

    default = show(user, t.task_id)
    assert [d.target for d in default.task_details] == newest_first[:10] and default.page.count == 25
    seen, marker = [], ""
    for expected in (newest_first[:10], newest_first[10:20], newest_first[20:]):
        page = show(user, t.task_id, limit=10, marker=marker)
        assert [d.target for d in page.task_details] == expected and page.page.count == 25
        seen += expected
        marker = page.page.marker
        assert re.fullmatch(r"[0-9a-f]{24}", marker)
    assert seen == newest_first
    assert not show(user, t.task_id, marker=marker).task_details
    assert [d.target for d in show(user, t.task_id, limit=5, offset=5).task_details] == newest_first[5:10]

    failed = show(user, t.task_id, task_detail_status="Fail", limit=50)
    assert [d.target for d in failed.task_details] == [f"d{i:02d}" for i in range(14, 9, -1)]
    assert failed.page.count == 5
    assert {(d.error.error_code, d.error.error_msg) for d in failed.task_details} == {
        ("IOTDA.014016", "Device is offline.")}
    one = show(user, t.task_id, target="d03")
    assert [(d.target, d.status, d.output) for d in one.task_details] == [("d03", "Success", "out 3")]
    assert one.page.count == 1
    assert show(user, t.task_id, target="d12", task_detail_status="Success").page.count == 0
    assert show(user, t.task_id, task_detail_status="Processing", limit=50).page.count == 10
    assert show(user, t.task_id, target="nobody").page.count == 0
    assert progress(one.batchtask) == {"total": 25, "processing": 10, "success": 10, "fail": 5}


def test_list_by_task_type_status_and_app(server, channel, user):
    commands = [create_batch(user, targets=["a", "b"]) for _ in range(3)]
    updates = [create_batch(user, task_type="updateDevices", app_id="app_x", targets=["a"]) for _ in range(2)]
    record(user, commands[0].task_id, [("a", "Success"), ("b", "Success")])
    stranger = make_user(server, channel)
    create_batch(stranger, targets=["a"])

    listed = list_batches(user, task_type="createCommands")
    assert [t.task_id for t in listed.batchtasks] == [t.task_id for t in reversed(commands)]
    assert listed.page.count == 3 and all(not t.targets for t in listed.batchtasks)
    assert listed.batchtasks[-1].status == "Success" and progress(listed.batchtasks[-1]) == {"total": 2,
                                                                                              "success": 2}
    success = list_batches(user, task_type="createCommands", status="Success")
    assert [t.task_id for t in success.batchtasks] == [commands[0].task_id]
    assert list_batches(user, task_type="createCommands", status="Processing").page.count == 2
    assert [t.task_id for t in list_batches(user, task_type="updateDevices", app_id="app_x").batchtasks] == [
        t.task_id for t in reversed(updates)]
    assert list_batches(user, task_type="updateDevices", app_id="default").page.count == 0
    assert list_batches(user, task_type="firmwareUpgrade").page.count == 0
    first = list_batches(user, task_type="createCommands", limit=2)
    rest = list_batches(user, task_type="createCommands", limit=2, marker=first.page.marker)
    assert [t.task_id for t in [*first.batchtasks, *rest.batchtasks]] == [t.task_id for t in reversed(commands)]
    assert [t.task_id for t in list_batches(user, task_type="createCommands", offset=2).batchtasks] == [
        commands[0].task_id]


def test_delete_only_when_finished_then_not_found(server, user):
    t = create_batch(user, targets=["a", "b"])
    before = store_snapshot(server, user.project_id)
    f = refused(lambda: delete_batch(user, t.task_id), Code.FAILED_PRECONDITION)
    assert f.error_code == "IOTDA.019002" and f.precondition.violations[0].type == "NOT_FINISHED"
    assert store_snapshot(server, user.project_id) == before

    done = record(user, t.task_id, [("a", "Success"), ("b", "Fail", "", "E1", "broken")])
    assert done.status == "PartialSuccess"
    delete_batch(user, t.task_id)
    f = refused(lambda: show(user, t.task_id), Code.NOT_FOUND)
    assert f.error_code == "IOTDA.019001" and f.resource_info.resource_name == t.task_id
    assert refused(lambda: delete_batch(user, t.task_id), Code.NOT_FOUND).error_code == "IOTDA.019001"
    assert refused(lambda: record(user, t.task_id, [("a", "Success")]), Code.NOT_FOUND).error_code == "IOTDA.019001"
    assert store_snapshot(server, user.project_id)["subtasks"] == []
    assert list_batches(user, task_type="createCommands").page.count == 0


def test_another_projects_batch_task_is_not_found(server, channel, user):
    t = create_batch(user, targets=["a"])
    record(user, t.task_id, [("a", "Success")])
    other = make_user(server, channel)
    for call in (lambda: show(other, t.task_id), lambda: delete_batch(other, t.task_id),
                 lambda: record(other, t.task_id, [("a", "Fail")])):
        assert refused(call, Code.NOT_FOUND).error_code == "IOTDA.019001"
    assert show(user, t.task_id).batchtask.status == "Success"


def test_record_results_is_idempotent_and_derives_the_batch_status(server, user):
    t = create_batch(user, targets=["a", "b", "c"])
    results = [("a", "Success", "done"), ("b", "Fail", "", "IOTDA.014111", "Command request timed out.")]
    first = record(user, t.task_id, results)
    assert first.status == "Processing"
    assert progress(first) == {"total": 3, "success": 1, "fail": 1, "processing": 1}
    state = store_snapshot(server, user.project_id)
    shown = show(user, t.task_id, limit=50)
    again = record(user, t.task_id, results)  # the same call, retried
    assert again == first
    assert store_snapshot(server, user.project_id) == state
    assert show(user, t.task_id, limit=50) == shown

    partial = record(user, t.task_id, [("c", "Success", "done")])
    assert partial.status == "PartialSuccess" and progress(partial) == {"total": 3, "success": 2, "fail": 1}

    ok = create_batch(user, targets=["a", "b"])
    assert record(user, ok.task_id, [("a", "FailWaitRetry")]).status == "Processing"  # not final yet
    success = record(user, ok.task_id, [("a", "Success"), ("b", "Success")])
    assert success.status == "Success" and progress(success) == {"total": 2, "success": 2}

    bad = create_batch(user, targets=["a", "b"])
    failed = record(user, bad.task_id, [("a", "Fail", "", "E1", "m1"), ("b", "Fail", "", "E2", "m2")])
    assert failed.status == "Fail" and failed.status_desc and progress(failed) == {"total": 2, "fail": 2}
    errors = {d.target: (d.error.error_code, d.error.error_msg) for d in show(user, bad.task_id).task_details}
    assert errors == {"a": ("E1", "m1"), "b": ("E2", "m2")}


def test_results_of_a_task_without_explicit_targets_add_subtasks(user):
    t = create_batch(user, targets_filter={"group_ids": ["group_1"]})
    assert list(t.targets) == [] and progress(t) == {} and dict(t.targets_filter) == {"group_ids": ["group_1"]}
    after = record(user, t.task_id, [("dev_a", "Success", "ok"), ("dev_b", "Processing")])
    assert progress(after) == {"total": 2, "success": 1, "processing": 1}
    assert sorted(d.target for d in show(user, t.task_id).task_details) == ["dev_a", "dev_b"]
