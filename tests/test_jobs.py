"""The run of an export task (domain/jobs.py), in-process on a real SQLite store with a clock the test
moves: each transition's column values written out, and the lifecycle a worker and the supervisor
drive (claim, progress, succeed, release, recover, fail), including the run_token guard that makes
a superseded run's writes no-ops. Fast, so `make mutate` runs them once per mutant of jobs.py."""

from __future__ import annotations

import dataclasses

import pytest

from iotda_export_server.domain import jobs
from iotda_export_server.domain.errors import FilesUnavailable
from iotda_export_server.domain.model import ExportTask
from iotda_export_server.store import open_store
from iotda_export_server.store.files import ResultFiles
from test_rule_races import Rig

NOW = 1_900_000_000_000
LEASE_MS = 30_000  # ExportJobs' default lease
MAX_ATTEMPTS = 3  # rules.MAX_EXPORT_ATTEMPTS, written out


@pytest.fixture
def rig(tmp_path):
    (tmp_path / "data").mkdir()
    store = open_store(tmp_path / "data")
    r = Rig(store, ResultFiles(tmp_path / "files"), "sqlite")
    r.changed, r.finished = [], []
    r.jobs.on_change = r.changed.append
    r.jobs.on_finished = lambda *args: r.finished.append(args)
    yield r
    store.close()


def queued_task(rig: Rig, rows: int = 3) -> tuple:
    caller = rig.caller()
    task = rig.create(caller, rig.batch(caller, rows))
    return caller, task


def row(rig: Rig, task: ExportTask) -> ExportTask:
    return rig.store.reader().export_task(task.export_task_id)


def changed_columns(before: ExportTask, after: ExportTask) -> dict:
    return {f.name: getattr(after, f.name) for f in dataclasses.fields(ExportTask)
            if getattr(before, f.name) != getattr(after, f.name)}


def assert_wrote(before: ExportTask, after: ExportTask, values: dict) -> None:
    """`after` holds `values`, and nothing else of `before` changed."""
    assert {k: getattr(after, k) for k in values} == values
    assert set(changed_columns(before, after)) <= set(values)


def publish(rig: Rig, claim: jobs.Claim, data: bytes = b"PK\x05\x06" + b"\x00" * 18):
    upload = rig.files.begin(claim.task.export_task_id, claim.run_token)
    upload.path.write_bytes(data)
    size, sha256 = upload.complete()
    return upload, size, sha256


# -- the transitions ---------------------------------------------------------------------------

def test_each_transition_sets_its_columns():
    run_cleared = dict(run_token=None, worker_id=None, lease_until=None)
    queued = dict(run_state="queued", **run_cleared, queued_at=NOW, progress=1, export_count=0)
    assert jobs.queued(NOW) == queued
    assert jobs.created(NOW) == dict(status="Processing", status_desc=None, create_time=NOW, end_time=None,
                                     attempts=0, **queued)
    assert jobs.released(NOW, 2) == dict(attempts=1, **queued)
    assert jobs.released(NOW, 0) == dict(attempts=0, **queued)  # never below none
    done = dict(end_time=NOW, run_state="done", **run_cleared)
    assert jobs.succeeded(NOW, 42) == dict(status="Success", status_desc=None, progress=100, export_count=42,
                                           **done)
    assert jobs.failed(NOW, "why") == dict(status="Failed", status_desc="why", **done)
    assert jobs.cancelled(NOW) == dict(status="Failed", status_desc="cancelled", **done)
    assert jobs.gave_up(NOW, 3) == dict(
        status="Failed", status_desc="the export was interrupted 3 times (worker lost); giving up", **done)
    assert (jobs.QUEUED, jobs.RUNNING, jobs.DONE) == ("queued", "running", "done")


def test_a_new_task_is_created_queued(rig):
    _, task = queued_task(rig)
    assert {k: getattr(task, k) for k in jobs.created(rig.now[0])} == jobs.created(rig.now[0])
    assert (task.version, task.file_generation, task.file_size, task.file_sha256) == (1, 0, None, None)


