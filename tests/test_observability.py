"""Operability: /metrics on the HTTP port moves with what the server does, and the logs are
structured (JSON lines when asked) with the request id and the user on each line, no secrets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.testing import ServerThread

from conftest import make_user, refused, wait_for, worker_process


def scrape(server: ServerThread) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")  # the Prometheus text format
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _create(user, task_id: str) -> epb.ExportTask:
    return user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=task_id)), metadata=user.metadata).export_task


def _status(user, export_task_id: str) -> str:
    return user.exports.GetExportTask(epb.GetExportTaskRequest(
        project_id=user.project_id, export_task_id=export_task_id), metadata=user.metadata).export_task.status


def test_metrics_count_rpcs_refusals_watchers_queue_and_finished_runs(tmp_path):
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0")
    try:
        with grpc.insecure_channel(server.address) as channel:
            user = make_user(server, channel)
            before = scrape(server)
            batches = [seed_batch_task(server.store, user.project_id, "", 1200, seed=20 + i) for i in range(6)]
            exports = [_create(user, b) for b in batches[:5]]
            refused(lambda: _create(user, batches[5]), grpc.StatusCode.RESOURCE_EXHAUSTED)  # 5 unfinished
            refused(lambda: _status(user, "0" * 24), grpc.StatusCode.NOT_FOUND)
            watch = user.exports.WatchProgress(epb.WatchProgressRequest(
                project_id=user.project_id, export_task_id=exports[0].export_task_id), metadata=user.metadata)
            next(watch)  # the first event: the stream is open

            queued = scrape(server)
            assert value(queued, "iotda_export_exports", state="queued") == 5
            assert value(queued, "iotda_export_exports", state="running") == 0
            assert value(queued, "iotda_export_watchers") == 1
            assert value(queued, "iotda_export_rpcs_total", method="CreateExportTask", code="OK") \
                - value(before, "iotda_export_rpcs_total", method="CreateExportTask", code="OK") == 5
            assert value(queued, "iotda_export_rpcs_total", method="CreateExportTask", code="RESOURCE_EXHAUSTED") == 1
            assert value(queued, "iotda_export_rpcs_total", method="GetExportTask", code="NOT_FOUND") == 1
            assert value(queued, "iotda_export_refusals_total", reason="QUOTA_EXCEEDED",
                         quota="unfinished-export-tasks-per-user") == 1
            assert value(queued, "iotda_export_rpc_duration_seconds_count", method="CreateExportTask") == 6

            with worker_process(server):  # a worker on this data directory reports its runs
                wait_for(lambda: all(_status(user, e.export_task_id) == "Success" for e in exports),
                         timeout=60, what="the five exports")
                wait_for(lambda: value(scrape(server), "iotda_export_runs_finished_total", outcome="success") == 5,
                         timeout=10, what="the runs to be reported")
            watch.cancel()
            wait_for(lambda: value(scrape(server), "iotda_export_watchers") == 0, timeout=10,
                     what="the watcher to be gone")

            done = scrape(server)
            assert value(done, "iotda_export_exports", state="queued") == 0
            assert value(done, "iotda_export_run_rows_count") == 5
            assert value(done, "iotda_export_run_rows_sum") == 5 * 1200
            assert value(done, "iotda_export_rows_written_total") == 5 * 1200
            assert value(done, "iotda_export_run_duration_seconds_count") == 5
            assert value(done, "iotda_export_run_rows_per_second_count") == 5

            # A second download within 30 s is a rate refusal.
            def download():
                return list(user.exports.ShowExportTask(epb.ShowExportTaskRequest(
                    project_id=user.project_id, export_task_id=exports[1].export_task_id), metadata=user.metadata))
            download()
            refused(download, grpc.StatusCode.RESOURCE_EXHAUSTED)
            limited = scrape(server)
            assert value(limited, "iotda_export_refusals_total", reason="RATE_LIMIT_EXCEEDED",
                         quota="downloads-per-user-per-30s") == 1
            assert value(limited, "iotda_export_rpcs_total", method="ShowExportTask", code="OK") == 1
            assert value(limited, "iotda_export_rpcs_total", method="ShowExportTask", code="RESOURCE_EXHAUSTED") == 1
    finally:
        server.stop()


def test_json_logs_carry_request_id_and_user_and_no_secret(tmp_path):
    data = tmp_path / "data"
    log_path = tmp_path / "serve.err"
    with open(log_path, "w") as err, open(tmp_path / "serve.out", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotda_export_server.cli", "serve", "--data-dir", str(data), "--grpc-addr",
             "127.0.0.1:0", "--workers", "1", "--log-format", "json"],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "IOTDA_EXPORT_LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"})
    try:
        def address():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            g = re.search(r"listening on (\S+) \(gRPC\)", (tmp_path / "serve.out").read_text())
            return g and g.group(1)

        grpc_addr = wait_for(address, 30, what="serve to print its address")
        creds = json.loads((data / "credentials.json").read_text())
        md = (("authorization", f"Bearer {creds['token']}"), ("x-request-id", "req-observability-1"))
        seeded = subprocess.run([sys.executable, "-m", "iotda_export_server.cli", "seed", "--data-dir", str(data),
                                 "--subtasks", "500", "--json"], capture_output=True, text=True, timeout=60)
        assert seeded.returncode == 0, seeded.stderr
        task_id = json.loads(seeded.stdout)["task_id"]
        with grpc.insecure_channel(grpc_addr) as ch:
            from iotda.export.v1 import export_task_pb2_grpc as epb_grpc
            exports = epb_grpc.ExportTaskServiceStub(ch)
            created = exports.CreateExportTask(epb.CreateExportTaskRequest(
                project_id=creds["project_id"], resource_type="BatchTask",
                resource_condition=epb.ResourceCondition(task_id=task_id)), metadata=md, timeout=10).export_task
            final = list(exports.WatchProgress(epb.WatchProgressRequest(
                project_id=creds["project_id"], export_task_id=created.export_task_id), metadata=md, timeout=60))[-1]
            assert final.export_task.status == "Success"
            refused(lambda: exports.ListExportTasks(epb.ListExportTasksRequest(project_id=creds["project_id"]),
                                                    metadata=(("authorization", "Bearer " + "0" * 64),), timeout=10),
                    grpc.StatusCode.UNAUTHENTICATED)
            # A refusal after authentication, from a call whose work runs in a thread.
            refused(lambda: exports.CancelExportTask(epb.CancelExportTaskRequest(
                project_id=creds["project_id"], export_task_id="0" * 24), metadata=md, timeout=10),
                grpc.StatusCode.NOT_FOUND)

        def lines():
            return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]

        wait_for(lambda: any(e.get("rpc") == "WatchProgress" for e in lines()), 10, what="the watch's log line")
    finally:
        proc.terminate()
        proc.wait(30)
    text = log_path.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    for key in ("token", "sk", "ak"):
        assert creds[key] not in text, f"the {key} is in the log"
    assert {"time", "level", "logger", "message", "request_id", "user", "process"} <= set(events[0])
    ours = [e for e in events if e["request_id"] == "req-observability-1"]
    assert {e.get("rpc") for e in ours} >= {"CreateExportTask", "WatchProgress"}
    assert all(e["user"] == creds["user"] for e in ours if "rpc" in e)
    refusal = [e for e in events if e.get("rpc") == "ListExportTasks"]
    assert refusal and refusal[-1]["code"] == "UNAUTHENTICATED" and refusal[-1]["user"] == "-"
    cancel = [e for e in events if e.get("rpc") == "CancelExportTask"]
    assert cancel and cancel[-1]["code"] == "NOT_FOUND" and cancel[-1]["user"] == creds["user"], cancel
    assert any(e["process"].startswith("worker") for e in events), "the worker's lines are JSON too"


def _big_finished_export(server: ServerThread, user, size: int) -> str:
    """A finished export whose file is `size` bytes (far more than HTTP/2 windows hold), through the
    store API as a worker would leave it: a download of it stays in flight while its client waits."""
    import hashlib
    import json as _json

    from iotda_export_server.domain import ids
    from iotda_export_server.domain.model import ExportTask

    data = os.urandom(size)
    batch_task_id, now = ids.new_id(), ids.now_ms()
    task = ExportTask(
        export_task_id=ids.new_id(), owner=user.creds["principal_id"], project_id=user.project_id, instance_id="",
        resource_type="BatchTask", batch_task_id=batch_task_id, export_format="xls", app_type="GLOBAL",
        app_id=None,
        conditions_key=_json.dumps([user.project_id, "", "BatchTask", batch_task_id, "xls", "GLOBAL", None]),
        status="Success", status_desc=None, progress=100, export_count=1, create_time=now, end_time=now, version=1,
        run_state="done", run_token=None, attempts=1, worker_id=None, lease_until=None, queued_at=now,
        file_generation=1, file_size=size, file_sha256=hashlib.sha256(data).hexdigest())
    with server.store.transaction(lock_key=task.owner) as tx:
        tx.insert_export_task(task)
    server.server.files.path(task.export_task_id).write_bytes(data)
    return task.export_task_id


def _samples(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_downloads_cut_by_the_client_or_by_shutdown_count_as_what_the_client_saw(tmp_path):
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0")
    stopped = False
    try:
        # BDP probing off: the client's window stays small, so the server waits on the client.
        with grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
            user = make_user(server, channel)
            exports = [_big_finished_export(server, user, 32 * 1024 * 1024)]

            def download(export_task_id, offset=0):
                return user.exports.ShowExportTask(epb.ShowExportTaskRequest(
                    project_id=user.project_id, export_task_id=export_task_id, offset=offset), metadata=user.metadata)

            # The client cancels after the first message.
            stream = download(exports[0])
            next(stream)
            stream.cancel()
            wait_for(lambda: value(scrape(server), "iotda_export_rpcs_total", method="ShowExportTask",
                                   code="CANCELLED") == 1, timeout=10, what="the cancelled download to be counted")
            assert value(scrape(server), "iotda_export_rpcs_total", method="ShowExportTask", code="OK") == 0

            # The server shuts down while a download waits on its client: the client sees UNAVAILABLE.
            stream = download(exports[0], offset=1)  # a free resume of the cancelled download
            next(stream)
            server.stop(grace=0.5)
            stopped = True
            try:
                for _ in stream:
                    pass
                raise AssertionError("the download outlived the server")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    finally:
        if not stopped:
            server.stop()
    # The gateway is gone with the server: read the same exposition /metrics served.
    after = _samples(server.server.metrics.exposition())
    assert value(after, "iotda_export_rpcs_total", method="ShowExportTask", code="UNAVAILABLE") == 1
    assert value(after, "iotda_export_rpcs_total", method="ShowExportTask", code="CANCELLED") == 1
    assert value(after, "iotda_export_rpcs_total", method="ShowExportTask", code="OK") == 0


def _sample_labels(text: str) -> dict[str, set[str]]:
    """{sample name: the label names it carries} of an exposition."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            names.setdefault(s.name, set()).update(s.labels)
    return names


