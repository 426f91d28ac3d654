"""The durations the tests only wait for (issue 12), as figures: on PostgreSQL with real processes
(two API replicas `serve --workers 0`, two `iotda-export worker`, lease 3 s):

- a worker killed with SIGKILL mid-export: the time until another worker runs the export, against
  the lease the dead worker still held when it died (measured from the database at the kill);
- an export's Success reaching a WatchProgress stream on the *other* replica, against a client
  polling GetExportTask every 10 ms on that replica (the floor of "being told"), same export.

The process helpers are the test suite's (tests/pg_support.py): the same processes the tests run.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from bench.common import ROOT, median
from bench.export_bench import Figure

sys.path.insert(0, str(ROOT / "tests"))
import pg_support as ps  # noqa: E402

from iotda_export_client import ExportClient  # noqa: E402

LEASE_SECONDS = 3
PROJECT = "bench-recovery"


def _worker(root, db, files, name: str) -> ps.Proc:
    p = ps.worker(name, root, db.url, root / name, files, 1, LEASE_SECONDS)
    p.wait_line("worker running 1 export processes", timeout=60)
    deadline = time.monotonic() + 30
    while not p.children():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} started no export process")
        time.sleep(0.05)
    return p


def _row(db, export_task_id: str) -> dict:
    keys = ("status", "progress", "run_state", "attempts", "worker_id", "lease_until", "end_time")
    return dict(zip(keys, db.query(f"SELECT {', '.join(keys)} FROM export_tasks WHERE export_task_id = %s",
                                   (export_task_id,))[0]))


def _until(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def run(base: str, smoke: bool, runs: int) -> list[Figure]:
    from pathlib import Path
    root = Path(base) / "recovery"
    root.mkdir()
    files = root / "files"
    rows = 20_000 if smoke else 150_000
    db = ps.TestDatabase().create()
    procs: list[ps.Proc] = []
    try:
        ps.run_cli("migrate", "--database", db.url)
        task_id = json.loads(ps.run_cli("seed", "--database", db.url, "--data-dir", str(root / "seeder"),
                                        "--subtasks", str(rows), "--project", PROJECT, "--json",
                                        timeout=600).stdout)["task_id"]
        creds = json.loads(ps.run_cli("principal", "add", "--database", db.url, "--user", "bench", "--project",
                                      PROJECT, "--json").stdout)
        replicas = {}
        for name in ("a", "b"):
            p = ps.serve(f"replica-{name}", root, db.url, root / f"replica-{name}", files, 0, LEASE_SECONDS)
            procs.append(p)
            replicas[name] = p.wait_line(ps.LISTENING, timeout=60).group(1)
        workers = [_worker(root, db, files, "worker-1"), _worker(root, db, files, "worker-2")]
        procs += workers
        serial = [2]
        a = ExportClient(replicas["a"], creds["token"], creds["project_id"], timeout=30)
        b = ExportClient(replicas["b"], creds["token"], creds["project_id"], timeout=30)

        # -- Success on the other replica: a watch stream vs a 10 ms poll ----------------------------
        watch_lags, poll_lags = [], []
        for _ in range(runs):
            export = b.create_export(task_id)  # the same conditions each run: a re-run of one task
            arrivals: dict[str, float] = {}

            def watch():
                for ev in a.watch(export.export_task_id, timeout=300):
                    if ev.export_task.status == "Success":
                        arrivals["watch"] = time.time() * 1000

            def poll():
                while a.get_export(export.export_task_id).status != "Success":
                    time.sleep(0.01)
                arrivals["poll"] = time.time() * 1000

            threads = [threading.Thread(target=watch), threading.Thread(target=poll)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            end_ms = _row(db, export.export_task_id)["end_time"]
            watch_lags.append(arrivals["watch"] - end_ms)
            poll_lags.append(arrivals["poll"] - end_ms)
        w, p_ = median(watch_lags), median(poll_lags)
        figures = [Figure(
            "Success reaching a WatchProgress stream on the other replica (PostgreSQL)",
            f"{w:.0f} ms after end_time", f"GetExportTask polled every 10 ms there: {p_:.0f} ms",
            f"{w / max(p_, 1):.2f}x", "-", None,
            [f"{rows:,}-row exports; watch lags {', '.join(f'{x:.0f}' for x in watch_lags)} ms, poll lags"
             f" {', '.join(f'{x:.0f}' for x in poll_lags)} ms (the tests wait for it with a deadline)"])]

        # -- a killed worker's export taken over ------------------------------------------------------
        takeovers, remaining, overdue = [], [], []
        for _ in range(runs):
            export = a.create_export(task_id)
            row = _until(lambda: (r := _row(db, export.export_task_id))["run_state"] == "running"
                         and r["progress"] > 5 and r, 120, "the export to pass 5 %")
            parent_pid = int(row["worker_id"].split(":")[1])
            (victim,) = [x for x in workers if x.pid == parent_pid]
            victim.kill()
            killed_ms = time.time() * 1000
            killed = time.monotonic()
            victim.popen.wait(10)
            _until(lambda: (r := _row(db, export.export_task_id))["attempts"] == row["attempts"] + 1
                   and r["run_state"] == "running", LEASE_SECONDS + 120, "the takeover")
            took = time.monotonic() - killed
            left = max((row["lease_until"] - killed_ms) / 1000, 0.0)  # lease the dead worker still held
            takeovers.append(took)
            remaining.append(left)
            overdue.append(took - left)
            serial[0] += 1
            workers.remove(victim)
            workers.append(_worker(root, db, files, f"worker-{serial[0]}"))
            procs.append(workers[-1])
            _until(lambda: _row(db, export.export_task_id)["status"] != "Processing", 300, "the export to end")
        t, r_ = median(takeovers), median(remaining)
        figures.append(Figure(
            f"export taken over after its worker's kill -9 (lease {LEASE_SECONDS} s)",
            f"{t:.2f} s after the kill", f"lease left at the kill: {r_:.2f} s", f"{t / max(r_, 0.01):.2f}x",
            "-", None,
            [f"takeovers {', '.join(f'{x:.2f}' for x in takeovers)} s; lease left"
             f" {', '.join(f'{x:.2f}' for x in remaining)} s; past the lease {', '.join(f'{x:.2f}' for x in overdue)} s"
             " (the sweep runs each second); the tests wait for it with a deadline"]))
        a.close()
        b.close()
        return figures
    finally:
        for p in procs:
            p.stop(timeout=10)
        db.drop()