def test_the_claim_sets_exactly_the_running_columns(rig):
    # The claim is the store's SQL; it must match the docstring's queued -> running row.
    _, task = queued_task(rig)
    rig.now[0] += 1000
    claim = rig.jobs.claim("worker-1")
    assert claim is not None and claim.task == row(rig, task)
    assert changed_columns(task, claim.task) == dict(
        run_state="running", run_token=claim.run_token, worker_id="worker-1", lease_until=rig.now[0] + LEASE_MS,
        attempts=1, version=2)
    assert rig.changed == [task.export_task_id]
    assert rig.jobs.claim("worker-2") is None  # nothing else queued


# -- a run's life --------------------------------------------------------------------------------

def test_a_run_token_is_eight_random_bytes(rig):
    queued_task(rig)
    claim = rig.jobs.claim("worker-1")
    assert len(claim.run_token) == 16 and int(claim.run_token, 16) >= 0


def test_a_finished_run_reports_its_duration(rig):
    # on_finished's seconds (the metrics' histogram): since the claim, measured on the monotonic clock.
    for outcome in ("success", "failed"):
        _, task = queued_task(rig)
        claim = rig.jobs.claim("worker-1")
        if outcome == "success":
            upload, size, sha256 = publish(rig, claim)
            assert rig.jobs.succeed(claim, upload, 3, size, sha256)
        else:
            assert rig.jobs.fail(claim, "why")
        export_task_id, reported, rows, seconds = rig.finished[-1]
        assert (export_task_id, reported) == (task.export_task_id, outcome)
        assert 0 <= seconds < 60


def test_claim_progress_succeed(rig):
    _, task = queued_task(rig, rows=10)
    claim = rig.jobs.claim("worker-1")
    rig.now[0] += 5000
    before = row(rig, task)
    assert rig.jobs.progress(claim, 5, 10)
    assert changed_columns(before, row(rig, task)) == dict(
        progress=50, export_count=5, lease_until=rig.now[0] + LEASE_MS, version=before.version + 1)
    rig.now[0] += 1000
    assert rig.jobs.heartbeat(claim)
    assert row(rig, task).lease_until == rig.now[0] + LEASE_MS
    upload, size, sha256 = publish(rig, claim)
    rig.now[0] += 1000
    before = row(rig, task)
    assert rig.jobs.succeed(claim, upload, 10, size, sha256)
    done = row(rig, task)
    assert_wrote(before, done, dict(jobs.succeeded(rig.now[0], 10), file_generation=1, file_size=size,
                                    file_sha256=sha256, file_key=None, version=before.version + 1))
    assert rig.files.path(task.export_task_id).stat().st_size == size and not upload.path.exists()  # published
    assert [f[:3] for f in rig.finished] == [(task.export_task_id, "success", 10)]
    assert rig.changed == [task.export_task_id] * 3  # claim, progress, success


def test_progress_stays_between_1_and_99(rig):
    _, task = queued_task(rig)
    claim = rig.jobs.claim("worker-1")
    for done, total, expected in [(0, 10, 1), (10, 10, 99), (1, 100, 1), (50, 100, 50), (99, 100, 98), (0, 0, 99)]:
        assert rig.jobs.progress(claim, done, total)
        assert row(rig, task).progress == expected, (done, total)


def test_fail_finishes_the_run_with_its_reason(rig):
    _, task = queued_task(rig)
    claim = rig.jobs.claim("worker-1")
    rig.now[0] += 1000
    before = row(rig, task)
    reason = "writing the file failed: No space left on device"
    assert rig.jobs.fail(claim, reason)
    assert_wrote(before, row(rig, task), dict(jobs.failed(rig.now[0], reason), version=before.version + 1))
    assert [f[:3] for f in rig.finished] == [(task.export_task_id, "failed", 0)]


def test_release_gives_the_attempt_back(rig):
    _, task = queued_task(rig, rows=10)
    claim = rig.jobs.claim("worker-1")
    assert rig.jobs.progress(claim, 5, 10)
    rig.now[0] += 1000
    before = row(rig, task)
    assert rig.jobs.release(claim)
    assert_wrote(before, row(rig, task), dict(jobs.released(rig.now[0], 1), version=before.version + 1))
    assert row(rig, task).status == "Processing"
    assert not rig.jobs.progress(claim, 6, 10)  # the released run is no longer current
    again = rig.jobs.claim("worker-2")
    assert again.task.attempts == 1 and again.run_token != claim.run_token