def test_grpc_server_metrics_and_process_metrics_beside_ours(tmp_path):
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0")
    try:
        with grpc.insecure_channel(server.address) as channel:
            user = make_user(server, channel)
            batch = seed_batch_task(server.store, user.project_id, "", 50, seed=7)
            export = _create(user, batch)
            refused(lambda: _status(user, "0" * 24), grpc.StatusCode.NOT_FOUND)
            samples = scrape(server)
            svc = "iotda.export.v1.ExportTaskService"
            unary = dict(grpc_type="unary", grpc_service=svc)
            assert value(samples, "grpc_server_started_total", grpc_method="CreateExportTask", **unary) == 1
            assert value(samples, "grpc_server_handled_total", grpc_method="CreateExportTask", grpc_code="OK",
                         **unary) == 1
            # go-grpc-prometheus's spelling of the codes.
            assert value(samples, "grpc_server_handled_total", grpc_method="GetExportTask", grpc_code="NotFound",
                         **unary) == 1
            assert value(samples, "grpc_server_handling_seconds_count", grpc_method="GetExportTask", **unary) == 1
            assert value(samples, "grpc_server_handling_seconds_bucket", grpc_method="GetExportTask", le="+Inf",
                         **unary) == 1
            # Our own names keep working beside them.
            assert value(samples, "iotda_export_rpcs_total", method="GetExportTask", code="NOT_FOUND") == 1
            # The process: memory, CPU, fds, and the Python running it.
            for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                         "process_max_fds", "process_start_time_seconds"):
                assert value(samples, name) > 0, name
            assert any(name == "python_info" for name, _ in samples)

            # A stream counts as server_stream, started when it begins and handled when it ends.
            stream = user.exports.WatchProgress(epb.WatchProgressRequest(
                project_id=user.project_id, export_task_id=export.export_task_id), metadata=user.metadata)
            next(stream)
            streaming = dict(grpc_type="server_stream", grpc_service=svc, grpc_method="WatchProgress")
            assert value(scrape(server), "grpc_server_started_total", **streaming) == 1
            assert value(scrape(server), "grpc_server_handled_total", grpc_code="Canceled", **streaming) == 0
            stream.cancel()
            wait_for(lambda: value(scrape(server), "grpc_server_handled_total", grpc_code="Canceled",
                                   **streaming) == 1, timeout=10, what="the cancelled watch to be counted")
    finally:
        server.stop()


