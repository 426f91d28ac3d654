"""Python clients of iotda-export (gRPC): ExportClient (sync) and AsyncExportClient (asyncio).

    from iotda_export_client import ExportClient, load_credentials

    creds = load_credentials()                       # flags > environment > ./data/credentials.json
    with ExportClient(creds.address, creds.token, creds.project_id) as client:
        task = client.create_export(batch_task_id)
        for event in client.watch(task.export_task_id):
            print(event.export_task.status, event.export_task.progress)
        client.download(task.export_task_id, "export.zip")

    # TLS: an https:// address (the system's CAs), or a CA file; mutual TLS adds a client certificate.
    ExportClient("https://export.example:50443", token, project, tls=TlsSettings(ca="certs/ca.crt"))

Every method returns the protobuf messages of `iotda.export.v1` and raises a subclass of
`ExportApiError` by gRPC code (with the platform's `IOTDA.xxxxxx` code, the request id, the field
violations and the retry delay parsed from the google.rpc.Status the server sends) when the server
refuses a call, or `ServerUnreachable` when there is no server to ask. This package imports nothing
of the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import batch_task_pb2_grpc as bpb_grpc
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc as epb_grpc

from .addresses import DEFAULT_ADDRESS, check_address
from .tls import TlsFileError, TlsSettings, explain, open_channel, settings_from

__all__ = [
    "DEFAULT_ADDRESS", "DEFAULT_CREDENTIALS_FILE", "AlreadyExists", "AsyncExportClient", "AsyncResponseStream",
    "Credentials", "CredentialsError",
    "DownloadError", "ExportApiError", "ExportClient", "FailedPrecondition", "InvalidArgument", "NotFound",
    "PermissionDenied", "ResourceExhausted", "ResponseStream", "ServerUnreachable", "ServiceUnavailable",
    "TlsError", "TlsFileError", "TlsSettings", "Unauthenticated", "check_address", "load_credentials",
]

# Written by the server on its first start with the default data directory (./data).
DEFAULT_CREDENTIALS_FILE = os.path.join("data", "credentials.json")
PARTIAL_SUFFIX = ".part"

ENV_ADDRESS = "IOTDA_EXPORT_ADDRESS"
ENV_TOKEN = "IOTDA_EXPORT_TOKEN"
ENV_PROJECT = "IOTDA_EXPORT_PROJECT"
ENV_INSTANCE_ID = "IOTDA_EXPORT_INSTANCE_ID"
ENV_CREDENTIALS = "IOTDA_EXPORT_CREDENTIALS"

_LIST_FILTERS = ("resource_type", "resource_condition", "task_id", "app_type", "app_id")


# -- errors --------------------------------------------------------------------------------------

class ExportApiError(Exception):
    """A refused call: the gRPC status plus the details of its google.rpc.Status.

    Raised as the subclass of its gRPC code (InvalidArgument, Unauthenticated, PermissionDenied,
    NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted, ServiceUnavailable, or
    ServerUnreachable when no server answered); this class for any other code.

    Attributes: `code` (grpc.StatusCode), `message`, `error_code` (the platform's IOTDA.xxxxxx from
    ErrorInfo.metadata["error_code"], or None), `request_id` (the server's x-request-id of the call:
    quote it when reporting a problem; None when no server answered), `reason` (ErrorInfo.reason),
    `domain`, `metadata` (ErrorInfo.metadata), `field_violations` (list of (field, description) from
    BadRequest), `retry_after` (seconds from RetryInfo, or None), `quota_violations` (list of
    (subject, description) from QuotaFailure), `precondition_violations` (list of (type, subject,
    description)), `details` (every unpacked detail message)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, error_code: str | None = None,
                 request_id: str | None = None,
                 reason: str | None = None, domain: str | None = None, metadata: Mapping[str, str] | None = None,
                 field_violations: list[tuple[str, str]] | None = None, retry_after: float | None = None,
                 quota_violations: list[tuple[str, str]] | None = None,
                 precondition_violations: list[tuple[str, str, str]] | None = None,
                 details: list[Any] | None = None):
        self.code = code
        self.message = message
        self.error_code = error_code
        self.request_id = request_id
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])
        self.retry_after = retry_after
        self.quota_violations = list(quota_violations or [])
        self.precondition_violations = list(precondition_violations or [])
        self.details = list(details or [])
        super().__init__(self.summary())

    @property
    def code_name(self) -> str:
        return self.code.name if isinstance(self.code, grpc.StatusCode) else str(self.code)

    def summary(self) -> str:
        """`<grpc code name> <IOTDA code>: <message>` (the CLI's error line)."""
        head = self.code_name + (f" {self.error_code}" if self.error_code else "")
        return f"{head}: {self.message}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code_name}, error_code={self.error_code!r}, "
                f"request_id={self.request_id!r}, reason={self.reason!r}, message={self.message!r})")

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, address: str = "", secured: bool = False) -> "ExportApiError":
        """Reads a failed call (unary or stream) with grpc_status.rpc_status.from_call. `secured`:
        whether the channel spoke TLS (it decides what a failed connection means)."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = (err.details() if hasattr(err, "details") else None) or str(err)
        try:
            status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
        except ValueError:  # the details disagree with the status line: keep the status line
            status = None
        request_id = _request_id(err)
        if status is None:
            if code == grpc.StatusCode.UNAVAILABLE and address and request_id is None:
                # No google.rpc.Status: the transport's verdict (refused, unresolvable, a failed TLS
                # handshake), not the service's.
                explanation = explain(message, secured)
                if explanation is not None:
                    return TlsError(code, message, address=address, explanation=explanation)
                return ServerUnreachable(code, message, address=address)
            return _ERRORS_BY_CODE.get(code, cls)(code, message, request_id=request_id)
        fields: dict[str, Any] = {"field_violations": [], "quota_violations": [],
                                  "precondition_violations": [], "details": [], "request_id": request_id}
        for any_msg in status.details:
            for detail_type in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest,
                                error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure,
                                error_details_pb2.PreconditionFailure, error_details_pb2.ResourceInfo,
                                error_details_pb2.Help, error_details_pb2.LocalizedMessage,
                                error_details_pb2.DebugInfo, error_details_pb2.RequestInfo):
                if any_msg.Is(detail_type.DESCRIPTOR):
                    detail = detail_type()
                    any_msg.Unpack(detail)
                    fields["details"].append(detail)
                    break
            else:
                fields["details"].append(any_msg)
                continue
            if isinstance(detail, error_details_pb2.ErrorInfo):
                fields["reason"], fields["domain"] = detail.reason, detail.domain
                fields["metadata"] = dict(detail.metadata)
                fields["error_code"] = detail.metadata.get("error_code") or None
            elif isinstance(detail, error_details_pb2.BadRequest):
                fields["field_violations"] += [(v.field, v.description) for v in detail.field_violations]
            elif isinstance(detail, error_details_pb2.RetryInfo):
                fields["retry_after"] = round(detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9, 3)
            elif isinstance(detail, error_details_pb2.QuotaFailure):
                fields["quota_violations"] += [(v.subject, v.description) for v in detail.violations]
            elif isinstance(detail, error_details_pb2.PreconditionFailure):
                fields["precondition_violations"] += [(v.type, v.subject, v.description) for v in detail.violations]
        return _ERRORS_BY_CODE.get(code, cls)(code, status.message or message, **fields)


def _request_id(err: grpc.RpcError) -> str | None:
    """The x-request-id the server sent with the status (or, for a stream, at its start)."""
    for getter in ("trailing_metadata", "initial_metadata"):
        try:
            for key, value in (getattr(err, getter)() or ()) if hasattr(err, getter) else ():
                if key == "x-request-id" and isinstance(value, str):
                    return value
        except Exception:  # noqa: BLE001 - a call that never started has no metadata to read
            continue
    return None


class InvalidArgument(ExportApiError):
    """INVALID_ARGUMENT or OUT_OF_RANGE: the request breaks a rule; `field_violations` say where."""


class Unauthenticated(ExportApiError):
    """UNAUTHENTICATED: no token, or one the server does not know (IOTDA.000002)."""


class PermissionDenied(ExportApiError):
    """PERMISSION_DENIED: the principal may not do this here (IOTDA.000003 and the like)."""


class NotFound(ExportApiError):
    """NOT_FOUND: no such export or batch task of this caller (IOTDA.018001, IOTDA.019001)."""


class AlreadyExists(ExportApiError):
    """ALREADY_EXISTS."""


class FailedPrecondition(ExportApiError):
    """FAILED_PRECONDITION: not now in the task's state (e.g. no file yet, an unfinished batch task)."""