def test_recover_requeues_then_gives_up_after_max_attempts(rig):
    _, task = queued_task(rig)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claim = rig.jobs.claim(f"worker-{attempt}")
        assert claim.task.attempts == attempt
        assert rig.jobs.recover() == []  # the lease runs
        rig.now[0] += LEASE_MS + 1
        assert rig.jobs.recover() == [task.export_task_id]
        recovered = row(rig, task)
        if attempt < MAX_ATTEMPTS:
            assert_wrote(claim.task, recovered, dict(jobs.queued(rig.now[0]), version=claim.task.version + 1))
            assert (recovered.status, recovered.attempts) == ("Processing", attempt)
        assert not rig.jobs.progress(claim, 1, 3)  # the lost worker's late writes are no-ops
    assert recovered.status_desc == f"the export was interrupted {MAX_ATTEMPTS} times (worker lost); giving up"
    assert_wrote(claim.task, recovered, dict(jobs.gave_up(rig.now[0], MAX_ATTEMPTS), version=claim.task.version + 1))
    assert rig.jobs.claim("worker-4") is None and rig.jobs.recover() == []


def test_start_up_recovery_takes_every_running_export(rig):
    _, task = queued_task(rig)
    rig.jobs.claim("worker-1")
    assert rig.jobs.recover() == []
    assert rig.jobs.recover(only_expired=False) == [task.export_task_id]
    assert row(rig, task).run_state == "queued"


def test_recover_drops_the_dead_runs_temporary_files(rig):
    _, task = queued_task(rig)
    claim = rig.jobs.claim("worker-1")
    upload, _, _ = publish(rig, claim)
    assert upload.path.exists()
    rig.now[0] += LEASE_MS + 1
    rig.jobs.recover()
    assert not upload.path.exists()


# -- a superseded run ----------------------------------------------------------------------------

@pytest.mark.parametrize("by", ["cancel", "rerun", "delete"])
def test_a_superseded_run_cannot_write(rig, by):
    caller, task = queued_task(rig, rows=10)
    claim = rig.jobs.claim("worker-1")
    upload, size, sha256 = publish(rig, claim)
    if by == "cancel":
        rig.service.cancel(caller, task.export_task_id)
    elif by == "rerun":
        rig.service.cancel(caller, task.export_task_id)
        rig.create(caller, task.batch_task_id)  # same conditions: the task queued again, a new run
    else:
        rig.service.delete(caller, task.export_task_id)
    before = row(rig, task)
    rig.changed.clear()
    assert not rig.jobs.heartbeat(claim)
    assert not rig.jobs.progress(claim, 5, 10)
    assert not rig.jobs.fail(claim, "late")
    assert not rig.jobs.release(claim)
    assert not rig.jobs.succeed(claim, upload, 10, size, sha256)
    assert row(rig, task) == before
    assert not upload.path.exists() and not rig.files.path(task.export_task_id).exists()  # the file dropped
    assert rig.changed == [] and rig.finished == []


# -- the export's rows ---------------------------------------------------------------------------

def test_rows_give_the_total_and_the_blocks_of_one_snapshot(rig):
    queued_task(rig, rows=10)
    claim = rig.jobs.claim("worker-1")
    with rig.jobs.rows(claim, 4) as rows:
        assert rows.total == 10
        first = next(rows.blocks)
        assert len(first) == 5 and len(first[0]) == 4  # five columns of a block of 4 rows
        assert [len(columns[0]) for columns in rows.blocks] == [4, 2]
    with rig.jobs.rows(claim, 4) as rows:
        next(rows.blocks)
        blocks = rows.blocks
    with pytest.raises(StopIteration):  # closed before the snapshot ended, though not exhausted
        next(blocks)


def test_rows_are_none_when_the_batch_task_is_gone(rig):
    _, task = queued_task(rig)
    claim = rig.jobs.claim("worker-1")
    with rig.store.transaction() as tx:
        tx.delete_batch_task(task.batch_task_id)
    with rig.jobs.rows(claim, 4) as rows:
        assert rows is None


