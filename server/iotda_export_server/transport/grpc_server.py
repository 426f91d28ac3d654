"""The grpc.aio server: our services, server reflection and grpc.health.v1, on one port."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from iotda.export.v1 import batch_task_pb2, batch_task_pb2_grpc, export_task_pb2, export_task_pb2_grpc

from .servicers import BatchTaskServicer, ExportTaskServicer

SERVICE_DESCRIPTORS = ((export_task_pb2.DESCRIPTOR, "ExportTaskService"), (batch_task_pb2.DESCRIPTOR, "BatchTaskService"))
SERVICE_NAMES = tuple(d.services_by_name[n].full_name for d, n in SERVICE_DESCRIPTORS)
# A create with 30,000 targets of 128 characters is about 4 MiB of protobuf: leave room.
MAX_MESSAGE_BYTES = 20 * 1024 * 1024

# Long watch streams: let clients ping every 10 s without being told "too_many_pings".
SERVER_OPTIONS = (
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared port
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


class MethodAwarePool:
    """The default descriptor pool, plus lookups of method names: grpcio-reflection asks the pool
    for the file of `pkg.Service.Method` (grpcurl describe), which the upb backend cannot answer
    (grpc/grpc#34743)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool):
        self._pool = pool

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str):  # noqa: N802 - the pool's API name
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise KeyError(symbol) from None
            return service.file


def create_server(address: str, exports_servicer: ExportTaskServicer,
                  batches_servicer: BatchTaskServicer) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Builds the server (inside the running event loop) and binds `address`; port 0 picks one.
    Returns (server, bound port, health servicer)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    export_task_pb2_grpc.add_ExportTaskServiceServicer_to_server(exports_servicer, server)
    batch_task_pb2_grpc.add_BatchTaskServiceServicer_to_server(batches_servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server, pool=MethodAwarePool(descriptor_pool.Default()))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port, health_servicer
