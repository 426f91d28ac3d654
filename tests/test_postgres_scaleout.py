"""Scale-out on PostgreSQL (issue 4), with real processes only: two API replicas (`serve --workers 0`)
and two `iotda-export worker` processes on one database of their own on the machine's PostgreSQL,
sharing one --files-dir. PostgreSQL missing is a failure, never a skip (pg_support.TestDatabase).

The tests run in file order on one module-scoped fleet: the quota storm needs no worker alive (its
exports must stay Processing), so the workers start with the first test that needs them; the
PostgreSQL restart comes last, once. Leases are 3 s so a takeover is quick.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import subprocess
import threading
import time
import urllib.request
import zipfile

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pg_support as ps
from conftest import wait_for
from iotda_export_client import ExportApiError, ExportClient
from iotda_export_server.app import CREDENTIALS_FILE
from iotda_export_server.domain import ids
from iotda_export_server.domain.model import Caller, ExportTask
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.store import open_store

LEASE_SECONDS = 3
# Seconds of export on this shared machine: long enough to watch, kill, restart (150,000 took 2-8 s
# before issue 14's PostgreSQL read path, ~0.5-1 s after it: too short for a restart to land mid-run).
BIG_SUBTASKS = 400_000
PROJECT = "scaleout-project"


class Fleet:
    """Every process the module starts, stopped (whole process groups) at teardown."""

    def __init__(self, db: ps.TestDatabase, root: pathlib.Path):
        self.db, self.root = db, root
        self.files_dir = root / "files"  # shared by all replicas and workers
        self.procs: list[ps.Proc] = []
        self.addresses: dict[str, str] = {}
        self.workers: list[ps.Proc] = []
        self.big_seed: subprocess.Popen | None = None
        self._big_task_id: str | None = None
        self.state: dict = {}
        self.metrics_urls: dict[str, str] = {}
        self._store = None

    def serve(self, name: str) -> ps.Proc:
        p = ps.serve(name, self.root, self.db.url, self.root / name, self.files_dir, workers=0,
                     lease_seconds=LEASE_SECONDS)
        self.procs.append(p)
        return p

    def worker(self, name: str) -> ps.Proc:
        p = ps.worker(name, self.root, self.db.url, self.root / name, self.files_dir, 1, LEASE_SECONDS,
                      "--metrics-addr", "127.0.0.1:0")
        self.procs.append(p)
        self.metrics_urls[name] = p.wait_line(r"metrics on (http://\S+/metrics)").group(1)
        p.wait_line("worker running 1 export processes")
        wait_for(lambda: p.children(), timeout=10, what=f"{name}'s export process")
        return p

    def start_workers(self) -> list[ps.Proc]:
        if not self.workers:
            self.workers = [self.worker("worker-1"), self.worker("worker-2")]
        return self.workers

    def user(self, name: str) -> dict:
        out = ps.run_cli("principal", "add", "--database", self.db.url, "--user", name, "--project", PROJECT,
                         "--json").stdout
        return json.loads(out)

    def client(self, creds: dict, replica: str) -> ExportClient:
        return ExportClient(self.addresses[replica], creds["token"], creds["project_id"], timeout=20)

    def small_task(self, subtasks: int) -> str:
        """A batch task through the server's own seeding code on the real database (the CLI's `seed`
        costs an interpreter start each; the big task goes through the CLI)."""
        if self._store is None:
            self._store = open_store(self.root / "seeder", self.db.url, migrate=False)
        return seed_batch_task(self._store, PROJECT, "", subtasks, seed=subtasks)

    def big_task(self) -> str:
        """The big batch task, seeded by `iotda-export seed` in the background from the start."""
        if self._big_task_id is None:
            out, err = self.big_seed.communicate(timeout=90)
            assert self.big_seed.returncode == 0, f"seed failed: {out}\n{err}"
            self._big_task_id = json.loads(out)["task_id"]
        return self._big_task_id

    def task_row(self, export_task_id: str) -> dict:
        rows = self.db.query("SELECT status, progress, run_state, attempts, worker_id, export_count, file_sha256,"
                             " end_time FROM export_tasks WHERE export_task_id = %s", (export_task_id,))
        assert rows, f"export task {export_task_id} is not in the database"
        keys = ("status", "progress", "run_state", "attempts", "worker_id", "export_count", "file_sha256", "end_time")
        return dict(zip(keys, rows[0]))

    def stop(self) -> list[str]:
        """Stops everything (SIGTERM, then SIGKILL); returns the processes that did not stop cleanly."""
        if self.big_seed is not None and self.big_seed.poll() is None:
            self.big_seed.kill()
            self.big_seed.wait(10)
        problems = [problem for p in self.procs if (problem := p.stop(timeout=10))]
        if self._store is not None:
            self._store.close()
        return problems


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaleout")
    db = ps.TestDatabase().create()
    f = Fleet(db, root)
    try:
        ps.run_cli("migrate", "--database", db.url)
        # The big batch task takes seconds to load: start it now, in parallel with the first tests.
        f.big_seed = subprocess.Popen(
            [*ps.CLI, "seed", "--database", db.url, "--data-dir", str(root / "seeder"), "--subtasks",
             str(BIG_SUBTASKS), "--project", PROJECT, "--json"],
            env=ps.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Two API replicas started at the same moment on the empty database (no principal yet).
        replicas = [f.serve("replica-a"), f.serve("replica-b")]
        for name, p in zip("ab", replicas):
            f.addresses[name] = p.wait_line(ps.LISTENING).group(1)
        yield f
    finally:
        problems = f.stop()
        db.drop()
    # Replicas and workers stop cleanly on SIGTERM (the workers hand their exports back).
    assert not problems, problems


def _inner_xls_sha256(path: pathlib.Path) -> str:
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as z:
        (name,) = z.namelist()
        return hashlib.sha256(z.read(name)).hexdigest()


def _file_sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_final(client: ExportClient, export_task_id: str, timeout: float = 60):
    final = client.wait(export_task_id, timeout=timeout)
    assert final is not None and final.status in ("Success", "Failed"), final
    return final


def _undisturbed(fleet: Fleet) -> tuple[str, pathlib.Path]:
    """An export of the big batch task that nothing disturbed (the watch test's, or a new one)."""
    if "undisturbed" not in fleet.state:
        fleet.start_workers()
        creds = fleet.user("calm")
        with fleet.client(creds, "a") as c:
            task = c.create_export(fleet.big_task())
            final = _wait_final(c, task.export_task_id)
        assert final.status == "Success", final
        fleet.state["undisturbed"] = (task.export_task_id, fleet.files_dir / f"{task.export_task_id}.zip")
    return fleet.state["undisturbed"]


# -- 1 ---------------------------------------------------------------------------------------------

def test_bootstrap_once_and_principals_shared(fleet):
    creds_files = [fleet.root / name / CREDENTIALS_FILE for name in ("replica-a", "replica-b")]
    present = [p for p in creds_files if p.exists()]
    assert len(present) == 1, f"credentials.json in {present}: exactly one replica must bootstrap"
    assert fleet.db.scalar("SELECT count(*) FROM principals WHERE \"user\" = 'admin'") == 1
    admin = json.loads(present[0].read_text())
    for replica in ("a", "b"):  # the token works on the replica that did not create it too
        with fleet.client(admin, replica) as c:
            assert c.list_exports().page.count == 0
    # A principal added later is known at once to both replicas (no cache to refresh).
    creds = fleet.user("late-comer")
    for replica in ("a", "b"):
        with fleet.client(creds, replica) as c:
            c.list_exports()


# -- 2 ---------------------------------------------------------------------------------------------

def _storm(calls: list) -> tuple[list, list]:
    """Runs the calls at the same moment (threads released by a barrier); (results, errors)."""
    barrier = threading.Barrier(len(calls))
    results, errors = [], []
    lock = threading.Lock()

    def run(call):
        barrier.wait(10)
        try:
            r = call()
            with lock:
                results.append(r)
        except ExportApiError as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a create call hung"
    return results, errors


def test_quota_storm_across_replicas_admits_exactly_five(fleet):
    assert not fleet.workers, "the storm needs its exports to stay Processing: no worker may run yet"
    creds = fleet.user("stormy")
    tasks = [fleet.small_task(3) for _ in range(20)]
    clients = {r: fleet.client(creds, r) for r in ("a", "b")}
    try:
        results, errors = _storm([lambda t=t, i=i: clients["ab"[i % 2]].create_export(t)
                                  for i, t in enumerate(tasks)])
        assert len(results) == 5, f"{len(results)} creates admitted, errors: {errors[:3]}"
        assert len(errors) == 15
        for e in errors:
            assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.error_code == "IOTDA.018002", repr(e)
        assert {r.status for r in results} == {"Processing"}
        assert fleet.db.scalar("SELECT count(*) FROM export_tasks WHERE owner = %s", (creds["principal_id"],)) == 5

        # The same conditions from both replicas at once: one task (the unique index, under the lock).
        twin = fleet.user("twin")
        same = fleet.small_task(3)
        twin_clients = [fleet.client(twin, r) for r in ("a", "b")]
        try:
            results, errors = _storm([lambda i=i: twin_clients[i % 2].create_export(same) for i in range(10)])
            assert not errors, errors
            assert len({r.export_task_id for r in results}) == 1, {r.export_task_id for r in results}
            assert fleet.db.scalar("SELECT count(*) FROM export_tasks WHERE owner = %s", (twin["principal_id"],)) == 1
            twin_clients[0].cancel_export(results[0].export_task_id)
        finally:
            for c in twin_clients:
                c.close()
        # Cancelled, so that the workers started later do not spend time on them.
        for r in fleet.db.query("SELECT export_task_id FROM export_tasks WHERE owner = %s", (creds["principal_id"],)):
            assert clients["b"].cancel_export(r[0]).status == "Failed"
    finally:
        for c in clients.values():
            c.close()


# -- 2b --------------------------------------------------------------------------------------------

def _owner(fleet: Fleet, name: str) -> str:
    """The owner key the domain files a principal's tasks under (Caller.owner)."""
    principal = fleet._store.reader().principal_by("user", name)
    return Caller(principal=principal, project_id=principal.project_id, instance_id="").owner


def _insert_finished(fleet: Fleet, owner: str, batch_ids: list[str]) -> list[str]:
    """A finished (Success) export task per batch task, earliest first, as if each had run; the
    conditions are those a create of the batch task computes, so a create of one re-runs it."""
    start = int(time.time() * 1000) - 3_600_000
    out = []
    with fleet._store.transaction(lock_key=owner) as tx:
        for i, batch in enumerate(batch_ids):
            t = ExportTask(
                export_task_id=ids.new_id(), owner=owner, project_id=PROJECT, instance_id="",
                resource_type="BatchTask", batch_task_id=batch, export_format="xls", app_type="GLOBAL", app_id=None,
                conditions_key=json.dumps([PROJECT, "", "BatchTask", batch, "xls", "GLOBAL", None],
                                          separators=(",", ":")),
                status="Success", status_desc=None, progress=100, export_count=3, create_time=start + i * 1000,
                end_time=start + i * 1000 + 500, version=3, run_state="done", run_token=None, attempts=1,
                worker_id=None, lease_until=None, queued_at=start + i * 1000, file_generation=0, file_size=None,
                file_sha256=None)
            tx.insert_export_task(t)
            out.append(t.export_task_id)
    return out


def test_cap_of_fifty_with_reruns_and_new_creates_across_replicas(fleet):
    """A user at 49 finished tasks; 2 re-runs of the newest and 8 new creates at one moment, split over
    both replicas: exactly 5 admitted (re-runs count like new tasks, so at least 3 are new and at
    least 2 tasks are evicted), never more than 50 tasks, and the earliest finished tasks that were
    not re-run are the ones evicted."""
    assert not fleet.workers, "the storm needs its exports to stay Processing: no worker may run yet"
    creds = fleet.user("capped")
    fleet.small_task(3)  # opens the seeding store
    owner = _owner(fleet, "capped")
    old_batches = [fleet.small_task(3) for _ in range(49)]
    old = _insert_finished(fleet, owner, old_batches)
    new_batches = [fleet.small_task(3) for _ in range(8)]
    targets = old_batches[-2:] + new_batches  # the newest: never among the evicted
    counts: list[int] = []
    stop = threading.Event()

    def monitor():
        with fleet.db.connect() as conn:
            while not stop.is_set():
                counts.append(conn.execute("SELECT count(*) FROM export_tasks WHERE owner = %s",
                                           (owner,)).fetchone()[0])

    watcher = threading.Thread(target=monitor)
    watcher.start()
    clients = {r: fleet.client(creds, r) for r in ("a", "b")}
    try:
        results, errors = _storm([lambda t=t, i=i: clients["ab"[i % 2]].create_export(t)
                                  for i, t in enumerate(targets)])
    finally:
        stop.set()
        watcher.join(30)
    try:
        assert len(results) == 5 and len(errors) == 5, (len(results), errors[:3])
        assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.error_code == "IOTDA.018002" for e in errors)
        reruns = {r.export_task_id for r in results} & set(old[-2:])
        new_admitted = 5 - len(reruns)
        assert fleet.db.scalar("SELECT count(*) FROM export_tasks WHERE owner = %s AND status = 'Processing'",
                               (owner,)) == 5
        final = fleet.db.scalar("SELECT count(*) FROM export_tasks WHERE owner = %s", (owner,))
        assert counts and max(counts) <= 50 and final == 50, (max(counts), final)
        # Evicted: the earliest finished ones; a re-run (Processing again, create time refreshed) never.
        evicted = 49 + new_admitted - final
        assert evicted >= 2
        left = {r[0] for r in fleet.db.query("SELECT export_task_id FROM export_tasks WHERE owner = %s", (owner,))}
        finished_in_order = [i for i in old if i not in reruns]
        assert set(finished_in_order[:evicted]).isdisjoint(left) and set(finished_in_order[evicted:]) <= left
        assert reruns <= left
        print(f"\n[cap storm] admitted 5 ({len(reruns)} re-runs), evicted {evicted}, max tasks seen {max(counts)}"
              f" in {len(counts)} samples")
        for r in results:  # so that the workers started later do not spend time on them
            clients["a"].cancel_export(r.export_task_id)
    finally:
        for c in clients.values():
            c.close()


