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
from typing import Any

import psycopg

from ..domain.errors import StoreUnavailable
from ..domain.model import BatchTask, ExportTask, Principal, Subtask, TaskProgress
from . import records
from .records import DownloadMark, SchemaError, raises_unavailable, unavailable_raised
from .sql import queries

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
class PgTx:
    """The store contract's reads and writes (StoreTx, StoreSnapshot) on one connection, inside a
    transaction when opened by one. `conn` is the psycopg connection (tests of this store use it)."""

    def __init__(self, conn: psycopg.Connection):
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
        """StoreTx's contract. COPY: one stream for all the rows instead of a statement per row,
        sent as it fills, so the server inserts while the caller makes more."""
        with self.conn.cursor().copy(Q["copy_subtasks"]) as copy:
            for r in rows:
                copy.write_row((r[0], task_id, *r[1:]))

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
        filters, filter_args = records.equal_filters({"app_id": app_id, "status": status}, ("app_id", "status"), "%s")
        args = [project_id, instance_id, task_type, *filter_args]
        count = self.conn.execute(Q["count_batch_tasks"].format(filters=filters), args).fetchone()[0]
        rows = self.conn.execute(Q["list_batch_tasks"].format(filters=filters),
                                 [*args, marker, limit, offset]).fetchall()
        return [records.batch_task(r, self.subtask_progress(r[0])) for r in rows], count

    def list_subtasks(self, task_id: str, status: str, target: str, marker: str, offset: int,
                      limit: int) -> tuple[list[Subtask], int]:
        filters, filter_args = records.equal_filters({"status": status, "target": target}, ("status", "target"), "%s")
        args = [task_id, *filter_args]
        count = self.conn.execute(Q["count_listed_subtasks"].format(filters=filters), args).fetchone()[0]
        rows = self.conn.execute(Q["list_subtasks"].format(filters=filters), [*args, marker, limit, offset])
        return [Subtask(*r) for r in rows], count

    def subtask_rows(self, task_id: str, after_id: str, limit: int) -> list[records.SubtaskRow]:
        return self._all("subtask_rows", (task_id, after_id, limit))

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

    def count_subtasks(self, task_id: str) -> int:
        return self._scalar("count_subtasks", (task_id,))

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

    def set_batch_status(self, task_id: str, status: str, status_desc: str) -> None:
        self.conn.execute(Q["set_batch_status"], (status, status_desc, task_id))

    def delete_batch_task(self, task_id: str) -> None:
        self.conn.execute(Q["delete_subtasks"], (task_id,))
        self.conn.execute(Q["delete_batch_task"], (task_id,))

    # -- export tasks ----------------------------------------------------------------------------

    def export_task(self, export_task_id: str) -> ExportTask | None:
        return records.export_task(self._one("export_task", (export_task_id,)))

    def export_tasks_by_ids(self, ids: list[str]) -> list[ExportTask]:
        return [records.export_task(r) for r in self._all("export_tasks_by_ids", (ids,))]

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
        sets = records.assignments(values, "%s")
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
        terms, filter_args = records.equal_filters(filters, records.EXPORT_LIST_FILTERS, "%s")
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
        """StoreTx's contract; FOR UPDATE SKIP LOCKED: claims of other workers take other rows."""
        return records.export_task(self._one("claim_export", (run_token, worker_id, lease_until)))

    def renew_lease(self, export_task_id: str, run_token: str, lease_until: int) -> bool:
        return self.conn.execute(Q["renew_lease"], (lease_until, export_task_id, run_token)).rowcount > 0

    def running_exports(self, lease_expired_before: int | None = None) -> list[ExportTask]:
        """StoreReader's contract. Another replica's sweeper may be looking at the same rows: each
        takes what it can lock (FOR UPDATE SKIP LOCKED)."""
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
