"""Plain records the domain works with; the store reads and writes them, the transport renders them."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from . import rules


@dataclass
class ExportTask:
    export_task_id: str
    owner: str  # the owning principal's principal_id
    project_id: str
    instance_id: str
    resource_type: str
    batch_task_id: str  # resource_condition.task_id (the stored column keeps this name)
    export_format: str
    app_type: str
    app_id: str | None
    conditions_key: str
    status: str
    status_desc: str | None
    progress: int
    export_count: int
    create_time: int
    end_time: int | None
    version: int
    run_state: str
    run_token: str | None
    attempts: int
    worker_id: str | None
    lease_until: int | None
    queued_at: int | None
    # The last good result file: generation 0 none yet; a generation with no size and digest: that
    # file was found damaged and removed (the generation stays, so it never names another file).
    file_generation: int
    file_size: int | None
    file_sha256: str | None
    # Where the file is in an object store (store/files.py); None for the local directory.
    file_key: str | None = None

    @property
    def unfinished(self) -> bool:
        return self.status == rules.STATUS_PROCESSING

    @property
    def file_available(self) -> bool:
        return self.file_generation > 0 and self.file_size is not None

    @property
    def file_damaged(self) -> bool:
        return self.file_generation > 0 and self.file_size is None


@dataclass
class TaskProgress:
    total: int = 0
    processing: int = 0
    success: int = 0
    fail: int = 0
    waitting: int = 0
    fail_wait_retry: int = 0
    stopped: int = 0
    removed: int = 0

    # sub-task status -> attribute
    BY_STATUS = {
        "Processing": "processing", "Success": "success", "Fail": "fail", "Waitting": "waitting",
        "FailWaitRetry": "fail_wait_retry", "Stopped": "stopped", "Removed": "removed",
    }

    @classmethod
    def from_counts(cls, counts: dict[str, int]) -> "TaskProgress":
        p = cls(total=sum(counts.values()))
        for status, n in counts.items():
            setattr(p, cls.BY_STATUS[status], n)
        return p


@dataclass
class BatchTask:
    task_id: str
    project_id: str
    instance_id: str
    app_id: str
    task_name: str
    task_type: str
    task_mode: str
    need_confirm: bool
    task_ext_info: dict | None
    targets: list[str]
    targets_filter: dict | None
    document: dict | None
    task_policy: dict | None
    document_source: str
    status: str
    status_desc: str
    create_time: int
    progress: TaskProgress = field(default_factory=TaskProgress)

    @classmethod
    def from_row(cls, row: Any, progress: TaskProgress | None = None) -> "BatchTask":
        def js(v):
            return None if v is None else json.loads(v)

        return cls(
            task_id=row["task_id"], project_id=row["project_id"], instance_id=row["instance_id"],
            app_id=row["app_id"], task_name=row["task_name"], task_type=row["task_type"],
            task_mode=row["task_mode"], need_confirm=bool(row["need_confirm"]),
            task_ext_info=js(row["task_ext_info"]), targets=json.loads(row["targets"]),
            targets_filter=js(row["targets_filter"]), document=js(row["document"]),
            task_policy=js(row["task_policy"]), document_source=row["document_source"],
            status=row["status"], status_desc=row["status_desc"], create_time=row["create_time"],
            progress=progress or TaskProgress(),
        )


@dataclass
class Subtask:
    id: str
    target: str
    status: str
    output: str
    error_code: str
    error_msg: str


@dataclass(frozen=True)
class Page:
    count: int
    marker: str


@dataclass(frozen=True)
class ResourceCondition:
    """What an export reads: the batch task whose sub-task results it exports. One name from the wire's
    resource_condition through the domain; the record and the store call its task_id batch_task_id."""

    task_id: str


@dataclass(frozen=True)
class InvalidResourceCondition:
    """A resource_condition the transport could not read (ListExportTasks' JSON text), with why. The
    transport parses but does not refuse: the domain reports `reason` as resource_condition's
    violation, together with the other fields' in one INVALID_ARGUMENT."""

    reason: str


@dataclass(frozen=True)
class Statement:
    """One IAM-style policy statement: Allow/Deny actions, optionally only in some enterprise projects."""

    effect: str
    actions: tuple[str, ...]
    enterprise_projects: tuple[str, ...] | None = None  # condition g:EnterpriseProjectId (StringEquals)

    def to_json(self) -> dict:
        d: dict[str, Any] = {"Effect": self.effect, "Action": list(self.actions)}
        if self.enterprise_projects is not None:
            d["Condition"] = {"StringEquals": {"g:EnterpriseProjectId": list(self.enterprise_projects)}}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Statement":
        eps = d.get("Condition", {}).get("StringEquals", {}).get("g:EnterpriseProjectId")
        return cls(effect=d["Effect"], actions=tuple(d["Action"]),
                   enterprise_projects=None if eps is None else tuple(eps))


@dataclass
class Principal:
    """A user of one project. `principal_id` (random, immutable, made with the principal) is what owns
    export tasks, download marks and idempotency records: a user removed and added again under the same
    name is another principal and inherits nothing. `user` is the name, for people and logs."""

    user: str
    principal_id: str
    project_id: str
    enterprise_project_id: str
    ak: str
    sk: str = field(repr=False)
    statements: list[Statement] = field(default_factory=list)
    created_at: int = 0
    # Mutual TLS: the client certificate (subject in RFC 4514, or one SAN) that authenticates as this
    # principal without a token; None: not bound.
    client_cert_subject: str | None = None
    client_cert_san: str | None = None

    def policy_json(self) -> str:
        return json.dumps({"Version": "1.1", "Statement": [s.to_json() for s in self.statements]})

    @classmethod
    def from_row(cls, row: Any) -> "Principal":
        return cls(user=row["user"], principal_id=row["principal_id"], project_id=row["project_id"],
                   enterprise_project_id=row["enterprise_project_id"], ak=row["ak"], sk=row["sk"],
                   statements=list(_policy_statements(row["policy"])), created_at=row["created_at"],
                   client_cert_subject=row["client_cert_subject"], client_cert_san=row["client_cert_san"])


@functools.lru_cache(maxsize=1024)
def _policy_statements(policy_text: str) -> tuple[Statement, ...]:
    """A policy's statements (immutable), parsed once per distinct text: every call authenticates."""
    policy = json.loads(policy_text)
    return tuple(Statement.from_json(s) for s in policy.get("Statement", []))


@dataclass(frozen=True)
class Caller:
    """Who is calling and where: the authenticated principal plus the request's scope."""

    principal: Principal
    project_id: str
    instance_id: str

    @property
    def owner(self) -> str:
        """What owns the caller's records: the principal's immutable id, never the user name."""
        return self.principal.principal_id
