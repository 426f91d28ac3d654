"""The store contract in memory: dicts and one lock, for fast unit tests of the domain rules
(tests/test_domain_rules_memory.py) and the contract's own tests (tests/test_store_contract.py).

A committed state is never changed: a transaction works on a copy of the tables it writes (holding
the one lock, so writers run one after the other whatever their lock_key) and replaces the state
with it when it ends, or drops it when it raises. So a reader sees the latest commit, and a snapshot
is the state of its moment, both without the lock. Records go in and out as copies: a caller that
changes one changes nothing stored. Not for production: nothing survives the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..domain import rules
from ..domain.model import BatchTask, ExportTask, Principal, Subtask, TaskProgress
from .records import EXPORT_COLUMNS, EXPORT_LIST_FILTERS, DownloadMark, SubtaskRow, lookup_column

SCHEMA_VERSION = 5  # the databases' latest migration: the schema whose behaviour this store keeps


@dataclasses.dataclass
class _State:
    """The tables. principals: principal_id -> (Principal, token_sha256); subtasks: task_id ->
    target -> row; requests: (owner, request_id) -> export_task_id."""

    principals: dict[str, tuple[Principal, str]] = dataclasses.field(default_factory=dict)
    batch_tasks: dict[str, BatchTask] = dataclasses.field(default_factory=dict)
    subtasks: dict[str, dict[str, SubtaskRow]] = dataclasses.field(default_factory=dict)
    export_tasks: dict[str, ExportTask] = dataclasses.field(default_factory=dict)
    requests: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    download_limits: dict[str, DownloadMark] = dataclasses.field(default_factory=dict)

    def copy(self) -> "_State":
        """Tables copied one level down (a task's sub-tasks when first written: MemoryTx); records
        themselves are never changed, only replaced."""
        return _State(dict(self.principals), dict(self.batch_tasks), dict(self.subtasks), dict(self.export_tasks),
                      dict(self.requests), dict(self.download_limits))


def _copy_task(t: ExportTask | None) -> ExportTask | None:
    return None if t is None else dataclasses.replace(t)


class MemoryReader:
    """StoreReader and StoreSnapshot over one state."""

    def __init__(self, state: _State):
        self._s = state

    # -- principals ------------------------------------------------------------------------------

    def principal_by(self, column: str, value: str) -> Principal | None:
        lookup_column(column)
        for p, token_sha256 in self._s.principals.values():
            if (token_sha256 if column == "token_sha256" else getattr(p, column)) == value:
                return dataclasses.replace(p)
        return None

    def list_principals(self) -> list[Principal]:
        return [dataclasses.replace(p) for p, _ in sorted(self._s.principals.values(), key=lambda e: e[0].created_at)]

    def count_principals(self) -> int:
        return len(self._s.principals)

    # -- batch tasks -----------------------------------------------------------------------------

    def batch_task(self, project_id: str, instance_id: str, task_id: str,
                   with_progress: bool = True) -> BatchTask | None:
        t = self._s.batch_tasks.get(task_id)
        if t is None or t.project_id != project_id or t.instance_id != instance_id:
            return None
        return dataclasses.replace(t, progress=self.subtask_progress(task_id) if with_progress else TaskProgress())

    def subtask_progress(self, task_id: str) -> TaskProgress:
        counts: dict[str, int] = {}
        for row in self._s.subtasks.get(task_id, {}).values():
            counts[row[2]] = counts.get(row[2], 0) + 1
        return TaskProgress.from_counts(counts)

    def list_batch_tasks(self, project_id: str, instance_id: str, task_type: str, app_id: str, status: str,
                         marker: str, offset: int, limit: int) -> tuple[list[BatchTask], int]:
        matching = [t for t in self._s.batch_tasks.values()
                    if t.project_id == project_id and t.instance_id == instance_id and t.task_type == task_type
                    and (not app_id or t.app_id == app_id) and (not status or t.status == status)]
        page = _page(matching, lambda t: t.task_id, marker, offset, limit)
        return [dataclasses.replace(t, progress=self.subtask_progress(t.task_id)) for t in page], len(matching)

    def list_subtasks(self, task_id: str, status: str, target: str, marker: str, offset: int,
                      limit: int) -> tuple[list[Subtask], int]:
        matching = [r for r in self._s.subtasks.get(task_id, {}).values()
                    if (not status or r[2] == status) and (not target or r[1] == target)]
        return [Subtask(*r) for r in _page(matching, lambda r: r[0], marker, offset, limit)], len(matching)

    def _rows(self, task_id: str) -> list[SubtaskRow]:
        return sorted(self._s.subtasks.get(task_id, {}).values())

    def subtask_rows(self, task_id: str, after_id: str, limit: int) -> list[SubtaskRow]:
        return [r for r in self._rows(task_id) if r[0] > after_id][:limit]

    def stream_subtask_columns(self, task_id: str, block_rows: int) -> Iterator[list[Sequence[str]]]:
        rows = self._rows(task_id)
        for i in range(0, len(rows), block_rows):
            yield list(zip(*(r[1:] for r in rows[i:i + block_rows])))

    def count_subtasks(self, task_id: str) -> int:
        return len(self._s.subtasks.get(task_id, {}))

    def subtask_statuses(self, task_id: str, targets: list[str]) -> dict[str, str]:
        rows = self._s.subtasks.get(task_id, {})
        return {t: rows[t][2] for t in targets if t in rows}

    # -- export tasks ----------------------------------------------------------------------------

    def export_task(self, export_task_id: str) -> ExportTask | None:
        return _copy_task(self._s.export_tasks.get(export_task_id))

    def export_tasks_by_ids(self, ids: list[str]) -> list[ExportTask]:
        return [_copy_task(self._s.export_tasks[i]) for i in dict.fromkeys(ids) if i in self._s.export_tasks]

    def export_task_same_conditions(self, owner: str, conditions_key: str) -> ExportTask | None:
        return _copy_task(next((t for t in self._s.export_tasks.values()
                                if t.owner == owner and t.conditions_key == conditions_key), None))

    def count_export_tasks(self, owner: str, unfinished_only: bool = False) -> int:
        return sum(1 for t in self._s.export_tasks.values()
                   if t.owner == owner and (not unfinished_only or t.status == rules.STATUS_PROCESSING))

    def earliest_finished_export_task(self, owner: str) -> ExportTask | None:
        finished = [t for t in self._s.export_tasks.values()
                    if t.owner == owner and t.status != rules.STATUS_PROCESSING]
        return _copy_task(min(finished, key=lambda t: (t.create_time, t.export_task_id), default=None))

    def list_export_tasks(self, owner: str, instance_id: str, filters: dict[str, str], marker: str, offset: int,
                          limit: int) -> tuple[list[ExportTask], int]:
        wanted = {c: filters[c] for c in EXPORT_LIST_FILTERS if filters.get(c)}
        matching = [t for t in self._s.export_tasks.values()
                    if t.owner == owner and t.instance_id == instance_id
                    and all(getattr(t, c) == v for c, v in wanted.items())]
        return [_copy_task(t) for t in _page(matching, lambda t: t.export_task_id, marker, offset, limit)], len(matching)

    def request_task_id(self, owner: str, request_id: str) -> str | None:
        return self._s.requests.get((owner, request_id))

    # -- the job queue ---------------------------------------------------------------------------

    def count_exports_by_run_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self._s.export_tasks.values():
            if t.run_state in ("queued", "running"):
                counts[t.run_state] = counts.get(t.run_state, 0) + 1
        return counts

    def has_queued_export(self) -> bool:
        return any(t.run_state == "queued" for t in self._s.export_tasks.values())

    def running_exports(self, lease_expired_before: int | None = None) -> list[ExportTask]:
        return [_copy_task(t) for t in self._s.export_tasks.values() if t.run_state == "running"
                and (lease_expired_before is None or (t.lease_until is not None and t.lease_until < lease_expired_before))]

    def all_export_file_ids(self) -> set[str]:
        return set(self._s.export_tasks)

    def all_export_file_keys(self) -> set[str]:
        return {t.file_key for t in self._s.export_tasks.values() if t.file_key is not None}

    # -- download rate ---------------------------------------------------------------------------

    def download_limit(self, owner: str) -> DownloadMark | None:
        return self._s.download_limits.get(owner)


def _page(items: list, key, marker: str, offset: int, limit: int) -> list:
    """The databases' list order: key descending, only keys before `marker`, `offset` skipped."""
    before = sorted((i for i in items if key(i) < marker), key=key, reverse=True)
    return before[offset:offset + limit]


class MemoryTx(MemoryReader):
    """StoreTx over the transaction's working copy."""

    def __init__(self, state: _State):
        super().__init__(state)
        self._copied: set[str] = set()  # tasks whose sub-tasks this transaction has its own copy of

    def _subtasks(self, task_id: str) -> dict[str, SubtaskRow]:
        """The task's sub-tasks, writable: copied from the committed state on the first write."""
        if task_id not in self._copied:
            self._s.subtasks[task_id] = dict(self._s.subtasks.get(task_id, {}))
            self._copied.add(task_id)
        return self._s.subtasks[task_id]

    def insert_principal(self, p: Principal, token_sha256: str) -> None:
        for other, other_token in self._s.principals.values():  # the databases' unique columns
            if other.principal_id == p.principal_id or other.user == p.user or other_token == token_sha256 \
                    or other.ak == p.ak or any(v is not None and v == getattr(other, c) for c, v in (
                        ("client_cert_subject", p.client_cert_subject), ("client_cert_san", p.client_cert_san))):
                raise ValueError(f"a principal with a value of {p.user!r}'s unique columns exists")
        self._s.principals[p.principal_id] = (dataclasses.replace(p), token_sha256)

    def delete_principal(self, principal_id: str) -> list[str]:
        owned = [i for i, t in self._s.export_tasks.items() if t.owner == principal_id]
        for i in owned:
            del self._s.export_tasks[i]
        for key in [k for k in self._s.requests if k[0] == principal_id]:
            del self._s.requests[key]
        self._s.download_limits.pop(principal_id, None)
        self._s.principals.pop(principal_id, None)
        return owned

    def insert_batch_task(self, t: BatchTask) -> None:
        if t.task_id in self._s.batch_tasks:
            raise ValueError(f"batch task {t.task_id} exists")
        self._s.batch_tasks[t.task_id] = dataclasses.replace(t, progress=TaskProgress())

    def insert_subtasks(self, task_id: str, rows: Iterable[SubtaskRow]) -> None:
        table = self._subtasks(task_id)
        for r in rows:
            if r[1] in table:
                raise ValueError(f"target {r[1]!r} of batch task {task_id} exists")
            table[r[1]] = tuple(r)

    def upsert_subtask_results(self, task_id: str, rows: list[SubtaskRow]) -> None:
        table = self._subtasks(task_id)
        for r in rows:
            known = table.get(r[1])
            table[r[1]] = tuple(r) if known is None else (known[0], *r[1:])

    def set_batch_status(self, task_id: str, status: str, status_desc: str) -> None:
        t = self._s.batch_tasks.get(task_id)
        if t is not None:
            self._s.batch_tasks[task_id] = dataclasses.replace(t, status=status, status_desc=status_desc)

    def delete_batch_task(self, task_id: str) -> None:
        self._s.subtasks.pop(task_id, None)
        self._s.batch_tasks.pop(task_id, None)

    def insert_export_task(self, t: ExportTask) -> None:
        if t.export_task_id in self._s.export_tasks or self.export_task_same_conditions(t.owner, t.conditions_key):
            raise ValueError(f"export task {t.export_task_id} or its conditions exist")
        self._s.export_tasks[t.export_task_id] = dataclasses.replace(t)

    def update_export_task(self, export_task_id: str, expect_run_token: str | None = None, **values: Any) -> bool:
        unknown = set(values) - set(EXPORT_COLUMNS)
        if unknown:
            raise ValueError(f"not columns of an export task: {sorted(unknown)}")
        t = self._s.export_tasks.get(export_task_id)
        if t is None or expect_run_token is not None and (t.run_token != expect_run_token or t.run_state != "running"):
            return False
        self._s.export_tasks[export_task_id] = dataclasses.replace(t, **{**values, "version": t.version + 1})
        return True

    def delete_export_task(self, export_task_id: str) -> None:
        self._s.export_tasks.pop(export_task_id, None)
        for key in [k for k, v in self._s.requests.items() if v == export_task_id]:
            del self._s.requests[key]

    def insert_request(self, owner: str, request_id: str, export_task_id: str, now: int) -> None:
        if (owner, request_id) in self._s.requests:
            raise ValueError(f"request {request_id!r} of {owner} exists")
        self._s.requests[(owner, request_id)] = export_task_id

    def claim_export(self, worker_id: str, run_token: str, now: int, lease_until: int) -> ExportTask | None:
        queued = [t for t in self._s.export_tasks.values() if t.run_state == "queued"]
        if not queued:
            return None
        t = min(queued, key=lambda q: q.queued_at)
        claimed = dataclasses.replace(t, run_state="running", run_token=run_token, worker_id=worker_id,
                                      lease_until=lease_until, attempts=t.attempts + 1, version=t.version + 1)
        self._s.export_tasks[t.export_task_id] = claimed
        return dataclasses.replace(claimed)

    def renew_lease(self, export_task_id: str, run_token: str, lease_until: int) -> bool:
        t = self._s.export_tasks.get(export_task_id)
        if t is None or t.run_token != run_token or t.run_state != "running":
            return False
        self._s.export_tasks[export_task_id] = dataclasses.replace(t, lease_until=lease_until)
        return True

    def set_download_limit(self, owner: str, now: int, export_task_id: str, generation: int) -> None:
        self._s.download_limits[owner] = DownloadMark(now, export_task_id, generation, 0, 0)

    def record_resume(self, owner: str, offset: int) -> None:
        mark = self._s.download_limits.get(owner)
        if mark is not None:
            self._s.download_limits[owner] = mark._replace(resume_offset=offset, resumes=mark.resumes + 1)

    def restore_download_limit(self, owner: str, expected: DownloadMark, previous: DownloadMark | None) -> bool:
        if self.download_limit(owner) != tuple(expected):
            return False
        if previous is None:
            self._s.download_limits.pop(owner, None)
        else:
            self._s.download_limits[owner] = DownloadMark(*previous)
        return True


class InMemoryStore:
    """The Store contract with dicts and one lock (module docstring)."""

    # A read is a dict look-up.
    cheap_point_reads = True

    def __init__(self):
        self._state = _State()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self, lock_key: str | None = None) -> Iterator[MemoryTx]:
        """One writer at a time, whatever `lock_key`; its work is seen by others once it ends."""
        with self._lock:
            work = self._state.copy()
            yield MemoryTx(work)
            self._state = work

    def reader(self) -> MemoryReader:
        """The latest commit as of each call."""
        return _LatestReader(self)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[MemoryReader]:
        yield MemoryReader(self._state)

    def schema_version(self) -> int:
        return SCHEMA_VERSION

    def migrate(self) -> int:
        return SCHEMA_VERSION

    def check_schema(self) -> int:
        return SCHEMA_VERSION

    def check_reachable(self) -> int:
        return SCHEMA_VERSION

    def close(self) -> None:
        pass


class _LatestReader(MemoryReader):
    """A reader that looks at the store's latest commit at each call (as a database's autocommit
    reader does), not the state of when it was made."""

    def __init__(self, store: InMemoryStore):
        self._store = store

    @property
    def _s(self) -> _State:  # type: ignore[override]
        return self._store._state

