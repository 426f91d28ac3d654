"""The store's contract: what the domain and the runner may ask of state, whatever holds it.

Three implementations keep it side by side: SqliteStore (store/sqlite.py, the embedded default),
PgStore (store/postgres.py, shared by replicas) and InMemoryStore (store/memory.py, for fast unit
tests of the domain rules). tests/test_store_contract.py runs the same tests on all three.

The surface is in three layers: `StoreReader` (reads), `StoreTx` (reads and writes, inside one
transaction), `StoreSnapshot` (a read-only consistent view that can stream a batch task's
sub-tasks). Records are the domain's (domain/model.py) and DownloadMark (store/records.py); no row
object of a driver leaves a store. Times are milliseconds since the epoch, as the domain gives them.

Errors: a passing failure of the database (out of reach, restarting, a connection cut; SQLite locked
past its busy timeout) leaves every method as the domain's StoreUnavailable, never as the driver's
error (store/records.py `raises_unavailable`), so callers above the store know no driver. Other
database errors are faults and propagate as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from ..domain.model import BatchTask, ExportTask, Principal, Subtask, TaskProgress
from .records import DownloadMark, SubtaskRow


class StoreReader(Protocol):
    """Reads. Outside a transaction (`Store.reader()`) each call sees the state of its own moment."""

    # -- principals ------------------------------------------------------------------------------

    def principal_by(self, column: str, value: str) -> Principal | None:
        """The principal whose `column` is `value`, or None. `column` is one of
        records.PRINCIPAL_LOOKUPS (user, principal_id, token_sha256, ak, client_cert_subject,
        client_cert_san), each unique."""

    def list_principals(self) -> list[Principal]:
        """Every principal, in the order they were created."""

    def count_principals(self) -> int:
        """How many principals exist."""

    # -- batch tasks -----------------------------------------------------------------------------

    def batch_task(self, project_id: str, instance_id: str, task_id: str,
                   with_progress: bool = True) -> BatchTask | None:
        """The batch task of this id in this scope, or None (another scope's task is not found).
        with_progress=False leaves `progress` empty instead of counting the sub-tasks (a scan of
        up to millions of rows)."""

    def subtask_progress(self, task_id: str) -> TaskProgress:
        """The task's sub-tasks counted by status."""

    def list_batch_tasks(self, project_id: str, instance_id: str, task_type: str, app_id: str, status: str,
                         marker: str, offset: int, limit: int) -> tuple[list[BatchTask], int]:
        """A page of the scope's batch tasks of `task_type` (with their progress), newest task_id
        first, only ids before `marker`, skipping `offset`, at most `limit`; and how many match in
        all (marker, offset and limit aside). An empty `app_id` or `status` does not filter."""

    def list_subtasks(self, task_id: str, status: str, target: str, marker: str, offset: int,
                      limit: int) -> tuple[list[Subtask], int]:
        """A page of the task's sub-tasks, newest id first, only ids before `marker`, skipping
        `offset`, at most `limit`; and how many match in all. An empty `status` or `target` does
        not filter."""

    def subtask_rows(self, task_id: str, after_id: str, limit: int) -> list[SubtaskRow]:
        """At most `limit` of the task's sub-tasks with ids after `after_id`, in id order (keyset
        pages: tests and benchmarks read a task whole this way)."""

    def count_subtasks(self, task_id: str) -> int:
        """How many sub-tasks the task has."""

    def subtask_statuses(self, task_id: str, targets: list[str]) -> dict[str, str]:
        """target -> status for those of `targets` that are sub-tasks of the task."""

    # -- export tasks ----------------------------------------------------------------------------

    def export_task(self, export_task_id: str) -> ExportTask | None:
        """The export task of this id, or None."""

    def export_tasks_by_ids(self, ids: list[str]) -> list[ExportTask]:
        """The export tasks of those ids that exist, in no particular order."""

    def export_task_same_conditions(self, owner: str, conditions_key: str) -> ExportTask | None:
        """The owner's export task of these conditions (at most one exists), or None."""

    def count_export_tasks(self, owner: str, unfinished_only: bool = False) -> int:
        """How many export tasks the owner has (unfinished_only: only those in Processing)."""

    def earliest_finished_export_task(self, owner: str) -> ExportTask | None:
        """The owner's finished (not Processing) export task with the lowest create_time, ties
        broken by the lower id; None when none is finished."""

    def list_export_tasks(self, owner: str, instance_id: str, filters: dict[str, str], marker: str, offset: int,
                          limit: int) -> tuple[list[ExportTask], int]:
        """A page of the owner's export tasks in the instance, newest id first, only ids before
        `marker`, skipping `offset`, at most `limit`; and how many match in all. `filters` maps
        columns of records.EXPORT_LIST_FILTERS to values; a missing or empty value does not filter."""

    def request_task_id(self, owner: str, request_id: str) -> str | None:
        """The export task the owner's create with this request id made, or None."""

    # -- the job queue ---------------------------------------------------------------------------

    def count_exports_by_run_state(self) -> dict[str, int]:
        """run_state -> count, for 'queued' and 'running' only (states without tasks are absent)."""

    def has_queued_export(self) -> bool:
        """Whether any export is queued (a cheap check before a claim's write transaction)."""

    def running_exports(self, lease_expired_before: int | None = None) -> list[ExportTask]:
        """The running exports; with `lease_expired_before`, only those whose lease ends before
        it. In a PostgreSQL transaction the rows are locked, and rows another transaction holds
        are skipped (another replica's sweeper is recovering them)."""

    def all_export_file_ids(self) -> set[str]:
        """The id of every export task (the local result files to keep)."""

    def all_export_file_keys(self) -> set[str]:
        """The object key of every published result file (the bucket's objects to keep)."""

    # -- download rate ---------------------------------------------------------------------------

    def download_limit(self, owner: str) -> DownloadMark | None:
        """The owner's mark of their last counted download, or None."""


class StoreTx(StoreReader, Protocol):
    """Reads and writes in one transaction: all of it commits when the `transaction()` block ends,
    none of it when the block raises."""

    def insert_principal(self, p: Principal, token_sha256: str) -> None:
        """Adds the principal with the hash of its bearer token; a unique column already taken raises
        the store's integrity error."""

    def delete_principal(self, principal_id: str) -> list[str]:
        """Deletes the principal and everything it owns (export tasks, idempotency records, download
        mark); returns the ids of the deleted export tasks (their files are the caller's to remove)."""

    def insert_batch_task(self, t: BatchTask) -> None:
        """Adds the batch task (its progress is not stored: it is counted from the sub-tasks)."""

    def insert_subtasks(self, task_id: str, rows: Iterable[SubtaskRow]) -> None:
        """Adds the task's sub-tasks. `rows` may be any iterable, consumed as it is inserted (a
        seeder's generator is never held whole)."""

    def upsert_subtask_results(self, task_id: str, rows: list[SubtaskRow]) -> None:
        """Adds sub-tasks for new targets (with the row's id) and updates status, output and error
        of known ones, which keep their id. The caller has checked that no target repeats."""

    def set_batch_status(self, task_id: str, status: str, status_desc: str) -> None:
        """Sets the batch task's status and its description."""

    def delete_batch_task(self, task_id: str) -> None:
        """Deletes the batch task and its sub-tasks."""

    def insert_export_task(self, t: ExportTask) -> None:
        """Adds the export task as given (its version included)."""

    def update_export_task(self, export_task_id: str, expect_run_token: str | None = None, **values: Any) -> bool:
        """Sets the given fields of the task and bumps its version by one; with `expect_run_token`,
        only while that run is the current one (run_token equal and run_state 'running'). Returns
        whether a task was updated."""

    def delete_export_task(self, export_task_id: str) -> None:
        """Deletes the export task and the idempotency records that name it."""

    def insert_request(self, owner: str, request_id: str, export_task_id: str, now: int) -> None:
        """Records that the owner's create with this request id made that export task."""

    def claim_export(self, worker_id: str, run_token: str, now: int, lease_until: int) -> ExportTask | None:
        """Takes the queued export with the lowest queued_at: run_state 'running' under `run_token`
        and `worker_id` until `lease_until`, attempts and version up by one; returns it as updated,
        or None when none is queued. No two claims take the same task."""

    def renew_lease(self, export_task_id: str, run_token: str, lease_until: int) -> bool:
        """Moves the lease of the run to `lease_until` (the version unchanged: no watcher is woken)
        while that run is current; returns whether it is."""

    def set_download_limit(self, owner: str, now: int, export_task_id: str, generation: int) -> None:
        """Counts a download: the owner's mark becomes (now, that task and file generation), with
        no resumes."""

    def record_resume(self, owner: str, offset: int) -> None:
        """Counts a free resume of the owner's last download, from `offset`."""

    def restore_download_limit(self, owner: str, expected: DownloadMark, previous: DownloadMark | None) -> bool:
        """Un-counts a download: puts `previous` back (None: no mark), only if the owner's mark is
        still `expected` (the one that download set); returns whether it was. Run under the owner's
        lock."""


class StoreSnapshot(StoreReader, Protocol):
    """One consistent read-only view (a long export's), on a connection of its own."""

    def stream_subtask_columns(self, task_id: str, block_rows: int) -> Iterator[list[Sequence[str]]]:
        """The task's sub-tasks in id order, in blocks of at most `block_rows` rows, each block as
        five columns of equal length: (targets, statuses, outputs, error_codes, error_msgs). One
        read of the snapshot's view; no Python object per row survives a block (the columns are
        what the xls writer takes). Close the iterator (or exhaust it) before the snapshot ends.
        A passing failure of the database (here or while iterating) raises StoreUnavailable, as
        every method of the contract does; other database errors propagate as they are."""


class Store(Protocol):
    """State: principals, batch tasks and their sub-tasks, export tasks and their runs, download marks."""

    # Whether a point read (a few rows by key) is cheaper than handing it to a thread: true where
    # reads are local and never wait for a writer (SQLite in WAL). Callers may then run such reads
    # on their event loop; where every read is a network round trip (PostgreSQL) they never should.
    cheap_point_reads: bool

    def transaction(self, lock_key: str | None = None) -> contextlib.AbstractContextManager[StoreTx]:
        """A write transaction: committed when the block ends, rolled back when it raises.
        Transactions with the same `lock_key` (a principal's id, "batch-task:<id>") run one after
        the other, so a count-then-write decision (a quota) cannot race; SQLite and the in-memory
        store serialise every writer anyway. Without a key, a writer is serialised only by the rows
        it writes."""

    def reader(self) -> StoreReader:
        """Reads outside a transaction, on this thread's connection: each sees the latest commit."""

    def snapshot(self) -> contextlib.AbstractContextManager[StoreSnapshot]:
        """A read-only consistent view, on its own connection, for as long as the block runs (one
        export's): writes of this thread and others go on meanwhile and are not seen."""

    def schema_version(self) -> int:
        """The version of the schema the database holds (0: none yet)."""

    def migrate(self) -> int:
        """Brings the schema to this code's latest version; refuses (SchemaError) a database newer
        than this code. Returns the version."""

    def check_schema(self) -> int:
        """The schema version when it is exactly this code's latest; else SchemaError (a server never
        runs against a schema it does not know)."""

    def check_reachable(self) -> int:
        """The schema version, read on a fresh connection with short timeouts, never creating
        anything (a readiness probe: the process's own connections could hide a database gone).
        Raises whatever reaching the database raised."""

    def close(self) -> None:
        """Closes this thread's connection (others close with their threads)."""
