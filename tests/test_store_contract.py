"""The store contract (store/contract.py), the same tests on each implementation: in memory, a
SQLite file and a PostgreSQL database of its own. Also: both dialects' named SQL files parse and
define the same queries (store/sql/)."""

from __future__ import annotations

import secrets

import pytest

from iotda_export_server.domain import auth, ids, rules
from iotda_export_server.domain.model import BatchTask, ExportTask
from iotda_export_server.store import sql
from iotda_export_server.store.records import DownloadMark

# Names one dialect has and the other does the same work without (each file says so).
SQLITE_ONLY = {"insert_subtask", "upsert_subtask_result"}
POSTGRES_ONLY = {"lock_key", "read_only_snapshot", "copy_subtasks", "create_subtask_results_in",
                 "copy_subtask_results_in", "move_subtask_results_in"}


@pytest.fixture(scope="module", params=["memory", "sqlite", "postgresql"])
def store(request, tmp_path_factory):
    """Each store, shared by the module's tests (each test makes its own owners and tasks)."""
    if request.param == "memory":
        from iotda_export_server.testing import InMemoryStore
        yield InMemoryStore()
        return
    from iotda_export_server.store import open_store

    data_dir = tmp_path_factory.mktemp(request.param)
    db = None
    if request.param == "postgresql":
        import pg_support as ps
        db = ps.TestDatabase().create()
    s = open_store(data_dir, db.url if db else None, migrate=True)
    try:
        yield s
    finally:
        s.close()
        if db is not None:
            db.drop()


# -- the SQL files ---------------------------------------------------------------------------------

def test_both_dialects_define_the_same_named_queries() -> None:
    sqlite, postgres = sql.queries("sqlite"), sql.queries("postgres")
    assert set(sqlite) - set(postgres) == SQLITE_ONLY
    assert set(postgres) - set(sqlite) == POSTGRES_ONLY
    assert all("%s" not in q for q in sqlite.values())  # each its own placeholders, none rewritten
    assert all("?" not in q for q in postgres.values())


def test_a_query_without_its_description_or_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="no description"):
        sql.parse("\n-- name: a\nSELECT 1;\n")
    with pytest.raises(ValueError, match="twice"):
        sql.parse("\n-- name: a\n-- one\nSELECT 1;\n\n-- name: a\n-- two\nSELECT 2;\n")
    assert sql.parse("-- head\n\n-- name: a\n-- one\nSELECT\n    1;\n") == {"a": "SELECT\n    1"}


# -- helpers ---------------------------------------------------------------------------------------

def _owner() -> str:
    return secrets.token_hex(12)


def _export(owner: str, **values) -> ExportTask:
    export_task_id = values.pop("export_task_id", None) or ids.new_id()
    fields = dict(
        export_task_id=export_task_id, owner=owner, project_id="proj", instance_id="", resource_type="BatchTask",
        batch_task_id=ids.new_id(), export_format="xls", app_type="GLOBAL", app_id=None,
        conditions_key=f"conditions-{export_task_id}", status=rules.STATUS_PROCESSING, status_desc=None,
        progress=1, export_count=0, create_time=1_000, end_time=None, version=1, run_state="queued",
        run_token=None, attempts=0, worker_id=None, lease_until=None, queued_at=1_000, file_generation=0,
        file_size=None, file_sha256=None, file_key=None)
    fields.update(values)
    return ExportTask(**fields)


def _insert(store, *tasks: ExportTask) -> None:
    with store.transaction() as tx:
        for t in tasks:
            tx.insert_export_task(t)


def _batch(project_id: str = "proj", instance_id: str = "", app_id: str = "default", status: str = "Success",
           task_type: str = "firmwareUpgrade", **values) -> BatchTask:
    fields = dict(task_id=ids.new_id(), project_id=project_id, instance_id=instance_id, app_id=app_id,
                  task_name="t", task_type=task_type, task_mode="", need_confirm=False,
                  task_ext_info={"k": "温度"}, targets=["a", "b"], targets_filter=None,
                  document={"package_id": "p"}, task_policy=None, document_source="", status=status,
                  status_desc="", create_time=1_000)
    fields.update(values)
    return BatchTask(**fields)


