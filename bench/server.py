"""The real server in-process (gRPC on a free port, real worker processes, SQLite), as tests do."""

from __future__ import annotations

import secrets

import grpc

from iotda_export_server.testing import ServerThread


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
