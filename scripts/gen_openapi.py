"""Generate the OpenAPI 3.1 document of the HTTP/JSON API from protos/ (one command: `make openapi`;
`--check` fails with a diff when a committed copy is stale).

What it reads, so that a change to the protos changes the document:

- the routes: every `google.api.http` annotation (and additional binding) of every service in
  protos/iotda/export/v1, read from a descriptor set that protoc (grpc_tools) builds with
  --include_source_info, not from the generated modules (they carry no comments);
- the words: each service's, method's, message's and field's leading doc comment. A method's
  comment may state its success status ("HTTP 201.", "HTTP 204."; 200 otherwise); a request field
  whose comment says "Mandatory" is required; a download's media type is the quoted type in the
  comment of its `google.api.HttpBody` field;
- the schemas: the messages as the gateway renders them (transport/transcode.py): proto field
  names (snake_case), every field without presence always present (a message field as null when
  unset), proto3 `optional` fields only when set, int32 as integer, google.protobuf.Struct as any
  JSON object. Request bodies take exactly the fields of their message (the gateway refuses any
  other key); fields bound by the path are not in the body;
- the paging bounds of `limit` and `offset` from `iotda_export_server.domain.rules`.

What the gateway adds to every route, which no annotation says, is written here (GATEWAY_* below):
the platform's error body and statuses, X-Request-Id, Retry-After, the Instance-Id and
X-Project-Id headers, the download's headers, the progress stream's line format, and the two ways
to authenticate (AK/SK signature, X-Auth-Token). tests/test_openapi.py checks the document against
the routes the gateway really serves and against real responses.

    .venv/bin/python scripts/gen_openapi.py          # write docs/openapi.json and the served copy
    .venv/bin/python scripts/gen_openapi.py --check  # exit 1 (with a diff) when either is stale
"""

from __future__ import annotations

import argparse
import difflib
import json
import pathlib
import re
import sys
import tempfile
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PROTO_DIR = "iotda/export/v1"
# The document for readers, and the copy the server ships and serves at /openapi.json.
OUTPUTS = (ROOT / "docs" / "openapi.json", ROOT / "server" / "iotda_export_server" / "web" / "openapi.json")
for _path in (ROOT / "api", ROOT / "client", ROOT / "server"):  # works from a checkout even before `pip install -e`
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

OPENAPI_VERSION = "3.1.0"
ERROR_SCHEMA = "Error"

# Descriptor field types (google/protobuf/descriptor.proto), by number.
T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_FIXED64, T_FIXED32, T_BOOL, T_STRING = 1, 2, 3, 4, 5, 6, 7, 8, 9
T_MESSAGE, T_BYTES, T_UINT32, T_ENUM, T_SFIXED32, T_SFIXED64, T_SINT32, T_SINT64 = 11, 12, 13, 14, 15, 16, 17, 18
LABEL_REPEATED = 3
INT32_TYPES = {T_INT32, T_SINT32, T_SFIXED32}
UINT32_TYPES = {T_UINT32, T_FIXED32}
INT64_TYPES = {T_INT64, T_SINT64, T_SFIXED64, T_UINT64, T_FIXED64}

# Source-code-info paths (descriptor.proto field numbers).
FILE_MESSAGE, FILE_SERVICE, MESSAGE_FIELD, MESSAGE_NESTED, SERVICE_METHOD = 4, 6, 2, 3, 2

WELL_KNOWN = {
    ".google.protobuf.Struct": {"type": "object", "description": "Any JSON object."},
    ".google.protobuf.ListValue": {"type": "array", "description": "Any JSON array."},
    ".google.protobuf.Value": {"description": "Any JSON value."},
}
HTTP_BODY = ".google.api.HttpBody"
SUCCESS_STATUS = re.compile(r"\bHTTP (\d{3})\b")
MANDATORY = re.compile(r"\bMandatory\b")  # a request field the service refuses to go without
MEDIA_TYPE = re.compile(r'"([a-z]+/[A-Za-z0-9.+-]+)"')

# -- what the gateway adds (transport/gateway.py, transport/transcode.py) -------------------------

