"""The PostgreSQL store: state shared by several API replicas and export workers.

The same queries as the SQLite store (store/sqlite.py: SqliteTx), run through an adapter, with
PostgreSQL's tools where several hosts race:
- per-user decisions (the quotas) take pg_advisory_xact_lock(hashtext(user)) in their transaction;
- workers claim with FOR UPDATE SKIP LOCKED, so no two take the same export;
- a trigger NOTIFYs the id of every changed export task (channel iotda_export_tasks_v1); one
  listening connection per process pokes the progress hub, with polling as the backstop.
Connections are per thread and re-opened after the database went away (a restart, a cut network).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import pathlib
import queue
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import psycopg
from psycopg.rows import tuple_row

from ..domain.model import ExportTask
from .sqlite import EXPORT_COLUMNS, SchemaError, SqliteTx, _export

log = logging.getLogger("iotda_export.store.postgres")

MIGRATIONS_DIR = pathlib.Path(__file__).parent / "migrations" / "postgres"
TASKS_CHANNEL = "iotda_export_tasks_v1"
CONNECT_TIMEOUT_SECONDS = 5
LISTEN_WAKE_SECONDS = 0.5
LISTEN_CHECK_SECONDS = 5.0


def migrations() -> list[tuple[int, str]]:
    return [(int(p.name.split("_", 1)[0]), p.read_text()) for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]


class _Row(tuple):
    """A row readable by position and by column name, like sqlite3.Row."""

    _index: dict[str, int] = {}

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor):
    if cursor.description is None:
        return tuple
    index = {c.name: i for i, c in enumerate(cursor.description)}
    cls = type("Row", (_Row,), {"_index": index})
    return cls


class _Conn:
    """sqlite3's connection surface (qmark parameters, execute) over psycopg. (SqliteTx's two
    executemany inserts are PgTx's COPYs.)"""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def execute(self, query: str, args=()):
        return self.conn.execute(query.replace("?", "%s"), tuple(args))