# -- 3 ---------------------------------------------------------------------------------------------

def test_download_limit_across_replicas(fleet, tmp_path):
    fleet.start_workers()
    creds = fleet.user("downloader")
    task_id = fleet.small_task(500)
    with fleet.client(creds, "a") as a, fleet.client(creds, "b") as b:
        export = a.create_export(task_id)
        final = _wait_final(b, export.export_task_id)
        assert (final.status, final.export_count) == ("Success", 500), final
        path = a.download(export.export_task_id, tmp_path / "via-a.zip")
        assert _file_sha256(pathlib.Path(path)) == fleet.task_row(export.export_task_id)["file_sha256"]
        with pytest.raises(ExportApiError) as refused:
            b.download(export.export_task_id, tmp_path / "via-b.zip")
        e = refused.value
        assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.error_code == "IOTDA.018003", repr(e)
        assert e.retry_after is not None and 0 < e.retry_after <= 30, repr(e)
        assert not (tmp_path / "via-b.zip").exists()


def test_simultaneous_downloads_across_replicas_admit_one_per_user(fleet, tmp_path):
    """Two users, each sending four downloads at one moment, half through each replica; three trials
    (the users' last download is moved 31 s back between trials): exactly one per user each time."""
    fleet.start_workers()
    names = ("racer-1", "racer-2")
    users = [fleet.user(n) for n in names]
    owners = [_owner(fleet, n) for n in names]
    exports = []
    for creds in users:
        with fleet.client(creds, "a") as c:
            export = c.create_export(fleet.small_task(200))
            assert _wait_final(c, export.export_task_id).status == "Success"
            exports.append(export.export_task_id)
    clients = [[fleet.client(creds, r) for r in ("a", "b")] for creds in users]
    try:
        for trial in range(3):
            fleet.db.query("UPDATE download_limits SET last_at = last_at - 31000 WHERE owner = ANY(%s)"
                           " RETURNING owner", (list(owners),))
            calls = [lambda u=u, i=i: (u, clients[u][i % 2].download(
                exports[u], tmp_path / f"t{trial}-u{u}-{i}.zip")) for u in (0, 1) for i in range(4)]
            results, errors = _storm(calls)
            per_user = [sum(1 for u, _ in results if u == k) for k in (0, 1)]
            assert per_user == [1, 1], (trial, per_user, errors[:3])
            assert len(errors) == 6 and all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                                            and e.error_code == "IOTDA.018003" for e in errors), errors
    finally:
        for pair in clients:
            for c in pair:
                c.close()


