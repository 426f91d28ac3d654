"""Wiring: data directory, store, workers, progress hub and the gRPC server, started and stopped
as one service. Also the administration used by the CLI (principals, demo data)."""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import logging
import os
import pathlib
import secrets
import shutil
import tempfile

from .assembly import open_backend
from .config import ServerConfig
from .domain import auth, rules
from .domain.errors import invalid
from .domain.batches import BatchService, seed_batch_task
from .domain.exports import ExportService
from .domain.jobs import ExportJobs
from .domain.progress import ProgressHub
from .metrics import Metrics
from .runner.supervisor import Supervisor
from .runner.notices import ChangeListener
from .store import is_postgres, open_store

log = logging.getLogger("iotda_export.server")

CREDENTIALS_FILE = "credentials.json"
LOCK_FILE = "server.lock"
BOOTSTRAP_USER = "admin"


def tls_sources(config: ServerConfig):
    """The certificate sources of the gRPC and the HTTP port (None: plaintext), checked now: a
    missing or unusable file stops the start (TlsConfigError, a ValueError)."""
    from .transport.tls import CertificateSource, TlsConfigError, TlsFiles

    def files(cert, key, flags) -> TlsFiles | None:
        if not cert and not key:
            return None
        if not (cert and key):
            raise TlsConfigError(f"{flags} go together: give both the certificate and its key")
        return TlsFiles(cert, key, config.tls_client_ca or None)
    grpc_files = files(config.tls_cert, config.tls_key, "--tls-cert and --tls-key")
    http_files = files(config.http_tls_cert, config.http_tls_key, "--http-tls-cert and --http-tls-key") or grpc_files
    if config.tls_client_ca and grpc_files is None and http_files is None:
        raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key (the server's own certificate)")
    grpc_source = CertificateSource(grpc_files) if grpc_files else None
    http_source = grpc_source if http_files == grpc_files else CertificateSource(http_files)
    return grpc_source, (http_source if config.http_addr is not None else None)


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def prepare_data_dir(data_dir: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private_json(path: pathlib.Path, document: dict) -> None:
    """Writes a secret-bearing file with mode 0600 from its creation on."""
    tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def add_principal(store, user: str, project_id: str, actions: list[str] | None = None,
                  enterprise_project_id: str = auth.DEFAULT_ENTERPRISE_PROJECT,
                  allowed_enterprise_projects: list[str] | None = None, client_cert_subject: str | None = None,
                  client_cert_san: str | None = None) -> dict:
    """Creates a principal; returns its credentials document (the only time the token is shown).
    `client_cert_subject` / `client_cert_san` bind it to a client certificate (mutual TLS)."""
    from .transport.tls import normalized_subject
    statements = auth.statements_for(list(actions or auth.ALL_ACTIONS), allowed_enterprise_projects)
    if client_cert_subject is not None:
        try:
            client_cert_subject = normalized_subject(client_cert_subject)
        except ValueError:
            raise invalid("client_cert_subject", "must be a distinguished name in RFC 4514 form, e.g."
                                                 " CN=svc-a,O=Example") from None
    principal, token = auth.new_principal(user, project_id, statements, enterprise_project_id,
                                          client_cert_subject, client_cert_san)
    with store.transaction() as tx:
        if tx.principal_by("user", user) is not None:
            raise ValueError(f"principal {user!r} already exists")
        for column in ("client_cert_subject", "client_cert_san"):
            value = getattr(principal, column)
            if value is not None and tx.principal_by(column, value) is not None:
                raise ValueError(f"another principal is already bound to the client certificate {column[12:]}"
                                 f" {value!r}")
        tx.insert_principal(principal, auth.token_hash(token))
    return auth.credentials_document(principal, token)


def bootstrap(store, data_dir: pathlib.Path) -> dict | None:
    """First start on an empty database: an administrator with every action, in a new project,
    its credentials written to <data_dir>/credentials.json (0600)."""
    with store.transaction(lock_key="iotda-export:bootstrap") as tx:  # one replica creates it
        if tx.count_principals() > 0:
            return None
        statements = auth.statements_for(["iotda:*:*"])
        principal, token = auth.new_principal(BOOTSTRAP_USER, secrets.token_hex(16), statements)
        tx.insert_principal(principal, auth.token_hash(token))
    document = auth.credentials_document(principal, token)
    write_private_json(data_dir / CREDENTIALS_FILE, document)
    return document


class DataDirLock:
    """One embedded server per data directory (its SQLite file and workers are its own)."""

    def __init__(self, data_dir: pathlib.Path):
        self.path = data_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another iotda-export server is using {self.path.parent}") from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ExportServer:
    """The whole service of one process: `await start()`, then `await stop()`."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.data_dir = prepare_data_dir(config.state.data_dir)
        self.lock = DataDirLock(self.data_dir)
        self.port: int | None = None
        self.http_port: int | None = None
        self.gateway = None
        self.bootstrap_credentials: dict | None = None
        self._tasks: list[asyncio.Task] = []
        self.server = None
        self.health = None
        self.supervisor: Supervisor | None = None
        self.listener = None
        self.changes: ChangeListener | None = None
        self.servicers: tuple = ()
        self.tls = (None, None)  # the gRPC and the HTTP port's CertificateSource
        self._hop_dir: str | None = None

    async def start(self) -> int:
        from grpc_health.v1 import health_pb2

        from .transport.grpc_server import MAX_MESSAGE_BYTES, SERVICE_DESCRIPTORS, SERVICE_NAMES, create_server
        from .transport.servicers import BatchTaskServicer, ExportTaskServicer

        self.tls = grpc_tls, http_tls = tls_sources(self.config)
        exposed = [address for address, source in ((self.config.grpc_addr, grpc_tls), (self.config.http_addr, http_tls))
                   if address is not None and source is None and not _is_loopback(address)]
        if exposed:
            log.warning("%s: not a loopback address and no TLS: tokens, signatures and exported files cross the"
                        " network in plaintext; pass --tls-cert and --tls-key (docs/how-to/tls.md)", " and ".join(exposed))
        shared = is_postgres(self.config.state.database)
        if not shared:
            self.lock.acquire()  # SQLite: this process owns the data directory
        # What this process opens is what its workers open.
        worker_config = self.config.worker_config()
        store, files, jobs = open_backend(worker_config)
        self.store, self.files = store, files
        self.bootstrap_credentials = bootstrap(store, self.data_dir)
        if not shared:
            # Sole owner: whatever was running belonged to a previous life of this server.
            recovered = jobs.recover(only_expired=False)
            if recovered:
                log.warning("recovered %d interrupted exports: %s", len(recovered), ", ".join(recovered))
        # Shared files: other replicas' workers may be writing; only leave their fresh temp files alone.
        files.sweep_orphans(store.reader(), 2 * self.config.lease_seconds if shared else 0)

        self.hub = hub = ProgressHub(self._load_tasks, poll_interval=self.config.watch_poll_seconds,
                                       heartbeat_seconds=self.config.watch_heartbeat_seconds)
        self.metrics = metrics = Metrics()
        metrics.watch_hub(lambda: hub.watchers)
        metrics.watch_store(lambda: store.reader().count_exports_by_run_state())
        if shared:
            from .store.postgres import Listener
            self.listener = Listener(self.config.state.database, hub.poke)
            self.listener.start()
        # This process's workers (either store) report changes and finished runs over a socket in
        # the data directory, which only the holder of the directory's lock may bind.
        if shared:
            try:
                self.lock.acquire()
            except RuntimeError:
                log.warning("another process uses %s: its socket, not this one's, receives the worker"
                            " notices (changes still arrive by NOTIFY; finished runs count there)", self.data_dir)
        if self.lock.fd is not None:
            self.changes = ChangeListener(self.data_dir, hub.poke, metrics.run_finished)
            self.changes.start()
        # Workers are spawned before any gRPC object exists in this process.
        self.supervisor = Supervisor(worker_config, self.config.workers, jobs, on_change=hub.poke)
        self.supervisor.start()
        if not shared and self.config.workers == 0:
            log.warning("no export workers: exports stay queued until a worker process runs on %s", self.data_dir)

        def on_change(export_task_id: str) -> None:
            hub.poke(export_task_id)
            self.supervisor.notify()

        exports = ExportService(store, files, on_change=on_change)
        # The gateway vouches for callers it authenticated by AK/SK with a key only this process knows.
        front_end_key = secrets.token_hex(32)
        authenticator = auth.Authenticator(store, front_end_key)
        self.servicers = (ExportTaskServicer(authenticator, metrics, exports, hub,
                                             self.config.max_watch_streams_per_user,
                                             self.config.max_downloads_per_user),
                          BatchTaskServicer(authenticator, metrics, BatchService(store)))
        for servicer in self.servicers:  # only a client CA's verified certificates name a principal
            servicer.client_certs = grpc_tls is not None and grpc_tls.requires_client_cert
        hop_address = None
        if self.config.http_addr is not None:
            # 0700: no other user can connect. A socket's path has ~107 bytes at most: a long TMPDIR is passed over.
            base = tempfile.gettempdir() if len(tempfile.gettempdir()) < 64 else "/tmp"
            self._hop_dir = tempfile.mkdtemp(prefix="iotda-hop-", dir=base)
            hop_address = f"unix:{os.path.join(self._hop_dir, 'grpc.sock')}"
        self.server, self.port, self.health = create_server(
            self.config.grpc_addr, *self.servicers, grpc_tls.grpc_credentials() if grpc_tls else None, hop_address)
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.http_addr is not None:
            from .transport.gateway import Gateway
            from .transport.probes import Readiness
            from .transport.web import Pages
            readiness = Readiness(check_database=store.check_reachable, schema_version=store.schema_version(),
                                  files=files)
            # The gateway's calls go over the private socket (the vouching key never crosses a network).
            self.gateway = Gateway(hop_address, [
                d.services_by_name[n] for d, n in SERVICE_DESCRIPTORS], authenticator, front_end_key,
                MAX_MESSAGE_BYTES, metrics, self.config.http_limits, Pages(readiness),
                client_certs=http_tls is not None and http_tls.requires_client_cert)
            http_host, http_port = self.config.http_addr.rsplit(":", 1)
            self.http_port = await self.gateway.start(http_host.strip("[]"), int(http_port),
                                                      http_tls.http_context() if http_tls else None)
        # Every process sweeps expired leases (an API-only replica too): exports never stay stuck.
        self._tasks = [asyncio.create_task(hub.run(), name="progress-hub"),
                       asyncio.create_task(self.supervisor.run(), name="supervisor")]
        return self.port

    def check_tls_files(self) -> None:
        """Looks at the certificate files now (SIGHUP) rather than at the next handshake: a renewed
        pair is loaded, or a broken one reported, at once."""
        sources = {id(source): source for source in self.tls if source is not None}
        for source in sources.values():
            source.current()
        log.info("TLS files checked (%d certificate source(s))", len(sources))

    async def _load_tasks(self, ids: list[str]):
        return await asyncio.to_thread(lambda: self.store.reader().export_tasks_by_ids(ids))

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.grace_seconds if grace is None else grace
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if hasattr(self, "hub"):
            self.hub.close()
        for servicer in self.servicers:  # streams cut from now on are cut by the shutdown
            servicer.shutting_down = True
        if self.gateway is not None:
            await self.gateway.stop()
        if self.server is not None:
            await self.server.stop(grace)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self.supervisor is not None:
            await asyncio.to_thread(self.supervisor.stop)
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
        if self.changes is not None:
            self.changes.close()
        if self._hop_dir is not None:
            shutil.rmtree(self._hop_dir, ignore_errors=True)
        self.lock.release()


def seed(data_dir: str | os.PathLike, subtasks: int, project_id: str | None = None, instance_id: str = "",
         app_id: str | None = None, database: str | None = None) -> str:
    """Loads a demo batch task (works while a server runs on the same data directory)."""
    path = prepare_data_dir(data_dir)
    store = open_store(path, database, migrate=not is_postgres(database))
    if project_id is None:
        creds = path / CREDENTIALS_FILE
        if creds.exists():
            project_id = json.loads(creds.read_text())["project_id"]
        else:
            principals = store.reader().list_principals()
            if not principals:
                raise ValueError("no project: pass --project, or start the server once to create one")
            project_id = principals[0].project_id
    return seed_batch_task(store, project_id, instance_id, subtasks, app_id or rules.DEFAULT_APP_ID)


async def run_workers(config: ServerConfig) -> int:
    """`iotda-export worker`: export worker processes and the lease sweeper, no RPC port. Stops on
    SIGTERM/SIGINT, handing running exports back to the queue."""
    import signal

    data_dir = prepare_data_dir(config.state.data_dir)
    if not is_postgres(config.state.database):
        raise ValueError("`worker` shares a database with API replicas: pass --database postgresql://...")
    worker_config = config.worker_config()
    store, _files, jobs = open_backend(worker_config)
    lock = changes = metrics_server = None
    if config.metrics_addr:
        from prometheus_client import start_http_server
        lock = DataDirLock(data_dir)
        lock.acquire()  # the notice socket in the data directory is this process's alone
        metrics = Metrics()
        metrics.watch_store(lambda: store.reader().count_exports_by_run_state())
        changes = ChangeListener(data_dir, lambda _export_task_id: None, metrics.run_finished)
        changes.start()  # before the workers start: they report each finished run to it
        host, port = config.metrics_addr.rsplit(":", 1)
        metrics_server, _ = start_http_server(int(port), host.strip("[]"), registry=metrics.registry)
        print(f"iotda-export worker metrics on http://{host}:{metrics_server.server_port}/metrics", flush=True)
    supervisor = Supervisor(worker_config, config.workers, jobs)
    supervisor.start()
    print(f"iotda-export worker running {config.workers} export processes", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sweeper = asyncio.create_task(supervisor.run())
    await stop.wait()
    sweeper.cancel()
    await asyncio.to_thread(supervisor.stop)
    if metrics_server is not None:
        metrics_server.shutdown()
    if changes is not None:
        changes.close()
    if lock is not None:
        lock.release()
    return 0
