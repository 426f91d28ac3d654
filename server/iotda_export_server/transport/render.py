"""Domain records <-> protobuf messages."""

from __future__ import annotations

import json

from google.protobuf import json_format, struct_pb2

from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import common_pb2 as cpb
from iotda.export.v1 import export_task_pb2 as epb

from ..domain import ids, rules
from ..domain.batches import JSON_FIELDS, CreateBatchRequest, SubtaskResult
from ..domain.errors import invalid
from ..domain.exports import CreateExportRequest, ListExportFilter
from ..domain.model import BatchTask, ExportTask, InvalidResourceCondition, Page, ResourceCondition, Subtask


def export_task(t: ExportTask) -> epb.ExportTask:
    m = epb.ExportTask(
        export_task_id=t.export_task_id, resource_type=t.resource_type,
        resource_condition=epb.ResourceCondition(task_id=t.batch_task_id), export_format=t.export_format,
        status=t.status, export_count=min(t.export_count, 2**31 - 1), progress=t.progress,
        create_time=ids.format_export_time(t.create_time), app_type=t.app_type, file_available=t.file_available)
    if t.end_time is not None:
        m.end_time = ids.format_export_time(t.end_time)
    if t.app_id is not None:
        m.app_id = t.app_id
    if t.status_desc:
        m.status_desc = t.status_desc
    return m


def page(p: Page) -> cpb.Page:
    return cpb.Page(count=p.count, marker=p.marker)


def create_export_request(r: epb.CreateExportTaskRequest) -> CreateExportRequest:
    condition = ResourceCondition(r.resource_condition.task_id) if r.HasField("resource_condition") else None
    return CreateExportRequest(
        resource_type=r.resource_type, resource_condition=condition, export_format=r.export_format,
        app_type=r.app_type, app_id=r.app_id, request_id=r.request_id)


def list_export_filter(r: epb.ListExportTasksRequest) -> ListExportFilter:
    return ListExportFilter(resource_type=r.resource_type, resource_condition=resource_condition(r.resource_condition),
                            app_type=r.app_type, app_id=r.app_id)


def resource_condition(text: str) -> ResourceCondition | InvalidResourceCondition | None:
    """ListExportTasks' resource_condition, JSON text like {"task_id":"<batch task id>"}, read into the
    domain's value: empty text and {} filter nothing. Text that cannot be read is not refused here but
    handed on as an InvalidResourceCondition, so that the domain reports it with the other fields'
    violations in one INVALID_ARGUMENT; the task ID itself the domain checks, as for a create."""
    if not text:
        return None
    if len(text) > rules.MAX_RESOURCE_CONDITION_CHARS:  # before parsing it
        return InvalidResourceCondition(f"must be at most {rules.MAX_RESOURCE_CONDITION_CHARS} characters")
    try:
        cond = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep JSON
        cond = None
    if not isinstance(cond, dict) or set(cond) - {"task_id"} or not isinstance(cond.get("task_id", ""), str):
        return InvalidResourceCondition('must be JSON text like {"task_id":"<batch task id>"}')
    return ResourceCondition(cond["task_id"]) if "task_id" in cond else None


def optional_int(msg, name: str) -> int | None:
    return getattr(msg, name) if msg.HasField(name) else None


def _struct(d: dict | None) -> struct_pb2.Struct | None:
    if d is None:
        return None
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _dict(msg, name: str) -> dict | None:
    """A Struct field as a dict, for the domain's checks. An encoding too large for any value the
    domain accepts is refused first: its size is known at once (C), decoding it is pure Python."""
    if not msg.HasField(name):
        return None
    value = getattr(msg, name)
    if value.ByteSize() > rules.STRUCT_BYTES_PER_JSON_CHAR * JSON_FIELDS[name]:
        raise invalid(name, f"must be at most {JSON_FIELDS[name]} characters of JSON")
    try:
        return json_format.MessageToDict(value)
    except (ValueError, TypeError) as exc:  # a Struct holding NaN/Infinity cannot be rendered back
        raise invalid(name, f"is not valid JSON: {exc}") from None


class Rendered:
    """Renders records once for a page that is cut by size: `size(record)` (for the domain's
    pages.fit) keeps the message it rendered, `get(record)` hands it out for the response."""

    def __init__(self, render):
        self._render = render
        self._messages: dict[int, object] = {}

    def size(self, record) -> int:
        message = self._messages[id(record)] = self._render(record)
        return field_size(message)

    def get(self, record):
        message = self._messages.pop(id(record), None)
        return self._render(record) if message is None else message


def field_size(message) -> int:
    """Bytes `message` takes as one element of a repeated (or singular) message field: its encoding,
    the field's tag (field numbers below 16: one byte) and the length prefix."""
    n = message.ByteSize()
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


def batch_task(t: BatchTask, with_targets: bool = True) -> bpb.BatchTask:
    p = t.progress
    m = bpb.BatchTask(
        task_id=t.task_id, task_name=t.task_name, task_type=t.task_type, task_mode=t.task_mode,
        need_confirm=t.need_confirm, targets=t.targets if with_targets else [], status=t.status,
        status_desc=t.status_desc, create_time=ids.format_batch_time(t.create_time), app_id=t.app_id,
        document_source=t.document_source,
        task_progress=bpb.TaskProgress(total=p.total, processing=p.processing, success=p.success, fail=p.fail,
                                       waitting=p.waitting, fail_wait_retry=p.fail_wait_retry,
                                       stopped=p.stopped, removed=p.removed))
    for name in ("task_ext_info", "targets_filter", "document"):
        s = _struct(getattr(t, name))
        if s is not None:
            getattr(m, name).CopyFrom(s)
    if t.task_policy:
        m.task_policy.CopyFrom(bpb.TaskPolicy(**t.task_policy))
    return m


def subtask(s: Subtask) -> bpb.TaskDetail:
    return bpb.TaskDetail(target=s.target, status=s.status, output=s.output,
                          error=bpb.SubtaskError(error_code=s.error_code, error_msg=s.error_msg))


def create_batch_request(r: bpb.CreateBatchTaskRequest) -> CreateBatchRequest:
    policy = None
    if r.HasField("task_policy"):
        policy = {"schedule_time": r.task_policy.schedule_time, "retry_count": r.task_policy.retry_count,
                  "retry_interval": r.task_policy.retry_interval}
    return CreateBatchRequest(
        app_id=r.app_id, task_name=r.task_name, task_type=r.task_type, task_mode=r.task_mode,
        need_confirm=r.need_confirm, task_ext_info=_dict(r, "task_ext_info"), targets=list(r.targets),
        targets_filter=_dict(r, "targets_filter"), document=_dict(r, "document"), task_policy=policy,
        document_source=r.document_source)


def subtask_results(r: bpb.RecordSubtaskResultsRequest) -> list[SubtaskResult]:
    return [SubtaskResult(target=x.target, status=x.status, output=x.output, error_code=x.error.error_code,
                          error_msg=x.error.error_msg) for x in r.results]
