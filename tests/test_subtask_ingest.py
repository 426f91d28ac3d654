"""Sub-task ingest on both stores: seeding, CreateBatchTask's targets and RecordSubtaskResults (the
domain's BatchService on a real SQLite file and a real PostgreSQL database, where the store writes
with COPY). Every rule of ingest holds on both, a refused call changes nothing, and text comes back
exactly as it went in (COPY's escapes included)."""

from __future__ import annotations

import secrets

import pytest

from iotda_export_server.app import add_principal
from iotda_export_server.domain import rules
from iotda_export_server.domain.batches import BatchService, CreateBatchRequest, SubtaskResult, seed_batch_task
from iotda_export_server.domain.errors import FailedPrecondition, InvalidArgument
from iotda_export_server.domain.model import Caller

# Text COPY's text form must escape (backslash, tab, newline, carriage return) or could misread
# (its NULL marker \N spelled out), and text outside ASCII.
AWKWARD = ["back\\slash", "\\N", "\\", "tab\there", "cr\rlf\n", "\\t not a tab", "温度 ✓ 😀", "\x07bell", "end\\"]


@pytest.fixture
def caller(each_store) -> Caller:
    name = f"ingest-{secrets.token_hex(4)}"
    add_principal(each_store, name, secrets.token_hex(16))
    principal = each_store.reader().principal_by("user", name)
    return Caller(principal=principal, project_id=principal.project_id, instance_id="")


def create(store, caller: Caller, targets: list[str] | None = None) -> str:
    """A batch task with a fixed target list, or (None) one whose results add its sub-tasks."""
    request = CreateBatchRequest(
        app_id="", task_name="ingest", task_type="createCommands", task_mode="", need_confirm=False,
        task_ext_info=None, targets=targets or [], targets_filter=None if targets else {"group_ids": ["g1"]},
        document=None, task_policy=None, document_source="")
    return BatchService(store).create(caller, request).task_id


def rows_of(store, task_id: str) -> list[tuple]:
    """Every sub-task, (id, target, status, output, error_code, error_msg), in id order."""
    return [tuple(r) for r in store.reader().subtask_rows(task_id, "", 1 << 40)]


def test_seed_and_created_targets_are_every_row(each_store, caller) -> None:
    task_id = seed_batch_task(each_store, caller.project_id, "", 5000, seed=4)
    rows = rows_of(each_store, task_id)
    assert len(rows) == 5000 and len({r[1] for r in rows}) == 5000
    assert {r[2] for r in rows} == {"Success", "Fail", "Stopped"}
    assert all(r[4] and r[5] for r in rows if r[2] == "Fail")
    targets = [f"dev_{i:05d}" for i in range(rules.MAX_BATCH_TARGETS)]
    created = create(each_store, caller, targets)
    rows = rows_of(each_store, created)
    assert sorted(r[1] for r in rows) == targets and {r[2:] for r in rows} == {("Processing", "", "", "")}


def test_results_are_stored_exactly_and_update_in_place(each_store, caller) -> None:
    service = BatchService(each_store)
    task_id = create(each_store, caller)
    first = [SubtaskResult(f"dev_{i}", "Fail" if i % 2 else "Success", AWKWARD[i % len(AWKWARD)],
                           AWKWARD[(i + 1) % len(AWKWARD)], AWKWARD[(i + 2) % len(AWKWARD)]) for i in range(40)]
    first.append(SubtaskResult("dev_long", "Success", "é" * rules.MAX_OUTPUT_CHARS, "", ""))
    task = service.record_results(caller, task_id, first)
    assert task.progress.total == 41
    stored = {r[1]: r for r in rows_of(each_store, task_id)}
    assert {t: r[2:] for t, r in stored.items()} == {
        r.target: (r.status, r.output, r.error_code, r.error_msg) for r in first}
    # Updates keep the sub-task's id; new targets get new sub-tasks.
    second = [SubtaskResult("dev_3", "Success", "again\\\t", "", ""), SubtaskResult("dev_new", "Stopped", "", "", "")]
    task = service.record_results(caller, task_id, second)
    assert task.progress.total == 42
    after = {r[1]: r for r in rows_of(each_store, task_id)}
    assert after["dev_3"] == (stored["dev_3"][0], "dev_3", "Success", "again\\\t", "", "")
    assert after["dev_new"][2] == "Stopped" and after["dev_new"][0] not in {r[0] for r in stored.values()}
    assert {t: r for t, r in after.items() if t not in ("dev_3", "dev_new")} == {
        t: r for t, r in stored.items() if t != "dev_3"}