GATEWAY_INTRO = """\
The platform's REST API for export tasks and batch tasks, served by `iotda-export serve
--http-addr` and transcoded to the gRPC services of protos/ (this document is generated from their
`google.api.http` annotations and doc comments by scripts/gen_openapi.py).

Authenticate with an AK/SK signature as the platform's official SDK makes it (`Authorization`,
`X-Sdk-Date`, `Host` signed) or with `X-Auth-Token: <token>`. Every response carries `X-Request-Id`.
A refusal has the platform's body: `{"error_code", "error_msg"}` beside grpc-gateway's
`{"code", "message", "details"}`; quota and rate refusals are 403 with `Retry-After`.
JSON uses the proto field names; a field that is not set is present with its zero value (a message
as null), except the fields marked optional, which are absent until set. A request body may hold
only the fields of its schema: any other key is refused (400, naming it). Lists are paged by
`limit`, `marker` (the `page.marker` of the previous page) and `offset`.
"""
ERROR_RESPONSES = {
    "400": ("BadRequest", "A field breaks a documented rule (the field is named in `error_msg` and in a"
            " BadRequest detail), the body is not JSON of the request's schema, or a precondition fails"
            " (e.g. a download before the first Success)."),
    "401": ("Unauthorized", "No credentials, an unknown token or access key, or a bad or stale signature."),
    "403": ("Forbidden", "The principal lacks the action or the project; or a quota or rate refusal (5"
            " unfinished exports, one download per 30 s per user), with `Retry-After` when a retry can succeed."),
    "404": ("NotFound", "The export task or batch task does not exist, or is not the caller's."),
    "413": ("PayloadTooLarge", "The request body is larger than the service takes."),
    "500": ("InternalError", "An internal error (the message names the request id), or a damaged result"
            " file (IOTDA.018005: the task is marked and can be re-run with a create)."),
    "503": ("Unavailable", "The database stayed busy or the service is stopping: retry."),
}
HEADERS = {
    "X-Request-Id": {"description": "This request's id (also in the server's log lines).",
                     "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds after which the refused call can succeed (quota and rate refusals).",
                    "schema": {"type": "integer", "minimum": 1}},
    "WWW-Authenticate": {"description": "The signing scheme the server expects.", "schema": {"type": "string"}},
}
PARAMETERS = {
    "InstanceId": {"name": "Instance-Id", "in": "header", "required": False, "schema": {"type": "string"},
                   "description": "The instance the call is about; absent: the default instance. Signed when the"
                                  " request is signed."},
    "XProjectId": {"name": "X-Project-Id", "in": "header", "required": False, "schema": {"type": "string"},
                   "description": "Sent by the official SDK: must equal the path's project_id (403 otherwise)."
                                  " Signed when the request is signed."},
}
SECURITY_SCHEMES = {
    "AkSk": {"type": "apiKey", "in": "header", "name": "Authorization",
             "description": "An AK/SK signature as the platform's official SDK makes it: `SDK-HMAC-SHA256 Access=<ak>,"
                            " SignedHeaders=<names>, Signature=<hex>` (or derived `V11-HMAC-SHA256 Credential=<ak>/"
                            "<date>/<region>/iotdm, ...`) over the canonical request, with `X-Sdk-Date` (15-minute"
                            " window) and `Host` signed; the body's sha256 is signed (no UNSIGNED-PAYLOAD)."},
    "AuthToken": {"type": "apiKey", "in": "header", "name": "X-Auth-Token",
                  "description": "The principal's token (`token` in credentials.json)."},
}
STREAM_DESCRIPTION = ("Newline-delimited JSON: one object per line, `{\"result\": <event>}`, the stream's end"
                      " after the last; a failure after the first line is a last line `{\"error\": <error body>}`.")
DOWNLOAD_HEADERS = {
    "Content-Disposition": {"description": "`attachment; filename=\"export-<id>.zip\"`.", "schema": {"type": "string"}},
    "Repr-Digest": {"description": "The whole file's sha-256 (RFC 9530): `sha-256=:<base64>:`.",
                    "schema": {"type": "string"}},
    "Content-Length": {"description": "The file's size, when the whole file is asked for.",
                       "schema": {"type": "integer"}},
}


class GenerationError(Exception):
    pass


# -- reading the protos ---------------------------------------------------------------------------

