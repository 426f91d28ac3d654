"""Load: many users at once against one in-process server (2 worker processes, SQLite).

Each of USERS threads, for ROUND_SECONDS, repeatedly: creates a burst of exports of its small batch
tasks (a burst of up to 7 distinct tasks passes the 5-unfinished quota), watches each to its end,
downloads one finished file (at most one download per user per 30 s, plus one immediate second try
that must be refused), and lists. Each user starts with HISTORY finished tasks, so its 7 distinct
tasks take it past 50: the earliest are evicted and "never more than 50" can fail. Both quotas are
shown to be pressed: creates refused by IOTDA.018002 > 0, and every user's list reaches 50.
Only the documented refusals may occur: RESOURCE_EXHAUSTED with IOTDA.018002 (5 unfinished) or
IOTDA.018003 (one download per 30 s); any other error fails the test. Every watched export must end
Success and every download must be the complete zip.

Two identical rounds: the first warms up (thread pools, connections, caches); after the second the
server process's open file descriptors (/proc/self/fd: the server runs in this process) and RSS
(/proc/self/status VmRSS) must be flat within a tolerance compared with after the first.

Default: 10 users, 2 rounds of 12 s. Longer: IOTDA_LOAD_SECONDS=120 IOTDA_LOAD_USERS=20
.venv/bin/python -m pytest -q -s tests/test_load.py
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import threading
import time
from collections import Counter

import grpc

from conftest import ServerThread, make_user, rpc_failure
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.domain import ids, rules
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.domain.model import Caller, ExportTask

USERS = int(os.environ.get("IOTDA_LOAD_USERS", "10"))
ROUND_SECONDS = float(os.environ.get("IOTDA_LOAD_SECONDS", "12"))
FD_TOLERANCE = 8
RSS_TOLERANCE_KIB = 24 * 1024
DOCUMENTED = {("RESOURCE_EXHAUSTED", "IOTDA.018002"), ("RESOURCE_EXHAUSTED", "IOTDA.018003")}
SIZES = (5, 20, 60, 150, 400)  # plus two per user: 7 distinct batch tasks each
HISTORY = rules.MAX_EXPORT_TASKS_PER_USER - 4  # finished tasks each user starts with: 46 + 7 > 50
QUOTA_REFUSED = "create RESOURCE_EXHAUSTED IOTDA.018002"


def add_history(server, user, n: int) -> None:
    """n finished export tasks of other batch tasks, earliest first, as if run long ago."""
    principal = server.store.reader().principal_by("user", user.creds["user"])
    owner = Caller(principal=principal, project_id=user.project_id, instance_id="").owner
    start = ids.now_ms() - 86_400_000
    with server.store.transaction(lock_key=owner) as tx:
        for i in range(n):
            batch = ids.new_id()
            tx.insert_export_task(ExportTask(
                export_task_id=ids.new_id(), owner=owner, project_id=user.project_id, instance_id="",
                resource_type="BatchTask", batch_task_id=batch, export_format="xls", app_type="GLOBAL", app_id=None,
                conditions_key=f'["{user.project_id}","","BatchTask","{batch}","xls","GLOBAL",null]',
                status="Success", status_desc=None, progress=100, export_count=0, create_time=start + i,
                end_time=start + i, version=3, run_state="done", run_token=None, attempts=1, worker_id=None,
                lease_until=None, queued_at=start + i, file_generation=0, file_size=None, file_sha256=None))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = Counter()
        self.refused = Counter()
        self.unexpected: list[str] = []
        self.max_listed = 0  # the most tasks a user's list counted

    def add_ok(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.ok[what] += n

    def add_error(self, what: str, err: grpc.RpcError) -> None:
        f = rpc_failure(err)
        with self.lock:
            if (f.code.name, f.error_code) in DOCUMENTED:
                self.refused[f"{what} {f.code.name} {f.error_code}"] += 1
            else:
                self.unexpected.append(f"{what}: {f.code.name} {f.error_code} {f.message}")


def user_loop(user, batches: list[tuple[str, int]], deadline: float, stats: Stats, rng: random.Random,
              last_download: dict) -> None:
    p, md, ex = user.project_id, user.metadata, user.exports
    while time.monotonic() < deadline:
        created = []
        for batch_id, size in rng.sample(batches, k=rng.randint(3, len(batches))):
            try:
                t = ex.CreateExportTask(epb.CreateExportTaskRequest(
                    project_id=p, resource_type="BatchTask", resource_condition=epb.ResourceCondition(task_id=batch_id)),
                    metadata=md, timeout=20).export_task
                created.append((t.export_task_id, size))
                stats.add_ok("create")
            except grpc.RpcError as e:
                stats.add_error("create", e)
        finished = []
        for export_task_id, size in created:
            try:
                last = list(ex.WatchProgress(epb.WatchProgressRequest(project_id=p, export_task_id=export_task_id),
                                             metadata=md, timeout=60))[-1].export_task
                if last.status != "Success" or last.export_count != size:
                    stats.unexpected.append(f"watch ended {last.status} {last.status_desc!r} {last.export_count}/{size}")
                else:
                    finished.append(last)
                stats.add_ok("watch")
            except grpc.RpcError as e:
                stats.add_error("watch", e)
        if finished and time.monotonic() - last_download.get("at", -1e9) > 31:
            task = rng.choice(finished)
            for attempt in (1, 2):  # the second, at once, must be refused with IOTDA.018003
                try:
                    chunks = list(ex.ShowExportTask(epb.ShowExportTaskRequest(
                        project_id=p, export_task_id=task.export_task_id), metadata=md, timeout=30))
                    data = b"".join(c.body.data for c in chunks)
                    if attempt == 2:
                        stats.unexpected.append("a second download within 30 s was admitted")
                    elif data[:2] != b"PK":
                        stats.unexpected.append("a download is not a zip")
                    else:
                        last_download["at"] = time.monotonic()
                        stats.add_ok("download")
                        stats.add_ok("download bytes", len(data))
                        hashlib.sha256(data)
                except grpc.RpcError as e:
                    if attempt == 1:
                        last_download["at"] = time.monotonic()  # a refusal: the window is open anyway
                    stats.add_error("download", e)
        try:
            page = ex.ListExportTasks(epb.ListExportTasksRequest(project_id=p, limit=50), metadata=md, timeout=20)
            if page.page.count > rules.MAX_EXPORT_TASKS_PER_USER:
                stats.unexpected.append(f"user holds {page.page.count} export tasks (> 50)")
            with stats.lock:
                stats.max_listed = max(stats.max_listed, page.page.count)
            stats.add_ok("list")
        except grpc.RpcError as e:
            stats.add_error("list", e)


def run_round(users, batches, seconds: float, seed: int) -> Stats:
    stats = Stats()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=user_loop, args=(u, batches[i], deadline, stats, random.Random(seed + i),
                                                        u.last_download), daemon=True)
               for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 90)  # a watch in flight at the deadline ends within its own 60 s deadline
        assert not t.is_alive(), "a user thread hung past every deadline"
    return stats


def settle() -> tuple[int, int]:
    """fd count and RSS once the server is idle (the workers poll; give the loop a moment)."""
    time.sleep(1.0)
    gc.collect()
    return fd_count(), rss_kib()


def test_many_users_at_once_get_only_documented_refusals_and_resources_stay_flat(tmp_path):
    server = ServerThread(tmp_path / "load", workers=2)
    try:
        with grpc.insecure_channel(server.address) as channel:
            users = [make_user(server, channel) for _ in range(USERS)]
            batches = []
            for i, u in enumerate(users):
                u.last_download = {}
                sizes = [*SIZES, 50 + i, 10 + i]
                batches.append([(seed_batch_task(server.store, u.project_id, "", n, seed=n + i), n) for n in sizes])
                add_history(server, u, HISTORY)
            figures = []
            quota_refused = 0
            for round_no in (1, 2):
                started = time.monotonic()
                stats = run_round(users, batches, ROUND_SECONDS, seed=round_no * 1000)
                fds, rss = settle()
                figures.append((fds, rss))
                print(f"\n[load] round {round_no}: {USERS} users, {time.monotonic() - started:.1f} s;"
                      f" ok {dict(stats.ok)}; documented refusals {dict(stats.refused)};"
                      f" unexpected {len(stats.unexpected)}; most tasks listed for a user {stats.max_listed};"
                      f" server process fds {fds}, RSS {rss / 1024:.1f} MiB")
                assert not stats.unexpected, stats.unexpected[:10]
                assert stats.max_listed == rules.MAX_EXPORT_TASKS_PER_USER, "the 50-task cap was never reached"
                quota_refused += stats.refused[QUOTA_REFUSED]
                assert stats.ok["create"] > 0 and stats.ok["watch"] > 0 and stats.ok["list"] > 0
                assert stats.ok["download"] > 0 or round_no == 2 and ROUND_SECONDS < 31
            assert quota_refused > 0, "no create was refused by the 5-unfinished quota: it was never pressed"
            (fd1, rss1), (fd2, rss2) = figures
            print(f"[load] after warm-up vs after round 2: fds {fd1} -> {fd2} (tolerance +{FD_TOLERANCE}),"
                  f" RSS {rss1 / 1024:.1f} -> {rss2 / 1024:.1f} MiB (tolerance +{RSS_TOLERANCE_KIB / 1024:.0f} MiB)")
            assert fd2 - fd1 <= FD_TOLERANCE, f"open file descriptors grew from {fd1} to {fd2}"
            assert rss2 - rss1 <= RSS_TOLERANCE_KIB, f"RSS grew from {rss1} KiB to {rss2} KiB"
    finally:
        server.stop()