def _subtasks(n: int, status: str = "Success") -> list[tuple]:
    return [(ids.new_id(), f"dev_{i:05d}", status, f"out {i}", "", "") for i in range(n)]


# -- export tasks ----------------------------------------------------------------------------------

def test_an_export_task_reads_back_as_it_was_inserted(store) -> None:
    owner = _owner()
    task = _export(owner, app_id="default", app_type="APP", status_desc="d", lease_until=5, file_key="k/1")
    _insert(store, task)
    assert store.reader().export_task(task.export_task_id) == task
    assert store.reader().export_task(ids.new_id()) is None
    assert store.reader().export_task_same_conditions(owner, task.conditions_key) == task
    assert store.reader().export_task_same_conditions(_owner(), task.conditions_key) is None
    other = _export(owner)
    _insert(store, other)
    got = store.reader().export_tasks_by_ids([task.export_task_id, ids.new_id(), other.export_task_id])
    assert sorted(got, key=lambda t: t.export_task_id) == [task, other]


def test_many_ids_at_once(store) -> None:
    owner = _owner()
    tasks = [_export(owner) for _ in range(1203)]  # more than SQLite's IN chunk, twice
    _insert(store, *tasks)
    got = store.reader().export_tasks_by_ids([t.export_task_id for t in tasks])
    assert {t.export_task_id for t in got} == {t.export_task_id for t in tasks}


def test_list_pages_newest_first_by_marker_and_offset_with_filters(store) -> None:
    owner = _owner()
    tasks = [_export(owner, app_type="APP" if i % 2 else "GLOBAL", instance_id="inst") for i in range(7)]
    _insert(store, *tasks, _export(owner, instance_id="elsewhere"), _export(_owner(), instance_id="inst"))
    newest_first = [t.export_task_id for t in reversed(tasks)]
    reader = store.reader()
    page, count = reader.list_export_tasks(owner, "inst", {}, rules.MARKER_DEFAULT, 0, 3)
    assert count == 7 and [t.export_task_id for t in page] == newest_first[:3]
    page, count = reader.list_export_tasks(owner, "inst", {}, page[-1].export_task_id, 1, 3)
    assert count == 7 and [t.export_task_id for t in page] == newest_first[4:7]
    page, count = reader.list_export_tasks(owner, "inst", {"app_type": "APP", "app_id": ""}, rules.MARKER_DEFAULT,
                                           0, 50)
    assert count == 3 and [t.export_task_id for t in page] == [t.export_task_id for t in reversed(tasks)
                                                               if t.app_type == "APP"]
    assert reader.list_export_tasks(owner, "inst", {"batch_task_id": tasks[0].batch_task_id},
                                    rules.MARKER_DEFAULT, 0, 50)[1] == 1


def test_counts_and_the_earliest_finished(store) -> None:
    owner = _owner()
    finished = [_export(owner, status=s, create_time=t, run_state="done")
                for s, t in ((rules.STATUS_SUCCESS, 30), (rules.STATUS_FAILED, 20), (rules.STATUS_SUCCESS, 20))]
    _insert(store, _export(owner, create_time=1), *finished)
    reader = store.reader()
    assert reader.count_export_tasks(owner) == 4
    assert reader.count_export_tasks(owner, unfinished_only=True) == 1
    earliest = min(finished[1:], key=lambda t: t.export_task_id)  # create_time ties: the lower id
    assert reader.earliest_finished_export_task(owner) == earliest
    assert reader.earliest_finished_export_task(_owner()) is None