# -- 4 ---------------------------------------------------------------------------------------------

def test_watch_on_a_follows_export_created_on_b_run_by_a_worker(fleet):
    fleet.start_workers()
    creds = fleet.user("watcher")
    big = fleet.big_task()
    with fleet.client(creds, "a") as a, fleet.client(creds, "b") as b:
        export = b.create_export(big)
        events = []  # (arrival time in ms since the epoch, task)
        for ev in a.watch(export.export_task_id, timeout=90):
            events.append((time.time() * 1000, ev.export_task))
    tasks = [t for _, t in events]
    progress = [t.progress for t in tasks]
    assert progress == sorted(progress), progress
    final = tasks[-1]
    assert (final.status, final.progress, final.export_count) == ("Success", 100, BIG_SUBTASKS), final
    end_ms = fleet.task_row(export.export_task_id)["end_time"]
    # Progress reached the watcher while the export ran, not only at its end: several distinct
    # percentages arrived before the export's end_time (an order, not a duration: how fast the
    # events travel is a figure of `make bench`, bench/RESULTS.md).
    during = [at for at, t in events if t.status == "Processing" and 1 < t.progress < 100 and at < end_ms]
    assert len(during) >= 3 and len({t.progress for _, t in events if t.status == "Processing"}) >= 3, \
        f"progress did not arrive while the export ran: {[(round(at - end_ms), t.progress) for at, t in events]}"
    lag_ms = events[-1][0] - end_ms
    # The worker that ran it counted the run on its own /metrics; the queue gauge reads the database.
    def finished_runs() -> float:
        total = 0.0
        for url in fleet.metrics_urls.values():
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            samples = {s.name + str(sorted(s.labels.items())): s.value
                       for f in text_string_to_metric_families(text) for s in f.samples}
            assert "iotda_export_exports[('state', 'running')]" in samples, sorted(samples)[:20]
            total += samples.get("iotda_export_run_rows_sum[]", 0.0)
        return total
    wait_for(lambda: finished_runs() >= BIG_SUBTASKS, timeout=10, what="the run on a worker's /metrics")
    print(f"\nwatch: {len(events)} events, {len(during)} while running, over {end_ms - min(during):.0f} ms;"
          f" Success seen {lag_ms:.0f} ms after it")
    fleet.state["undisturbed"] = (export.export_task_id, fleet.files_dir / f"{export.export_task_id}.zip")