class ResourceExhausted(ExportApiError):
    """RESOURCE_EXHAUSTED: a quota or rate limit; `retry_after` says when to try again, if known."""


class ServiceUnavailable(ExportApiError):
    """UNAVAILABLE from the service itself (busy, restarting, its database away): retry shortly."""


class ServerUnreachable(ExportApiError):
    """No server answered at `address` (connection refused, name not resolved, connection lost)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, address: str):
        self.address = address
        super().__init__(code, message)

    def summary(self) -> str:
        return f"cannot reach the server at {self.address} ({self.code_name}: {self.message})"


class TlsError(ServerUnreachable):
    """The connection failed on TLS (untrusted or expired server certificate, a name it does not
    hold, a missing or refused client certificate, TLS on one side only): `explanation` says what
    to fix; `message` keeps gRPC's own words."""

    def __init__(self, code: grpc.StatusCode, message: str, *, address: str, explanation: str):
        self.explanation = explanation
        super().__init__(code, message, address=address)

    def summary(self) -> str:
        return f"cannot connect to {self.address}: {self.explanation}"


_ERRORS_BY_CODE: dict[grpc.StatusCode, type[ExportApiError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument, grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated, grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound, grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition, grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
}


class DownloadError(Exception):
    """The downloaded bytes do not match the size or sha256 the server announced (the partial file
    is removed), or a resume was asked for without a usable partial file."""


class CredentialsError(Exception):
    """No usable credentials (token, project) could be found, or a credentials file is unreadable."""


# -- credentials ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Credentials:
    address: str
    token: str
    project_id: str
    instance_id: str | None = None
    # TLS files (flags --tls-ca, --tls-cert, --tls-key, or IOTDA_EXPORT_TLS_CA/CLIENT_CERT/CLIENT_KEY);
    # None: TLS only when the address is https://, verified with the system's roots.
    tls: TlsSettings | None = None
    # Where each value came from: "flag", "env", or a file path.
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)


