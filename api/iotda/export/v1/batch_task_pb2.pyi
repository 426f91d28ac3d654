from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from iotda.export.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskPolicy(_message.Message):
    __slots__ = ("schedule_time", "retry_count", "retry_interval")
    SCHEDULE_TIME_FIELD_NUMBER: _ClassVar[int]
    RETRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    RETRY_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    schedule_time: str
    retry_count: int
    retry_interval: int
    def __init__(self, schedule_time: _Optional[str] = ..., retry_count: _Optional[int] = ..., retry_interval: _Optional[int] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("total", "processing", "success", "fail", "waitting", "fail_wait_retry", "stopped", "removed")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAIL_FIELD_NUMBER: _ClassVar[int]
    WAITTING_FIELD_NUMBER: _ClassVar[int]
    FAIL_WAIT_RETRY_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    total: int
    processing: int
    success: int
    fail: int
    waitting: int
    fail_wait_retry: int
    stopped: int
    removed: int
    def __init__(self, total: _Optional[int] = ..., processing: _Optional[int] = ..., success: _Optional[int] = ..., fail: _Optional[int] = ..., waitting: _Optional[int] = ..., fail_wait_retry: _Optional[int] = ..., stopped: _Optional[int] = ..., removed: _Optional[int] = ...) -> None: ...

class BatchTask(_message.Message):
    __slots__ = ("task_id", "task_name", "task_type", "task_mode", "need_confirm", "task_ext_info", "targets", "targets_filter", "document", "task_policy", "status", "status_desc", "task_progress", "create_time", "app_id", "document_source")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_MODE_FIELD_NUMBER: _ClassVar[int]
    NEED_CONFIRM_FIELD_NUMBER: _ClassVar[int]
    TASK_EXT_INFO_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FILTER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    TASK_POLICY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_DESC_FIELD_NUMBER: _ClassVar[int]
    TASK_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_name: str
    task_type: str
    task_mode: str
    need_confirm: bool
    task_ext_info: _struct_pb2.Struct
    targets: _containers.RepeatedScalarFieldContainer[str]
    targets_filter: _struct_pb2.Struct
    document: _struct_pb2.Struct
    task_policy: TaskPolicy
    status: str
    status_desc: str
    task_progress: TaskProgress
    create_time: str
    app_id: str
    document_source: str
    def __init__(self, task_id: _Optional[str] = ..., task_name: _Optional[str] = ..., task_type: _Optional[str] = ..., task_mode: _Optional[str] = ..., need_confirm: _Optional[bool] = ..., task_ext_info: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., targets: _Optional[_Iterable[str]] = ..., targets_filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., document: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., task_policy: _Optional[_Union[TaskPolicy, _Mapping]] = ..., status: _Optional[str] = ..., status_desc: _Optional[str] = ..., task_progress: _Optional[_Union[TaskProgress, _Mapping]] = ..., create_time: _Optional[str] = ..., app_id: _Optional[str] = ..., document_source: _Optional[str] = ...) -> None: ...

class SubtaskError(_message.Message):
    __slots__ = ("error_code", "error_msg")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MSG_FIELD_NUMBER: _ClassVar[int]
    error_code: str
    error_msg: str
    def __init__(self, error_code: _Optional[str] = ..., error_msg: _Optional[str] = ...) -> None: ...

class TaskDetail(_message.Message):
    __slots__ = ("target", "status", "output", "error")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    target: str
    status: str
    output: str
    error: SubtaskError
    def __init__(self, target: _Optional[str] = ..., status: _Optional[str] = ..., output: _Optional[str] = ..., error: _Optional[_Union[SubtaskError, _Mapping]] = ...) -> None: ...

class CreateBatchTaskRequest(_message.Message):
    __slots__ = ("project_id", "app_id", "task_name", "task_type", "task_mode", "need_confirm", "task_ext_info", "targets", "targets_filter", "document", "task_policy", "document_source")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_MODE_FIELD_NUMBER: _ClassVar[int]
    NEED_CONFIRM_FIELD_NUMBER: _ClassVar[int]
    TASK_EXT_INFO_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FILTER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    TASK_POLICY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    app_id: str
    task_name: str
    task_type: str
    task_mode: str
    need_confirm: bool
    task_ext_info: _struct_pb2.Struct
    targets: _containers.RepeatedScalarFieldContainer[str]
    targets_filter: _struct_pb2.Struct
    document: _struct_pb2.Struct
    task_policy: TaskPolicy
    document_source: str
    def __init__(self, project_id: _Optional[str] = ..., app_id: _Optional[str] = ..., task_name: _Optional[str] = ..., task_type: _Optional[str] = ..., task_mode: _Optional[str] = ..., need_confirm: _Optional[bool] = ..., task_ext_info: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., targets: _Optional[_Iterable[str]] = ..., targets_filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., document: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., task_policy: _Optional[_Union[TaskPolicy, _Mapping]] = ..., document_source: _Optional[str] = ...) -> None: ...

class CreateBatchTaskResponse(_message.Message):
    __slots__ = ("batchtask",)
    BATCHTASK_FIELD_NUMBER: _ClassVar[int]
    batchtask: BatchTask
    def __init__(self, batchtask: _Optional[_Union[BatchTask, _Mapping]] = ...) -> None: ...

class ShowBatchTaskRequest(_message.Message):
    __slots__ = ("project_id", "task_id", "task_detail_status", "target", "limit", "marker", "offset")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_DETAIL_STATUS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    task_id: str
    task_detail_status: str
    target: str
    limit: int
    marker: str
    offset: int
    def __init__(self, project_id: _Optional[str] = ..., task_id: _Optional[str] = ..., task_detail_status: _Optional[str] = ..., target: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ShowBatchTaskResponse(_message.Message):
    __slots__ = ("batchtask", "task_details", "page")
    BATCHTASK_FIELD_NUMBER: _ClassVar[int]
    TASK_DETAILS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    batchtask: BatchTask
    task_details: _containers.RepeatedCompositeFieldContainer[TaskDetail]
    page: _common_pb2.Page
    def __init__(self, batchtask: _Optional[_Union[BatchTask, _Mapping]] = ..., task_details: _Optional[_Iterable[_Union[TaskDetail, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.Page, _Mapping]] = ...) -> None: ...

class ListBatchTasksRequest(_message.Message):
    __slots__ = ("project_id", "app_id", "task_type", "status", "limit", "marker", "offset")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    app_id: str
    task_type: str
    status: str
    limit: int
    marker: str
    offset: int
    def __init__(self, project_id: _Optional[str] = ..., app_id: _Optional[str] = ..., task_type: _Optional[str] = ..., status: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ListBatchTasksResponse(_message.Message):
    __slots__ = ("batchtasks", "page")
    BATCHTASKS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    batchtasks: _containers.RepeatedCompositeFieldContainer[BatchTask]
    page: _common_pb2.Page
    def __init__(self, batchtasks: _Optional[_Iterable[_Union[BatchTask, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.Page, _Mapping]] = ...) -> None: ...

class DeleteBatchTaskRequest(_message.Message):
    __slots__ = ("project_id", "task_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    task_id: str
    def __init__(self, project_id: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class DeleteBatchTaskResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubtaskResult(_message.Message):
    __slots__ = ("target", "status", "output", "error")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    target: str
    status: str
    output: str
    error: SubtaskError
    def __init__(self, target: _Optional[str] = ..., status: _Optional[str] = ..., output: _Optional[str] = ..., error: _Optional[_Union[SubtaskError, _Mapping]] = ...) -> None: ...

class RecordSubtaskResultsRequest(_message.Message):
    __slots__ = ("project_id", "task_id", "results")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    task_id: str
    results: _containers.RepeatedCompositeFieldContainer[SubtaskResult]
    def __init__(self, project_id: _Optional[str] = ..., task_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[SubtaskResult, _Mapping]]] = ...) -> None: ...

class RecordSubtaskResultsResponse(_message.Message):
    __slots__ = ("batchtask",)
    BATCHTASK_FIELD_NUMBER: _ClassVar[int]
    batchtask: BatchTask
    def __init__(self, batchtask: _Optional[_Union[BatchTask, _Mapping]] = ...) -> None: ...
