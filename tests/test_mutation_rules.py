"""Domain-level tests of the rule code that mutation testing found unproved by the fast subset
(scripts/mutate.py, docs/testing.md): create's validation and idempotency, cancel, delete, download
admission's every branch, and who sees a task. In-process and fast, on a real SQLite store, so
`make mutate` can run them once per mutant. (The gRPC suites prove the same through the API; these
prove them where a mutant is cheap to run.)"""

from __future__ import annotations

import dataclasses
import json
import secrets

import pytest

from iotda_export_server.domain import auth, rules, validation
from iotda_export_server.app import add_principal
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.domain.errors import (BatchTaskNotFound, DataLoss, ExportTaskNotFound, FailedPrecondition,
                                               InvalidArgument, OutOfRange, QuotaExceeded, RateLimited)
from iotda_export_server.domain.exports import CreateExportRequest, ExportService, ListExportFilter
from iotda_export_server.domain.model import Caller, InvalidResourceCondition, ResourceCondition
from iotda_export_server.store import open_store
from iotda_export_server.store.files import ResultFiles
from iotda_export_server.transport import render
from test_rule_races import Rig

# The seed's and the rules' numbers written out: a changed constant in rules.py must fail here.
WINDOW_MS = 30_000
RESUME_WINDOW_MS = 600_000
FREE_RESUMES = 3


@pytest.fixture
def rig(tmp_path):
    (tmp_path / "data").mkdir()
    store = open_store(tmp_path / "data")
    r = Rig(store, ResultFiles(tmp_path / "files"), "sqlite")
    r.changed = []
    r.service.on_change = r.changed.append
    yield r
    store.close()


def request(task_id="", **kw) -> CreateExportRequest:
    base = dict(resource_type="BatchTask", resource_condition=ResourceCondition(task_id), export_format="",
                app_type="", app_id="", request_id="")
    base.update(kw)
    return CreateExportRequest(**base)


def fields(exc: InvalidArgument) -> list[str]:
    return [v.field for v in exc.violations]


# -- the numbers ---------------------------------------------------------------------------------

def test_rules_are_the_documented_numbers():
    """rules.py's numbers against their sources, written out. Behaviour tests elsewhere read some of
    these constants (list paging, batch sizes), so a changed constant would move test and code
    together; this pins them to where they come from."""
    # The platform's pages (shared/reference/iotda-facts.md): export quotas, download rate, paging,
    # batch targets.
    assert (rules.MAX_EXPORT_TASKS_PER_USER, rules.MAX_UNFINISHED_EXPORT_TASKS_PER_USER) == (50, 5)
    assert rules.DOWNLOAD_INTERVAL_SECONDS == 30.0
    assert (rules.LIST_LIMIT_MIN, rules.LIST_LIMIT_MAX, rules.LIST_LIMIT_DEFAULT, rules.LIST_OFFSET_MAX) == (1, 50, 10, 500)
    assert rules.MARKER_DEFAULT == "ffffffffffffffffffffffff"
    assert rules.MAX_BATCH_TARGETS == 30_000
    # Ours (README "Rules", the proto's comments): progress, retries, resumes, the result call's size,
    # gRPC chunks well under the 4 MiB default, the heartbeat the proto promises.
    assert (rules.PROGRESS_QUEUED, rules.PROGRESS_MAX_RUNNING, rules.PROGRESS_DONE) == (1, 99, 100)
    assert rules.MAX_EXPORT_ATTEMPTS == 3
    assert (rules.DOWNLOAD_FREE_RESUMES, rules.DOWNLOAD_RESUME_WINDOW_SECONDS) == (3, 600.0)
    assert rules.MAX_RECORDED_RESULTS_PER_CALL == 10_000
    assert rules.DOWNLOAD_CHUNK_BYTES == 65_536
    assert rules.WATCH_HEARTBEAT_SECONDS == 15.0
    # The bounds of issue 11 (README "Limits", the proto's comments). The behaviour tests (test_bounds.py)
    # read these constants to find each boundary, so only this pins the documented numbers.
    assert rules.MAX_TASK_EXT_INFO_CHARS == 512  # the platform's page
    assert (rules.MAX_DOCUMENT_CHARS, rules.MAX_TARGETS_FILTER_CHARS, rules.MAX_TARGET_GROUPS) == (65_536, 16_384, 100)
    assert (rules.MAX_JSON_DEPTH, rules.STRUCT_BYTES_PER_JSON_CHAR, rules.MAX_RESOURCE_CONDITION_CHARS) == (12, 6, 256)
    assert (rules.MAX_OUTPUT_CHARS, rules.MAX_ERROR_FIELD_CHARS) == (32_767, 1_024)
    assert rules.LIST_PAGE_BUDGET_BYTES == 3_145_728  # 3 MiB: under the 4 MiB gRPC clients take by default
    assert (rules.MAX_WATCH_STREAMS_PER_USER, rules.MAX_DOWNLOADS_PER_USER) == (100, 2)
    # A Struct's encoding is at most 5.5 bytes per JSON character, so the pre-check never refuses what
    # the character rule accepts (test_bounds.py proves it with hypothesis): 6 must stay above 5.5.
    assert rules.STRUCT_BYTES_PER_JSON_CHAR > 5.5
    # Object storage (issue 16; docs/configuration.md): parts and read windows of 8 MiB (S3 refuses parts
    # under 5 MiB but the last), the client's timeouts and attempts, the orphan sweep's period.
    assert (rules.S3_PART_BYTES, rules.S3_READ_WINDOW_BYTES) == (8 * 1024 * 1024, 8 * 1024 * 1024)
    assert rules.S3_PART_BYTES >= 5 * 1024 * 1024
    assert (rules.S3_CONNECT_TIMEOUT_SECONDS, rules.S3_READ_TIMEOUT_SECONDS, rules.S3_MAX_ATTEMPTS) == (5.0, 30.0, 3)
    assert rules.FILES_SWEEP_SECONDS == 300.0