def _read_credentials_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise CredentialsError(f"credentials file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CredentialsError(f"cannot read credentials file {path}: {e}") from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"credentials file {path} does not hold a JSON object")
    return doc


def load_credentials(address: str | None = None, token: str | None = None, project_id: str | None = None,
                     instance_id: str | None = None, credentials_file: str | os.PathLike | None = None, *,
                     env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                     require_token: bool = True, tls_ca: str | None = None, tls_cert: str | None = None,
                     tls_key: str | None = None) -> Credentials:
    """Resolves where and as whom to call, value by value, first found wins:

    1. flags: the explicit arguments, then the file named by `credentials_file` (--credentials);
    2. environment: IOTDA_EXPORT_ADDRESS, IOTDA_EXPORT_TOKEN, IOTDA_EXPORT_PROJECT,
       IOTDA_EXPORT_INSTANCE_ID, then the file named by IOTDA_EXPORT_CREDENTIALS;
    3. ./data/credentials.json (what the server writes on its first start), relative to `cwd`;
    4. the address defaults to 127.0.0.1:50051.

    TLS: `tls_ca`, `tls_cert`, `tls_key`, else IOTDA_EXPORT_TLS_CA, IOTDA_EXPORT_CLIENT_CERT,
    IOTDA_EXPORT_CLIENT_KEY; an https:// address uses TLS with the system's roots without them. With
    a client certificate no token is required, and none is taken from ./data/credentials.json (a
    token given otherwise still wins over the certificate on the server).

    A credentials file holds the keys user, project_id, token (ak, sk; optionally address and
    instance_id). A file named by a flag or the environment must exist; the default one is optional.
    Raises CredentialsError when no token or project is found (unless require_token=False)."""
    env = os.environ if env is None else env
    base = pathlib.Path(cwd) if cwd is not None else pathlib.Path.cwd()
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("flag", {"address": address, "token": token, "project_id": project_id, "instance_id": instance_id})]
    if credentials_file:
        path = str(base / os.fspath(credentials_file))
        layers.append((path, _read_credentials_file(path)))
    layers.append(("env", {"address": env.get(ENV_ADDRESS), "token": env.get(ENV_TOKEN),
                           "project_id": env.get(ENV_PROJECT), "instance_id": env.get(ENV_INSTANCE_ID)}))
    if env.get(ENV_CREDENTIALS):
        path = str(base / env[ENV_CREDENTIALS])
        layers.append((path, _read_credentials_file(path)))
    tls = settings_from(tls_ca, tls_cert, tls_key, env)
    # Mutual TLS: a client certificate bound to a principal stands for the token (the project stays
    # needed), so the token of ./data/credentials.json, found only by being there, is not picked up.
    token_optional = tls is not None and bool(tls.cert)
    default_file = base / DEFAULT_CREDENTIALS_FILE
    if default_file.is_file():
        document = _read_credentials_file(str(default_file))
        if token_optional:
            document = {k: v for k, v in document.items() if k != "token"}
        layers.append((str(default_file), document))

    values: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    for key in ("address", "token", "project_id", "instance_id"):
        for source, layer in layers:
            value = layer.get(key)
            if isinstance(value, str) and value.strip():
                values[key], sources[key] = value.strip(), source
                break
        else:
            values[key] = None
    if values["address"] is None:
        values["address"], sources["address"] = DEFAULT_ADDRESS, "default"
    try:
        check_address(values["address"])
    except ValueError as e:
        where = {"flag": "--address", "env": ENV_ADDRESS}.get(sources["address"], sources["address"])
        raise CredentialsError(f"the address from {where}: {e}") from None
    if require_token and not token_optional and not values["token"]:
        raise CredentialsError(
            "no credentials: pass --token and --project or --credentials FILE, set IOTDA_EXPORT_TOKEN and"
            " IOTDA_EXPORT_PROJECT or IOTDA_EXPORT_CREDENTIALS, or run where ./data/credentials.json is")
    if require_token and not values["project_id"]:
        raise CredentialsError("no project: pass --project, set IOTDA_EXPORT_PROJECT, or use a credentials"
                               " file with a project_id")
    return Credentials(address=values["address"], token=values["token"] or "",
                       project_id=values["project_id"] or "", instance_id=values["instance_id"],
                       tls=tls, sources=sources)


