"""The SQLite store: state of the embedded default.

One connection per thread (sqlite3 objects must stay in their thread), WAL so readers never wait
for the writer, and every write transaction opened with BEGIN IMMEDIATE: a deferred transaction
that reads and then writes fails at once with SQLITE_BUSY instead of waiting, and count-then-insert
decisions (the quotas) are only safe while the write lock is held from the first read.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from ..domain.model import BatchTask, ExportTask, Principal, Subtask, TaskProgress

MIGRATIONS_DIR = pathlib.Path(__file__).parent / "migrations" / "sqlite"
DB_FILE_NAME = "iotda-export.db"
BUSY_TIMEOUT_MS = 30_000


class SchemaError(RuntimeError):
    """The database holds a schema this code does not know (newer), or none where one is needed."""


def migrations() -> list[tuple[int, str]]:
    out = []
    for p in sorted(MIGRATIONS_DIR.glob("*.sql")):
        out.append((int(p.name.split("_", 1)[0]), p.read_text()))
    return out


class SqliteStore:
    """State in one SQLite file under the data directory (created 0600)."""

    dialect = "sqlite"
    # A point read of a local WAL database never waits for a writer and takes tens of microseconds:
    # less than handing it to a thread. Callers may run such reads on their event loop.
    fast_local_reads = True

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
            conn.row_factory = sqlite3.Row
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
        """A write transaction. `lock_key` (e.g. the user) is what PostgreSQL locks; SQLite's
        IMMEDIATE lock already serialises all writers."""
        conn = self._conn()
        # Waits up to BUSY_TIMEOUT_MS for another writer (sqlite's busy handler), then raises
        # "database is locked", which the transport answers as UNAVAILABLE (retry).
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
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM schema_migrations").fetchone()  # fixes the snapshot
            yield SqliteTx(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def reader(self) -> "SqliteTx":
        """Autocommit reads (WAL: a consistent snapshot per statement, never blocked by writers)."""
        return SqliteTx(self._conn())

    # -- schema ----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        conn = self._conn()
        row = conn.execute("SELECT name FROM sqlite_master WHERE name='schema_migrations'").fetchone()
        if row is None:
            return 0
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    def migrate(self) -> int:
        """Apply pending migrations; refuse a database newer than this code. Returns the version."""
        known = migrations()
        latest = known[-1][0]
        with self.transaction() as tx:
            tx.c.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
            current = tx.c.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            if current > latest:
                raise SchemaError(f"database schema version {current} is newer than this server's {latest}")
            for version, sql in known:
                if version > current:
                    for statement in _split_sql(sql):
                        tx.c.execute(statement)
                    tx.c.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                                 (version, int(time.time() * 1000)))
        return latest


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


class DownloadMark(NamedTuple):
    """The user's last counted download, and the free resumes of it so far."""

    last_at: int
    export_task_id: str
    file_generation: int
    resume_offset: int
    resumes: int


EXPORT_COLUMNS = (
    "export_task_id, owner, project_id, instance_id, resource_type, batch_task_id, export_format, "
    "app_type, app_id, conditions_key, status, status_desc, progress, export_count, create_time, "
    "end_time, version, run_state, run_token, attempts, worker_id, lease_until, queued_at, "
    "file_generation, file_size, file_sha256, file_key"
)


def _export(row: Any) -> ExportTask | None:
    return None if row is None else ExportTask(**{k: row[k] for k in row.keys()})


