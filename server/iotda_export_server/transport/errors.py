"""Domain errors -> gRPC status with google.rpc details, in one place.

Every status carries ErrorInfo (reason, domain, and the platform's code in metadata["error_code"]),
plus the fitting detail: BadRequest for field violations, QuotaFailure for limits, RetryInfo for
rates, PreconditionFailure for state. Sent with grpcio-status so any client can unpack it.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain import errors as e

ERROR_DOMAIN = "iotda-export.iotda.v5"
log = logging.getLogger("iotda_export.rpc")

_CODES: list[tuple[type, grpc.StatusCode]] = [
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (e.BadRequestFormat, grpc.StatusCode.INVALID_ARGUMENT),
    (e.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (e.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (e.DataLoss, grpc.StatusCode.DATA_LOSS),
]


def grpc_code(err: e.DomainError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def to_status(err: e.DomainError) -> status_pb2.Status:
    code = grpc_code(err)
    metadata = {"error_code": err.error_code}
    details = []
    if isinstance(err, (e.InvalidArgument, e.OutOfRange)):
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in err.violations]))
    elif isinstance(err, e.QuotaExceeded):
        metadata["limit"] = str(err.limit)
        details.append(error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(
            subject=err.subject, description=err.message)]))
    elif isinstance(err, e.RateLimited):
        metadata["retry_after_seconds"] = f"{err.retry_after:.3f}"
        details.append(error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(
            subject=err.subject, description=err.message)]))
        seconds = max(err.retry_after, 0.0)
        details.append(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
            seconds=int(seconds), nanos=int((seconds % 1) * 1e9))))
    elif isinstance(err, e.FailedPrecondition):
        details.append(error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(type=err.violation_type, subject=err.subject,
                                                            description=err.message)]))
    elif isinstance(err, (e.NotFound, e.DataLoss)):
        details.append(error_details_pb2.ResourceInfo(resource_type=err.resource, resource_name=err.resource_id))
    elif isinstance(err, e.PermissionDenied):
        metadata["action"] = err.action
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=metadata)
    return status_pb2.Status(code=code.value[0], message=err.message,
                             details=[_pack(info)] + [_pack(d) for d in details])


class Internal(e.DomainError):
    error_code = e.Codes.INTERNAL
    reason = "INTERNAL"


class Unavailable(e.DomainError):
    error_code = e.Codes.UNAVAILABLE
    reason = "UNAVAILABLE"


_CODES.append((Unavailable, grpc.StatusCode.UNAVAILABLE))


def from_exception(exc: BaseException, request_id: str) -> e.DomainError:
    """Anything the domain did not refuse on purpose: logged with its traceback, answered without it."""
    if isinstance(exc, e.DomainError):
        return exc
    if isinstance(exc, e.FilesUnavailable):  # its message names the store and the failure, no secret
        log.warning("result files unavailable (request %s): %s", request_id, exc)
        return Unavailable(f"The result files cannot be read now: {exc}; retry shortly.")
    if isinstance(exc, e.StoreUnavailable):  # the store's words are for the log (they may name a host)
        log.warning("%s (request %s)", exc, request_id)
        return Unavailable("The service is busy; retry shortly." if exc.busy
                           else "The database is unavailable; retry shortly.")
    log.exception("unexpected error (request %s)", request_id)
    return Internal(f"Internal error (request {request_id}).")


async def abort(context: grpc.aio.ServicerContext, err: e.DomainError, request_id: str | None = None) -> None:
    status = to_status(err)
    trailing = rpc_status.to_status(status).trailing_metadata
    if request_id:
        trailing = (*trailing, ("x-request-id", request_id))
    await context.abort(grpc_code(err), status.message, trailing)


assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