# -- 5 ---------------------------------------------------------------------------------------------

def test_killed_worker_is_taken_over_within_the_lease(fleet):
    workers = fleet.start_workers()
    _, calm_path = _undisturbed(fleet)
    creds = fleet.user("unlucky")
    with fleet.client(creds, "a") as a:
        export = a.create_export(fleet.big_task())
        row = wait_for(lambda: (r := fleet.task_row(export.export_task_id))["progress"] > 5 and r,
                       timeout=30, interval=0.02, what="the export to pass 5 %")
        assert row["run_state"] == "running" and row["attempts"] == 1, row
        host, parent_pid, _ = row["worker_id"].split(":")
        (victim,) = [w for w in workers if w.pid == int(parent_pid)]
        (survivor,) = [w for w in workers if w is not victim]
        children = victim.children()
        victim.kill()  # SIGKILL to the whole group: the `worker` command and its export process
        killed_at = time.monotonic()
        # A condition with a deadline far past the lease; how long the takeover takes against the
        # lease is a figure of `make bench` (bench/RESULTS.md), printed here.
        row = wait_for(lambda: (r := fleet.task_row(export.export_task_id))["attempts"] == 2
                       and r["run_state"] == "running" and r, timeout=LEASE_SECONDS + 60, interval=0.05,
                       what="another worker to take the export over")
        takeover = time.monotonic() - killed_at
        assert row["worker_id"].split(":")[1] == str(survivor.pid), row
        for pid in children:
            assert not pathlib.Path(f"/proc/{pid}").exists() or \
                pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", f"export process {pid} survived"
        final = _wait_final(a, export.export_task_id)
    assert (final.status, final.export_count) == ("Success", BIG_SUBTASKS), final
    row = fleet.task_row(export.export_task_id)
    path = fleet.files_dir / f"{export.export_task_id}.zip"
    assert _file_sha256(path) == row["file_sha256"]
    # The same rows as the undisturbed run of another user: the .xls is byte-identical (the zips differ
    # only by the member's name, export-<export_task_id>.xls).
    assert _inner_xls_sha256(path) == _inner_xls_sha256(calm_path)
    print(f"\ntakeover: attempt 2 running {takeover:.2f} s after the kill (lease {LEASE_SECONDS} s)")
    # A replacement, so the fleet has two workers again.
    fleet.workers = [survivor, fleet.worker("worker-3")]


