"""The `iotda-export` command: run the service, administer its data directory, and call it.

Credentials for the calling commands (export, batch) come from, value by value: the flags
(--address, --token, --project, --instance-id, then the file given with --credentials), the
environment (IOTDA_EXPORT_ADDRESS, IOTDA_EXPORT_TOKEN, IOTDA_EXPORT_PROJECT,
IOTDA_EXPORT_INSTANCE_ID, then the file named by IOTDA_EXPORT_CREDENTIALS), and finally
./data/credentials.json, which the server writes on its first start. The address defaults to
127.0.0.1:50051.

Exit codes: 0 success; 1 a refused call, an unreachable server or a failed export; 2 bad usage or
input (argument errors, INVALID_ARGUMENT, OUT_OF_RANGE, missing credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time

def _serve(args: argparse.Namespace) -> int:
    from iotda_export_server.app import CREDENTIALS_FILE, ExportServer, ServerConfig

    _configure_logs("server", args)
    config = ServerConfig(data_dir=args.data_dir, grpc_addr=args.grpc_addr, http_addr=args.http_addr or None,
                          workers=args.workers if args.workers is not None else (os.cpu_count() or 1),
                          database=args.database, **_files_config(args),
                          lease_seconds=args.lease_seconds, max_watch_streams_per_user=args.max_watch_streams_per_user,
                          max_downloads_per_user=args.max_downloads_per_user)

    async def main() -> int:
        server = ExportServer(config)
        try:
            port = await server.start()
        except (OSError, RuntimeError, ValueError) as e:  # a port in use, another server on the data directory,
            # a schema to migrate first
            print(f"error: cannot start: {e}", file=sys.stderr, flush=True)
            await server.stop(0)
            return 1
        host = args.grpc_addr.rsplit(":", 1)[0]
        print(f"iotda-export listening on {host}:{port} (gRPC)", flush=True)
        if server.http_port is not None:
            http_host = args.http_addr.rsplit(":", 1)[0]
            print(f"iotda-export listening on http://{http_host}:{server.http_port} (HTTP/JSON gateway)", flush=True)
            print(f"web console on http://{http_host}:{server.http_port}/console/ (also /openapi.json, /healthz,"
                  " /readyz)", flush=True)
        if server.bootstrap_credentials:
            creds = os.path.join(args.data_dir, CREDENTIALS_FILE)
            print(f"created administrator '{server.bootstrap_credentials['user']}' in project "
                  f"{server.bootstrap_credentials['project_id']}; credentials (token, ak, sk) in {creds} (mode 0600)."
                  f" Use them with: iotda-export --credentials {creds} export list", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("iotda-export stopping", flush=True)
        await server.stop()
        return 0

    return asyncio.run(main())


def _configure_logs(process: str, args: argparse.Namespace) -> None:
    from iotda_export_server import logs

    # Through the environment, so that the worker processes started next log the same way.
    os.environ["IOTDA_EXPORT_LOG_FORMAT"] = args.log_format
    os.environ["IOTDA_EXPORT_LOG_LEVEL"] = args.log_level
    try:
        logs.configure(process)
    except ValueError as e:  # a bad value from the environment (flags are checked by argparse)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("text", "json"),
                   default=os.environ.get("IOTDA_EXPORT_LOG_FORMAT", "text").lower(),
                   help="text: readable lines; json: one JSON object per line (time, level, logger,"
                        " message, request_id, user, process, and fields such as rpc, code, duration_ms)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
                   default=os.environ.get("IOTDA_EXPORT_LOG_LEVEL", "INFO").upper(),
                   help="lines below this level are dropped (each RPC is one INFO line)")


def _worker(args: argparse.Namespace) -> int:
    from iotda_export_server.app import ServerConfig, run_workers

    _configure_logs("workers", args)
    config = ServerConfig(data_dir=args.data_dir, database=args.database, **_files_config(args),
                          workers=args.workers if args.workers is not None else (os.cpu_count() or 1),
                          lease_seconds=args.lease_seconds, metrics_addr=args.metrics_addr)
    try:
        return asyncio.run(run_workers(config))
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: cannot start: {e}", file=sys.stderr)
        return 1


def _migrate(args: argparse.Namespace) -> int:
    from iotda_export_server.app import prepare_data_dir
    from iotda_export_server.store import is_postgres, open_store
    data_dir = args.data_dir if is_postgres(args.database) else prepare_data_dir(args.data_dir)
    try:
        store = open_store(data_dir, args.database, migrate=True)
    except Exception as e:  # noqa: BLE001 - unreachable database, newer schema
        print(f"error: migration failed: {e}", file=sys.stderr)
        return 1
    print(f"schema at version {store.schema_version()}")
    return 0


# -- output --------------------------------------------------------------------------------------

class UsageError(Exception):
    """Bad input noticed by the CLI itself (exit 2)."""


def _dict(msg) -> dict:
    """The platform's JSON shape: snake_case names, zero values present (export_count 0 is a number)."""
    from google.protobuf import json_format
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _print_json(value) -> None:
    print(json.dumps(value, ensure_ascii=False), flush=True)