def test_update_bumps_the_version_and_expect_run_token_guards_it(store) -> None:
    owner = _owner()
    task = _export(owner, run_state="running", run_token="run-1", version=4)
    _insert(store, task)
    with store.transaction() as tx:
        assert tx.update_export_task(task.export_task_id, progress=50, export_count=10)
        assert not tx.update_export_task(task.export_task_id, expect_run_token="run-2", progress=60)
        assert tx.update_export_task(task.export_task_id, expect_run_token="run-1", progress=70)
        assert not tx.update_export_task(ids.new_id(), progress=1)
    got = store.reader().export_task(task.export_task_id)
    assert (got.progress, got.export_count, got.version) == (70, 10, 6)
    with store.transaction() as tx:
        tx.update_export_task(task.export_task_id, run_state="queued", run_token=None)  # e.g. re-queued
        assert not tx.update_export_task(task.export_task_id, expect_run_token="run-1", progress=80)


def test_a_transaction_that_raises_changes_nothing(store) -> None:
    owner = _owner()
    task = _export(owner)
    with pytest.raises(RuntimeError):
        with store.transaction(lock_key=owner) as tx:
            tx.insert_export_task(task)
            raise RuntimeError("rolled back")
    assert store.reader().export_task(task.export_task_id) is None


def test_request_ids_and_deletion(store) -> None:
    owner = _owner()
    task = _export(owner)
    _insert(store, task)
    with store.transaction(lock_key=owner) as tx:
        tx.insert_request(owner, "req-1", task.export_task_id, 5)
    assert store.reader().request_task_id(owner, "req-1") == task.export_task_id
    assert store.reader().request_task_id(_owner(), "req-1") is None
    with store.transaction(lock_key=owner) as tx:
        tx.delete_export_task(task.export_task_id)
    assert store.reader().export_task(task.export_task_id) is None
    assert store.reader().request_task_id(owner, "req-1") is None


# -- the job queue ---------------------------------------------------------------------------------

def _drain_queue(store) -> None:
    """Earlier tests' queued tasks out of the way (the queue is the store's, not an owner's)."""
    with store.transaction() as tx:
        while tx.claim_export("drain", "drain", 0, 0) is not None:
            pass
        for t in tx.running_exports():
            tx.update_export_task(t.export_task_id, status=rules.STATUS_FAILED, run_state="done", run_token=None)


def test_claims_take_the_oldest_queued_first_and_each_once(store) -> None:
    _drain_queue(store)
    owner = _owner()
    late, early = _export(owner, queued_at=2_000), _export(owner, queued_at=1_500, attempts=1, version=3)
    _insert(store, late, early, _export(owner, status=rules.STATUS_SUCCESS, run_state="done"))
    assert store.reader().has_queued_export()
    assert store.reader().count_exports_by_run_state() == {"queued": 2}
    with store.transaction() as tx:
        first = tx.claim_export("w1", "tok-1", 3_000, 33_000)
    assert first.export_task_id == early.export_task_id
    assert (first.run_state, first.run_token, first.worker_id, first.lease_until, first.attempts, first.version) \
        == ("running", "tok-1", "w1", 33_000, 2, 4)
    assert store.reader().export_task(early.export_task_id) == first
    with store.transaction() as tx:
        assert tx.claim_export("w2", "tok-2", 3_000, 33_000).export_task_id == late.export_task_id
        assert tx.claim_export("w3", "tok-3", 3_000, 33_000) is None
    assert not store.reader().has_queued_export()
    assert store.reader().count_exports_by_run_state() == {"running": 2}


