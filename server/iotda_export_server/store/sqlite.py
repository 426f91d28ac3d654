"""The SQLite store: state of the embedded default.

One connection per thread (sqlite3 objects must stay in their thread), WAL so readers never wait
for the writer, and every write transaction opened with BEGIN IMMEDIATE: a deferred transaction
that reads and then writes fails at once with SQLITE_BUSY instead of waiting, and count-then-insert
decisions (the quotas) are only safe while the write lock is held from the first read.

Queries are store/sql/sqlite.sql's, by name; rows are plain tuples, mapped to records by
store/records.py.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

from ..domain.errors import StoreUnavailable
from ..domain.model import BatchTask, ExportTask, Principal, Subtask, TaskProgress
from . import records
from .records import DownloadMark, SchemaError, raises_unavailable, unavailable_raised
from .sql import queries

MIGRATIONS_DIR = pathlib.Path(__file__).parent / "migrations" / "sqlite"
DB_FILE_NAME = "iotda-export.db"
BUSY_TIMEOUT_MS = 30_000
# The readiness check's own connection waits at most this long for a lock.
CHECK_TIMEOUT_MS = 2000
# Values per IN list (SQLite's default limit of host parameters is 32766 since 3.32, 999 before).
IN_CHUNK = 500
Q = queries("sqlite")


def migrations() -> list[tuple[int, str]]:
    out = []
    for p in sorted(MIGRATIONS_DIR.glob("*.sql")):
        out.append((int(p.name.split("_", 1)[0]), p.read_text()))
    return out


class SqliteStore:
    """State in one SQLite file under the data directory (created 0600)."""

    # A point read of a local WAL database never waits for a writer and takes tens of microseconds:
    # less than handing it to a thread.
    cheap_point_reads = True

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._local = threading.local()
        if not os.path.exists(self.path):
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        os.chmod(self.path, 0o600)

    # -- connections -----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextlib.contextmanager
    def transaction(self, lock_key: str | None = None) -> Iterator["SqliteTx"]:
        """A write transaction. SQLite's IMMEDIATE lock serialises all writers, whatever `lock_key`."""
        with unavailable_raised(_unavailable):
            conn = self._conn()
            # Waits up to the busy timeout for another writer (sqlite's busy handler), then "database
            # is locked": StoreUnavailable(busy), which the transport answers as UNAVAILABLE (retry).
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator["SqliteTx"]:
        """A read transaction on its own connection: one consistent view for a long export, while
        this thread's usual connection keeps writing progress."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            with unavailable_raised(_unavailable):
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                conn.execute("BEGIN")
                conn.execute(Q["schema_version"]).fetchone()  # a first read fixes the snapshot
                yield SqliteTx(conn)
                conn.execute("COMMIT")
        finally:
            conn.close()

    def reader(self) -> "SqliteTx":
        """Autocommit reads (WAL: a consistent snapshot per statement, never blocked by writers)."""
        return SqliteTx(self._conn())

    # -- schema ----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with unavailable_raised(_unavailable):
            conn = self._conn()
            if conn.execute(Q["has_schema_migrations"]).fetchone() is None:
                return 0
            return conn.execute(Q["schema_version"]).fetchone()[0]

    def migrate(self) -> int:
        """Apply pending migrations; refuse a database newer than this code. Returns the version."""
        known = migrations()
        latest = known[-1][0]
        with self.transaction() as tx:
            conn = tx.conn
            conn.execute(Q["create_schema_migrations"])
            current = conn.execute(Q["schema_version"]).fetchone()[0]
            if current > latest:
                raise SchemaError(f"database schema version {current} is newer than this server's {latest}")
            for version, sql in known:
                if version > current:
                    for statement in _split_sql(sql):
                        conn.execute(statement)
                    conn.execute(Q["record_migration"], (version, int(time.time() * 1000)))
        return latest

    def check_schema(self) -> int:
        latest = migrations()[-1][0]
        current = self.schema_version()
        if current != latest:
            raise SchemaError(f"database schema version {current}, this server needs {latest}")
        return current

    def check_reachable(self) -> int:
        # The driver's own error when it fails: the readiness probe names its class.
        # mode=rw: never creates the file (a missing database is a failure, not a new empty one).
        conn = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True, timeout=CHECK_TIMEOUT_MS / 1000)
        try:
            return conn.execute(Q["schema_version"]).fetchone()[0]
        finally:
            conn.close()


def _unavailable(exc: BaseException) -> StoreUnavailable | None:
    """sqlite3's passing failure: the file stayed locked by another writer past the busy timeout
    (under a heavy burst of writers). Every other error is a fault and stays what it is."""
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        return StoreUnavailable(f"the database is busy ({exc})", busy=True)
    return None


def _split_sql(sql: str) -> list[str]:
    """Statements of a migration file (comments may hold semicolons; sqlite knows where one ends)."""
    statements, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise SchemaError("a migration ends with an incomplete statement")
    return statements


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


@raises_unavailable(_unavailable)
class SqliteTx:
    """The store contract's reads and writes (StoreTx, StoreSnapshot) on one connection, inside a
    transaction when opened by one. `conn` is the sqlite3 connection (tests of this store use it)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def _one(self, name: str, args: Sequence[Any] = ()) -> tuple | None:
        return self.conn.execute(Q[name], args).fetchone()

    def _all(self, name: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(Q[name], args).fetchall()

    def _scalar(self, name: str, args: Sequence[Any] = ()) -> Any:
        return self.conn.execute(Q[name], args).fetchone()[0]

    # -- principals ------------------------------------------------------------------------------

    def insert_principal(self, p: Principal, token_sha256: str) -> None:
        self.conn.execute(Q["insert_principal"], records.principal_values(p, token_sha256))

    def principal_by(self, column: str, value: str) -> Principal | None:
        query = Q["principal_by"].format(column=records.lookup_column(column))
        return records.principal(self.conn.execute(query, (value,)).fetchone())

    def list_principals(self) -> list[Principal]:
        return [records.principal(r) for r in self._all("list_principals")]

    def delete_principal(self, principal_id: str) -> list[str]:
        export_task_ids = [r[0] for r in self._all("owned_export_task_ids", (principal_id,))]
        for name in ("delete_owned_export_tasks", "delete_owned_requests", "delete_download_limit",
                     "delete_principal"):
            self.conn.execute(Q[name], (principal_id,))
        return export_task_ids

    def count_principals(self) -> int:
        return self._scalar("count_principals")

    # -- batch tasks -----------------------------------------------------------------------------

    def insert_batch_task(self, t: BatchTask) -> None:
        self.conn.execute(Q["insert_batch_task"], records.batch_task_values(t))

    def insert_subtasks(self, task_id: str, rows: Iterable[records.SubtaskRow]) -> None:
        self.conn.executemany(Q["insert_subtask"], ((r[0], task_id, *r[1:]) for r in rows))

    def batch_task(self, project_id: str, instance_id: str, task_id: str,
                   with_progress: bool = True) -> BatchTask | None:
        row = self._one("batch_task", (task_id, project_id, instance_id))
        if row is None:
            return None
        return records.batch_task(row, self.subtask_progress(task_id) if with_progress else None)

    def subtask_progress(self, task_id: str) -> TaskProgress:
        return TaskProgress.from_counts(dict(self._all("subtask_progress", (task_id,))))

    def list_batch_tasks(self, project_id: str, instance_id: str, task_type: str, app_id: str, status: str,
                         marker: str, offset: int, limit: int) -> tuple[list[BatchTask], int]:
        filters, filter_args = records.equal_filters({"app_id": app_id, "status": status}, ("app_id", "status"), "?")
        args = [project_id, instance_id, task_type, *filter_args]
        count = self.conn.execute(Q["count_batch_tasks"].format(filters=filters), args).fetchone()[0]
        rows = self.conn.execute(Q["list_batch_tasks"].format(filters=filters),
                                 [*args, marker, limit, offset]).fetchall()
        return [records.batch_task(r, self.subtask_progress(r[0])) for r in rows], count

    def list_subtasks(self, task_id: str, status: str, target: str, marker: str, offset: int,
                      limit: int) -> tuple[list[Subtask], int]:
        filters, filter_args = records.equal_filters({"status": status, "target": target}, ("status", "target"), "?")
        args = [task_id, *filter_args]
        count = self.conn.execute(Q["count_listed_subtasks"].format(filters=filters), args).fetchone()[0]
        rows = self.conn.execute(Q["list_subtasks"].format(filters=filters), [*args, marker, limit, offset])
        return [Subtask(*r) for r in rows], count

    def subtask_rows(self, task_id: str, after_id: str, limit: int) -> list[records.SubtaskRow]:
        return self._all("subtask_rows", (task_id, after_id, limit))

    def stream_subtask_columns(self, task_id: str, block_rows: int) -> Iterator[list[Sequence[str]]]:
        """StoreSnapshot's contract. SQLite: one statement's plain tuples without the id column,
        ~30 % cheaper per row than keyset pages (subtask_rows); the read transaction keeps the view
        between blocks."""
        cursor = self.conn.cursor()
        try:
            cursor.execute(Q["subtask_columns"], (task_id,))
            while rows := cursor.fetchmany(block_rows):
                yield list(zip(*rows))
        finally:
            cursor.close()

    def count_subtasks(self, task_id: str) -> int:
        return self._scalar("count_subtasks", (task_id,))

    def subtask_statuses(self, task_id: str, targets: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(0, len(targets), IN_CHUNK):
            chunk = targets[i:i + IN_CHUNK]
            out.update(self.conn.execute(Q["subtask_statuses"].format(targets=_placeholders(len(chunk))),
                                         (task_id, *chunk)).fetchall())
        return out

    def upsert_subtask_results(self, task_id: str, rows: list[records.SubtaskRow]) -> None:
        self.conn.executemany(Q["upsert_subtask_result"], [(r[0], task_id, *r[1:]) for r in rows])

    def set_batch_status(self, task_id: str, status: str, status_desc: str) -> None:
        self.conn.execute(Q["set_batch_status"], (status, status_desc, task_id))

    def delete_batch_task(self, task_id: str) -> None:
        self.conn.execute(Q["delete_subtasks"], (task_id,))
        self.conn.execute(Q["delete_batch_task"], (task_id,))

    # -- export tasks ----------------------------------------------------------------------------

    def export_task(self, export_task_id: str) -> ExportTask | None:
        return records.export_task(self._one("export_task", (export_task_id,)))

    def export_tasks_by_ids(self, ids: list[str]) -> list[ExportTask]:
        out = []
        for i in range(0, len(ids), IN_CHUNK):
            chunk = ids[i:i + IN_CHUNK]
            rows = self.conn.execute(Q["export_tasks_by_ids"].format(ids=_placeholders(len(chunk))), chunk)
            out.extend(records.export_task(r) for r in rows)
        return out

    def export_task_same_conditions(self, owner: str, conditions_key: str) -> ExportTask | None:
        return records.export_task(self._one("export_task_same_conditions", (owner, conditions_key)))

    def count_export_tasks(self, owner: str, unfinished_only: bool = False) -> int:
        return self._scalar("count_unfinished_export_tasks" if unfinished_only else "count_export_tasks", (owner,))

    def earliest_finished_export_task(self, owner: str) -> ExportTask | None:
        return records.export_task(self._one("earliest_finished_export_task", (owner,)))

    def insert_export_task(self, t: ExportTask) -> None:
        self.conn.execute(Q["insert_export_task"], records.export_task_values(t))

    def update_export_task(self, export_task_id: str, expect_run_token: str | None = None,
                           **values: Any) -> bool:
        sets = records.assignments(values, "?")
        if expect_run_token is None:
            cursor = self.conn.execute(Q["update_export_task"].format(sets=sets), [*values.values(), export_task_id])
        else:
            cursor = self.conn.execute(Q["update_export_task_of_run"].format(sets=sets),
                                       [*values.values(), export_task_id, expect_run_token])
        return cursor.rowcount > 0

    def delete_export_task(self, export_task_id: str) -> None:
        self.conn.execute(Q["delete_export_task"], (export_task_id,))
        self.conn.execute(Q["delete_task_requests"], (export_task_id,))

    def list_export_tasks(self, owner: str, instance_id: str, filters: dict[str, str], marker: str, offset: int,
                          limit: int) -> tuple[list[ExportTask], int]:
        terms, filter_args = records.equal_filters(filters, records.EXPORT_LIST_FILTERS, "?")
        args = [owner, instance_id, *filter_args]
        count = self.conn.execute(Q["count_listed_export_tasks"].format(filters=terms), args).fetchone()[0]
        rows = self.conn.execute(Q["list_export_tasks"].format(filters=terms), [*args, marker, limit, offset])
        return [records.export_task(r) for r in rows], count

    def request_task_id(self, owner: str, request_id: str) -> str | None:
        row = self._one("request_task_id", (owner, request_id))
        return None if row is None else row[0]

    def insert_request(self, owner: str, request_id: str, export_task_id: str, now: int) -> None:
        self.conn.execute(Q["insert_request"], (owner, request_id, export_task_id, now))

    # -- the job queue ---------------------------------------------------------------------------

    def count_exports_by_run_state(self) -> dict[str, int]:
        return dict(self._all("count_exports_by_run_state"))

    def has_queued_export(self) -> bool:
        return self._one("has_queued_export") is not None

    def claim_export(self, worker_id: str, run_token: str, now: int, lease_until: int) -> ExportTask | None:
        """StoreTx's contract; SQLite's IMMEDIATE lock makes the claim exclusive."""
        return records.export_task(self._one("claim_export", (run_token, worker_id, lease_until)))

    def renew_lease(self, export_task_id: str, run_token: str, lease_until: int) -> bool:
        return self.conn.execute(Q["renew_lease"], (lease_until, export_task_id, run_token)).rowcount > 0

    def running_exports(self, lease_expired_before: int | None = None) -> list[ExportTask]:
        if lease_expired_before is None:
            rows = self._all("running_exports")
        else:
            rows = self._all("running_exports_expired", (lease_expired_before,))
        return [records.export_task(r) for r in rows]

    def all_export_file_ids(self) -> set[str]:
        return {r[0] for r in self._all("all_export_file_ids")}

    def all_export_file_keys(self) -> set[str]:
        return {r[0] for r in self._all("all_export_file_keys")}

    # -- download rate ---------------------------------------------------------------------------

    def download_limit(self, owner: str) -> DownloadMark | None:
        row = self._one("download_limit", (owner,))
        return None if row is None else DownloadMark(*row)

    def set_download_limit(self, owner: str, now: int, export_task_id: str, generation: int) -> None:
        self.conn.execute(Q["set_download_limit"], (owner, now, export_task_id, generation))

    def record_resume(self, owner: str, offset: int) -> None:
        self.conn.execute(Q["record_resume"], (offset, owner))

    def restore_download_limit(self, owner: str, expected: DownloadMark, previous: DownloadMark | None) -> bool:
        if self.download_limit(owner) != tuple(expected):
            return False
        if previous is None:
            self.conn.execute(Q["delete_download_limit"], (owner,))
        else:
            self.conn.execute(Q["put_download_limit"], (*previous, owner))
        return True
