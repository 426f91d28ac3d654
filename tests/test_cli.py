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

from iotda_export_server.runner.xls import HEADER

from conftest import wait_for

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
    while address is None or len(banner) < 3:  # gRPC address, administrator's credentials, no HTTP gateway
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


# -- the habits of a command-line tool (issue 17) ------------------------------------------------

def test_version_and_bash_completion_of_sub_commands_and_flags(served):
    assert re.fullmatch(r"iotda-export \S+, iotda-export-client \S+\n", ok(served.run("--version")).stdout)
    script = ok(served.run("completion", "bash")).stdout
    completion = served.cwd / "iotda-export.bash"
    completion.write_text(script)
    # A real bash loads the script, registers it for the command, and completes words as a user's Tab would.
    probe = r'''
source "$1"
complete -p iotda-export
words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
          _shtab_iotda_export; echo "${COMPREPLY[*]}"; }
words iotda-export exp
words iotda-export export cr
words iotda-export export create --wa
words iotda-export principal add --out
'''
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe, "bash", str(completion)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("complete ") and lines[0].endswith(" iotda-export"), lines
    assert lines[1:] == ["export", "create", "--watch", "--output"], lines
    assert ok(served.run("completion", "zsh")).stdout.startswith("#compdef iotda-export")


def test_no_parser_abbreviates_flags():
    import argparse

    from iotda_export_server.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)
    everyone = list(parsers(build_parser()))
    assert len(everyone) > 20 and all(p.allow_abbrev is False for p in everyone), \
        [p.prog for p in everyone if p.allow_abbrev]


def test_usage_errors_show_the_sub_command_and_the_closest_word(served):
    # An unknown sub-command: the usage of the command it was given to, and the nearest name.
    err = refused(served.run("export", "lst"), 2, "did you mean list?")
    assert err.startswith("usage: iotda-export export "), err
    # A misspelt flag: the usage of that sub-command, not the top's.
    err = refused(served.run("export", "list", "--limt", "3"), 2, "unrecognized arguments: --limt 3",
                  "(did you mean --limit?)")
    assert err.startswith("usage: iotda-export export list "), err
    # No silent abbreviations: a flag's prefix is an error that names the flag, never a guess.
    err = refused(served.run("export", "list", "--jso"), 2, "(did you mean --json?)")
    assert err.startswith("usage: iotda-export export list ")
    refused(served.run("principal", "add", "--data-dir", "data", "--use", "bob", "--project", "p"), 2,
            "usage: iotda-export principal add ", "(did you mean --user?)")
    assert "bob" not in ok(served.run("principal", "list", "--data-dir", "data")).stdout
    refused(served.run("exprot", "list"), 2, "usage: iotda-export ", "(did you mean export?)")


def test_addresses_with_a_scheme_or_without_a_port_are_refused_with_the_expected_form(served):
    refused(served.run("--address", "http://127.0.0.1:8080", "export", "list"), 2,
            "'http://127.0.0.1:8080' has a scheme: give HOST:PORT without http://, e.g. 127.0.0.1:8080")
    refused(served.run("export", "list", "--address", "grpc://example.com:50051"), 2,
            "give HOST:PORT without grpc://, e.g. example.com:50051")
    refused(served.run("export", "list", "--address", "localhost"), 2,
            "'localhost' has no port: give HOST:PORT, e.g. localhost:50051")
    refused(served.run("export", "list", "--address", "127.0.0.1:99999"), 2, "the port must be 1-65535")
    # The same check for an address from the environment, naming where it came from.
    refused(served.run("export", "list", env=clean_env(IOTDA_EXPORT_ADDRESS="grpc://127.0.0.1:50051")), 2,
            "error: the address from IOTDA_EXPORT_ADDRESS: 'grpc://127.0.0.1:50051' has a scheme")


