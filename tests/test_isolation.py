"""Isolation between tenants and users, over gRPC and HTTP, and the secrecy of credentials.

- Every export-task RPC and route (Get, Watch, Download, Cancel, Delete, List) and every batch-task RPC
  and route: another user of the same project gets NOT_FOUND / 404 for A's export task, a user of
  another project gets NOT_FOUND / 404 for A's IDs on its own path and PERMISSION_DENIED / 403 on A's
  project path; A's task, file and download allowance are unchanged afterwards. Batch tasks belong to
  the project (as on the platform), so only another project is refused them.
- No credentials: UNAUTHENTICATED on every RPC, 401 on every route.
- A real `serve` subprocess at DEBUG log level: credentials.json 0600, data and files directories 0700,
  the SQLite files and result files not group/world readable; the token, the SK and every
  Authorization signature sent (accepted and refused calls) never appear in its stdout/stderr.
- Cells that look like formulas come back from the downloaded xls as text cells.

Runs in a few seconds; no longer variant.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import pathlib
import re
import secrets
import signal
import stat
import subprocess
import sys
import time
import zipfile

import grpc
import pytest
import xlrd

from conftest import make_user, refused, wait_for
from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import batch_task_pb2_grpc as bpb_grpc
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc as epb_grpc
from test_http_gateway import Api, sdk_date, sign

Code = grpc.StatusCode


def export_calls(user, project_id: str, export_task_id: str) -> dict:
    """Every export-task operation on one task id, as `user`, on `project_id`'s path."""
    s, md, p, t = user.exports, user.metadata, project_id, export_task_id
    return {
        "GetExportTask": lambda: s.GetExportTask(epb.GetExportTaskRequest(project_id=p, export_task_id=t),
                                                 metadata=md, timeout=10),
        "WatchProgress": lambda: s.WatchProgress(epb.WatchProgressRequest(project_id=p, export_task_id=t),
                                                 metadata=md, timeout=10),
        "ShowExportTask": lambda: s.ShowExportTask(epb.ShowExportTaskRequest(project_id=p, export_task_id=t),
                                                   metadata=md, timeout=10),
        "CancelExportTask": lambda: s.CancelExportTask(
            epb.CancelExportTaskRequest(project_id=p, export_task_id=t), metadata=md, timeout=10),
        "DeleteExportTask": lambda: s.DeleteExportTask(
            epb.DeleteExportTaskRequest(project_id=p, export_task_id=t), metadata=md, timeout=10),
    }


def batch_calls(user, project_id: str, task_id: str) -> dict:
    s, md, p, t = user.batches, user.metadata, project_id, task_id
    return {
        "ShowBatchTask": lambda: s.ShowBatchTask(bpb.ShowBatchTaskRequest(project_id=p, task_id=t), metadata=md,
                                                 timeout=10),
        "DeleteBatchTask": lambda: s.DeleteBatchTask(bpb.DeleteBatchTaskRequest(project_id=p, task_id=t),
                                                     metadata=md, timeout=10),
        "RecordSubtaskResults": lambda: s.RecordSubtaskResults(bpb.RecordSubtaskResultsRequest(
            project_id=p, task_id=t, results=[bpb.SubtaskResult(target="d_1", status="Success", output="x")]),
            metadata=md, timeout=10),
    }


def export_routes(export_task_id: str) -> list[tuple[str, str, dict | None]]:
    base = f"/export-tasks/{export_task_id}"
    return [("GET", base, None), ("GET", base + "/progress", None), ("GET", base + "/file", None),
            ("POST", base + "/cancel", {}), ("DELETE", base, None)]


def batch_routes(task_id: str) -> list[tuple[str, str, dict | None]]:
    base = f"/batchtasks/{task_id}"
    return [("GET", base, None), ("DELETE", base, None),
            ("POST", base + "/results", {"results": [{"target": "d_1", "status": "Success"}]})]