# -- create: validation ------------------------------------------------------------------------

@pytest.mark.parametrize("kw, field", [
    ({"resource_type": ""}, "resource_type"),
    ({"resource_type": "Device"}, "resource_type"),
    ({"resource_type": "Batch"}, "resource_type"),  # sorts before BatchTask: equality, not order
    ({"resource_condition": None}, "resource_condition"),
    ({"task_id": "XYZ"}, "resource_condition.task_id"),
    ({"export_format": "csv"}, "export_format"),
    ({"app_type": "app"}, "app_type"),
    ({"app_type": "zzz", "app_id": "a1"}, "app_type"),  # no second complaint about app_id's scope
    ({"app_type": "APP", "app_id": "a b"}, "app_id"),
    ({"app_id": "my app"}, "app_id"),  # with the GLOBAL (default) scope, app_id is still checked
    ({"app_type": "GLOBAL", "app_id": "my/app"}, "app_id"),
    ({"request_id": "has space"}, "request_id"),
    ({"request_id": "r" * 65}, "request_id"),
])
def test_create_names_each_invalid_field_and_changes_nothing(rig, kw, field):
    caller = rig.caller()
    batch = rig.batch(caller)
    kw = {"task_id": batch, **kw}
    with pytest.raises(InvalidArgument) as info:
        rig.service.create(caller, request(**kw))
    assert fields(info.value) == [field], fields(info.value)
    assert rig.total(caller) == 0 and rig.changed == []


def test_create_reports_every_invalid_field_at_once(rig):
    with pytest.raises(InvalidArgument) as info:
        rig.service.validate_create(request("XYZ", resource_type="Device", export_format="csv", app_type="x"))
    assert fields(info.value) == ["resource_type", "resource_condition.task_id", "export_format", "app_type"]


def test_validate_create_resolves_the_scope(rig):
    assert rig.service.validate_create(request("ab12")) == ("GLOBAL", None)
    assert rig.service.validate_create(request("ab12", export_format="xls", app_type="GLOBAL")) == ("GLOBAL", None)
    assert rig.service.validate_create(request("ab12", app_type="APP")) == ("APP", "default")
    assert rig.service.validate_create(request("ab12", app_type="APP", app_id="a-1")) == ("APP", "a-1")
    # app_id beside the GLOBAL scope (given or by default) is accepted and is not part of the scope.
    assert rig.service.validate_create(request("ab12", app_id="a-1")) == ("GLOBAL", None)
    assert rig.service.validate_create(request("ab12", app_type="GLOBAL", app_id="a-1")) == ("GLOBAL", None)
    assert rig.service.validate_create(request("ab12", request_id="r" * 64)) == ("GLOBAL", None)


# -- list: the resource_condition filter ---------------------------------------------------------

UNREADABLE = InvalidResourceCondition('must be JSON text like {"task_id":"<batch task id>"}')


@pytest.mark.parametrize("text, condition", [
    ("", None),
    ("{}", None),  # no task_id: no filter
    (' { "task_id" : "ab12" } ', ResourceCondition("ab12")),
    ('{"task_id": "XYZ"}', ResourceCondition("XYZ")),  # the ID's own checks are the domain's
    ("not json", UNREADABLE), ("[]", UNREADABLE), ("null", UNREADABLE), ('{"task_id": 5}', UNREADABLE),
    ('{"task_id": "ab12", "other": "x"}', UNREADABLE), ("[" * 256, UNREADABLE),
    ("{" * 257, InvalidResourceCondition(f"must be at most {rules.MAX_RESOURCE_CONDITION_CHARS} characters")),
])
def test_the_transport_reads_list_resource_condition_text_into_the_domain_value(text, condition):
    assert render.resource_condition(text) == condition


def test_list_reports_the_resource_condition_with_every_other_invalid_field(rig):
    caller = rig.caller()
    for condition, field, description in (
            (UNREADABLE, "resource_condition", UNREADABLE.reason),
            (ResourceCondition("XYZ"), "resource_condition.task_id", "must be 1-24 lowercase hex characters")):
        with pytest.raises(InvalidArgument) as info:
            rig.service.list(caller, ListExportFilter("Device", condition, "x", "a b"), None, None, "")
        assert fields(info.value) == ["resource_type", field, "app_type", "app_id"]
        assert info.value.violations[1].description == description


def test_list_filters_by_the_resource_condition_task(rig):
    caller = rig.caller()
    a, b = rig.batch(caller, 2), rig.batch(caller, 3)
    first = rig.service.create(caller, request(a))
    rig.service.create(caller, request(b))
    tasks, page = rig.service.list(caller, ListExportFilter("", ResourceCondition(a), "", ""), None, None, "")
    assert [t.export_task_id for t in tasks] == [first.export_task_id] and page.count == 1
    assert rig.service.list(caller, ListExportFilter("", None, "", ""), None, None, "")[1].count == 2


