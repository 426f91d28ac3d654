"""The real server in-process (gRPC on a free port, real worker processes, SQLite), as tests do."""

from __future__ import annotations

import asyncio
import secrets
import threading

import grpc


class ServerThread:
    """An ExportServer running on its own event loop in a background thread."""

    def __init__(self, data_dir: str, workers: int = 1, **config: object) -> None:
        from iotda_export_server.app import ExportServer, ServerConfig

        self.config = ServerConfig(data_dir=str(data_dir), grpc_addr="127.0.0.1:0", workers=workers, **config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self.thread.start()
        self.server = ExportServer(self.config)
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)
        self.address = f"127.0.0.1:{self.port}"

    @property
    def store(self):
        return self.server.store

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Client:
    """A principal with its own project, and the export stubs that send its token."""

    def __init__(self, server: ServerThread, project_id: str | None = None) -> None:
        from iotda.export.v1 import export_task_pb2_grpc
        from iotda_export_server.app import add_principal

        self.project_id = project_id or secrets.token_hex(16)
        creds = add_principal(server.store, f"bench-{secrets.token_hex(4)}", self.project_id)
        self.metadata = (("authorization", f"Bearer {creds['token']}"),)
        self.channel = grpc.insecure_channel(server.address)
        self.exports = export_task_pb2_grpc.ExportTaskServiceStub(self.channel)

    def create(self, task_id: str):
        from iotda.export.v1 import export_task_pb2 as epb

        return self.exports.CreateExportTask(epb.CreateExportTaskRequest(
            project_id=self.project_id, resource_type="BatchTask",
            resource_condition=epb.ResourceCondition(task_id=task_id)), metadata=self.metadata).export_task

    def watch(self, export_task_id: str):
        from iotda.export.v1 import export_task_pb2 as epb

        return self.exports.WatchProgress(epb.WatchProgressRequest(
            project_id=self.project_id, export_task_id=export_task_id), metadata=self.metadata)

    def download(self, export_task_id: str) -> bytes:
        from iotda.export.v1 import export_task_pb2 as epb

        chunks = self.exports.ShowExportTask(epb.ShowExportTaskRequest(
            project_id=self.project_id, export_task_id=export_task_id), metadata=self.metadata)
        return b"".join(c.body.data for c in chunks)

    def close(self) -> None:
        self.channel.close()
