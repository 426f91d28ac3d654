"""HTTP/JSON gateway: the platform's REST API, transcoded to our gRPC services.

Routes come from the `google.api.http` annotations of the service descriptors, with grpc-gateway's
semantics: path variables, query parameters for GET/DELETE (nested `a.b` and repeated `a=1&a=2`,
unknown ones ignored, a repeated key for a single field refused), `body: "*"`, `response_body`,
proto field names in JSON with unpopulated fields emitted, server streams as newline-delimited
`{"result": ...}`, an HttpBody response written raw, and the HTTP status from the gRPC code.

The gateway calls the gRPC server like grpc-gateway does, so authorization, validation and quotas
have one code path. It verifies the official SDK's AK/SK signatures itself (gRPC has no such
credential) and passes the verified identity on in metadata authenticated by a per-process key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

import grpc
from aiohttp import web
from google.api import annotations_pb2
from google.protobuf import descriptor, json_format, message_factory
from google.rpc import error_details_pb2, status_pb2

from ..domain import errors as domain_errors
from ..logs import request_id_var
from ..metrics import CONTENT_TYPE_LATEST, Metrics
from . import errors, signing
from .servicers import FRONT_END_KEY, FRONT_END_USER

log = logging.getLogger("iotda_export.gateway")

MAX_BODY_BYTES = 16 * 1024 * 1024

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
_CODE_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


class HttpError(Exception):
    """A refusal decided by the gateway itself (before or instead of a gRPC call). `grpc_code`
    overrides the Status code for refusals that have no domain class (routing, body size), as
    grpc-gateway's routing errors carry NOT_FOUND / UNIMPLEMENTED rather than INTERNAL."""

    def __init__(self, err: domain_errors.DomainError, http_status: int | None = None,
                 grpc_code: grpc.StatusCode | None = None, headers: dict[str, str] | None = None):
        super().__init__(err.message)
        self.err = err
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.headers = headers or {}


@dataclass(frozen=True)
class Route:
    http_method: str
    segments: tuple[str | None, ...]  # a literal, or None for a variable
    variables: tuple[str, ...]        # field paths of the variables, in order
    body: str
    response_body: str
    method: descriptor.MethodDescriptor
    request_class: type
    response_class: type

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def match(self, raw_segments: list[str]) -> dict[str, str] | None:
        if len(raw_segments) != len(self.segments):
            return None
        values, names = {}, iter(self.variables)
        for pattern, raw in zip(self.segments, raw_segments):
            if pattern is None:
                values[next(names)] = unquote(raw)
            elif pattern != raw:
                return None
        return values


def _parse_template(template: str) -> tuple[tuple[str | None, ...], tuple[str, ...]]:
    segments, variables = [], []
    for seg in template.strip("/").split("/"):
        if seg.startswith("{") and seg.endswith("}"):
            name = seg[1:-1].split("=", 1)[0]
            segments.append(None)
            variables.append(name)
        else:
            segments.append(seg)
    return tuple(segments), tuple(variables)


def routes_from(services: list[descriptor.ServiceDescriptor]) -> list[Route]:
    out = []
    for service in services:
        for method in service.methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            for r in (rule, *rule.additional_bindings):
                kind = r.WhichOneof("pattern")
                if kind is None or kind == "custom":
                    continue
                segments, variables = _parse_template(getattr(r, kind))
                out.append(Route(kind.upper(), segments, variables, r.body, r.response_body, method,
                                 message_factory.GetMessageClass(method.input_type),
                                 message_factory.GetMessageClass(method.output_type)))
    return out


# -- request transcoding -------------------------------------------------------------------------

def _invalid(field_name: str, description: str) -> HttpError:
    return HttpError(domain_errors.invalid(field_name, description))


def _bad_format(message: str) -> HttpError:
    return HttpError(domain_errors.BadRequestFormat(message))