def descriptor_set():
    """The FileDescriptorSet of protos/iotda/export/v1 with comments (protoc --include_source_info)."""
    from google.api import annotations_pb2  # noqa: F401 - registers the google.api.http extension
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    include = pathlib.Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PROTO_DIR).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "api.binpb"
        args = ["grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", "--include_source_info", "--include_imports",
                f"--descriptor_set_out={out}", *sources]
        if protoc.main(args) != 0:
            raise GenerationError("protoc failed on " + ", ".join(sources))
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _comment(text: str) -> str:
    """A doc comment as text: the one leading space of each line removed, paragraphs kept."""
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def _summary(description: str) -> str:
    first = description.split("\n\n", 1)[0]
    m = re.match(r"(.+?\.)(\s|$)", first)
    return (m.group(1) if m else first).strip()


class Protos:
    """Messages, services and comments of the descriptor set."""

    def __init__(self, fds):
        self.messages: dict[str, object] = {}   # ".pkg.Name" -> DescriptorProto
        self.enums: dict[str, object] = {}
        self.comments: dict[tuple, str] = {}    # (file name, path) -> comment
        self.message_paths: dict[str, tuple] = {}
        self.files = [f for f in fds.file if f.name.startswith(PROTO_DIR + "/")]
        for f in fds.file:
            for loc in f.source_code_info.location:
                if loc.leading_comments:
                    self.comments[(f.name, tuple(loc.path))] = _comment(loc.leading_comments)
            for i, m in enumerate(f.message_type):
                self._add_message(f.name, f".{f.package}", m, (FILE_MESSAGE, i))
            for e in f.enum_type:
                self.enums[f".{f.package}.{e.name}"] = e

    def _add_message(self, file_name, scope, m, path) -> None:
        name = f"{scope}.{m.name}"
        self.messages[name] = m
        self.message_paths[name] = (file_name, path)
        for j, nested in enumerate(m.nested_type):
            self._add_message(file_name, name, nested, (*path, MESSAGE_NESTED, j))
        for e in m.enum_type:
            self.enums[f"{name}.{e.name}"] = e

    def message_comment(self, name: str) -> str:
        file_name, path = self.message_paths[name]
        return self.comments.get((file_name, path), "")

    def field_comment(self, message_name: str, index: int) -> str:
        file_name, path = self.message_paths[message_name]
        return self.comments.get((file_name, (*path, MESSAGE_FIELD, index)), "")

    def services(self):
        for f in self.files:
            for i, s in enumerate(f.service):
                yield f, i, s


# -- schemas --------------------------------------------------------------------------------------

def _short(full_name: str) -> str:
    return full_name.rsplit(".", 1)[1]


def _has_presence(field) -> bool:
    return field.proto3_optional or field.HasField("oneof_index")