# -- create: what is created, scope, idempotency -------------------------------------------------

def test_a_create_makes_one_queued_task_with_its_conditions(rig):
    caller = rig.caller()
    batch = rig.batch(caller)
    t = rig.service.create(caller, request(batch))
    assert (t.status, t.progress, t.export_count, t.run_state, t.attempts, t.version) == \
        (rules.STATUS_PROCESSING, 1, 0, "queued", 0, 1)
    assert (t.owner, t.project_id, t.instance_id, t.batch_task_id, t.export_format, t.app_type, t.app_id) == \
        (caller.owner, caller.project_id, "", batch, "xls", "GLOBAL", None)
    assert (t.create_time, t.queued_at, t.end_time, t.file_generation) == (rig.now[0], rig.now[0], None, 0)
    assert rig.store.reader().export_task(t.export_task_id) == t
    assert rig.changed == [t.export_task_id]


def test_conditions_that_differ_in_scope_are_other_tasks(rig):
    caller = rig.caller()
    batch = rig.batch(caller)
    a = rig.service.create(caller, request(batch))
    b = rig.service.create(caller, request(batch, app_type="APP"))
    c = rig.service.create(caller, request(batch, app_type="APP", app_id="default"))
    assert a.export_task_id != b.export_task_id and b.export_task_id == c.export_task_id
    assert (b.app_type, b.app_id) == ("APP", "default")


def test_a_batch_task_of_another_app_project_or_instance_is_not_found(rig):
    caller = rig.caller()
    in_app = seed_batch_task(rig.store, caller.project_id, "", 2, app_id="app_a", seed=1)
    with pytest.raises(BatchTaskNotFound):
        rig.service.create(caller, request(in_app, app_type="APP"))  # APP without app_id: the default app
    with pytest.raises(BatchTaskNotFound):
        rig.service.create(caller, request(in_app, app_type="APP", app_id="app_b"))
    in_later_app = seed_batch_task(rig.store, caller.project_id, "", 2, app_id="zz_app", seed=2)
    with pytest.raises(BatchTaskNotFound):  # another app, whichever sorts first
        rig.service.create(caller, request(in_later_app, app_type="APP", app_id="app_a"))
    assert rig.service.create(caller, request(in_app, app_type="APP", app_id="app_a")).app_id == "app_a"
    other = rig.caller()
    with pytest.raises(BatchTaskNotFound):
        rig.service.create(other, request(in_app))
    elsewhere = dataclasses.replace(caller, instance_id="inst-1")
    with pytest.raises(BatchTaskNotFound):
        rig.service.create(elsewhere, request(in_app))
    with pytest.raises(BatchTaskNotFound):
        rig.service.create(caller, request("ab" * 12))


def test_a_same_conditions_create_while_processing_is_the_same_run(rig):
    caller = rig.caller()
    batch = rig.batch(caller)
    t = rig.service.create(caller, request(batch))
    rig.now[0] += 5000
    again = rig.service.create(caller, request(batch))
    assert again == t  # not re-queued: same create time, version, attempts
    assert rig.unfinished(caller) == 1


def test_a_rerun_resets_the_run_and_keeps_the_file(rig):
    caller = rig.caller()
    batch = rig.batch(caller)
    done = rig.finish(caller, rig.service.create(caller, request(batch)), succeed=True)
    rig.now[0] += 5000
    rerun = rig.service.create(caller, request(batch))
    assert rerun.export_task_id == done.export_task_id
    assert (rerun.status, rerun.status_desc, rerun.progress, rerun.export_count, rerun.end_time, rerun.run_state,
            rerun.run_token, rerun.attempts, rerun.worker_id, rerun.lease_until) == \
        (rules.STATUS_PROCESSING, None, 1, 0, None, "queued", None, 0, None, None)
    assert rerun.create_time == rerun.queued_at == rig.now[0]
    assert rerun.file_generation == done.file_generation and rerun.file_size == done.file_size
    assert rig.total(caller) == 1


def test_a_request_id_returns_the_first_result_and_refuses_other_conditions(rig):
    caller = rig.caller()
    a, b = rig.batch(caller, 2), rig.batch(caller, 3)
    first = rig.service.create(caller, request(a, request_id="req-1"))
    rig.changed.clear()
    assert rig.service.create(caller, request(a, request_id="req-1")) == first
    with pytest.raises(InvalidArgument) as info:
        rig.service.create(caller, request(b, request_id="req-1"))
    assert fields(info.value) == ["request_id"]
    rig.service.create(caller, request(b, request_id="req-2"))
    with pytest.raises(InvalidArgument):  # and the other way round (any other conditions)
        rig.service.create(caller, request(a, request_id="req-2"))
    # Another user's request ids are their own.
    other = rig.caller()
    ob = rig.batch(other, 2)
    assert rig.service.create(other, request(ob, request_id="req-1")).export_task_id != first.export_task_id
    # A request id whose task was deleted is a new create.
    rig.service.delete(caller, first.export_task_id)
    assert rig.service.create(caller, request(a, request_id="req-1")).export_task_id != first.export_task_id


