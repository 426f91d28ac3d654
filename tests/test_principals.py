"""Principals are owned by an immutable id, not by their user name (issue 11): a user removed and added
again under the same name is a new principal that inherits nothing (tasks, files, idempotency records,
quota counts, the download window); removal deletes what the principal owned in one locked
transaction, also against calls racing it; existing databases migrate their owners from names to ids.

Every scenario runs on SQLite and on PostgreSQL (a database of its own on the machine's server).
Exports are run in-process by the worker's own code (`run_export`), so each step happens when the
test says.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time

import grpc
import psycopg
import pytest

import pg_support as ps
from conftest import refused, rpc_failure, wait_for
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc
from iotda_export_server.app import add_principal
from iotda_export_server.config import FilesConfig
from iotda_export_server.domain import auth, errors
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.domain.exports import CreateExportRequest, ExportService
from iotda_export_server.domain.jobs import ExportJobs
from iotda_export_server.domain.model import Caller, ResourceCondition
from iotda_export_server.runner.worker import run_export
from iotda_export_server.store import open_store
from iotda_export_server.store import postgres as pg_store
from iotda_export_server.store import sqlite as sqlite_store
from iotda_export_server.store.records import EXPORT_COLUMNS, SchemaError
from iotda_export_server.testing import ServerThread

Code = grpc.StatusCode
HEX24 = re.compile(r"^[0-9a-f]{24}$")


# -- harness ---------------------------------------------------------------------------------------

class Backend:
    """A server without workers on SQLite or PostgreSQL, and what a test needs around it."""

    def __init__(self, kind: str, tmp_path):
        self.kind = kind
        self.db = None
        config = {}
        if kind == "postgres":
            self.db = ps.TestDatabase().create()
            open_store(tmp_path / "migrate", self.db.url, migrate=True).close()
            config = dict(database=self.db.url, files=FilesConfig(dir=str(tmp_path / "files")))
        self.server = ServerThread(tmp_path / "data", workers=0, **config)
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = export_task_pb2_grpc.ExportTaskServiceStub(self.channel)

    @property
    def store(self):
        return self.server.store

    @property
    def files(self):
        return self.server.server.files

    def state_flags(self) -> list[str]:
        """The CLI flags that name this server's state."""
        flags = ["--data-dir", self.server.data_dir, "--files-dir", str(self.files.dir)]
        return flags + (["--database", self.db.url] if self.db else [])

    def rows_owned_by(self, principal_id: str) -> dict[str, int]:
        c = self.store.reader().conn
        placeholder = "%s" if self.db else "?"
        return {table: c.execute(f"SELECT count(*) FROM {table} WHERE owner = {placeholder}",
                                 (principal_id,)).fetchone()[0]
                for table in ("export_tasks", "export_requests", "download_limits")}

    def run_queued(self) -> int:
        """Runs every queued export to its end with the worker's code, in this process."""
        jobs = ExportJobs(self.store, self.files)
        n = 0
        while (claim := jobs.claim(f"test-{secrets.token_hex(3)}")) is not None:
            assert run_export(self.files, jobs, claim)
            n += 1
        return n

    def close(self) -> None:
        self.channel.close()
        self.server.stop()
        if self.db is not None:
            self.db.drop()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


class As:
    """gRPC calls as one principal (its credentials document)."""

    def __init__(self, backend: Backend, creds: dict):
        self.b, self.creds = backend, creds
        self.md = (("authorization", f"Bearer {creds['token']}"),)
        self.project = creds["project_id"]

    def create(self, task_id: str, request_id: str = "") -> epb.ExportTask:
        return self.b.stub.CreateExportTask(epb.CreateExportTaskRequest(
            project_id=self.project, resource_type="BatchTask",
            resource_condition=epb.ResourceCondition(task_id=task_id),
            request_id=request_id), metadata=self.md).export_task

    def get(self, export_task_id: str) -> epb.ExportTask:
        return self.b.stub.GetExportTask(epb.GetExportTaskRequest(project_id=self.project,
                                                                  export_task_id=export_task_id),
                                         metadata=self.md).export_task

    def list(self) -> epb.ListExportTasksResponse:
        return self.b.stub.ListExportTasks(epb.ListExportTasksRequest(project_id=self.project, limit=50),
                                           metadata=self.md)

    def download(self, export_task_id: str) -> bytes:
        return b"".join(m.body.data for m in self.b.stub.ShowExportTask(epb.ShowExportTaskRequest(
            project_id=self.project, export_task_id=export_task_id), metadata=self.md))