class SqliteTx:
    """Queries and statements, run on one connection (inside a transaction when opened by one).
    Portable SQL (qmark parameters): the PostgreSQL store runs the same queries (store/postgres.py)."""

    def __init__(self, conn: sqlite3.Connection):
        self.c = conn

    # -- principals ------------------------------------------------------------------------------

    def insert_principal(self, p: Principal, token_sha256: str) -> None:
        self.c.execute(
            'INSERT INTO principals ("user", principal_id, project_id, enterprise_project_id, token_sha256, ak, sk,'
            " policy, created_at, client_cert_subject, client_cert_san) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (p.user, p.principal_id, p.project_id, p.enterprise_project_id, token_sha256, p.ak, p.sk,
             p.policy_json(), p.created_at, p.client_cert_subject, p.client_cert_san))

    def principal_by(self, column: str, value: str) -> Principal | None:
        assert column in ("user", "principal_id", "token_sha256", "ak", "client_cert_subject", "client_cert_san")
        row = self.c.execute(f'SELECT * FROM principals WHERE "{column}" = ?', (value,)).fetchone()
        return None if row is None else Principal.from_row(row)

    def list_principals(self) -> list[Principal]:
        return [Principal.from_row(r) for r in self.c.execute("SELECT * FROM principals ORDER BY created_at")]

    def delete_principal(self, principal_id: str) -> list[str]:
        """Deletes the principal and everything it owns (export tasks, idempotency records, download
        mark); returns the ids of the deleted export tasks (their files are the caller's to remove)."""
        export_task_ids = [r[0] for r in self.c.execute(
            "SELECT export_task_id FROM export_tasks WHERE owner = ?", (principal_id,))]
        self.c.execute("DELETE FROM export_tasks WHERE owner = ?", (principal_id,))
        self.c.execute("DELETE FROM export_requests WHERE owner = ?", (principal_id,))
        self.c.execute("DELETE FROM download_limits WHERE owner = ?", (principal_id,))
        self.c.execute("DELETE FROM principals WHERE principal_id = ?", (principal_id,))
        return export_task_ids

    def count_principals(self) -> int:
        return self.c.execute("SELECT count(*) FROM principals").fetchone()[0]

    # -- batch tasks -----------------------------------------------------------------------------

    def insert_batch_task(self, t: BatchTask) -> None:
        def js(v):
            return None if v is None else json.dumps(v)

        self.c.execute(
            "INSERT INTO batch_tasks (task_id, project_id, instance_id, app_id, task_name, task_type, task_mode,"
            " need_confirm, task_ext_info, targets, targets_filter, document, task_policy, document_source,"
            " status, status_desc, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (t.task_id, t.project_id, t.instance_id, t.app_id, t.task_name, t.task_type, t.task_mode,
             int(t.need_confirm), js(t.task_ext_info), json.dumps(t.targets), js(t.targets_filter),
             js(t.document), js(t.task_policy), t.document_source, t.status, t.status_desc, t.create_time))

    def insert_subtasks(self, task_id: str, rows: Iterable[tuple[str, str, str, str, str, str]]) -> None:
        """rows: (id, target, status, output, error_code, error_msg), any iterable: consumed as it
        is inserted (a seeder's generator is never held whole)."""
        self.c.executemany(
            "INSERT INTO subtasks (id, task_id, target, status, output, error_code, error_msg)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", ((r[0], task_id, *r[1:]) for r in rows))

    def batch_task(self, project_id: str, instance_id: str, task_id: str,
                   with_progress: bool = True) -> BatchTask | None:
        """with_progress=False skips counting the sub-tasks (a scan of up to millions of rows)."""
        row = self.c.execute("SELECT * FROM batch_tasks WHERE task_id = ? AND project_id = ? AND instance_id = ?",
                             (task_id, project_id, instance_id)).fetchone()
        if row is None:
            return None
        return BatchTask.from_row(row, self.subtask_progress(task_id) if with_progress else None)

    def subtask_progress(self, task_id: str) -> TaskProgress:
        counts = dict(self.c.execute("SELECT status, count(*) FROM subtasks WHERE task_id = ? GROUP BY status",
                                     (task_id,)).fetchall())
        return TaskProgress.from_counts(counts)

    def list_batch_tasks(self, project_id: str, instance_id: str, task_type: str, app_id: str, status: str,
                         marker: str, offset: int, limit: int) -> tuple[list[BatchTask], int]:
        where = "project_id = ? AND instance_id = ? AND task_type = ?"
        args: list[Any] = [project_id, instance_id, task_type]
        if app_id:
            where += " AND app_id = ?"
            args.append(app_id)
        if status:
            where += " AND status = ?"
            args.append(status)
        count = self.c.execute(f"SELECT count(*) FROM batch_tasks WHERE {where}", args).fetchone()[0]
        rows = self.c.execute(
            f"SELECT * FROM batch_tasks WHERE {where} AND task_id < ? ORDER BY task_id DESC LIMIT ? OFFSET ?",
            [*args, marker, limit, offset]).fetchall()
        return [BatchTask.from_row(r, self.subtask_progress(r["task_id"])) for r in rows], count

    def list_subtasks(self, task_id: str, status: str, target: str, marker: str, offset: int,
                      limit: int) -> tuple[list[Subtask], int]:
        where = "task_id = ?"
        args: list[Any] = [task_id]
        if status:
            where += " AND status = ?"
            args.append(status)
        if target:
            where += " AND target = ?"
            args.append(target)
        count = self.c.execute(f"SELECT count(*) FROM subtasks WHERE {where}", args).fetchone()[0]
        rows = self.c.execute(
            f"SELECT id, target, status, output, error_code, error_msg FROM subtasks WHERE {where} AND id < ?"
            " ORDER BY id DESC LIMIT ? OFFSET ?", [*args, marker, limit, offset]).fetchall()
        return [Subtask(*r) for r in rows], count

    def subtask_rows(self, task_id: str, after_id: str, limit: int) -> list[tuple]:
        """Export rows in ID order: (id, target, status, output, error_code, error_msg), keyset-paged."""
        return self.c.execute(
            "SELECT id, target, status, output, error_code, error_msg FROM subtasks"
            " WHERE task_id = ? AND id > ? ORDER BY id LIMIT ?", (task_id, after_id, limit)).fetchall()

    def stream_subtask_columns(self, task_id: str, block_rows: int) -> Iterator[list[Sequence[str]]]:
        """The task's sub-tasks in ID order, in blocks of at most `block_rows` rows, each block as
        five columns of equal length: (targets, statuses, outputs, error_codes, error_msgs).

        The contract of both stores: one statement, read block by block inside this transaction
        (a `snapshot()` gives the consistent view of a whole export); no Python object per row
        survives a block (the columns are what the xls writer takes); close the iterator (or
        exhaust it) before this transaction ends. Database errors propagate as they are.

        SQLite: plain tuples without the id column, ~30 % cheaper per row than keyset pages of
        sqlite3.Row (subtask_rows); its read transaction keeps the view between blocks."""
        cursor = self.c.cursor()
        cursor.row_factory = None
        try:
            cursor.execute("SELECT target, status, output, error_code, error_msg FROM subtasks"
                           " WHERE task_id = ? ORDER BY id", (task_id,))
            while rows := cursor.fetchmany(block_rows):
                yield list(zip(*rows))
        finally:
            cursor.close()

    def count_subtasks(self, task_id: str) -> int:
        return self.c.execute("SELECT count(*) FROM subtasks WHERE task_id = ?", (task_id,)).fetchone()[0]

    def subtask_statuses(self, task_id: str, targets: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(0, len(targets), 500):
            chunk = targets[i:i + 500]
            q = f"SELECT target, status FROM subtasks WHERE task_id = ? AND target IN ({','.join('?' * len(chunk))})"
            out.update(self.c.execute(q, (task_id, *chunk)).fetchall())
        return out

    def upsert_subtask_results(self, task_id: str, rows: list[tuple[str, str, str, str, str, str]]) -> None:
        """rows: (new id, target, status, output, error_code, error_msg); existing targets keep their id."""
        self.c.executemany(
            "INSERT INTO subtasks (id, task_id, target, status, output, error_code, error_msg)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, target) DO UPDATE SET status = excluded.status,"
            " output = excluded.output, error_code = excluded.error_code, error_msg = excluded.error_msg",
            [(r[0], task_id, *r[1:]) for r in rows])

    def set_batch_status(self, task_id: str, status: str, status_desc: str) -> None:
        self.c.execute("UPDATE batch_tasks SET status = ?, status_desc = ? WHERE task_id = ?",
                       (status, status_desc, task_id))

    def delete_batch_task(self, task_id: str) -> None:
        self.c.execute("DELETE FROM subtasks WHERE task_id = ?", (task_id,))
        self.c.execute("DELETE FROM batch_tasks WHERE task_id = ?", (task_id,))

    # -- export tasks ----------------------------------------------------------------------------

    def export_task(self, export_task_id: str) -> ExportTask | None:
        return _export(self.c.execute(f"SELECT {EXPORT_COLUMNS} FROM export_tasks WHERE export_task_id = ?",
                                      (export_task_id,)).fetchone())

    def export_tasks_by_ids(self, ids: list[str]) -> list[ExportTask]:
        out = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            q = f"SELECT {EXPORT_COLUMNS} FROM export_tasks WHERE export_task_id IN ({','.join('?' * len(chunk))})"
            out.extend(_export(r) for r in self.c.execute(q, chunk))
        return out

    def export_task_same_conditions(self, owner: str, conditions_key: str) -> ExportTask | None:
        return _export(self.c.execute(
            f"SELECT {EXPORT_COLUMNS} FROM export_tasks WHERE owner = ? AND conditions_key = ?",
            (owner, conditions_key)).fetchone())

    def count_export_tasks(self, owner: str, unfinished_only: bool = False) -> int:
        q = "SELECT count(*) FROM export_tasks WHERE owner = ?"
        if unfinished_only:
            q += " AND status = 'Processing'"
        return self.c.execute(q, (owner,)).fetchone()[0]

    def earliest_finished_export_task(self, owner: str) -> ExportTask | None:
        return _export(self.c.execute(
            f"SELECT {EXPORT_COLUMNS} FROM export_tasks WHERE owner = ? AND status <> 'Processing'"
            " ORDER BY create_time, export_task_id LIMIT 1", (owner,)).fetchone())

    def insert_export_task(self, t: ExportTask) -> None:
        cols = EXPORT_COLUMNS.split(", ")
        self.c.execute(f"INSERT INTO export_tasks ({EXPORT_COLUMNS}) VALUES ({', '.join('?' * len(cols))})",
                       [getattr(t, c) for c in cols])

    def update_export_task(self, export_task_id: str, expect_run_token: str | None = None,
                           **values: Any) -> bool:
        """Set columns and bump the version; with expect_run_token, only if that run is current."""
        sets = ", ".join(f"{k} = ?" for k in values) + ", version = version + 1"
        q = f"UPDATE export_tasks SET {sets} WHERE export_task_id = ?"
        args = [*values.values(), export_task_id]
        if expect_run_token is not None:
            q += " AND run_token = ? AND run_state = 'running'"
            args.append(expect_run_token)
        return self.c.execute(q, args).rowcount > 0

    def delete_export_task(self, export_task_id: str) -> None:
        self.c.execute("DELETE FROM export_tasks WHERE export_task_id = ?", (export_task_id,))
        self.c.execute("DELETE FROM export_requests WHERE export_task_id = ?", (export_task_id,))

    def list_export_tasks(self, owner: str, instance_id: str, filters: dict[str, str], marker: str, offset: int,
                          limit: int) -> tuple[list[ExportTask], int]:
        where = "owner = ? AND instance_id = ?"
        args: list[Any] = [owner, instance_id]
        for column in ("resource_type", "batch_task_id", "app_type", "app_id"):
            if filters.get(column):
                where += f" AND {column} = ?"
                args.append(filters[column])
        count = self.c.execute(f"SELECT count(*) FROM export_tasks WHERE {where}", args).fetchone()[0]
        rows = self.c.execute(
            f"SELECT {EXPORT_COLUMNS} FROM export_tasks WHERE {where} AND export_task_id < ?"
            " ORDER BY export_task_id DESC LIMIT ? OFFSET ?", [*args, marker, limit, offset]).fetchall()
        return [_export(r) for r in rows], count

    def request_task_id(self, owner: str, request_id: str) -> str | None:
        row = self.c.execute("SELECT export_task_id FROM export_requests WHERE owner = ? AND request_id = ?",
                             (owner, request_id)).fetchone()
        return None if row is None else row[0]

    def insert_request(self, owner: str, request_id: str, export_task_id: str, now: int) -> None:
        self.c.execute("INSERT INTO export_requests VALUES (?, ?, ?, ?)", (owner, request_id, export_task_id, now))

    # -- the job queue ---------------------------------------------------------------------------

    def count_exports_by_run_state(self) -> dict[str, int]:
        """Export runs queued and running (the metrics' gauge)."""
        return dict(self.c.execute("SELECT run_state, COUNT(*) FROM export_tasks"
                                   " WHERE run_state IN ('queued', 'running') GROUP BY run_state").fetchall())

    def has_queued_export(self) -> bool:
        return self.c.execute("SELECT 1 FROM export_tasks WHERE run_state = 'queued' LIMIT 1").fetchone() is not None

    def claim_export(self, worker_id: str, run_token: str, now: int, lease_until: int) -> ExportTask | None:
        """Atomically take the oldest queued export (SQLite: the IMMEDIATE lock makes it exclusive)."""
        row = self.c.execute(
            "UPDATE export_tasks SET run_state = 'running', run_token = ?, worker_id = ?, lease_until = ?,"
            " attempts = attempts + 1, version = version + 1 WHERE export_task_id = ("
            "  SELECT export_task_id FROM export_tasks WHERE run_state = 'queued' ORDER BY queued_at LIMIT 1)"
            f" RETURNING {EXPORT_COLUMNS}", (run_token, worker_id, lease_until)).fetchone()
        return _export(row)

    def renew_lease(self, export_task_id: str, run_token: str, lease_until: int) -> bool:
        return self.c.execute(
            "UPDATE export_tasks SET lease_until = ? WHERE export_task_id = ? AND run_token = ?"
            " AND run_state = 'running'", (lease_until, export_task_id, run_token)).rowcount > 0

    def running_exports(self, lease_expired_before: int | None = None) -> list[ExportTask]:
        q = f"SELECT {EXPORT_COLUMNS} FROM export_tasks WHERE run_state = 'running'"
        args: tuple = ()
        if lease_expired_before is not None:
            q += " AND lease_until < ?"
            args = (lease_expired_before,)
        return [_export(r) for r in self.c.execute(q, args)]

    def all_export_file_ids(self) -> set[str]:
        return {r[0] for r in self.c.execute("SELECT export_task_id FROM export_tasks")}

    def all_export_file_keys(self) -> set[str]:
        """The object keys of the published result files (an S3 bucket's files to keep)."""
        return {r[0] for r in self.c.execute("SELECT file_key FROM export_tasks WHERE file_key IS NOT NULL")}

    # -- download rate ---------------------------------------------------------------------------

    def download_limit(self, owner: str) -> DownloadMark | None:
        row = self.c.execute(
            "SELECT last_at, export_task_id, file_generation, resume_offset, resumes FROM download_limits"
            " WHERE owner = ?", (owner,)).fetchone()
        return None if row is None else DownloadMark(*row)

    def set_download_limit(self, owner: str, now: int, export_task_id: str, generation: int) -> None:
        """Counts a download: the user's 30 s window starts now."""
        self.c.execute(
            "INSERT INTO download_limits (owner, last_at, export_task_id, file_generation, resume_offset, resumes)"
            " VALUES (?, ?, ?, ?, 0, 0) ON CONFLICT (owner) DO UPDATE SET last_at = excluded.last_at,"
            " export_task_id = excluded.export_task_id, file_generation = excluded.file_generation,"
            " resume_offset = 0, resumes = 0", (owner, now, export_task_id, generation))

    def record_resume(self, owner: str, offset: int) -> None:
        self.c.execute("UPDATE download_limits SET resume_offset = ?, resumes = resumes + 1 WHERE owner = ?",
                       (offset, owner))

    def restore_download_limit(self, owner: str, expected: DownloadMark, previous: DownloadMark | None) -> bool:
        """Un-counts a download: puts `previous` back (none: no mark), only if the user's mark is still
        `expected` (the one that download set). Run under the user's lock."""
        if self.download_limit(owner) != tuple(expected):
            return False
        if previous is None:
            self.c.execute("DELETE FROM download_limits WHERE owner = ?", (owner,))
        else:
            self.c.execute("UPDATE download_limits SET last_at = ?, export_task_id = ?, file_generation = ?,"
                           " resume_offset = ?, resumes = ? WHERE owner = ?", (*previous, owner))
        return True