@pytest.fixture(scope="module")
def tenants(server, channel):
    """A with a finished export (file on disk) and a batch task with targets; a neighbour in A's
    project; a stranger in another project."""
    a = make_user(server, channel)
    batch = a.batches.CreateBatchTask(bpb.CreateBatchTaskRequest(
        project_id=a.project_id, task_name="iso", task_type="createCommands", targets=["d_1", "d_2"]),
        metadata=a.metadata, timeout=10).batchtask
    a.batches.RecordSubtaskResults(bpb.RecordSubtaskResultsRequest(
        project_id=a.project_id, task_id=batch.task_id,
        results=[bpb.SubtaskResult(target="d_1", status="Success", output="ok"),
                 bpb.SubtaskResult(target="d_2", status="Success", output="ok")]), metadata=a.metadata, timeout=10)
    created = a.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=a.project_id, resource_type="BatchTask", resource_condition=epb.ResourceCondition(
            task_id=batch.task_id)), metadata=a.metadata, timeout=10).export_task
    final = list(a.exports.WatchProgress(epb.WatchProgressRequest(
        project_id=a.project_id, export_task_id=created.export_task_id), metadata=a.metadata, timeout=30))[-1]
    assert final.export_task.status == "Success"
    neighbour = make_user(server, channel, project_id=a.project_id)
    stranger = make_user(server, channel)
    return a, neighbour, stranger, created.export_task_id, batch.task_id


def a_state(server, a, export_task_id: str, batch_id: str):
    task = a.exports.GetExportTask(epb.GetExportTaskRequest(project_id=a.project_id, export_task_id=export_task_id),
                                   metadata=a.metadata, timeout=10).export_task
    shown = a.batches.ShowBatchTask(bpb.ShowBatchTaskRequest(project_id=a.project_id, task_id=batch_id),
                                    metadata=a.metadata, timeout=10)
    path = server.server.files.path(export_task_id)
    return (task.SerializeToString(deterministic=True), shown.SerializeToString(deterministic=True),
            path.read_bytes(), server.store.reader().download_limit(a.creds["user"]))


def test_grpc_other_users_and_projects_cannot_reach_a_task(server, tenants):
    a, neighbour, stranger, export_id, batch_id = tenants
    before = a_state(server, a, export_id, batch_id)
    tried = 0
    # Another user (same project, and another project on its own path): the task does not exist.
    for other in (neighbour, stranger):
        for name, call in export_calls(other, other.project_id, export_id).items():
            f = refused(call, Code.NOT_FOUND)
            assert f.error_code == "IOTDA.018001", (name, f.message)
            tried += 1
        listed = other.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=other.project_id),
                                               metadata=other.metadata, timeout=10)
        assert export_id not in [t.export_task_id for t in listed.export_tasks] and listed.page.count == 0
        tried += 1
    # Another project on A's path: PERMISSION_DENIED, whatever the operation.
    for name, call in export_calls(stranger, a.project_id, export_id).items():
        assert refused(call, Code.PERMISSION_DENIED).error_code == "IOTDA.000003", name
        tried += 1
    assert refused(lambda: stranger.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=a.project_id),
                                                            metadata=stranger.metadata, timeout=10),
                   Code.PERMISSION_DENIED).error_code == "IOTDA.000003"
    # Batch tasks are the project's: another project cannot see, change, delete or export A's.
    for name, call in batch_calls(stranger, stranger.project_id, batch_id).items():
        assert refused(call, Code.NOT_FOUND).error_code == "IOTDA.019001", name
        tried += 1
    for name, call in batch_calls(stranger, a.project_id, batch_id).items():
        assert refused(call, Code.PERMISSION_DENIED).error_code == "IOTDA.000003", name
        tried += 1
    assert refused(lambda: stranger.batches.ListBatchTasks(bpb.ListBatchTasksRequest(
        project_id=a.project_id, task_type="createCommands"), metadata=stranger.metadata, timeout=10),
        Code.PERMISSION_DENIED).error_code == "IOTDA.000003"
    assert refused(lambda: stranger.batches.CreateBatchTask(bpb.CreateBatchTaskRequest(
        project_id=a.project_id, task_name="x", task_type="createCommands", targets=["d_9"]),
        metadata=stranger.metadata, timeout=10), Code.PERMISSION_DENIED).error_code == "IOTDA.000003"
    own = stranger.batches.ListBatchTasks(bpb.ListBatchTasksRequest(
        project_id=stranger.project_id, task_type="createCommands"), metadata=stranger.metadata, timeout=10)
    assert batch_id not in [t.task_id for t in own.batchtasks]
    assert refused(lambda: stranger.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=stranger.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=batch_id)), metadata=stranger.metadata, timeout=10),
        Code.NOT_FOUND).error_code == "IOTDA.019001"
    tried += 6
    assert a_state(server, a, export_id, batch_id) == before, "a refused call changed A's task"
    for other in (neighbour, stranger):
        assert server.store.reader().download_limit(other.creds["user"]) is None
    print(f"\n[isolation, gRPC] {tried} cross-user/cross-project calls refused; A's task unchanged")