def _print_block(d: dict) -> None:
    """key  value lines of a flat-ish dict (nested dicts as key.sub)."""
    flat: list[tuple[str, str]] = []

    def walk(prefix: str, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        elif isinstance(v, list):
            flat.append((prefix, ", ".join(str(x) for x in v) if v else "-"))
        elif isinstance(v, bool):
            flat.append((prefix, "true" if v else "false"))
        else:
            flat.append((prefix, "-" if v == "" else str(v)))
    walk("", d)
    width = max((len(k) for k, _ in flat), default=0)
    for k, v in flat:
        print(f"{k.ljust(width)}  {v}")


def _print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [["-" if c in ("", None) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _err(text: str) -> None:
    print(f"error: {text}", file=sys.stderr, flush=True)


def _report_api_error(e) -> int:
    from iotda_export_client import ServerUnreachable
    import grpc
    if isinstance(e, ServerUnreachable):
        _err(f"cannot reach the server at {e.address} ({e.code_name}: {e.message}); is it running?"
             " Start one with: iotda-export serve")
        return 1
    _err(e.summary())
    for field, description in e.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    if e.retry_after is not None:
        at = dt.datetime.now() + dt.timedelta(seconds=e.retry_after)
        print(f"  retry after {e.retry_after:.1f} s (at {at:%H:%M:%S})", file=sys.stderr)
    return 2 if e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE) else 1


# -- connection ----------------------------------------------------------------------------------

def _connection_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every calling command takes, before or after the sub-command."""
    g = parser.add_argument_group("connection (flags > environment > ./data/credentials.json)")
    g.add_argument("--address", dest="conn_address", metavar="HOST:PORT",
                   help="server address (env IOTDA_EXPORT_ADDRESS; default 127.0.0.1:50051)")
    g.add_argument("--token", dest="conn_token", metavar="TOKEN", help="bearer token (env IOTDA_EXPORT_TOKEN)")
    g.add_argument("--project", dest="conn_project", metavar="PROJECT_ID",
                   help="project ID (env IOTDA_EXPORT_PROJECT)")
    g.add_argument("--instance-id", dest="conn_instance_id", metavar="ID",
                   help="instance (env IOTDA_EXPORT_INSTANCE_ID; default: the default instance)")
    g.add_argument("--credentials", dest="conn_credentials", metavar="FILE",
                   help="credentials JSON file (user, project_id, token) (env IOTDA_EXPORT_CREDENTIALS)")
    g.add_argument("--timeout", dest="conn_timeout", type=float, metavar="SECONDS",
                   help="deadline of each unary call (default 30)")


def _client(args):
    from iotda_export_client import ExportClient, load_credentials
    creds = load_credentials(address=getattr(args, "conn_address", None), token=getattr(args, "conn_token", None),
                             project_id=getattr(args, "conn_project", None),
                             instance_id=getattr(args, "conn_instance_id", None),
                             credentials_file=getattr(args, "conn_credentials", None))
    timeout = getattr(args, "conn_timeout", None)
    return ExportClient.from_credentials(creds, **({"timeout": timeout} if timeout else {}))


# -- principal and seed (local administration of a data directory) -------------------------------

def _data_dir(args, create: bool) -> str:
    path = args.data_dir
    if not create and not os.path.isdir(path):
        raise UsageError(f"no data directory at {path} (start the server once, or pass --data-dir)")
    return path


def _admin_store(args, create: bool):
    """The state the server uses: SQLite in --data-dir, or the PostgreSQL of --database."""
    from iotda_export_server.app import prepare_data_dir
    from iotda_export_server.store import is_postgres, open_store
    if is_postgres(args.database):
        return open_store(args.data_dir, args.database, migrate=False)
    return open_store(prepare_data_dir(_data_dir(args, create=create)), args.database)


def _state_flags(p: argparse.ArgumentParser, default_data_dir: str) -> None:
    p.add_argument("--data-dir", default=default_data_dir,
                   help="the server's directory: SQLite database, credentials.json, result files")
    p.add_argument("--database", default=os.environ.get("IOTDA_EXPORT_DATABASE") or None,
                   help="postgresql://... to share state between replicas (env IOTDA_EXPORT_DATABASE);"
                        " default: SQLite in --data-dir")


def _files_flags(p: argparse.ArgumentParser, dir_help: str) -> None:
    """Where the result files are: the same on every command that touches them."""
    p.add_argument("--files-dir", default=os.environ.get("IOTDA_EXPORT_FILES_DIR") or None, help=dir_help)
    p.add_argument("--files-url", default=os.environ.get("IOTDA_EXPORT_FILES_URL") or None,
                   help="the result files as a URL instead of --files-dir: file:///path (a local directory), or"
                        " s3://bucket/prefix (an S3-compatible bucket, which must exist; replicas and workers on"
                        " hosts with no shared directory). Credentials come from AWS_ACCESS_KEY_ID and"
                        " AWS_SECRET_ACCESS_KEY or a profile (AWS_PROFILE), never from the URL")
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="the object store's endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL,"
                        " the profile's, else AWS); path-style addressing is used")
    p.add_argument("--s3-region", default=None, help="the bucket's region (default: AWS_REGION or the profile's)")


def _files_config(args: argparse.Namespace) -> dict:
    return dict(files_dir=args.files_dir, files_url=args.files_url, s3_endpoint=args.s3_endpoint,
                s3_region=args.s3_region)


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not items:
        raise UsageError("expected a comma-separated list")
    return items


def _principal_add(args) -> int:
    from iotda_export_server.app import add_principal
    from iotda_export_server.domain import auth
    store = _admin_store(args, create=True)
    try:
        creds = add_principal(store, args.user, args.project, _split(args.actions),
                              enterprise_project_id=args.enterprise_project or auth.DEFAULT_ENTERPRISE_PROJECT,
                              allowed_enterprise_projects=_split(args.allowed_enterprise_projects))
    except ValueError as e:  # already exists
        _err(str(e))
        return 1
    if args.json:
        _print_json(creds)
    else:
        _print_block(creds)
        print("keep the token and sk secret: they are not shown again", file=sys.stderr)
    return 0


def _principal_list(args) -> int:
    store = _admin_store(args, create=False)
    principals = store.reader().list_principals()
    docs = [{"user": p.user, "principal_id": p.principal_id, "project_id": p.project_id, "enterprise_project_id": p.enterprise_project_id,
             "ak": p.ak, "statements": [s.to_json() for s in p.statements],
             "created_at": dt.datetime.fromtimestamp(p.created_at / 1000, dt.timezone.utc)
             .strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"} for p in principals]
    if args.json:
        _print_json(docs)
        return 0

    def actions(d):
        out = []
        for s in d["statements"]:
            text = ("" if s["Effect"] == "Allow" else "Deny ") + ",".join(s["Action"])
            eps = s.get("Condition", {}).get("StringEquals", {}).get("g:EnterpriseProjectId")
            out.append(text + (f" (enterprise projects {','.join(eps)})" if eps is not None else ""))
        return "; ".join(out)
    _print_table(["USER", "PROJECT_ID", "ENTERPRISE_PROJECT", "AK", "ACTIONS", "CREATED"],
                 [[d["user"], d["project_id"], d["enterprise_project_id"], d["ak"], actions(d), d["created_at"]]
                  for d in docs])
    return 0


def _principal_remove(args) -> int:
    from iotda_export_server.domain.auth import remove_principal
    from iotda_export_server.store.files import ResultFiles, open_files
    store = _admin_store(args, create=False)
    files_dir = args.files_dir or os.path.join(args.data_dir, "files")
    # The files directory the server uses; if it is not reachable from here, the server's next start
    # removes the files of the deleted tasks (its sweep), so nothing is left for good.
    if args.files_url:
        try:
            files = open_files(args.data_dir, **_files_config(args))
        except ValueError as e:
            _err(f"cannot reach the result files: {e}")
            return 1
    else:
        files = ResultFiles(files_dir) if os.path.isdir(files_dir) else _NoFiles()
    if not remove_principal(store, files, args.user):
        _err(f"no principal {args.user!r}")
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
        _print_json({"task_id": task_id})
    else:
        print(task_id)
        print(f"loaded batch task {task_id} with {args.subtasks} sub-tasks; export it with:"
              f" iotda-export export create --task-id {task_id} --watch", file=sys.stderr)
    return 0


# -- export tasks --------------------------------------------------------------------------------

def _follow(client, export_task_id: str, as_json: bool):
    """Streams progress to the end: JSON lines on stdout, or a live bar on stderr. Reconnects when
    the stream breaks (e.g. the server restarts). Returns the final ExportTask."""
    from tqdm import tqdm

    from iotda_export_client import ExportApiError
    import grpc
    bar = None
    final = None
    failures = 0
    last_sequence = 0
    try:
        while True:
            try:
                for event in client.watch(export_task_id):
                    failures = 0
                    if final is not None and event.sequence <= last_sequence and not event.heartbeat:
                        continue  # the snapshot after a reconnect repeats what was shown
                    last_sequence = event.sequence
                    task = final = event.export_task
                    if as_json:
                        _print_json(_dict(event))
                        continue
                    if bar is None:
                        bar = tqdm(total=100, file=sys.stderr, desc=f"export {export_task_id}", unit="%",
                                   bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]")
                    bar.n = task.progress
                    bar.set_postfix_str(f"{task.status}, {task.export_count} rows", refresh=False)
                    bar.refresh()
                return final
            except ExportApiError as e:
                # UNAVAILABLE: the server is restarting ("watch again to resume") or briefly gone.
                if final is None or e.code != grpc.StatusCode.UNAVAILABLE or failures >= 5:
                    raise
                failures += 1
                time.sleep(min(0.25 * 2 ** failures, 5.0))  # back off before watching again
    finally:
        if bar is not None:
            bar.close()


def _finish(final, as_json: bool) -> int:
    if final is not None and final.status == "Failed":
        _err(f"export task {final.export_task_id} Failed: {final.status_desc or 'no reason given'}")
        return 1
    if not as_json and final is not None:
        _print_block(_dict(final))
        if final.status == "Success":
            print(f"download it with: iotda-export export download {final.export_task_id}", file=sys.stderr)
    return 0


def _export_create(args) -> int:
    with _client(args) as client:
        task = client.create_export(args.task_id, app_type=args.app_type, app_id=args.app_id,
                                    request_id=args.request_id)
        if not args.watch:
            if args.json:
                _print_json(_dict(task))
            else:
                _print_block(_dict(task))
            return 0
        if not args.json:
            print(f"export task {task.export_task_id} created ({task.status})", file=sys.stderr)
        return _finish(_follow(client, task.export_task_id, args.json), args.json)


def _export_watch(args) -> int:
    with _client(args) as client:
        return _finish(_follow(client, args.export_task_id, args.json), args.json)


def _export_list(args) -> int:
    filters = {k: v for k, v in (("task_id", args.task_id), ("app_type", args.app_type), ("app_id", args.app_id),
                                 ("resource_type", args.resource_type)) if v}
    with _client(args) as client:
        page = client.list_exports(limit=args.limit, offset=args.offset, marker=args.marker, **filters)
    if args.json:
        _print_json(_dict(page))
        return 0
    _print_table(["EXPORT_TASK_ID", "STATUS", "PROGRESS", "ROWS", "CREATE_TIME", "BATCH_TASK_ID", "SCOPE"],
                 [[t.export_task_id, t.status, f"{t.progress}%", t.export_count, t.create_time,
                   t.resource_condition.task_id, t.app_type + (f":{t.app_id}" if t.HasField("app_id") else "")]
                  for t in page.export_tasks])
    print(f"{page.page.count} export task(s) in all" +
          (f"; next page: --marker {page.page.marker}" if len(page.export_tasks) and
           page.page.count > len(page.export_tasks) else ""), file=sys.stderr)
    return 0


def _export_get(args) -> int:
    with _client(args) as client:
        task = client.get_export(args.export_task_id)
    _print_json(_dict(task)) if args.json else _print_block(_dict(task))
    return 0


def _export_cancel(args) -> int:
    with _client(args) as client:
        task = client.cancel_export(args.export_task_id)
    _print_json(_dict(task)) if args.json else _print_block(_dict(task))
    return 0


def _export_delete(args) -> int:
    with _client(args) as client:
        client.delete_export(args.export_task_id)
    if args.json:
        _print_json({})
    else:
        print(f"deleted export task {args.export_task_id}", file=sys.stderr)
    return 0


def _export_download(args) -> int:
    from iotda_export_client import ExportClient
    dest = args.output or f"export-{args.export_task_id}.zip"
    if os.path.isdir(dest):
        dest = os.path.join(dest, f"export-{args.export_task_id}.zip")
    offset = 0
    if args.resume:
        part = ExportClient.partial_path(dest)
        offset = os.path.getsize(part) if os.path.exists(part) else 0
    bar = None

    def on_chunk(done: int, total: int) -> None:
        nonlocal bar
        if bar is None and sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=total, initial=offset, file=sys.stderr, unit="B", unit_scale=True,
                       desc=os.path.basename(dest))
        if bar is not None:
            bar.update(done - bar.n)

    try:
        with _client(args) as client:
            path = client.download(args.export_task_id, dest, offset=offset, on_chunk=on_chunk)
    except BaseException:
        if os.path.exists(ExportClient.partial_path(dest)):
            print(f"the partial file {ExportClient.partial_path(dest)} is kept: add --resume to continue",
                  file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    print(path)
    return 0


# -- batch tasks ---------------------------------------------------------------------------------

def _batch_create(args) -> int:
    targets = _split(args.targets) or []
    if args.targets_file:
        with open(args.targets_file, encoding="utf-8") as f:
            targets += [line.strip() for line in f if line.strip()]
    with _client(args) as client:
        task = client.create_batch_task(args.name, args.type, targets, app_id=args.app_id)
    if args.json:
        _print_json(_dict(task))
    else:
        d = _dict(task)
        d["targets"] = f"{len(task.targets)} target(s)"
        _print_block(d)
    return 0


def _batch_show(args) -> int:
    with _client(args) as client:
        r = client.show_batch_task(args.task_id, task_detail_status=args.status, target=args.target,
                                   limit=args.limit, offset=args.offset, marker=args.marker)
    if args.json:
        _print_json(_dict(r))
        return 0
    d = _dict(r.batchtask)
    d["targets"] = f"{len(r.batchtask.targets)} target(s)"
    _print_block(d)
    print()
    _print_table(["TARGET", "STATUS", "OUTPUT", "ERROR_CODE", "ERROR_MSG"],
                 [[s.target, s.status, s.output, s.error.error_code, s.error.error_msg] for s in r.task_details])
    print(f"{r.page.count} sub-task(s) match" + (f"; next page: --marker {r.page.marker}"
                                                 if r.page.count > len(r.task_details) else ""), file=sys.stderr)
    return 0


def _batch_list(args) -> int:
    with _client(args) as client:
        r = client.list_batch_tasks(args.type, app_id=args.app_id, status=args.status, limit=args.limit,
                                    offset=args.offset, marker=args.marker)
    if args.json:
        _print_json(_dict(r))
        return 0
    _print_table(["TASK_ID", "NAME", "TYPE", "STATUS", "TOTAL", "SUCCESS", "FAIL", "CREATE_TIME"],
                 [[t.task_id, t.task_name, t.task_type, t.status, t.task_progress.total, t.task_progress.success,
                   t.task_progress.fail, t.create_time] for t in r.batchtasks])
    print(f"{r.page.count} batch task(s) in all", file=sys.stderr)
    return 0


def _batch_delete(args) -> int:
    with _client(args) as client:
        client.delete_batch_task(args.task_id)
    if args.json:
        _print_json({})
    else:
        print(f"deleted batch task {args.task_id}", file=sys.stderr)
    return 0


# -- parser --------------------------------------------------------------------------------------

def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, help="page size, 1-50 (default 10)")
    p.add_argument("--offset", type=int, help="records to skip after the marker, 0-500")
    p.add_argument("--marker", default="", help="only records older than this ID (the previous page's marker)")


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the platform's JSON (snake_case)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from iotda_export_server.domain import rules  # the defaults of the server's caps

    parser = argparse.ArgumentParser(prog="iotda-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    _connection_flags(parser)
    # The same flags after the sub-command; SUPPRESS keeps a later level from erasing an earlier one.
    conn = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _connection_flags(conn)

    sub = parser.add_subparsers(dest="command", required=True)
    default_data_dir = os.environ.get("IOTDA_EXPORT_DATA_DIR", "./data")
    serve = sub.add_parser("serve", help="run the service (gRPC, and HTTP with --http-addr): on the embedded"
                                         " default SQLite and local files, or on --database")
    serve.add_argument("--grpc-addr", default=os.environ.get("IOTDA_EXPORT_GRPC_ADDR", "127.0.0.1:50051"),
                       help="HOST:PORT; port 0 picks a free port (printed)")
    serve.add_argument("--workers", type=int, default=None, help="export worker processes (default: cores)")
    serve.add_argument("--http-addr", default=os.environ.get("IOTDA_EXPORT_HTTP_ADDR", ""),
                       help="HOST:PORT of the HTTP/JSON gateway for REST clients such as the official SDK;"
                            " port 0 picks a free port (printed); empty: no gateway")
    _state_flags(serve, default_data_dir)
    _files_flags(serve, "result files (default <data-dir>/files); with several replicas on one host, a directory"
                        " they share")
    serve.add_argument("--lease-seconds", type=float, default=float(os.environ.get("IOTDA_EXPORT_LEASE_SECONDS", "30")),
                       help="a running export whose worker stops renewing its lease this long is taken over")
    serve.add_argument("--max-watch-streams-per-user", type=_positive_int, metavar="N",
                       default=rules.MAX_WATCH_STREAMS_PER_USER,
                       help="WatchProgress streams one user may hold open at once on this process (each replica"
                            " counts its own); one more is refused with RESOURCE_EXHAUSTED IOTDA.018006")
    serve.add_argument("--max-downloads-per-user", type=_positive_int, metavar="N",
                       default=rules.MAX_DOWNLOADS_PER_USER,
                       help="downloads (ShowExportTask streams) one user may have running at once on this"
                            " process; one more is refused with RESOURCE_EXHAUSTED IOTDA.018007")
    _log_flags(serve)
    serve.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run export workers only (no RPC port), against --database: scale"
                                      " exports apart from API replicas (`serve --workers 0`)")
    _state_flags(p, default_data_dir)
    p.add_argument("--workers", type=int, default=None, help="export worker processes (default: cores)")
    _files_flags(p, "result files, shared with the API replicas (default <data-dir>/files)")
    p.add_argument("--lease-seconds", type=float, default=float(os.environ.get("IOTDA_EXPORT_LEASE_SECONDS", "30")),
                   help="a running export whose worker stops renewing its lease this long is taken over;"
                        " use the same value on every process")
    p.add_argument("--metrics-addr", default=os.environ.get("IOTDA_EXPORT_METRICS_ADDR") or None,
                   help="HOST:PORT to serve /metrics (Prometheus) for these workers' runs; port 0 picks one"
                        " (printed); needs a --data-dir of its own")
    _log_flags(p)
    p.set_defaults(func=_worker)

    p = sub.add_parser("migrate", help="create or upgrade the database schema (PostgreSQL: run once before"
                                       " starting replicas; SQLite migrates itself on start)")
    _state_flags(p, default_data_dir)
    p.set_defaults(func=_migrate)

    principal = sub.add_parser("principal", help="add, list or remove principals (users) of a data directory;"
                                                 " works while a server runs on it")
    psub = principal.add_subparsers(dest="principal_command", required=True)
    p = psub.add_parser("add", help="create a principal in its project; prints its credentials once")
    _state_flags(p, default_data_dir)
    p.add_argument("--user", required=True, help="1-64 of [A-Za-z0-9_.@-]")
    p.add_argument("--project", required=True, help="project ID, 1-64 of [A-Za-z0-9_-]")
    p.add_argument("--actions", default=None,
                   help="comma-separated allowed actions, e.g. iotda:exporttasks:create,iotda:exporttasks:query"
                        " (default: iotda:exporttasks:*,iotda:batchtasks:*)")
    p.add_argument("--enterprise-project", default=None, help="the principal's enterprise project (default 0)")
    p.add_argument("--allowed-enterprise-projects", default=None, metavar="EP,...",
                   help="condition g:EnterpriseProjectId: allow the actions only in these enterprise projects")
    _json_flag(p)
    p.set_defaults(func=_principal_add)
    p = psub.add_parser("list", help="list principals (never tokens or secret keys)")
    _state_flags(p, default_data_dir)
    _json_flag(p)
    p.set_defaults(func=_principal_list)
    p = psub.add_parser("remove", help="remove a principal: its credentials stop working at once; its export"
                                       " tasks and their files are deleted")
    _state_flags(p, default_data_dir)
    _files_flags(p, "the server's result files (env IOTDA_EXPORT_FILES_DIR; default <data-dir>/files)")
    p.add_argument("--user", required=True)
    p.set_defaults(func=_principal_remove)

    p = sub.add_parser("seed", help="load a demo batch task with N sub-tasks of mixed outcomes (works while a"
                                    " server runs on the data directory)")
    _state_flags(p, default_data_dir)
    p.add_argument("--subtasks", type=int, required=True, metavar="N", help="any N, also above 65,535")
    p.add_argument("--project", default=None, help="project ID (default: the one of <data-dir>/credentials.json)")
    p.add_argument("--instance-id", default="", help="instance (default: the default instance)")
    p.add_argument("--app-id", default=None, help="resource space (default: default)")
    _json_flag(p)
    p.set_defaults(func=_seed)

    export = sub.add_parser("export", help="export tasks: create, list, get, watch, download, delete, cancel")
    esub = export.add_subparsers(dest="export_command", required=True)
    p = esub.add_parser("create", parents=[conn], help="export a batch task's sub-task results (xls in a zip)")
    p.add_argument("--task-id", required=True, help="the batch task to export")
    p.add_argument("--app-type", default="", help="GLOBAL (default) or APP")
    p.add_argument("--app-id", default="", help="resource space, with --app-type APP")
    p.add_argument("--request-id", default="", help="idempotency key: a retry returns the first call's task")
    p.add_argument("--watch", action="store_true", help="follow the progress to the end")
    _json_flag(p)
    p.set_defaults(func=_export_create)
    p = esub.add_parser("list", parents=[conn], help="list your export tasks, newest first")
    _paging(p)
    p.add_argument("--task-id", default="", help="only exports of this batch task")
    p.add_argument("--app-type", default="")
    p.add_argument("--app-id", default="")
    p.add_argument("--resource-type", default="")
    _json_flag(p)
    p.set_defaults(func=_export_list)
    for name, fn, help_text in (("get", _export_get, "show one export task"),
                                ("watch", _export_watch, "follow an export's progress to Success or Failed"),
                                ("delete", _export_delete, "delete an export task and its file"),
                                ("cancel", _export_cancel, "stop an unfinished export (it becomes Failed)")):
        p = esub.add_parser(name, parents=[conn], help=help_text)
        p.add_argument("export_task_id", metavar="ID")
        _json_flag(p)
        p.set_defaults(func=fn)
    p = esub.add_parser("download", parents=[conn], help="download the result (.zip holding the .xls);"
                                                         " one download per 30 s per user")
    p.add_argument("export_task_id", metavar="ID")
    p.add_argument("-o", "--output", default=None, help="file or directory (default ./export-<ID>.zip)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted download from <FILE>.part")
    p.set_defaults(func=_export_download)

    batch = sub.add_parser("batch", help="batch tasks: create, show, list, delete")
    bsub = batch.add_subparsers(dest="batch_command", required=True)
    p = bsub.add_parser("create", parents=[conn], help="create a batch task")
    p.add_argument("--name", required=True, help="task name")
    p.add_argument("--type", required=True, help="task type, e.g. firmwareUpgrade, createCommands")
    p.add_argument("--targets", default=None, help="comma-separated device IDs")
    p.add_argument("--targets-file", default=None, help="file with one device ID per line")
    p.add_argument("--app-id", default="")
    _json_flag(p)
    p.set_defaults(func=_batch_create)
    p = bsub.add_parser("show", parents=[conn], help="show a batch task and a page of its sub-tasks")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("--status", default="", help="sub-task status filter")
    p.add_argument("--target", default="", help="sub-task target filter")
    _paging(p)
    _json_flag(p)
    p.set_defaults(func=_batch_show)
    p = bsub.add_parser("list", parents=[conn], help="list batch tasks of one type")
    p.add_argument("--type", required=True)
    p.add_argument("--app-id", default="")
    p.add_argument("--status", default="")
    _paging(p)
    _json_flag(p)
    p.set_defaults(func=_batch_list)
    p = bsub.add_parser("delete", parents=[conn], help="delete a finished batch task")
    p.add_argument("task_id", metavar="ID")
    _json_flag(p)
    p.set_defaults(func=_batch_delete)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # the database, its journal and the result files hold secrets and user data
    args = build_parser().parse_args(argv)
    if args.func in (_serve, _worker, _migrate):  # server-side commands report their own failures
        return args.func(args)
    from iotda_export_client import CredentialsError, DownloadError, ExportApiError
    try:
        return args.func(args)
    except ExportApiError as e:
        return _report_api_error(e)
    except (UsageError, CredentialsError) as e:
        _err(str(e))
        return 2
    except DownloadError as e:
        _err(f"download failed: {e}")
        return 1
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # e.g. the output file cannot be written
        _err(str(e))
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the server package's own refusals (e.g. a bad user name in principal add)
        from iotda_export_server.domain.errors import DomainError, InvalidArgument
        if isinstance(e, DomainError):
            from iotda_export_server.transport.errors import grpc_code
            _err(f"{grpc_code(e).name} {e.error_code}: {e.message}")
            for v in getattr(e, "violations", []):
                print(f"  {v.field}: {v.description}", file=sys.stderr)
            return 2 if isinstance(e, InvalidArgument) else 1
        from iotda_export_server.store import database_unavailable
        if database_unavailable(e):  # local administration (seed, principal) on a lost PostgreSQL
            _err(f"the database is unavailable: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
