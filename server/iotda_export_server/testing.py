"""The whole server in-process, for tests and benchmarks: gRPC (and HTTP) on free ports, real
worker processes, state in a data directory or the given database."""

from __future__ import annotations

import asyncio
import threading

from .app import ExportServer
from .config import LogConfig, ServerConfig, StateConfig


class ServerThread:
    """An ExportServer running on its own event loop in a background thread. `config` holds the
    other ServerConfig fields; its worker processes log warnings and errors unless `log` says more."""

    def __init__(self, data_dir: str, workers: int = 1, database: str | None = None, **config):
        self.data_dir = str(data_dir)
        config.setdefault("log", LogConfig(level="WARNING"))
        self.config = ServerConfig(state=StateConfig(self.data_dir, database), grpc_addr="127.0.0.1:0",
                                   workers=workers, **config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self.thread.start()
        self.server = ExportServer(self.config)
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)
        self.address = f"127.0.0.1:{self.port}"
        self.http_port = self.server.http_port
        scheme = "https" if self.server.tls[1] is not None else "http"
        self.http_url = f"{scheme}://127.0.0.1:{self.http_port}" if self.http_port else None
        self.admin = self.server.bootstrap_credentials

    @property
    def store(self):
        return self.server.store

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
