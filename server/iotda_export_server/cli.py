"""The `iotda-export` command: run the service, administer its data directory, and call it.

The server's commands (serve, worker, migrate, principal, seed) live here; the calling commands
(export, batch, completion) come from the client distribution (iotda_export_client/cli.py) and are
mounted under the same entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys

from iotda_export_client.cli import (CALLING_NOTES, UsageError, add_client_commands, env_option, err, json_flag,
                                     new_parser, print_block, print_json, print_table, run, split_list)
from iotda_export_server.config import FilesConfig, LogConfig, ServerConfig, StateConfig


def _serve(args: argparse.Namespace) -> int:
    from iotda_export_server.app import CREDENTIALS_FILE, ExportServer

    config = _serve_config(args)
    _configure_logs("server", config.log)

    async def main() -> int:
        server = ExportServer(config)
        try:
            port = await server.start()
        except (OSError, RuntimeError, ValueError) as e:  # a port in use, another server on the data directory,
            # a schema to migrate first
            print(f"error: cannot start: {e}", file=sys.stderr, flush=True)
            await server.stop(0)
            return 1
        # Before the lines below, which tell scripts the server is up and may be signalled.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Certificates are reloaded by watching their files; SIGHUP (which would otherwise end the
        # process) makes it look now.
        loop.add_signal_handler(signal.SIGHUP, server.check_tls_files)
        host = config.grpc_addr.rsplit(":", 1)[0]
        grpc_tls, http_tls = server.tls
        security = ("gRPC, mutual TLS" if grpc_tls.requires_client_cert else "gRPC, TLS") if grpc_tls else "gRPC"
        print(f"iotda-export listening on {host}:{port} ({security})", flush=True)
        if server.http_port is not None:
            http_host = config.http_addr.rsplit(":", 1)[0]
            scheme = "https" if http_tls else "http"
            print(f"iotda-export listening on {scheme}://{http_host}:{server.http_port} (HTTP/JSON gateway)",
                  flush=True)
            print(f"web console on {scheme}://{http_host}:{server.http_port}/console/ (also /openapi.json, /healthz,"
                  " /readyz)", flush=True)
        if server.bootstrap_credentials:
            creds = os.path.join(config.state.data_dir, CREDENTIALS_FILE)
            print(f"created administrator '{server.bootstrap_credentials['user']}' in project "
                  f"{server.bootstrap_credentials['project_id']}; credentials (token, ak, sk) in {creds} (mode 0600)."
                  f" Use them with: iotda-export --credentials {creds} export list", flush=True)
        if server.http_port is None:  # said last: the lines above are what scripts wait for
            print("no HTTP/JSON gateway (REST API, web console, /metrics): add --http-addr HOST:PORT to serve one",
                  flush=True)
        await stop.wait()
        print("iotda-export stopping", flush=True)
        await server.stop()
        return 0

    return asyncio.run(main())


def _configure_logs(process: str, config: LogConfig) -> None:
    from iotda_export_server import logs

    try:
        logs.configure(process, config)
    except ValueError as e:  # a bad value from the environment (flags are checked by argparse)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _log_flags(p: argparse.ArgumentParser) -> None:
    env_option(p, "--log-format", env="IOTDA_EXPORT_LOG_FORMAT", choices=("text", "json"), type=str.lower,
               default="text", help="text: readable lines; json: one JSON object per line (time, level, logger,"
                                    " message, request_id, user, process, and fields such as rpc, code, duration_ms)")
    env_option(p, "--log-level", env="IOTDA_EXPORT_LOG_LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
               type=str.upper, default="INFO", help="lines below this level are dropped (each RPC is one INFO line)")


def _worker(args: argparse.Namespace) -> int:
    from iotda_export_server.app import run_workers

    config = _worker_config(args)
    _configure_logs("workers", config.log)
    try:
        return asyncio.run(run_workers(config))
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: cannot start: {e}", file=sys.stderr)
        return 1


def _migrate(args: argparse.Namespace) -> int:
    from iotda_export_server.app import prepare_data_dir
    from iotda_export_server.store import is_postgres, open_store
    state = _state_config(args)
    data_dir = state.data_dir if is_postgres(state.database) else prepare_data_dir(state.data_dir)
    try:
        store = open_store(data_dir, state.database, migrate=True)
    except Exception as e:  # noqa: BLE001 - unreachable database, newer schema
        print(f"error: migration failed: {e}", file=sys.stderr)
        return 1
    print(f"schema at version {store.schema_version()}")
    return 0


def _data_dir(args, create: bool) -> str:
    path = args.data_dir
    if not create and not os.path.isdir(path):
        raise UsageError(f"no data directory at {path} (start the server once, or pass --data-dir)")
    return path


def _admin_store(args, create: bool):
    """The state the server uses: SQLite in --data-dir, or the PostgreSQL of --database."""
    from iotda_export_server.app import prepare_data_dir
    from iotda_export_server.store import is_postgres, open_store
    state = _state_config(args)
    if is_postgres(state.database):
        return open_store(state.data_dir, state.database, migrate=False)
    return open_store(prepare_data_dir(_data_dir(args, create=create)), state.database)


def _state_flags(p: argparse.ArgumentParser) -> None:
    env_option(p, "--data-dir", env="IOTDA_EXPORT_DATA_DIR", default="./data",
               help="the server's directory: SQLite database, credentials.json, result files")
    # Its value may hold a password: the help names the variable, never what it holds.
    env_option(p, "--database", env="IOTDA_EXPORT_DATABASE", metavar="URL", shown_default="SQLite in --data-dir",
               help="postgresql://... to share state between replicas")


class _CredentialsFile:
    """Where `principal add --output` puts the credentials: a file only its owner can read, created
    so (never widened later), opened before the principal is made, so that a file in the way
    refuses the command before anything changes. An existing file stays unless `replace`; then a
    new file is renamed over it once complete."""

    def __init__(self, path: str, replace: bool):
        self.path = path
        self.target = path
        if replace:
            self.target = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            self.fd = os.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UsageError(f"{path} exists: choose another file, or add --force to replace it") from None

    def write(self, creds: dict) -> None:
        with os.fdopen(self.fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(creds, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.target != self.path:
            os.replace(self.target, self.path)

    def discard(self) -> None:
        os.close(self.fd)
        os.unlink(self.target)


def _principal_add(args) -> int:
    from iotda_export_server.app import add_principal
    from iotda_export_server.domain import auth
    store = _admin_store(args, create=True)
    out = _CredentialsFile(args.output, replace=args.force) if args.output else None
    try:
        creds = add_principal(store, args.user, args.project, split_list(args.actions),
                              enterprise_project_id=args.enterprise_project or auth.DEFAULT_ENTERPRISE_PROJECT,
                              allowed_enterprise_projects=split_list(args.allowed_enterprise_projects),
                              client_cert_subject=args.client_cert_subject, client_cert_san=args.client_cert_san)
    except BaseException as e:
        if out is not None:
            out.discard()
        if isinstance(e, ValueError):  # already exists
            err(str(e))
            return 1
        raise
    if out is not None:
        out.write(creds)
        print(f"credentials of {creds['user']} written to {args.output} (mode 0600); use them with:"
              f" iotda-export --credentials {args.output} export list", file=sys.stderr)
    elif args.json:
        print_json(creds)
    else:
        print_block(creds)
        print("keep the token and sk secret: they are not shown again", file=sys.stderr)
    return 0


def _principal_list(args) -> int:
    store = _admin_store(args, create=False)
    principals = store.reader().list_principals()
    docs = [{"user": p.user, "principal_id": p.principal_id, "project_id": p.project_id, "enterprise_project_id": p.enterprise_project_id,
             "ak": p.ak, "statements": [s.to_json() for s in p.statements],
             "client_cert_subject": p.client_cert_subject, "client_cert_san": p.client_cert_san,
             "created_at": dt.datetime.fromtimestamp(p.created_at / 1000, dt.timezone.utc)
             .strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"} for p in principals]
    if args.json:
        print_json(docs)
        return 0

    def actions(d):
        out = []
        for s in d["statements"]:
            text = ("" if s["Effect"] == "Allow" else "Deny ") + ",".join(s["Action"])
            eps = s.get("Condition", {}).get("StringEquals", {}).get("g:EnterpriseProjectId")
            out.append(text + (f" (enterprise projects {','.join(eps)})" if eps is not None else ""))
        return "; ".join(out)

    def client_cert(d):
        if d["client_cert_subject"]:
            return f"subject {d['client_cert_subject']}"
        return f"SAN {d['client_cert_san']}" if d["client_cert_san"] else "-"
    print_table(["USER", "PROJECT_ID", "ENTERPRISE_PROJECT", "AK", "ACTIONS", "CLIENT_CERT", "CREATED"],
                [[d["user"], d["project_id"], d["enterprise_project_id"], d["ak"], actions(d), client_cert(d),
                  d["created_at"]] for d in docs])
    return 0


def _principal_remove(args) -> int:
    from iotda_export_server.domain.auth import remove_principal
    from iotda_export_server.store.files import ResultFiles, open_files
    store = _admin_store(args, create=False)
    files_config = _files_config(args)
    # The files directory the server uses; if it is not reachable from here, the server's next start
    # removes the files of the deleted tasks (its sweep), so nothing is left for good.
    if files_config.url:
        try:
            files = open_files(files_config, args.data_dir)
        except ValueError as e:
            err(f"cannot reach the result files: {e}")
            return 1
    else:
        files_dir = files_config.resolved(args.data_dir).dir
        files = ResultFiles(files_dir) if os.path.isdir(files_dir) else _NoFiles()
    if not remove_principal(store, files, args.user):
        err(f"no principal {args.user!r}")
        return 1
    print(f"removed principal {args.user}; its token and AK/SK no longer work, its export tasks and their"
          " files are deleted", file=sys.stderr)
    if isinstance(files, _NoFiles):
        print(f"no files directory at {files_dir}: the server's next start removes the deleted tasks' files"
              " (or pass --files-dir)", file=sys.stderr)
    return 0


class _NoFiles:
    def remove(self, _export_task_id: str) -> None:
        pass


def _dev_certs(args) -> int:
    from iotda_export_server.devcerts import dev_certs
    try:
        paths = dev_certs(args.out, tuple(args.host), args.days, args.client_name, args.force)
    except OSError as e:  # files already there, or a directory that cannot be written
        print(f"error: {e.strerror + ': ' + str(e.filename) if e.filename else e}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name:12} {path}")
    out = args.out
    print(f"serve with:  iotda-export serve --tls-cert {out}/server.crt --tls-key {out}/server.key"
          f" [--tls-client-ca {out}/ca.crt]", file=sys.stderr)
    print(f"call with:   iotda-export --tls-ca {out}/ca.crt [--tls-cert {out}/client.crt --tls-key {out}/client.key]"
          " export list", file=sys.stderr)
    return 0


def _seed(args) -> int:
    from iotda_export_server.app import seed
    if args.subtasks < 0:
        raise UsageError("--subtasks must not be negative")
    try:
        task_id = seed(args.data_dir, args.subtasks, project_id=args.project, instance_id=args.instance_id or "",
                       app_id=args.app_id, database=args.database)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print_json({"task_id": task_id})
    else:
        print(task_id)
        print(f"loaded batch task {task_id} with {args.subtasks} sub-tasks; export it with:"
              f" iotda-export export create --task-id {task_id} --watch", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _files_flags(p: argparse.ArgumentParser, dir_help: str) -> None:
    """Where the result files are: the same on every command that touches them."""
    env_option(p, "--files-dir", env="IOTDA_EXPORT_FILES_DIR", shown_default="<data-dir>/files", help=dir_help)
    env_option(p, "--files-url", env="IOTDA_EXPORT_FILES_URL", shown_default="the files directory",
               help="the result files as a URL instead of --files-dir: file:///path (a local directory), or"
                    " s3://bucket/prefix (an S3-compatible bucket, which must exist; replicas and workers on"
                    " hosts with no shared directory). Credentials come from AWS_ACCESS_KEY_ID and"
                    " AWS_SECRET_ACCESS_KEY or a profile (AWS_PROFILE), never from the URL")
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="the object store's endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL,"
                        " the profile's, else AWS); path-style addressing is used")
    p.add_argument("--s3-region", default=None, help="the bucket's region (default: AWS_REGION or the profile's)")


def _server_flags(p: argparse.ArgumentParser, files_help: str) -> None:
    """What serve and worker share: workers, files, the lease."""
    p.add_argument("--workers", type=int, default=None, help="export worker processes (default: cores)")
    _files_flags(p, files_help)
    env_option(p, "--lease-seconds", env="IOTDA_EXPORT_LEASE_SECONDS", type=float, default=30.0,
               help="a running export whose worker stops renewing its lease this long is taken over;"
                    " use the same value on every process")


# -- the flags as the typed config (config.py), each mapping written once ----------------------------

def _state_config(args: argparse.Namespace) -> StateConfig:
    return StateConfig(data_dir=args.data_dir, database=args.database)


def _files_config(args: argparse.Namespace) -> FilesConfig:
    return FilesConfig(dir=args.files_dir, url=args.files_url, s3_endpoint=args.s3_endpoint, s3_region=args.s3_region)


def _running_config(args: argparse.Namespace, **only_this_command) -> ServerConfig:
    """What serve and worker share (_server_flags, _state_flags, _log_flags), and `only_this_command`."""
    return ServerConfig(state=_state_config(args), files=_files_config(args),
                        log=LogConfig(level=args.log_level, format=args.log_format),
                        workers=args.workers if args.workers is not None else (os.cpu_count() or 1),
                        lease_seconds=args.lease_seconds, **only_this_command)


def _serve_config(args: argparse.Namespace) -> ServerConfig:
    return _running_config(args, grpc_addr=args.grpc_addr, http_addr=args.http_addr or None,
                           max_watch_streams_per_user=args.max_watch_streams_per_user,
                           max_downloads_per_user=args.max_downloads_per_user,
                           tls_cert=args.tls_cert or None, tls_key=args.tls_key or None,
                           http_tls_cert=args.http_tls_cert or None, http_tls_key=args.http_tls_key or None,
                           tls_client_ca=args.tls_client_ca or None)


def _worker_config(args: argparse.Namespace) -> ServerConfig:
    return _running_config(args, metrics_addr=args.metrics_addr)


# -- the commands: one configure_* each (its parser, flags and function), in `--help`'s order -----

def configure_serve(sub: argparse._SubParsersAction) -> None:
    """`serve`: the whole service in this process."""
    from iotda_export_server.domain import rules  # the defaults of the server's caps

    serve = sub.add_parser("serve", help="run the service (gRPC, and HTTP with --http-addr): on the embedded"
                                         " default SQLite and local files, or on --database")
    env_option(serve, "--grpc-addr", env="IOTDA_EXPORT_GRPC_ADDR", default="127.0.0.1:50051", metavar="HOST:PORT",
               help="the gRPC port; port 0 picks a free port (printed)")
    env_option(serve, "--http-addr", env="IOTDA_EXPORT_HTTP_ADDR", default="", metavar="HOST:PORT",
               help="the HTTP/JSON gateway for REST clients such as the official SDK, with the web console,"
                    " /metrics, /healthz and /readyz; port 0 picks a free port (printed); empty: no gateway")
    _state_flags(serve)
    _server_flags(serve, "result files; with several replicas on one host, a directory they share")
    serve.add_argument("--max-watch-streams-per-user", type=_positive_int, metavar="N",
                       default=rules.MAX_WATCH_STREAMS_PER_USER,
                       help="WatchProgress streams one user may hold open at once on this process (each replica"
                            " counts its own); one more is refused with RESOURCE_EXHAUSTED IOTDA.018006")
    serve.add_argument("--max-downloads-per-user", type=_positive_int, metavar="N",
                       default=rules.MAX_DOWNLOADS_PER_USER,
                       help="downloads (ShowExportTask streams) one user may have running at once on this"
                            " process; one more is refused with RESOURCE_EXHAUSTED IOTDA.018007")
    env_option(serve, "--tls-cert", env="IOTDA_EXPORT_TLS_CERT", default="", metavar="FILE",
               help="PEM certificate chain: TLS on the gRPC port and the HTTP gateway (with --tls-key);"
                    " a renewed file is served from the next handshake on, without a restart")
    env_option(serve, "--tls-key", env="IOTDA_EXPORT_TLS_KEY", default="", metavar="FILE",
               help="PEM private key of --tls-cert (keep it 0600)")
    env_option(serve, "--http-tls-cert", env="IOTDA_EXPORT_HTTP_TLS_CERT", default="", metavar="FILE",
               help="the HTTP gateway's own certificate, when it is not --tls-cert (with --http-tls-key)")
    env_option(serve, "--http-tls-key", env="IOTDA_EXPORT_HTTP_TLS_KEY", default="", metavar="FILE",
               help="PEM private key of --http-tls-cert")
    env_option(serve, "--tls-client-ca", env="IOTDA_EXPORT_TLS_CLIENT_CA", default="", metavar="FILE",
               help="PEM CA: both TLS ports then require a client certificate it signed (mutual TLS);"
                    " principal add --client-cert-subject/--client-cert-san bind one to a principal")
    _log_flags(serve)
    serve.set_defaults(func=_serve)


def configure_dev_certs(sub: argparse._SubParsersAction) -> None:
    """`dev-certs`: certificates for trying TLS."""
    p = sub.add_parser("dev-certs", help="write a private CA, a server and a client certificate for trying TLS"
                                         " (docs/how-to/tls.md); not for production")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory for ca.crt, server.crt, client.crt and their .key files (keys 0600)")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="another name or address of the server certificate (repeatable); it always holds"
                        " localhost, 127.0.0.1 and ::1")
    p.add_argument("--client-name", default="iotda-export-client", metavar="CN",
                   help="common name of the client certificate (bind it with principal add --client-cert-subject CN=...)")
    p.add_argument("--days", type=_positive_int, default=90, help="validity of every certificate")
    p.add_argument("--force", action="store_true", help="replace certificates and keys already in --out")
    p.set_defaults(func=_dev_certs)


def configure_worker(sub: argparse._SubParsersAction) -> None:
    """`worker`: export worker processes only, on a shared database."""
    p = sub.add_parser("worker", help="run export workers only (no RPC port), against --database: scale"
                                      " exports apart from API replicas (`serve --workers 0`)")
    _state_flags(p)
    _server_flags(p, "result files, shared with the API replicas")
    env_option(p, "--metrics-addr", env="IOTDA_EXPORT_METRICS_ADDR", metavar="HOST:PORT", shown_default="none",
               help="serve /metrics (Prometheus) for these workers' runs here; port 0 picks one (printed);"
                    " needs a --data-dir of its own")
    _log_flags(p)
    p.set_defaults(func=_worker)


def configure_migrate(sub: argparse._SubParsersAction) -> None:
    """`migrate`: the database schema."""
    p = sub.add_parser("migrate", help="create or upgrade the database schema (PostgreSQL: run once before"
                                       " starting replicas; SQLite migrates itself on start)")
    _state_flags(p)
    p.set_defaults(func=_migrate)


def configure_principal(sub: argparse._SubParsersAction) -> None:
    """`principal add|list|remove`: the users of a data directory."""
    principal = sub.add_parser("principal", help="add, list or remove principals (users) of a data directory;"
                                                 " works while a server runs on it")
    psub = principal.add_subparsers(dest="principal_command", required=True, metavar="COMMAND")
    p = psub.add_parser("add", help="create a principal in its project; prints its credentials once, or"
                                    " writes them to --output")
    _state_flags(p)
    p.add_argument("--user", required=True, help="1-64 of [A-Za-z0-9_.@-]")
    p.add_argument("--project", required=True, help="project ID, 1-64 of [A-Za-z0-9_-]")
    p.add_argument("--actions", default=None,
                   help="comma-separated allowed actions, e.g. iotda:exporttasks:create,iotda:exporttasks:query"
                        " (default: iotda:exporttasks:*,iotda:batchtasks:*)")
    p.add_argument("--enterprise-project", default=None, help="the principal's enterprise project (default 0)")
    p.add_argument("--allowed-enterprise-projects", default=None, metavar="EP,...",
                   help="condition g:EnterpriseProjectId: allow the actions only in these enterprise projects")
    p.add_argument("--client-cert-subject", default=None, metavar="DN",
                   help="mutual TLS: a client certificate with this subject (RFC 4514, e.g. 'CN=svc-a,O=Example')"
                        " verified by the server's --tls-client-ca authenticates as this principal without a token")
    p.add_argument("--client-cert-san", default=None, metavar="NAME",
                   help="mutual TLS: the same, by a subject alternative name of the certificate (DNS name, IP"
                        " address, URI or e-mail, exactly as in the certificate)")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write the credentials (JSON, the form --credentials reads) to this new file, mode 0600,"
                        " instead of printing them")
    p.add_argument("--force", action="store_true", help="with --output: replace an existing file")
    json_flag(p)
    p.set_defaults(func=_principal_add)
    p = psub.add_parser("list", help="list principals (never tokens or secret keys)")
    _state_flags(p)
    json_flag(p)
    p.set_defaults(func=_principal_list)
    p = psub.add_parser("remove", help="remove a principal: its credentials stop working at once; its export"
                                       " tasks and their files are deleted")
    _state_flags(p)
    _files_flags(p, "the server's result files")
    p.add_argument("--user", required=True)
    p.set_defaults(func=_principal_remove)


def configure_seed(sub: argparse._SubParsersAction) -> None:
    """`seed`: demo data."""
    p = sub.add_parser("seed", help="load a demo batch task with N sub-tasks of mixed outcomes (works while a"
                                    " server runs on the data directory)")
    _state_flags(p)
    p.add_argument("--subtasks", type=int, required=True, metavar="N", help="any N, also above 65,535")
    p.add_argument("--project", default=None, help="project ID (default: the one of <data-dir>/credentials.json)")
    p.add_argument("--instance-id", default="", help="instance (default: the default instance)")
    p.add_argument("--app-id", default=None, help="resource space (default: default)")
    json_flag(p)
    p.set_defaults(func=_seed)


def build_parser() -> argparse.ArgumentParser:
    """`iotda-export`: the server's commands, then the client's calling commands."""
    parser, sub = new_parser(__doc__ + CALLING_NOTES)
    for configure in (configure_serve, configure_dev_certs, configure_worker, configure_migrate, configure_principal,
                      configure_seed):
        configure(sub)
    add_client_commands(sub, parser)
    return parser


def _server_refusal(e: Exception) -> int:
    """The server package's own refusals in local administration (e.g. a bad user name in principal add)."""
    from iotda_export_server.domain.errors import DomainError, InvalidArgument
    if isinstance(e, DomainError):
        from iotda_export_server.transport.errors import grpc_code
        err(f"{grpc_code(e).name} {e.error_code}: {e.message}")
        for v in getattr(e, "violations", []):
            print(f"  {v.field}: {v.description}", file=sys.stderr)
        return 2 if isinstance(e, InvalidArgument) else 1
    from iotda_export_server.domain.errors import StoreUnavailable
    if isinstance(e, StoreUnavailable):  # local administration (seed, principal) on a lost PostgreSQL
        err(str(e))
        return 1
    raise e


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # the database, its journal and the result files hold secrets and user data
    args = build_parser().parse_args(argv)
    if args.func in (_serve, _worker, _migrate):  # server-side commands report their own failures
        return args.func(args)
    return run(args, _server_refusal)


if __name__ == "__main__":
    sys.exit(main())