@pytest.mark.parametrize("stale_token", ["0" * 16, "f" * 16])
def test_a_run_taken_over_by_another_worker_cannot_publish(rig, stale_token):
    # The lost worker's run and the new one are both "running": only the token tells them apart, and
    # it does whichever way the two tokens sort.
    _, task = queued_task(rig)
    with rig.store.transaction() as tx:
        current = tx.claim_export("worker-2", "8" * 16, rig.now[0], rig.now[0] + LEASE_MS)
    stale = jobs.Claim(dataclasses.replace(current, run_token=stale_token), stale_token)
    upload, size, sha256 = publish(rig, stale)
    before = row(rig, task)
    assert not rig.jobs.succeed(stale, upload, 3, size, sha256)
    assert row(rig, task) == before and before.run_state == "running"
    assert not rig.files.path(task.export_task_id).exists()


class KeyedFiles:
    """Result files published under a key per run (as in an object store: `<id>/<run token>.zip`),
    recording what the jobs discard; `discard_fails` / `temp_files_fail` make those calls raise
    FilesUnavailable. The bytes go to a local directory."""

    sweep_while_running = True

    def __init__(self, local: ResultFiles):
        self.local, self.discarded, self.tokens = local, [], {}
        self.discard_fails = self.temp_files_fail = False

    def begin(self, export_task_id, run_token):
        upload = self.local.begin(export_task_id, run_token)
        self.tokens[upload.path] = run_token
        return upload

    def publish(self, upload, export_task_id):
        self.local.publish(upload, export_task_id)
        return f"{export_task_id}/{self.tokens[upload.path]}.zip"

    def drop(self, upload):
        self.local.drop(upload)

    def discard(self, key):
        if self.discard_fails:
            raise FilesUnavailable("the bucket is out of reach")
        self.discarded.append(key)

    def temp_files(self, export_task_id):
        if self.temp_files_fail:
            raise FilesUnavailable("the bucket is out of reach")
        return []

    def drop_temp(self, paths):
        pass


def _keyed_run(rig, files: KeyedFiles, task, token: str):
    with rig.store.transaction() as tx:
        current = tx.claim_export("worker-1", token, rig.now[0], rig.now[0] + LEASE_MS)
    claim = jobs.Claim(current, token)
    upload = files.begin(task.export_task_id, token)
    upload.path.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    size, sha256 = upload.complete()
    assert rig.jobs.succeed(claim, upload, 3, size, sha256)
    return row(rig, task).file_key


@pytest.mark.parametrize("tokens", [("1" * 16, "e" * 16), ("e" * 16, "1" * 16)])
def test_a_re_run_discards_the_object_it_replaced_and_only_that(rig, tokens):
    files = KeyedFiles(rig.files)
    rig.jobs.files = rig.service.files = files
    assert rig.jobs.files_swept_periodically
    caller, task = queued_task(rig)
    first = _keyed_run(rig, files, task, tokens[0])
    assert first is not None and files.discarded == []  # nothing replaced
    rig.create(caller, task.batch_task_id)  # same conditions, finished: a re-run
    second = _keyed_run(rig, files, task, tokens[1])
    assert second != first and files.discarded == [first]


def test_a_replaced_object_the_store_cannot_discard_is_left_to_the_sweep(rig):
    files = KeyedFiles(rig.files)
    rig.jobs.files = rig.service.files = files
    caller, task = queued_task(rig)
    _keyed_run(rig, files, task, "1" * 16)
    rig.create(caller, task.batch_task_id)
    files.discard_fails = True
    assert _keyed_run(rig, files, task, "2" * 16) is not None  # Success recorded all the same
    assert row(rig, task).status == "Success"


def test_recovery_requeues_even_when_the_store_cannot_list_uploads(rig):
    files = KeyedFiles(rig.files)
    rig.jobs.files = files
    files.temp_files_fail = True
    _, task = queued_task(rig)
    rig.jobs.claim("worker-1")
    rig.now[0] += LEASE_MS + 1
    assert rig.jobs.recover() == [task.export_task_id]
    assert row(rig, task).run_state == "queued"


def test_a_local_directory_is_swept_at_start_up_only(rig):
    assert not rig.jobs.files_swept_periodically  # ResultFiles says nothing: the default is no
