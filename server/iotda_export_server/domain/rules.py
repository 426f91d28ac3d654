"""The seed's rules and the platform's limits, in one place.

Source: the platform's "Create an Export Task" page and its sibling pages (see README, "Rules").
"""

from __future__ import annotations

# Per user ("Each user can create up to 50 export tasks. Creating additional tasks will remove the
# earliest ones.")
MAX_EXPORT_TASKS_PER_USER = 50
# Per user ("Each user can have up to five unfinished export tasks at a time.")
MAX_UNFINISHED_EXPORT_TASKS_PER_USER = 5
# Per user ("File downloads are limited to one request every 30 seconds per user.")
DOWNLOAD_INTERVAL_SECONDS = 30.0
# Resuming the last counted download (offset > 0, same file) does not count again, but only a few
# times, each from further on, within a while: an interrupted transfer can finish, a loop cannot
# fetch the file over and over.
DOWNLOAD_FREE_RESUMES = 3
DOWNLOAD_RESUME_WINDOW_SECONDS = 600.0

# Export-task statuses (the platform spells the failure "Failed", unlike batch tasks' "Fail").
STATUS_PROCESSING = "Processing"
STATUS_SUCCESS = "Success"
STATUS_FAILED = "Failed"

RESOURCE_TYPE_BATCH_TASK = "BatchTask"
EXPORT_FORMAT_XLS = "xls"
APP_TYPE_GLOBAL = "GLOBAL"
APP_TYPE_APP = "APP"
# The resource space that "APP without app_id" and batch tasks created without app_id belong to.
DEFAULT_APP_ID = "default"

# Progress: 1 while queued, up to 99 while running, 100 only at Success.
PROGRESS_QUEUED = 1
PROGRESS_MAX_RUNNING = 99
PROGRESS_DONE = 100

# An export is tried this many times (crashes, lost workers) before it is marked Failed.
MAX_EXPORT_ATTEMPTS = 3

# Lists: limit 1–50 (default 10), offset 0–500 (default 0), marker 24 hex (default f×24).
LIST_LIMIT_MIN, LIST_LIMIT_MAX, LIST_LIMIT_DEFAULT = 1, 50, 10
LIST_OFFSET_MAX = 500
MARKER_DEFAULT = "f" * 24
# A page also stops before its encoded records pass this many bytes, always holding at least one; its
# marker is its last record, so the next call goes on from there. ShowBatchTask counts the task itself,
# then its sub-task details. Under the 4 MiB that gRPC clients receive by default (grpcio, grpc-js,
# grpcurl), with room for the one record a page always holds (a batch task without its targets is at
# most ~0.5 MB) and the envelope.
LIST_PAGE_BUDGET_BYTES = 3 * 1024 * 1024

# Batch tasks: types and statuses.
BATCH_TASK_TYPES = (
    "softwareUpgrade", "firmwareUpgrade", "moduleUpgrade", "createDevices", "deleteDevices",
    "freezeDevices", "unfreezeDevices", "createCommands", "createAsyncCommands", "createMessages",
    "updateDeviceShadows", "updateDevices", "changeGateway",
)
UPGRADE_TASK_TYPES = ("softwareUpgrade", "firmwareUpgrade", "moduleUpgrade")
BATCH_STATUSES = (
    "Initializing", "Waitting", "Processing", "Success", "Fail", "PartialSuccess", "Stopped", "Stopping",
)
BATCH_FINISHED_STATUSES = ("Success", "Fail", "PartialSuccess", "Stopped")
SUBTASK_STATUSES = ("Waitting", "Processing", "Success", "Fail", "FailWaitRetry", "Stopped", "Removed")
# Sub-task statuses after which nothing more happens to it.
SUBTASK_FINAL_STATUSES = ("Success", "Fail", "Stopped", "Removed")

# Sub-tasks of a batch task (the platform's 30,000 targets), also those RecordSubtaskResults adds to a
# task created without a fixed target list (targets_filter, document_source): counted under the task's lock.
MAX_BATCH_TARGETS = 30_000
# RecordSubtaskResults: results per call.
MAX_RECORDED_RESULTS_PER_CALL = 10_000
# A recorded result's output text, in characters.
MAX_OUTPUT_CHARS = 32_767
# A recorded result's error_code, and its error_msg, in characters each.
MAX_ERROR_FIELD_CHARS = 1_024
# The JSON fields of a batch task (a Struct over gRPC, an object over HTTP) are measured in characters
# of their compact JSON text (json.dumps(..., ensure_ascii=False, separators=(",", ":"))).
# task_ext_info: the platform's 512 characters.
MAX_TASK_EXT_INFO_CHARS = 512
# document: ours (the platform caps a shadow document at 10 KB and names no limit for other payloads).
MAX_DOCUMENT_CHARS = 64 * 1024
# targets_filter: room for MAX_TARGET_GROUPS group IDs of 128 characters.
MAX_TARGETS_FILTER_CHARS = 16 * 1024
# targets_filter.group_ids: at most this many (the platform names no limit; 100 as its other target lists).
MAX_TARGET_GROUPS = 100
# Nesting of objects and arrays in one of those fields, the field's own object being depth 1.
MAX_JSON_DEPTH = 12
# A Struct's protobuf encoding is at most 5.5 times its compact JSON text (an array of numbers: "0," is
# 2 characters, 11 bytes encoded). The transport refuses an encoding over this many bytes per allowed
# character before decoding it (decoding a Struct is pure Python: seconds for a few megabytes).
STRUCT_BYTES_PER_JSON_CHAR = 6
# ListExportTasks' resource_condition filter: JSON text like {"task_id":"<24 hex>"}.
MAX_RESOURCE_CONDITION_CHARS = 256

# Download chunks: gRPC messages stay well under the 4 MiB default.
DOWNLOAD_CHUNK_BYTES = 64 * 1024
# WatchProgress repeats the latest state after this long without a change (the proto's promise).
WATCH_HEARTBEAT_SECONDS = 15.0
# Per user and per server process (each replica counts its own): WatchProgress streams open at once;
# one more is refused before its first message. Default of `serve --max-watch-streams-per-user`.
MAX_WATCH_STREAMS_PER_USER = 100
# Per user and per server process: downloads (ShowExportTask streams, resumes included) at once; one
# more is refused before it is admitted. Default of `serve --max-downloads-per-user`.
MAX_DOWNLOADS_PER_USER = 2

# Result files in an S3-compatible object store (store/s3files.py). Multipart parts of this size leave
# the worker as the zip is written (S3's minimum is 5 MiB): with one part queued and one in flight, an
# upload holds at most three parts in memory whatever the file's size.
S3_PART_BYTES = 8 * 1024 * 1024
# A download reads the object with ranged GETs of at most this many bytes, each one short-lived.
S3_READ_WINDOW_BYTES = 8 * 1024 * 1024
# Seconds to connect to the store and to wait for its answer; standard retries, this many attempts.
S3_CONNECT_TIMEOUT_SECONDS = 5.0
S3_READ_TIMEOUT_SECONDS = 30.0
S3_MAX_ATTEMPTS = 3
# How often every process sweeps orphaned result files (objects no task records, uploads no live run
# owns); the grace (twice the lease) spares what another host's worker is writing now.
FILES_SWEEP_SECONDS = 300.0
