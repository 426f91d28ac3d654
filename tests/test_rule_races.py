"""The per-user rules under real concurrency, on SQLite AND PostgreSQL: the domain's ExportService on a
real store, many threads released at one moment by a barrier (no gRPC in between, so the calls really
overlap inside the rule code).

Each test here was written against a deliberate break of its rule (docs/testing.md, "Mutations that
shaped the suite"):
- the 5-unfinished limit ignoring a same-conditions re-run of a *finished* task
  (`existing is None and count >= limit`): a re-run must count like a new task;
- download admission reading the user's last download outside the locked transaction: of many
  simultaneous downloads by one user exactly one is admitted, every trial;
- the 50-task cap and its eviction, concurrent, on PostgreSQL too.

The clock is injected (ExportService's `clock`), so "31 s later" costs nothing and every trial is a
fresh 30-s window.
"""

from __future__ import annotations

import json
import secrets
import threading

import pytest

import pg_support as ps
from iotda_export_server.app import add_principal
from iotda_export_server.domain import ids, rules
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.domain.errors import QuotaExceeded, RateLimited
from iotda_export_server.domain.exports import CreateExportRequest, ExportService
from iotda_export_server.domain.jobs import ExportJobs
from iotda_export_server.domain.model import Caller, ExportTask, ResourceCondition
from iotda_export_server.store import open_store
from iotda_export_server.store.files import ResultFiles

# The seed's numbers, written out (not read from rules.py): a changed constant must fail here.
UNFINISHED = 5
CAP = 50
WINDOW_MS = 30_000
FREE_RESUMES = 3


class Rig:
    """A real store (SQLite file or a PostgreSQL database of its own), result files, a service with a
    clock the test moves, and the job side (claim/succeed) a worker would drive."""

    def __init__(self, store, files: ResultFiles, dialect: str):
        self.store, self.files, self.dialect = store, files, dialect
        self.now = [1_900_000_000_000]
        self.service = ExportService(store, files, clock=lambda: self.now[0])
        self.jobs = ExportJobs(store, files, clock=lambda: self.now[0])

    def caller(self, prefix: str = "race") -> Caller:
        name = f"{prefix}-{secrets.token_hex(4)}"
        add_principal(self.store, name, secrets.token_hex(16))
        principal = self.store.reader().principal_by("user", name)
        return Caller(principal=principal, project_id=principal.project_id, instance_id="")

    def batch(self, caller: Caller, n: int = 3) -> str:
        return seed_batch_task(self.store, caller.project_id, "", n, seed=n)

    def create(self, caller: Caller, batch_task_id: str) -> ExportTask:
        return self.service.create(caller, CreateExportRequest(
            resource_type="BatchTask", resource_condition=ResourceCondition(batch_task_id), export_format="",
            app_type="", app_id="", request_id=""))

    def finish(self, caller: Caller, task: ExportTask, succeed: bool) -> ExportTask:
        """Ends the task as a worker would (Success with a file) or as a cancel does (Failed)."""
        if not succeed:
            return self.service.cancel(caller, task.export_task_id)
        claim = self.jobs.claim("race-worker")
        assert claim is not None and claim.task.export_task_id == task.export_task_id
        temp = self.files.temp_path(task.export_task_id)
        temp.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: 22 bytes
        assert self.jobs.succeed(claim, temp, rows=0, size=22, sha256="0" * 64)
        return self.store.reader().export_task(task.export_task_id)

    def unfinished(self, caller: Caller) -> int:
        return self.store.reader().count_export_tasks(caller.owner, unfinished_only=True)

    def total(self, caller: Caller) -> int:
        return self.store.reader().count_export_tasks(caller.owner)


@pytest.fixture(params=["sqlite", "postgresql"])
def rig(request, tmp_path):
    (tmp_path / "data").mkdir()
    if request.param == "sqlite":
        store = open_store(tmp_path / "data")
        yield Rig(store, ResultFiles(tmp_path / "files"), "sqlite")
        store.close()
        return
    db = ps.TestDatabase().create()
    store = open_store(tmp_path / "data", db.url, migrate=True)
    try:
        yield Rig(store, ResultFiles(tmp_path / "files"), "postgresql")
    finally:
        store.close()
        db.drop()