# -- remove + re-add -------------------------------------------------------------------------------

def test_a_user_removed_and_added_again_inherits_nothing(backend):
    b = backend
    project = f"p-{secrets.token_hex(6)}"
    name = f"alice-{secrets.token_hex(3)}"
    batches = [seed_batch_task(b.store, project, "", 3 + i, seed=i) for i in range(7)]
    old = As(b, add_principal(b.store, name, project))
    assert HEX24.match(old.creds["principal_id"])

    # The old principal: a finished export (made with a request id), downloaded (its 30 s window
    # starts), and five unfinished ones (its quota is full).
    done = old.create(batches[0], request_id="req-1")
    assert b.run_queued() == 1
    old_file = b.files.path(done.export_task_id)
    assert old.download(done.export_task_id) == old_file.read_bytes()
    downloaded_at = time.monotonic()
    unfinished = [old.create(t).export_task_id for t in batches[1:6]]
    assert refused(lambda: old.create(batches[6]), Code.RESOURCE_EXHAUSTED).error_code == "IOTDA.018002"
    old_id = old.creds["principal_id"]
    assert b.rows_owned_by(old_id) == {"export_tasks": 6, "export_requests": 1, "download_limits": 1}

    r = ps.run_cli("principal", "remove", *b.state_flags(), "--user", name)
    assert "its export tasks and their files are deleted" in r.stderr
    assert refused(old.list, Code.UNAUTHENTICATED).error_code == "IOTDA.000002"
    assert b.rows_owned_by(old_id) == {"export_tasks": 0, "export_requests": 0, "download_limits": 0}
    assert not old_file.exists()
    assert sorted(p.name for p in b.files.dir.iterdir()) == []

    new = As(b, add_principal(b.store, name, project))
    assert new.creds["user"] == name and new.creds["principal_id"] != old_id
    assert new.list().page.count == 0
    for export_task_id in (done.export_task_id, *unfinished):
        assert refused(lambda: new.get(export_task_id), Code.NOT_FOUND).error_code == "IOTDA.018001"
    assert refused(lambda: new.download(done.export_task_id), Code.NOT_FOUND).error_code == "IOTDA.018001"
    # The old idempotency record is gone: the same request id makes a new task.
    again = new.create(batches[0], request_id="req-1")
    assert again.export_task_id != done.export_task_id and again.status == "Processing"
    # Fresh quota: five unfinished (this one and four more), the sixth refused.
    for t in batches[1:5]:
        new.create(t)
    assert refused(lambda: new.create(batches[5]), Code.RESOURCE_EXHAUSTED).error_code == "IOTDA.018002"
    # Fresh download window: a download within 30 s of the old principal's is not rate limited.
    assert b.run_queued() == 5
    assert new.download(again.export_task_id) == b.files.path(again.export_task_id).read_bytes()
    assert time.monotonic() - downloaded_at < 30, "too slow to prove the download window is fresh"


def test_removal_is_by_name_and_reports_an_unknown_one(backend):
    b = backend
    creds = add_principal(b.store, f"bob-{secrets.token_hex(3)}", "some-project")
    assert not auth.remove_principal(b.store, b.files, "nobody-of-that-name")
    assert auth.remove_principal(b.store, b.files, creds["user"])
    assert not auth.remove_principal(b.store, b.files, creds["user"])
    assert b.store.reader().principal_by("principal_id", creds["principal_id"]) is None


# -- calls racing a removal ------------------------------------------------------------------------

def _caller(store, creds: dict) -> Caller:
    return Caller(principal=store.reader().principal_by("principal_id", creds["principal_id"]),
                  project_id=creds["project_id"], instance_id="")