def test_leases_renew_only_for_the_current_run_and_expire(store) -> None:
    _drain_queue(store)
    owner = _owner()
    a = _export(owner, run_state="running", run_token="a", lease_until=10_000, version=2)
    b = _export(owner, run_state="running", run_token="b", lease_until=20_000)
    _insert(store, a, b, _export(owner, status=rules.STATUS_SUCCESS, run_state="done"))
    with store.transaction() as tx:
        assert tx.renew_lease(a.export_task_id, "a", 15_000)
        assert not tx.renew_lease(a.export_task_id, "not-a", 99_000)
    renewed = store.reader().export_task(a.export_task_id)
    assert (renewed.lease_until, renewed.version) == (15_000, 2)  # no version bump: no watcher woken
    with store.transaction() as tx:
        assert {t.export_task_id for t in tx.running_exports()} == {a.export_task_id, b.export_task_id}
        assert [t.export_task_id for t in tx.running_exports(lease_expired_before=16_000)] == [a.export_task_id]
        assert tx.running_exports(lease_expired_before=15_000) == []


def test_file_ids_and_keys(store) -> None:
    owner = _owner()
    kept = _export(owner, file_key="objects/kept", file_generation=1, file_size=3, file_sha256="0" * 64)
    plain = _export(owner)
    _insert(store, kept, plain)
    reader = store.reader()
    assert {kept.export_task_id, plain.export_task_id} <= reader.all_export_file_ids()
    assert "objects/kept" in reader.all_export_file_keys() and None not in reader.all_export_file_keys()


# -- download marks --------------------------------------------------------------------------------

def test_download_marks_count_resume_and_restore(store) -> None:
    owner = _owner()
    assert store.reader().download_limit(owner) is None
    with store.transaction(lock_key=owner) as tx:
        tx.set_download_limit(owner, 1_000, "task-a", 1)
    first = store.reader().download_limit(owner)
    assert first == DownloadMark(1_000, "task-a", 1, 0, 0)
    with store.transaction(lock_key=owner) as tx:
        tx.record_resume(owner, 4096)
    resumed = store.reader().download_limit(owner)
    assert resumed == DownloadMark(1_000, "task-a", 1, 4096, 1)
    with store.transaction(lock_key=owner) as tx:
        tx.set_download_limit(owner, 50_000, "task-b", 2)
    second = store.reader().download_limit(owner)
    with store.transaction(lock_key=owner) as tx:
        assert not tx.restore_download_limit(owner, first, None)  # stale: a later download stays counted
        assert tx.restore_download_limit(owner, second, resumed)
    assert store.reader().download_limit(owner) == resumed
    with store.transaction(lock_key=owner) as tx:
        assert tx.restore_download_limit(owner, resumed, None)
    assert store.reader().download_limit(owner) is None


# -- principals ------------------------------------------------------------------------------------

def test_principals_by_each_unique_column_and_their_removal(store) -> None:
    subject = f"CN=client-{secrets.token_hex(4)}"
    p, token = auth.new_principal(f"u-{secrets.token_hex(4)}", "proj", auth.statements_for(["iotda:exporttasks:*"]),
                                  client_cert_subject=subject, client_cert_san=f"{secrets.token_hex(4)}.example")
    before = store.reader().count_principals()
    with store.transaction() as tx:
        tx.insert_principal(p, auth.token_hash(token))
    reader = store.reader()
    for column, value in (("user", p.user), ("principal_id", p.principal_id), ("ak", p.ak),
                          ("token_sha256", auth.token_hash(token)), ("client_cert_subject", subject),
                          ("client_cert_san", p.client_cert_san)):
        assert reader.principal_by(column, value) == p, column
    assert reader.principal_by("user", "nobody-" + secrets.token_hex(4)) is None
    for column in ("sk", 'user" = "user" OR "user'):  # not a lookup column: refused before any SQL, also under -O
        with pytest.raises(ValueError, match="not looked up by"):
            reader.principal_by(column, "x")
    assert reader.count_principals() == before + 1 and p in reader.list_principals()

    owned = [_export(p.principal_id), _export(p.principal_id)]
    theirs = _export(_owner())
    _insert(store, *owned, theirs)
    with store.transaction(lock_key=p.principal_id) as tx:
        tx.insert_request(p.principal_id, "r", owned[0].export_task_id, 1)
        tx.set_download_limit(p.principal_id, 1, owned[0].export_task_id, 1)
    with store.transaction(lock_key=p.principal_id) as tx:
        deleted = tx.delete_principal(p.principal_id)
    assert sorted(deleted) == sorted(t.export_task_id for t in owned)
    reader = store.reader()
    assert reader.principal_by("principal_id", p.principal_id) is None
    assert reader.count_export_tasks(p.principal_id) == 0 and reader.export_task(theirs.export_task_id) == theirs
    assert reader.request_task_id(p.principal_id, "r") is None and reader.download_limit(p.principal_id) is None


