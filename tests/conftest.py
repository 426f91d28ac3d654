"""Shared test harness: a real server (in-process gRPC on port 0, real worker processes, SQLite in a
temporary data directory) and helpers to make principals, batch tasks and stubs.

Quotas are per user, so tests isolate themselves by creating their own principal (in its own
project) on a shared server instead of restarting one per test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from dataclasses import dataclass

import grpc
import pytest

from iotda.export.v1 import batch_task_pb2_grpc, export_task_pb2_grpc
from iotda_export_server.app import add_principal
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.testing import ServerThread  # noqa: F401 - tests import it from here


@dataclass
class User:
    """A principal with its own project, and stubs that send its token."""

    creds: dict
    channel: grpc.Channel

    @property
    def project_id(self) -> str:
        return self.creds["project_id"]

    @property
    def metadata(self) -> tuple:
        return (("authorization", f"Bearer {self.creds['token']}"),)

    @property
    def exports(self) -> export_task_pb2_grpc.ExportTaskServiceStub:
        return export_task_pb2_grpc.ExportTaskServiceStub(self.channel)

    @property
    def batches(self) -> batch_task_pb2_grpc.BatchTaskServiceStub:
        return batch_task_pb2_grpc.BatchTaskServiceStub(self.channel)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Polls until predicate() is truthy; fails the test with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def each_store(request, tmp_path_factory):
    """Each store, for a module's tests that must hold on both: a SQLite file, then a PostgreSQL
    database of its own (created on the machine's server, dropped afterwards)."""
    from iotda_export_server.store import open_store

    data_dir = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        store = open_store(data_dir)
        yield store
        store.close()
        return
    import pg_support as ps

    db = ps.TestDatabase().create()
    store = open_store(data_dir, db.url, migrate=True)
    try:
        yield store
    finally:
        store.close()
        db.drop()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = ServerThread(tmp_path_factory.mktemp("data"), workers=2, http_addr="127.0.0.1:0")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def make_user(server: ServerThread, channel, actions: list[str] | None = None, project_id: str | None = None,
              **kw) -> User:
    creds = add_principal(server.store, f"user-{secrets.token_hex(4)}", project_id or secrets.token_hex(16),
                          actions, **kw)
    return User(creds=creds, channel=channel)


@pytest.fixture
def user(server, channel) -> User:
    return make_user(server, channel)


@pytest.fixture
def seed(server):
    """seed(user, n) -> id of a finished batch task with n sub-tasks in the user's project."""
    def _seed(user: User, n: int, app_id: str = "default", instance_id: str = "") -> str:
        return seed_batch_task(server.store, user.project_id, instance_id, n, app_id=app_id, seed=n)
    return _seed


os.environ.setdefault("IOTDA_EXPORT_LOG_LEVEL", "WARNING")


# -- appended: helpers and fixtures of the rule, validation, auth and batch-task suites -------------

import contextlib  # noqa: E402
import subprocess  # noqa: E402

from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from iotda_export_server.runner.supervisor import spawn_worker  # noqa: E402


@dataclass
class RpcFailure:
    """A refused call, unpacked: the gRPC code and the google.rpc.Status details."""

    code: grpc.StatusCode
    message: str
    error_info: error_details_pb2.ErrorInfo | None
    bad_request: error_details_pb2.BadRequest | None
    quota_failure: error_details_pb2.QuotaFailure | None
    retry_info: error_details_pb2.RetryInfo | None
    precondition: error_details_pb2.PreconditionFailure | None
    resource_info: error_details_pb2.ResourceInfo | None

    @property
    def error_code(self) -> str | None:
        return None if self.error_info is None else self.error_info.metadata.get("error_code")

    @property
    def fields(self) -> list[str]:
        return [] if self.bad_request is None else [v.field for v in self.bad_request.field_violations]


def rpc_failure(err: grpc.RpcError) -> RpcFailure:
    status = rpc_status.from_call(err)
    found: dict[str, object] = {}
    kinds = {"error_info": error_details_pb2.ErrorInfo, "bad_request": error_details_pb2.BadRequest,
             "quota_failure": error_details_pb2.QuotaFailure, "retry_info": error_details_pb2.RetryInfo,
             "precondition": error_details_pb2.PreconditionFailure,
             "resource_info": error_details_pb2.ResourceInfo}
    for detail in (status.details if status is not None else ()):
        for name, cls in kinds.items():
            if detail.Is(cls.DESCRIPTOR):
                msg = cls()
                detail.Unpack(msg)
                found[name] = msg
    if status is not None:
        assert status.code == err.code().value[0], "the rich status disagrees with the call's code"
    return RpcFailure(code=err.code(), message=err.details() or "", **{k: found.get(k) for k in kinds})


def refused(fn, code: grpc.StatusCode | None = None) -> RpcFailure:
    """Runs fn (which calls an RPC; streams are consumed), expects a refusal, returns it unpacked."""
    try:
        result = fn()
        if hasattr(result, "__next__"):
            list(result)
    except grpc.RpcError as err:
        failure = rpc_failure(err)
        if code is not None:
            assert failure.code == code, f"expected {code.name}, got {failure.code.name}: {failure.message}"
        return failure
    raise AssertionError("the call was expected to be refused but succeeded")


def invalid_argument(fn, field: str, error_code: str = "IOTDA.000006") -> RpcFailure:
    """Expects INVALID_ARGUMENT whose BadRequest names `field` and whose ErrorInfo holds error_code."""
    f = refused(fn, grpc.StatusCode.INVALID_ARGUMENT)
    assert f.error_code == error_code, (f.error_code, f.message)
    assert field in f.fields, (field, f.fields, f.message)
    return f


def store_snapshot(server: ServerThread, project_id: str) -> dict:
    """Everything the store holds for one project: rows of export tasks, batch tasks and sub-tasks, the
    download limits and recorded request ids (to show that a refused call changed nothing)."""
    c = server.store.reader().c

    def rows(q, args=()):
        return [tuple(r) for r in c.execute(q, args).fetchall()]

    return {
        "export_tasks": rows("SELECT * FROM export_tasks WHERE project_id = ? ORDER BY export_task_id",
                             (project_id,)),
        "batch_tasks": rows("SELECT * FROM batch_tasks WHERE project_id = ? ORDER BY task_id", (project_id,)),
        "subtasks": rows("SELECT s.* FROM subtasks s JOIN batch_tasks b USING (task_id)"
                         " WHERE b.project_id = ? ORDER BY s.id", (project_id,)),
        "requests": rows("SELECT * FROM export_requests ORDER BY owner, request_id"),
        "downloads": rows("SELECT * FROM download_limits ORDER BY owner"),
    }


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory):
    """A server without workers: exports stay Processing (deterministic unfinished quotas)."""
    s = ServerThread(tmp_path_factory.mktemp("idle"), workers=0)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def idle_channel(idle_server):
    with grpc.insecure_channel(idle_server.address) as ch:
        yield ch


