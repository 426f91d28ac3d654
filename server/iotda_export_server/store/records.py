"""What both database stores share: the records they return besides the domain's (DownloadMark),
their errors (SchemaError; their driver's passing failures turned into the domain's StoreUnavailable),
and the mapping of a row (a plain tuple in the column order named here,
which every query of store/sql/*.sql selects) to the domain's records."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from ..domain.errors import StoreUnavailable
from ..domain.model import BatchTask, ExportTask, Principal, Statement, TaskProgress


class SchemaError(RuntimeError):
    """The database holds a schema this code does not know (newer), or none where one is needed."""


class DownloadMark(NamedTuple):
    """The user's last counted download, and the free resumes of it so far."""

    last_at: int
    export_task_id: str
    file_generation: int
    resume_offset: int
    resumes: int


# (id, target, status, output, error_code, error_msg): a sub-task as it is written and paged.
SubtaskRow = tuple[str, str, str, str, str, str]

# The columns of an export-task row, in ExportTask's field order (its mapper takes them by position).
EXPORT_COLUMNS = (
    "export_task_id", "owner", "project_id", "instance_id", "resource_type", "batch_task_id", "export_format",
    "app_type", "app_id", "conditions_key", "status", "status_desc", "progress", "export_count", "create_time",
    "end_time", "version", "run_state", "run_token", "attempts", "worker_id", "lease_until", "queued_at",
    "file_generation", "file_size", "file_sha256", "file_key",
)
# The columns a principal is looked up by (principal_by's `column`); each is unique.
PRINCIPAL_LOOKUPS = frozenset({"user", "principal_id", "token_sha256", "ak", "client_cert_subject",
                               "client_cert_san"})
# The optional filters of ListExportTasks (ListExportFilter's fields as columns).
EXPORT_LIST_FILTERS = ("resource_type", "batch_task_id", "app_type", "app_id")


def export_task(row: Sequence[Any] | None) -> ExportTask | None:
    """A row of EXPORT_COLUMNS."""
    return None if row is None else ExportTask(*row)


def assignments(values: dict[str, Any], placeholder: str) -> str:
    """`column = <placeholder>, ...` for an update of an export task's `values` (their names are
    checked against EXPORT_COLUMNS: they become SQL)."""
    unknown = set(values) - set(EXPORT_COLUMNS)
    if unknown:
        raise ValueError(f"not columns of an export task: {sorted(unknown)}")
    return ", ".join(f"{column} = {placeholder}" for column in values)


def export_task_values(t: ExportTask) -> tuple:
    """An ExportTask as the values of EXPORT_COLUMNS (an insert's parameters)."""
    return tuple(getattr(t, c) for c in EXPORT_COLUMNS)


def principal(row: Sequence[Any] | None) -> Principal | None:
    """A row of (user, principal_id, project_id, enterprise_project_id, ak, sk, policy, created_at,
    client_cert_subject, client_cert_san)."""
    if row is None:
        return None
    user, principal_id, project_id, enterprise_project_id, ak, sk, policy, created_at, subject, san = row
    return Principal(user=user, principal_id=principal_id, project_id=project_id,
                     enterprise_project_id=enterprise_project_id, ak=ak, sk=sk,
                     statements=list(_policy_statements(policy)), created_at=created_at,
                     client_cert_subject=subject, client_cert_san=san)


def lookup_column(column: str) -> str:
    """`column` if principals are looked up by it; ValueError otherwise. It becomes SQL: an `assert`
    would vanish under `python -O`."""
    if column not in PRINCIPAL_LOOKUPS:
        raise ValueError(f"principals are not looked up by {column!r}")
    return column


def principal_values(p: Principal, token_sha256: str) -> tuple:
    """A principal's insert parameters: (user, principal_id, project_id, enterprise_project_id,
    token_sha256, ak, sk, policy, created_at, client_cert_subject, client_cert_san)."""
    return (p.user, p.principal_id, p.project_id, p.enterprise_project_id, token_sha256, p.ak, p.sk,
            p.policy_json(), p.created_at, p.client_cert_subject, p.client_cert_san)


@functools.lru_cache(maxsize=1024)
def _policy_statements(policy_text: str) -> tuple[Statement, ...]:
    """A policy's statements (immutable), parsed once per distinct text: every call authenticates."""
    policy = json.loads(policy_text)
    return tuple(Statement.from_json(s) for s in policy.get("Statement", []))