def test_a_call_authenticated_before_the_removal_leaves_nothing_after_it(backend):
    """The create and the download of a principal authenticated just before its removal run their
    transaction after it: refused, and nothing of theirs remains."""
    b = backend
    creds = add_principal(b.store, f"carol-{secrets.token_hex(3)}", "race-project")
    batch = seed_batch_task(b.store, "race-project", "", 4, seed=4)
    service = ExportService(b.store, b.files)
    caller = _caller(b.store, creds)  # authenticated
    done = service.create(caller, CreateExportRequest("BatchTask", ResourceCondition(batch), "", "", "", "r1"))
    b.run_queued()
    assert auth.remove_principal(b.store, b.files, creds["user"])  # removed before the calls' transactions

    with pytest.raises(errors.Unauthenticated):
        service.create(caller, CreateExportRequest(
            "BatchTask", ResourceCondition(seed_batch_task(b.store, "race-project", "", 2)), "", "", "", "r2"))
    with pytest.raises(errors.ExportTaskNotFound):
        service.admit_download(caller, done.export_task_id, 0, 0)
    assert b.rows_owned_by(creds["principal_id"]) == {"export_tasks": 0, "export_requests": 0,
                                                      "download_limits": 0}
    assert list(b.files.dir.iterdir()) == []