class Schemas:
    """Component schemas, built on demand: response ("output") schemas named after their message,
    request ("input") schemas too unless the message also appears in a response (then <Name>Input)."""

    def __init__(self, protos: Protos):
        self.protos = protos
        self.components: dict[str, dict] = {}
        self.outputs: set[str] = set()
        self.inputs: set[str] = set()

    def collect(self, full_name: str, kind: str) -> None:
        """Marks the message and every message under it as used for output or input."""
        seen = self.outputs if kind == "output" else self.inputs
        if full_name in seen or full_name in WELL_KNOWN:
            return
        seen.add(full_name)
        for f in self.protos.messages[full_name].field:
            if f.type == T_MESSAGE and not self._is_map(f):
                self.collect(f.type_name, kind)
            elif self._is_map(f):
                value = self._map_value(f)
                if value.type == T_MESSAGE:
                    self.collect(value.type_name, kind)

    def name(self, full_name: str, kind: str) -> str:
        short = _short(full_name)
        return short + "Input" if kind == "input" and full_name in self.outputs else short

    def ref(self, full_name: str, kind: str) -> dict:
        return {"$ref": f"#/components/schemas/{self.name(full_name, kind)}"}

    def build(self) -> None:
        names = {}
        for kind, group in (("output", self.outputs), ("input", self.inputs)):
            for full_name in sorted(group):
                name = self.name(full_name, kind)
                if names.setdefault(name, full_name) != full_name:
                    raise GenerationError(f"two messages named {name}: {names[name]}, {full_name}")
                self.components[name] = self.message_schema(full_name, kind)

    def message_schema(self, full_name: str, kind: str, exclude: tuple[str, ...] = ()) -> dict:
        m = self.protos.messages[full_name]
        schema: dict = {"type": "object"}
        description = self.protos.message_comment(full_name)
        if description:
            schema["description"] = description
        props, required = {}, []
        for index, f in enumerate(m.field):
            if f.name in exclude:
                continue
            prop = self.field_schema(f, kind)
            comment = self.protos.field_comment(full_name, index)
            if comment:
                prop = {**prop, "description": comment}
            props[f.name] = prop
            if kind == "output" and not _has_presence(f):
                required.append(f.name)
            elif kind == "input" and MANDATORY.search(comment):
                required.append(f.name)
        schema["properties"] = props
        if required:
            schema["required"] = required
        if kind == "input":
            schema["additionalProperties"] = False  # transcode.check_json refuses any other key
        return schema

    def _is_map(self, f) -> bool:
        if f.type != T_MESSAGE or f.label != LABEL_REPEATED or f.type_name in WELL_KNOWN:
            return False
        return self.protos.messages[f.type_name].options.map_entry

    def _map_value(self, f):
        return self.protos.messages[f.type_name].field[1]

    def field_schema(self, f, kind: str) -> dict:
        if self._is_map(f):
            return {"type": "object", "additionalProperties": self.value_schema(self._map_value(f), kind)}
        value = self.value_schema(f, kind)
        if f.label == LABEL_REPEATED:
            return {"type": "array", "items": value}
        if f.type == T_MESSAGE and kind == "output":
            return {"anyOf": [value, {"type": "null"}]}  # an unset message is rendered as null
        return value

    def value_schema(self, f, kind: str) -> dict:
        t = f.type
        if t == T_MESSAGE:
            if f.type_name in WELL_KNOWN:
                return dict(WELL_KNOWN[f.type_name])
            return self.ref(f.type_name, kind)
        if t == T_STRING:
            return {"type": "string"}
        if t == T_BOOL:
            return {"type": "boolean"}
        if t in INT32_TYPES:
            return {"type": "integer", "format": "int32"}
        if t in UINT32_TYPES:
            return {"type": "integer", "format": "int32", "minimum": 0}
        if t in INT64_TYPES:  # protobuf's JSON mapping writes 64-bit integers as strings, reads either
            if kind == "output":
                return {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
            return {"type": ["string", "integer"], "format": "int64"}
        if t in (T_DOUBLE, T_FLOAT):
            return {"type": "number"}
        if t == T_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        if t == T_ENUM:
            return {"type": "string", "enum": [v.name for v in self.protos.enums[f.type_name].value]}
        raise GenerationError(f"field {f.name}: unsupported type {t}")


def query_schema(f, paging: dict[str, dict]) -> dict:
    """A query parameter's schema: the value as the gateway parses it from the query string."""
    t = f.type
    if t in INT32_TYPES | UINT32_TYPES:
        schema = {"type": "integer", "format": "int32"}
        if f.proto3_optional and f.name in paging:
            schema.update(paging[f.name])
    elif t in INT64_TYPES:
        schema = {"type": "integer", "format": "int64"}
    elif t == T_BOOL:
        schema = {"type": "boolean"}
    elif t in (T_DOUBLE, T_FLOAT):
        schema = {"type": "number"}
    else:
        schema = {"type": "string"}
    return {"type": "array", "items": schema} if f.label == LABEL_REPEATED else schema


def paging_bounds() -> dict[str, dict]:
    from iotda_export_server.domain import rules
    return {"limit": {"minimum": rules.LIST_LIMIT_MIN, "maximum": rules.LIST_LIMIT_MAX,
                      "default": rules.LIST_LIMIT_DEFAULT},
            "offset": {"minimum": 0, "maximum": rules.LIST_OFFSET_MAX, "default": 0}}


# -- the document ---------------------------------------------------------------------------------

def _template(path: str) -> tuple[str, list[str]]:
    """The OpenAPI path and the field paths of its variables ("{name=pattern}" -> "{name}")."""
    variables = []

    def repl(m):
        variables.append(m.group(1))
        return "{" + m.group(1) + "}"
    return re.sub(r"\{([^}=]+)(?:=[^}]*)?\}", repl, path), variables


def _success_status(comment: str) -> str:
    m = SUCCESS_STATUS.search(comment)
    return m.group(1) if m else "200"


def operations(protos: Protos):
    """(service, method, comment, http method, path, rule) for every binding."""
    from google.api import annotations_pb2
    for f, si, service in protos.services():
        for mi, method in enumerate(service.method):
            comment = protos.comments.get((f.name, (FILE_SERVICE, si, SERVICE_METHOD, mi)), "")
            rule = method.options.Extensions[annotations_pb2.http]
            for r in (rule, *rule.additional_bindings):
                kind = r.WhichOneof("pattern")
                if kind is None:
                    continue
                if kind == "custom":
                    raise GenerationError(f"{method.name}: custom HTTP methods are not supported")
                yield service, method, comment, kind.upper(), getattr(r, kind), r


def build_document() -> dict:
    protos = Protos(descriptor_set())
    schemas = Schemas(protos)
    paging = paging_bounds()
    ops = list(operations(protos))
    # First pass: which messages appear in responses and which in request bodies.
    for service, method, comment, http_method, path, rule in ops:
        out_msg = protos.messages[method.output_type]
        if _success_status(comment) == "204":
            pass  # no body
        elif rule.response_body:
            field = next(f for f in out_msg.field if f.name == rule.response_body)
            if field.type_name != HTTP_BODY:
                schemas.collect(field.type_name, "output")
        else:
            schemas.collect(method.output_type, "output")
        if rule.body and rule.body != "*":
            field = next(f for f in protos.messages[method.input_type].field if f.name == rule.body)
            schemas.collect(field.type_name, "input")
        elif rule.body == "*":
            for f in protos.messages[method.input_type].field:
                if f.type == T_MESSAGE:
                    schemas.collect(f.type_name, "input")
    schemas.build()
    components_schemas = schemas.components

    paths: dict[str, dict] = {}
    for service, method, comment, http_method, path, rule in ops:
        oa_path, variables = _template(path)
        in_msg = protos.messages[method.input_type]
        fields = {f.name: (i, f) for i, f in enumerate(in_msg.field)}
        params = []
        for var in variables:
            if var not in fields:
                raise GenerationError(f"{method.name}: path variable {var} is no field of {method.input_type}")
            i, f = fields[var]
            params.append({"name": var, "in": "path", "required": True, "schema": {"type": "string"},
                           "description": protos.field_comment(method.input_type, i) or var})
        if rule.body != "*":
            bound = set(variables) | ({rule.body} if rule.body else set())
            for name, (i, f) in fields.items():
                if name in bound or f.type == T_MESSAGE:
                    continue  # a message cannot be given as one query value
                comment = protos.field_comment(method.input_type, i)
                p = {"name": name, "in": "query", "required": bool(MANDATORY.search(comment)),
                     "schema": query_schema(f, paging)}
                if comment:
                    p["description"] = comment
                params.append(p)
        params += [{"$ref": "#/components/parameters/InstanceId"}, {"$ref": "#/components/parameters/XProjectId"}]
        op: dict = {"operationId": method.name, "tags": [service.name], "summary": _summary(comment),
                    "description": comment, "parameters": params}
        if rule.body:
            if rule.body == "*":
                name = _short(method.input_type).removesuffix("Request") + "Body"
                body_schema = schemas.message_schema(method.input_type, "input", exclude=tuple(variables))
                body_schema["description"] = (f"The body of {method.name}: the fields of {_short(method.input_type)}"
                                              " that the path does not give.")
                components_schemas[name] = body_schema
                ref = {"$ref": f"#/components/schemas/{name}"}
                required = bool(body_schema["properties"])  # an empty body may be left out
            else:
                ref, required = schemas.ref(fields[rule.body][1].type_name, "input"), True
            op["requestBody"] = {"required": required, "content": {"application/json": {"schema": ref}}}
        status = _success_status(comment)
        responses: dict = {}
        request_id = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
        out_msg = protos.messages[method.output_type]
        if status == "204":
            responses[status] = {"description": "Done; no body.", "headers": request_id}
        elif rule.response_body and next(f for f in out_msg.field if f.name == rule.response_body).type_name \
                == HTTP_BODY:
            index, field = next((i, f) for i, f in enumerate(out_msg.field) if f.name == rule.response_body)
            media = MEDIA_TYPE.search(protos.field_comment(method.output_type, index))
            if media is None:
                raise GenerationError(f"{method.name}: the comment of {rule.response_body} names no media type")
            responses[status] = {
                "description": "The file's bytes" + (", streamed" if method.server_streaming else "") + ".",
                "headers": {**request_id, **DOWNLOAD_HEADERS},
                "content": {media.group(1): {"schema": {"type": "string", "contentMediaType": media.group(1)}}}}
        else:
            if rule.response_body:
                field = next(f for f in out_msg.field if f.name == rule.response_body)
                schema = schemas.ref(field.type_name, "output")
            else:
                schema = schemas.ref(method.output_type, "output")
            if method.server_streaming:
                line = {"type": "object", "description": STREAM_DESCRIPTION, "properties": {
                    "result": schema, "error": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}},
                    "oneOf": [{"required": ["result"]}, {"required": ["error"]}]}
                responses[status] = {"description": STREAM_DESCRIPTION, "headers": request_id,
                                     "content": {"application/json": {"schema": line}}}
            else:
                responses[status] = {"description": "OK." if status == "200" else "Created.", "headers": request_id,
                                     "content": {"application/json": {"schema": schema}}}
        for code, (name, _) in ERROR_RESPONSES.items():
            if code == "413" and not rule.body:
                continue
            responses[code] = {"$ref": f"#/components/responses/{name}"}
        op["responses"] = responses
        item = paths.setdefault(oa_path, {})
        verb = http_method.lower()
        if verb in item:
            raise GenerationError(f"two operations on {http_method} {oa_path}")
        item[verb] = op

    components_schemas[ERROR_SCHEMA] = {
        "type": "object", "description": "A refusal: the platform's fields, and grpc-gateway's beside them.",
        "properties": {
            "error_code": {"type": "string", "description": "The platform's code, e.g. IOTDA.000006."},
            "error_msg": {"type": "string", "description": "What was refused and why."},
            "code": {"type": "integer", "description": "The gRPC status code (google.rpc.Code)."},
            "message": {"type": "string", "description": "The same as error_msg."},
            "details": {"type": "array", "description": "google.rpc error details (ErrorInfo, BadRequest,"
                        " QuotaFailure, RetryInfo, ...), each with its `@type`.",
                        "items": {"type": "object", "properties": {"@type": {"type": "string"}},
                                  "required": ["@type"]}}},
        "required": ["error_code", "error_msg", "code", "message", "details"]}
    error_content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}
    responses_components = {}
    for code, (name, description) in ERROR_RESPONSES.items():
        headers = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
        if code in ("403", "503"):
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        if code == "401":
            headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
        responses_components[name] = {"description": description, "headers": headers, "content": error_content}

    tags = [{"name": s.name, "description": protos.comments.get((f.name, (FILE_SERVICE, i)), "")}
            for f, i, s in protos.services()]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "iotda-export HTTP/JSON API", "version": version,
                 "description": GATEWAY_INTRO,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "tags": tags,
        "security": [{"AkSk": []}, {"AuthToken": []}],
        "paths": paths,
        "components": {"schemas": dict(sorted(components_schemas.items())), "responses": responses_components,
                       "parameters": PARAMETERS, "headers": HEADERS, "securitySchemes": SECURITY_SCHEMES},
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def _shown(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="exit 1, with a diff, when a committed copy is not what the protos generate")
    args = parser.parse_args(argv)
    try:
        text = render()
    except GenerationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.check:
        for out in OUTPUTS:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            print(f"wrote {_shown(out)}")
        return 0
    stale = []
    for out in OUTPUTS:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            stale.append(out)
            diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), f"{_shown(out)} (committed)",
                                             f"{_shown(out)} (from the protos)", lineterm="", n=1))
            print("\n".join(diff[:60] + (["..."] if len(diff) > 60 else [])), file=sys.stderr)
    if stale:
        print(f"error: {', '.join(_shown(p) for p in stale)} stale: run `make openapi` and commit the result",
              file=sys.stderr)
        return 1
    print(", ".join(_shown(p) for p in OUTPUTS) + " up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