def _field(msg_descriptor: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor | None:
    return msg_descriptor.fields_by_name.get(name) or msg_descriptor.fields_by_camelcase_name.get(name)


_KIND = {
    descriptor.FieldDescriptor.CPPTYPE_INT32: "32-bit integer", descriptor.FieldDescriptor.CPPTYPE_INT64: "integer",
    descriptor.FieldDescriptor.CPPTYPE_UINT32: "non-negative integer",
    descriptor.FieldDescriptor.CPPTYPE_UINT64: "non-negative integer",
    descriptor.FieldDescriptor.CPPTYPE_BOOL: "boolean (true or false)",
    descriptor.FieldDescriptor.CPPTYPE_DOUBLE: "number", descriptor.FieldDescriptor.CPPTYPE_FLOAT: "number",
    descriptor.FieldDescriptor.CPPTYPE_ENUM: "enum value name",
}


def _scalar(field: descriptor.FieldDescriptor, text: str, name: str):
    """A query or path value converted to the field's type, as grpc-gateway's runtime does."""
    C = descriptor.FieldDescriptor
    cpp = field.cpp_type
    try:
        if cpp in (C.CPPTYPE_INT32, C.CPPTYPE_INT64, C.CPPTYPE_UINT32, C.CPPTYPE_UINT64):
            value = int(text, 10)
            low, high = {C.CPPTYPE_INT32: (-2**31, 2**31), C.CPPTYPE_INT64: (-2**63, 2**63),
                         C.CPPTYPE_UINT32: (0, 2**32), C.CPPTYPE_UINT64: (0, 2**64)}[cpp]
            if not low <= value < high:
                raise ValueError
            return value
        if cpp == C.CPPTYPE_BOOL:
            if text not in ("true", "false", "1", "0"):
                raise ValueError
            return text in ("true", "1")
        if cpp in (C.CPPTYPE_DOUBLE, C.CPPTYPE_FLOAT):
            return float(text)
        if cpp == C.CPPTYPE_ENUM:
            return field.enum_type.values_by_name[text].number
        if field.type == C.TYPE_BYTES:
            return text.encode()
        return text
    except (ValueError, KeyError):
        raise _invalid(name, f"{text[:64]!r} is not a valid {_KIND.get(cpp, 'value')}") from None


def set_query_params(msg, raw_query: str, bound: set[str]) -> None:
    """grpc-gateway's PopulateQueryParameters: unknown names ignored, repeated fields appended, a
    second value for a single field refused, fields bound by the path left alone."""
    seen: set[str] = set()
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise _bad_format("The query string is not valid UTF-8.") from None
    for key, value in pairs:
        path = key.split(".")
        target, desc = msg, msg.DESCRIPTOR
        field = None
        for i, part in enumerate(path):
            field = _field(desc, part)
            if field is None:
                break
            if i < len(path) - 1:
                if field.type != field.TYPE_MESSAGE or field.is_repeated:
                    field = None
                    break
                target = getattr(target, field.name)
                desc = field.message_type
        if field is None or key in bound or field.name in bound:
            continue  # grpc-gateway ignores unknown query parameters
        full = ".".join(path)
        if field.type == field.TYPE_MESSAGE:
            continue  # a message cannot be given as one value
        if field.is_repeated:
            getattr(target, field.name).append(_scalar(field, value, full))
            continue
        if full in seen:
            raise _invalid(full, "is given more than once")
        seen.add(full)
        setattr(target, field.name, _scalar(field, value, full))


def _is_json(content_type: str) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


def build_request(route: Route, path_values: dict[str, str], raw_query: str, content_type: str, body: bytes):
    msg = route.request_class()
    if route.body:
        if body.strip():
            if not _is_json(content_type):
                raise _bad_format("The request body must be JSON (Content-Type: application/json).")
            try:
                document = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise _bad_format("The request body is not valid JSON.") from None
            target = msg if route.body == "*" else getattr(msg, route.body)
            if route.body == "*" and not isinstance(document, dict):
                raise _bad_format("The request body must be a JSON object.")
            try:
                json_format.ParseDict(document, target, ignore_unknown_fields=True, max_recursion_depth=32)
            except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
                raise _invalid(_field_of(str(exc)), _first_line(str(exc))) from None
        if route.body != "*":
            set_query_params(msg, raw_query, set(route.variables) | {route.body})
    else:
        set_query_params(msg, raw_query, set(route.variables))
    for name, value in path_values.items():
        field = _field(msg.DESCRIPTOR, name)
        setattr(msg, field.name, _scalar(field, value, name))
    return msg


def _first_line(text: str) -> str:
    return text.splitlines()[0][:300] if text else "invalid value"


def _field_of(parse_error: str) -> str:
    # json_format names the field in messages like 'Failed to parse resource_type field: ...'
    marker = "Failed to parse "
    if marker in parse_error:
        return parse_error.split(marker, 1)[1].split(" field", 1)[0]
    return "body"


# -- responses -----------------------------------------------------------------------------------

def to_json(msg) -> dict:
    """protojson with UseProtoNames and EmitUnpopulated, as grpc-gateway renders: zero values
    present, an unset singular message field as null; proto3 `optional` fields (synthetic oneofs)
    and oneof members left out when unset."""
    document = json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    _emit_null_messages(msg, document)
    return document


def _emit_null_messages(msg, document: dict) -> None:
    if msg.DESCRIPTOR.full_name.startswith("google.protobuf."):
        return  # well-known types have their own JSON forms (Struct, Any, Timestamp, ...)
    for field in msg.DESCRIPTOR.fields:
        if field.message_type is None or field.containing_oneof is not None:
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        if field.is_repeated:
            for item, rendered in zip(getattr(msg, field.name), document.get(field.name, ())):
                if isinstance(rendered, dict):
                    _emit_null_messages(item, rendered)
        elif not msg.HasField(field.name):
            document[field.name] = None
        elif isinstance(document.get(field.name), dict):
            _emit_null_messages(getattr(msg, field.name), document[field.name])


def error_body(status: status_pb2.Status) -> tuple[dict, dict[str, str]]:
    """The platform's {error_code, error_msg} beside grpc-gateway's {code, message, details}."""
    error_code, headers = "", {}
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            error_code = info.metadata.get("error_code", "")
        elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_detail.Unpack(retry)
            seconds = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    try:
        details = json_format.MessageToDict(status, preserving_proto_field_name=True).get("details", [])
    except (TypeError, KeyError):  # a detail type this process does not know
        details = []
    body = {"error_code": error_code or f"IOTDA.{status.code:06d}", "error_msg": status.message,
            "code": status.code, "message": status.message, "details": details}
    return body, headers


def status_of_rpc_error(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # noqa: BLE001 - fall back to code and message
                break
    return status_pb2.Status(code=exc.code().value[0], message=exc.details() or exc.code().name)


class Gateway:
    def __init__(self, grpc_target: str, services: list[descriptor.ServiceDescriptor], store,
                 gateway_key: str, max_message_bytes: int, metrics: Metrics | None = None):
        self.routes = routes_from(services)
        self.metrics = metrics
        self.grpc_target = grpc_target
        self.store = store
        self.gateway_key = gateway_key
        self.max_message_bytes = max_message_bytes
        self.channel: grpc.aio.Channel | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        self.channel = grpc.aio.insecure_channel(self.grpc_target, options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes)])
        app = web.Application(client_max_size=MAX_BODY_BYTES, handler_args={"max_field_size": 16384, "max_line_size": 65536})
        if self.metrics is not None:
            # Prometheus scrapes without credentials, as is usual: counts only, no ids or secrets.
            app.router.add_get("/metrics", self.metrics_page)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_port=False)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.channel is not None:
            await self.channel.close()

    async def metrics_page(self, _request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.metrics.exposition)  # reads the store
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- one request -----------------------------------------------------------------------------

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

    async def _authenticate(self, request: web.Request, raw_path: str, raw_query: str, body: bytes,
                            path_values: dict[str, str]) -> list[tuple[str, str]]:
        """Metadata that carries the caller's credentials to the gRPC service."""
        md: list[tuple[str, str]] = []
        authorization = request.headers.get("Authorization", "")
        parsed = signing.parse_authorization(authorization)
        if parsed is not None:
            principal = await asyncio.to_thread(lambda: self.store.reader().principal_by("ak", parsed.access_key))
            headers = {k.lower(): v for k, v in request.headers.items()}
            try:
                if principal is None:
                    raise signing.SignatureError("unknown access key")
                signing.verify(parsed, principal.sk, request.method, raw_path, raw_query, headers, body)
            except signing.SignatureError as exc:
                log.info("signature refused: %s (ak %s)", exc, parsed.access_key)
                raise HttpError(domain_errors.Unauthenticated(
                    "Incorrect IAM authentication information: verify aksk signature fail.")) from None
            md += [(FRONT_END_USER, principal.principal_id), (FRONT_END_KEY, self.gateway_key)]
        elif authorization:
            md.append(("authorization", authorization))
        if token := request.headers.get("X-Auth-Token"):
            md.append(("x-auth-token", token))
        # The SDK sends X-Project-Id beside the path's project: both must name the same project,
        # whatever the credential (a request without any credential is left to the 401).
        project = request.headers.get("X-Project-Id")
        if md and project is not None and project != path_values.get("project_id"):
            raise HttpError(domain_errors.PermissionDenied(
                "-", "X-Project-Id does not match the project in the path."))
        return md

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        request_id = secrets.token_hex(16)
        request_id_var.set(request_id)
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
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, answered without it
            response = self._error_response(errors.to_status(errors.from_exception(exc, request_id)), request_id)
            status = response.status
            return response
        finally:
            ms = (time.monotonic() - started) * 1000
            log.info("http %s %s %d %.1f ms", request.method, request.rel_url.raw_path, status, ms,
                     extra={"http_method": request.method, "path": request.rel_url.raw_path, "status": status,
                            "duration_ms": round(ms, 1)})

    def _error_response(self, status: status_pb2.Status, request_id: str, http_status: int | None = None,
                        extra_headers: dict[str, str] | None = None) -> web.Response:
        body, headers = error_body(status)
        headers.update(extra_headers or {})
        code = _CODE_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
        http_status = http_status or HTTP_STATUS[code]
        if http_status == 401:
            headers["WWW-Authenticate"] = signing.SDK_ALGORITHM
        headers["X-Request-Id"] = request_id
        return web.json_response(body, status=http_status, headers=headers)

    async def _handle(self, request: web.Request, request_id: str) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        raw_query = request.rel_url.raw_query_string
        route, path_values = self._route(request.method, raw_path)
        too_large = HttpError(domain_errors.DomainError(
            f"The request body is larger than {MAX_BODY_BYTES} bytes.", error_code="IOTDA.000008",
            reason="REQUEST_TOO_LARGE"), http_status=413, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED)
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise too_large  # refused on its declared length, before reading any of it
        try:
            body = await request.read() if route.body or request.can_read_body else b""
        except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
            raise too_large from None
        md = await self._authenticate(request, raw_path, raw_query, body, path_values)
        msg = build_request(route, path_values, raw_query, request.headers.get("Content-Type", ""), body)
        md.append(("x-request-id", request_id))
        if instance := request.headers.get("Instance-Id"):
            md.append(("instance-id", instance))
        if route.method.server_streaming:
            return await self._stream(request, route, msg, md, request_id)
        call = self.channel.unary_unary(route.grpc_path, request_serializer=type(msg).SerializeToString,
                                        response_deserializer=route.response_class.FromString)(msg, metadata=md)
        try:
            response = await call
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            return self._error_response(status_of_rpc_error(exc), request_id)
        http_code = _initial_value(initial, "x-http-code")
        status = int(http_code) if http_code and http_code.isdigit() else 200
        headers = {"X-Request-Id": request_id}
        if status == 204:
            return web.Response(status=204, headers=headers)
        payload = getattr(response, route.response_body) if route.response_body else response
        return web.json_response(to_json(payload), status=status, headers=headers,
                                 dumps=lambda d: json.dumps(d, ensure_ascii=False))

    async def _stream(self, request, route: Route, msg, md, request_id: str) -> web.StreamResponse:
        call = self.channel.unary_stream(route.grpc_path, request_serializer=type(msg).SerializeToString,
                                         response_deserializer=route.response_class.FromString)(msg, metadata=md)
        iterator = call.__aiter__()
        try:  # every refusal happens before the first message: it still gets its HTTP status
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        except grpc.aio.AioRpcError as exc:
            return self._error_response(status_of_rpc_error(exc), request_id)
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
            body, _ = error_body(status_of_rpc_error(exc))
            await response.write(json.dumps({"error": body}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            call.cancel()
            raise
        await response.write_eof()
        return response


def _initial_value(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v
    return None
