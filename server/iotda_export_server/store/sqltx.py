"""The store contract's queries that are the same in both databases: each names its query (in the
dialect's own store/sql/<dialect>.sql) and maps the plain-tuple rows to records (store/records.py).
SqliteTx (store/sqlite.py) and PgTx (store/postgres.py) inherit them with their dialect's queries and
placeholder, and write themselves only what their database does its own way (ingest, the claim, the
streamed read, IN lists). Nothing here rewrites SQL: a `{slot}` of a query is filled with fixed text
(column names, runs of the dialect's placeholder), never a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ..domain.model import BatchTask, ExportTask, Principal, Subtask, TaskProgress
from . import records
from .records import DownloadMark


class SqlTx:
    """Reads and writes on one driver connection (`conn`: sqlite3's or psycopg's, both with
    `execute(query, args)` returning a cursor); inside a transaction when a store opened it in one."""

    Q: ClassVar[dict[str, str]]  # the dialect's named queries
    PLACEHOLDER: ClassVar[str]  # the dialect's parameter marker, for the filters and assignments built here

    def __init__(self, conn: Any):
        self.conn = conn

    def _one(self, name: str, args: Sequence[Any] = ()) -> tuple | None:
        return self.conn.execute(self.Q[name], args).fetchone()

    def _all(self, name: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(self.Q[name], args).fetchall()

    def _scalar(self, name: str, args: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.Q[name], args).fetchone()[0]

    # -- principals ------------------------------------------------------------------------------

    def insert_principal(self, p: Principal, token_sha256: str) -> None:
        self.conn.execute(self.Q["insert_principal"], records.principal_values(p, token_sha256))

    def principal_by(self, column: str, value: str) -> Principal | None:
        query = self.Q["principal_by"].format(column=records.lookup_column(column))
        return records.principal(self.conn.execute(query, (value,)).fetchone())

    def list_principals(self) -> list[Principal]:
        return [records.principal(r) for r in self._all("list_principals")]

    def delete_principal(self, principal_id: str) -> list[str]:
        export_task_ids = [r[0] for r in self._all("owned_export_task_ids", (principal_id,))]
        for name in ("delete_owned_export_tasks", "delete_owned_requests", "delete_download_limit",
                     "delete_principal"):
            self.conn.execute(self.Q[name], (principal_id,))
        return export_task_ids

    def count_principals(self) -> int:
        return self._scalar("count_principals")

    # -- batch tasks -----------------------------------------------------------------------------

    def insert_batch_task(self, t: BatchTask) -> None:
        self.conn.execute(self.Q["insert_batch_task"], records.batch_task_values(t))

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
        filters, filter_args = records.equal_filters({"app_id": app_id, "status": status}, ("app_id", "status"),
                                                      self.PLACEHOLDER)
        args = [project_id, instance_id, task_type, *filter_args]
        count = self.conn.execute(self.Q["count_batch_tasks"].format(filters=filters), args).fetchone()[0]
        rows = self.conn.execute(self.Q["list_batch_tasks"].format(filters=filters),
                                 [*args, marker, limit, offset]).fetchall()
        return [records.batch_task(r, self.subtask_progress(r[0])) for r in rows], count

    def list_subtasks(self, task_id: str, status: str, target: str, marker: str, offset: int,
                      limit: int) -> tuple[list[Subtask], int]:
        filters, filter_args = records.equal_filters({"status": status, "target": target}, ("status", "target"),
                                                      self.PLACEHOLDER)
        args = [task_id, *filter_args]
        count = self.conn.execute(self.Q["count_listed_subtasks"].format(filters=filters), args).fetchone()[0]
        rows = self.conn.execute(self.Q["list_subtasks"].format(filters=filters), [*args, marker, limit, offset])
        return [Subtask(*r) for r in rows], count

    def subtask_rows(self, task_id: str, after_id: str, limit: int) -> list[records.SubtaskRow]:
        return self._all("subtask_rows", (task_id, after_id, limit))

    def count_subtasks(self, task_id: str) -> int:
        return self._scalar("count_subtasks", (task_id,))

    def set_batch_status(self, task_id: str, status: str, status_desc: str) -> None:
        self.conn.execute(self.Q["set_batch_status"], (status, status_desc, task_id))

    def delete_batch_task(self, task_id: str) -> None:
        self.conn.execute(self.Q["delete_subtasks"], (task_id,))
        self.conn.execute(self.Q["delete_batch_task"], (task_id,))

    # -- export tasks ----------------------------------------------------------------------------

    def export_task(self, export_task_id: str) -> ExportTask | None:
        return records.export_task(self._one("export_task", (export_task_id,)))

    def export_task_same_conditions(self, owner: str, conditions_key: str) -> ExportTask | None:
        return records.export_task(self._one("export_task_same_conditions", (owner, conditions_key)))

    def count_export_tasks(self, owner: str, unfinished_only: bool = False) -> int:
        return self._scalar("count_unfinished_export_tasks" if unfinished_only else "count_export_tasks", (owner,))

    def earliest_finished_export_task(self, owner: str) -> ExportTask | None:
        return records.export_task(self._one("earliest_finished_export_task", (owner,)))

    def insert_export_task(self, t: ExportTask) -> None:
        self.conn.execute(self.Q["insert_export_task"], records.export_task_values(t))

    def update_export_task(self, export_task_id: str, expect_run_token: str | None = None,
                           **values: Any) -> bool:
        sets = records.assignments(values, self.PLACEHOLDER)
        if expect_run_token is None:
            cursor = self.conn.execute(self.Q["update_export_task"].format(sets=sets),
                                       [*values.values(), export_task_id])
        else:
            cursor = self.conn.execute(self.Q["update_export_task_of_run"].format(sets=sets),
                                       [*values.values(), export_task_id, expect_run_token])
        return cursor.rowcount > 0

    def delete_export_task(self, export_task_id: str) -> None:
        self.conn.execute(self.Q["delete_export_task"], (export_task_id,))
        self.conn.execute(self.Q["delete_task_requests"], (export_task_id,))

    def list_export_tasks(self, owner: str, instance_id: str, filters: dict[str, str], marker: str, offset: int,
                          limit: int) -> tuple[list[ExportTask], int]:
        terms, filter_args = records.equal_filters(filters, records.EXPORT_LIST_FILTERS, self.PLACEHOLDER)
        args = [owner, instance_id, *filter_args]
        count = self.conn.execute(self.Q["count_listed_export_tasks"].format(filters=terms), args).fetchone()[0]
        rows = self.conn.execute(self.Q["list_export_tasks"].format(filters=terms), [*args, marker, limit, offset])
        return [records.export_task(r) for r in rows], count

    def request_task_id(self, owner: str, request_id: str) -> str | None:
        row = self._one("request_task_id", (owner, request_id))
        return None if row is None else row[0]

    def insert_request(self, owner: str, request_id: str, export_task_id: str, now: int) -> None:
        self.conn.execute(self.Q["insert_request"], (owner, request_id, export_task_id, now))

    # -- the job queue ---------------------------------------------------------------------------

    def count_exports_by_run_state(self) -> dict[str, int]:
        return dict(self._all("count_exports_by_run_state"))

    def has_queued_export(self) -> bool:
        return self._one("has_queued_export") is not None

    def claim_export(self, worker_id: str, run_token: str, now: int, lease_until: int) -> ExportTask | None:
        """StoreTx's contract. Each dialect's query makes the claim exclusive: SQLite's IMMEDIATE lock,
        PostgreSQL's FOR UPDATE SKIP LOCKED (claims of other workers take other rows)."""
        return records.export_task(self._one("claim_export", (run_token, worker_id, lease_until)))

    def running_exports(self, lease_expired_before: int | None = None) -> list[ExportTask]:
        """StoreReader's contract. On PostgreSQL another replica's sweeper may be looking at the
        same rows: its query takes what it can lock (FOR UPDATE SKIP LOCKED)."""
        if lease_expired_before is None:
            rows = self._all("running_exports")
        else:
            rows = self._all("running_exports_expired", (lease_expired_before,))
        return [records.export_task(r) for r in rows]

    def renew_lease(self, export_task_id: str, run_token: str, lease_until: int) -> bool:
        return self.conn.execute(self.Q["renew_lease"], (lease_until, export_task_id, run_token)).rowcount > 0

    def all_export_file_ids(self) -> set[str]:
        return {r[0] for r in self._all("all_export_file_ids")}

    def all_export_file_keys(self) -> set[str]:
        return {r[0] for r in self._all("all_export_file_keys")}

    # -- download rate ---------------------------------------------------------------------------

    def download_limit(self, owner: str) -> DownloadMark | None:
        row = self._one("download_limit", (owner,))
        return None if row is None else DownloadMark(*row)

    def set_download_limit(self, owner: str, now: int, export_task_id: str, generation: int) -> None:
        self.conn.execute(self.Q["set_download_limit"], (owner, now, export_task_id, generation))

    def record_resume(self, owner: str, offset: int) -> None:
        self.conn.execute(self.Q["record_resume"], (offset, owner))

    def restore_download_limit(self, owner: str, expected: DownloadMark, previous: DownloadMark | None) -> bool:
        if self.download_limit(owner) != tuple(expected):
            return False
        if previous is None:
            self.conn.execute(self.Q["delete_download_limit"], (owner,))
        else:
            self.conn.execute(self.Q["put_download_limit"], (*previous, owner))
        return True