def test_two_recordings_in_one_transaction(each_store, caller) -> None:
    # The store's ingest may be called twice in one transaction; the second sees none of the first's rows.
    task_id = create(each_store, caller)
    with each_store.transaction() as tx:
        tx.upsert_subtask_results(task_id, [("a" * 24, "x1", "Success", "", "", "")])
        tx.upsert_subtask_results(task_id, [("b" * 24, "x2", "Fail", "", "E", "m"),
                                            ("c" * 24, "x1", "Stopped", "o", "", "")])
    assert rows_of(each_store, task_id) == [("a" * 24, "x1", "Stopped", "o", "", ""),
                                            ("b" * 24, "x2", "Fail", "", "E", "m")]


def test_the_30000_cap_holds_at_full_calls(each_store, caller) -> None:
    service = BatchService(each_store)
    task_id = create(each_store, caller)
    per_call = rules.MAX_RECORDED_RESULTS_PER_CALL
    for start in range(0, rules.MAX_BATCH_TARGETS - 5, per_call):
        count = min(per_call, rules.MAX_BATCH_TARGETS - 5 - start)
        service.record_results(caller, task_id, [SubtaskResult(f"d{start + i}", "Success", "", "", "")
                                                 for i in range(count)])
    before = rows_of(each_store, task_id)
    assert len(before) == rules.MAX_BATCH_TARGETS - 5
    with pytest.raises(FailedPrecondition, match="at most 30000"):
        service.record_results(caller, task_id, [SubtaskResult(f"new{i}", "Fail", "", "", "") for i in range(6)]
                               + [SubtaskResult("d1", "Fail", "", "", "")])
    assert rows_of(each_store, task_id) == before
    task = service.record_results(caller, task_id, [SubtaskResult(f"new{i}", "Fail", "", "", "") for i in range(5)])
    assert task.progress.total == rules.MAX_BATCH_TARGETS


def test_refused_results_change_nothing(each_store, caller) -> None:
    service = BatchService(each_store)
    open_task = create(each_store, caller)
    service.record_results(caller, open_task, [SubtaskResult("dev_a", "Success", "ok", "", "")])
    fixed = create(each_store, caller, ["dev_a", "dev_b"])
    before = (rows_of(each_store, open_task), rows_of(each_store, fixed))
    ok = SubtaskResult("dev_b", "Success", "", "", "")
    refusals = [
        (open_task, [ok, SubtaskResult("dev_b", "Fail", "", "", "")], InvalidArgument, "repeats"),
        (open_task, [ok, SubtaskResult("dev_c", "Success", "nul\x00", "", "")], InvalidArgument, "NUL"),
        (open_task, [ok, SubtaskResult("dev c", "Success", "", "", "")], InvalidArgument, "target"),
        (open_task, [ok, SubtaskResult("dev_c", "Waitting", "", "", "")], InvalidArgument, "status"),
        (open_task, [ok] + [SubtaskResult(f"d{i}", "Success", "", "", "")
                            for i in range(rules.MAX_RECORDED_RESULTS_PER_CALL)], InvalidArgument, "at most"),
        (fixed, [ok, SubtaskResult("dev_z", "Success", "", "", "")], FailedPrecondition, "not a target"),
    ]
    for task_id, results, error, message in refusals:
        with pytest.raises(error, match=message):
            service.record_results(caller, task_id, results)
        assert (rows_of(each_store, open_task), rows_of(each_store, fixed)) == before
