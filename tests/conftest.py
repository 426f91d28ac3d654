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
from iotda_export_server.app import ExportServer, ServerConfig, add_principal
from iotda_export_server.domain.batches import seed_batch_task


class ServerThread:
    """An ExportServer running on its own event loop in a background thread."""

    def __init__(self, data_dir: str, workers: int = 1, **config):
        self.data_dir = str(data_dir)
        self.config = ServerConfig(data_dir=self.data_dir, grpc_addr="127.0.0.1:0", workers=workers, **config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self.thread.start()
        self.server = ExportServer(self.config)
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)
        self.address = f"127.0.0.1:{self.port}"
        self.http_port = self.server.http_port
        self.http_url = f"http://127.0.0.1:{self.http_port}" if self.http_port else None
        self.admin = self.server.bootstrap_credentials

    @property
    def store(self):
        return self.server.store

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


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