def test_the_unreachable_hint_names_the_command_that_starts_what_is_missing(served, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(served.run("--address", f"127.0.0.1:{port}", "export", "list"), 1,
            f"Start it with: iotda-export serve --grpc-addr 127.0.0.1:{port}",
            "add --http-addr HOST:PORT for the HTTP/JSON gateway")
    # An HTTP/1.1 server where gRPC was expected (the gateway's port given as --address).
    http = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = http.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...)"
        http_port = int(re.search(r" port (\d+) ", banner).group(1))
        refused(served.run("--address", f"127.0.0.1:{http_port}", "export", "list"), 1,
                f"something at 127.0.0.1:{http_port} answers, but not gRPC", "(serve --http-addr)",
                "need the gRPC port (serve --grpc-addr)")
    finally:
        http.kill()
        http.wait()
    # serve without a gateway says how to get one.
    assert "no HTTP/JSON gateway (REST API, web console, /metrics): add --http-addr HOST:PORT to serve one" in \
        served.banner


def test_principal_add_output_writes_a_private_file_and_keeps_an_existing_one(served):
    r = ok(served.run("principal", "add", "--data-dir", "data", "--user", "carol", "--project", "demo",
                      "--output", "carol.credentials.json"))
    path = served.cwd / "carol.credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    carol = json.loads(path.read_text())
    assert carol["user"] == "carol" and carol["token"] not in r.stdout + r.stderr and carol["sk"] not in r.stderr
    assert "iotda-export --credentials carol.credentials.json export list" in r.stderr
    ok(served.run("--credentials", "carol.credentials.json", "export", "list"))

    # A file in the way: refused before the principal is made, the file untouched.
    before = path.read_bytes()
    refused(served.run("principal", "add", "--data-dir", "data", "--user", "dave", "--project", "demo",
                       "--output", "carol.credentials.json"), 2, "carol.credentials.json exists", "--force")
    assert path.read_bytes() == before
    assert "dave" not in ok(served.run("principal", "list", "--data-dir", "data")).stdout
    # --force replaces it whole, still 0600; a refused add (the user exists) leaves it and no temp file.
    ok(served.run("principal", "add", "--data-dir", "data", "--user", "dave", "--project", "demo",
                  "--output", "carol.credentials.json", "--force"))
    assert json.loads(path.read_text())["user"] == "dave" and stat.S_IMODE(path.stat().st_mode) == 0o600
    refused(served.run("principal", "add", "--data-dir", "data", "--user", "dave", "--project", "demo",
                       "--output", "carol.credentials.json", "--force"), 1)
    assert json.loads(path.read_text())["user"] == "dave"
    assert not [p for p in served.cwd.iterdir() if p.name.endswith(".tmp")]


def test_serve_help_shows_each_flags_default_and_environment_variable(served):
    text = " ".join(ok(served.run("serve", "--help", env=clean_env(COLUMNS="250"))).stdout.split())
    for flag, env, default in (("--grpc-addr", "IOTDA_EXPORT_GRPC_ADDR", "127.0.0.1:50051"),
                               ("--http-addr", "IOTDA_EXPORT_HTTP_ADDR", "empty"),
                               ("--data-dir", "IOTDA_EXPORT_DATA_DIR", "./data"),
                               ("--database", "IOTDA_EXPORT_DATABASE", "SQLite in --data-dir"),
                               ("--files-dir", "IOTDA_EXPORT_FILES_DIR", "<data-dir>/files"),
                               ("--lease-seconds", "IOTDA_EXPORT_LEASE_SECONDS", "30.0"),
                               ("--log-format", "IOTDA_EXPORT_LOG_FORMAT", "text"),
                               ("--log-level", "IOTDA_EXPORT_LOG_LEVEL", "INFO")):
        assert re.search(rf"{flag} .*?\[env {env}; default: {re.escape(default)}\]", text), (flag, text)
    assert "[default: 100]" in text  # --max-watch-streams-per-user: no variable, its built-in default
    # A secret in the environment is never shown, only the variable's name.
    secret_env = clean_env(IOTDA_EXPORT_DATABASE="postgresql://u:not-this-secret@db/x")
    assert "not-this-secret" not in ok(served.run("serve", "--help", env=secret_env)).stdout