@pytest.fixture
def manual_server(tmp_path):
    """A server of this test alone, without workers: exports run only when the test starts a worker
    process (worker_process), so every step of an export's life happens when the test says."""
    s = ServerThread(tmp_path / "manual", workers=0)
    with grpc.insecure_channel(s.address) as ch:
        s.channel = ch
        yield s
    s.stop()


@contextlib.contextmanager
def worker_process(server: ServerThread):
    """A real export worker process (the one the supervisor spawns) on the server's data directory,
    stopped with SIGTERM on exit."""
    p = spawn_worker(server.config.worker_config(), f"test-worker-{secrets.token_hex(3)}")
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


# -- batch tasks whose every row the test knows ---------------------------------------------------

def known_row(i: int) -> list[str]:
    """Sub-task i of seed_known's batch task, as its export row (target, status, output, error code,
    error message): mixed outcomes, text that looks like a formula, characters outside Latin-1."""
    target = f"dev_{i:06d}"
    if i % 10 == 3:
        return [target, "Fail", "", "IOTDA.014016", f"Device {target} is offline."]
    if i % 20 == 7:
        return [target, "Stopped", "", "", ""]
    return [target, "Success", f"=SUM({i};1) 温度 {i * 7 % 101}°C ✓", "", ""]


def seed_known(user: User, n: int) -> tuple[str, list[list[str]]]:
    """A batch task created and completed through the API with rows the test itself chose; returns its
    id and the export's expected data rows in order (sub-tasks in target order), so an export can
    be checked against what was seeded rather than against the store's own read-back."""
    from iotda.export.v1 import batch_task_pb2 as bpb

    rows = [known_row(i) for i in range(n)]
    task = user.batches.CreateBatchTask(bpb.CreateBatchTaskRequest(
        project_id=user.project_id, task_name="known_rows", task_type="createCommands",
        targets=[r[0] for r in rows]), metadata=user.metadata).batchtask
    for start in range(0, n, 10_000):
        user.batches.RecordSubtaskResults(bpb.RecordSubtaskResultsRequest(
            project_id=user.project_id, task_id=task.task_id, results=[
                bpb.SubtaskResult(target=t, status=s, output=o,
                                  error=bpb.SubtaskError(error_code=c, error_msg=m) if c else None)
                for t, s, o, c, m in rows[start:start + 10_000]]), metadata=user.metadata)
    return task.task_id, rows
