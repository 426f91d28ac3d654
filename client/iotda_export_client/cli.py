"""The calling half of the `iotda-export` command: `export` and `batch` against a running server.

This module imports nothing of the server: the client distribution (iotda-export-client) installs
it as `iotda-export-client`; the server distribution mounts the same commands, beside its own
(serve, worker, migrate, principal, seed), under `iotda-export` (iotda_export_server/cli.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable

from .addresses import DEFAULT_ADDRESS, check_address

PROG = "iotda-export"
# The end of every top-level --help (client and server command alike).
CALLING_NOTES = """
Credentials for the calling commands (export, batch) come from, value by value: the flags
(--address, --token, --project, --instance-id, then the file given with --credentials), the
environment (IOTDA_EXPORT_ADDRESS, IOTDA_EXPORT_TOKEN, IOTDA_EXPORT_PROJECT,
IOTDA_EXPORT_INSTANCE_ID, then the file named by IOTDA_EXPORT_CREDENTIALS), and finally
./data/credentials.json, which the server writes on its first start. The address defaults to
127.0.0.1:50051.

Exit codes: 0 success; 1 a refused call, an unreachable server or a failed export; 2 bad usage or
input (argument errors, INVALID_ARGUMENT, OUT_OF_RANGE, missing credentials).
"""
# How many times in a row a broken WatchProgress stream is watched again before giving up.
WATCH_RECONNECTS = 5


# -- the parser: no abbreviations, errors with the sub-command's usage and a "did you mean" --------

def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest candidate (a flag the word starts, else difflib's), or ''."""
    candidates = list(candidates)
    prefixed = [c for c in candidates if c.startswith(word) and len(word) > 2]
    close = prefixed[:1] or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds to each flag's help its built-in default and, for flags made by `env_option`, the
    environment variable that overrides it; the help texts themselves stay free of both (the
    configuration reference shows them in columns of their own)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.nargs == 0 or text == argparse.SUPPRESS:
            return text
        notes = []
        env = getattr(action, "env_var", None)
        if env:
            notes.append(f"env {env}")
        shown = getattr(action, "shown_default", action.default)
        if shown not in (None, "", argparse.SUPPRESS) and not action.required:
            notes.append(f"default: {shown}")
        elif shown == "" and not action.required and env:
            notes.append("default: empty")
        return f"{text} [{'; '.join(notes)}]" if notes else text


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose flags cannot be abbreviated (a shortened flag is an error, not a
    guess) and whose errors come from the (sub-)command they concern: its usage line, then the
    error with the closest sub-command or flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # here, not at the top: the usage shown is this sub-command's
            self.error(self._unrecognized(extras))
        return namespace, extras

    def error(self, message: str):
        # A missing required flag is often a misspelt one: name the unknown flags too.
        unknown = [x for x in getattr(self, "_given", ()) if x.startswith("--")
                   and x.split("=", 1)[0] not in self._option_string_actions]
        if unknown and "unrecognized arguments" not in message:
            message = f"{self._unrecognized(unknown)}; {message}"
        super().error(message)

    def _unrecognized(self, extras: list[str]) -> str:
        flags = [s for s in self._option_string_actions if s.startswith("--")]
        hints = [did_you_mean(x.split("=", 1)[0], flags) for x in extras if x.startswith("--")]
        return f"unrecognized arguments: {' '.join(extras)}" + next((h for h in hints if h), "")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            names = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {', '.join(names)})"
                                                 + did_you_mean(str(value), names))


def env_option(parser, *flags: str, env: str, default=None, shown_default=None, **kwargs) -> argparse.Action:
    """A flag whose default the environment variable `env` overrides; its help (HelpFormatter)
    names both. A value from the environment goes through the flag's `type` like a typed one."""
    value = os.environ.get(env)
    action = parser.add_argument(*flags, default=value if value not in (None, "") else default, **kwargs)
    action.env_var = env
    action.shown_default = default if shown_default is None else shown_default
    return action