def test_http_other_users_and_projects_cannot_reach_a_task(server, tenants):
    a, neighbour, stranger, export_id, batch_id = tenants
    before = a_state(server, a, export_id, batch_id)
    tried = 0
    for other in (neighbour, stranger):
        api = Api(server, other.creds)
        for auth in ("token", "sign"):
            for method, rest, body in export_routes(export_id):
                api.call(method, api.path(rest), body, auth=auth).error(404, "IOTDA.018001")
                tried += 1
            listed = api.call("GET", api.path("/export-tasks"), auth=auth).json()
            assert listed["export_tasks"] == [] and listed["page"]["count"] == 0
    api = Api(server, stranger.creds)
    for auth in ("token", "sign"):
        for method, rest, body in export_routes(export_id):
            r = api.call(method, api.path(rest, project=a.project_id), body, auth=auth,
                         headers={"X-Project-Id": a.project_id} if auth == "sign" else None)
            r.error(403, "IOTDA.000003")
            tried += 1
        for method, rest, body in batch_routes(batch_id):
            api.call(method, api.path(rest), body, auth=auth).error(404, "IOTDA.019001")
            api.call(method, api.path(rest, project=a.project_id), body, auth=auth,
                     headers={"X-Project-Id": a.project_id} if auth == "sign" else None).error(403, "IOTDA.000003")
            tried += 2
        for method, rest in (("GET", "/export-tasks"), ("GET", "/batchtasks")):
            api.call(method, api.path(rest, project=a.project_id), auth=auth, query="task_type=createCommands",
                     headers={"X-Project-Id": a.project_id} if auth == "sign" else None).error(403, "IOTDA.000003")
            tried += 1
    assert a_state(server, a, export_id, batch_id) == before, "a refused request changed A's task"
    print(f"\n[isolation, HTTP] {tried} cross-user/cross-project requests refused; A's task unchanged")


def test_no_credentials_is_refused_on_every_rpc_and_route(server, tenants):
    a, _neighbour, _stranger, export_id, batch_id = tenants
    before = a_state(server, a, export_id, batch_id)
    ch = a.channel
    e, b, p = epb_grpc.ExportTaskServiceStub(ch), bpb_grpc.BatchTaskServiceStub(ch), a.project_id
    rpcs = {
        "CreateExportTask": lambda: e.CreateExportTask(epb.CreateExportTaskRequest(
            project_id=p, resource_type="BatchTask", resource_condition=epb.ResourceCondition(task_id=batch_id)),
            timeout=10),
        "ListExportTasks": lambda: e.ListExportTasks(epb.ListExportTasksRequest(project_id=p), timeout=10),
        "GetExportTask": lambda: e.GetExportTask(epb.GetExportTaskRequest(project_id=p, export_task_id=export_id),
                                                 timeout=10),
        "WatchProgress": lambda: e.WatchProgress(epb.WatchProgressRequest(project_id=p, export_task_id=export_id),
                                                 timeout=10),
        "ShowExportTask": lambda: e.ShowExportTask(epb.ShowExportTaskRequest(project_id=p, export_task_id=export_id),
                                                   timeout=10),
        "CancelExportTask": lambda: e.CancelExportTask(epb.CancelExportTaskRequest(
            project_id=p, export_task_id=export_id), timeout=10),
        "DeleteExportTask": lambda: e.DeleteExportTask(epb.DeleteExportTaskRequest(
            project_id=p, export_task_id=export_id), timeout=10),
        "CreateBatchTask": lambda: b.CreateBatchTask(bpb.CreateBatchTaskRequest(
            project_id=p, task_name="x", task_type="createCommands", targets=["d_1"]), timeout=10),
        "ShowBatchTask": lambda: b.ShowBatchTask(bpb.ShowBatchTaskRequest(project_id=p, task_id=batch_id),
                                                 timeout=10),
        "ListBatchTasks": lambda: b.ListBatchTasks(bpb.ListBatchTasksRequest(
            project_id=p, task_type="createCommands"), timeout=10),
        "DeleteBatchTask": lambda: b.DeleteBatchTask(bpb.DeleteBatchTaskRequest(project_id=p, task_id=batch_id),
                                                     timeout=10),
        "RecordSubtaskResults": lambda: b.RecordSubtaskResults(bpb.RecordSubtaskResultsRequest(
            project_id=p, task_id=batch_id, results=[bpb.SubtaskResult(target="d_1", status="Fail")]), timeout=10),
    }
    for name, call in rpcs.items():
        assert refused(call, Code.UNAUTHENTICATED).error_code == "IOTDA.000002", name
    api = Api(server, a.creds)
    routes = [("POST", "/export-tasks", {"resource_type": "BatchTask", "resource_condition": {"task_id": batch_id}}),
              ("GET", "/export-tasks", None), *export_routes(export_id),
              ("POST", "/batchtasks", {"task_name": "x", "task_type": "createCommands", "targets": ["d_1"]}),
              ("GET", "/batchtasks", None), *batch_routes(batch_id)]
    for method, rest, body in routes:
        r = api.call(method, api.path(rest), body, auth=None, query="task_type=createCommands")
        r.error(401)
    assert a_state(server, a, export_id, batch_id) == before
    print(f"\n[isolation] no credentials: {len(rpcs)} RPCs UNAUTHENTICATED, {len(routes)} routes 401")


