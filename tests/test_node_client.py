"""The Node.js client (client/node/export.js: @grpc/grpc-js with @grpc/proto-loader reading protos/ at run
time) against the real in-process server: it creates an export, follows WatchProgress to Success and
downloads the zip; the Python client downloads the same export and gets the same bytes.

Needs `node` on PATH and client/node/node_modules (`make test` installs it with `npm ci`); without
them these tests fail, they never skip.

Downloads are limited to one per 30 s per user, and an export is visible to its owner only, so the
Python client cannot make a second counted download of the node client's export. It uses what the
rules allow instead: resuming (offset > 0) the user's last download of the same file is not counted
again. Its partial file holds the first byte of every zip ("P" of the "PK\\x03\\x04" signature); the
other bytes come from the server, and the client checks the whole file's size and sha256 against the
server's announcement."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import zipfile

import grpc
import pytest
import xlrd

from conftest import make_user
from iotda_export_client import ExportApiError, ExportClient
from iotda_export_server.domain import rules

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "client" / "node"
EXPORT_JS = NODE_DIR / "export.js"


def run_node(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs export.js with `args`; IOTDA_EXPORT_* come only from `env`. Fails (never skips) without node or
    the installed packages."""
    node = shutil.which("node")
    assert node, "`node` is not on PATH: install Node.js 18 or newer to test client/node"
    for package in ("@grpc/grpc-js", "@grpc/proto-loader"):
        assert (NODE_DIR / "node_modules" / package).is_dir(), (
            f"{NODE_DIR / 'node_modules' / package} is missing: run `make test` or"
            " `npm ci --prefix client/node` first")
    base = {k: v for k, v in os.environ.items() if not k.startswith("IOTDA_EXPORT_")}
    return subprocess.run([node, str(EXPORT_JS), *args], env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def flags(server, user) -> list[str]:
    return ["--address", server.address, "--token", user.creds["token"], "--project", user.project_id]


def progress_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines()]


def test_node_client_exports_and_downloads_the_bytes_the_python_client_downloads(server, channel, seed, tmp_path):
    user = make_user(server, channel)
    task_id = seed(user, 3000)
    out = tmp_path / "node.zip"
    r = run_node(*flags(server, user), "--task-id", task_id, "--out", str(out))
    assert r.returncode == 0, r.stderr

    assert r.stdout.count("\n") == 1, r.stdout
    summary = json.loads(r.stdout)
    export_task_id = summary["export_task_id"]
    events = progress_lines(r.stderr)
    assert events and all(e["export_task_id"] == export_task_id for e in events)
    assert [e["sequence"] for e in events] == sorted(e["sequence"] for e in events)
    assert (events[-1]["status"], events[-1]["progress"], events[-1]["export_count"]) == ("Success", 100, 3000)

    data = out.read_bytes()
    assert summary == {"export_task_id": export_task_id, "file": str(out.resolve()), "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()}
    assert len(data) > rules.DOWNLOAD_CHUNK_BYTES, "the zip should span more than one download chunk"
    assert not (tmp_path / "node.zip.part").exists()
    assert data == server.server.files.path(export_task_id).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == [f"export-{export_task_id}.xls"]
        assert xlrd.open_workbook(file_contents=z.read(z.namelist()[0])).sheet_by_index(0).nrows == 3001

    with ExportClient(server.address, user.creds["token"], user.project_id) as client:
        task = client.get_export(export_task_id)
        assert (task.status, task.resource_type, task.resource_condition.task_id, task.file_available) == \
            ("Success", "BatchTask", task_id, True)
        # The node client's download counted: a new one by the same user is refused ...
        with pytest.raises(ExportApiError) as info:
            client.download(export_task_id, tmp_path / "again.zip")
        assert (info.value.code, info.value.error_code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "IOTDA.018003")
        assert not (tmp_path / "again.zip").exists()
        # ... and a resume of it is not.
        dest = tmp_path / "python.zip"
        pathlib.Path(ExportClient.partial_path(dest)).write_bytes(b"P")
        assert client.download(export_task_id, dest, offset=1) == str(dest)
    assert dest.read_bytes() == data


def test_node_client_watches_and_downloads_an_existing_export(server, channel, seed, tmp_path):
    user = make_user(server, channel)
    task_id = seed(user, 40)
    with ExportClient(server.address, user.creds["token"], user.project_id) as client:
        export_task_id = client.create_export(task_id).export_task_id

    r = run_node("--export-id", export_task_id, "--out", str(tmp_path),
                 env={"IOTDA_EXPORT_ADDRESS": server.address, "IOTDA_EXPORT_TOKEN": user.creds["token"],
                      "IOTDA_EXPORT_PROJECT": user.project_id})
    assert r.returncode == 0, r.stderr
    assert progress_lines(r.stderr)[-1]["status"] == "Success"
    summary = json.loads(r.stdout)
    out = tmp_path / f"export-{export_task_id}.zip"  # a directory as --out: the server's file name in it
    assert summary["file"] == str(out.resolve()) and summary["export_task_id"] == export_task_id
    data = out.read_bytes()
    assert (summary["bytes"], summary["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert data == server.server.files.path(export_task_id).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_bad_token_exits_1_with_unauthenticated_and_no_stack_trace(server, channel, seed, tmp_path):
    user = make_user(server, channel)
    task_id = seed(user, 5)
    r = run_node("--task-id", task_id, "--out", str(tmp_path / "x.zip"),
                 env={"IOTDA_EXPORT_ADDRESS": server.address, "IOTDA_EXPORT_TOKEN": "not-a-token",
                      "IOTDA_EXPORT_PROJECT": user.project_id})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith("error: UNAUTHENTICATED ") and r.stderr.count("\n") == 1, r.stderr
    assert "    at " not in r.stderr and "node_modules" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
    with ExportClient(server.address, user.creds["token"], user.project_id) as client:
        assert client.list_exports().page.count == 0
