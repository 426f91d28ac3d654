"""HTTP/JSON gateway: the platform's REST API, transcoded to our gRPC services.

A request goes through these steps, in this order, and each refuses before the next costs anything:
1. route (404/405) and the headers, taken exactly (http_headers.py: no header repeated, printable
   ASCII only);
2. credentials: none at all is a 401 before a byte of the body is read; a token or an access key is
   looked up (off the event loop) and an unknown one is a 401, still without reading the body;
3. the body, within the HTTP port's size and time limits (http_server.py);
4. an AK/SK signature verified against exactly the header values it signed, the body's hash
   computed off the event loop; a body the signature does not cover (UNSIGNED-PAYLOAD) is refused;
5. only then the JSON, parsed and transcoded (transcode.py) off the event loop;
6. the gRPC call, which the gateway makes as the authenticated principal (vouched for with a key only
   this process knows), so authorization, validation and quotas have one code path.

Statuses are grpc-gateway's (runtime.HTTPStatusFromCode) but for quota and rate refusals, which are
403 with the platform's IOTDA code and Retry-After, as the platform answers them (its official SDK
parses a 403; a 429 on a GET never reaches it). Transport failures of the internal call never show
gRPC internals: they are answered with the platform's body and a plain message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import ssl
import time

import grpc
from aiohttp import web
from google.protobuf import descriptor
from google.rpc import error_details_pb2, status_pb2

from ..domain import auth
from ..domain import errors as domain_errors
from ..logs import request_id_var, user_var
from ..metrics import CONTENT_TYPE_LATEST, Metrics
from . import errors, signing
from .http_headers import SCOPE_HEADERS, Credential, HeaderError, RequestHeaders
from .http_server import BodyTimeout, BodyTooLarge, GuardedServer, HandshakeBoundSite, HttpLimits, read_body
from .servicers import FRONT_END_KEY, FRONT_END_USER
from .tls import http_peer_identity
from .transcode import RequestTooLarge, Route, build_request, error_body, routes_from, to_json
from .web import Pages

log = logging.getLogger("iotda_export.gateway")

# grpc-gateway's runtime.HTTPStatusFromCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
# The platform reports its quota and rate refusals as 403 (its tables list no 429).
QUOTA_HTTP_STATUS = 403
_CODE_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}
# Bodies and responses up to this size are (de)coded right on the event loop: a thread hop costs
# more than the work. Bigger ones go to a thread.
INLINE_CODEC_BYTES = 64 * 1024
LOGGED_PATH_CHARS = 200


class HttpError(Exception):
    """A refusal decided by the gateway itself, before or instead of a gRPC call: a domain error,
    the HTTP status when it is not the one of its gRPC code, and the gRPC code its body shows."""

    def __init__(self, err: domain_errors.DomainError, http_status: int | None = None,
                 grpc_code: grpc.StatusCode | None = None, headers: dict[str, str] | None = None):
        super().__init__(err.message)
        self.err = err
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.headers = headers or {}


def _too_large(max_bytes: int) -> HttpError:
    return HttpError(RequestTooLarge(max_bytes), http_status=413, grpc_code=grpc.StatusCode.INVALID_ARGUMENT)


def status_of_rpc_error(exc: grpc.aio.AioRpcError, request_id: str) -> tuple[status_pb2.Status, int | None]:
    """The Status our gRPC service sent (with its ErrorInfo), or, for a failure of the call itself
    (the service unreachable, a limit of the transport), a plain one of our own: the transport's
    wording names gRPC internals and is only logged. Returns (status, HTTP status override)."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # noqa: BLE001 - not ours: treated as a transport failure below
                break
            if _is_ours(status):
                return status, None
            break
    code = exc.code()
    log.warning("internal gRPC call failed (request %s): %s %s", request_id, code.name, (exc.details() or "")[:300])
    if code == grpc.StatusCode.UNAVAILABLE:
        err, http_status = errors.Unavailable("The service is unavailable; retry shortly."), 503
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        err, http_status = domain_errors.DomainError("The request timed out.", error_code="IOTDA.000504",
                                                     reason="TIMEOUT"), 504
    elif code == grpc.StatusCode.CANCELLED:
        err, http_status = domain_errors.DomainError("The request was cancelled.", error_code="IOTDA.000499",
                                                     reason="CANCELLED"), 499
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in (exc.details() or "").lower():
        err, http_status = domain_errors.DomainError(
            "Request header fields too large.", error_code="IOTDA.000008", reason="REQUEST_HEADERS_TOO_LARGE"), 431
        code = grpc.StatusCode.INVALID_ARGUMENT
    else:  # RESOURCE_EXHAUSTED of the transport (a message over its limit) is no quota: never a 429/403
        err, http_status = errors.Internal(f"Internal error (request {request_id})."), 500
        code = grpc.StatusCode.INTERNAL
    status = errors.to_status(err)
    status.code = code.value[0]
    return status, http_status


