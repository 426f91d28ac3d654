"""The HTTP/JSON gateway over raw HTTP (http.client: the request line goes out byte for byte, with no
client-side path normalisation): every route, the JSON shapes, status codes and headers, and every
refusal. Requests are signed by a small AK/SK signer written here from the facts sheet (§4.3), not
by the server's verifier, or carry `X-Auth-Token`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import io
import json
import os
import re
import threading
import zipfile
from urllib.parse import quote, unquote

import grpc
import pytest
import xlrd
from conftest import ServerThread, make_user, wait_for

from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.runner.xls import HEADER

HEX24 = re.compile(r"^[0-9a-f]{24}$")
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
EXPORT_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ERROR_KEYS = {"error_code", "error_msg", "code", "message", "details"}
EXPORT_TASK_KEYS = {"export_task_id", "resource_type", "resource_condition", "export_format", "status",
                    "export_count", "progress", "create_time", "app_type", "file_available"}
BATCH_TASK_KEYS = {"task_id", "task_name", "task_type", "task_mode", "need_confirm", "task_ext_info", "targets",
                   "targets_filter", "document", "task_policy", "status", "status_desc", "task_progress",
                   "create_time", "app_id", "document_source"}
MAX_BODY = 20 * 1024 * 1024  # transport/grpc_server.py MAX_MESSAGE_BYTES


# -- an AK/SK signer, from the facts sheet ---------------------------------------------------------

def _canonical_uri(raw_path: str) -> str:
    uri = "/".join(quote(seg, safe="~") for seg in unquote(raw_path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def _canonical_query(raw_query: str) -> str:
    pairs = sorted((unquote(k), unquote(v)) for k, _, v in (p.partition("=") for p in raw_query.split("&") if p))
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)


def sign(method: str, raw_path: str, raw_query: str, headers: dict[str, str], body: bytes, ak: str, sk: str,
         *, date: str, region: str | None = None, signed: list[str] | None = None, service: str = "iotdm",
         scope_date: str | None = None) -> str:
    """The Authorization header value: SDK-HMAC-SHA256, or V11-HMAC-SHA256 when a region is given."""
    lower = {k.lower(): v for k, v in headers.items()}
    names = sorted(signed if signed is not None else lower)
    canonical = "\n".join([
        method, _canonical_uri(raw_path), _canonical_query(raw_query),
        "".join(f"{n}:{lower[n].strip()}\n" for n in names), ";".join(names),
        hashlib.sha256(body).hexdigest()])
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    if region is None:
        to_sign, key = f"SDK-HMAC-SHA256\n{date}\n{digest}", sk.encode()
        return (f"SDK-HMAC-SHA256 Access={ak}, SignedHeaders={';'.join(names)}, "
                f"Signature={hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()}")
    info = f"{scope_date or date[:8]}/{region}/{service}"
    prk = hmac.new(ak.encode(), sk.encode(), hashlib.sha256).digest()
    key = hmac.new(prk, info.encode() + b"\x01", hashlib.sha256).hexdigest().encode()  # HKDF, hex text as key
    to_sign = f"V11-HMAC-SHA256\n{date}\n{info}\n{digest}"
    return (f"V11-HMAC-SHA256 Credential={ak}/{info}, SignedHeaders={';'.join(names)}, "
            f"Signature={hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()}")


def sdk_date(delta: dt.timedelta = dt.timedelta()) -> str:
    return (dt.datetime.now(dt.timezone.utc) + delta).strftime("%Y%m%dT%H%M%SZ")


def test_the_test_signer_reproduces_the_facts_vectors():
    ak, sk, date, pid = "TESTAK0123456789", "testsk-secret-ABCDEFGHIJ", "20240102T030405Z", "0123456789abcdef" * 2
    base = {"Host": "127.0.0.1:8080", "User-Agent": "huaweicloud-usdk-python/3.0", "X-Project-Id": pid,
            "X-Sdk-Date": date}
    body = b'{"resource_type": "BatchTask", "resource_condition": {"task_id": "5f433ce0c24389024365fdfa"}}'
    post = sign("POST", f"/v5/iot/{pid}/export-tasks", "", {**base, "Content-Type": "application/json;charset=utf-8",
                                                              "Instance-Id": "inst-1"}, body, ak, sk, date=date)
    assert post.endswith("Signature=92dbf8c67d56709b5825946e8427757f7af7c417eef07ab26a2b72b6f8029779")
    get_headers = {**base, "Content-Type": "application/json"}
    get = sign("GET", f"/v5/iot/{pid}/export-tasks", "limit=10&marker=ffffffffffffffffffffffff&offset=0",
               get_headers, b"", ak, sk, date=date)
    assert get.endswith("Signature=6b371f8ea6b7a5590e0a3fba78abf87921592cc4aecac4e601caf42e95b22a5a")
    v11 = sign("GET", f"/v5/iot/{pid}/export-tasks", "limit=10", get_headers, b"", ak, sk, date=date,
               region="cn-north-4")
    assert v11.endswith("Signature=99c8424d8a2c1ed201978eb3af9555438e36145c2b24d8531ec8e79917a3c037")


# -- a raw HTTP client -----------------------------------------------------------------------------

class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    def error(self, status: int, error_code: str | None = None) -> dict:
        """Checks an error response: status, the platform's and grpc-gateway's keys, the code."""
        assert self.status == status, (self.status, self.body[:500])
        doc = self.json()
        assert ERROR_KEYS <= set(doc), doc
        assert isinstance(doc["code"], int) and isinstance(doc["details"], list)
        assert doc["error_msg"] and doc["message"] == doc["error_msg"]
        assert re.match(r"^(IOTDA\.\d{6}|APIGW\.\d{4})$", doc["error_code"]), doc
        if error_code is not None:
            assert doc["error_code"] == error_code, doc
        return doc


class Api:
    """Raw HTTP to the gateway as one principal: auth "sign" (SDK-HMAC-SHA256), "v11", "token" or None."""

    request_ids: set[str] = set()  # every X-Request-Id seen in this run: each response has its own

    def __init__(self, server: ServerThread, creds: dict):
        self.port = server.http_port
        self.creds = creds
        self.project = creds["project_id"]

    def path(self, rest: str, project: str | None = None) -> str:
        return f"/v5/iot/{project or self.project}{rest}"

    def call(self, method: str, path: str, body: bytes | str | dict | None = None, *, query: str = "",
             auth: str | None = "sign", headers: dict | None = None, content_type: str | None = "application/json",
             date: str | None = None, sk: str | None = None, ak: str | None = None, signed: list[str] | None = None,
             tamper: bytes | None = None, chunked: bool = False, v11: dict | None = None) -> Response:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        body = body or b""
        h = {"Host": f"127.0.0.1:{self.port}"}
        if content_type:
            h["Content-Type"] = content_type
        if auth in ("sign", "v11"):
            h["X-Project-Id"] = self.project
        h.update(headers or {})
        if auth in ("sign", "v11"):
            h["X-Sdk-Date"] = date or sdk_date()
            h["Authorization"] = sign(method, path, query, h, body, ak or self.creds["ak"], sk or self.creds["sk"],
                                      date=h["X-Sdk-Date"], region="cn-north-4" if auth == "v11" else None,
                                      signed=signed, **(v11 or {}))
        elif auth == "token":
            h["X-Auth-Token"] = self.creds["token"]
        if tamper is not None:
            body = tamper
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            target = path + (f"?{query}" if query else "")
            if chunked:
                conn.request(method, target, body=iter([body[i:i + 1 << 20] for i in range(0, len(body), 1 << 20)]),
                             headers=h, encode_chunked=True)
            else:
                if body or method in ("POST", "PUT", "DELETE"):
                    h.setdefault("Content-Length", str(len(body)))
                conn.request(method, target, body=body or None, headers=h)
            r = conn.getresponse()
            response = Response(r.status, r.headers, r.read())
        finally:
            conn.close()
        # Every response, success or error, carries the request's id.
        request_id = response.headers.get("X-Request-Id", "")
        assert REQUEST_ID.match(request_id), (response.status, dict(response.headers))
        assert request_id not in Api.request_ids, "X-Request-Id repeated"
        Api.request_ids.add(request_id)
        return response

    # conveniences
    def create_export(self, task_id: str, **fields) -> dict:
        r = self.call("POST", self.path("/export-tasks"),
                      {"resource_type": "BatchTask", "resource_condition": {"task_id": task_id}, **fields})
        assert r.status == 201, r.body
        return r.json()

    def wait_success(self, export_task_id: str) -> dict:
        def done():
            doc = self.call("GET", self.path(f"/export-tasks/{export_task_id}"), auth="token").json()
            assert doc["status"] != "Failed", doc
            return doc["status"] == "Success" and doc
        return wait_for(done, timeout=30, interval=0.1, what=f"export {export_task_id} to succeed")


@pytest.fixture
def api(server, user) -> Api:
    return Api(server, user.creds)


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory):
    """A second server without workers: its exports stay queued (Processing) until cancelled."""
    s = ServerThread(tmp_path_factory.mktemp("idle"), workers=0, http_addr="127.0.0.1:0")
    yield s
    s.stop()


def check_export_task(doc: dict, task_id: str) -> None:
    assert EXPORT_TASK_KEYS <= set(doc) <= EXPORT_TASK_KEYS | {"end_time", "app_id", "status_desc"}, doc
    assert HEX24.match(doc["export_task_id"]) and doc["resource_condition"] == {"task_id": task_id}
    assert (doc["resource_type"], doc["export_format"]) == ("BatchTask", "xls")
    assert type(doc["export_count"]) is int and type(doc["progress"]) is int and 1 <= doc["progress"] <= 100
    assert type(doc["file_available"]) is bool and EXPORT_TIME.match(doc["create_time"])
    assert ("end_time" in doc) == (doc["status"] != "Processing")


# -- every route -----------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", ["sign", "v11", "token"])
def test_export_task_routes(api, user, seed, server, auth):
    task_id = seed(user, 25)
    created = api.call("POST", api.path("/export-tasks"), {"resource_type": "BatchTask",
                                                           "resource_condition": {"task_id": task_id}}, auth=auth)
    assert created.status == 201
    task = created.json()
    check_export_task(task, task_id)
    assert task["status"] == "Processing" and task["app_type"] == "GLOBAL" and "app_id" not in task
    export_task_id = task["export_task_id"]

    # Progress: newline-delimited {"result": ...}, ending after the terminal state.
    progress = api.call("GET", api.path(f"/export-tasks/{export_task_id}/progress"), auth=auth)
    assert progress.status == 200 and progress.headers["Content-Type"].startswith("application/json")
    assert progress.body.endswith(b"\n")
    events = [json.loads(line) for line in progress.body.decode().splitlines()]
    assert all(set(e) == {"result"} for e in events)
    assert [e["result"]["export_task"]["status"] for e in events][-1] == "Success"
    assert all(e["result"]["export_task"]["status"] == "Processing" for e in events[:-1])
    assert [e["result"]["sequence"] for e in events] == sorted({e["result"]["sequence"] for e in events})
    assert all(type(e["result"]["sequence"]) is int and e["result"]["heartbeat"] is False for e in events)

    one = api.call("GET", api.path(f"/export-tasks/{export_task_id}"), auth=auth).json()
    check_export_task(one, task_id)
    assert (one["status"], one["progress"], one["export_count"], one["file_available"]) == ("Success", 100, 25, True)

    listed = api.call("GET", api.path("/export-tasks"), query="limit=5&resource_type=BatchTask", auth=auth).json()
    assert set(listed) == {"export_tasks", "page"} and listed["export_tasks"] == [one]
    assert listed["page"] == {"count": 1, "marker": export_task_id}

    file = api.call("GET", api.path(f"/export-tasks/{export_task_id}/file"), auth=auth)
    assert file.status == 200 and file.headers["Content-Type"] == "application/zip"
    assert file.headers["Content-Disposition"] == f'attachment; filename="export-{export_task_id}.zip"'
    assert int(file.headers["Content-Length"]) == len(file.body)
    with open(os.path.join(server.data_dir, "files", f"{export_task_id}.zip"), "rb") as f:
        assert f.read() == file.body
    with zipfile.ZipFile(io.BytesIO(file.body)) as z:
        sheet = xlrd.open_workbook(file_contents=z.read(f"export-{export_task_id}.xls")).sheet_by_index(0)
    assert tuple(sheet.row_values(0)) == HEADER and sheet.nrows == 26

    # Cancel of a finished task changes nothing (body "*": an empty body is fine).
    cancelled = api.call("POST", api.path(f"/export-tasks/{export_task_id}/cancel"), auth=auth)
    assert cancelled.status == 200 and cancelled.json() == one

    deleted = api.call("DELETE", api.path(f"/export-tasks/{export_task_id}"), auth=auth)
    assert deleted.status == 204 and deleted.body == b""
    api.call("GET", api.path(f"/export-tasks/{export_task_id}"), auth=auth).error(404, "IOTDA.018001")
    api.call("DELETE", api.path(f"/export-tasks/{export_task_id}"), auth=auth).error(404, "IOTDA.018001")
    assert not os.path.exists(os.path.join(server.data_dir, "files", f"{export_task_id}.zip"))


def test_cancel_an_unfinished_export_ends_its_progress_stream(idle_server):
    with grpc.insecure_channel(idle_server.address) as ch:
        user = make_user(idle_server, ch)
        api = Api(idle_server, user.creds)
        task_id = seed_batch_task(idle_server.store, user.project_id, "", 3, seed=3)
        task = api.create_export(task_id, app_type="APP")
        assert (task["status"], task["progress"], task["app_id"]) == ("Processing", 1, "default")
        url = api.path(f"/export-tasks/{task['export_task_id']}")

        streamed: list[Response] = []
        watcher = threading.Thread(target=lambda: streamed.append(api.call("GET", url + "/progress")))
        watcher.start()
        hub = idle_server.server.hub  # this server's only watcher: the stream above
        wait_for(lambda: hub.watchers == 1, timeout=10, what="the progress stream to subscribe")
        cancelled = api.call("POST", url + "/cancel", b"{}")
        assert cancelled.status == 200
        doc = cancelled.json()
        assert (doc["status"], doc["status_desc"], doc["progress"]) == ("Failed", "cancelled", 1)
        watcher.join(20)
        assert not watcher.is_alive() and streamed[0].status == 200
        events = [json.loads(line)["result"] for line in streamed[0].body.decode().splitlines()]
        assert events[0]["export_task"]["status"] == "Processing"
        assert events[-1]["export_task"]["status"] == "Failed"
        # The file route of a task without a file: 400 (FAILED_PRECONDITION), not a 500.
        api.call("GET", url + "/file").error(400, "IOTDA.018004")


def test_batch_task_routes(api, user):
    body = {"task_name": "http_upgrade", "task_type": "firmwareUpgrade", "targets": ["d_1", "d_2", "d_3"],
            "document": {"package_id": "5f2b0b5d8e0e1d0c0b0a0908"},
            "task_policy": {"retry_count": 2, "retry_interval": 10}}
    created = api.call("POST", api.path("/batchtasks"), body)
    assert created.status == 201
    task = created.json()
    assert set(task) == BATCH_TASK_KEYS, set(task) ^ BATCH_TASK_KEYS
    assert HEX24.match(task["task_id"]) and task["status"] == "Processing" and task["need_confirm"] is False
    assert task["task_ext_info"] is None and task["targets_filter"] is None  # unpopulated messages: null
    assert task["task_policy"] == {"schedule_time": "", "retry_count": 2, "retry_interval": 10}
    assert task["task_progress"] == {"total": 3, "processing": 3, "success": 0, "fail": 0, "waitting": 0,
                                     "fail_wait_retry": 0, "stopped": 0, "removed": 0}
    url = api.path(f"/batchtasks/{task['task_id']}")

    shown = api.call("GET", url, query="limit=2").json()
    assert set(shown) == {"batchtask", "task_details", "page"}
    assert shown["batchtask"] == task and shown["page"]["count"] == 3 and type(shown["page"]["count"]) is int
    assert [d["target"] for d in shown["task_details"]] == ["d_3", "d_2"]
    assert shown["task_details"][0] == {"target": "d_3", "status": "Processing", "output": "",
                                        "error": {"error_code": "", "error_msg": ""}}
    rest = api.call("GET", url, query=f"limit=2&marker={shown['page']['marker']}").json()
    assert [d["target"] for d in rest["task_details"]] == ["d_1"]

    listed = api.call("GET", api.path("/batchtasks"), query="task_type=firmwareUpgrade").json()
    assert [t["task_id"] for t in listed["batchtasks"]] == [task["task_id"]]
    assert listed["batchtasks"][0]["targets"] == [] and listed["page"]["count"] == 1

    # Unfinished: delete refused; record every result; then it is finished and deletable.
    api.call("DELETE", url).error(400, "IOTDA.019002")
    results = {"results": [{"target": "d_1", "status": "Success", "output": "ok"},
                           {"target": "d_2", "status": "Fail", "error": {"error_code": "IOTDA.014016",
                                                                        "error_msg": "Device is offline."}},
                           {"target": "d_3", "status": "Success"}]}
    recorded = api.call("POST", url + "/results", results)
    assert recorded.status == 200
    assert recorded.json()["batchtask"]["status"] == "PartialSuccess"
    failed = api.call("GET", url, query="task_detail_status=Fail").json()
    assert failed["task_details"] == [{"target": "d_2", "status": "Fail", "output": "",
                                       "error": {"error_code": "IOTDA.014016", "error_msg": "Device is offline."}}]
    deleted = api.call("DELETE", url)
    assert deleted.status == 204 and deleted.body == b""
    api.call("GET", url).error(404, "IOTDA.019001")


def test_bearer_authorization_header_is_accepted(api, user):
    r = api.call("GET", api.path("/export-tasks"), auth=None,
                 headers={"Authorization": f"Bearer {user.creds['token']}"})
    assert r.status == 200 and r.json() == {"export_tasks": [], "page": {"count": 0, "marker": ""}}


# -- request errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type,body", [
    ("application/json", b'{"resource_type": "BatchTask",'),
    ("application/json", b"\xff\xfe not utf-8"),
    ("application/json", b'["not", "an", "object"]'),
    ("text/plain", b'{"resource_type": "BatchTask", "resource_condition": {"task_id": "abc"}}'),
    ("application/x-www-form-urlencoded", b"resource_type=BatchTask"),
])
def test_unparseable_bodies_are_400_bad_format(api, content_type, body):
    api.call("POST", api.path("/export-tasks"), body, content_type=content_type).error(400, "IOTDA.000008")


@pytest.mark.parametrize("method,rest,query,body,field", [
    ("POST", "/export-tasks", "", {"resource_type": "Device", "resource_condition": {"task_id": "abc"}},
     "resource_type"),
    ("POST", "/export-tasks", "", {"resource_type": "BatchTask", "resource_condition": {"task_id": "XYZ"}},
     "resource_condition.task_id"),
    ("POST", "/export-tasks", "", {"resource_type": 7}, "resource_type"),
    ("GET", "/export-tasks", "limit=ten", None, "limit"),
    ("GET", "/export-tasks", "offset=501", None, "offset"),
    ("GET", "/export-tasks", "marker=zz", None, "marker"),
    ("GET", "/export-tasks", "resource_condition=%7Bnot-json", None, "resource_condition"),
    ("GET", "/export-tasks", "limit=1&limit=2", None, "limit"),  # a second value for a single field
    ("GET", "/batchtasks", "task_type=firmwareUpgrade&status=Done", None, "status"),
    ("POST", "/batchtasks", "", {"task_name": "x y", "task_type": "createCommands", "targets": ["d"]}, "task_name"),
])
def test_invalid_values_are_400_naming_the_field(api, method, rest, query, body, field):
    doc = api.call(method, api.path(rest), body, query=query).error(400, "IOTDA.000006")
    violations = [d for d in doc["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert field in [v["field"] for v in violations[0]["field_violations"]], doc


@pytest.mark.parametrize("rest,extra", [("/export-tasks", ""), ("/batchtasks", "&task_type=firmwareUpgrade")])
@pytest.mark.parametrize("limit", ["0", "51", "-1"])
def test_limit_out_of_range_is_iotda_000017(api, rest, extra, limit):
    api.call("GET", api.path(rest), query=f"limit={limit}{extra}").error(400, "IOTDA.000017")


def test_unknown_query_parameters_are_ignored(api, user, seed):
    task_id = seed(user, 2)
    api.wait_success(api.create_export(task_id)["export_task_id"])  # settled: two lists must agree
    plain = api.call("GET", api.path("/export-tasks"), query="limit=5").json()
    noisy = api.call("GET", api.path("/export-tasks"),
                     query="limit=5&foo=bar&page.count=9&export_tasks=x&nested.unknown=1&=&x").json()
    assert plain["export_tasks"] and noisy == plain
    # ...and an Instance-Id header is validated like any input.
    api.call("GET", api.path("/export-tasks"), headers={"Instance-Id": "bad/instance"}).error(400, "IOTDA.000006")


def test_the_path_binds_project_id_over_query_and_body(api, user, seed, server, channel):
    other = make_user(server, channel).project_id
    task_id = seed(user, 2)
    created = api.call("POST", api.path("/export-tasks"), {"project_id": other, "resource_type": "BatchTask",
                                                           "resource_condition": {"task_id": task_id}})
    assert created.status == 201
    listed = api.call("GET", api.path("/export-tasks"), query=f"project_id={other}").json()
    assert [t["export_task_id"] for t in listed["export_tasks"]] == [created.json()["export_task_id"]]


def test_second_download_within_30s_is_403_with_retry_after(api, user, seed, server):
    export_task_id = api.create_export(seed(user, 3000))["export_task_id"]
    api.wait_success(export_task_id)
    url = api.path(f"/export-tasks/{export_task_id}/file")
    first = api.call("GET", url)
    assert first.status == 200 and first.body[:2] == b"PK"
    with open(os.path.join(server.data_dir, "files", f"{export_task_id}.zip"), "rb") as f:
        on_disk = f.read()
    assert len(on_disk) > 64 * 1024 and first.body == on_disk  # more than one 64 KiB chunk, joined exactly
    # Resuming the same file (offset > 0) is not a new download.
    tail = api.call("GET", url, query="offset=1000")
    assert tail.status == 200 and tail.body == on_disk[1000:]
    refused = api.call("GET", url)
    doc = refused.error(403, "IOTDA.018003")  # the platform's status for its rate limits
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in doc["details"])
    api.call("GET", url, query="offset=999999999").error(400, "IOTDA.000006")  # past the end: OUT_OF_RANGE


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_over_the_message_limit_are_413(api, chunked):
    body = b'{"resource_type": "' + b"B" * MAX_BODY + b'"}'
    api.call("POST", api.path("/export-tasks"), body, auth="token", chunked=chunked).error(413, "IOTDA.000008")


SENTINEL = b"SENTINEL-OUTSIDE-FILES-DIR"


@pytest.fixture
def sentinel(server):
    """A zip-named file beside (not inside) the result files directory: no id may reach it."""
    path = os.path.join(server.data_dir, "secret.zip")
    with open(path, "wb") as f:
        f.write(SENTINEL)
    yield path
    os.remove(path)


@pytest.mark.parametrize("method,template", [
    ("GET", "/export-tasks/{}/file"), ("GET", "/export-tasks/{}"), ("DELETE", "/export-tasks/{}"),
    ("GET", "/export-tasks/{}/progress"), ("POST", "/export-tasks/{}/cancel"), ("GET", "/batchtasks/{}"),
    ("DELETE", "/batchtasks/{}"),
])
def test_ids_holding_slashes_or_dots_are_clean_400_or_404(api, sentinel, method, template):
    for raw_id in ("../secret", "..", "%2e%2e", "%2E%2E%2Fsecret", "..%2Fsecret", "a%2Fb", "%2e%2e%2f%2e%2e%2fsecret",
                   "..%5csecret", "%00", "%ff", "a%", "....//secret", "files/../../secret"):
        for auth in ("sign", "token"):
            r = api.call(method, api.path(template.format(raw_id)), auth=auth)
            assert r.status in (400, 404), (raw_id, r.status, r.body[:300])
            assert SENTINEL not in r.body
            r.error(r.status)


# -- authentication and authorization --------------------------------------------------------------

def test_no_credentials_is_401_with_www_authenticate(api):
    r = api.call("GET", api.path("/export-tasks"), auth=None)
    r.error(401, "IOTDA.000002")
    assert r.headers["WWW-Authenticate"]
    api.call("GET", api.path("/export-tasks"), auth=None, headers={"X-Auth-Token": "not-a-token"}) \
        .error(401, "IOTDA.000002")
    api.call("GET", api.path("/export-tasks"), auth=None, headers={"Authorization": "SDK-HMAC-SHA256 garbage"}) \
        .error(401, "IOTDA.000002")


@pytest.mark.parametrize("auth", ["sign", "v11"])
@pytest.mark.parametrize("case", ["stale date", "future date", "unknown AK", "wrong SK", "tampered body",
                                  "host unsigned", "date unsigned", "bad date"])
def test_bad_signatures_are_401(api, user, seed, auth, case):
    task_id = seed(user, 1)
    body = {"resource_type": "BatchTask", "resource_condition": {"task_id": task_id}}
    kw: dict = {
        "stale date": {"date": sdk_date(-dt.timedelta(minutes=16))},
        "future date": {"date": sdk_date(dt.timedelta(minutes=16))},
        "unknown AK": {"ak": "NOSUCHAK000000000000"},
        "wrong SK": {"sk": user.creds["sk"][:-1] + ("A" if user.creds["sk"][-1] != "A" else "B")},
        "tampered body": {"tamper": json.dumps({**body, "app_type": "APP"}).encode()},
        "host unsigned": {"signed": ["content-type", "x-project-id", "x-sdk-date"]},
        "date unsigned": {"signed": ["content-type", "host", "x-project-id"]},
        "bad date": {"date": "2024-01-02T03:04:05Z"},
    }[case]
    r = api.call("POST", api.path("/export-tasks"), body, auth=auth, **kw)
    r.error(401, "IOTDA.000002")
    assert r.headers["WWW-Authenticate"]
    # A correct signature a moment later is accepted (the refusal was about this request only).
    assert api.call("POST", api.path("/export-tasks"), body, auth=auth).status == 201


@pytest.mark.parametrize("scope", [{"service": "iam"}, {"scope_date": "20200101"}],
                         ids=["other-service", "scope-date-not-x-sdk-date"])
def test_v11_scope_must_be_iotdm_and_the_request_date(api, scope):
    api.call("GET", api.path("/export-tasks"), auth="v11", v11=scope).error(401, "IOTDA.000002")
    assert api.call("GET", api.path("/export-tasks"), auth="v11", v11={"service": "iotdm"}).status == 200


def test_a_date_within_the_window_is_accepted(api):
    assert api.call("GET", api.path("/export-tasks"), date=sdk_date(-dt.timedelta(minutes=14))).status == 200


def test_a_principal_without_the_action_is_403(server, channel, seed):
    reader = make_user(server, channel, actions=["iotda:exporttasks:queryList"])
    api = Api(server, reader.creds)
    task_id = seed(reader, 2)
    for auth in ("sign", "token"):
        doc = api.call("POST", api.path("/export-tasks"), {"resource_type": "BatchTask",
                                                           "resource_condition": {"task_id": task_id}},
                       auth=auth).error(403, "IOTDA.000003")
        assert "iotda:exporttasks:create" in doc["error_msg"]
        api.call("GET", api.path(f"/batchtasks/{task_id}"), auth=auth).error(403, "IOTDA.000003")
        assert api.call("GET", api.path("/export-tasks"), auth=auth).status == 200


def test_project_mismatches_are_403(api, server, channel):
    other = make_user(server, channel).project_id
    # X-Project-Id (signed) differs from the path's project.
    api.call("GET", api.path("/export-tasks"), headers={"X-Project-Id": other}).error(403, "IOTDA.000003")
    api.call("GET", api.path("/export-tasks"), auth="token", headers={"X-Project-Id": other}) \
        .error(403, "IOTDA.000003")
    # Both name another project: the signature is good, the principal is not of that project.
    for auth in ("sign", "token"):
        r = api.call("GET", api.path("/export-tasks", project=other), auth=auth, headers={"X-Project-Id": other})
        r.error(403, "IOTDA.000003")


# -- routing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/"), ("GET", "/v5/iot"), ("GET", "/v5/iot/p/unknown"), ("GET", "/v5/iot/p/export-tasks/x/y/z"),
    ("POST", "/v5/iot/p/batchtask-files"), ("GET", "/v3/iot/p/export-tasks"),
])
def test_unknown_routes_are_404(api, method, path):
    doc = api.call(method, path, auth="token").error(404)
    assert doc["code"] == 5  # NOT_FOUND, as grpc-gateway's routing error


@pytest.mark.parametrize("method,rest,allowed", [
    ("PUT", "/export-tasks", {"GET", "POST"}), ("DELETE", "/export-tasks", {"GET", "POST"}),
    ("POST", "/export-tasks/abc/file", {"GET"}), ("PATCH", "/batchtasks/abc", {"GET", "DELETE"}),
    ("GET", "/export-tasks/abc/cancel", {"POST"}),
])
def test_wrong_methods_are_405_with_allow(api, method, rest, allowed):
    r = api.call(method, api.path(rest), auth="token")
    r.error(405)
    assert set(r.headers["Allow"].split(", ")) == allowed