# -- streams -------------------------------------------------------------------------------------

class ResponseStream(Iterator):
    """A server stream whose failures arrive as ExportApiError; `cancel()` (or leaving a `with`
    block) ends it early."""

    def __init__(self, call, address: str, secured: bool = False):
        self._call = call
        self._address = address
        self._secured = secured

    def __iter__(self) -> "ResponseStream":
        return self

    def __next__(self):
        try:
            return next(self._call)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED and self._call.cancelled():
                raise StopIteration from None  # we cancelled it ourselves
            raise ExportApiError.from_rpc_error(err, self._address, self._secured) from None

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> "ResponseStream":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


# -- the client ----------------------------------------------------------------------------------

def _struct(value: Mapping | struct_pb2.Struct | None) -> struct_pb2.Struct | None:
    if value is None or isinstance(value, struct_pb2.Struct):
        return value
    s = struct_pb2.Struct()
    s.update(dict(value))
    return s


class _Calls:
    """The calls both clients make, written once: each builds its request and hands it to `_unary`
    with what to take from the answer. ExportClient's `_unary` returns the value; AsyncExportClient's
    returns a coroutine of it, so each method here is sync in one and awaitable in the other."""

    def __init__(self, address: str, token: str, project_id: str, instance_id: str | None, timeout: float,
                 channel, secured: bool):
        self.address = address
        self.secured = secured  # the channel speaks TLS (it decides what a failed connection means)
        self.project_id = project_id
        self.instance_id = instance_id or None
        self.timeout = timeout
        # No token: a client certificate bound to a principal authenticates (mutual TLS).
        metadata = [("authorization", f"Bearer {token}")] if token else []
        if self.instance_id:
            metadata.append(("instance-id", self.instance_id))
        self.metadata = tuple(metadata)
        self.channel = channel
        self.exports = epb_grpc.ExportTaskServiceStub(channel)
        self.batches = bpb_grpc.BatchTaskServiceStub(channel)

    @classmethod
    def from_credentials(cls, creds: Credentials, **kw):
        kw.setdefault("tls", creds.tls)
        return cls(creds.address, creds.token, creds.project_id, creds.instance_id, **kw)

    def _unary(self, method, request, answer: Callable[[Any], Any] = lambda r: r):
        raise NotImplementedError

    @staticmethod
    def partial_path(dest_path: str | os.PathLike) -> str:
        """Where download() keeps the bytes of `dest_path` until they are complete and verified."""
        return os.fspath(dest_path) + PARTIAL_SUFFIX

    # -- export tasks ----------------------------------------------------------------------------

    def create_export(self, task_id: str, app_type: str = "", app_id: str = "", request_id: str = "", *,
                      resource_type: str = "BatchTask", export_format: str = "xls") -> epb.ExportTask:
        """Creates an export of batch task `task_id` (or re-runs the same conditions); the task."""
        return self._unary(self.exports.CreateExportTask, epb.CreateExportTaskRequest(
            project_id=self.project_id, resource_type=resource_type,
            resource_condition=epb.ResourceCondition(task_id=task_id), export_format=export_format,
            app_type=app_type, app_id=app_id, request_id=request_id), _export_task)

    def list_exports(self, limit: int | None = None, offset: int | None = None, marker: str = "",
                     **filters) -> epb.ListExportTasksResponse:
        """A page of the caller's export tasks, newest first. Filters: resource_type, app_type, app_id,
        resource_condition (JSON text or a dict) or its shorthand task_id."""
        unknown = set(filters) - set(_LIST_FILTERS)
        if unknown:
            raise TypeError(f"unknown filters: {', '.join(sorted(unknown))} (known: {', '.join(_LIST_FILTERS)})")
        condition = filters.pop("resource_condition", "") or ""
        task_id = filters.pop("task_id", "") or ""
        if isinstance(condition, Mapping):
            condition = json.dumps(dict(condition), separators=(",", ":"))
        if task_id:
            if condition:
                raise TypeError("pass either task_id or resource_condition")
            condition = json.dumps({"task_id": task_id}, separators=(",", ":"))
        request = epb.ListExportTasksRequest(project_id=self.project_id, marker=marker,
                                             resource_condition=condition, **filters)
        if limit is not None:
            request.limit = limit
        if offset is not None:
            request.offset = offset
        return self._unary(self.exports.ListExportTasks, request)

    def get_export(self, export_task_id: str) -> epb.ExportTask:
        return self._unary(self.exports.GetExportTask, epb.GetExportTaskRequest(
            project_id=self.project_id, export_task_id=export_task_id), _export_task)

    def delete_export(self, export_task_id: str) -> None:
        return self._unary(self.exports.DeleteExportTask, epb.DeleteExportTaskRequest(
            project_id=self.project_id, export_task_id=export_task_id), _nothing)

    def cancel_export(self, export_task_id: str) -> epb.ExportTask:
        """Stops an unfinished export (it becomes Failed, "cancelled"); a finished one is unchanged."""
        return self._unary(self.exports.CancelExportTask, epb.CancelExportTaskRequest(
            project_id=self.project_id, export_task_id=export_task_id), _export_task)

    def _watch_request(self, export_task_id: str) -> epb.WatchProgressRequest:
        return epb.WatchProgressRequest(project_id=self.project_id, export_task_id=export_task_id)

    def _download_request(self, export_task_id: str, offset: int, limit: int) -> epb.ShowExportTaskRequest:
        return epb.ShowExportTaskRequest(project_id=self.project_id, export_task_id=export_task_id, offset=offset,
                                         limit=limit)

    # -- batch tasks -----------------------------------------------------------------------------

    def create_batch_task(self, task_name: str, task_type: str, targets: Iterable[str] = (), app_id: str = "", *,
                          task_mode: str = "", need_confirm: bool = False, task_ext_info: Mapping | None = None,
                          targets_filter: Mapping | None = None, document: Mapping | None = None,
                          task_policy: bpb.TaskPolicy | Mapping | None = None,
                          document_source: str = "") -> bpb.BatchTask:
        """Creates a batch task (up to 30,000 targets); the task."""
        request = bpb.CreateBatchTaskRequest(
            project_id=self.project_id, app_id=app_id, task_name=task_name, task_type=task_type,
            task_mode=task_mode, need_confirm=need_confirm, targets=list(targets), document_source=document_source)
        for name, value in (("task_ext_info", task_ext_info), ("targets_filter", targets_filter),
                            ("document", document)):
            if value is not None:
                getattr(request, name).CopyFrom(_struct(value))
        if task_policy is not None:
            request.task_policy.CopyFrom(task_policy if isinstance(task_policy, bpb.TaskPolicy)
                                         else bpb.TaskPolicy(**dict(task_policy)))
        return self._unary(self.batches.CreateBatchTask, request, _batchtask)

    def show_batch_task(self, task_id: str, task_detail_status: str = "", target: str = "",
                        limit: int | None = None, offset: int | None = None,
                        marker: str = "") -> bpb.ShowBatchTaskResponse:
        """The batch task with a page of its sub-tasks (task_details, page)."""
        request = bpb.ShowBatchTaskRequest(project_id=self.project_id, task_id=task_id,
                                           task_detail_status=task_detail_status, target=target, marker=marker)
        if limit is not None:
            request.limit = limit
        if offset is not None:
            request.offset = offset
        return self._unary(self.batches.ShowBatchTask, request)

    def list_batch_tasks(self, task_type: str, app_id: str = "", status: str = "", limit: int | None = None,
                         offset: int | None = None, marker: str = "") -> bpb.ListBatchTasksResponse:
        request = bpb.ListBatchTasksRequest(project_id=self.project_id, task_type=task_type, app_id=app_id,
                                            status=status, marker=marker)
        if limit is not None:
            request.limit = limit
        if offset is not None:
            request.offset = offset
        return self._unary(self.batches.ListBatchTasks, request)

    def delete_batch_task(self, task_id: str) -> None:
        return self._unary(self.batches.DeleteBatchTask, bpb.DeleteBatchTaskRequest(
            project_id=self.project_id, task_id=task_id), _nothing)

    def record_results(self, task_id: str,
                       results: Iterable[bpb.SubtaskResult | Mapping[str, Any]]) -> bpb.BatchTask:
        """Records sub-task results in bulk (idempotent). Each result is a SubtaskResult or a dict
        with target, status and optionally output, error_code, error_msg (or error={...})."""
        messages = []
        for r in results:
            if isinstance(r, bpb.SubtaskResult):
                messages.append(r)
                continue
            r = dict(r)
            error = r.pop("error", None) or {}
            code, msg = r.pop("error_code", ""), r.pop("error_msg", "")
            m = bpb.SubtaskResult(**r)
            if error or code or msg:
                m.error.CopyFrom(bpb.SubtaskError(error_code=error.get("error_code", code),
                                                  error_msg=error.get("error_msg", msg)))
            messages.append(m)
        return self._unary(self.batches.RecordSubtaskResults, bpb.RecordSubtaskResultsRequest(
            project_id=self.project_id, task_id=task_id, results=messages), _batchtask)

    # -- health ----------------------------------------------------------------------------------

    def check_health(self, service: str = "") -> str:
        """grpc.health.v1 status name of `service` ("" = the whole server), e.g. "SERVING"."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        return self._unary(health_pb2_grpc.HealthStub(self.channel).Check,
                           health_pb2.HealthCheckRequest(service=service),
                           lambda r: health_pb2.HealthCheckResponse.ServingStatus.Name(r.status), metadata=False)


def _export_task(response) -> epb.ExportTask:
    return response.export_task


def _batchtask(response) -> bpb.BatchTask:
    return response.batchtask


def _nothing(_response) -> None:
    return None


class ExportClient(_Calls):
    """Calls ExportTaskService and BatchTaskService as one principal of one project.

    Sends `authorization: Bearer <token>` (none when `token` is empty: a client certificate bound
    to a principal then authenticates) and, when `instance_id` is set, `instance-id` on every call.
    Unary calls time out after `timeout` seconds; streams (watch, download) have no deadline unless
    one is passed. `address` `https://HOST:PORT`, or `tls` (TlsSettings: CA, client certificate and
    key files), makes a TLS channel. Use as a context manager, or call close(). AsyncExportClient is
    the same for asyncio."""

    def __init__(self, address: str, token: str, project_id: str, instance_id: str | None = None,
                 timeout: float = 30.0, *, options: list[tuple[str, Any]] | None = None,
                 channel: grpc.Channel | None = None, tls: TlsSettings | None = None):
        self._own_channel = channel is None
        if channel is None:
            channel, secured = open_channel(check_address(address), tls, options)
        else:
            secured = tls is not None
        super().__init__(address, token, project_id, instance_id, timeout, channel, secured)

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> "ExportClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method, request, answer: Callable[[Any], Any] = lambda r: r, metadata: bool = True):
        try:
            response = method(request, metadata=self.metadata if metadata else None, timeout=self.timeout)
        except grpc.RpcError as err:
            raise ExportApiError.from_rpc_error(err, self.address, self.secured) from None
        return answer(response)

    def _stream(self, method, request, timeout: float | None) -> ResponseStream:
        return ResponseStream(method(request, metadata=self.metadata, timeout=timeout), self.address, self.secured)

    def iter_exports(self, page_size: int = 50, **filters) -> Iterator[epb.ExportTask]:
        """Every export task of the caller, newest first, following the page markers. A page may
        hold fewer than page_size records before the end (pages also stop by size): the end is an
        empty page, or every counted record seen."""
        marker, seen = "", 0
        while True:
            page = self.list_exports(limit=page_size, marker=marker, **filters)
            yield from page.export_tasks
            seen += len(page.export_tasks)
            if not page.export_tasks or not page.page.marker or seen >= page.page.count:
                return
            marker = page.page.marker

    def watch(self, export_task_id: str, timeout: float | None = None) -> ResponseStream:
        """The task's progress: a snapshot first, then every change (and a heartbeat every 15 s);
        ends after Success or Failed. An iterator of WatchProgressResponse."""
        return self._stream(self.exports.WatchProgress, self._watch_request(export_task_id), timeout)

    def wait(self, export_task_id: str, timeout: float | None = None) -> epb.ExportTask:
        """Watches until the task is Success or Failed; returns its final state."""
        last = None
        for event in self.watch(export_task_id, timeout=timeout):
            last = event.export_task
        return last

    def download_stream(self, export_task_id: str, offset: int = 0, limit: int = 0,
                        timeout: float | None = None) -> ResponseStream:
        """The raw download (ShowExportTask): ShowExportTaskResponse chunks of at most 64 KiB."""
        return self._stream(self.exports.ShowExportTask, self._download_request(export_task_id, offset, limit),
                            timeout)

    def download(self, export_task_id: str, dest_path: str | os.PathLike, offset: int = 0, *,
                 on_chunk: Callable[[int, int], None] | None = None, timeout: float | None = None) -> str:
        """Downloads the result file (a .zip holding the .xls) to `dest_path`; returns the path.

        The bytes go to `<dest_path>.part` and are renamed to `dest_path` only after their size and
        sha256 equal what the server announced, so `dest_path` never holds half a file. If the
        transfer breaks, the partial file stays: call again with `offset` = its size (or fewer
        bytes) to resume; the bytes before `offset` are taken from it, and the server does not count
        a resume of your last download as a new one. A mismatch removes the partial file and
        raises DownloadError. `dest_path` may be a directory (the file is named export-<id>.zip).
        `on_chunk(bytes_done, total_size)` is called after each chunk."""
        job = _Download(export_task_id, dest_path, offset)
        try:
            with self.download_stream(export_task_id, offset, timeout=timeout) as stream:
                for msg in stream:
                    done, total = job.write(msg)
                    if on_chunk is not None:
                        on_chunk(done, total)
            return job.finish()
        except BaseException as e:
            job.abandon(keep_partial=not isinstance(e, DownloadError))
            raise


class AsyncExportClient(_Calls):
    """ExportClient for asyncio (grpc.aio): the same methods, awaited; `watch()` and
    `download_stream()` are async iterators, `iter_exports()` an async generator. Use as
    `async with`, or await close()."""

    def __init__(self, address: str, token: str, project_id: str, instance_id: str | None = None,
                 timeout: float = 30.0, *, options: list[tuple[str, Any]] | None = None,
                 channel: grpc.aio.Channel | None = None, tls: TlsSettings | None = None):
        self._own_channel = channel is None
        if channel is None:
            channel, secured = open_channel(check_address(address), tls, options, aio=True)
        else:
            secured = tls is not None
        super().__init__(address, token, project_id, instance_id, timeout, channel, secured)

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    async def __aenter__(self) -> "AsyncExportClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _unary(self, method, request, answer: Callable[[Any], Any] = lambda r: r, metadata: bool = True):
        try:
            response = await method(request, metadata=self.metadata if metadata else None, timeout=self.timeout)
        except grpc.RpcError as err:
            raise ExportApiError.from_rpc_error(err, self.address, self.secured) from None
        return answer(response)

    async def iter_exports(self, page_size: int = 50, **filters) -> AsyncIterator[epb.ExportTask]:
        """Every export task of the caller, newest first (see ExportClient.iter_exports)."""
        marker, seen = "", 0
        while True:
            page = await self.list_exports(limit=page_size, marker=marker, **filters)
            for task in page.export_tasks:
                yield task
            seen += len(page.export_tasks)
            if not page.export_tasks or not page.page.marker or seen >= page.page.count:
                return
            marker = page.page.marker

    def watch(self, export_task_id: str, timeout: float | None = None) -> "AsyncResponseStream":
        """The task's progress (see ExportClient.watch): `async for event in client.watch(id)`."""
        return AsyncResponseStream(self.exports.WatchProgress(
            self._watch_request(export_task_id), metadata=self.metadata, timeout=timeout), self.address, self.secured)

    async def wait(self, export_task_id: str, timeout: float | None = None) -> epb.ExportTask:
        """Watches until the task is Success or Failed; returns its final state."""
        last = None
        async for event in self.watch(export_task_id, timeout=timeout):
            last = event.export_task
        return last

    def download_stream(self, export_task_id: str, offset: int = 0, limit: int = 0,
                        timeout: float | None = None) -> "AsyncResponseStream":
        return AsyncResponseStream(self.exports.ShowExportTask(
            self._download_request(export_task_id, offset, limit), metadata=self.metadata, timeout=timeout),
            self.address, self.secured)

    async def download(self, export_task_id: str, dest_path: str | os.PathLike, offset: int = 0, *,
                       on_chunk: Callable[[int, int], None] | None = None, timeout: float | None = None) -> str:
        """ExportClient.download for asyncio: verified, resumable from `<dest_path>.part`."""
        job = _Download(export_task_id, dest_path, offset)
        try:
            async with self.download_stream(export_task_id, offset, timeout=timeout) as stream:
                async for msg in stream:
                    done, total = job.write(msg)  # 64 KiB at a time: short enough for the loop
                    if on_chunk is not None:
                        on_chunk(done, total)
            return await asyncio.to_thread(job.finish)  # fsync and the sha256 check off the loop
        except BaseException as e:
            job.abandon(keep_partial=not isinstance(e, DownloadError))
            raise