def version_text() -> str:
    from importlib import metadata
    versions = []
    for dist in ("iotda-export", "iotda-export-client"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(versions) or "iotda-export (not installed)"


# -- output --------------------------------------------------------------------------------------

class UsageError(Exception):
    """Bad input noticed by the CLI itself (exit 2)."""


def message_dict(msg) -> dict:
    """The platform's JSON shape: snake_case names, zero values present (export_count 0 is a number)."""
    from google.protobuf import json_format
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def print_json(value) -> None:
    print(json.dumps(value, ensure_ascii=False), flush=True)


def print_block(d: dict) -> None:
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


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [["-" if c in ("", None) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def err(text: str) -> None:
    print(f"error: {text}", file=sys.stderr, flush=True)


def unreachable_hint(address: str, message: str) -> str:
    """What to do when no gRPC server answers at `address`: the command that starts what is missing."""
    if "parsing HTTP/2" in message or "SETTINGS frame" in message or "http1" in message.lower():
        # Something answered, but not in HTTP/2: most likely the gateway's port given for the gRPC one.
        return (f"something at {address} answers, but not gRPC: is that the HTTP/JSON gateway's port"
                " (serve --http-addr)? The calling commands need the gRPC port (serve --grpc-addr)")
    return (f"is the server running? Start it with: iotda-export serve --grpc-addr {address}"
            " (add --http-addr HOST:PORT for the HTTP/JSON gateway, the web console and /metrics)")


def report_api_error(e) -> int:
    from .client import ServerUnreachable, TlsError
    import grpc
    if isinstance(e, TlsError):  # what to fix, in one line
        err(e.summary())
        return 1
    if isinstance(e, ServerUnreachable):
        err(f"{e.summary()}; {unreachable_hint(e.address, e.message)}")
        return 1
    err(e.summary())
    for field, description in e.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    if e.retry_after is not None:
        at = dt.datetime.now() + dt.timedelta(seconds=e.retry_after)
        print(f"  retry after {e.retry_after:.1f} s (at {at:%H:%M:%S})", file=sys.stderr)
    if e.request_id:
        print(f"  request id {e.request_id}", file=sys.stderr)
    return 2 if e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE) else 1


# -- connection ----------------------------------------------------------------------------------

def _address(text: str) -> str:
    try:
        return check_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def connection_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every calling command takes, before or after the sub-command."""
    g = parser.add_argument_group("connection (flags > environment > ./data/credentials.json)")
    g.add_argument("--address", dest="conn_address", metavar="HOST:PORT", type=_address,
                   help=f"server address; https://HOST:PORT for TLS (env IOTDA_EXPORT_ADDRESS; default"
                        f" {DEFAULT_ADDRESS})")
    g.add_argument("--token", dest="conn_token", metavar="TOKEN", help="bearer token (env IOTDA_EXPORT_TOKEN)")
    g.add_argument("--project", dest="conn_project", metavar="PROJECT_ID",
                   help="project ID (env IOTDA_EXPORT_PROJECT)")
    g.add_argument("--instance-id", dest="conn_instance_id", metavar="ID",
                   help="instance (env IOTDA_EXPORT_INSTANCE_ID; default: the default instance)")
    g.add_argument("--credentials", dest="conn_credentials", metavar="FILE",
                   help="credentials JSON file (user, project_id, token) (env IOTDA_EXPORT_CREDENTIALS)")
    g.add_argument("--timeout", dest="conn_timeout", type=float, metavar="SECONDS",
                   help="deadline of each unary call (default 30)")
    g.add_argument("--tls-ca", dest="conn_tls_ca", metavar="FILE",
                   help="PEM of the CA that signed the server's certificate; turns TLS on (env IOTDA_EXPORT_TLS_CA;"
                        " an https:// address uses TLS with the system's CAs without it)")
    g.add_argument("--tls-cert", dest="conn_tls_cert", metavar="FILE",
                   help="PEM client certificate for mutual TLS; with a principal bound to it, no token is needed"
                        " (env IOTDA_EXPORT_CLIENT_CERT)")
    g.add_argument("--tls-key", dest="conn_tls_key", metavar="FILE",
                   help="PEM key of --tls-cert (env IOTDA_EXPORT_CLIENT_KEY)")


def _client(args):
    from .client import ExportClient, load_credentials
    creds = load_credentials(address=getattr(args, "conn_address", None), token=getattr(args, "conn_token", None),
                             project_id=getattr(args, "conn_project", None),
                             instance_id=getattr(args, "conn_instance_id", None),
                             credentials_file=getattr(args, "conn_credentials", None),
                             tls_ca=getattr(args, "conn_tls_ca", None), tls_cert=getattr(args, "conn_tls_cert", None),
                             tls_key=getattr(args, "conn_tls_key", None))
    timeout = getattr(args, "conn_timeout", None)
    return ExportClient.from_credentials(creds, **({"timeout": timeout} if timeout else {}))


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not items:
        raise UsageError("expected a comma-separated list")
    return items


# -- export tasks --------------------------------------------------------------------------------

class ProgressBar:
    """The live bar of `--watch` on stderr: percent, rows, rows/s and an ETA. A re-run (the task's
    create time changes, or its progress goes back: re-created, or taken over after a crash) starts
    the rates afresh and says so; `reconnecting…` shows while the stream is down."""

    FORMAT = "{desc} {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]"

    def __init__(self, export_task_id: str, file=None, clock: Callable[[], float] = time.monotonic):
        from tqdm import tqdm
        self._tqdm = tqdm
        self.file = file or sys.stderr
        self.clock = clock
        self.export_task_id = export_task_id
        self.bar = None
        self.run_key = None
        self.runs = 0
        self.rate_base: tuple[float, int] | None = None  # (time, rows) where this run's rate starts

    def show(self, task) -> None:
        restarted = self.bar is not None and (task.create_time != self.run_key or task.progress < self.bar.n)
        if self.bar is None or restarted:
            if self.bar is not None:
                self.bar.close()
            self.runs += 1
            desc = f"export {self.export_task_id}" + (f" (re-run {self.runs - 1})" if self.runs > 1 else "")
            if restarted:
                print(f"export {self.export_task_id} re-run: progress starts again", file=self.file)
            self.bar = self._tqdm(total=100, file=self.file, desc=desc, unit="%", bar_format=self.FORMAT,
                                  smoothing=0.3)
            self.rate_base = None
        self.run_key = task.create_time
        now = self.clock()
        if self.rate_base is None:
            self.rate_base = (now, task.export_count)
        t0, rows0 = self.rate_base
        rate = (task.export_count - rows0) / (now - t0) if now - t0 > 0.5 else None
        self.bar.update(max(task.progress - self.bar.n, 0))  # through update(): tqdm's ETA follows the rate
        rate_text = f", {rate:,.0f} rows/s" if rate else ""
        self.bar.set_postfix_str(f"{task.status}, {task.export_count:,} rows{rate_text}", refresh=True)

    def reconnecting(self, attempt: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"reconnecting… (attempt {attempt} of {WATCH_RECONNECTS})", refresh=True)
        else:
            print(f"reconnecting… (attempt {attempt} of {WATCH_RECONNECTS})", file=self.file)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def follow(client, export_task_id: str, as_json: bool):
    """Streams progress to the end: JSON lines on stdout, or a live bar on stderr. Watches again
    when the stream breaks (e.g. the server restarts). Returns the final ExportTask."""
    from .client import ExportApiError
    import grpc
    bar = None if as_json else ProgressBar(export_task_id)
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
                    final = event.export_task
                    if as_json:
                        print_json(message_dict(event))
                    else:
                        bar.show(final)
                return final
            except ExportApiError as e:
                # UNAVAILABLE: the server is restarting ("watch again to resume") or briefly gone.
                if final is None or e.code != grpc.StatusCode.UNAVAILABLE or failures >= WATCH_RECONNECTS:
                    raise
                failures += 1
                if bar is not None:
                    bar.reconnecting(failures)
                time.sleep(min(0.25 * 2 ** failures, 5.0))  # back off before watching again
    finally:
        if bar is not None:
            bar.close()


def _finish(final, as_json: bool) -> int:
    if final is not None and final.status == "Failed":
        err(f"export task {final.export_task_id} Failed: {final.status_desc or 'no reason given'}")
        return 1
    if not as_json and final is not None:
        print_block(message_dict(final))
        if final.status == "Success":
            print(f"download it with: iotda-export export download {final.export_task_id}", file=sys.stderr)
    return 0


def _export_create(args) -> int:
    with _client(args) as client:
        task = client.create_export(args.task_id, app_type=args.app_type, app_id=args.app_id,
                                    request_id=args.request_id)
        if not args.watch:
            print_json(message_dict(task)) if args.json else print_block(message_dict(task))
            return 0
        if not args.json:
            print(f"export task {task.export_task_id} created ({task.status})", file=sys.stderr)
        return _finish(follow(client, task.export_task_id, args.json), args.json)


def _export_watch(args) -> int:
    with _client(args) as client:
        return _finish(follow(client, args.export_task_id, args.json), args.json)


def _export_list(args) -> int:
    filters = {k: v for k, v in (("task_id", args.task_id), ("app_type", args.app_type), ("app_id", args.app_id),
                                 ("resource_type", args.resource_type)) if v}
    with _client(args) as client:
        page = client.list_exports(limit=args.limit, offset=args.offset, marker=args.marker, **filters)
    if args.json:
        print_json(message_dict(page))
        return 0
    print_table(["EXPORT_TASK_ID", "STATUS", "PROGRESS", "ROWS", "CREATE_TIME", "BATCH_TASK_ID", "SCOPE"],
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
    print_json(message_dict(task)) if args.json else print_block(message_dict(task))
    return 0


def _export_cancel(args) -> int:
    with _client(args) as client:
        task = client.cancel_export(args.export_task_id)
    print_json(message_dict(task)) if args.json else print_block(message_dict(task))
    return 0


def _export_delete(args) -> int:
    with _client(args) as client:
        client.delete_export(args.export_task_id)
    if args.json:
        print_json({})
    else:
        print(f"deleted export task {args.export_task_id}", file=sys.stderr)
    return 0


def _export_download(args) -> int:
    from .client import ExportClient
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
    targets = split_list(args.targets) or []
    if args.targets_file:
        with open(args.targets_file, encoding="utf-8") as f:
            targets += [line.strip() for line in f if line.strip()]
    with _client(args) as client:
        task = client.create_batch_task(args.name, args.type, targets, app_id=args.app_id)
    if args.json:
        print_json(message_dict(task))
    else:
        d = message_dict(task)
        d["targets"] = f"{len(task.targets)} target(s)"
        print_block(d)
    return 0


def _batch_show(args) -> int:
    with _client(args) as client:
        r = client.show_batch_task(args.task_id, task_detail_status=args.status, target=args.target,
                                   limit=args.limit, offset=args.offset, marker=args.marker)
    if args.json:
        print_json(message_dict(r))
        return 0
    d = message_dict(r.batchtask)
    d["targets"] = f"{len(r.batchtask.targets)} target(s)"
    print_block(d)
    print()
    print_table(["TARGET", "STATUS", "OUTPUT", "ERROR_CODE", "ERROR_MSG"],
                [[s.target, s.status, s.output, s.error.error_code, s.error.error_msg] for s in r.task_details])
    print(f"{r.page.count} sub-task(s) match" + (f"; next page: --marker {r.page.marker}"
                                                if r.page.count > len(r.task_details) else ""), file=sys.stderr)
    return 0


def _batch_list(args) -> int:
    with _client(args) as client:
        r = client.list_batch_tasks(args.type, app_id=args.app_id, status=args.status, limit=args.limit,
                                    offset=args.offset, marker=args.marker)
    if args.json:
        print_json(message_dict(r))
        return 0
    print_table(["TASK_ID", "NAME", "TYPE", "STATUS", "TOTAL", "SUCCESS", "FAIL", "CREATE_TIME"],
                [[t.task_id, t.task_name, t.task_type, t.status, t.task_progress.total, t.task_progress.success,
                  t.task_progress.fail, t.create_time] for t in r.batchtasks])
    print(f"{r.page.count} batch task(s) in all", file=sys.stderr)
    return 0


def _batch_delete(args) -> int:
    with _client(args) as client:
        client.delete_batch_task(args.task_id)
    if args.json:
        print_json({})
    else:
        print(f"deleted batch task {args.task_id}", file=sys.stderr)
    return 0


# -- completion ----------------------------------------------------------------------------------

def _completion(args) -> int:
    import shtab
    # The parser the user runs (with the server's commands when installed with the server).
    print(shtab.complete(args.root_parser, shell=args.shell))
    return 0


# -- parser --------------------------------------------------------------------------------------

def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, help="page size, 1-50 (default 10)")
    p.add_argument("--offset", type=int, help="records to skip after the marker, 0-500")
    p.add_argument("--marker", default="", help="only records older than this ID (the previous page's marker)")


def json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the platform's JSON (snake_case)")


def new_parser(description: str, prog: str = PROG) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The top-level parser (connection flags, --version) and its sub-command slot."""
    parser = CliParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=version_text())
    connection_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def add_client_commands(sub: argparse._SubParsersAction, parser: argparse.ArgumentParser) -> None:
    """export, batch and completion, added to the sub-command slot of `parser`."""
    # The connection flags again after the sub-command; SUPPRESS keeps a later level from erasing an earlier one.
    conn = CliParser(add_help=False, argument_default=argparse.SUPPRESS)
    connection_flags(conn)
    configure_export(sub, conn)
    configure_batch(sub, conn)
    configure_completion(sub, parser)


def configure_export(sub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    """`export` and its sub-commands, in the order --help lists them."""
    export = sub.add_parser("export", help="export tasks: create, list, get, watch, download, delete, cancel")
    esub = export.add_subparsers(dest="export_command", required=True, metavar="COMMAND")
    configure_export_create(esub, conn)
    configure_export_list(esub, conn)
    configure_export_by_id(esub, conn)
    configure_export_download(esub, conn)


def configure_export_create(esub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    p = esub.add_parser("create", parents=[conn], help="export a batch task's sub-task results (xls in a zip)")
    p.add_argument("--task-id", required=True, help="the batch task to export")
    p.add_argument("--app-type", default="", help="GLOBAL (default) or APP")
    p.add_argument("--app-id", default="", help="resource space, with --app-type APP")
    p.add_argument("--request-id", default="", help="idempotency key: a retry returns the first call's task")
    p.add_argument("--watch", action="store_true", help="follow the progress to the end")
    json_flag(p)
    p.set_defaults(func=_export_create)


def configure_export_list(esub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    p = esub.add_parser("list", parents=[conn], help="list your export tasks, newest first")
    _paging(p)
    p.add_argument("--task-id", default="", help="only exports of this batch task")
    p.add_argument("--app-type", default="")
    p.add_argument("--app-id", default="")
    p.add_argument("--resource-type", default="")
    json_flag(p)
    p.set_defaults(func=_export_list)


def configure_export_by_id(esub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    """get, watch, delete and cancel: one export task's ID and --json each."""
    for name, fn, help_text in (("get", _export_get, "show one export task"),
                                ("watch", _export_watch, "follow an export's progress to Success or Failed"),
                                ("delete", _export_delete, "delete an export task and its file"),
                                ("cancel", _export_cancel, "stop an unfinished export (it becomes Failed)")):
        p = esub.add_parser(name, parents=[conn], help=help_text)
        p.add_argument("export_task_id", metavar="ID")
        json_flag(p)
        p.set_defaults(func=fn)


def configure_export_download(esub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    p = esub.add_parser("download", parents=[conn], help="download the result (.zip holding the .xls);"
                                                         " one download per 30 s per user")
    p.add_argument("export_task_id", metavar="ID")
    p.add_argument("-o", "--output", default=None, help="file or directory (default ./export-<ID>.zip)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted download from <FILE>.part")
    p.set_defaults(func=_export_download)


def configure_batch(sub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    """`batch` and its sub-commands, in the order --help lists them."""
    batch = sub.add_parser("batch", help="batch tasks: create, show, list, delete")
    bsub = batch.add_subparsers(dest="batch_command", required=True, metavar="COMMAND")
    configure_batch_create(bsub, conn)
    configure_batch_show(bsub, conn)
    configure_batch_list(bsub, conn)
    configure_batch_delete(bsub, conn)


def configure_batch_create(bsub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    p = bsub.add_parser("create", parents=[conn], help="create a batch task")
    p.add_argument("--name", required=True, help="task name")
    p.add_argument("--type", required=True, help="task type, e.g. firmwareUpgrade, createCommands")
    p.add_argument("--targets", default=None, help="comma-separated device IDs")
    p.add_argument("--targets-file", default=None, help="file with one device ID per line")
    p.add_argument("--app-id", default="")
    json_flag(p)
    p.set_defaults(func=_batch_create)


def configure_batch_show(bsub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    p = bsub.add_parser("show", parents=[conn], help="show a batch task and a page of its sub-tasks")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("--status", default="", help="sub-task status filter")
    p.add_argument("--target", default="", help="sub-task target filter")
    _paging(p)
    json_flag(p)
    p.set_defaults(func=_batch_show)


def configure_batch_list(bsub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    p = bsub.add_parser("list", parents=[conn], help="list batch tasks of one type")
    p.add_argument("--type", required=True)
    p.add_argument("--app-id", default="")
    p.add_argument("--status", default="")
    _paging(p)
    json_flag(p)
    p.set_defaults(func=_batch_list)


def configure_batch_delete(bsub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    p = bsub.add_parser("delete", parents=[conn], help="delete a finished batch task")
    p.add_argument("task_id", metavar="ID")
    json_flag(p)
    p.set_defaults(func=_batch_delete)


def configure_completion(sub: argparse._SubParsersAction, parser: argparse.ArgumentParser) -> None:
    """`completion`: the script is generated from `parser`, the command the user runs (the server's
    when the server mounts these commands)."""
    p = sub.add_parser("completion", help="print the shell completion script: bash (source it, or put it in"
                                          " /etc/bash_completion.d/) or zsh (a file named _iotda-export on"
                                          " $fpath)")
    p.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")
    p.set_defaults(func=_completion, root_parser=parser)


def build_parser(prog: str = "iotda-export-client") -> argparse.ArgumentParser:
    """The client distribution's own command: the calling commands only."""
    parser, sub = new_parser(__doc__ + CALLING_NOTES, prog)
    add_client_commands(sub, parser)
    return parser


def run(args: argparse.Namespace, on_other_error: Callable[[Exception], int] | None = None) -> int:
    """Runs a parsed calling command: the client's refusals become an error line and exit code."""
    # A failed connection is explained in one line of our own: gRPC core's log lines about it (a
    # failed handshake) would only repeat it, less clearly. Set before gRPC is first imported.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from .client import CredentialsError, DownloadError, ExportApiError, TlsFileError
    try:
        return args.func(args)
    except ExportApiError as e:
        return report_api_error(e)
    except (UsageError, CredentialsError, TlsFileError) as e:
        err(str(e))
        return 2
    except DownloadError as e:
        err(f"download failed: {e}")
        return 1
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # e.g. the output file cannot be written
        err(str(e))
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if on_other_error is None:
            raise
        return on_other_error(e)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
