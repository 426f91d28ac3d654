"""Hostile input, property-based: random bytes, random field values and random HTTP requests at every
RPC and route. The server never answers INTERNAL/UNKNOWN (HTTP 500), never crashes, and a refused
request changes nothing in the store.

Bounded for CI (the "ci" profile, 40 examples each); `make fuzz` runs the "long" one (2,000 each).
"""

from __future__ import annotations

import http.client
import json
import os
import string

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from google.protobuf import message_factory

from iotda.export.v1 import batch_task_pb2, export_task_pb2

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("IOTDA_FUZZ_PROFILE", "ci"))

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
             grpc.StatusCode.UNIMPLEMENTED}
METHODS = [m for d, n in ((export_task_pb2.DESCRIPTOR, "ExportTaskService"),
                          (batch_task_pb2.DESCRIPTOR, "BatchTaskService"))
           for m in d.services_by_name[n].methods]
METHOD_IDS = [m.name for m in METHODS]

# Text that stresses validators: every plane, controls, path tricks, huge sizes.
TRICKY = st.sampled_from(["", " ", "..", "../..", "%2F", "a/b", "\x00", "\u202e", "😀", "ffffffffffffffffffffffff",
                          "=1+1", "' OR 1=1 --", "x" * 70_000, "\u4e2d\u6587", "default", "BatchTask", "GLOBAL"])
TEXT = st.one_of(TRICKY, st.text(max_size=300), st.text(alphabet=string.hexdigits.lower(), max_size=30))


def state(server) -> tuple:
    """What a refused request must not change."""
    c = server.store.reader().conn
    return tuple(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("export_tasks", "batch_tasks", "subtasks", "principals", "download_limits"))


def _call(channel, method, payload: bytes, metadata):
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        call = channel.unary_stream(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return list(call(payload, metadata=metadata, timeout=10))
    call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return call(payload, metadata=metadata, timeout=10)


def _fill(message, draw, depth=0):
    """A message with random values in every field (strings tricky, numbers at the edges)."""
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None:
            if field.message_type.full_name.startswith("google.protobuf.") or depth > 2:
                continue
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 3))):
                    _fill(getattr(message, field.name).add(), draw, depth + 1)
            elif draw(st.booleans()):
                _fill(getattr(message, field.name), draw, depth + 1)
            continue
        if field.cpp_type == field.CPPTYPE_STRING:
            if field.is_repeated:
                getattr(message, field.name).extend(draw(st.lists(TEXT, max_size=5)))
            else:
                setattr(message, field.name, draw(TEXT))
        elif field.cpp_type in (field.CPPTYPE_INT32, field.CPPTYPE_INT64):
            bits = 31 if field.cpp_type == field.CPPTYPE_INT32 else 63
            value = draw(st.one_of(st.sampled_from([0, -1, 1, 50, 51, 500, 501, 2**bits - 1, -2**bits]),
                                   st.integers(-2**bits, 2**bits - 1)))
            if not field.is_repeated:
                setattr(message, field.name, value)
        elif field.cpp_type == field.CPPTYPE_BOOL and not field.is_repeated:
            setattr(message, field.name, draw(st.booleans()))


@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
@given(payload=st.binary(max_size=200))
def test_random_bytes_never_internal(server, channel, user, method, payload):
    before = state(server)
    try:
        _call(channel, method, payload, user.metadata)
    except grpc.RpcError as e:
        assert e.code() not in FORBIDDEN, (e.code(), e.details())
        assert state(server) == before, f"{method.name} refused ({e.code()}) but changed the store"


@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
@given(data=st.data())
def test_random_field_values_never_internal_and_refusals_change_nothing(server, channel, user, method, data):
    request = message_factory.GetMessageClass(method.input_type)()
    _fill(request, data.draw)
    if data.draw(st.booleans()):
        request.project_id = user.project_id  # get past the project check to the field rules
    before = state(server)
    try:
        _call(channel, method, request.SerializeToString(), user.metadata)
    except grpc.RpcError as e:
        assert e.code() not in FORBIDDEN, (e.code(), e.details())
        assert state(server) == before, f"{method.name} refused ({e.code()}) but changed the store"


SMALL_TRICKY = TRICKY.filter(lambda t: len(t) < 1000)  # metadata beyond 16 KiB is refused by the client