class AsyncResponseStream:
    """A grpc.aio server stream whose failures arrive as ExportApiError; `cancel()` (or leaving an
    `async with` block) ends it early."""

    def __init__(self, call, address: str, secured: bool = False):
        self._call = call
        self._address = address
        self._secured = secured
        self._iterator = None

    def __aiter__(self) -> "AsyncResponseStream":
        return self

    async def __anext__(self):
        if self._iterator is None:
            self._iterator = self._call.__aiter__()
        try:
            return await self._iterator.__anext__()
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED and self._call.cancelled():
                raise StopAsyncIteration from None  # we cancelled it ourselves
            raise ExportApiError.from_rpc_error(err, self._address, self._secured) from None

    def cancel(self) -> None:
        self._call.cancel()

    async def __aenter__(self) -> "AsyncResponseStream":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()


class _Download:
    """The file side of one download, whichever client streams it: `<dest>.part`, opened at the
    first chunk (a refused call leaves no file behind), then checked against the size and sha256
    the server announced and renamed to `dest`."""

    def __init__(self, export_task_id: str, dest_path: str | os.PathLike, offset: int):
        dest = os.fspath(dest_path)
        if os.path.isdir(dest):
            dest = os.path.join(dest, f"export-{export_task_id}.zip")
        self.dest, self.part, self.offset = dest, dest + PARTIAL_SUFFIX, offset
        if offset < 0:
            raise ValueError("offset must not be negative")
        if offset:
            try:
                have = os.path.getsize(self.part)
            except FileNotFoundError:
                raise DownloadError(f"cannot resume at {offset}: {self.part} does not exist") from None
            if have < offset:
                raise DownloadError(f"cannot resume at {offset}: {self.part} holds only {have} bytes")
        self.digest = hashlib.sha256()
        self.file = None
        self.done, self.total, self.expected_sha = offset, None, ""

    def write(self, msg) -> tuple[int, int]:
        """One ShowExportTaskResponse: its bytes appended; (bytes done, total size)."""
        if self.file is None:
            self.total, self.expected_sha = msg.total_size, msg.sha256
            if msg.offset != self.offset:
                raise DownloadError(f"the server answered from offset {msg.offset}, not {self.offset}")
            self.file = _open_partial(self.part, self.offset, self.digest)
        data = msg.body.data
        self.file.write(data)
        self.digest.update(data)
        self.done += len(data)
        return self.done, self.total

    def finish(self) -> str:
        if self.file is None:
            raise DownloadError("the server sent no data")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.done != self.total or (self.expected_sha and self.digest.hexdigest() != self.expected_sha):
            raise DownloadError(
                f"the downloaded file does not match the server's: {self.done} of {self.total} bytes, sha256 "
                f"{self.digest.hexdigest()} instead of {self.expected_sha}")
        os.replace(self.part, self.dest)
        return self.dest

    def abandon(self, keep_partial: bool) -> None:
        """After a failure: the partial file stays for a resume, unless its bytes are known bad."""
        if self.file is not None:
            self.file.close()
            if not keep_partial:
                _unlink(self.part)


def _open_partial(part: str, offset: int, digest) -> Any:
    """The partial file, positioned at `offset`, its first `offset` bytes fed to `digest`."""
    if not offset:
        return open(part, "wb")
    f = open(part, "r+b")
    remaining = offset
    while remaining:
        block = f.read(min(remaining, 1 << 20))
        if not block:
            f.close()
            raise DownloadError(f"{part} shrank below {offset} bytes")
        digest.update(block)
        remaining -= len(block)
    f.truncate(offset)
    f.seek(offset)
    return f


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
