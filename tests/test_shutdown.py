"""SIGTERM: the server stops accepting calls, ends watch streams with UNAVAILABLE instead of hanging,
hands running exports back to the queue, exits cleanly, and the next start finishes the export."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import grpc

from conftest import wait_for
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc as epb_grpc
from iotda_export_server.app import seed

LISTENING = re.compile(r"listening on (\S+) \(gRPC\)")


def start_serve(data_dir) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "iotda_export_server.cli", "serve", "--data-dir", str(data_dir),
         "--grpc-addr", "127.0.0.1:0", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "IOTDA_EXPORT_LOG_LEVEL": "WARNING"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if m := LISTENING.search(line):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("serve did not print its address within 30 s")


def test_sigterm_ends_watches_with_unavailable_and_keeps_the_export_resumable(tmp_path):
    proc, address = start_serve(tmp_path)
    try:
        creds = json.loads((tmp_path / "credentials.json").read_text())
        md = (("authorization", f"Bearer {creds['token']}"),)
        task_id = seed(tmp_path, 150_000)
        with grpc.insecure_channel(address) as channel:
            stub = epb_grpc.ExportTaskServiceStub(channel)
            created = stub.CreateExportTask(epb.CreateExportTaskRequest(
                project_id=creds["project_id"], resource_type="BatchTask",
                resource_condition=epb.ResourceCondition(task_id=task_id)), metadata=md).export_task
            stream = stub.WatchProgress(epb.WatchProgressRequest(
                project_id=creds["project_id"], export_task_id=created.export_task_id), metadata=md)
            events, outcome = [], {}

            def follow():
                try:
                    for event in stream:
                        events.append(event)
                    outcome["code"] = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    outcome["code"] = e.code()

            follower = threading.Thread(target=follow)
            follower.start()
            wait_for(lambda: events and events[-1].export_task.progress > 1, 60, what="the export to make progress")
            proc.send_signal(signal.SIGTERM)
            follower.join(20)
            assert not follower.is_alive(), "the watch stream hung after SIGTERM"
            assert outcome["code"] == grpc.StatusCode.UNAVAILABLE
            assert proc.wait(30) == 0
            with grpc.insecure_channel(address) as again:  # no longer accepting
                try:
                    epb_grpc.ExportTaskServiceStub(again).GetExportTask(epb.GetExportTaskRequest(
                        project_id=creds["project_id"], export_task_id=created.export_task_id),
                        metadata=md, timeout=2)
                    raise AssertionError("a stopped server answered")
                except grpc.RpcError as e:
                    assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    with sqlite3.connect(tmp_path / "iotda-export.db") as db:
        status, run_state, attempts, progress, export_count = db.execute(
            "SELECT status, run_state, attempts, progress, export_count FROM export_tasks WHERE export_task_id = ?",
            (created.export_task_id,)).fetchone()
    assert (status, run_state) == ("Processing", "queued"), "the export was not handed back to the queue"
    assert attempts == 0, "a graceful stop must not use up an attempt"
    # Queued again, it shows what the README promises for a queued export (it had made progress).
    assert (progress, export_count) == (1, 0), (progress, export_count)
    assert not [p for p in (tmp_path / "files").iterdir() if p.name.endswith(".part")]

    proc, address = start_serve(tmp_path)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = epb_grpc.ExportTaskServiceStub(channel)
            final = list(stub.WatchProgress(epb.WatchProgressRequest(
                project_id=creds["project_id"], export_task_id=created.export_task_id), metadata=md,
                timeout=120))[-1].export_task
        assert final.status == "Success" and final.export_count == 150_000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