@given(token=st.one_of(SMALL_TRICKY, st.text(max_size=100)), instance=st.one_of(SMALL_TRICKY, st.text(max_size=50)))
def test_bad_credentials_and_instance_ids(server, channel, user, token, instance):
    request = export_task_pb2.ListExportTasksRequest(project_id=user.project_id)
    # gRPC metadata values are printable ASCII (the client library refuses anything else itself).
    printable = "".join(ch for ch in token if " " <= ch <= "~").strip()
    metadata = [("authorization", "Bearer " + printable)]
    if instance.isascii() and instance.isprintable():
        metadata.append(("instance-id", instance))
    try:
        user.exports.ListExportTasks(request, metadata=metadata, timeout=10)
        raise AssertionError("a random token was accepted")
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT), e.code()


# -- HTTP ----------------------------------------------------------------------------------------

PATH_SEGMENT = st.one_of(st.sampled_from(["v5", "iot", "export-tasks", "batchtasks", "file", "progress", "cancel",
                                          "results", "..", "%2F", "%2e%2e", "%00", "ffffffffffffffffffffffff",
                                          "", "%ZZ", "%C3%28"]),
                         st.text(alphabet=string.ascii_letters + string.digits + "-_.~%", max_size=30))
QUERY_KEY = st.sampled_from(["limit", "offset", "marker", "resource_type", "resource_condition", "app_type",
                             "app_id", "task_type", "status", "task_detail_status", "target", "limit.x",
                             "export_task_id", "project_id", "x"])
QUERY_VALUE = st.one_of(st.sampled_from(["", "0", "-1", "51", "501", "1e3", "%ZZ", "%00", "true", "{", '{"task_id":1}',
                                         "[" * 5000]),
                        st.text(alphabet=string.printable.strip(), max_size=40))
BODY = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
                 lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.just(b"[" * 100_000),  # deep JSON
    st.just(b'{"resource_type": "BatchTask", "resource_type": 7}'),  # duplicate keys
)


def _http(server, method: str, path: str, body: bytes | None, headers: dict):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


@given(method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
       segments=st.lists(PATH_SEGMENT, min_size=1, max_size=7),
       query=st.lists(st.tuples(QUERY_KEY, QUERY_VALUE), max_size=5),
       body=BODY, content_type=st.sampled_from(["application/json", "application/json;charset=utf-8",
                                                "text/plain", "", "application/x-www-form-urlencoded"]),
       use_project=st.booleans())
def test_random_http_requests_never_500(server, user, method, segments, query, body, content_type, use_project):
    if use_project:  # under the caller's own project, so requests reach the routes' field rules
        segments = ["v5", "iot", user.project_id, *segments[:4]]
    path = "/" + "/".join(segments)
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query).replace(" ", "%20").replace("#", "%23")
    headers = {"X-Auth-Token": user.creds["token"], "Content-Type": content_type}
    before = state(server)
    status, payload, response_headers = _http(server, method, path, body if method in ("POST", "PUT", "PATCH") else None,
                                              headers)
    assert status < 500, (status, path, payload[:300])
    assert "X-Request-Id" in response_headers
    if status >= 400:
        document = json.loads(payload)
        assert {"error_code", "error_msg", "code", "message", "details"} <= set(document)
        assert state(server) == before


@given(authorization=st.one_of(
    st.sampled_from(["", "SDK-HMAC-SHA256", "SDK-HMAC-SHA256 Access=, SignedHeaders=, Signature=",
                     "V11-HMAC-SHA256 Credential=a/b/c/d, SignedHeaders=host, Signature=00",
                     "Bearer", "Basic Zm9vOmJhcg=="]),
    st.text(alphabet=string.printable.strip() + " ", max_size=200)),
    sdk_date=st.one_of(st.just(""), st.text(alphabet=string.digits + "TZ", max_size=20)))
def test_bad_signatures_are_401_never_500(server, user, authorization, sdk_date):
    headers = {"Authorization": authorization, "X-Sdk-Date": sdk_date, "Content-Type": "application/json"}
    status, payload, _ = _http(server, "GET", f"/v5/iot/{user.project_id}/export-tasks?limit=1", None, headers)
    assert status in (400, 401), (status, authorization, payload[:200])
