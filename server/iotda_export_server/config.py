"""The server's configuration, typed and built once: the CLI turns its flags into a ServerConfig
(tests and benchmarks build one directly) and every process gets its part from there, never from
the environment. An export worker process gets exactly its WorkerConfig, derived by
ServerConfig.worker_config() and handed over its stdin as JSON: the database URL may hold a
password, so it is in neither the worker's command line nor its environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .domain import rules

if TYPE_CHECKING:  # the worker processes import this module and nothing of the transport
    from .transport.http_server import HttpLimits


@dataclass(frozen=True)
class LogConfig:
    """How a process logs (logs.configure): the server, its worker processes and `worker` alike."""
    level: str = "INFO"    # DEBUG, INFO, WARNING, ERROR
    format: str = "text"   # text: readable lines; json: one JSON object per line


@dataclass(frozen=True)
class StateConfig:
    """Where the state is: the data directory (SQLite database, credentials.json, the worker notice
    socket) and, for state shared between replicas, a postgresql:// URL (None: SQLite in data_dir)."""
    data_dir: str
    database: str | None = None


@dataclass(frozen=True)
class FilesConfig:
    """Where the result files are: a directory (`dir`), or a URL (`url`: file:///path, or
    s3://bucket/prefix with the object store's endpoint and region, else AWS_ENDPOINT_URL,
    AWS_REGION or the profile's). Neither: <data_dir>/files."""
    dir: str | None = None
    url: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None

    def resolved(self, data_dir: str | os.PathLike) -> FilesConfig:
        """The same files with every default applied: a local directory as `dir` (from --files-dir,
        a file:/// URL, or <data_dir>/files), or an s3:// URL. ValueError for a contradiction or a
        URL of no known form (the message names the flag)."""
        if self.url and self.dir:
            raise ValueError("give --files-url or --files-dir, not both")
        if not self.url:
            return dataclasses.replace(self, dir=str(self.dir or pathlib.Path(data_dir) / "files"))
        parts = urlsplit(self.url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path:
                raise ValueError(f"--files-url {self.url!r}: a local directory is file:///absolute/path")
            return dataclasses.replace(self, dir=unquote(parts.path), url=None)
        if parts.scheme == "s3":
            if parts.query or parts.fragment or parts.username or parts.password:
                raise ValueError("--files-url s3://bucket/prefix takes no credentials, query or fragment: credentials"
                                 " come from the AWS_* variables or a profile")
            return self
        raise ValueError(f"--files-url {self.url!r}: use file:///path or s3://bucket/prefix")


@dataclass(frozen=True)
class WorkerConfig:
    """What an export worker process needs: the state and files of its server (files resolved, so
    that every process writes to the same place), its lease, and how to log."""
    state: StateConfig
    files: FilesConfig
    log: LogConfig = LogConfig()
    lease_seconds: float = 30.0
    poll_seconds: float = 0.25

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        doc = json.loads(text)
        return cls(state=StateConfig(**doc["state"]), files=FilesConfig(**doc["files"]), log=LogConfig(**doc["log"]),
                   lease_seconds=doc["lease_seconds"], poll_seconds=doc["poll_seconds"])


@dataclass(frozen=True)
class ServerConfig:
    """Everything `serve` runs with (and `worker`, which uses the state, files, log, workers, lease
    and metrics_addr only)."""
    state: StateConfig
    files: FilesConfig = FilesConfig()
    log: LogConfig = LogConfig()
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str | None = None  # HOST:PORT of the HTTP/JSON gateway; None: no gateway
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    lease_seconds: float = 30.0
    watch_poll_seconds: float = 0.2
    # `iotda-export worker` only: HOST:PORT of its own /metrics (it has no HTTP gateway).
    metrics_addr: str | None = None
    # A WatchProgress stream hears at least this often (keeps idle proxies from closing it).
    watch_heartbeat_seconds: float = rules.WATCH_HEARTBEAT_SECONDS
    grace_seconds: float = 5.0
    # The HTTP port's limits (body size, timeouts, connections); None: the defaults of HttpLimits.
    http_limits: HttpLimits | None = None
    # Per user, in this process: WatchProgress streams and downloads open at once.
    max_watch_streams_per_user: int = rules.MAX_WATCH_STREAMS_PER_USER
    max_downloads_per_user: int = rules.MAX_DOWNLOADS_PER_USER
    # TLS (PEM files, reloaded when they change): the pair of both ports, the HTTP port's own pair
    # when it differs, and the CA whose client certificates both ports then require (mutual TLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    http_tls_cert: str | None = None
    http_tls_key: str | None = None
    tls_client_ca: str | None = None

    def worker_config(self) -> WorkerConfig:
        """What each export worker process of this server gets (ValueError: files misconfigured)."""
        return WorkerConfig(state=self.state, files=self.files.resolved(self.state.data_dir), log=self.log,
                            lease_seconds=self.lease_seconds)