def at_once(calls: list) -> list:
    """Runs the calls in threads released together; each result is the return value or the exception.
    Each thread closes its own store connection (the stores keep one per thread)."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i, call):
        barrier.wait(30)
        try:
            results[i] = call()
        except Exception as e:  # noqa: BLE001 - the refusals are the point; anything else is asserted on
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a call hung"
    return results


def _closing(store, call):
    def run():
        try:
            return call()
        finally:
            store.close()  # this thread's connection
    return run


# -- 5 unfinished: a re-run of a finished task is one more unfinished task -------------------------

@pytest.mark.parametrize("finished_by", ["success", "cancel"])
def test_a_rerun_of_a_finished_task_is_refused_at_five_unfinished(rig, finished_by):
    caller = rig.caller()
    old_batch = rig.batch(caller)
    old = rig.finish(caller, rig.create(caller, old_batch), succeed=finished_by == "success")
    assert old.status == (rules.STATUS_SUCCESS if finished_by == "success" else rules.STATUS_FAILED)
    running = [rig.create(caller, rig.batch(caller, 4 + i)) for i in range(UNFINISHED)]
    assert {t.status for t in running} == {rules.STATUS_PROCESSING} and rig.unfinished(caller) == UNFINISHED

    with pytest.raises(QuotaExceeded) as info:
        rig.create(caller, old_batch)  # same conditions as the finished task: a re-run

    assert info.value.limit == UNFINISHED
    after = rig.store.reader().export_task(old.export_task_id)
    assert (after.status, after.version, after.create_time, after.run_state) == \
        (old.status, old.version, old.create_time, old.run_state), "the refused re-run changed the task"
    assert rig.unfinished(caller) == UNFINISHED and rig.total(caller) == UNFINISHED + 1

    # Once a slot is free, the same re-run is admitted: the same task, Processing again.
    rig.service.cancel(caller, running[0].export_task_id)
    rerun = rig.create(caller, old_batch)
    assert rerun.export_task_id == old.export_task_id and rerun.status == rules.STATUS_PROCESSING
    assert rig.unfinished(caller) == UNFINISHED


def test_concurrent_reruns_and_new_creates_admit_exactly_five(rig):
    """Each trial: a user with 8 finished tasks; 8 re-runs of them and 8 new creates at one moment.
    Exactly 5 are admitted, whichever kind, and the user never holds more than 5 unfinished."""
    for trial in range(3):
        caller = rig.caller()
        finished_batches = [rig.batch(caller, 10 + i) for i in range(8)]
        for b in finished_batches:
            rig.finish(caller, rig.create(caller, b), succeed=False)
        new_batches = [rig.batch(caller, 30 + i) for i in range(8)]
        calls = [_closing(rig.store, lambda b=b: rig.create(caller, b)) for b in finished_batches + new_batches]
        results = at_once(calls)
        admitted = [r for r in results if isinstance(r, ExportTask)]
        refused = [r for r in results if isinstance(r, QuotaExceeded)]
        others = [r for r in results if not isinstance(r, (ExportTask, QuotaExceeded))]
        assert not others, others
        reruns = [t for t in admitted if t.batch_task_id in finished_batches]
        print(f"[races {rig.dialect}] trial {trial}: admitted {len(admitted)} ({len(reruns)} re-runs),"
              f" refused by quota {len(refused)}")
        assert len(admitted) == UNFINISHED and len(refused) == 16 - UNFINISHED, (trial, len(admitted))
        assert rig.unfinished(caller) == UNFINISHED
        assert rig.total(caller) == 8 + len(admitted) - len(reruns)


# -- one download per 30 s: exactly one of many simultaneous downloads ----------------------------

def _succeeded(rig, caller) -> ExportTask:
    return rig.finish(caller, rig.create(caller, rig.batch(caller, 2)), succeed=True)


def _admit(rig, caller, task, offset=0):
    d = rig.service.admit_download(caller, task.export_task_id, offset, 0)
    d.file.close()
    return d


def test_simultaneous_downloads_by_one_user_admit_exactly_one_every_trial(rig):
    caller = rig.caller()
    tasks = [_succeeded(rig, caller), _succeeded(rig, caller)]
    for trial in range(6):
        rig.now[0] += WINDOW_MS + 1000  # a fresh window for this trial
        calls = [_closing(rig.store, lambda t=tasks[i % 2]: _admit(rig, caller, t)) for i in range(12)]
        results = at_once(calls)
        admitted = [r for r in results if not isinstance(r, Exception)]
        limited = [r for r in results if isinstance(r, RateLimited)]
        assert len(admitted) == 1 and len(limited) == 11, (trial, len(admitted), [
            r for r in results if isinstance(r, Exception) and not isinstance(r, RateLimited)])
        assert all(0 < r.retry_after <= 30 for r in limited)
        mark = rig.store.reader().download_limit(caller.owner)
        assert mark.last_at == rig.now[0] and mark.export_task_id == admitted[0].task.export_task_id


def test_simultaneous_downloads_of_two_users_admit_one_each(rig):
    users = [rig.caller(), rig.caller()]
    tasks = [_succeeded(rig, u) for u in users]
    for trial in range(4):
        rig.now[0] += WINDOW_MS + 1000
        calls = [_closing(rig.store, lambda i=i: _admit(rig, users[i % 2], tasks[i % 2])) for i in range(12)]
        results = at_once(calls)
        per_user = [sum(1 for i, r in enumerate(results) if i % 2 == u and not isinstance(r, Exception))
                    for u in (0, 1)]
        assert per_user == [1, 1], (trial, per_user, [r for r in results if isinstance(r, Exception)
                                                      and not isinstance(r, RateLimited)])


def test_simultaneous_resumes_do_not_open_a_second_full_download(rig):
    """After a counted download, resumes (offset > 0) race with fresh downloads: every fresh one is
    refused, and the free resumes never exceed 3 (DOWNLOAD_FREE_RESUMES)."""
    caller = rig.caller()
    task = _succeeded(rig, caller)
    rig.now[0] += WINDOW_MS + 1000
    _admit(rig, caller, task)  # the counted download
    rig.now[0] += 1000
    calls = [_closing(rig.store, lambda i=i: _admit(rig, caller, task, offset=(i + 1) if i % 2 else 0))
             for i in range(12)]
    results = at_once(calls)
    fresh_admitted = [r for i, r in enumerate(results) if i % 2 == 0 and not isinstance(r, Exception)]
    resumes_admitted = [r for i, r in enumerate(results) if i % 2 == 1 and not isinstance(r, Exception)]
    assert not fresh_admitted, "a full download was admitted within 30 s of the last"
    assert 1 <= len(resumes_admitted) <= FREE_RESUMES, len(resumes_admitted)
    assert all(isinstance(r, RateLimited) for r in results if isinstance(r, Exception))
    mark = rig.store.reader().download_limit(caller.owner)
    assert mark.resumes == len(resumes_admitted)


# -- 50 per user: eviction of the earliest finished, concurrent -------------------------------------

def _insert_finished(rig, caller, n: int) -> list[ExportTask]:
    """n Success tasks with files, ascending create times (earliest first), as n past runs."""
    start = rig.now[0] - 3_600_000
    tasks = []
    with rig.store.transaction(lock_key=caller.owner) as tx:
        for i in range(n):
            batch = ids.new_id()
            t = ExportTask(
                export_task_id=ids.new_id(), owner=caller.owner, project_id=caller.project_id, instance_id="",
                resource_type="BatchTask", batch_task_id=batch, export_format="xls", app_type="GLOBAL", app_id=None,
                conditions_key=json.dumps([caller.project_id, "", "BatchTask", batch, "xls", "GLOBAL", None],
                                          separators=(",", ":")),
                status="Success", status_desc=None, progress=100, export_count=1, create_time=start + i * 1000,
                end_time=start + i * 1000 + 500, version=3, run_state="done", run_token=None, attempts=1,
                worker_id=None, lease_until=None, queued_at=start + i * 1000, file_generation=1, file_size=22,
                file_sha256=None)
            tx.insert_export_task(t)
            tasks.append(t)
    for t in tasks:
        rig.files.path(t.export_task_id).write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    return tasks


def test_concurrent_creates_at_the_cap_evict_the_earliest_and_never_exceed_fifty(rig):
    caller = rig.caller()
    old = _insert_finished(rig, caller, CAP - 3)
    batches = [rig.batch(caller, 60 + i) for i in range(8)]
    counts: list[int] = []
    stop = threading.Event()

    def monitor():
        try:
            while not stop.is_set():
                counts.append(rig.total(caller))
        finally:
            rig.store.close()

    watcher = threading.Thread(target=monitor)
    watcher.start()
    try:
        results = at_once([_closing(rig.store, lambda b=b: rig.create(caller, b)) for b in batches])
    finally:
        stop.set()
        watcher.join(30)
    admitted = [r for r in results if isinstance(r, ExportTask)]
    assert len(admitted) == UNFINISHED and all(isinstance(r, QuotaExceeded) for r in results
                                               if not isinstance(r, ExportTask)), results
    # 47 + 5 = 52: the two earliest finished tasks went, with their files; never more than 50 at once.
    assert counts and max(counts) <= CAP, max(counts)
    assert rig.total(caller) == CAP
    reader = rig.store.reader()
    assert reader.export_task(old[0].export_task_id) is None and reader.export_task(old[1].export_task_id) is None
    assert reader.export_task(old[2].export_task_id) is not None
    assert not rig.files.path(old[0].export_task_id).exists() and not rig.files.path(old[1].export_task_id).exists()
    assert rig.files.path(old[2].export_task_id).exists()


def test_eviction_skips_unfinished_and_takes_the_earliest_create_time(rig):
    caller = rig.caller()
    old = _insert_finished(rig, caller, CAP)
    with rig.store.transaction() as tx:  # the oldest is running again; the second was re-run a moment ago
        tx.update_export_task(old[0].export_task_id, status=rules.STATUS_PROCESSING, run_state="queued",
                              end_time=None)
        tx.update_export_task(old[1].export_task_id, create_time=rig.now[0] - 1000)
    new = rig.create(caller, rig.batch(caller, 5))
    reader = rig.store.reader()
    assert reader.export_task(old[2].export_task_id) is None and not rig.files.path(old[2].export_task_id).exists()
    for kept in (old[0], old[1], old[3]):
        assert reader.export_task(kept.export_task_id) is not None
    assert reader.export_task(new.export_task_id) is not None and rig.total(caller) == CAP
