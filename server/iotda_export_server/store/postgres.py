"""The PostgreSQL store: state shared by several API replicas and export workers.

The store contract (store/contract.py) with store/sql/postgres.sql's queries, and PostgreSQL's tools
where several hosts race:
- per-user decisions (the quotas) take pg_advisory_xact_lock(hashtext(lock_key)) in their transaction;
- workers claim with FOR UPDATE SKIP LOCKED, so no two take the same export;
- ingest streams with COPY; an export reads through a server-side cursor, fetched one block ahead;
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

from ..domain.errors import StoreUnavailable
from ..domain.model import ExportTask
from . import records
from .records import SchemaError, raises_unavailable, unavailable_raised
from .sql import queries
from .sqltx import SqlTx

log = logging.getLogger("iotda_export.store.postgres")

MIGRATIONS_DIR = pathlib.Path(__file__).parent / "migrations" / "postgres"
TASKS_CHANNEL = "iotda_export_tasks_v1"
CONNECT_TIMEOUT_SECONDS = 5
LISTEN_WAKE_SECONDS = 0.5
LISTEN_CHECK_SECONDS = 5.0
# Bounds of the readiness check's own connection (connect_timeout is whole seconds, at least 2).
CHECK_CONNECT_TIMEOUT_SECONDS = 2
CHECK_STATEMENT_TIMEOUT_MS = 2000
Q = queries("postgres")


def migrations() -> list[tuple[int, str]]:
    return [(int(p.name.split("_", 1)[0]), p.read_text()) for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]


def _unavailable(exc: BaseException) -> StoreUnavailable | None:
    """psycopg's passing failures: the server out of reach, restarting, or this connection cut or
    terminated (OperationalError, AdminShutdown among them). Every other error is a fault (a bad
    query, a violated constraint) and stays what it is. The message names the failure's first line
    (host and port at most: libpq never puts a password in one)."""
    if isinstance(exc, psycopg.OperationalError):
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return StoreUnavailable(f"the database is unavailable ({type(exc).__name__}: {detail})")
    return None


@raises_unavailable(_unavailable)
class PgTx(SqlTx):
    """The store contract's reads and writes (StoreTx, StoreSnapshot) on one connection, inside a
    transaction when opened by one. `conn` is the psycopg connection (tests of this store use it).
    The queries both databases run alike are SqlTx's (store/sqltx.py); here, what PostgreSQL does its
    own way."""

    Q = Q
    PLACEHOLDER = "%s"

    def insert_subtasks(self, task_id: str, rows: Iterable[records.SubtaskRow]) -> None:
        """StoreTx's contract. COPY: one stream for all the rows instead of a statement per row,
        sent as it fills, so the server inserts while the caller makes more."""
        with self.conn.cursor().copy(Q["copy_subtasks"]) as copy:
            for r in rows:
                copy.write_row((r[0], task_id, *r[1:]))

    def stream_subtask_columns(self, task_id: str, block_rows: int) -> Iterator[list[Sequence[str]]]:
        """StoreSnapshot's contract. PostgreSQL: one server-side cursor (DECLARE in this
        transaction, so inside a snapshot()'s REPEATABLE READ view) walking the (task_id, id) index,
        fetched `block_rows` at a time as plain tuples by a thread one block ahead of the caller
        (bench/PROFILE_NOTES.md: ~20 % of an export's time was the wait for the next FETCH). Keyset
        pages cost a query each, most of it the server's: ~3x the wall time of this read. Needs a
        transaction (snapshot() or transaction()): an autocommit reader() cannot hold a cursor."""
        with self.conn.cursor(name=f"subtask_columns_{next(_cursor_numbers)}") as cursor:
            cursor.execute(Q["subtask_columns"], (task_id,))

            def blocks() -> Iterator[list[Sequence[str]]]:
                while rows := cursor.fetchmany(block_rows):
                    yield list(zip(*rows))

            yield from _read_ahead(blocks())

    def subtask_statuses(self, task_id: str, targets: list[str]) -> dict[str, str]:
        """One query with the targets as one array (up to a call's 10,000): chunks of IN lists would
        each cost PostgreSQL a walk of the task's rows when it plans by the task index (its choice
        while the table's statistics lag a bulk load)."""
        return dict(self._all("subtask_statuses", (task_id, targets)))

    def upsert_subtask_results(self, task_id: str, rows: list[records.SubtaskRow]) -> None:
        """StoreTx's contract: the rows COPY into a temporary table of this connection (emptied at
        the end of the transaction), then one INSERT ... ON CONFLICT moves them out (DELETE ...
        RETURNING, so a second call in this transaction starts empty)."""
        self.conn.execute(Q["create_subtask_results_in"])
        with self.conn.cursor().copy(Q["copy_subtask_results_in"]) as copy:
            for r in rows:
                copy.write_row(r)
        self.conn.execute(Q["move_subtask_results_in"], (task_id,))

    # -- export tasks ----------------------------------------------------------------------------

    def export_tasks_by_ids(self, ids: list[str]) -> list[ExportTask]:
        return [records.export_task(r) for r in self._all("export_tasks_by_ids", (ids,))]


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


class PgStore:
    """State in a PostgreSQL database, shared by every replica and worker."""

    cheap_point_reads = False  # every read is a network round trip: never on the event loop

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def _connect(self, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                               application_name="iotda-export")

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
        with unavailable_raised(_unavailable):
            conn = self._conn()
            with conn.transaction():
                if lock_key is not None:
                    conn.execute(Q["lock_key"], (lock_key,))
                yield PgTx(conn)

    def reader(self) -> PgTx:
        with unavailable_raised(_unavailable):  # connecting, when this thread has no live connection
            return PgTx(self._conn())

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[PgTx]:
        """One consistent read-only view for a long export, on its own connection."""
        with unavailable_raised(_unavailable):
            conn = self._connect(autocommit=False)
            try:
                conn.execute(Q["read_only_snapshot"])
                yield PgTx(conn)
                conn.rollback()
            finally:
                conn.close()

    # -- schema ----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with unavailable_raised(_unavailable):
            conn = self._conn()
            if conn.execute(Q["has_schema_migrations"]).fetchone() is None:
                return 0
            return conn.execute(Q["schema_version"]).fetchone()[0]

    def migrate(self) -> int:
        known = migrations()
        latest = known[-1][0]
        with self.transaction(lock_key="iotda-export:migrate") as tx:
            conn = tx.conn
            conn.execute(Q["create_schema_migrations"])
            current = conn.execute(Q["schema_version"]).fetchone()[0]
            if current > latest:
                raise SchemaError(f"database schema version {current} is newer than this server's {latest}")
            for version, sql in known:
                if version > current:
                    conn.execute(sql)  # no parameters: the simple protocol runs the whole file
                    conn.execute(Q["record_migration"], (version, int(time.time() * 1000)))
        return latest

    def check_schema(self) -> int:
        latest = migrations()[-1][0]
        current = self.schema_version()
        if current != latest:
            raise SchemaError(f"database schema version {current}, this server needs {latest}:"
                              " run `iotda-export migrate --database ...` first")
        return current

    def check_reachable(self) -> int:
        # The driver's own error when it fails: the readiness probe names its class.
        with psycopg.connect(self.url, autocommit=True, connect_timeout=CHECK_CONNECT_TIMEOUT_SECONDS,
                             options=f"-c statement_timeout={CHECK_STATEMENT_TIMEOUT_MS}",
                             application_name="iotda-export-readyz") as conn:
            return conn.execute(Q["schema_version"]).fetchone()[0]


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