# -- batch tasks and sub-tasks ---------------------------------------------------------------------

def test_a_batch_task_reads_back_with_its_progress_in_its_scope_only(store) -> None:
    task = _batch()
    with store.transaction() as tx:
        tx.insert_batch_task(task)
        tx.insert_subtasks(task.task_id, _subtasks(3) + [(ids.new_id(), "dev_f", "Fail", "", "E1", "m")])
    got = store.reader().batch_task("proj", "", task.task_id)
    assert (got.progress.total, got.progress.success, got.progress.fail) == (4, 3, 1)
    assert got.task_ext_info == {"k": "温度"} and got.targets == ["a", "b"] and got.need_confirm is False
    assert store.reader().batch_task("proj", "", task.task_id, with_progress=False).progress.total == 0
    assert store.reader().batch_task("other", "", task.task_id) is None
    assert store.reader().batch_task("proj", "inst", task.task_id) is None
    with store.transaction() as tx:
        tx.set_batch_status(task.task_id, "PartialSuccess", "some failed")
    got = store.reader().batch_task("proj", "", task.task_id)
    assert (got.status, got.status_desc) == ("PartialSuccess", "some failed")
    with store.transaction() as tx:
        tx.delete_batch_task(task.task_id)
    assert store.reader().batch_task("proj", "", task.task_id) is None
    assert store.reader().count_subtasks(task.task_id) == 0


def test_batch_task_lists_page_and_filter(store) -> None:
    project = f"p{secrets.token_hex(6)}"
    tasks = [_batch(project, app_id="a1" if i % 2 else "a2", status="Success" if i < 3 else "Fail") for i in range(5)]
    with store.transaction() as tx:
        for t in tasks:
            tx.insert_batch_task(t)
        tx.insert_batch_task(_batch(project, task_type="createCommands"))
    reader = store.reader()
    page, count = reader.list_batch_tasks(project, "", "firmwareUpgrade", "", "", rules.MARKER_DEFAULT, 1, 2)
    assert count == 5 and [t.task_id for t in page] == [t.task_id for t in reversed(tasks)][1:3]
    page, count = reader.list_batch_tasks(project, "", "firmwareUpgrade", "a1", "", page[0].task_id, 0, 50)
    assert count == 2 and [t.task_id for t in page] == [tasks[1].task_id]
    assert reader.list_batch_tasks(project, "", "firmwareUpgrade", "a2", "Fail", rules.MARKER_DEFAULT, 0, 50)[1] == 1