# -- a real `serve` at DEBUG: file modes, secrets never logged, formula-like cells ---------------------

class Http:
    """Minimal client of the serve subprocess's gateway; remembers every Authorization value sent."""

    def __init__(self, port: int, creds: dict):
        self.port, self.creds, self.sent_signatures = port, creds, []

    def call(self, method: str, path: str, body: dict | None = None, *, auth: str = "token", sk: str | None = None,
             date: str | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        h = {"Host": f"127.0.0.1:{self.port}", "Content-Type": "application/json"}
        if auth == "token":
            h["X-Auth-Token"] = self.creds["token"]
        elif auth == "sign":
            h["X-Project-Id"] = self.creds["project_id"]
            h["X-Sdk-Date"] = date or sdk_date()
            h["Authorization"] = sign(method, path, "", h, data, self.creds["ak"], sk or self.creds["sk"],
                                      date=h["X-Sdk-Date"])
            self.sent_signatures.append(h["Authorization"].rsplit("Signature=", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            if data or method in ("POST", "DELETE"):
                h["Content-Length"] = str(len(data))
            conn.request(method, path, body=data or None, headers=h)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()


FORMULAS = ["=1+1", "@SUM(A1)", "+1", "-1", "=HYPERLINK(\"http://x\",\"y\")", "=cmd|' /C calc'!A0", "\t=1"]


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_real_server_keeps_secrets_and_files_private_and_formulas_as_text(tmp_path):
    data = tmp_path / "data"
    log_path = tmp_path / "serve.out"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotda_export_server.cli", "serve", "--data-dir", str(data), "--grpc-addr",
             "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "IOTDA_EXPORT_LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"})
    try:
        def addresses():
            text = log_path.read_text(errors="replace")
            g = re.search(r"listening on (\S+) \(gRPC\)", text)
            h = re.search(r"listening on http://\S+:(\d+) \(HTTP", text)
            assert proc.poll() is None, text[-3000:]
            return g and h and (g.group(1), int(h.group(1)))

        grpc_addr, http_port = wait_for(addresses, 30, what="serve to print its addresses")
        creds = json.loads((data / "credentials.json").read_text())
        token, sk, project = creds["token"], creds["sk"], creds["project_id"]
        md = (("authorization", f"Bearer {token}"),)
        client = Http(http_port, creds)
        base = f"/v5/iot/{project}"

        # Formula-like cells, recorded over gRPC; the batch task created over signed HTTP.
        status, body = client.call("POST", f"{base}/batchtasks", {
            "task_name": "formulas", "task_type": "createCommands",
            "targets": [f"d_{i}" for i in range(len(FORMULAS))]}, auth="sign")
        assert status == 201, body
        batch_id = json.loads(body)["task_id"]
        with grpc.insecure_channel(grpc_addr) as ch:
            exports, batches = epb_grpc.ExportTaskServiceStub(ch), bpb_grpc.BatchTaskServiceStub(ch)
            batches.RecordSubtaskResults(bpb.RecordSubtaskResultsRequest(project_id=project, task_id=batch_id, results=[
                bpb.SubtaskResult(target=f"d_{i}", status="Fail" if i % 2 else "Success", output=f,
                                  error=bpb.SubtaskError(error_code=f, error_msg=f) if i % 2 else None)
                for i, f in enumerate(FORMULAS)]), metadata=md, timeout=10)
            created = exports.CreateExportTask(epb.CreateExportTaskRequest(
                project_id=project, resource_type="BatchTask",
                resource_condition=epb.ResourceCondition(task_id=batch_id)), metadata=md, timeout=10).export_task
            final = list(exports.WatchProgress(epb.WatchProgressRequest(
                project_id=project, export_task_id=created.export_task_id), metadata=md, timeout=60))[-1]
            assert final.export_task.status == "Success", final
            # Refused calls with real secrets around them.
            for call in (lambda: exports.ListExportTasks(epb.ListExportTasksRequest(project_id="f" * 32),
                                                         metadata=md, timeout=10),
                         lambda: exports.GetExportTask(epb.GetExportTaskRequest(
                             project_id=project, export_task_id="0" * 24), metadata=md, timeout=10),
                         lambda: exports.ListExportTasks(epb.ListExportTasksRequest(project_id=project),
                                                         metadata=(("authorization", token),), timeout=10)):
                refused(call)
        status, zipped = client.call("GET", f"{base}/export-tasks/{created.export_task_id}/file", auth="token")
        assert status == 200, zipped[:300]
        assert client.call("GET", f"{base}/export-tasks/{created.export_task_id}/file", auth="sign")[0] == 403
        assert client.call("GET", f"{base}/export-tasks", auth="sign")[0] == 200
        assert client.call("GET", f"{base}/export-tasks", auth="sign", sk=secrets.token_hex(16))[0] == 401
        assert client.call("GET", f"{base}/export-tasks", auth="sign", date="20200101T000000Z")[0] == 401
        assert client.call("GET", f"/v5/iot/{'e' * 32}/export-tasks", auth="token")[0] == 403
        assert client.call("GET", f"{base}/nothing-here", auth="token")[0] == 404

        with zipfile.ZipFile(io.BytesIO(zipped)) as z:
            (name,) = z.namelist()
            book = xlrd.open_workbook(file_contents=z.read(name))
        sheet = book.sheet_by_index(0)
        cells = 0
        for r in range(1, sheet.nrows):
            i = int(sheet.cell_value(r, 0).split("_")[1])
            for c in ((2, 3, 4) if i % 2 else (2,)):
                cell = sheet.cell(r, c)
                assert cell.ctype == xlrd.XL_CELL_TEXT and cell.value == FORMULAS[i], (r, c, cell)
                cells += 1
        assert cells == len(FORMULAS) + 2 * (len(FORMULAS) // 2)

        # File modes, while the server runs.
        files_dir = data / "files"
        assert _mode(data) == 0o700 and _mode(files_dir) == 0o700
        assert _mode(data / "credentials.json") == 0o600
        private = [p for p in data.iterdir() if p.name.startswith("iotda-export.db")] + list(files_dir.iterdir())
        assert any(p.suffix == ".zip" for p in private) and any(p.name == "iotda-export.db" for p in private)
        exposed = {p.name: oct(_mode(p)) for p in private if _mode(p) & 0o077}
        assert not exposed, f"group/world-readable files: {exposed}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    output = log_path.read_text(errors="replace")
    secrets_sent = {"token": token, "sk": sk, **{f"signature {i}": s for i, s in enumerate(client.sent_signatures)}}
    leaked = [k for k, v in secrets_sent.items() if v and v in output]
    print(f"\n[isolation, serve at DEBUG] {len(output.splitlines())} log lines, {len(output)} bytes;"
          f" secrets checked {len(secrets_sent)} (token, sk, {len(client.sent_signatures)} signatures): leaked"
          f" {len(leaked)}; formula-like cells read back as text {cells}; modes data 0700, files 0700,"
          f" credentials.json 0600, db and results {sorted(set(oct(_mode(p)) for p in private if p.exists()))}")
    assert "DEBUG" in output, "the server did not log at DEBUG: the check proves nothing"
    assert not leaked, f"secrets in the server's output: {leaked}"