def test_the_watch_bar_shows_rows_per_second_an_eta_re_runs_and_reconnecting():
    from iotda.export.v1 import export_task_pb2 as epb
    from iotda_export_client.cli import ProgressBar
    now = [100.0]
    out = io.StringIO()
    bar = ProgressBar("e" * 24, file=out, clock=lambda: now[0])

    def task(progress, rows, created="2026-01-01T00:00:00.000Z"):
        return epb.ExportTask(export_task_id="e" * 24, status="Processing", progress=progress, export_count=rows,
                              create_time=created)
    bar.show(task(10, 1_000))
    now[0] += 2
    bar.show(task(50, 5_000))
    assert "5,000 rows, 2,000 rows/s" in out.getvalue()
    assert re.search(r"50%\|.*\[\d\d:\d\d<\S+\]", out.getvalue().splitlines()[-1].split("\r")[-1])
    bar.reconnecting(1)
    assert "reconnecting… (attempt 1 of 5)" in out.getvalue()
    # Re-created (a new create time), then taken over after a crash (progress goes back): each a re-run.
    bar.show(task(5, 500, created="2026-01-01T00:01:00.000Z"))
    now[0] += 1
    bar.show(task(3, 300, created="2026-01-01T00:01:00.000Z"))
    bar.close()
    text = out.getvalue()
    assert text.count("re-run: progress starts again") == 2 and "(re-run 2)" in text


def test_the_watch_bar_says_reconnecting_while_the_server_restarts(tmp_path):
    """`export create --watch` against a real `serve` that is stopped (SIGTERM) mid-export and started
    again on the same address: the bar says reconnecting… while nothing answers, and the command
    ends with the Success of the requeued run. (Whether the bar also sees the re-run depends on how
    far the new run got before the watch is back: the bar's re-run rule has its own test above.)"""
    from iotda_export_server.app import seed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([CLI, "serve", "--data-dir", "data", "--grpc-addr", address, "--workers", "1"],
                                cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        for line in proc.stdout:  # the banner: listening, then (first start) the credentials
            if "listening on " in line:
                threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
                return proc
        raise AssertionError(f"serve exited with {proc.wait()} before listening")

    server = start()
    task_id = seed(str(tmp_path / "data"), 150_000)
    out = open(tmp_path / "watch.out", "w")
    watcher = subprocess.Popen([CLI, "export", "create", "--task-id", task_id, "--watch"], cwd=tmp_path,
                               env=clean_env(IOTDA_EXPORT_ADDRESS=address), stdout=out, stderr=subprocess.PIPE)
    err = bytearray()

    def drain():
        while chunk := os.read(watcher.stderr.fileno(), 4096):
            err.extend(chunk)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def progress() -> int:
        found = re.findall(rb" (\d+)%\|", bytes(err))
        return int(found[-1]) if found else 0
    try:
        wait_for(lambda: progress() > 1 or watcher.poll() is not None, 60, what="the export to make progress")
        assert watcher.poll() is None, bytes(err).decode()
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        wait_for(lambda: "reconnecting…".encode() in err, 30, what="the bar to say reconnecting")
        server = start()
        assert watcher.wait(120) == 0, bytes(err).decode()
        reader.join(10)
        text = bytes(err).decode()
        assert re.search(r"\d%\|.*reconnecting… \(attempt 1 of 5\).*100%\|.*Success, 150,000 rows", text, re.S), text
        stdout = (tmp_path / "watch.out").read_text()
        assert re.search(r"^status\s+Success$", stdout, re.M)
        assert re.search(r"^export_count\s+150000$", stdout, re.M)
    finally:
        out.close()
        for proc in (watcher, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
