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

# Batch tasks.
MAX_BATCH_TARGETS = 30_000
MAX_RECORDED_RESULTS_PER_CALL = 10_000
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

# Download chunks: gRPC messages stay well under the 4 MiB default.
DOWNLOAD_CHUNK_BYTES = 64 * 1024
# WatchProgress repeats the latest state after this long without a change (the proto's promise).
WATCH_HEARTBEAT_SECONDS = 15.0