def test_the_unfinished_limit_is_exactly_five(rig):
    caller = rig.caller()
    made = [rig.service.create(caller, request(rig.batch(caller, 2 + i))) for i in range(5)]
    with pytest.raises(QuotaExceeded) as info:
        rig.service.create(caller, request(rig.batch(caller, 20)))
    e = info.value
    assert (e.limit, e.quota_id, e.subject, e.error_code) == (5, "unfinished-export-tasks-per-user",
                                                              f"user:{caller.principal.user}", "IOTDA.018002")
    rig.service.cancel(caller, made[0].export_task_id)
    rig.service.create(caller, request(rig.batch(caller, 21)))


def test_a_user_already_past_the_limits_is_held_to_them(rig):
    """Rows written before a limit existed (or imported) are not a way around it: more than 5
    unfinished still refuses, more than 50 tasks are cut back to 50 by the next create."""
    from test_rule_races import _insert_finished
    caller = rig.caller()
    old = _insert_finished(rig, caller, 55)
    rig.service.create(caller, request(rig.batch(caller)))
    assert rig.total(caller) == 50
    assert all(rig.store.reader().export_task(t.export_task_id) is None for t in old[:6])
    other = rig.caller()
    extra = _insert_finished(rig, other, 6)
    with rig.store.transaction() as tx:
        for t in extra:
            tx.update_export_task(t.export_task_id, status=rules.STATUS_PROCESSING, run_state="queued", end_time=None)
    with pytest.raises(QuotaExceeded):
        rig.service.create(other, request(rig.batch(other)))


def test_eviction_removes_the_file_after_the_commit_and_announces_it(rig):
    from test_rule_races import _insert_finished
    caller = rig.caller()
    old = _insert_finished(rig, caller, 50)
    rig.changed.clear()
    new = rig.service.create(caller, request(rig.batch(caller)))
    assert rig.changed == [old[0].export_task_id, new.export_task_id]
    assert not rig.files.path(old[0].export_task_id).exists() and rig.files.path(old[1].export_task_id).exists()
    assert rig.total(caller) == 50


# -- cancel, delete, visibility ------------------------------------------------------------------

def test_cancel_fails_an_unfinished_task_and_leaves_a_finished_one(rig):
    caller = rig.caller()
    t = rig.service.create(caller, request(rig.batch(caller)))
    rig.now[0] += 1000
    rig.changed.clear()
    c = rig.service.cancel(caller, t.export_task_id)
    assert (c.status, c.status_desc, c.end_time, c.run_state, c.run_token, c.worker_id, c.lease_until) == \
        (rules.STATUS_FAILED, "cancelled", rig.now[0], "done", None, None, None)
    assert rig.changed == [t.export_task_id]
    rig.now[0] += 1000
    assert rig.service.cancel(caller, t.export_task_id) == c  # finished: unchanged
    with pytest.raises(InvalidArgument):
        rig.service.cancel(caller, "not/an/id")


def test_delete_removes_the_row_and_the_file(rig):
    caller = rig.caller()
    t = rig.finish(caller, rig.service.create(caller, request(rig.batch(caller))), succeed=True)
    assert rig.files.path(t.export_task_id).exists()
    rig.changed.clear()
    rig.service.delete(caller, t.export_task_id)
    assert rig.store.reader().export_task(t.export_task_id) is None
    assert not rig.files.path(t.export_task_id).exists() and rig.changed == [t.export_task_id]
    with pytest.raises(ExportTaskNotFound):
        rig.service.delete(caller, t.export_task_id)
    with pytest.raises(InvalidArgument):
        rig.service.delete(caller, "")


def _caller_in_the_middle(rig, prefix: str) -> Caller:
    """A new principal whose (random) id starts with 4-b: at least a quarter of all ids sort before
    it and a quarter after (each try is a coin toss; 200 failing tries: 2^-200)."""
    for _ in range(200):
        caller = rig.caller(prefix)
        if "4" <= caller.owner[0] <= "b":
            return caller
    raise AssertionError("no principal id in the middle in 200 tries")


@pytest.mark.parametrize("who", ["earlier user", "later user", "project before", "project after",
                                 "instance before", "instance after", "no instance"])
def test_a_task_is_visible_only_to_its_owner_in_its_project_and_instance(rig, who):
    """Strangers on both sides of the owner, its project and its instance, in any order they sort."""
    # Tasks are owned by principal ids (random): of three principals, the owner is the one whose id
    # sorts between the others', so there is a stranger on each side of it.
    earlier, owner, later = sorted((rig.caller(p) for p in ("a", "m", "z")), key=lambda c: c.owner)
    caller = dataclasses.replace(owner, instance_id="m-inst")
    batch = seed_batch_task(rig.store, caller.project_id, "m-inst", 2, seed=4)
    t = rig.finish(caller, rig.service.create(caller, request(batch)), succeed=True)
    stranger = {
        "earlier user": dataclasses.replace(earlier, project_id=caller.project_id, instance_id="m-inst"),
        "later user": dataclasses.replace(later, project_id=caller.project_id, instance_id="m-inst"),
        "project before": dataclasses.replace(caller, project_id="0-project"),
        "project after": dataclasses.replace(caller, project_id="zz-project"),
        "instance before": dataclasses.replace(caller, instance_id="a-inst"),
        "instance after": dataclasses.replace(caller, instance_id="z-inst"),
        "no instance": dataclasses.replace(caller, instance_id=""),
    }[who]
    for call in (lambda: rig.service.get(stranger, t.export_task_id),
                 lambda: rig.service.cancel(stranger, t.export_task_id),
                 lambda: rig.service.delete(stranger, t.export_task_id),
                 lambda: rig.service.admit_download(stranger, t.export_task_id, 0, 0)):
        with pytest.raises(ExportTaskNotFound):
            call()
    assert rig.store.reader().export_task(t.export_task_id) == t
    assert rig.store.reader().download_limit(stranger.owner) is None
    assert rig.service.get(caller, t.export_task_id) == t


