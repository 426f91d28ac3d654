"""The `iotda-export` command as a new user drives it: a real `iotda-export serve` subprocess on port 0
in a fresh directory, and every CLI call a subprocess of the installed entry point, run from that
directory so that ./data/credentials.json (written on first start) is found on its own."""

from __future__ import annotations

import io
import json
import os
import pathlib
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile

import pytest
import xlrd

from iotda_export_server.runner.xls_writer import HEADER

BIN = pathlib.Path(sys.executable).parent
CLI = str(BIN / "iotda-export")


def clean_env(**extra) -> dict:
    """The caller's environment without any IOTDA_EXPORT_* setting but the log level."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IOTDA_EXPORT_") or k == "IOTDA_EXPORT_LOG_LEVEL"}
    env.setdefault("IOTDA_EXPORT_LOG_LEVEL", "WARNING")
    env.update(extra)
    return env


class Served:
    def __init__(self, cwd: pathlib.Path, proc: subprocess.Popen, address: str, banner: list[str]):
        self.cwd, self.proc, self.address, self.banner = cwd, proc, address, banner

    def run(self, *args: str, env: dict | None = None, cwd: pathlib.Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        env = env or clean_env(IOTDA_EXPORT_ADDRESS=self.address)
        return subprocess.run([CLI, *args], cwd=cwd or self.cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def refused(r: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert r.returncode == code, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr
    return r.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`iotda-export serve` on an empty ./data, port 0, one worker; its address read from its output."""
    cwd = tmp_path_factory.mktemp("newcomer")
    log = open(cwd / "serve.stderr", "w")
    proc = subprocess.Popen([CLI, "serve", "--data-dir", "data", "--grpc-addr", "127.0.0.1:0", "--workers", "1"],
                            cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=log, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    banner, address = [], None
    deadline = time.monotonic() + 30
    while address is None or len(banner) < 2:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"no 'listening on' line within 30 s: {banner}, "
                                 f"stderr: {(cwd / 'serve.stderr').read_text()}") from None
        banner.append(line.rstrip("\n"))
        if "listening on " in line:
            address = line.split("listening on ", 1)[1].split()[0]
    try:
        yield Served(cwd, proc, address, banner)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def test_first_start_writes_private_credentials(served):
    creds_path = served.cwd / "data" / "credentials.json"
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
    creds = json.loads(creds_path.read_text())
    assert {"user", "project_id", "token", "ak", "sk"} <= set(creds)
    assert any("credentials.json" in line and "mode 0600" in line for line in served.banner), served.banner


def test_seed_export_watch_list_download(served):
    task_id = json.loads(ok(served.run("seed", "--data-dir", "data", "--subtasks", "1200", "--json")).stdout)["task_id"]

    r = ok(served.run("export", "create", "--task-id", task_id, "--watch", "--json"))
    events = [json.loads(line) for line in r.stdout.splitlines()]
    tasks = [e["export_task"] for e in events]
    assert len({t["export_task_id"] for t in tasks}) == 1
    progresses = [t["progress"] for t in tasks]
    # (the first event may already be Success: 1,200 rows can finish before the watch begins)
    assert progresses == sorted(progresses) and all(t["status"] == "Processing" for t in tasks[:-1])
    final = tasks[-1]
    assert (final["status"], final["progress"], final["export_count"]) == ("Success", 100, 1200)
    assert final["resource_condition"] == {"task_id": task_id} and final["export_format"] == "xls"
    export_task_id = final["export_task_id"]

    listed = json.loads(ok(served.run("export", "list", "--task-id", task_id, "--json")).stdout)
    assert [t["export_task_id"] for t in listed["export_tasks"]] == [export_task_id]
    assert listed["page"] == {"count": 1, "marker": export_task_id}
    assert isinstance(listed["export_tasks"][0]["export_count"], int)

    r = ok(served.run("export", "download", export_task_id, "-o", "result.zip"))
    assert r.stdout.strip() == "result.zip"
    with zipfile.ZipFile(io.BytesIO((served.cwd / "result.zip").read_bytes())) as z:
        assert z.namelist() == [f"export-{export_task_id}.xls"]
        sheet = xlrd.open_workbook(file_contents=z.read(z.namelist()[0])).sheet_by_index(0)
    assert tuple(sheet.row_values(0)) == HEADER and sheet.nrows == 1201

    # The second download within 30 s: a clear refusal with the retry time, exit 1, no file.
    err = refused(served.run("export", "download", export_task_id, "-o", "again.zip"), 1,
                  "error: RESOURCE_EXHAUSTED IOTDA.018003: ", "retry after ")
    # ... and the request id the server gave the call, to quote when reporting a problem.
    assert len(err.strip().splitlines()) == 3
    assert re.search(r"^  request id [0-9a-f]{32}$", err, re.M), err
    assert not (served.cwd / "again.zip").exists()

    # An interrupted download resumes from <FILE>.part; a resume of the last download is not a new one.
    (served.cwd / "again.zip.part").write_bytes((served.cwd / "result.zip").read_bytes()[:1000])
    assert ok(served.run("export", "download", export_task_id, "-o", "again.zip", "--resume")).stdout.strip() == \
        "again.zip"
    assert (served.cwd / "again.zip").read_bytes() == (served.cwd / "result.zip").read_bytes()
    assert not (served.cwd / "again.zip.part").exists()

    # The live progress bar (stderr) of a finished task: one snapshot at 100 %.
    r = ok(served.run("export", "watch", export_task_id))
    assert "100%" in r.stderr and "Success" in r.stderr
    assert re.search(r"^status\s+Success$", r.stdout, re.M) and re.search(r"^export_count\s+1200$", r.stdout, re.M)


