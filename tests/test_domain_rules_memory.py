"""The export rules as unit tests: the domain's ExportService on the in-memory store with a fake
clock, no server, no database, no files on disk. The same rules hold end to end in
test_export_rules.py; here each is one fast, exact check (the whole module runs in well under a
second)."""

from __future__ import annotations

import io

import pytest

from iotda_export_server.app import add_principal
from iotda_export_server.domain import jobs, rules
from iotda_export_server.domain.batches import BatchService, CreateBatchRequest, SubtaskResult, seed_batch_task
from iotda_export_server.domain.errors import (BatchTaskNotFound, ExportTaskNotFound, FailedPrecondition,
                                               InvalidArgument, QuotaExceeded, RateLimited)
from iotda_export_server.domain.exports import CreateExportRequest, ExportService, ListExportFilter
from iotda_export_server.domain.jobs import ExportJobs
from iotda_export_server.domain.model import Caller, ResourceCondition
from iotda_export_server.store.memory import InMemoryStore

FILE = b"PK" + bytes(998)  # a published result file of 1000 bytes
WINDOW_MS = int(rules.DOWNLOAD_INTERVAL_SECONDS * 1000)


class Files:
    """ResultFiles' surface that ExportService uses, in memory: every published task has FILE."""

    def __init__(self):
        self.removed: list[str] = []

    def open(self, export_task_id: str, file_key=None):
        return io.BytesIO(FILE), len(FILE)

    def remove(self, export_task_id: str, file_key=None) -> None:
        self.removed.append(export_task_id)

    def temp_files(self, export_task_id: str) -> list[str]:
        return []

    def drop_temp(self, paths: list[str]) -> None:
        pass


class Rig:
    def __init__(self):
        self.store = InMemoryStore()
        self.files = Files()
        self.now = [1_700_000_000_000]
        self.service = ExportService(self.store, self.files, clock=lambda: self.now[0])

    def caller(self, name: str, instance_id: str = "") -> Caller:
        add_principal(self.store, name, "proj")
        principal = self.store.reader().principal_by("user", name)
        return Caller(principal=principal, project_id="proj", instance_id=instance_id)

    def batch(self, instance_id: str = "") -> str:
        return seed_batch_task(self.store, "proj", instance_id, 3, seed=1)

    def create(self, caller: Caller, batch_task_id: str, request_id: str = "", app_type: str = ""):
        self.now[0] += 1
        return self.service.create(caller, CreateExportRequest(
            resource_type=rules.RESOURCE_TYPE_BATCH_TASK, resource_condition=ResourceCondition(batch_task_id),
            export_format="", app_type=app_type, app_id="", request_id=request_id))

    def finish(self, export_task_id: str) -> None:
        """The run ends with a published file (what a worker's success records)."""
        with self.store.transaction() as tx:
            task = tx.export_task(export_task_id)
            tx.update_export_task(export_task_id, **jobs.succeeded(self.now[0], rows=3),
                                  file_generation=task.file_generation + 1, file_size=len(FILE), file_sha256="0" * 64)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_at_most_five_unfinished_exports_per_user(rig) -> None:
    alice, bob = rig.caller("alice"), rig.caller("bob")
    for _ in range(rules.MAX_UNFINISHED_EXPORT_TASKS_PER_USER):
        rig.create(alice, rig.batch())
    with pytest.raises(QuotaExceeded) as refused:
        rig.create(alice, rig.batch())
    assert refused.value.quota_id == "unfinished-export-tasks-per-user"
    assert rig.create(bob, rig.batch()).unfinished  # another user's quota
    first = rig.service.list(alice, ListExportFilter("", None, "", ""), 50, 0, "")[0][-1]
    rig.finish(first.export_task_id)
    assert rig.create(alice, rig.batch()).unfinished  # a slot is free again


def test_the_earliest_finished_export_is_evicted_past_the_total_limit(rig) -> None:
    alice = rig.caller("alice")
    created = []
    for _ in range(rules.MAX_EXPORT_TASKS_PER_USER):
        task = rig.create(alice, rig.batch())
        rig.finish(task.export_task_id)
        created.append(task.export_task_id)
    newest = rig.create(alice, rig.batch())
    assert rig.store.reader().count_export_tasks(alice.owner) == rules.MAX_EXPORT_TASKS_PER_USER
    assert rig.store.reader().export_task(created[0]) is None and rig.files.removed == [created[0]]
    assert rig.store.reader().export_task(created[1]) is not None
    assert rig.service.get(alice, newest.export_task_id).unfinished


def test_same_conditions_reuse_a_running_task_and_rerun_a_finished_one(rig) -> None:
    alice = rig.caller("alice")
    batch = rig.batch()
    first = rig.create(alice, batch)
    assert rig.create(alice, batch).export_task_id == first.export_task_id  # running: not started twice
    assert rig.store.reader().count_export_tasks(alice.owner) == 1
    other = rig.create(alice, batch, app_type=rules.APP_TYPE_APP)  # other conditions: another task
    assert other.export_task_id != first.export_task_id
    rig.finish(first.export_task_id)
    rerun = rig.create(alice, batch)
    assert rerun.export_task_id == first.export_task_id
    assert (rerun.status, rerun.run_state, rerun.create_time, rerun.attempts) == (
        rules.STATUS_PROCESSING, "queued", rig.now[0], 0)
    assert rerun.file_available  # the last good file stays until the re-run replaces it


