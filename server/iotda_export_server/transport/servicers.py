"""gRPC servicers: authenticate, authorize, call the domain, render, map errors, count.

Every handler goes through `_call` (unary) or `_stream` (server streaming), which is the one place
where credentials are read from metadata, the action is checked, blocking store work leaves the
event loop, domain errors become google.rpc.Status, and each call is counted, timed and logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import secrets
import time

import grpc

from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import batch_task_pb2_grpc as bpb_grpc
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc as epb_grpc

from ..domain import auth, rules, validation
from ..domain.errors import Codes
from ..domain.limits import ConcurrencyLimiter
from ..domain.batches import BatchService
from ..domain.errors import DomainError, ExportTaskNotFound, FilesUnavailable, QuotaExceeded, RateLimited
from ..domain.exports import ExportService
from ..domain.model import Caller
from ..domain.progress import ProgressHub
from ..logs import request_id_var, user_var
from ..metrics import Metrics
from . import errors, render
from .tls import grpc_peer_identity

log = logging.getLogger("iotda_export.rpc")

# Metadata with which the HTTP gateway vouches for a caller whose AK/SK signature it verified: the
# principal's immutable id (not its user name, which a removed and re-added principal shares).
FRONT_END_USER = "x-iotda-gateway-user"
FRONT_END_KEY = "x-iotda-gateway-key"


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out.setdefault(key.lower(), value)
    return out


def bearer_token(md: dict[str, str]) -> str:
    value = md.get("authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip()
    return md.get("x-auth-token", "").strip()


class Handlers:
    """What every servicer shares: authentication and the call wrappers."""

    def __init__(self, authenticator: auth.Authenticator, metrics: Metrics):
        self.authenticator = authenticator
        self.metrics = metrics
        # Set when the server starts stopping: a stream cut from then on was cut by the shutdown,
        # which the client sees as UNAVAILABLE.
        self.shutting_down = False
        # Set with a client CA (mutual TLS): a verified client certificate may name the caller.
        self.client_certs = False

    def _client_cert(self, context) -> tuple[str, tuple[str, ...]] | None:
        if not self.client_certs:
            return None
        identity = grpc_peer_identity(context)
        return None if identity is None else (identity.subject, identity.sans)

    def _authorize(self, md: dict[str, str], project_id: str, operation: str,
                   client_cert: tuple[str, tuple[str, ...]] | None = None) -> Caller:
        """Blocking (reads the store): who is calling, and may they do `operation`."""
        principal = self.authenticator.authenticate(bearer_token(md), md.get(FRONT_END_USER, ""),
                                                    md.get(FRONT_END_KEY, ""), client_cert)
        user_var.set(principal.user)
        caller = Caller(principal=principal, project_id=validation.project_id(project_id),
                        instance_id=validation.instance_id(md.get("instance-id", "")))
        auth.authorize(caller, operation)
        return caller

    @staticmethod
    def _begin(md: dict[str, str]) -> str:
        request_id = md.get("x-request-id", "")[:64] or secrets.token_hex(16)
        request_id_var.set(request_id)
        return request_id

    def _refused(self, exc: Exception, request_id: str) -> DomainError:
        err = errors.from_exception(exc, request_id)
        if isinstance(err, (QuotaExceeded, RateLimited)):
            self.metrics.refusals.labels(err.reason, err.quota_id).inc()
        return err

    # The full name of the service the subclass serves (grpc_service of the gRPC server metrics).
    SERVICE = ""

    def _started(self, grpc_type: str, operation: str) -> float:
        self.metrics.rpc_started(grpc_type, self.SERVICE, operation)
        return time.monotonic()

    def _done(self, grpc_type: str, operation: str, code: str, started: float) -> None:
        seconds = time.monotonic() - started
        self.metrics.rpc_done(grpc_type, self.SERVICE, operation, code, seconds)
        log.info("rpc %s %s %.1f ms", operation, code, seconds * 1000,
                 extra={"rpc": operation, "code": code, "duration_ms": round(seconds * 1000, 1)})

    async def _call(self, operation: str, request, context, work, *, http_code: int | None = None,
                    point_reads: bool = False):
        """A unary RPC: `work(caller) -> response` runs with the authentication in one worker thread
        (under load the thread hops, not the reads, cost most), or right here on the event loop when
        `point_reads`: it does only a few point reads, and the domain says they are cheaper than a
        hop (a local SQLite)."""
        md = _metadata(context)
        request_id = self._begin(md)
        started = self._started("unary", operation)
        code = "OK"
        cert = self._client_cert(context)
        try:
            if point_reads:
                response = work(self._authorize(md, request.project_id, operation, cert))
            else:
                response = await _in_thread(lambda: work(self._authorize(md, request.project_id, operation, cert)))
            if http_code:
                # Initial metadata is a send of its own: only when an HTTP gateway needs the code
                # (201, 204) before the body; otherwise the request id rides with the status.
                await context.send_initial_metadata([("x-request-id", request_id), ("x-http-code", str(http_code))])
            else:
                context.set_trailing_metadata([("x-request-id", request_id)])
            return response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error leaves as a google.rpc.Status
            err = self._refused(exc, request_id)
            code = errors.grpc_code(err).name
            await errors.abort(context, err, request_id)
        finally:
            self._done("unary", operation, code, started)

    async def _stream(self, operation: str, request, context, gen_fn, limiter: ConcurrencyLimiter):
        """Server streaming: every check happens before the first message (after it, an HTTP
        gateway can no longer change the status). The caller holds one of `limiter`'s slots from
        then until the stream ends, however it ends (this generator's finally: an error, the client
        cancelling, shutdown, or the generator being closed)."""
        md = _metadata(context)
        request_id = self._begin(md)
        started = self._started("server_stream", operation)
        code = "OK"
        ended = False  # the stream ran to its end, or ended with a status of ours
        slot = None
        try:
            cert = self._client_cert(context)
            caller = await _in_thread(lambda: self._authorize(md, request.project_id, operation, cert))
            slot = limiter.acquire(caller.owner)
            agen = gen_fn(caller)
            first = await agen.__anext__()
            await context.send_initial_metadata([("x-request-id", request_id)])
            yield first
            async for item in agen:
                yield item
            ended = True
        except StopAsyncIteration:
            ended = True
            return
        except grpc.aio.AbortError:
            ended = True
            raise
        except asyncio.CancelledError:  # cut: counted below as what the client saw
            raise
        except Exception as exc:  # noqa: BLE001
            ended = True
            err = self._refused(exc, request_id)
            code = errors.grpc_code(err).name
            await errors.abort(context, err, request_id)
        finally:
            if slot is not None:
                slot.release()
            if not ended:
                # Cut at a yield (grpc closes or cancels the stream): by the client, or by the
                # shutdown. Count what the client saw, not OK.
                code = "UNAVAILABLE" if self.shutting_down else "CANCELLED"
            self._done("server_stream", operation, code, started)


def run(fn, *args):
    """Blocking domain work (the store) off the event loop."""
    return asyncio.to_thread(fn, *args)


async def _in_thread(fn):
    """asyncio.to_thread, keeping the user that authentication found there for this call's later
    log lines, refusals included (the thread works in a copy of the context)."""
    context = contextvars.copy_context()
    try:
        return await asyncio.get_running_loop().run_in_executor(None, context.run, fn)
    finally:
        if (user := context.get(user_var)) is not None:
            user_var.set(user)


class ExportTaskServicer(Handlers, epb_grpc.ExportTaskServiceServicer):
    SERVICE = epb.DESCRIPTOR.services_by_name["ExportTaskService"].full_name

    def __init__(self, authenticator, metrics: Metrics, exports: ExportService, hub: ProgressHub,
                 max_watch_streams_per_user: int = rules.MAX_WATCH_STREAMS_PER_USER,
                 max_downloads_per_user: int = rules.MAX_DOWNLOADS_PER_USER):
        super().__init__(authenticator, metrics)
        self.exports = exports
        self.hub = hub
        self.watch_slots = ConcurrencyLimiter(
            max_watch_streams_per_user, quota_id="watch-streams-per-user", what="WatchProgress streams",
            error_code=Codes.WATCH_STREAMS_LIMIT)
        self.download_slots = ConcurrencyLimiter(
            max_downloads_per_user, quota_id="downloads-per-user", what="downloads (ShowExportTask streams)",
            error_code=Codes.DOWNLOADS_LIMIT)

    async def CreateExportTask(self, request, context):
        def work(caller):
            task = self.exports.create(caller, render.create_export_request(request))
            return epb.CreateExportTaskResponse(export_task=render.export_task(task))
        return await self._call("CreateExportTask", request, context, work, http_code=201)

    async def ListExportTasks(self, request, context):
        def work(caller):
            rendered = render.Rendered(render.export_task)
            tasks, page = self.exports.list(caller, render.list_export_filter(request),
                                            render.optional_int(request, "limit"),
                                            render.optional_int(request, "offset"), request.marker,
                                            item_size=rendered.size)
            return epb.ListExportTasksResponse(export_tasks=[rendered.get(t) for t in tasks],
                                               page=render.page(page))
        return await self._call("ListExportTasks", request, context, work,
                                point_reads=self.exports.point_reads_inline)

    async def GetExportTask(self, request, context):
        def work(caller):
            task = self.exports.get(caller, request.export_task_id)
            return epb.GetExportTaskResponse(export_task=render.export_task(task))
        return await self._call("GetExportTask", request, context, work, point_reads=self.exports.point_reads_inline)

    async def DeleteExportTask(self, request, context):
        def work(caller):
            self.exports.delete(caller, request.export_task_id)
            return epb.DeleteExportTaskResponse()
        return await self._call("DeleteExportTask", request, context, work, http_code=204)

    async def CancelExportTask(self, request, context):
        def work(caller):
            task = self.exports.cancel(caller, request.export_task_id)
            return epb.CancelExportTaskResponse(export_task=render.export_task(task))
        return await self._call("CancelExportTask", request, context, work)

    def ShowExportTask(self, request, context):
        async def chunks(caller):
            d = await run(self.exports.admit_download, caller, request.export_task_id, request.offset, request.limit)
            f = d.file
            try:
                async for msg in self._file_messages(d, f):
                    yield msg
            except FilesUnavailable:  # an object store gone mid-stream: not counted, the message says why
                await run(self.exports.abandon_download, d)
                raise
            except FileNotFoundError:  # its object deleted mid-stream (a re-run replaced it): start again
                await run(self.exports.file_gone, d)
            finally:
                f.close()
        return self._stream("ShowExportTask", request, context, chunks, self.download_slots)

    async def _file_messages(self, d, f):
        """The messages of an admitted download, read from its open file."""
        # The whole file goes through the digest: the bytes before `offset` first (a resumed
        # download), the rest as it is sent, and whatever lies past a `limit` at the end. The
        # last message waits for the verdict, so a damaged file never reaches its end.
        digest = hashlib.sha256()
        if d.offset:
            await run(_hash_range, f, digest, 0, d.offset)  # leaves the position at the offset
        offset, remaining, first = d.offset, d.length, True
        while first or remaining > 0:
            data = await run(_read_hashed, f, digest, min(rules.DOWNLOAD_CHUNK_BYTES, remaining))
            if not data and remaining > 0:
                await run(self.exports.reject_download, d, "the file is shorter than recorded")
            msg = epb.ShowExportTaskResponse(offset=offset)
            msg.body.data = data
            if first:
                msg.body.content_type = "application/zip"
                msg.file_name, msg.total_size, msg.sha256 = d.file_name, d.task.file_size, d.task.file_sha256
                first = False
            offset += len(data)
            remaining -= len(data)
            if remaining == 0:
                await run(_verify_to_end, self.exports, d, f, digest, offset)
            yield msg  # awaiting each write applies HTTP/2 flow control

    def WatchProgress(self, request, context):
        async def events(caller):
            task = await run(self.exports.get, caller, request.export_task_id)
            topic = self.hub.subscribe(task.export_task_id, task)
            try:
                last = task.version
                yield epb.WatchProgressResponse(export_task=render.export_task(task), sequence=last)
                while task.unfinished:
                    if topic.version == last and not topic.deleted and not self.hub.closing:
                        await topic.wait()  # a change, a heartbeat or shutdown
                    if self.hub.closing:
                        raise errors.Unavailable("The server is shutting down; watch again to resume.")
                    if topic.deleted:
                        raise ExportTaskNotFound(task.export_task_id)
                    heartbeat = topic.version == last
                    task, last = topic.latest, topic.version
                    yield _watch_event(topic, heartbeat)  # awaiting the send applies flow control
            finally:
                self.hub.unsubscribe(topic)
        return self._stream("WatchProgress", request, context, events, self.watch_slots)


_HASH_BLOCK = 1024 * 1024


def _read_hashed(f, digest, n: int) -> bytes:
    """Reads up to n bytes at the file's position and adds them to the digest (in a worker thread)."""
    data = f.read(n)
    digest.update(data)
    return data