def test_principal_add_list_remove(served):
    r = ok(served.run("principal", "add", "--data-dir", "data", "--user", "alice", "--project", "proj-alice",
                      "--actions", "iotda:exporttasks:queryList", "--json"))
    alice = json.loads(r.stdout)
    assert {"user", "project_id", "token", "ak", "sk"} <= set(alice) and alice["user"] == "alice"

    r = ok(served.run("principal", "list", "--data-dir", "data", "--json"))
    principals = {p["user"]: p for p in json.loads(r.stdout)}
    assert set(principals) == {"admin", "alice"}
    assert principals["alice"]["statements"] == [{"Effect": "Allow", "Action": ["iotda:exporttasks:queryList"]}]
    assert alice["token"] not in r.stdout and alice["sk"] not in r.stdout
    assert not {"token", "sk"} & set(principals["alice"])

    # Her credentials as flags after the sub-command: she may list, not create.
    as_alice = ("--token", alice["token"], "--project", alice["project_id"])
    assert json.loads(ok(served.run("export", "list", "--json", *as_alice)).stdout)["page"]["count"] == 0
    refused(served.run("export", "create", "--task-id", "0" * 24, *as_alice), 1,
            "error: PERMISSION_DENIED IOTDA.000003: ")

    ok(served.run("principal", "remove", "--data-dir", "data", "--user", "alice"))
    # ... and as flags before it: removed, her token no longer works.
    refused(served.run(*as_alice, "export", "list"), 1, "error: UNAUTHENTICATED IOTDA.000002: ")


def test_error_exit_codes(served, tmp_path):
    stderr = refused(served.run("export", "get", "not-an-id!"), 2,
                     "error: INVALID_ARGUMENT IOTDA.000006: ", "  export_task_id: ")
    assert stderr.splitlines()[0].startswith("error: ")

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(served.run("--address", f"127.0.0.1:{port}", "export", "list"), 1,
            f"error: cannot reach the server at 127.0.0.1:{port}")

    # A directory without data/credentials.json and no token anywhere: a usage error.
    refused(served.run("export", "list", cwd=tmp_path), 2, "error: no credentials")


def test_batch_commands_and_export_delete(served):
    r = ok(served.run("batch", "create", "--name", "reboot_all", "--type", "createCommands",
                      "--targets", "dev_1,dev_2", "--json"))
    task = json.loads(r.stdout)
    assert task["status"] == "Processing" and task["targets"] == ["dev_1", "dev_2"]
    assert task["task_progress"]["total"] == 2

    shown = json.loads(ok(served.run("batch", "show", task["task_id"], "--json")).stdout)
    assert sorted(d["target"] for d in shown["task_details"]) == ["dev_1", "dev_2"]
    assert shown["page"]["count"] == 2
    r = ok(served.run("batch", "list", "--type", "createCommands"))
    assert task["task_id"] in r.stdout and "reboot_all" in r.stdout

    # Unfinished batch tasks cannot be deleted: the platform's refusal, exit 1.
    refused(served.run("batch", "delete", task["task_id"]), 1, "error: FAILED_PRECONDITION IOTDA.019002: ")

    export = json.loads(ok(served.run("export", "create", "--task-id", task["task_id"], "--json")).stdout)
    ok(served.run("export", "delete", export["export_task_id"]))
    refused(served.run("export", "get", export["export_task_id"]), 1, "error: NOT_FOUND IOTDA.018001: ")


def test_local_administration_on_an_unreachable_database_is_an_error_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://postgres:not-this-secret@127.0.0.1:{port}/iotda"
    for args in (("principal", "list"), ("seed", "--subtasks", "10", "--project", "p" * 32)):
        r = subprocess.run([CLI, *args, "--database", url, "--data-dir", str(tmp_path / "data")],
                           env=clean_env(), capture_output=True, text=True, timeout=60)
        message = refused(r, 1, "the database is unavailable")
        assert "not-this-secret" not in message