# -- download admission --------------------------------------------------------------------------

def _done(rig, caller):
    t = rig.finish(caller, rig.service.create(caller, request(rig.batch(caller))), succeed=True)
    assert t.file_size == 22
    return t


def _admit(rig, caller, t, offset=0, limit=0):
    d = rig.service.admit_download(caller, t.export_task_id, offset, limit)
    data = d.file.read()
    d.file.close()
    return d, data


def test_admission_checks_fields_before_anything(rig):
    caller = rig.caller()
    t = _done(rig, caller)
    with pytest.raises(InvalidArgument) as info:
        rig.service.admit_download(caller, "bad id", -1, -1)
    assert fields(info.value) == ["export_task_id", "offset", "limit"]
    for offset, limit, field in ((-1, 0, "offset"), (0, -1, "limit")):
        with pytest.raises(InvalidArgument) as info:
            rig.service.admit_download(caller, t.export_task_id, offset, limit)
        assert fields(info.value) == [field]
    assert rig.store.reader().download_limit(caller.owner) is None


def test_a_download_before_success_or_past_the_end_is_refused_and_not_counted(rig):
    caller = rig.caller()
    t = _done(rig, caller)
    queued = rig.service.create(caller, request(rig.batch(caller, 9)))
    with pytest.raises(FailedPrecondition) as info:
        rig.service.admit_download(caller, queued.export_task_id, 0, 0)
    assert (info.value.violation_type, info.value.error_code) == ("NOT_SUCCEEDED", "IOTDA.018004")
    with pytest.raises(OutOfRange):
        rig.service.admit_download(caller, t.export_task_id, 23, 0)
    assert rig.store.reader().download_limit(caller.owner) is None
    d, data = _admit(rig, caller, t, offset=22)  # the very end: admitted, nothing left to send
    assert (d.offset, d.length, data[d.offset:]) == (22, 0, b"")


def test_admitted_download_has_the_file_its_range_and_its_name(rig):
    caller = rig.caller()
    t = _done(rig, caller)
    d, data = _admit(rig, caller, t, offset=0, limit=5)
    assert (d.offset, d.length, d.file_name, d.task.export_task_id) == (0, 5, f"export-{t.export_task_id}.zip",
                                                                       t.export_task_id)
    assert data == rig.files.path(t.export_task_id).read_bytes()
    mark = rig.store.reader().download_limit(caller.owner)
    assert (mark.last_at, mark.export_task_id, mark.file_generation, mark.resume_offset, mark.resumes) == \
        (rig.now[0], t.export_task_id, t.file_generation, 0, 0)
    rig.now[0] += WINDOW_MS
    d, _ = _admit(rig, caller, t, offset=3, limit=100)
    assert (d.offset, d.length) == (3, 19)  # the limit is cut to the file


def test_the_window_is_thirty_seconds_to_the_millisecond(rig):
    caller = rig.caller()
    t = _done(rig, caller)
    _admit(rig, caller, t)
    start = rig.now[0]
    rig.now[0] = start + WINDOW_MS - 1
    with pytest.raises(RateLimited) as info:
        _admit(rig, caller, t)
    assert info.value.retry_after == pytest.approx(0.001)
    assert (info.value.quota_id, info.value.subject, info.value.error_code) == \
        ("downloads-per-user-per-30s", f"user:{caller.principal.user}", "IOTDA.018003")
    rig.now[0] = start + WINDOW_MS
    _admit(rig, caller, t)


def test_a_resume_is_free_only_for_the_same_file_further_on_within_limits(rig):
    caller = rig.caller()
    t, u = _done(rig, caller), _done(rig, caller)
    rig.now[0] += WINDOW_MS
    _admit(rig, caller, t)
    rig.now[0] += 1000
    for offset, task in ((0, t), (5, u)):  # a full download again; another file
        with pytest.raises(RateLimited):
            _admit(rig, caller, task, offset=offset)
    _admit(rig, caller, t, offset=1)  # from the second byte on: a resume
    _admit(rig, caller, t, offset=5)
    with pytest.raises(RateLimited):
        _admit(rig, caller, t, offset=5)  # not further on
    with pytest.raises(RateLimited):
        _admit(rig, caller, t, offset=4)  # backwards: a re-download, not a resume
    _admit(rig, caller, t, offset=7)
    mark = rig.store.reader().download_limit(caller.owner)
    assert (mark.resumes, mark.resume_offset) == (FREE_RESUMES, 7)
    with pytest.raises(RateLimited):
        _admit(rig, caller, t, offset=8)  # a 4th resume counts
    # The resume window: 600 s after the counted download a resume counts again.
    rig.now[0] += WINDOW_MS
    _admit(rig, caller, t)  # counted again (a new window)
    counted = rig.now[0]
    rig.now[0] = counted + RESUME_WINDOW_MS - 1
    _admit(rig, caller, t, offset=2)  # still a resume (and the 30 s are long over anyway)
    rig.now[0] = counted + RESUME_WINDOW_MS
    d, _ = _admit(rig, caller, t, offset=3)  # at the end of the resume window: a counted download
    mark = rig.store.reader().download_limit(caller.owner)
    assert (mark.last_at, mark.resumes) == (rig.now[0], 0)
    rig.now[0] += 1000
    with pytest.raises(RateLimited):
        _admit(rig, caller, t, offset=0)
    counted = mark.last_at
    rig.now[0] = counted + RESUME_WINDOW_MS + 5000  # well past it: counted again, not a resume
    _admit(rig, caller, t, offset=4)
    assert rig.store.reader().download_limit(caller.owner).last_at == rig.now[0]


