"""The HTTP port as an attacker meets it, over raw sockets (every byte as sent):

- no work before authentication: a request without valid credentials is answered without its body
  being read (the body is never even sent);
- headers taken exactly: a repeated meaningful or signed header, a value that is not printable
  ASCII, an unsigned scope header on a signed request: each a 400/401 with the platform's body,
  never a 500, never echoing or logging the value;
- the port's limits: header and body timeouts, the connection cap, bodies over the message limit;
- integers in queries are ASCII digits; odd paths get the JSON 404; transport failures of the
  internal call never leak gRPC wording nor turn into 429.
"""

from __future__ import annotations

import json
import logging
import socket
import time

import grpc
import pytest
from conftest import ServerThread, make_user, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_gateway import Api, sdk_date, sign

from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.transport import gateway, transcode
from iotda_export_server.transport.grpc_server import MAX_MESSAGE_BYTES
from iotda_export_server.transport.http_server import HttpLimits

LIMITED = HttpLimits(max_body_bytes=MAX_MESSAGE_BYTES, header_timeout_seconds=1.0, body_timeout_seconds=1.0,
                     max_connections=6, lingering_seconds=0.5)


class Raw:
    """One raw HTTP/1.1 exchange on a fresh connection; the response parsed by hand."""

    def __init__(self, port: int):
        self.port = port

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.settimeout(10)
        return s

    def send(self, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        with self.connect() as s:
            s.sendall(head + body)
            return read_response(s)


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def request_head(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            + b"\r\n")


def platform_error(status: int, headers: dict, body: bytes, expected_status, error_code: str | None = None) -> dict:
    assert status in ((expected_status,) if isinstance(expected_status, int) else expected_status), (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    doc = json.loads(body)
    assert {"error_code", "error_msg", "code", "message", "details"} <= set(doc)
    assert headers.get("x-request-id")
    if error_code:
        assert doc["error_code"] == error_code, doc
    return doc


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server whose HTTP port has short timeouts and a small connection cap."""
    s = ServerThread(tmp_path_factory.mktemp("limited"), workers=0, http_addr="127.0.0.1:0", http_limits=LIMITED)
    yield s
    s.stop()


@pytest.fixture
def api(server, user) -> Api:
    return Api(server, user.creds)


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage() + (self.formatException(record.exc_info) if record.exc_info else ""))


@pytest.fixture
def logs():
    handler = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in ("aiohttp", "iotda_export"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


# -- no work before authentication ----------------------------------------------------------------

@pytest.mark.parametrize("credential", [
    [], [(b"X-Auth-Token", b"0" * 64)], [(b"Authorization", b"Bearer " + b"1" * 64)],
    [(b"Authorization", b"SDK-HMAC-SHA256 Access=NOSUCHAK000000000000, SignedHeaders=host;x-sdk-date, "
                        b"Signature=" + b"a" * 64), (b"X-Sdk-Date", sdk_date().encode())],
    [(b"Authorization", b"Basic dXNlcjpwYXNz")],
], ids=["none", "unknown token", "unknown bearer", "unknown access key", "other scheme"])
def test_a_request_without_valid_credentials_is_answered_before_its_body_is_sent(server, user, credential):
    # 10 MB declared, not a byte of it sent: the 401 can only come from a server that reads none of it.
    head = request_head("POST", f"/v5/iot/{user.project_id}/batchtasks", [
        (b"Host", b"127.0.0.1"), (b"Content-Type", b"application/json"), (b"Content-Length", b"10000000"),
        *credential])
    with Raw(server.http_port).connect() as s:
        s.sendall(head)
        platform_error(*read_response(s), 401, "IOTDA.000002")


def test_expect_100_continue_is_granted_only_after_authentication(server, user, seed):
    body = json.dumps({"resource_type": "BatchTask", "resource_condition": {"task_id": seed(user, 2)}}).encode()
    path = f"/v5/iot/{user.project_id}/export-tasks"
    common = [(b"Host", b"127.0.0.1"), (b"Content-Type", b"application/json"),
              (b"Content-Length", str(len(body)).encode()), (b"Expect", b"100-continue")]
    with Raw(server.http_port).connect() as s:  # no credentials: the final answer, no invitation
        s.sendall(request_head("POST", path, common))
        platform_error(*read_response(s), 401, "IOTDA.000002")
    with Raw(server.http_port).connect() as s:
        s.sendall(request_head("POST", path, [*common, (b"X-Auth-Token", user.creds["token"].encode())]))
        interim = s.recv(64)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        s.sendall(body)
        status, _, created = read_response(s)
        assert status == 201 and json.loads(created)["resource_condition"] == json.loads(body)["resource_condition"]


def test_compressed_bodies_are_refused(api):
    api.call("POST", api.path("/export-tasks"), b"\x1f\x8b compressed", headers={"Content-Encoding": "gzip"}) \
        .error(400, "IOTDA.000008")


def test_the_http_body_limit_is_the_grpc_message_limit(server):
    assert server.server.gateway.limits.max_body_bytes == MAX_MESSAGE_BYTES == server.server.gateway.max_message_bytes


def test_a_body_whose_message_outgrows_the_limit_is_413_not_a_grpc_error():
    # JSON numbers in a Struct take ~11 bytes of protobuf each for 2 of JSON: a body under the HTTP
    # limit can transcode to a message over the gRPC one. It is refused before any call.
    route = next(r for r in transcode.routes_from([epb.DESCRIPTOR.services_by_name["ExportTaskService"]])
                 if r.method.name == "CreateExportTask")
    body = json.dumps({"resource_type": "BatchTask", "resource_condition": {"task_id": "ab"},
                       "request_id": "r" * 64}).encode()
    assert transcode.build_request(route, {"project_id": "p"}, "", "application/json", body, 200)
    with pytest.raises(transcode.RequestTooLarge):
        transcode.build_request(route, {"project_id": "p"}, "", "application/json", body, len(body) // 2)


# -- headers, exactly -----------------------------------------------------------------------------

HEADER_BYTES = st.binary(min_size=1, max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from([b"X-Auth-Token", b"Authorization", b"Instance-Id", b"X-Project-Id", b"X-Sdk-Date",
                             b"Content-Type"]),
       value=HEADER_BYTES)
def test_any_header_value_gets_a_platform_error_never_a_500_nor_an_echo(server, user, logs, name, value):
    marker = b"Zq9" + value + b"9qZ"  # distinctive, so an echo or a log line holding it is found
    head = request_head("GET", f"/v5/iot/{user.project_id}/export-tasks", [(b"Host", b"127.0.0.1"), (name, marker)])
    status, headers, body = Raw(server.http_port).send(head)
    assert status in (200, 400, 401, 403), (status, body)
    if status != 200:
        platform_error(status, headers, body, status)
    text = marker.decode("latin-1")
    assert marker not in body and text.encode("utf-8", "replace") not in body
    assert not any(text in line for line in logs.lines), [line for line in logs.lines if text in line]


@pytest.mark.parametrize("name,status", [
    ("Instance-Id", 400), ("X-Project-Id", 400), ("Content-Type", 400), ("Host", 400),
    ("X-Auth-Token", 401), ("Authorization", 401), ("X-Sdk-Date", 401),
])
def test_a_repeated_meaningful_header_is_refused(server, user, name, status):
    token = user.creds["token"].encode()
    first, second = (token, token) if name == "X-Auth-Token" else (b"a1", b"b2")
    headers = [(b"Host", b"127.0.0.1")] if name != "Host" else []
    if name != "X-Auth-Token":
        headers.append((b"X-Auth-Token", token))
    head = request_head("GET", f"/v5/iot/{user.project_id}/export-tasks",
                        [*headers, (name.encode(), first), (name.encode(), second)])
    platform_error(*Raw(server.http_port).send(head), status)


def _signed_head(api: Api, method: str, path: str, body: bytes, extra: dict[str, str], signed: list[str] | None):
    h = {"Host": f"127.0.0.1:{api.port}", "Content-Type": "application/json", "X-Project-Id": api.project,
         "X-Sdk-Date": sdk_date(), **extra}
    h["Authorization"] = sign(method, path, "", h, body, api.creds["ak"], api.creds["sk"], date=h["X-Sdk-Date"],
                              signed=signed)
    if body:
        h["Content-Length"] = str(len(body))
    return [(k.encode(), v.encode()) for k, v in h.items()]


def test_a_captured_signed_request_cannot_be_redirected_by_added_headers(server, user, seed, api):
    batch = seed(user, 2, instance_id="inst1")
    body = json.dumps({"resource_type": "BatchTask", "resource_condition": {"task_id": batch}}).encode()
    path = api.path("/export-tasks")
    signed = _signed_head(api, "POST", path, body, {"Instance-Id": "inst1"}, None)
    # A second Instance-Id (verified with one, used with the other): refused.
    status, headers, doc = Raw(server.http_port).send(
        request_head("POST", path, [*signed, (b"Instance-Id", b"inst2")]), body)
    platform_error(status, headers, doc, (400, 401))
    # Any signed header given twice (here one that means nothing to the service): 401.
    with_agent = _signed_head(api, "POST", path, body, {"X-Client": "sdk/1"}, None)
    status, headers, doc = Raw(server.http_port).send(
        request_head("POST", path, [*with_agent, (b"X-Client", b"sdk/2")]), body)
    platform_error(status, headers, doc, 401, "IOTDA.000002")
    # An Instance-Id added to a request that signed none: refused, it must be signed.
    unsigned_scope = _signed_head(api, "POST", path, body, {}, None)
    status, headers, doc = Raw(server.http_port).send(
        request_head("POST", path, [*unsigned_scope, (b"Instance-Id", b"inst2")]), body)
    platform_error(status, headers, doc, 401, "IOTDA.000002")
    # Nothing was created anywhere; the request as signed works in its own instance.
    for instance in ("inst1", "inst2", ""):
        md = (*user.metadata, ("instance-id", instance)) if instance else user.metadata
        assert not user.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=user.project_id),
                                                metadata=md).export_tasks
    status, _, created = Raw(server.http_port).send(request_head("POST", path, signed), body)
    assert status == 201, created


def test_a_signed_request_must_sign_its_content_type_and_scope_headers(server, user, seed, api):
    body = json.dumps({"resource_type": "BatchTask", "resource_condition": {"task_id": seed(user, 2)}}).encode()
    path = api.path("/export-tasks")
    for unsigned in ("content-type", "x-project-id"):
        names = [n for n in ("content-type", "host", "x-project-id", "x-sdk-date") if n != unsigned]
        status, headers, doc = Raw(server.http_port).send(
            request_head("POST", path, _signed_head(api, "POST", path, body, {}, names)), body)
        platform_error(status, headers, doc, 401, "IOTDA.000002")


def test_two_credentials_at_once_are_refused(api, user):
    api.call("GET", api.path("/export-tasks"), headers={"X-Auth-Token": user.creds["token"]}).error(401, "IOTDA.000002")


def test_a_malformed_header_is_neither_echoed_nor_logged(server, user, logs):
    token = user.creds["token"].encode()
    head = request_head("GET", f"/v5/iot/{user.project_id}/export-tasks",
                        [(b"Host", b"127.0.0.1"), (b"X-Auth-Token", token + b"\x01\x7f")])
    status, headers, body = Raw(server.http_port).send(head)
    platform_error(status, headers, body, 400, "IOTDA.000008")
    assert token not in body
    assert not any(token.decode() in line for line in logs.lines), logs.lines


# -- the port's limits ----------------------------------------------------------------------------

def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_a_client_trickling_its_headers_is_cut_off(limited):
    s = socket.create_connection(("127.0.0.1", limited.http_port), timeout=0.2)
    try:
        s.sendall(b"GET /v5/iot/p/export-tasks HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + 30
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                s.sendall(b"X-Slow: 1\r\n")  # a header line every 0.2 s, never the blank line
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            closed = _closed_by_server(s)
        assert closed, "the server kept a connection whose headers never ended"
    finally:
        s.close()


def test_a_silent_connection_is_closed(limited):
    with socket.create_connection(("127.0.0.1", limited.http_port), timeout=0.2) as s:
        wait_for(lambda: _closed_by_server(s), timeout=30, interval=0.01, what="the idle connection to be closed")


def test_a_body_that_stops_arriving_is_408(limited):
    admin = limited.admin
    with socket.create_connection(("127.0.0.1", limited.http_port), timeout=30) as s:
        s.sendall(request_head("POST", f"/v5/iot/{admin['project_id']}/export-tasks", [
            (b"Host", b"x"), (b"Content-Type", b"application/json"), (b"Content-Length", b"1000"),
            (b"X-Auth-Token", admin["token"].encode())]) + b'{"resource_type"')
        platform_error(*read_response(s), 408, "IOTDA.000008")


def test_connections_past_the_cap_are_closed_and_the_port_recovers(limited):
    admin = limited.admin
    head = request_head("GET", f"/v5/iot/{admin['project_id']}/export-tasks",
                        [(b"Host", b"x"), (b"X-Auth-Token", admin["token"].encode())])
    held = []
    try:
        for _ in range(LIMITED.max_connections):
            s = socket.create_connection(("127.0.0.1", limited.http_port), timeout=10)
            s.sendall(head)  # each served once, then kept open (keep-alive)
            assert read_response(s)[0] == 200
            held.append(s)
        extra = socket.create_connection(("127.0.0.1", limited.http_port), timeout=10)
        extra.sendall(head)
        assert _closed_by_server(extra), "a connection past the cap was served"
        extra.close()
        held.pop().close()

        def served() -> bool:
            try:
                return Raw(limited.http_port).send(head)[0] == 200
            except (ConnectionError, OSError):
                return False
        wait_for(served, timeout=30, what="a new connection to be served once one closed")
    finally:
        for s in held:
            s.close()


# -- queries, paths, transport failures -----------------------------------------------------------

@pytest.mark.parametrize("limit", ["5_0", "+5", "%205", "%EF%BC%95", "0x10", "1e1", "%D9%A5", "5.0", "05%00"])
def test_integers_in_queries_are_ascii_digits_only(api, limit):
    doc = api.call("GET", api.path("/export-tasks"), query=f"limit={limit}", auth="token").error(400, "IOTDA.000006")
    assert "limit" in doc["error_msg"]


@pytest.mark.parametrize("path", ["/v5/iot/{p}/export-tasks%0a", "/v5/iot/{p}/export-tasks%0d%0a", "/%0a", "/v5%00",
                                  "/v5/iot/{p}/export-tasks/%ff/file", "//", "/v5/iot/{p}/export-tasks/a%0ab"])
def test_odd_paths_get_the_platform_404_or_400(server, user, path):
    status, headers, body = Raw(server.http_port).send(request_head(
        "GET", path.format(p=user.project_id), [(b"Host", b"x"), (b"X-Auth-Token", user.creds["token"].encode())]))
    platform_error(status, headers, body, (400, 404))


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize("code,details,http_status", [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (25165829 vs. 20971520)", 500),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "received initial metadata size exceeds limit", 431),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1", 503),
    (grpc.StatusCode.INTERNAL, "Illegal header value", 500),
])
def test_transport_failures_of_the_internal_call_never_leak_grpc_wording(code, details, http_status):
    status, override = gateway.status_of_rpc_error(_rpc_error(code, details), "rid")
    assert override == http_status
    assert status.code != grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]  # no quota was refused
    for word in ("larger than max", "metadata", "ipv4", "Illegal", "addresses"):
        assert word not in status.message


def test_the_unfinished_quota_over_http_is_403_with_quota_failure(limited):
    # `limited` runs no workers: its exports stay unfinished, so the sixth create meets the quota.
    from iotda_export_server.domain.batches import seed_batch_task
    with grpc.insecure_channel(limited.address) as channel:
        idle = Api(limited, make_user(limited, channel).creds)
    for i in range(6):
        batch = seed_batch_task(limited.store, idle.project, "", 1, seed=100 + i)
        r = idle.call("POST", idle.path("/export-tasks"),
                      {"resource_type": "BatchTask", "resource_condition": {"task_id": batch}})
        if i < 5:
            assert r.status == 201, r.body
    doc = r.error(403, "IOTDA.018002")
    assert any(d["@type"].endswith("QuotaFailure") for d in doc["details"])


# -- JSON bodies hold only their message's fields --------------------------------------------------

@pytest.mark.parametrize("body,field,words", [
    ({"resource_type": "BatchTask", "resource_condition": {"task_id": "ab", "device_id": "d"}},
     "resource_condition.device_id", "is not a field"),
    ({"resource_type": "BatchTask", "resource_condition": "ab"}, "resource_condition", "JSON object"),
    ({"resource_type": "BatchTask", "resource_condition": ["ab"]}, "resource_condition", "JSON object"),
    ({"resource_type": "BatchTask", "resource_condition": {"task_id": 5}}, "resource_condition.task_id", "string"),
    ({"resource_type": "BatchTask", "resource_condition": {"task_id": "ab"}, "export_fromat": "xls"},
     "export_fromat", "is not a field"),
    ({"resource_type": ["BatchTask"], "resource_condition": {"task_id": "ab"}}, "resource_type", "string"),
])
def test_json_bodies_are_checked_field_by_field(api, body, field, words):
    doc = api.call("POST", api.path("/export-tasks"), body).error(400, "IOTDA.000006")
    violations = [v for d in doc["details"] if d["@type"].endswith("BadRequest") for v in d["field_violations"]]
    assert [v["field"] for v in violations] == [field] and words in violations[0]["description"], doc


def test_a_batch_task_body_checks_nested_fields_and_keeps_free_form_documents(api):
    base = {"task_name": "t", "task_type": "createCommands", "targets": ["d1"]}
    api.call("POST", api.path("/batchtasks"), {**base, "task_policy": {"retry_count": 1, "retry_intervall": 5}}) \
        .error(400, "IOTDA.000006")
    api.call("POST", api.path("/batchtasks"), {**base, "targets": "d1"}).error(400, "IOTDA.000006")
    created = api.call("POST", api.path("/batchtasks"), {**base, "document": {"any": {"nested": [1, "x", None]}}})
    assert created.status == 201 and created.json()["document"] == {"any": {"nested": [1, "x", None]}}


def test_unsigned_payload_signatures_are_accepted_and_their_body_refused(server, user):
    from test_sdk import SDK, Sdk
    sdk = Sdk(server, user.creds, SDK)
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    with pytest.raises(ClientRequestException) as info:  # the SDK signs text/plain as UNSIGNED-PAYLOAD
        sdk.client.do_http_request("POST", "/v5/iot/{project_id}/export-tasks",
                                   header_params={"Content-Type": "text/plain"},
                                   body='{"resource_type": "BatchTask"}', response_type="CreateExportTaskResponse")
    assert sdk.last.request.headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    assert (info.value.status_code, info.value.error_code) == (400, "IOTDA.000008")
    assert info.value.request_id == sdk.last.headers["X-Request-Id"]
