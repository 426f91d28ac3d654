"""Domain errors: every refusal the service can give, with the platform's error code.

The transport maps each class to a gRPC code and a google.rpc.Status in one place
(transport/errors.py). Codes the platform documents are reused; for refusals it does not document
(export task not found, quotas, download rate), the codes are ours, in the 018xxx/019xxx ranges.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of all refusals. `reason` is the ErrorInfo reason (UPPER_SNAKE)."""

    error_code = "IOTDA.000006"
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, error_code: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        if error_code:
            self.error_code = error_code
        if reason:
            self.reason = reason


class InvalidArgument(DomainError):
    """A request field breaks a documented rule. Names the field(s)."""

    error_code = "IOTDA.000006"
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation, **kw):
        self.violations = [violations] if isinstance(violations, FieldViolation) else list(violations)
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"Invalid input data. {text}", **kw)


def invalid(field_name: str, description: str) -> InvalidArgument:
    return InvalidArgument(FieldViolation(field_name, description))


class LimitOutOfRange(InvalidArgument):
    error_code = "IOTDA.000017"
    reason = "LIMIT_OUT_OF_RANGE"


class BadRequestFormat(DomainError):
    """The request cannot be parsed at all (bad JSON, wrong media type)."""

    error_code = "IOTDA.000008"
    reason = "BAD_REQUEST_FORMAT"


class NotFound(DomainError):
    reason = "NOT_FOUND"

    def __init__(self, resource: str, resource_id: str, *, error_code: str):
        super().__init__(f"The {resource} {resource_id!r} does not exist.", error_code=error_code)
        self.resource = resource
        self.resource_id = resource_id


class ExportTaskNotFound(NotFound):
    def __init__(self, export_task_id: str):
        super().__init__("export task", export_task_id, error_code="IOTDA.018001")


class BatchTaskNotFound(NotFound):
    def __init__(self, task_id: str):
        super().__init__("batch task", task_id, error_code="IOTDA.019001")


class FailedPrecondition(DomainError):
    """The resource is not in a state that allows the operation."""

    reason = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, subject: str, violation_type: str, error_code: str):
        super().__init__(message, error_code=error_code)
        self.subject = subject
        self.violation_type = violation_type


class OutOfRange(DomainError):
    error_code = "IOTDA.000006"
    reason = "OUT_OF_RANGE"

    def __init__(self, field_name: str, description: str):
        super().__init__(f"{field_name}: {description}")
        self.violations = [FieldViolation(field_name, description)]


class QuotaExceeded(DomainError):
    """A per-user count limit (the 5 unfinished exports) is reached."""

    reason = "QUOTA_EXCEEDED"

    def __init__(self, message: str, *, quota_id: str, subject: str, limit: int, error_code: str):
        super().__init__(message, error_code=error_code)
        self.quota_id = quota_id
        self.subject = subject
        self.limit = limit


class RateLimited(DomainError):
    """A per-user rate (one download per 30 s) is reached; says when to retry."""

    reason = "RATE_LIMIT_EXCEEDED"

    def __init__(self, message: str, *, quota_id: str, subject: str, retry_after: float, error_code: str):
        super().__init__(message, error_code=error_code)
        self.quota_id = quota_id
        self.subject = subject
        self.retry_after = retry_after


class DataLoss(DomainError):
    """A result file is damaged (missing, another size, another digest than recorded)."""

    reason = "DATA_LOSS"

    def __init__(self, export_task_id: str, message: str):
        super().__init__(message, error_code=Codes.EXPORT_FILE_DAMAGED)
        self.resource = "export task"
        self.resource_id = export_task_id


class Unauthenticated(DomainError):
    error_code = "IOTDA.000002"
    reason = "UNAUTHENTICATED"

    def __init__(self, message: str = "Request unauthorized: missing or invalid credentials."):
        super().__init__(message)


class PermissionDenied(DomainError):
    error_code = "IOTDA.000003"
    reason = "PERMISSION_DENIED"

    def __init__(self, action: str, detail: str = ""):
        super().__init__(f"Permission denied for action {action}." + (f" {detail}" if detail else ""))
        self.action = action


class Codes:
    """Codes of refusals the platform does not document (ours), named once."""

    EXPORT_UNFINISHED_LIMIT = "IOTDA.018002"
    DOWNLOAD_RATE_LIMIT = "IOTDA.018003"
    EXPORT_FILE_NOT_READY = "IOTDA.018004"
    EXPORT_FILE_DAMAGED = "IOTDA.018005"
    WATCH_STREAMS_LIMIT = "IOTDA.018006"
    DOWNLOADS_LIMIT = "IOTDA.018007"
    BATCH_TASK_NOT_FINISHED = "IOTDA.019002"
    BATCH_TASK_UNKNOWN_TARGET = "IOTDA.019003"
    BATCH_TASK_TOO_MANY_TARGETS = "IOTDA.019004"
    INTERNAL = "IOTDA.000500"
    UNAVAILABLE = "IOTDA.000503"


class StoreUnavailable(Exception):
    """The state cannot be read or written now: the shared database is out of reach (restarting, a
    connection cut or terminated), or, `busy`, the embedded one stayed locked by another writer past
    its wait. A condition that passes, not a fault of the request or of the work it interrupted: the
    transport answers UNAVAILABLE, a worker leaves its export to run again once its lease expires.
    Each store raises it for its own driver's errors of that kind (store/sqlite.py, store/postgres.py),
    so nothing above the store knows a driver. The message is for the log (it may name the database's
    host, never a password); callers answer with their own words."""

    def __init__(self, message: str, busy: bool = False):
        super().__init__(message)
        self.busy = busy


def passes(exc: BaseException) -> bool:
    """A failure that passes by itself (the database or the files' store out of reach): background
    loops log it as one line and retry; anything else they log with its traceback."""
    return isinstance(exc, (StoreUnavailable, FilesUnavailable))


class FilesUnavailable(Exception):
    """The result files' store cannot be reached now (an object store down, timing out, refusing):
    a condition that passes, not a fault of the request; the transport answers UNAVAILABLE with this
    message, which names the store and the failure but never a credential."""