def test_a_resume_of_another_file_counts_whichever_is_newer(rig):
    caller = rig.caller()
    older, newer = _done(rig, caller), _done(rig, caller)
    for last, other in ((newer, older), (older, newer)):
        rig.now[0] += WINDOW_MS
        _admit(rig, caller, last)
        rig.now[0] += 1000
        with pytest.raises(RateLimited):
            _admit(rig, caller, other, offset=5)


def test_a_resume_after_the_file_changed_counts(rig):
    caller = rig.caller()
    t = _done(rig, caller)
    rig.now[0] += WINDOW_MS
    _admit(rig, caller, t)
    rig.now[0] += 1000
    rig.service.create(caller, request(t.batch_task_id))  # re-run
    t2 = rig.finish(caller, rig.store.reader().export_task(t.export_task_id), succeed=True)
    assert t2.file_generation == t.file_generation + 1
    with pytest.raises(RateLimited):
        _admit(rig, caller, t2, offset=5)


def test_a_missing_file_is_data_loss_marks_the_task_and_is_not_counted(rig):
    caller = rig.caller()
    t = _done(rig, caller)
    rig.files.path(t.export_task_id).unlink()
    with pytest.raises(DataLoss):
        rig.service.admit_download(caller, t.export_task_id, 0, 0)
    assert rig.store.reader().download_limit(caller.owner) is None
    marked = rig.store.reader().export_task(t.export_task_id)
    assert (marked.status, marked.file_available) == ("Failed", False) and "damaged" in marked.status_desc
    # Asked again: still data loss, never counted, saying what brings the file back
    with pytest.raises(DataLoss) as again:
        rig.service.admit_download(caller, t.export_task_id, 0, 0)
    assert "create the export again to re-run it" in again.value.message
    rerun = rig.service.create(caller, request(marked.batch_task_id))
    assert rerun.export_task_id == t.export_task_id and rerun.unfinished
    with pytest.raises(DataLoss) as running:
        rig.service.admit_download(caller, t.export_task_id, 0, 0)
    assert "it is running again" in running.value.message
    assert rig.store.reader().download_limit(caller.owner) is None


def test_services_share_nothing_but_the_store(tmp_path):
    """Two services (two API processes) on one store: the second sees the first's download."""
    (tmp_path / "d").mkdir()
    store = open_store(tmp_path / "d")
    files = ResultFiles(tmp_path / "f")
    rig = Rig(store, files, "sqlite")
    caller = rig.caller()
    t = _done(rig, caller)
    _admit(rig, caller, t)
    other = ExportService(store, files, clock=lambda: rig.now[0] + 1000)
    with pytest.raises(RateLimited):
        other.admit_download(caller, t.export_task_id, 0, 0)
    store.close()
    assert isinstance(caller, Caller)


# -- authorization (domain/auth.py) ----------------------------------------------------------------

def test_new_credentials_have_their_documented_shapes():
    import re
    import time as _time

    from iotda_export_server.domain import auth
    before = int(_time.time() * 1000)
    principal, token = auth.new_principal("someone", "p" * 32, auth.statements_for(["iotda:exporttasks:*"]))
    after = int(_time.time() * 1000)
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert re.fullmatch(r"[A-Z0-9]{20}", principal.ak) and re.fullmatch(r"[A-Za-z0-9]{40}", principal.sk)
    assert before <= principal.created_at <= after  # milliseconds since the epoch
    doc = auth.credentials_document(principal, token)
    assert re.fullmatch(r"[0-9a-f]{24}", principal.principal_id)
    assert doc == {"user": "someone", "principal_id": principal.principal_id, "project_id": "p" * 32,
                   "token": token, "ak": principal.ak, "sk": principal.sk, "enterprise_project_id": "0"}


def test_statements_refuse_an_action_of_the_wrong_shape():
    from iotda_export_server.domain import auth
    for bad in (["iotda:exporttasks:create", "not an action"], ["exporttasks:create"], [""]):
        with pytest.raises(InvalidArgument) as info:
            auth.statements_for(bad)
        assert fields(info.value) == ["actions"]
    (s,) = auth.statements_for(["*", "iotda:batchtasks:query"], ["ep1"])
    assert (s.effect, s.actions, s.enterprise_projects) == ("Allow", ("*", "iotda:batchtasks:query"), ("ep1",))