def test_subtask_lists_rows_statuses_and_streams(store) -> None:
    task = _batch()
    rows = _subtasks(2500) + [(ids.new_id(), "dev_fail", "Fail", "", "E", "m")]
    with store.transaction() as tx:
        tx.insert_batch_task(task)
        tx.insert_subtasks(task.task_id, iter(rows))  # any iterable
    reader = store.reader()
    assert reader.count_subtasks(task.task_id) == 2501
    assert [tuple(r) for r in reader.subtask_rows(task.task_id, "", 5000)] == rows
    assert [tuple(r) for r in reader.subtask_rows(task.task_id, rows[9][0], 3)] == rows[10:13]
    page, count = reader.list_subtasks(task.task_id, "", "", rows[100][0], 2, 3)
    assert count == 2501 and [s.id for s in page] == [r[0] for r in rows[95:98]][::-1]
    page, count = reader.list_subtasks(task.task_id, "Fail", "", rules.MARKER_DEFAULT, 0, 10)
    assert count == 1 and page[0].target == "dev_fail" and page[0].error_code == "E"
    assert reader.list_subtasks(task.task_id, "", "dev_00007", rules.MARKER_DEFAULT, 0, 10)[1] == 1
    asked = [f"dev_{i:05d}" for i in range(0, 2500, 2)] + ["not_a_target"]  # more than SQLite's IN chunk
    assert reader.subtask_statuses(task.task_id, asked) == {t: "Success" for t in asked[:-1]}
    with store.snapshot() as snap:
        blocks = list(snap.stream_subtask_columns(task.task_id, 1000))
    assert [len(b[0]) for b in blocks] == [1000, 1000, 501] and all(len(b) == 5 for b in blocks)
    assert [list(r) for b in blocks for r in zip(*b)] == [list(r[1:]) for r in rows]


def test_upserted_results_keep_the_ids_of_known_targets(store) -> None:
    task = _batch(targets=[])
    rows = _subtasks(3, status="Processing")
    with store.transaction() as tx:
        tx.insert_batch_task(task)
        tx.insert_subtasks(task.task_id, rows)
    new_id = ids.new_id()
    with store.transaction() as tx:
        tx.upsert_subtask_results(task.task_id, [(ids.new_id(), "dev_00001", "Fail", "", "E9", "gone"),
                                                 (new_id, "dev_new", "Success", "ok", "", "")])
        tx.upsert_subtask_results(task.task_id, [(ids.new_id(), "dev_00002", "Success", "done", "", "")])
    got = {r[1]: tuple(r) for r in store.reader().subtask_rows(task.task_id, "", 100)}
    assert got == {"dev_00000": rows[0], "dev_00001": (rows[1][0], "dev_00001", "Fail", "", "E9", "gone"),
                   "dev_00002": (rows[2][0], "dev_00002", "Success", "done", "", ""),
                   "dev_new": (new_id, "dev_new", "Success", "ok", "", "")}
    assert store.reader().subtask_progress(task.task_id).total == 4


def test_a_snapshot_does_not_see_later_commits(store) -> None:
    task = _batch()
    with store.transaction() as tx:
        tx.insert_batch_task(task)
        tx.insert_subtasks(task.task_id, _subtasks(3))
    with store.snapshot() as snap:
        assert snap.count_subtasks(task.task_id) == 3
        with store.transaction() as tx:
            tx.insert_subtasks(task.task_id, [(ids.new_id(), "dev_late", "Success", "", "", "")])
        assert snap.count_subtasks(task.task_id) == 3
    assert store.reader().count_subtasks(task.task_id) == 4


def test_the_schema_is_current_and_reachable(store) -> None:
    version = store.schema_version()
    assert version >= 5 and store.check_schema() == version == store.check_reachable() == store.migrate()


# -- passing failures leave as StoreUnavailable ----------------------------------------------------