def batch_task(row: Sequence[Any] | None, progress: TaskProgress | None = None) -> BatchTask | None:
    """A row of (task_id, project_id, instance_id, app_id, task_name, task_type, task_mode,
    need_confirm, task_ext_info, targets, targets_filter, document, task_policy, document_source,
    status, status_desc, create_time), the JSON columns as text."""
    if row is None:
        return None
    (task_id, project_id, instance_id, app_id, task_name, task_type, task_mode, need_confirm, task_ext_info,
     targets, targets_filter, document, task_policy, document_source, status, status_desc, create_time) = row
    return BatchTask(
        task_id=task_id, project_id=project_id, instance_id=instance_id, app_id=app_id, task_name=task_name,
        task_type=task_type, task_mode=task_mode, need_confirm=bool(need_confirm),
        task_ext_info=_json(task_ext_info), targets=json.loads(targets), targets_filter=_json(targets_filter),
        document=_json(document), task_policy=_json(task_policy), document_source=document_source,
        status=status, status_desc=status_desc, create_time=create_time, progress=progress or TaskProgress())


def batch_task_values(t: BatchTask) -> tuple:
    """A batch task's insert parameters, in the row's column order (without its progress)."""
    return (t.task_id, t.project_id, t.instance_id, t.app_id, t.task_name, t.task_type, t.task_mode,
            int(t.need_confirm), _text(t.task_ext_info), json.dumps(t.targets), _text(t.targets_filter),
            _text(t.document), _text(t.task_policy), t.document_source, t.status, t.status_desc, t.create_time)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def equal_filters(filters: dict[str, str], columns: Sequence[str], placeholder: str) -> tuple[str, list[str]]:
    """The optional `AND column = <placeholder>` terms of a list query, for the filters given
    (an empty value: no filter), and their parameters. A term per given filter rather than one fixed
    `(? = '' OR column = ?)`: with the fixed form, SQLite's planner no longer uses the index that
    leads with the filtered column (EXPLAIN QUERY PLAN: subtasks_by_task instead of
    subtasks_by_task_status). `columns` are fixed names, never input."""
    terms, args = [], []
    for column in columns:
        if filters.get(column):
            terms.append(f" AND {column} = {placeholder}")
            args.append(filters[column])
    return "".join(terms), args


# A store's reading of its driver's error: the StoreUnavailable it means, or None (not a passing failure).
Translate = Callable[[BaseException], "StoreUnavailable | None"]
_Class = TypeVar("_Class", bound=type)


@contextlib.contextmanager
def unavailable_raised(translate: Translate) -> Iterator[None]:
    """Inside: the driver's passing failures (as `translate` reads them) leave as StoreUnavailable,
    chained to the driver's error; every other error leaves as it is. Around what a store does
    outside its query class: connecting, BEGIN, COMMIT, a snapshot's set-up."""
    try:
        yield
    except Exception as exc:
        unavailable = translate(exc)
        if unavailable is None:
            raise
        raise unavailable from exc


def raises_unavailable(translate: Translate) -> Callable[[_Class], _Class]:
    """A class decorator for a store's query class: every public method runs inside
    `unavailable_raised(translate)` (a generator method for as long as it is iterated), so no driver
    error of that kind leaves the store whatever method a later change adds.
    tests/test_store_contract.py checks that each public method is wrapped."""

    def wrap(method: Callable) -> Callable:
        # try/except written out rather than `with unavailable_raised(...)`: a point read costs tens
        # of microseconds, and a context manager per call would add a few percent to it.
        if inspect.isgeneratorfunction(method):
            @functools.wraps(method)
            def generator(*args, **kwargs):
                try:
                    return (yield from method(*args, **kwargs))
                except Exception as exc:
                    unavailable = translate(exc)
                    if unavailable is None:
                        raise
                    raise unavailable from exc
            return generator

        @functools.wraps(method)
        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                unavailable = translate(exc)
                if unavailable is None:
                    raise
                raise unavailable from exc
        return call

    def decorate(cls: _Class) -> _Class:
        # Inherited methods too (store/sqltx.py's): each gets a wrapped copy on `cls`, the base
        # class stays as it is.
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_"):
                setattr(cls, name, wrap(member))
        return cls

    return decorate