def test_a_front_end_vouches_only_with_its_key_and_for_an_existing_user(tmp_path):
    from iotda_export_server.app import add_principal
    from iotda_export_server.domain.auth import Authenticator
    from iotda_export_server.domain.errors import Unauthenticated
    (tmp_path / "d").mkdir()
    store = open_store(tmp_path / "d")
    alice = add_principal(store, "alice", "p" * 32)
    bob = add_principal(store, "bob", "q" * 32)
    keyed, keyless = Authenticator(store, front_end_key="k" * 32), Authenticator(store, None)
    alice_id = store.reader().principal_by("user", "alice").principal_id
    assert keyed.authenticate("", vouched_principal_id=alice_id, front_end_key="k" * 32).user == "alice"
    # A wrong key or no key: the vouching is ignored, the token decides.
    assert keyed.authenticate(bob["token"], vouched_principal_id=alice_id, front_end_key="x" * 32).user == "bob"
    assert keyless.authenticate(bob["token"], vouched_principal_id=alice_id, front_end_key="k" * 32).user == "bob"
    with pytest.raises(Unauthenticated):
        keyed.authenticate("", vouched_principal_id=alice_id, front_end_key="x" * 32)
    # The right key without a vouched principal: the token decides.
    assert keyed.authenticate(alice["token"], vouched_principal_id="", front_end_key="k" * 32).user == "alice"
    with pytest.raises(Unauthenticated):  # vouched for, but removed since (or never there)
        keyed.authenticate(bob["token"], vouched_principal_id="c" * 24, front_end_key="k" * 32)
    # Vouching is by id, never by name.
    with pytest.raises(Unauthenticated):
        keyed.authenticate("", vouched_principal_id="alice", front_end_key="k" * 32)
    with pytest.raises(Unauthenticated):
        keyed.authenticate("0" * 64)
    store.close()


def test_client_certificate_credentials_name_their_bound_principal_only_without_a_token(tmp_path):
    from iotda_export_server.app import add_principal
    from iotda_export_server.domain.auth import Authenticator
    from iotda_export_server.domain.errors import Unauthenticated
    (tmp_path / "d").mkdir()
    store = open_store(tmp_path / "d")
    by_subject = add_principal(store, "svc-a", "p" * 32, client_cert_subject="CN=svc-a,O=Example")
    add_principal(store, "svc-b", "q" * 32, client_cert_san="svc-b.internal")
    add_principal(store, "svc-c", "r" * 32, client_cert_san="spiffe://example/svc-c")
    authenticator = Authenticator(store, front_end_key="k" * 32)
    # The subject, else each SAN in turn; the subject wins over a SAN bound to someone else.
    assert authenticator.by_client_cert("CN=svc-a,O=Example", ()).user == "svc-a"
    assert authenticator.by_client_cert("CN=other", ("x.internal", "svc-b.internal")).user == "svc-b"
    assert authenticator.by_client_cert("", ("spiffe://example/svc-c",)).user == "svc-c"
    assert authenticator.by_client_cert("CN=svc-a,O=Example", ("svc-b.internal",)).user == "svc-a"
    assert authenticator.by_client_cert("CN=svc-a", ("svc-a.internal",)) is None  # whole subjects, exact SANs
    assert authenticator.by_client_cert("", ()) is None
    # authenticate: the certificate counts only without a token; a token given decides, right or wrong.
    cert_a = ("CN=svc-a,O=Example", ())
    assert authenticator.authenticate("", client_cert=cert_a).user == "svc-a"
    assert authenticator.authenticate("", client_cert=("CN=x", ("svc-b.internal",))).user == "svc-b"
    bob = add_principal(store, "bob", "s" * 32)
    assert authenticator.authenticate(bob["token"], client_cert=cert_a).user == "bob"
    for token, cert in (("0" * 64, cert_a), ("", ("CN=nobody", ())), ("", None)):
        with pytest.raises(Unauthenticated):
            authenticator.authenticate(token, client_cert=cert)
    # A front end's vouching (the gateway's) decides before either.
    bob_id = store.reader().principal_by("user", "bob").principal_id
    assert authenticator.authenticate("", bob_id, "k" * 32, client_cert=cert_a).user == "bob"
    assert by_subject["user"] == "svc-a"
    store.close()


def test_client_cert_san_credentials_are_printable_names_without_spaces():
    from iotda_export_server.domain import auth
    from iotda_export_server.domain.model import Statement
    statements = [Statement("Allow", ("*",), None)]
    for good in ("a", "svc-b.internal", "10.0.0.7", "x" * 255, "~!"):
        principal, _ = auth.new_principal("u", "p" * 32, statements, client_cert_san=good)
        assert principal.client_cert_san == good
    assert auth.new_principal("u", "p" * 32, statements)[0].client_cert_san is None
    for bad in ("", "has space", "x" * 256, "tab\there", "é"):
        with pytest.raises(InvalidArgument) as info:
            auth.new_principal("u", "p" * 32, statements, client_cert_san=bad)
        assert fields(info.value) == ["client_cert_san"]


# -- paging and field rules (domain/validation.py) --------------------------------------------------

def test_paging_takes_the_documented_ranges_inclusive():
    from iotda_export_server.domain import validation
    from iotda_export_server.domain.errors import LimitOutOfRange
    assert validation.paging(None, None, "") == (10, 0, "f" * 24)
    for limit in (1, 2, 49, 50):
        assert validation.paging(limit, None, "")[0] == limit
    for offset in (0, 1, 499, 500):
        assert validation.paging(None, offset, "")[1] == offset
    for limit in (0, 51, -1):
        with pytest.raises(LimitOutOfRange):
            validation.paging(limit, None, "")
    for offset in (-1, 501):
        with pytest.raises(InvalidArgument) as info:
            validation.paging(None, offset, "")
        assert fields(info.value) == ["offset"]
    assert validation.paging(None, None, "0" * 24)[2] == "0" * 24