# -- 5b --------------------------------------------------------------------------------------------

def test_export_whose_database_connection_is_cut_runs_again(fleet):
    """A worker's connection cut mid-export (lost network, a terminated backend) is not the export's
    failure: the run is left to its lease and runs again, to the same file."""
    fleet.start_workers()
    _, calm_path = _undisturbed(fleet)
    creds = fleet.user("cut-off")
    with fleet.client(creds, "b") as b:
        export = b.create_export(fleet.big_task())
        wait_for(lambda: fleet.task_row(export.export_task_id)["progress"] > 5, timeout=30, interval=0.02,
                 what="the export to pass 5 %")
        # The worker's read snapshot: the one transaction that keeps fetching from its sub-task cursor.
        (pid,) = wait_for(lambda: fleet.db.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'iotda-export'"
            " AND xact_start IS NOT NULL AND query LIKE '%%subtask_columns_%%'", (fleet.db.name,)),
            timeout=10, what="the export's snapshot connection")
        assert fleet.db.scalar("SELECT pg_terminate_backend(%s)", pid)
        final = _wait_final(b, export.export_task_id)
    row = fleet.task_row(export.export_task_id)
    assert (final.status, final.export_count, row["attempts"]) == ("Success", BIG_SUBTASKS, 2), (final, row)
    assert _inner_xls_sha256(fleet.files_dir / f"{export.export_task_id}.zip") == _inner_xls_sha256(calm_path)