def _verify_to_end(exports: ExportService, d, f, digest, position: int) -> None:
    """Adds what lies past `position` to the digest and has the domain check it (in a worker thread)."""
    _hash_range(f, digest, position, None)
    exports.verify_download(d, digest.hexdigest())


def _hash_range(f, digest, start: int, end: int | None) -> None:
    """Adds the file's bytes [start, end) (end None: to the end of the file) to the digest, and
    leaves the position at `end` (in a worker thread)."""
    f.seek(start)
    position = start
    while end is None or position < end:
        data = f.read(_HASH_BLOCK if end is None else min(_HASH_BLOCK, end - position))
        if not data:
            break
        digest.update(data)
        position += len(data)


def _watch_event(topic, heartbeat: bool) -> bytes:
    """The topic's latest state as an encoded WatchProgressResponse, encoded once for all its streams."""
    data = topic.encoded.get(heartbeat)
    if data is None:
        data = topic.encoded[heartbeat] = epb.WatchProgressResponse(
            export_task=render.export_task(topic.latest), sequence=topic.version,
            heartbeat=heartbeat).SerializeToString()
    return data


class BatchTaskServicer(Handlers, bpb_grpc.BatchTaskServiceServicer):
    SERVICE = bpb.DESCRIPTOR.services_by_name["BatchTaskService"].full_name

    def __init__(self, authenticator, metrics: Metrics, batches: BatchService):
        super().__init__(authenticator, metrics)
        self.batches = batches

    async def CreateBatchTask(self, request, context):
        def work(caller):
            task = self.batches.create(caller, render.create_batch_request(request))
            return bpb.CreateBatchTaskResponse(batchtask=render.batch_task(task))
        return await self._call("CreateBatchTask", request, context, work, http_code=201)

    async def ShowBatchTask(self, request, context):
        def work(caller):
            rendered_task, rendered = render.Rendered(render.batch_task), render.Rendered(render.subtask)
            task, details, page = self.batches.show(
                caller, request.task_id, request.task_detail_status, request.target,
                render.optional_int(request, "limit"), render.optional_int(request, "offset"), request.marker,
                task_size=rendered_task.size, detail_size=rendered.size)
            return bpb.ShowBatchTaskResponse(batchtask=rendered_task.get(task),
                                             task_details=[rendered.get(s) for s in details],
                                             page=render.page(page))
        return await self._call("ShowBatchTask", request, context, work)

    async def ListBatchTasks(self, request, context):
        def work(caller):
            rendered = render.Rendered(lambda t: render.batch_task(t, with_targets=False))
            tasks, page = self.batches.list(
                caller, request.app_id, request.task_type, request.status,
                render.optional_int(request, "limit"), render.optional_int(request, "offset"), request.marker,
                item_size=rendered.size)
            return bpb.ListBatchTasksResponse(batchtasks=[rendered.get(t) for t in tasks], page=render.page(page))
        return await self._call("ListBatchTasks", request, context, work)

    async def DeleteBatchTask(self, request, context):
        def work(caller):
            self.batches.delete(caller, request.task_id)
            return bpb.DeleteBatchTaskResponse()
        return await self._call("DeleteBatchTask", request, context, work, http_code=204)

    async def RecordSubtaskResults(self, request, context):
        def work(caller):
            task = self.batches.record_results(caller, request.task_id, render.subtask_results(request))
            return bpb.RecordSubtaskResultsResponse(batchtask=render.batch_task(task, with_targets=False))
        return await self._call("RecordSubtaskResults", request, context, work)