def test_a_request_id_returns_the_first_result_and_refuses_other_conditions(rig) -> None:
    alice = rig.caller("alice")
    batch = rig.batch()
    first = rig.create(alice, batch, request_id="nightly-1")
    rig.finish(first.export_task_id)
    again = rig.create(alice, batch, request_id="nightly-1")
    assert again.export_task_id == first.export_task_id and again.status == rules.STATUS_SUCCESS  # not re-run
    with pytest.raises(InvalidArgument):
        rig.create(alice, rig.batch(), request_id="nightly-1")
    bob = rig.caller("bob")
    assert rig.create(bob, batch, request_id="nightly-1").owner == bob.owner  # request ids are per user


def test_one_download_per_window_and_free_resumes_of_it(rig) -> None:
    alice = rig.caller("alice")
    task = rig.create(alice, rig.batch())
    rig.finish(task.export_task_id)
    rig.service.admit_download(alice, task.export_task_id, 0, 0)
    rig.now[0] += 1000
    with pytest.raises(RateLimited) as limited:
        rig.service.admit_download(alice, task.export_task_id, 0, 0)
    assert limited.value.retry_after == pytest.approx((WINDOW_MS - 1000) / 1000)
    for i in range(rules.DOWNLOAD_FREE_RESUMES):  # resumes of the same file go on, each further along
        rig.now[0] += 1000
        resumed = rig.service.admit_download(alice, task.export_task_id, 100 * (i + 1), 0)
        assert (resumed.offset, resumed.length) == (100 * (i + 1), len(FILE) - 100 * (i + 1))
    with pytest.raises(RateLimited):  # the free resumes are used up
        rig.service.admit_download(alice, task.export_task_id, 900, 0)
    rig.now[0] += WINDOW_MS
    assert rig.service.admit_download(alice, task.export_task_id, 0, 10).length == 10  # a new window


def test_an_abandoned_download_is_not_counted(rig) -> None:
    alice = rig.caller("alice")
    task = rig.create(alice, rig.batch())
    rig.finish(task.export_task_id)
    download = rig.service.admit_download(alice, task.export_task_id, 0, 0)
    rig.service.abandon_download(download)
    assert rig.store.reader().download_limit(alice.owner) is None
    rig.service.admit_download(alice, task.export_task_id, 0, 0)  # at once


def test_tasks_are_visible_to_their_owner_in_their_instance_only(rig) -> None:
    alice, bob = rig.caller("alice"), rig.caller("bob")
    elsewhere = Caller(principal=alice.principal, project_id="proj", instance_id="inst-2")
    task = rig.create(alice, rig.batch())
    assert rig.service.get(alice, task.export_task_id) == task
    for stranger in (bob, elsewhere):
        with pytest.raises(ExportTaskNotFound):
            rig.service.get(stranger, task.export_task_id)
        with pytest.raises(ExportTaskNotFound):
            rig.service.cancel(stranger, task.export_task_id)
        with pytest.raises(ExportTaskNotFound):
            rig.service.delete(stranger, task.export_task_id)
        assert rig.service.list(stranger, ListExportFilter("", None, "", ""), 50, 0, "")[0] == []
    assert rig.service.cancel(alice, task.export_task_id).status == rules.STATUS_FAILED
    rig.service.delete(alice, task.export_task_id)
    assert rig.store.reader().export_task(task.export_task_id) is None


def test_another_scopes_batch_task_is_not_found(rig) -> None:
    alice = rig.caller("alice")
    with pytest.raises(BatchTaskNotFound):
        rig.create(alice, rig.batch(instance_id="inst-2"))


def test_a_run_whose_lease_expired_is_queued_again_then_failed_after_its_attempts(rig) -> None:
    alice = rig.caller("alice")
    task = rig.create(alice, rig.batch())
    jobs = ExportJobs(rig.store, rig.files, clock=lambda: rig.now[0], lease_seconds=30)
    for attempt in range(1, rules.MAX_EXPORT_ATTEMPTS + 1):
        claim = jobs.claim("w1")
        assert claim.task.export_task_id == task.export_task_id and claim.task.attempts == attempt
        assert jobs.recover() == []  # the lease still runs
        rig.now[0] += 30_001
        assert jobs.recover() == [task.export_task_id]
        assert not jobs.heartbeat(claim)  # that run is over
    final = rig.store.reader().export_task(task.export_task_id)
    assert (final.status, final.run_state) == (rules.STATUS_FAILED, "done") and jobs.claim("w1") is None


def test_recorded_results_update_the_batch_status(rig) -> None:
    alice = rig.caller("alice")
    service = BatchService(rig.store, clock=lambda: rig.now[0])
    task = service.create(alice, CreateBatchRequest(
        app_id="", task_name="cmds", task_type="createCommands", task_mode="", need_confirm=False,
        task_ext_info=None, targets=["d1", "d2"], targets_filter=None, document=None, task_policy=None,
        document_source=""))
    with pytest.raises(FailedPrecondition):
        service.record_results(alice, task.task_id, [SubtaskResult("d3", "Success", "", "", "")])
    service.record_results(alice, task.task_id, [SubtaskResult("d1", "Success", "ok", "", "")])
    assert service.show(alice, task.task_id, "", "", None, None, "")[0].status == "Processing"
    done = service.record_results(alice, task.task_id, [SubtaskResult("d2", "Fail", "", "E", "m")])
    assert (done.status, done.progress.success, done.progress.fail) == ("PartialSuccess", 1, 1)