class PgTx(SqliteTx):
    """SqliteTx's queries on PostgreSQL, except where PostgreSQL must do better."""

    def claim_export(self, worker_id: str, run_token: str, now: int, lease_until: int) -> ExportTask | None:
        row = self.c.execute(
            "WITH next AS (SELECT export_task_id FROM export_tasks WHERE run_state = 'queued'"
            "  ORDER BY queued_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " UPDATE export_tasks t SET run_state = 'running', run_token = ?, worker_id = ?, lease_until = ?,"
            "  attempts = t.attempts + 1, version = t.version + 1 FROM next"
            f" WHERE t.export_task_id = next.export_task_id RETURNING {_qualified('t')}",
            (run_token, worker_id, lease_until)).fetchone()
        return _export(row)

    def running_exports(self, lease_expired_before: int | None = None) -> list[ExportTask]:
        q = f"SELECT {EXPORT_COLUMNS} FROM export_tasks WHERE run_state = 'running'"
        args: tuple = ()
        if lease_expired_before is not None:
            q += " AND lease_until < ?"
            args = (lease_expired_before,)
        # Another replica's sweeper may be looking at the same rows: each takes what it can lock.
        return [_export(r) for r in self.c.execute(q + " FOR UPDATE SKIP LOCKED", args)]

    def subtask_statuses(self, task_id: str, targets: list[str]) -> dict[str, str]:
        """One query with the targets as one array (up to a call's 10,000): SQLite's chunks of 500
        in IN lists each cost PostgreSQL a walk of the task's rows when it plans by the task index
        (its choice while the table's statistics lag a bulk load), 20 walks per full call."""
        return dict(self.c.conn.execute(
            "SELECT target, status FROM subtasks WHERE task_id = %s AND target = ANY(%s)", (task_id, targets)).fetchall())

    def insert_subtasks(self, task_id: str, rows: Iterable[tuple[str, str, str, str, str, str]]) -> None:
        """SqliteTx.insert_subtasks's contract. COPY: one stream for all the rows instead of a
        statement per row, sent as it fills, so the server inserts while the caller makes more."""
        with self.c.conn.cursor().copy(
                "COPY subtasks (id, task_id, target, status, output, error_code, error_msg) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((r[0], task_id, *r[1:]))

    def upsert_subtask_results(self, task_id: str, rows: list[tuple[str, str, str, str, str, str]]) -> None:
        """SqliteTx.upsert_subtask_results's effect: the rows COPY into a temporary table of this
        connection (emptied at the end of the transaction), then one INSERT ... ON CONFLICT moves
        them. The domain has already checked them (no repeated target in one call)."""
        conn = self.c.conn
        conn.execute("CREATE TEMPORARY TABLE IF NOT EXISTS subtask_results_in (id TEXT, target TEXT, status TEXT,"
                     " output TEXT, error_code TEXT, error_msg TEXT) ON COMMIT DELETE ROWS")
        with conn.cursor().copy(
                "COPY subtask_results_in (id, target, status, output, error_code, error_msg) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        # Moved out (DELETE ... RETURNING), so a second call in this transaction starts empty.
        conn.execute(
            "WITH moved AS (DELETE FROM subtask_results_in RETURNING *)"
            " INSERT INTO subtasks (id, task_id, target, status, output, error_code, error_msg)"
            " SELECT id, %s, target, status, output, error_code, error_msg FROM moved"
            " ON CONFLICT (task_id, target) DO UPDATE SET status = excluded.status, output = excluded.output,"
            " error_code = excluded.error_code, error_msg = excluded.error_msg", (task_id,))

    def stream_subtask_columns(self, task_id: str, block_rows: int) -> Iterator[list[Sequence[str]]]:
        """SqliteTx.stream_subtask_columns's contract. PostgreSQL: one server-side cursor (DECLARE in
        this transaction, so inside a snapshot()'s REPEATABLE READ view) walking the (task_id, id)
        index, fetched `block_rows` at a time as plain tuples (no name lookup per row) by a thread one
        block ahead of the caller (bench/PROFILE_NOTES.md: ~20 % of an export's time was the wait for
        the next FETCH). Keyset pages cost a query each, most of it the server's: ~3x the wall time
        of this read. Needs a transaction (snapshot() or transaction()): an autocommit reader()
        cannot hold a cursor."""
        conn = self.c.conn
        with conn.cursor(name=f"subtask_columns_{next(_cursor_numbers)}", row_factory=tuple_row) as cursor:
            cursor.execute("SELECT target, status, output, error_code, error_msg FROM subtasks"
                           " WHERE task_id = %s ORDER BY id", (task_id,))

            def blocks() -> Iterator[list[Sequence[str]]]:
                while rows := cursor.fetchmany(block_rows):
                    yield list(zip(*rows))

            yield from _read_ahead(blocks())


_cursor_numbers = itertools.count(1)


def _read_ahead(blocks: Iterator) -> Iterator:
    """`blocks` produced by a thread one block ahead of the consumer: the next FETCH (a round trip
    and the server's work, the GIL released meanwhile) runs while the caller writes the current
    block. At most three blocks exist at once (written, queued, being fetched). The producer's
    error reaches the consumer in order; a consumer that stops early stops the producer (after its
    fetch in flight) before the cursor is closed."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for block in blocks:
                handoff.put((block, None))
                if stop.is_set():  # at most one put follows the consumer's stop: its drain makes room
                    return
            handoff.put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            handoff.put((end, exc))

    producer = threading.Thread(target=produce, name="subtask-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            block, error = handoff.get()
            if block is end:
                if error is not None:
                    raise error
                return
            yield block
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            handoff.get_nowait()
        producer.join()


def _qualified(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in EXPORT_COLUMNS.split(", "))


class PgStore:
    dialect = "postgresql"
    fast_local_reads = False  # every read is a network round trip: never on the event loop

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def _connect(self, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=autocommit, row_factory=_row_factory,
                               connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="iotda-export")

    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or not _alive(conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextlib.contextmanager
    def transaction(self, lock_key: str | None = None) -> Iterator[PgTx]:
        conn = self._conn()
        with conn.transaction():
            if lock_key is not None:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key,))
            yield PgTx(_Conn(conn))

    def reader(self) -> PgTx:
        return PgTx(_Conn(self._conn()))

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[PgTx]:
        """One consistent read-only view for a long export, on its own connection."""
        conn = self._connect(autocommit=False)
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield PgTx(_Conn(conn))
            conn.rollback()
        finally:
            conn.close()

    # -- schema ----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        conn = self._conn()
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
            return 0
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    def migrate(self) -> int:
        known = migrations()
        latest = known[-1][0]
        with self.transaction(lock_key="iotda-export:migrate") as tx:
            conn = tx.c.conn
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            if current > latest:
                raise SchemaError(f"database schema version {current} is newer than this server's {latest}")
            for version, sql in known:
                if version > current:
                    conn.execute(sql)  # no parameters: the simple protocol runs the whole file
                    conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, int(time.time() * 1000)))
        return latest

    def check_schema(self) -> int:
        """A server never runs against a schema it does not know: exactly the latest, or refuse."""
        latest = migrations()[-1][0]
        current = self.schema_version()
        if current != latest:
            raise SchemaError(f"database schema version {current}, this server needs {latest}:"
                              " run `iotda-export migrate --database ...` first")
        return current


def _alive(conn: psycopg.Connection) -> bool:
    """False when the server has closed this idle connection (a database restart, a terminated
    backend): found without a round trip, by reading what is waiting on its socket (the server's
    farewell message, then the end of the stream). Without it every thread's connection would fail
    one call after a restart before being replaced."""
    if conn.closed or conn.broken:
        return False
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        for _ in range(3):
            if not poller.poll(0):
                return True
            conn.pgconn.consume_input()  # raises at the end of the stream
    except (OSError, ValueError, psycopg.Error):
        return False
    return not conn.broken


class Listener:
    """One LISTEN connection per process: calls `on_notify(export_task_id)` for every change,
    re-established after the database restarts. Notifications are hints; pollers cover gaps."""

    def __init__(self, url: str, on_notify: Callable[[str], None], channel: str = TASKS_CHANNEL):
        self.url = url
        self.on_notify = on_notify
        self.channel = channel
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)
        self._conn: psycopg.Connection | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.cancel_safe()
        self._thread.join(5)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                     application_name="iotda-export-listener") as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {self.channel}")
                    self.connected.set()
                    backoff = 0.5
                    checked = time.monotonic()
                    while not self._stop.is_set():
                        # A short wait lets the loop notice a stop request at once (cancel_safe does
                        # not interrupt a wait for notifications); a closed link ends the wait itself.
                        for n in conn.notifies(timeout=LISTEN_WAKE_SECONDS):
                            self.on_notify(n.payload)
                        if time.monotonic() - checked >= LISTEN_CHECK_SECONDS:  # prove the link alive
                            conn.execute("SELECT 1")
                            checked = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the database went away: reconnect
                self.connected.clear()
                if self._stop.is_set():
                    return
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
