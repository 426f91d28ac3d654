"""HTTP <-> protobuf transcoding from the `google.api.http` annotations, as grpc-gateway does it.

Pure functions, no I/O: routes from the service descriptors; a request message from the path
variables, the query string and a JSON body; a response message to the platform's JSON (proto field
names, unpopulated fields emitted); a google.rpc.Status to the platform's error body. Refusals are
domain errors (InvalidArgument naming the field, BadRequestFormat for what cannot be parsed at all).

Where this gateway is stricter than grpc-gateway, on purpose: a JSON body may hold only the fields
of its message (an unknown or misspelled key is refused, naming it, rather than silently dropped),
each of the JSON type its field needs; an integer in a query or path is plain ASCII digits.
Unknown query parameters are ignored, as grpc-gateway does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from google.api import annotations_pb2
from google.protobuf import descriptor, json_format, message_factory
from google.rpc import error_details_pb2, status_pb2

from ..domain import errors as domain_errors
from ..domain.errors import invalid

F = descriptor.FieldDescriptor
_INTEGER = re.compile(r"^-?[0-9]{1,20}\Z")  # ASCII only: int() would take "5_0", "+5", " 5", "５"
_INT_RANGES = {F.CPPTYPE_INT32: (-2**31, 2**31), F.CPPTYPE_INT64: (-2**63, 2**63),
               F.CPPTYPE_UINT32: (0, 2**32), F.CPPTYPE_UINT64: (0, 2**64)}
_KIND = {
    F.CPPTYPE_INT32: "32-bit integer", F.CPPTYPE_INT64: "integer", F.CPPTYPE_UINT32: "non-negative integer",
    F.CPPTYPE_UINT64: "non-negative integer", F.CPPTYPE_BOOL: "boolean (true or false)",
    F.CPPTYPE_DOUBLE: "number", F.CPPTYPE_FLOAT: "number", F.CPPTYPE_ENUM: "enum value name",
    F.CPPTYPE_STRING: "string",
}
# Well-known types with a JSON form of their own, and the JSON type each accepts.
_WELL_KNOWN_JSON = {"google.protobuf.Struct": dict, "google.protobuf.ListValue": list,
                    "google.protobuf.Value": object}
MAX_JSON_DEPTH = 32


# -- routes --------------------------------------------------------------------------------------

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
            segments.append(None)
            variables.append(seg[1:-1].split("=", 1)[0])
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


# -- requests ------------------------------------------------------------------------------------

def _field(msg_descriptor: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor | None:
    return msg_descriptor.fields_by_name.get(name) or msg_descriptor.fields_by_camelcase_name.get(name)


def _scalar(field: descriptor.FieldDescriptor, text: str, name: str):
    """A query or path value converted to the field's type, as grpc-gateway's runtime does."""
    cpp = field.cpp_type
    try:
        if cpp in _INT_RANGES:
            if not _INTEGER.match(text):
                raise ValueError
            value = int(text, 10)
            low, high = _INT_RANGES[cpp]
            if not low <= value < high:
                raise ValueError
            return value
        if cpp == F.CPPTYPE_BOOL:
            if text not in ("true", "false", "1", "0"):
                raise ValueError
            return text in ("true", "1")
        if cpp in (F.CPPTYPE_DOUBLE, F.CPPTYPE_FLOAT):
            value = float(text)
            if not math.isfinite(value) or not text.isascii():
                raise ValueError
            return value
        if cpp == F.CPPTYPE_ENUM:
            return field.enum_type.values_by_name[text].number
        if field.type == F.TYPE_BYTES:
            return text.encode()
        return text
    except (ValueError, KeyError):
        raise invalid(name, f"must be a {_KIND.get(cpp, 'value')}") from None


def set_query_params(msg, raw_query: str, bound: set[str]) -> None:
    """grpc-gateway's PopulateQueryParameters: unknown names ignored, repeated fields appended, a
    second value for a single field refused, fields bound by the path left alone."""
    seen: set[str] = set()
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise domain_errors.BadRequestFormat("The query string is not valid UTF-8.") from None
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
            raise invalid(full, "is given more than once")
        seen.add(full)
        setattr(target, field.name, _scalar(field, value, full))


def is_json(content_type: str) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


def check_json(document, msg_descriptor: descriptor.Descriptor, path: str = "") -> None:
    """Every key of `document` names a field of the message, with a value of that field's JSON type
    (InvalidArgument naming the first that does not). Well-known JSON types (Struct, ...) take any
    JSON of their kind."""
    for key, value in document.items():
        field = _field(msg_descriptor, key) if isinstance(key, str) else None
        name = f"{path}{key}"
        if field is None:
            raise invalid(name, f"is not a field of {msg_descriptor.name}")
        if value is None:
            continue  # protobuf's JSON mapping: null is the field's default
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not isinstance(value, dict):
                raise invalid(name, "must be a JSON object")
            continue
        if field.is_repeated:
            if not isinstance(value, list):
                raise invalid(name, "must be a JSON array")
            for i, item in enumerate(value):
                _check_value(field, item, f"{name}[{i}]")
        else:
            _check_value(field, value, name)


def _check_value(field: descriptor.FieldDescriptor, value, name: str) -> None:
    if field.message_type is not None:
        expected = _WELL_KNOWN_JSON.get(field.message_type.full_name)
        if expected is object:
            return
        if not isinstance(value, expected or dict):
            raise invalid(name, "must be a JSON " + ("array" if expected is list else "object"))
        if expected is None:
            check_json(value, field.message_type, name + ".")
        return
    cpp = field.cpp_type
    if cpp == F.CPPTYPE_STRING:
        ok = isinstance(value, str)
    elif cpp == F.CPPTYPE_BOOL:
        ok = isinstance(value, bool)
    elif cpp in _INT_RANGES:
        # protobuf's JSON mapping takes an integer as a number or a string of digits.
        number = value if isinstance(value, int) and not isinstance(value, bool) else (
            int(value) if isinstance(value, str) and _INTEGER.match(value) else
            int(value) if isinstance(value, float) and value.is_integer() else None)
        low, high = _INT_RANGES[cpp]
        ok = number is not None and low <= number < high
    elif cpp in (F.CPPTYPE_DOUBLE, F.CPPTYPE_FLOAT):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif cpp == F.CPPTYPE_ENUM:
        ok = isinstance(value, str) and value in field.enum_type.values_by_name
    else:
        ok = True
    if not ok:
        raise invalid(name, f"must be a {_KIND.get(cpp, 'value')}")


def build_request(route: Route, path_values: dict[str, str], raw_query: str, content_type: str, body: bytes,
                  max_message_bytes: int):
    """The request message of `route`. CPU-bound for big bodies: callers run it off the event loop."""
    msg = route.request_class()
    if route.body:
        if body.strip():
            if not is_json(content_type):
                raise domain_errors.BadRequestFormat("The request body must be JSON (Content-Type: application/json).")
            try:
                document = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise domain_errors.BadRequestFormat("The request body is not valid JSON.") from None
            target = msg if route.body == "*" else getattr(msg, route.body)
            if not isinstance(document, dict):
                raise domain_errors.BadRequestFormat("The request body must be a JSON object.")
            check_json(document, target.DESCRIPTOR)
            try:
                json_format.ParseDict(document, target, max_recursion_depth=MAX_JSON_DEPTH)
            except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
                raise invalid(_field_of(str(exc)), "is not valid: " + _first_line(str(exc))) from None
        if route.body != "*":
            set_query_params(msg, raw_query, set(route.variables) | {route.body})
    else:
        set_query_params(msg, raw_query, set(route.variables))
    for name, value in path_values.items():
        field = _field(msg.DESCRIPTOR, name)
        setattr(msg, field.name, _scalar(field, value, name))
    if msg.ByteSize() > max_message_bytes:
        raise RequestTooLarge(max_message_bytes)
    return msg


class RequestTooLarge(domain_errors.DomainError):
    """The request, transcoded, is over the largest message the gRPC service takes."""

    error_code = "IOTDA.000008"
    reason = "REQUEST_TOO_LARGE"

    def __init__(self, limit: int):
        super().__init__(f"The request is larger than {limit} bytes.")


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
    """The platform's {error_code, error_msg} beside grpc-gateway's {code, message, details}, and
    the headers the details call for (Retry-After)."""
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
