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
from urllib.parse import quote

from ..domain.errors import StoreUnavailable
from ..domain.model import ExportTask
from . import records
from .records import SchemaError, raises_unavailable, unavailable_raised
from .sql import queries
from .sqltx import SqlTx

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
class SqliteTx(SqlTx):
    """The store contract's reads and writes (StoreTx, StoreSnapshot) on one connection, inside a
    transaction when opened by one. `conn` is the sqlite3 connection (tests of this store use it).
    The queries both databases run alike are SqlTx's (store/sqltx.py); here, what SQLite does its
    own way."""

    Q = Q
    PLACEHOLDER = "?"

    def insert_subtasks(self, task_id: str, rows: Iterable[records.SubtaskRow]) -> None:
        self.conn.executemany(Q["insert_subtask"], ((r[0], task_id, *r[1:]) for r in rows))

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

    def subtask_statuses(self, task_id: str, targets: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(0, len(targets), IN_CHUNK):
            chunk = targets[i:i + IN_CHUNK]
            out.update(self.conn.execute(Q["subtask_statuses"].format(targets=_placeholders(len(chunk))),
                                         (task_id, *chunk)).fetchall())
        return out

    def upsert_subtask_results(self, task_id: str, rows: list[records.SubtaskRow]) -> None:
        self.conn.executemany(Q["upsert_subtask_result"], [(r[0], task_id, *r[1:]) for r in rows])

    # -- export tasks ----------------------------------------------------------------------------

    def export_tasks_by_ids(self, ids: list[str]) -> list[ExportTask]:
        out = []
        for i in range(0, len(ids), IN_CHUNK):
            chunk = ids[i:i + IN_CHUNK]
            rows = self.conn.execute(Q["export_tasks_by_ids"].format(ids=_placeholders(len(chunk))), chunk)
            out.extend(records.export_task(r) for r in rows)
        return out