def _public_methods(cls) -> dict:
    """Its own and inherited (store/sqltx.py's) public methods."""
    import inspect
    return {name: member for name, member in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


@pytest.mark.parametrize("module", ["sqlite", "postgres"])
def test_every_query_method_turns_driver_outages_into_store_unavailable(module) -> None:
    # A method added to a store later is wrapped too (the class decorator); this proves it is, and that
    # the query class offers the whole contract.
    import importlib

    from iotda_export_server.store import contract
    tx_class = {"sqlite": "SqliteTx", "postgres": "PgTx"}[module]
    methods = _public_methods(getattr(importlib.import_module(f"iotda_export_server.store.{module}"), tx_class))
    unwrapped = sorted(name for name, method in methods.items() if not hasattr(method, "__wrapped__"))
    assert unwrapped == []
    wanted = {name for proto in (contract.StoreReader, contract.StoreTx, contract.StoreSnapshot)
              for name in vars(proto) if not name.startswith("_")}
    assert wanted <= set(methods)


def test_sqlite_locked_past_its_busy_timeout_is_store_unavailable_busy(tmp_path, monkeypatch) -> None:
    import sqlite3

    from iotda_export_server.domain.errors import StoreUnavailable
    from iotda_export_server.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)  # read when this thread's connection opens
    store = sqlite_store.SqliteStore(tmp_path / "busy.db")
    store.migrate()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(StoreUnavailable) as raised:
            with store.transaction():
                pass
        assert raised.value.busy
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreUnavailable):  # a query method, not only BEGIN
            store.reader().insert_request("owner", "request", "task", 1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with store.transaction() as tx:  # passes: the lock is free again
        tx.insert_request("owner", "request", "task", 1)
    store.close()


def test_postgres_out_of_reach_is_store_unavailable_and_names_no_password() -> None:
    import psycopg

    from iotda_export_server.domain.errors import StoreUnavailable
    from iotda_export_server.store.postgres import PgStore

    # Port 1: nothing listens; the password must not reach the message (libpq never echoes it).
    store = PgStore("postgresql://postgres:s3cret-pass@127.0.0.1:1/nothing?connect_timeout=2")
    for attempt in (lambda: store.reader().export_task("x"), lambda: store.transaction().__enter__(),
                    lambda: store.snapshot().__enter__(), store.schema_version):
        with pytest.raises(StoreUnavailable) as raised:
            attempt()
        assert not raised.value.busy
        assert isinstance(raised.value.__cause__, psycopg.OperationalError)
        assert "s3cret-pass" not in str(raised.value)


def test_the_transport_answers_store_unavailable_as_unavailable_without_its_words() -> None:
    from iotda_export_server.domain.errors import StoreUnavailable
    from iotda_export_server.transport import errors

    busy = errors.from_exception(StoreUnavailable("the database is busy (database is locked)", busy=True), "r1")
    gone = errors.from_exception(StoreUnavailable("the database is unavailable (OperationalError: host x)"), "r2")
    assert (errors.grpc_code(busy).name, busy.message) == ("UNAVAILABLE", "The service is busy; retry shortly.")
    assert (errors.grpc_code(gone).name, gone.message) == ("UNAVAILABLE", "The database is unavailable; retry shortly.")


@pytest.mark.parametrize("failure, traceback_logged", [
    ("store", False), ("files", False), ("fault", True)])
def test_background_loops_log_a_passing_outage_as_one_line(failure, traceback_logged, caplog) -> None:
    # A database restart makes every worker, supervisor and progress hub fail a round: one line each
    # says so; only a fault (a bug) is logged with its traceback. Shown on the progress hub's poll.
    import asyncio
    import logging

    from iotda_export_server.domain.errors import FilesUnavailable, StoreUnavailable
    from iotda_export_server.domain.progress import ProgressHub

    error = {"store": StoreUnavailable("the database is unavailable (OperationalError: gone)"),
             "files": FilesUnavailable("the bucket is out of reach"), "fault": KeyError("bug")}[failure]

    async def load(_ids):
        raise error

    async def one_failed_round():
        hub = ProgressHub(load, poll_interval=0.01)
        runner = asyncio.create_task(hub.run())
        hub.subscribe("t" * 24, _export(_owner()))
        for _ in range(500):  # the hub polls every 10 ms; a deadline of 5 s
            if any("progress poll failed" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        runner.cancel()

    with caplog.at_level(logging.WARNING, logger="iotda_export.progress"):
        asyncio.run(one_failed_round())
    record = next(r for r in caplog.records if "progress poll failed" in r.getMessage())
    assert str(error) in record.getMessage()
    assert bool(record.exc_info) is traceback_logged
