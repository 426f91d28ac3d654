from google.api import annotations_pb2 as _annotations_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from iotda.export.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResourceCondition(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ExportTask(_message.Message):
    __slots__ = ("export_task_id", "resource_type", "resource_condition", "export_format", "status", "export_count", "progress", "create_time", "end_time", "app_type", "app_id", "status_desc", "file_available")
    EXPORT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_CONDITION_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    APP_TYPE_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_DESC_FIELD_NUMBER: _ClassVar[int]
    FILE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    export_task_id: str
    resource_type: str
    resource_condition: ResourceCondition
    export_format: str
    status: str
    export_count: int
    progress: int
    create_time: str
    end_time: str
    app_type: str
    app_id: str
    status_desc: str
    file_available: bool
    def __init__(self, export_task_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_condition: _Optional[_Union[ResourceCondition, _Mapping]] = ..., export_format: _Optional[str] = ..., status: _Optional[str] = ..., export_count: _Optional[int] = ..., progress: _Optional[int] = ..., create_time: _Optional[str] = ..., end_time: _Optional[str] = ..., app_type: _Optional[str] = ..., app_id: _Optional[str] = ..., status_desc: _Optional[str] = ..., file_available: _Optional[bool] = ...) -> None: ...

class CreateExportTaskRequest(_message.Message):
    __slots__ = ("project_id", "resource_type", "resource_condition", "export_format", "app_type", "app_id", "request_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_CONDITION_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    APP_TYPE_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    resource_type: str
    resource_condition: ResourceCondition
    export_format: str
    app_type: str
    app_id: str
    request_id: str
    def __init__(self, project_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_condition: _Optional[_Union[ResourceCondition, _Mapping]] = ..., export_format: _Optional[str] = ..., app_type: _Optional[str] = ..., app_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateExportTaskResponse(_message.Message):
    __slots__ = ("export_task",)
    EXPORT_TASK_FIELD_NUMBER: _ClassVar[int]
    export_task: ExportTask
    def __init__(self, export_task: _Optional[_Union[ExportTask, _Mapping]] = ...) -> None: ...

class ListExportTasksRequest(_message.Message):
    __slots__ = ("project_id", "limit", "marker", "offset", "resource_type", "resource_condition", "app_type", "app_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_CONDITION_FIELD_NUMBER: _ClassVar[int]
    APP_TYPE_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    limit: int
    marker: str
    offset: int
    resource_type: str
    resource_condition: str
    app_type: str
    app_id: str
    def __init__(self, project_id: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ..., offset: _Optional[int] = ..., resource_type: _Optional[str] = ..., resource_condition: _Optional[str] = ..., app_type: _Optional[str] = ..., app_id: _Optional[str] = ...) -> None: ...

class ListExportTasksResponse(_message.Message):
    __slots__ = ("export_tasks", "page")
    EXPORT_TASKS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    export_tasks: _containers.RepeatedCompositeFieldContainer[ExportTask]
    page: _common_pb2.Page
    def __init__(self, export_tasks: _Optional[_Iterable[_Union[ExportTask, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.Page, _Mapping]] = ...) -> None: ...

class ShowExportTaskRequest(_message.Message):
    __slots__ = ("project_id", "export_task_id", "offset", "limit")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    export_task_id: str
    offset: int
    limit: int
    def __init__(self, project_id: _Optional[str] = ..., export_task_id: _Optional[str] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ShowExportTaskResponse(_message.Message):
    __slots__ = ("body", "offset", "file_name", "total_size", "sha256")
    BODY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    body: _httpbody_pb2.HttpBody
    offset: int
    file_name: str
    total_size: int
    sha256: str
    def __init__(self, body: _Optional[_Union[_httpbody_pb2.HttpBody, _Mapping]] = ..., offset: _Optional[int] = ..., file_name: _Optional[str] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class DeleteExportTaskRequest(_message.Message):
    __slots__ = ("project_id", "export_task_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    export_task_id: str
    def __init__(self, project_id: _Optional[str] = ..., export_task_id: _Optional[str] = ...) -> None: ...

class DeleteExportTaskResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetExportTaskRequest(_message.Message):
    __slots__ = ("project_id", "export_task_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    export_task_id: str
    def __init__(self, project_id: _Optional[str] = ..., export_task_id: _Optional[str] = ...) -> None: ...

class GetExportTaskResponse(_message.Message):
    __slots__ = ("export_task",)
    EXPORT_TASK_FIELD_NUMBER: _ClassVar[int]
    export_task: ExportTask
    def __init__(self, export_task: _Optional[_Union[ExportTask, _Mapping]] = ...) -> None: ...

class WatchProgressRequest(_message.Message):
    __slots__ = ("project_id", "export_task_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    export_task_id: str
    def __init__(self, project_id: _Optional[str] = ..., export_task_id: _Optional[str] = ...) -> None: ...

class WatchProgressResponse(_message.Message):
    __slots__ = ("export_task", "sequence", "heartbeat")
    EXPORT_TASK_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    export_task: ExportTask
    sequence: int
    heartbeat: bool
    def __init__(self, export_task: _Optional[_Union[ExportTask, _Mapping]] = ..., sequence: _Optional[int] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class CancelExportTaskRequest(_message.Message):
    __slots__ = ("project_id", "export_task_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    export_task_id: str
    def __init__(self, project_id: _Optional[str] = ..., export_task_id: _Optional[str] = ...) -> None: ...

class CancelExportTaskResponse(_message.Message):
    __slots__ = ("export_task",)
    EXPORT_TASK_FIELD_NUMBER: _ClassVar[int]
    export_task: ExportTask
    def __init__(self, export_task: _Optional[_Union[ExportTask, _Mapping]] = ...) -> None: ...