# -- 6 ---------------------------------------------------------------------------------------------

def _listeners(fleet: Fleet) -> int:
    return fleet.db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                           " AND application_name = 'iotda-export-listener'", (fleet.db.name,))


def test_postgres_restart_mid_run_is_survived(fleet):
    fleet.start_workers()
    _, calm_path = _undisturbed(fleet)
    assert _listeners(fleet) == 2  # one LISTEN connection per API replica
    creds = fleet.user("restarted")
    a = fleet.client(creds, "a")
    b = fleet.client(creds, "b")
    try:
        export = a.create_export(fleet.big_task())
        wait_for(lambda: fleet.task_row(export.export_task_id)["progress"] > 5, timeout=30, interval=0.02,
                 what="the export to pass 5 %")
        restarted_at = time.monotonic()
        ps.pg_restart()
        wait_for(ps.pg_accepts_connections, timeout=30, interval=0.1, what="PostgreSQL to accept connections")
        pg_back = time.monotonic() - restarted_at

        def answers():
            try:
                return a.get_export(export.export_task_id)
            except ExportApiError as e:
                assert e.code == grpc.StatusCode.UNAVAILABLE, repr(e)  # never INTERNAL
                return None
        wait_for(answers, timeout=20, interval=0.2, what="replica A to answer GetExportTask again")
        api_back = time.monotonic() - restarted_at

        events = []
        deadline = time.monotonic() + 60
        while True:  # a watch opened after the restart, on the other replica
            try:
                events = [ev.export_task for ev in b.watch(export.export_task_id, timeout=60)]
                break
            except ExportApiError as e:
                assert e.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, repr(e)
                time.sleep(0.2)
        final = events[-1]
        assert (final.status, final.export_count) == ("Success", BIG_SUBTASKS), final
        assert any(t.status == "Processing" for t in events[:-1]), f"no update seen: {events}"
        wait_for(lambda: _listeners(fleet) == 2, timeout=30, interval=0.1,
                 what="both replicas' LISTEN connections to come back")
        listen_back = time.monotonic() - restarted_at
    finally:
        a.close()
        b.close()
    row = fleet.task_row(export.export_task_id)
    path = fleet.files_dir / f"{export.export_task_id}.zip"
    assert _file_sha256(path) == row["file_sha256"]
    assert _inner_xls_sha256(path) == _inner_xls_sha256(calm_path)
    print(f"\nrestart: PostgreSQL up {pg_back:.1f} s after the restart began, replica A answered at {api_back:.1f} s,"
          f" LISTEN back by {listen_back:.1f} s; export attempts {row['attempts']},"
          f" {len(events)} watch events after the restart")
