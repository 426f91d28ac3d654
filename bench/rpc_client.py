"""Load generators and the echo server of the RPC figures, each run as its own process.

    python -m bench.rpc_client echo-server
    python -m bench.rpc_client fanout-server   (SIGUSR1: send every WatchProgress stream its final event)
    python -m bench.rpc_client rate      ADDR TOKEN PROJECT EXPORT_ID RPS SECONDS [echo]
    python -m bench.rpc_client saturate  ADDR TOKEN PROJECT EXPORT_ID CONCURRENCY SECONDS [echo]
    python -m bench.rpc_client watch     ADDR TOKEN PROJECT EXPORT_ID STREAMS CHANNELS TIMEOUT
    python -m bench.rpc_client health    ADDR RPS SECONDS
    python -m bench.rpc_client flood     HTTP_PORT PROJECT BODY_MB PER_SECOND SECONDS
    python -m bench.rpc_client sink-server

An ADDR of the form https://HOST:PORT is called over TLS, trusting the CA file named by $BENCH_TLS_CA.

Results are printed as one JSON line (watch also prints "OPEN <count>" once every stream has its
first event, or none came for 10 s, so the caller can measure the server and then make the task
change).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import sys
import time

import grpc

GET_METHOD = "/iotda.export.v1.ExportTaskService/GetExportTask"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
WATCH_METHOD = "/iotda.export.v1.ExportTaskService/WatchProgress"
ECHO_METHOD = "/bench.Echo/Echo"


def _tls(address: str) -> tuple[str, grpc.ChannelCredentials | None]:
    if not address.startswith("https://"):
        return address, None
    with open(os.environ["BENCH_TLS_CA"], "rb") as f:
        return address[len("https://"):], grpc.ssl_channel_credentials(f.read())


def sync_channel(address: str, options=()) -> grpc.Channel:
    target, credentials = _tls(address)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def aio_channel(address: str, options=()) -> grpc.aio.Channel:
    target, credentials = _tls(address)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _get_request(project: str, export_id: str) -> bytes:
    from iotda.export.v1 import export_task_pb2 as epb
    return epb.GetExportTaskRequest(project_id=project, export_task_id=export_id).SerializeToString()


def echo_server() -> None:
    async def serve() -> None:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler("bench.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(json.dumps({"port": port}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(serve())


def fanout_server() -> None:
    """The floor of the WatchProgress figure: a bare grpc.aio server that answers every WatchProgress
    call with one Processing event, and on SIGUSR1 sends every stream the same pre-encoded Success
    event (end_time = the moment it starts sending) and ends them."""
    from iotda.export.v1 import export_task_pb2 as epb

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        final: asyncio.Future[bytes] = loop.create_future()
        first = epb.WatchProgressResponse(export_task=epb.ExportTask(status="Processing"), sequence=1)

        async def watch(request: bytes, context: grpc.aio.ServicerContext):
            yield first.SerializeToString()
            yield await final

        def publish() -> None:
            end = time.time()
            end_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end)) + f".{int(end * 1000) % 1000:03d}Z"
            final.set_result(epb.WatchProgressResponse(export_task=epb.ExportTask(
                status="Success", end_time=end_text), sequence=2).SerializeToString())

        from iotda_export_server.transport.grpc_server import PENDING_CALL_LIMITS
        server = grpc.aio.server(options=PENDING_CALL_LIMITS)  # as ours: 5,000 calls arrive at once
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "iotda.export.v1.ExportTaskService", {"WatchProgress": grpc.unary_stream_rpc_method_handler(watch)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(json.dumps({"port": port}), flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, publish)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(serve())


def rate(address: str, token: str, project: str, export_id: str, rps: str, seconds: str,
         target: str = "api") -> dict:
    """Open loop at a fixed offered rate, one call in flight: latency of each call."""
    method = {"echo": ECHO_METHOD, "health": HEALTH_METHOD}.get(target, GET_METHOD)
    request = b"" if target == "health" else _get_request(project, export_id)
    metadata = (("authorization", f"Bearer {token}"),)
    with sync_channel(address) as channel:
        call = channel.unary_unary(method)
        for _ in range(20):  # warm-up: connection, first-call paths
            call(request, metadata=metadata, timeout=10)
        interval = 1 / float(rps)
        latencies, errors = [], 0
        start = time.perf_counter()
        next_at = start
        while (now := time.perf_counter()) - start < float(seconds):
            if now < next_at:
                time.sleep(next_at - now)
            sent = time.perf_counter()
            try:
                call(request, metadata=metadata, timeout=10)
                latencies.append((time.perf_counter() - sent) * 1000)
            except grpc.RpcError:
                errors += 1
            next_at += interval
    return {"count": len(latencies), "errors": errors, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies, default=float("nan"))}


def saturate(address: str, token: str, project: str, export_id: str, concurrency: str, seconds: str,
             target: str = "api") -> dict:
    """Closed loop with CONCURRENCY calls in flight (grpc.aio): completed calls per second."""
    request = _get_request(project, export_id)
    metadata = (("authorization", f"Bearer {token}"),)
    method = ECHO_METHOD if target == "echo" else GET_METHOD

    async def run() -> dict:
        async with aio_channel(address) as channel:
            call = channel.unary_unary(method)
            for _ in range(20):
                await call(request, metadata=metadata, timeout=10)
            done = errors = 0
            deadline = time.perf_counter() + float(seconds)

            async def loop() -> None:
                nonlocal done, errors
                while time.perf_counter() < deadline:
                    try:
                        await call(request, metadata=metadata, timeout=10)
                        done += 1
                    except grpc.RpcError:
                        errors += 1

            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(int(concurrency))))
            elapsed = time.perf_counter() - start
        return {"rps": done / elapsed, "count": done, "errors": errors}

    return asyncio.run(run())


def _epoch_ms(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp() * 1000


def watch(address: str, token: str, project: str, export_id: str, streams: str, channels: str,
          timeout: str) -> dict:
    """STREAMS WatchProgress streams on one task over CHANNELS connections; after "OPEN", waits for
    the task to end: how many streams saw the final state, and how late (against its end_time)."""
    from iotda.export.v1 import export_task_pb2 as epb

    request = epb.WatchProgressRequest(project_id=project, export_task_id=export_id)
    metadata = (("authorization", f"Bearer {token}"),)
    n, k = int(streams), int(channels)

    async def run() -> dict:
        chans = [aio_channel(address, options=(("grpc.use_local_subchannel_pool", 1),)) for _ in range(k)]
        calls = [chans[i % k].unary_stream(WATCH_METHOD, request_serializer=epb.WatchProgressRequest.SerializeToString,
                                           response_deserializer=epb.WatchProgressResponse.FromString)
                 for i in range(n)]
        opened = asyncio.Semaphore(0)
        finals: list[tuple[float, str, str]] = []
        events = 0

        async def one(call) -> None:
            nonlocal events
            first = True
            async for event in call(request, metadata=metadata):
                received = time.time() * 1000
                events += 1
                if first:
                    first = False
                    opened.release()
                task = event.export_task
                if task.status in ("Success", "Failed"):
                    finals.append((received, task.status, task.end_time))
                    return

        tasks = [asyncio.create_task(one(call)) for call in calls]
        started = time.perf_counter()
        opened_count = 0
        while opened_count < n:  # until every stream has its first event, or none came for 10 s
            try:
                await asyncio.wait_for(opened.acquire(), 10.0)
            except asyncio.TimeoutError:
                break
            opened_count += 1
        open_seconds = time.perf_counter() - started
        print(f"OPEN {opened_count}", flush=True)
        deadline = time.perf_counter() + float(timeout)
        grace = None  # once every opened stream has the final state, the others get 5 s more
        while True:
            done, pending = await asyncio.wait(tasks, timeout=0.5)
            now = time.perf_counter()
            if not pending or now > deadline or (grace is not None and now > grace):
                break
            if grace is None and len(finals) >= opened_count:
                grace = now + 5.0
        for task in pending:
            task.cancel()
        failures = sum(1 for task in done if task.exception() is not None)
        codes: dict[str, int] = {}
        for task in done:
            exc = task.exception()
            if exc is not None:
                name = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                codes[name] = codes.get(name, 0) + 1
        for chan in chans:
            await chan.close()
        lags = [received - _epoch_ms(end) for received, status, end in finals if end]
        return {"streams": n, "opened": opened_count, "open_seconds": open_seconds, "final": len(finals),
                "success": sum(1 for f in finals if f[1] == "Success"), "errors": failures, "error_codes": codes,
                "unfinished": len(pending), "events": events,
                "lag_p50_ms": percentile(lags, 50), "lag_p99_ms": percentile(lags, 99),
                "lag_max_ms": max(lags, default=float("nan")),
                "lag_mean_ms": statistics.fmean(lags) if lags else float("nan")}

    return asyncio.run(run())


def health(address: str, rps: str, seconds: str) -> dict:
    """grpc.health.v1 Check at a fixed offered rate (no credentials needed)."""
    return rate(address, "", "", "", rps, seconds, "health")


def flood(http_port: str, project: str, body_mb: str, per_second: str, seconds: str) -> dict:
    """Anonymous POSTs of a BODY_MB JSON body (a batch task with a huge `document`) at PER_SECOND a
    second (each on its own connection, from a pool of threads), for SECONDS: what a client without
    credentials on a fast link can make the HTTP port do."""
    import concurrent.futures
    import socket

    filler = "x" * (int(float(body_mb) * 1024 * 1024))
    body = json.dumps({"task_name": "flood", "task_type": "createCommands", "targets": ["d1"],
                       "document": {"payload": filler}}).encode()
    head = (f"POST /v5/iot/{project}/batchtasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()

    def one() -> str:
        try:
            with socket.create_connection(("127.0.0.1", int(http_port)), timeout=30) as s:
                try:
                    s.sendall(head + body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # answered and closed before the whole body went out
                return s.recv(64).split(b" ", 2)[1].decode()
        except (OSError, IndexError):
            return "error"

    statuses: dict[str, int] = {}
    interval = 1 / float(per_second)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = []
        start = next_at = time.perf_counter()
        while (now := time.perf_counter()) - start < float(seconds):
            if now < next_at:
                time.sleep(next_at - now)
            futures.append(pool.submit(one))
            next_at += interval
        for f in futures:
            statuses[f.result()] = statuses.get(f.result(), 0) + 1
    return {"sent": len(futures), "statuses": statuses, "body_bytes": len(body)}


def sink_server() -> None:
    """The control of the flood: an HTTP server that answers 401 at once and reads no body."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    response = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)
                conn.sendall(response)
            except OSError:
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "echo-server":
        echo_server()
        return
    if mode == "fanout-server":
        fanout_server()
        return
    if mode == "sink-server":
        sink_server()
        return
    result = {"rate": rate, "saturate": saturate, "watch": watch, "health": health, "flood": flood}[mode](*args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
