"""The grpc.aio server: our services, server reflection and grpc.health.v1, on one port."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from iotda.export.v1 import batch_task_pb2, export_task_pb2

from ..domain.errors import BadRequestFormat
from . import errors

from .servicers import BatchTaskServicer, ExportTaskServicer

SERVICE_DESCRIPTORS = ((export_task_pb2.DESCRIPTOR, "ExportTaskService"), (batch_task_pb2.DESCRIPTOR, "BatchTaskService"))
SERVICE_NAMES = tuple(d.services_by_name[n].full_name for d, n in SERVICE_DESCRIPTORS)
# A create with 30,000 targets of 128 characters is about 4 MiB of protobuf: leave room.
MAX_MESSAGE_BYTES = 20 * 1024 * 1024

# Calls that arrived but that the aio loop has not picked up yet: past 1,000 grpc core starts
# cancelling them at random, past 3,000 all of them. After a restart every watcher reconnects at
# once, so a burst of thousands is normal here, not an overload to shed.
PENDING_CALL_LIMITS = (
    ("grpc.server.max_pending_requests", 10_000),
    ("grpc.server.max_pending_requests_hard_limit", 20_000),
)

# Long watch streams: let clients ping every 10 s without being told "too_many_pings".
SERVER_OPTIONS = (
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared port
    # A connection must finish its (TLS) handshake within 20 s, not gRPC core's default 120 s.
    ("grpc.server_handshake_timeout_ms", 20_000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    *PENDING_CALL_LIMITS,
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


async def _parse(raw: bytes, request_class, context: grpc.aio.ServicerContext):
    try:
        return request_class.FromString(raw)
    except DecodeError:
        await errors.abort(context, BadRequestFormat(
            f"The request is not a valid {request_class.DESCRIPTOR.full_name} message."))


def service_handler(service: ServiceDescriptor, servicer) -> grpc.GenericRpcHandler:
    """The servicer's methods, taking requests as bytes and parsing them here: a message that does
    not decode (bad wire format, invalid UTF-8) is INVALID_ARGUMENT, not the UNKNOWN grpcio gives
    when its own deserializer raises."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        serializer = message_factory.GetMessageClass(method.output_type).SerializeToString
        behavior = getattr(servicer, method.name)
        if method.server_streaming:
            def passthrough(message, serializer=serializer):  # a message the hub encoded once for many streams
                return message if type(message) is bytes else serializer(message)

            async def stream(raw, context, behavior=behavior, request_class=request_class):
                request = await _parse(raw, request_class, context)
                async for item in behavior(request, context):
                    yield item
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(stream, response_serializer=passthrough)
        else:
            async def unary(raw, context, behavior=behavior, request_class=request_class):
                return await behavior(await _parse(raw, request_class, context), context)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(unary, response_serializer=serializer)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def create_server(address: str, exports_servicer: ExportTaskServicer, batches_servicer: BatchTaskServicer,
                  credentials: grpc.ServerCredentials | None = None,
                  hop_address: str | None = None) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Builds the server (inside the running event loop) and binds `address`, with TLS when
    `credentials` are given; port 0 picks one. `hop_address` (unix:PATH in a private directory) is a
    second, plaintext port for this process's own HTTP gateway: its calls never cross the network,
    so they need no certificate of their own with TLS on. Returns (server, bound port, health servicer)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((
        service_handler(export_task_pb2.DESCRIPTOR.services_by_name["ExportTaskService"], exports_servicer),
        service_handler(batch_task_pb2.DESCRIPTOR.services_by_name["BatchTaskService"], batches_servicer)))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server, pool=MethodAwarePool(descriptor_pool.Default()))
    port = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    if hop_address is not None:
        server.add_insecure_port(hop_address)
    return server, port, health_servicer
