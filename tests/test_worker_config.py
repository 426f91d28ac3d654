"""What an export worker process is told, and how (issue 13): `serve` hands each worker its
configuration on the worker's stdin, so the database URL, which may hold a password, is in neither
the worker's command line (ps) nor its environment (/proc/<pid>/environ), and the server's log
flags reach the worker's lines without the environment carrying them.
"""

from __future__ import annotations

import json
import pathlib
import secrets
from urllib.parse import urlsplit, urlunsplit

import grpc

import pg_support as ps
from conftest import wait_for
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc as epb_grpc


def _url_with_secrets(url: str) -> tuple[str, list[str]]:
    """`url` with a password (the machine's PostgreSQL trusts local connections and ignores it) and a
    distinctive query parameter (the store sets its own application_name over it): a URL whose every
    secret part can be looked for."""
    parts = urlsplit(url)
    password = parts.password or f"pw-{secrets.token_hex(8)}"
    netloc = parts.netloc if parts.password else parts.netloc.replace("@", f":{password}@", 1)
    marker = f"iotda-probe-{secrets.token_hex(6)}"
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=f"{query}application_name={marker}")), [password, marker]


def _proc_bytes(pid: int, name: str) -> bytes:
    return pathlib.Path(f"/proc/{pid}/{name}").read_bytes()


def test_workers_get_the_database_url_on_stdin_and_the_log_flags_of_serve(tmp_path):
    db = ps.TestDatabase().create()
    serve = stopped = None
    try:
        ps.run_cli("migrate", "--database", db.url)
        url, hidden = _url_with_secrets(db.url)
        assert "@" in url and all(h in url for h in hidden)
        data = tmp_path / "data"
        # The flags alone: ps.env() passes no IOTDA_EXPORT_DATABASE or IOTDA_EXPORT_LOG_FORMAT.
        serve = ps.Proc("serve", ["serve", "--database", url, "--data-dir", str(data), "--workers", "2",
                                  "--grpc-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "INFO"], tmp_path)
        address = serve.wait_line(ps.LISTENING).group(1)
        workers = wait_for(lambda: len(serve.children()) == 2 and serve.children(), 30, what="two export processes")
        for pid in workers:
            cmdline, environ = _proc_bytes(pid, "cmdline"), _proc_bytes(pid, "environ")
            assert b"iotda_export_server.runner.worker" in cmdline
            for text in (url, *hidden):
                assert text.encode() not in cmdline, f"the worker's command line holds {text!r}"
                assert text.encode() not in environ, f"the worker's environment holds {text!r}"
        # The server's own environment is what the workers got (nothing added, nothing taken away).
        assert _proc_bytes(serve.pid, "environ") == _proc_bytes(workers[0], "environ")

        # The workers did reach the database by that URL: they run an export.
        creds = json.loads((data / "credentials.json").read_text())
        task_id = json.loads(ps.run_cli("seed", "--database", db.url, "--data-dir", str(tmp_path / "seeder"),
                                        "--project", creds["project_id"], "--subtasks", "300", "--json").stdout)["task_id"]
        md = (("authorization", f"Bearer {creds['token']}"),)
        with grpc.insecure_channel(address) as ch:
            exports = epb_grpc.ExportTaskServiceStub(ch)
            created = exports.CreateExportTask(epb.CreateExportTaskRequest(
                project_id=creds["project_id"], resource_type="BatchTask",
                resource_condition=epb.ResourceCondition(task_id=task_id)), metadata=md, timeout=10).export_task
            final = list(exports.WatchProgress(epb.WatchProgressRequest(
                project_id=creds["project_id"], export_task_id=created.export_task_id), metadata=md, timeout=60))[-1]
        assert final.export_task.status == "Success"

        def worker_lines():
            events = [json.loads(line) for line in serve.stderr_tail(1 << 20).splitlines() if line.strip()]
            return [e for e in events if e["process"].startswith("worker[")]
        claimed = wait_for(lambda: [e for e in worker_lines() if "claimed" in e["message"]], 10,
                           what="the worker's JSON line of the claim (an INFO line: --log-level reached it too)")
        assert claimed[0]["level"] == "INFO"
    finally:
        if serve is not None:
            stopped = serve.stop()
        db.drop()
    assert stopped is None, stopped
    log = (tmp_path / "serve.stderr").read_text()
    assert all(json.loads(line) for line in log.splitlines() if line.strip()), "every line is JSON"
    for text in (url, *hidden):
        assert text not in log, f"the log holds {text!r}"