def test_instance_id_keeps_a_given_instance():
    from iotda_export_server.domain import validation
    assert validation.instance_id("") == "" and validation.instance_id("inst-1") == "inst-1"
    with pytest.raises(InvalidArgument):
        validation.instance_id("inst 1")


# -- JSON fields of a request (validation.json_object) --------------------------------------------

def _nested(depth: int) -> dict:
    """Objects nested `depth` levels deep, the outer one being level 1 (arrays: the test below)."""
    value = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize("depth", [1, 2, rules.MAX_JSON_DEPTH])
def test_json_object_accepts_nesting_up_to_the_limit(depth):
    value = _nested(depth)
    assert validation.json_object(value, "document", 10_000) == json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("depth", [rules.MAX_JSON_DEPTH + 1, rules.MAX_JSON_DEPTH + 2])
def test_json_object_refuses_nesting_past_the_limit(depth):
    with pytest.raises(InvalidArgument) as info:
        validation.json_object(_nested(depth), "document", 10_000)
    assert fields(info.value) == ["document"]
    assert f"at most {rules.MAX_JSON_DEPTH} levels" in info.value.violations[0].description


def test_json_object_counts_levels_of_objects_in_arrays_and_arrays_in_objects():
    """Depth 12 written as arrays of objects only, and as objects of arrays only: both levels count."""
    arrays = {"a": [[[[[[[[[[[1]]]]]]]]]]]}  # the object + 11 arrays: 12 levels
    assert validation.json_object(arrays, "document", 10_000)
    with pytest.raises(InvalidArgument):
        validation.json_object({"a": [arrays]}, "document", 10_000)


def test_json_object_takes_exactly_max_chars_of_compact_json():
    value = {"s": "x" * 92}  # {"s":"xx..."}: 8 characters around the string
    assert len(validation.json_object(value, "task_ext_info", 100)) == 100
    with pytest.raises(InvalidArgument) as info:
        validation.json_object(value, "task_ext_info", 99)
    assert fields(info.value) == ["task_ext_info"] and "got 100" in info.value.violations[0].description


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_json_object_refuses_nan_and_infinity_by_name(number):
    with pytest.raises(InvalidArgument) as info:
        validation.json_object({"v": [number]}, "document", 10_000)
    assert fields(info.value) == ["document"] and "NaN or Infinity" in info.value.violations[0].description


# -- principal removal -----------------------------------------------------------------------------

def test_removal_of_a_name_that_is_not_there_is_false_and_changes_nothing(rig):
    caller = rig.caller()
    t = _done(rig, caller)
    assert auth.remove_principal(rig.store, rig.files, "nobody-of-that-name") is False
    assert rig.store.reader().export_task(t.export_task_id) == t and rig.files.path(t.export_task_id).exists()


def test_removal_deletes_the_principals_tasks_and_their_files(rig):
    caller, other = rig.caller(), rig.caller()
    kept = _done(rig, other)
    tasks = [_done(rig, caller), rig.create(caller, rig.batch(caller, 4))]  # a finished one and a queued one
    assert auth.remove_principal(rig.store, rig.files, caller.principal.user) is True
    assert rig.store.reader().principal_by("user", caller.principal.user) is None
    for t in tasks:
        assert rig.store.reader().export_task(t.export_task_id) is None
        assert not rig.files.path(t.export_task_id).exists()
    assert rig.store.reader().count_export_tasks(caller.owner) == 0
    assert rig.store.reader().export_task(kept.export_task_id) == kept and rig.files.path(kept.export_task_id).exists()


class _StaleFirstLook:
    """The store as a removal sees it when the name was removed and added again between its look-up
    and its lock: the first look-up answers the old principal; everything else is the real store."""

    def __init__(self, store, stale):
        self._store, self._stale, self._looked = store, stale, False

    def reader(self):
        if self._looked:
            return self._store.reader()
        self._looked = True
        stale = self._stale

        class Reader:
            def principal_by(self, key, value):
                return stale

        return Reader()

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.mark.parametrize("order", ["new id sorts after the old", "new id sorts before the old"])
def test_removal_removes_the_principal_that_holds_the_name_at_the_lock(rig, order):
    old = _caller_in_the_middle(rig, "again")  # so new ids fall on either side of it often
    name = old.principal.user
    wanted = (lambda pid: pid > old.owner) if order.startswith("new id sorts after") else (lambda pid: pid < old.owner)
    for _ in range(200):  # re-add under the same name until the new (random) id sorts as wanted
        assert auth.remove_principal(rig.store, rig.files, name)
        add_principal(rig.store, name, secrets.token_hex(16))
        new = rig.store.reader().principal_by("user", name)
        if wanted(new.principal_id):
            break
    else:
        raise AssertionError("no principal id of the wanted order in 200 tries")
    t = _done(rig, Caller(principal=new, project_id=new.project_id, instance_id=""))
    assert auth.remove_principal(_StaleFirstLook(rig.store, old.principal), rig.files, name) is True
    assert rig.store.reader().principal_by("user", name) is None
    assert rig.store.reader().export_task(t.export_task_id) is None and not rig.files.path(t.export_task_id).exists()