def _is_ours(status: status_pb2.Status) -> bool:
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            return info.domain == errors.ERROR_DOMAIN
    return False


class Gateway:
    def __init__(self, grpc_target: str, services: list[descriptor.ServiceDescriptor],
                 authenticator: auth.Authenticator, gateway_key: str, max_message_bytes: int,
                 metrics: Metrics | None = None, limits: HttpLimits | None = None, pages: Pages | None = None,
                 client_certs: bool = False):
        self.routes = routes_from(services)
        # Mutual TLS: a verified client certificate bound to a principal authenticates a request
        # that carries no token or signature.
        self.client_certs = client_certs
        self.pages = pages  # the console, /openapi.json, /healthz, /readyz (transport/web.py)
        self.metrics = metrics
        self.grpc_target = grpc_target
        self.authenticator = authenticator
        self.gateway_key = gateway_key
        self.max_message_bytes = max_message_bytes
        self.limits = limits or HttpLimits(max_body_bytes=max_message_bytes)
        self.channel: grpc.aio.Channel | None = None
        self.runner: web.ServerRunner | None = None
        self.http_server: GuardedServer | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        # Room for a response of the largest size the service sends, plus the envelope.
        self.channel = grpc.aio.insecure_channel(self.grpc_target, options=[
            ("grpc.max_receive_message_length", self.max_message_bytes + 1024 * 1024),
            ("grpc.max_send_message_length", self.max_message_bytes + 1024 * 1024)])
        self.http_server = GuardedServer(self.handle, self.limits, self._error_page)
        self.runner = web.ServerRunner(self.http_server, access_log=None)
        await self.runner.setup()
        site = HandshakeBoundSite(self.runner, host, port, reuse_port=False, ssl_context=ssl_context,
                                  handshake_timeout=self.limits.header_timeout_seconds)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.channel is not None:
            await self.channel.close()

    async def metrics_page(self) -> web.Response:
        body = await asyncio.to_thread(self.metrics.exposition)  # reads the store
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- one request -----------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        request_id = secrets.token_hex(16)
        request_id_var.set(request_id)
        user_var.set("-")
        status = 500
        try:
            response = await self._handle(request, request_id)
            status = response.status
            return response
        except HttpError as exc:
            status_msg = errors.to_status(exc.err)
            if exc.grpc_code is not None:
                status_msg.code = exc.grpc_code.value[0]
            response = self._error_response(status_msg, request_id, exc.http_status, exc.headers)
            status = response.status
            return response
        except HeaderError as exc:
            response = self._error_response(errors.to_status(exc.error), request_id)
            status = response.status
            return response
        except domain_errors.DomainError as exc:
            response = self._error_response(errors.to_status(exc), request_id)
            status = response.status
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, answered without it
            response = self._error_response(errors.to_status(errors.from_exception(exc, request_id)), request_id)
            status = response.status
            return response
        finally:
            ms = (time.monotonic() - started) * 1000
            path = request.rel_url.raw_path[:LOGGED_PATH_CHARS]
            log.info("http %s %s %d %.1f ms", request.method, path, status, ms,
                     extra={"http_method": request.method, "path": path, "status": status,
                            "duration_ms": round(ms, 1)})

    def _error_page(self, http_status: int, err: domain_errors.DomainError, request_id: str) -> web.Response:
        """A refusal by the HTTP server itself (a request its parser refused, a timeout)."""
        status = errors.to_status(err)
        if status.code == grpc.StatusCode.INTERNAL.value[0] and http_status != 500:
            status.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        return self._error_response(status, request_id, http_status)

    def _error_response(self, status: status_pb2.Status, request_id: str, http_status: int | None = None,
                        extra_headers: dict[str, str] | None = None) -> web.Response:
        body, headers = error_body(status)
        headers.update(extra_headers or {})
        code = _CODE_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
        if http_status is None:
            http_status = QUOTA_HTTP_STATUS if code == grpc.StatusCode.RESOURCE_EXHAUSTED else HTTP_STATUS[code]
        if http_status == 401:
            headers["WWW-Authenticate"] = signing.SDK_ALGORITHM
        headers["X-Request-Id"] = request_id
        return web.json_response(body, status=http_status, headers=headers)

    def _route(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        raw_segments = raw_path.strip("/").split("/") if raw_path.strip("/") else []
        path_matched = False
        for route in self.routes:
            values = route.match(raw_segments)
            if values is None:
                continue
            path_matched = True
            if route.http_method == method:
                return route, values
        if path_matched:
            allowed = sorted({r.http_method for r in self.routes if r.match(raw_segments) is not None})
            raise HttpError(domain_errors.DomainError("Method not allowed on this path.", error_code="APIGW.0102",
                                                     reason="METHOD_NOT_ALLOWED"), http_status=405,
                            grpc_code=grpc.StatusCode.UNIMPLEMENTED, headers={"Allow": ", ".join(allowed)})
        raise HttpError(domain_errors.DomainError("The API does not exist.", error_code="APIGW.0101",
                                                  reason="NOT_FOUND"), http_status=404,
                        grpc_code=grpc.StatusCode.NOT_FOUND)

    async def _principal(self, credential: Credential | None, request: web.BaseRequest):
        """The principal the credential names (a 401 when none): a store read, off the event loop.
        Without a credential, the one bound to the connection's verified client certificate."""
        if credential is None:
            identity = http_peer_identity(request.transport) if self.client_certs else None
            principal = None
            if identity is not None:
                principal = await asyncio.to_thread(self.authenticator.by_client_cert, identity.subject,
                                                    identity.sans)
            if principal is None:
                raise domain_errors.Unauthenticated()
            return principal
        if credential.token is not None:
            return await asyncio.to_thread(self.authenticator.by_token, credential.token)
        principal = await asyncio.to_thread(self.authenticator.by_access_key, credential.signature.access_key)
        if principal is None:
            log.info("signature refused: unknown access key %s", credential.signature.access_key)
            raise _signature_refused()
        return principal

    def _verify(self, request: web.BaseRequest, headers: RequestHeaders, signature, principal, body: bytes,
                body_sha256: str | None) -> None:
        signed = headers.signed(signature)
        try:
            signing.verify(signature, principal.sk, request.method, request.rel_url.raw_path,
                           request.rel_url.raw_query_string, signed, body, body_sha256=body_sha256)
        except signing.SignatureError as exc:
            log.info("signature refused: %s (ak %s)", exc, signature.access_key)
            raise _signature_refused() from None
        headers.require_signed(signature, SCOPE_HEADERS + (("content-type",) if body else ()))
        if not signing.payload_is_signed(body, signed):
            raise domain_errors.BadRequestFormat(
                "The request body is not JSON covered by the signature (X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD);"
                " send Content-Type: application/json.")

    async def _handle(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        if raw_path == "/metrics" and request.method == "GET" and self.metrics is not None:
            # Prometheus scrapes without credentials, as is usual: counts only, no ids or secrets.
            return await self.metrics_page()
        if self.pages is not None and self.pages.serves(raw_path):
            request.protocol.linger_after_refusal(False)  # a body sent here is never read
            if request.method not in Pages.METHODS:
                raise HttpError(domain_errors.DomainError("Method not allowed on this path.", error_code="APIGW.0102",
                                                         reason="METHOD_NOT_ALLOWED"), http_status=405,
                                grpc_code=grpc.StatusCode.UNIMPLEMENTED, headers={"Allow": ", ".join(Pages.METHODS)})
            return await self.pages.respond(request)  # no credentials: nothing here is the user's
        route, path_values = self._route(request.method, raw_path)
        # Until the caller is known, a refusal closes the connection without reading the body.
        request.protocol.linger_after_refusal(False)
        headers = RequestHeaders(request.raw_headers)
        credential = headers.credential()
        if credential is None and not self.client_certs:
            raise domain_errors.Unauthenticated()
        encoding = headers.one("content-encoding")
        if encoding and encoding.lower() != "identity":
            raise domain_errors.BadRequestFormat("Compressed request bodies are not accepted (Content-Encoding).")
        expect = headers.one("expect")
        if expect is not None and expect.lower() != "100-continue":
            raise HttpError(domain_errors.BadRequestFormat("Only Expect: 100-continue is supported."),
                            http_status=417)
        principal = await self._principal(credential, request)
        request.protocol.linger_after_refusal(True)
        if (request.content_length or 0) > self.limits.max_body_bytes:
            raise _too_large(self.limits.max_body_bytes)  # refused on its declared length, unread
        user_var.set(principal.user)
        if expect is not None and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # now the client may send the body
        try:
            body = await read_body(request, self.limits)
        except BodyTooLarge:
            raise _too_large(self.limits.max_body_bytes) from None
        except BodyTimeout:
            raise HttpError(domain_errors.DomainError(
                f"The request body did not arrive within {self.limits.body_timeout_seconds:.0f} s.",
                error_code="IOTDA.000008", reason="REQUEST_TIMEOUT"), http_status=408,
                grpc_code=grpc.StatusCode.DEADLINE_EXCEEDED) from None
        if credential is not None and credential.signature is not None:
            body_sha256 = None
            if len(body) > INLINE_CODEC_BYTES:  # hashlib releases the GIL: the loop keeps serving
                body_sha256 = (await asyncio.to_thread(hashlib.sha256, body)).hexdigest()
            self._verify(request, headers, credential.signature, principal, body, body_sha256)
        # The SDK sends X-Project-Id beside the path's project: both must name the same project.
        project = headers.one("x-project-id")
        if project is not None and project != path_values.get("project_id"):
            raise domain_errors.PermissionDenied("-", "X-Project-Id does not match the project in the path.")
        instance = headers.one("instance-id")
        content_type = headers.one("content-type") or ""

        def transcode():
            return build_request(route, path_values, request.rel_url.raw_query_string, content_type, body,
                                 self.max_message_bytes)
        try:
            msg = await asyncio.to_thread(transcode) if len(body) > INLINE_CODEC_BYTES else transcode()
        except RequestTooLarge:
            raise _too_large(self.max_message_bytes) from None
        md = [(FRONT_END_USER, principal.principal_id), (FRONT_END_KEY, self.gateway_key), ("x-request-id", request_id)]
        if instance:
            md.append(("instance-id", instance))
        if route.method.server_streaming:
            return await self._stream(request, route, msg, md, request_id)
        call = self.channel.unary_unary(route.grpc_path, request_serializer=type(msg).SerializeToString,
                                        response_deserializer=route.response_class.FromString)(msg, metadata=md)
        try:
            response = await call
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            status, http_status = status_of_rpc_error(exc, request_id)
            return self._error_response(status, request_id, http_status)
        http_code = _initial_value(initial, "x-http-code")
        status = int(http_code) if http_code and http_code.isdigit() else 200
        headers_out = {"X-Request-Id": request_id}
        if status == 204:
            return web.Response(status=204, headers=headers_out)
        payload = getattr(response, route.response_body) if route.response_body else response

        def render() -> bytes:
            return json.dumps(to_json(payload), ensure_ascii=False).encode()
        data = await asyncio.to_thread(render) if payload.ByteSize() > INLINE_CODEC_BYTES else render()
        return web.Response(body=data, status=status, headers=headers_out,
                            content_type="application/json", charset="utf-8")

    async def _stream(self, request, route: Route, msg, md, request_id: str) -> web.StreamResponse:
        call = self.channel.unary_stream(route.grpc_path, request_serializer=type(msg).SerializeToString,
                                         response_deserializer=route.response_class.FromString)(msg, metadata=md)
        iterator = call.__aiter__()
        try:  # every refusal happens before the first message: it still gets its HTTP status
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        except grpc.aio.AioRpcError as exc:
            status, http_status = status_of_rpc_error(exc, request_id)
            return self._error_response(status, request_id, http_status)
        raw = route.response_body and first is not None and \
            getattr(first, route.response_body).DESCRIPTOR.full_name == "google.api.HttpBody"
        response = web.StreamResponse(status=200, headers={"X-Request-Id": request_id})
        if raw:
            http_body = getattr(first, route.response_body)
            response.content_type = http_body.content_type or "application/octet-stream"
            if getattr(first, "file_name", ""):
                response.headers["Content-Disposition"] = f'attachment; filename="{first.file_name}"'
            if getattr(first, "sha256", ""):  # RFC 9530: the whole file's digest, also for a range of it
                response.headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(first.sha256)).decode()}:"
            if getattr(first, "total_size", 0) and msg.offset == 0 and msg.limit == 0:
                response.content_length = first.total_size
        else:
            response.content_type = "application/json"
        await response.prepare(request)
        try:
            item = first
            while item is not None:
                if raw:
                    await response.write(getattr(item, route.response_body).data)
                else:
                    await response.write(json.dumps({"result": to_json(item)}, ensure_ascii=False).encode() + b"\n")
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    item = None
        except grpc.aio.AioRpcError as exc:
            if raw:  # the bytes are not JSON: a cut connection is the only honest signal
                call.cancel()
                raise ConnectionResetError("download interrupted") from exc
            body, _ = error_body(status_of_rpc_error(exc, request_id)[0])
            await response.write(json.dumps({"error": body}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            call.cancel()
            raise
        await response.write_eof()
        return response


def _signature_refused() -> domain_errors.Unauthenticated:
    # One message for every signature problem: which check failed is for the log only.
    return domain_errors.Unauthenticated("Incorrect IAM authentication information: verify aksk signature fail.")


def _initial_value(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v
    return None