def test_the_grafana_dashboard_queries_parse_and_use_only_metrics_the_server_exports(tmp_path):
    """docs/grafana/iotda-export.json: every query parses with a real PromQL parser (promql-parser: Python
    bindings of the Rust promql-parser crate), and every metric and label it selects is one a
    live server exposes after an export ran, was downloaded, and a call was refused."""
    import pathlib

    import promql_parser

    dashboard_path = pathlib.Path(__file__).resolve().parent.parent / "docs" / "grafana" / "iotda-export.json"
    dashboard = json.loads(dashboard_path.read_text())
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0")
    try:
        with grpc.insecure_channel(server.address) as channel:
            user = make_user(server, channel)
            batch = seed_batch_task(server.store, user.project_id, "", 300, seed=11)
            export = _create(user, batch)
            with worker_process(server):
                wait_for(lambda: _status(user, export.export_task_id) == "Success", timeout=60, what="the export")
                wait_for(lambda: value(scrape(server), "iotda_export_runs_finished_total", outcome="success") == 1,
                         timeout=10, what="the run to be reported")
            list(user.exports.ShowExportTask(epb.ShowExportTaskRequest(
                project_id=user.project_id, export_task_id=export.export_task_id), metadata=user.metadata))
            refused(lambda: list(user.exports.ShowExportTask(epb.ShowExportTaskRequest(
                project_id=user.project_id, export_task_id=export.export_task_id), metadata=user.metadata)),
                grpc.StatusCode.RESOURCE_EXHAUSTED)
            with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as r:
                exported = _sample_labels(r.read().decode())
    finally:
        server.stop()

    # Labels Prometheus adds to every series when it scrapes.
    target_labels = {"instance", "job"}
    grafana_variables = {"$__rate_interval": "5m", "$instance": ".*"}
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 15
    problems = []
    used = set()
    for title, expr in queries:
        for variable, example in grafana_variables.items():
            expr = expr.replace(variable, example)
        assert "$" not in expr, f"{title}: a Grafana variable the test does not know: {expr}"
        try:
            ast = promql_parser.parse(expr)
        except ValueError as e:
            problems.append(f"{title}: does not parse: {e}: {expr}")
            continue
        selectors = []
        promql_parser.walk(ast, lambda node: selectors.append(node)
                           if isinstance(node, promql_parser.VectorSelector) else None)
        assert selectors, f"{title}: selects no metric"
        for selector in selectors:
            used.add(selector.name)
            if selector.name not in exported:
                problems.append(f"{title}: {selector.name} is not exported")
                continue
            for matcher in selector.matchers.matchers:
                if matcher.name not in exported[selector.name] | target_labels:
                    problems.append(f"{title}: {selector.name} has no label {matcher.name}")
    for variable in dashboard["templating"]["list"]:
        metric = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]["query"])
        assert metric, variable
        if metric.group(1) not in exported:
            problems.append(f"variable {variable['name']}: {metric.group(1)} is not exported")
    assert not problems, "\n".join(problems)
    # It shows the conventional gRPC names, the process and our export figures.
    assert {"grpc_server_handled_total", "grpc_server_started_total", "grpc_server_handling_seconds_bucket",
            "process_resident_memory_bytes", "process_open_fds", "iotda_export_exports",
            "iotda_export_rows_written_total"} <= used