def test_concurrent_creates_during_the_removal_leave_nothing_behind(backend):
    b = backend
    project = f"storm-{secrets.token_hex(4)}"
    creds = add_principal(b.store, f"dave-{secrets.token_hex(3)}", project)
    batches = [seed_batch_task(b.store, project, "", 2, seed=i) for i in range(40)]
    user = As(b, creds)
    stop = threading.Event()
    outcomes: list[str] = []

    def creator(k: int):
        i = 0
        while not stop.is_set():
            try:
                user.create(batches[(k * 7 + i) % len(batches)], request_id=f"c{k}-{i}")
                outcomes.append("OK")
            except grpc.RpcError as e:
                f = rpc_failure(e)
                outcomes.append(f.code.name)
                if f.code == Code.RESOURCE_EXHAUSTED:  # five unfinished: make room, keep racing
                    try:
                        for t in user.list().export_tasks:
                            if t.status == "Processing":
                                b.stub.CancelExportTask(epb.CancelExportTaskRequest(
                                    project_id=project, export_task_id=t.export_task_id), metadata=user.md)
                    except grpc.RpcError:  # removed meanwhile: the next create says so
                        pass
                elif f.code == Code.UNAUTHENTICATED:
                    return
                else:
                    raise AssertionError(f"unexpected refusal {f.code.name}: {f.message}")
            i += 1

    threads = [threading.Thread(target=creator, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: outcomes.count("OK") >= 8, timeout=30, what="creates before the removal")
    assert auth.remove_principal(b.store, b.files, creds["user"])
    wait_for(lambda: not any(t.is_alive() for t in threads), timeout=30, what="every creator to be refused")
    stop.set()
    for t in threads:
        t.join()
    assert outcomes.count("UNAUTHENTICATED") == 4
    assert b.rows_owned_by(creds["principal_id"]) == {"export_tasks": 0, "export_requests": 0,
                                                      "download_limits": 0}
    assert b.store.reader().list_export_tasks(creds["principal_id"], "", {}, "f" * 24, 0, 50)[1] == 0
    assert list(b.files.dir.iterdir()) == []


def test_a_worker_finishing_a_removed_principals_run_drops_its_file(backend):
    b = backend
    creds = add_principal(b.store, f"erin-{secrets.token_hex(3)}", "finish-project")
    user = As(b, creds)
    t = user.create(seed_batch_task(b.store, "finish-project", "", 300, seed=9))
    jobs = ExportJobs(b.store, b.files)
    claim = jobs.claim("finisher")
    assert claim is not None and claim.task.export_task_id == t.export_task_id
    assert auth.remove_principal(b.store, b.files, creds["user"])  # while the run is running
    assert run_export(b.files, jobs, claim) is False  # the row is gone: nothing published
    temp = b.files.temp_path(t.export_task_id)
    temp.write_bytes(b"PK\x05\x06")
    assert jobs.succeed(claim, temp, rows=300, size=4, sha256=hashlib.sha256(b"PK\x05\x06").hexdigest()) is False
    assert list(b.files.dir.iterdir()) == []
    assert b.store.reader().export_task(t.export_task_id) is None


def test_the_gateway_vouches_by_id_so_a_re_added_name_is_not_the_old_principal(backend):
    """The gateway passes on the id of the principal whose signature it checked: if that principal is
    removed (and another added under its name) before the gRPC call, the call is unauthenticated."""
    b = backend
    project = f"vouch-{secrets.token_hex(4)}"
    old = add_principal(b.store, f"frank-{secrets.token_hex(3)}", project)
    authenticator = auth.Authenticator(b.store, front_end_key="k" * 64)
    assert authenticator.authenticate("", old["principal_id"], "k" * 64).user == old["user"]
    assert auth.remove_principal(b.store, b.files, old["user"])
    new = add_principal(b.store, old["user"], project)
    with pytest.raises(errors.Unauthenticated):
        authenticator.authenticate("", old["principal_id"], "k" * 64)
    with pytest.raises(errors.Unauthenticated):  # a name is not an id
        authenticator.authenticate("", old["user"], "k" * 64)
    assert authenticator.authenticate("", new["principal_id"], "k" * 64).principal_id == new["principal_id"]


# -- migration of existing databases ---------------------------------------------------------------

# Rows of a database written by version 1/2 code: owners are user names. "gone" was removed before
# the upgrade (its rows were left behind by the old removal).
TOKENS = {"alice": "a" * 64, "bob": "b" * 64}
V1_COLUMNS = {
    "principals": '"user", project_id, enterprise_project_id, token_sha256, ak, sk, policy, created_at',
    "export_tasks": ", ".join(EXPORT_COLUMNS).replace(", file_key", ""),  # file_key came with version 5
    "export_requests": "owner, request_id, export_task_id, created_at",
    "download_limits": "owner, last_at, export_task_id, file_generation",
}
V1_ROWS = [
    ("principals", [(user, "mig-project", "0", hashlib.sha256(tok.encode()).hexdigest(), f"AK{user.upper():0<18}",
                     "s" * 40, '{"Version": "1.1", "Statement": [{"Effect": "Allow", "Action": ["iotda:*:*"]}]}',
                     1_700_000_000_000) for user, tok in TOKENS.items()]),
    ("export_tasks", [(f"{i:024x}", owner, "mig-project", "", "BatchTask", f"{100 + i:024x}", "xls", "GLOBAL", None,
                       f'["mig-project","","BatchTask","{100 + i:024x}","xls","GLOBAL",null]', "Success", None, 100,
                       3, 1_700_000_000_000 + i, 1_700_000_000_500 + i, 3, "done", None, 1, None, None,
                       1_700_000_000_000 + i, 1, 4, "0" * 64)
                      for i, owner in enumerate(["alice", "alice", "bob", "gone"], start=1)]),
    ("export_requests", [("alice", "req-a", f"{1:024x}", 1_700_000_000_000),
                         ("gone", "req-g", f"{4:024x}", 1_700_000_000_000)]),
    ("download_limits", [("bob", 1_700_000_000_000, f"{3:024x}", 1), ("gone", 1_700_000_000_000, f"{4:024x}", 1)]),
]


def _check_migrated(rows_of) -> dict[str, str]:
    """Checks the migrated rows (rows_of(sql) -> list of tuples); returns user -> principal_id."""
    ids = dict(rows_of('SELECT "user", principal_id FROM principals'))
    assert set(ids) == {"alice", "bob"}
    assert all(HEX24.match(v) for v in ids.values()) and len(set(ids.values())) == 2
    owners = dict(rows_of("SELECT export_task_id, owner FROM export_tasks"))
    assert owners == {f"{1:024x}": ids["alice"], f"{2:024x}": ids["alice"], f"{3:024x}": ids["bob"]}
    assert rows_of("SELECT owner, request_id FROM export_requests") == [(ids["alice"], "req-a")]
    assert rows_of("SELECT owner, export_task_id FROM download_limits") == [(ids["bob"], f"{3:024x}")]
    return ids


@pytest.mark.parametrize("from_version", [1, 2])
def test_a_sqlite_database_of_an_earlier_version_migrates_owners_to_ids(tmp_path, from_version):
    data = tmp_path / "data"
    data.mkdir()
    path = data / sqlite_store.DB_FILE_NAME
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        for version, sql in sqlite_store.migrations()[:from_version]:
            for statement in sqlite_store._split_sql(sql):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
        for table, rows in V1_ROWS:
            for row in rows:
                db.execute(f"INSERT INTO {table} ({V1_COLUMNS[table]}) VALUES ({', '.join('?' * len(row))})", row)
    store = open_store(data)
    assert store.schema_version() == sqlite_store.migrations()[-1][0] == 5
    ids = _check_migrated(lambda q: [tuple(r) for r in store.reader().conn.execute(q).fetchall()])
    store.close()

    # The server runs on it: alice's token sees alice's two tasks, under their old ids.
    server = ServerThread(data, workers=0)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = export_task_pb2_grpc.ExportTaskServiceStub(channel)
            listed = stub.ListExportTasks(epb.ListExportTasksRequest(project_id="mig-project"),
                                          metadata=(("authorization", f"Bearer {TOKENS['alice']}"),))
            assert sorted(t.export_task_id for t in listed.export_tasks) == [f"{1:024x}", f"{2:024x}"]
        assert server.store.reader().principal_by("user", "alice").principal_id == ids["alice"]
    finally:
        server.stop()


@pytest.mark.parametrize("from_version", [1, 2])
def test_a_postgres_database_of_an_earlier_version_migrates_owners_to_ids(tmp_path, from_version):
    db = ps.TestDatabase().create()
    try:
        with db.connect() as conn:
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
            for version, sql in pg_store.migrations()[:from_version]:
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (version,))
            for table, rows in V1_ROWS:
                for row in rows:
                    conn.execute(f"INSERT INTO {table} ({V1_COLUMNS[table]}) VALUES ({', '.join(['%s'] * len(row))})",
                                 row)
        # A server refuses the old schema until it is migrated.
        with pytest.raises(SchemaError, match=f"version {from_version}, this server needs 5"):
            open_store(tmp_path, db.url, migrate=False)
        store = open_store(tmp_path, db.url, migrate=True)
        assert store.check_schema() == 5
        _check_migrated(db.query)
        with pytest.raises(psycopg.errors.NotNullViolation):  # the id is not optional
            db.query('INSERT INTO principals ("user", project_id, enterprise_project_id, token_sha256, ak, sk,'
                     " policy, created_at) VALUES ('x', 'p', '0', 't', 'ak', 'sk', '{}', 0)")
        store.close()
    finally:
        db.drop()


def test_the_principal_id_is_required_and_unique_on_sqlite(tmp_path):
    store = open_store(tmp_path)
    creds = add_principal(store, "first", "proj")
    with pytest.raises(sqlite3.IntegrityError):
        store.reader().conn.execute('INSERT INTO principals ("user", project_id, enterprise_project_id, token_sha256,'
                                 " ak, sk, policy, created_at) VALUES ('x', 'p', '0', 't', 'ak', 'sk', '{}', 0)")
    with pytest.raises(sqlite3.IntegrityError):
        store.reader().conn.execute('INSERT INTO principals ("user", principal_id, project_id, enterprise_project_id,'
                                 " token_sha256, ak, sk, policy, created_at) VALUES ('y', ?, 'p', '0', 't2', 'ak2',"
                                 " 'sk', '{}', 0)", (creds["principal_id"],))
    store.close()


def test_principal_list_shows_the_id(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    creds = add_principal(open_store(data), "listed", "proj")
    listed = json.loads(ps.run_cli("principal", "list", "--data-dir", str(data), "--json").stdout)
    assert [(p["user"], p["principal_id"]) for p in listed] == [("listed", creds["principal_id"])]

