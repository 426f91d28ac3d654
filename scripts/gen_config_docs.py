"""Generate docs/configuration.md from the code (one command; `--check` fails when the page is stale).

What it reads, so that re-running it picks up whatever is added later (a new sub-command, flag or
environment variable, a new rule):

- the `iotda-export` command: every sub-command and flag of the argparse parser that
  `iotda_export_server.cli.build_parser()` returns, with its value, default and help text. The
  parser is built with every IOTDA_EXPORT_* variable removed from the environment, so the defaults
  shown are the built-in ones whoever runs this; which variable sets a flag's default is found by
  building the parser again with each variable set;
- the environment variables: every string literal `IOTDA_EXPORT_...` in the Python source under
  server/ and client/ (the names the code reads), each of which must have a meaning in ENV_VARS
  below: an undocumented or stale name makes this script (and tests/test_docs.py) fail;
- the fixed rules: every top-level constant of `iotda_export_server.domain.rules`, its value
  (imported) and the comment above it (read from the source);
- a few other fixed values (OTHER_VALUES below): the value is imported, only the meaning is
  written here; an entry whose name no longer exists makes the script fail.

Layout contract (tests/test_docs.py relies on it): each runnable command has a heading
"### `iotda-export <sub-command ...>`" and names each of its flags in backticks inside its section.

    .venv/bin/python scripts/gen_config_docs.py          # write docs/configuration.md
    .venv/bin/python scripts/gen_config_docs.py --check  # exit 1 (with a diff) when it is stale
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import difflib
import importlib
import inspect
import io
import os
import pathlib
import re
import sys
import tokenize

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "configuration.md"
for _path in (ROOT / "api", ROOT / "client", ROOT / "server"):  # works from a checkout even before `pip install -e`
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

ENV_PATTERN = re.compile(r"IOTDA_EXPORT_[A-Z0-9_]+")
SCANNED_DIRS = ("server", "client")

# Every environment variable the code reads, and what it means. Keep in step with the code: the
# script and tests/test_docs.py fail when a name read in server/ or client/ is missing here, or a
# name here is no longer read anywhere.
ENV_VARS: dict[str, str] = {
    "IOTDA_EXPORT_ADDRESS": "Server address (HOST:PORT) of the calling commands (`export`, `batch`) and of"
                            " `load_credentials()` when `--address` is not given; default 127.0.0.1:50051.",
    "IOTDA_EXPORT_TOKEN": "Bearer token of the calling commands when `--token` is not given.",
    "IOTDA_EXPORT_PROJECT": "Project ID of the calling commands when `--project` is not given.",
    "IOTDA_EXPORT_INSTANCE_ID": "Instance (sent as `instance-id` metadata) when `--instance-id` is not given;"
                                " unset: the default instance.",
    "IOTDA_EXPORT_CREDENTIALS": "A credentials JSON file (`user`, `project_id`, `token`, ...) read after the"
                                " variables above and before ./data/credentials.json.",
    "IOTDA_EXPORT_DATA_DIR": "Default `--data-dir` of the server-side commands (SQLite database,"
                             " credentials.json, result files); built-in default ./data.",
    "IOTDA_EXPORT_DATABASE": "Default `--database`: a postgresql:// URL shares state between replicas;"
                             " unset: SQLite in the data directory. The server hands the URL to its export"
                             " worker processes on their stdin (never on their command line or in their"
                             " environment).",
    "IOTDA_EXPORT_FILES_DIR": "Default `--files-dir`: the result files; with several replicas a directory they"
                              " all share. Unset: <data-dir>/files.",
    "IOTDA_EXPORT_FILES_URL": "Default `--files-url`: the result files as file:///path (a local directory) or"
                              " s3://bucket/prefix (an S3-compatible bucket that must exist, for replicas and"
                              " workers on hosts with no shared directory). The store's endpoint, region and"
                              " credentials come from `--s3-endpoint`/`--s3-region` or the standard AWS"
                              " variables: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,"
                              " AWS_SECRET_ACCESS_KEY, or a profile (AWS_PROFILE).",
    "IOTDA_EXPORT_GRPC_ADDR": "Default `--grpc-addr` of `serve`.",
    "IOTDA_EXPORT_HTTP_ADDR": "Default `--http-addr` of `serve` (the HTTP/JSON gateway); unset or empty: no"
                              " gateway.",
    "IOTDA_EXPORT_LEASE_SECONDS": "Default `--lease-seconds` of `serve` and `worker`.",
    "IOTDA_EXPORT_TLS_CERT": "Default `--tls-cert` of `serve`: the PEM certificate chain of both ports (TLS);"
                             " renewed files are served from the next handshake on (docs/how-to/tls.md).",
    "IOTDA_EXPORT_TLS_KEY": "Default `--tls-key` of `serve`: the PEM private key of `--tls-cert`.",
    "IOTDA_EXPORT_HTTP_TLS_CERT": "Default `--http-tls-cert` of `serve`: the HTTP gateway's own certificate.",
    "IOTDA_EXPORT_HTTP_TLS_KEY": "Default `--http-tls-key` of `serve`: the key of `--http-tls-cert`.",
    "IOTDA_EXPORT_TLS_CLIENT_CA": "Default `--tls-client-ca` of `serve`: the CA whose client certificates both TLS"
                                  " ports then require (mutual TLS).",
    "IOTDA_EXPORT_TLS_CA": "The calling commands' (and the Python client's `load_credentials()`) `--tls-ca`: the"
                           " PEM CA that signed the server's certificate; set, the connection uses TLS.",
    "IOTDA_EXPORT_CLIENT_CERT": "The calling commands' `--tls-cert`: a PEM client certificate for mutual TLS (a"
                                " principal bound to it needs no token).",
    "IOTDA_EXPORT_CLIENT_KEY": "The calling commands' `--tls-key`: the PEM key of the client certificate.",
    "IOTDA_EXPORT_LOG_LEVEL": "Log level of `serve`, `worker` and the export worker processes (DEBUG, INFO,"
                              " WARNING, ...); default INFO.",
    "IOTDA_EXPORT_LOG_FORMAT": "Log format of `serve`, `worker` and the export worker processes: `text`"
                               " (default) or `json` (one JSON object per line with time, level, logger,"
                               " message, request_id, user and process).",
    "IOTDA_EXPORT_METRICS_ADDR": "HOST:PORT where `worker` serves its own Prometheus `/metrics` (the runs"
                                 " of its processes); unset: none. `serve` serves `/metrics` on its HTTP port.",
}

# Fixed values outside rules.py worth knowing when running the service: "module:attribute" (a class
# attribute or dataclass field as Class.name; a constructor parameter's default as Class(name)).
OTHER_VALUES: list[tuple[str, str]] = [
    ("iotda_export_server.transport.grpc_server:MAX_MESSAGE_BYTES",
     "Largest gRPC message received or sent; also the largest HTTP request body (413 beyond), so a body"
     " the gateway accepts always fits the call it becomes."),
    ("iotda_export_server.transport.http_server:HttpLimits.header_timeout_seconds",
     "HTTP: a request's headers must be complete this long after the connection opened or the previous"
     " response (also the keep-alive idle limit); then the connection is closed."),
    ("iotda_export_server.transport.http_server:HttpLimits.body_timeout_seconds",
     "HTTP: a request's body must have arrived this long after its headers (408 beyond)."),
    ("iotda_export_server.transport.http_server:HttpLimits.max_connections",
     "HTTP: open connections at most; one more is closed at once."),
    ("iotda_export_server.transport.http_server:HttpLimits.lingering_seconds",
     "HTTP: after refusing an authenticated request whose body it did not read, the rest of the body is"
     " discarded for this long (so the client reads the answer); anonymous ones are closed at once."),
    ("iotda_export_server.config:ServerConfig.watch_poll_seconds",
     "WatchProgress backstop: watched tasks are re-read this often even without a change notice."),
    ("iotda_export_server.config:ServerConfig.grace_seconds",
     "On SIGTERM, calls in flight get this long to finish."),
    ("iotda_export_server.runner.supervisor:Supervisor(check_seconds)",
     "How often each process replaces dead export processes and requeues exports whose lease ran out."),
    ("iotda_export_server.config:WorkerConfig.poll_seconds",
     "An idle export process looks at the queue this often (a new export wakes it sooner)."),
    ("iotda_export_server.runner.worker:READ_BATCH_ROWS",
     "Sub-task rows read from the store per block while exporting (PostgreSQL: per FETCH of its cursor,"
     " one block read ahead)."),
    ("iotda_export_server.runner.worker:MMAP_THRESHOLD_BYTES",
     "Export processes (glibc): blocks this large or larger get a mapping of their own, returned to the"
     " system when freed, so each export's peak memory is the first one's."),
    ("iotda_export_server.runner.worker:PROGRESS_EVERY_SECONDS",
     "A running export records its progress at most this often."),
    ("iotda_export_server.runner.xls.cells:ROWS_PER_SHEET",
     "Data rows per sheet; more rows continue on sheets task_details_2, task_details_3, ..."),
    ("iotda_export_server.runner.xls.cells:MAX_CELL_CHARS",
     "Longer cell texts are cut (the .xls format's limit)."),
    ("iotda_export_server.store.postgres:TASKS_CHANNEL",
     "PostgreSQL: the NOTIFY channel that carries the id of every changed export task."),
    ("iotda_export_server.store.postgres:CONNECT_TIMEOUT_SECONDS",
     "PostgreSQL: connection timeout."),
]


class GenerationError(Exception):
    """The code and this script's tables disagree: fix ENV_VARS or OTHER_VALUES."""


# -- environment variables -----------------------------------------------------------------------

def source_files() -> list[pathlib.Path]:
    files = []
    for top in SCANNED_DIRS:
        files += [p for p in sorted((ROOT / top).rglob("*.py")) if "node_modules" not in p.parts]
    return files


def env_vars_in_code() -> dict[str, list[str]]:
    """{name: [files that hold it as a whole string literal]} over server/ and client/."""
    found: dict[str, list[str]] = {}
    for path in source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        names = {node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)
                 and ENV_PATTERN.fullmatch(node.value)}
        for name in names:
            found.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    return found


def check_env_table(found: dict[str, list[str]]) -> None:
    undocumented = sorted(set(found) - set(ENV_VARS))
    stale = sorted(set(ENV_VARS) - set(found))
    problems = []
    if undocumented:
        problems.append("read in the code but not in ENV_VARS (add a meaning): "
                        + ", ".join(f"{n} ({', '.join(found[n])})" for n in undocumented))
    if stale:
        problems.append("in ENV_VARS but read nowhere in server/ or client/ (remove it): " + ", ".join(stale))
    if problems:
        raise GenerationError("scripts/gen_config_docs.py ENV_VARS: " + "; ".join(problems))


# -- the parser ----------------------------------------------------------------------------------

@contextlib.contextmanager
def environment(**values: str):
    """os.environ without any IOTDA_EXPORT_* variable, plus `values`; restored afterwards."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("IOTDA_EXPORT_")]:
            del os.environ[key]
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build_parser() -> argparse.ArgumentParser:
    from iotda_export_server import cli
    return cli.build_parser()


@dataclasses.dataclass
class Command:
    path: tuple[str, ...]          # () for the top level, ("export", "create"), ...
    parser: argparse.ArgumentParser
    help: str
    children: list[str]            # names of its sub-commands (empty for a runnable command)

    @property
    def title(self) -> str:
        return " ".join(("iotda-export", *self.path))


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help_text: str = "") -> list[Command]:
    out = []
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    children = list(sub.choices) if sub is not None else []
    out.append(Command(path, parser, help_text or "", children))
    if sub is not None:
        helps = {a.dest: a.help or "" for a in sub._choices_actions}
        for name, child in sub.choices.items():
            out += walk(child, (*path, name), helps.get(name, ""))
    return out


def flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags and positionals a user types (not -h/--help, not the sub-command slot)."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def action_key(command: Command, action: argparse.Action) -> tuple:
    return (command.path, action.dest, tuple(action.option_strings))


def defaults_of(commands: list[Command]) -> dict[tuple, object]:
    return {action_key(c, a): a.default for c in commands for a in flag_actions(c.parser)}


def env_backed_defaults(names: list[str], baseline: dict[tuple, object]) -> dict[tuple, list[str]]:
    """{flag key: [variables that change its default]}, found by setting each variable in turn."""
    backed: dict[tuple, list[str]] = {}
    for name in names:
        # Values that text, float and int flags accept, and the words of a choice such as a log format;
        # the first one the parser takes and that changes a default tells which flags the variable sets.
        for probe in ("7.25", "7", "json", "text", "true"):
            with environment(**{name: probe}):
                try:
                    changed = defaults_of(walk(build_parser()))
                except Exception:  # noqa: BLE001 - the parser refuses this value: try the next
                    continue
            keys = [k for k, v in changed.items() if k in baseline and v != baseline[k]]
            if keys:
                for key in keys:
                    backed.setdefault(key, []).append(name)
                break
    return backed


# -- rendering helpers ---------------------------------------------------------------------------

def md(text: str) -> str:
    """Prose in a table cell: no raw HTML (<data-dir>), no emphasis from `*`, no column breaks."""
    text = " ".join(str(text).split())
    parts = re.split(r"(`[^`]*`)", text)  # leave code spans alone (but for the pipe)
    for i, part in enumerate(parts):
        if i % 2 == 0:
            part = part.replace("\\", "\\\\").replace("*", "\\*").replace("<", "\\<")
        parts[i] = part.replace("|", "\\|")
    return "".join(parts)


def code(value: str) -> str:
    value = str(value).replace("|", "\\|")
    fence = "``" if "`" in value else "`"
    return f"{fence}{value}{fence}"


def anchor(title: str) -> str:
    """GitHub's heading anchor of a heading that is `title` in backticks."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def expand_help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        params = {**vars(action), "prog": prog}
        params = {k: getattr(v, "__name__", v) for k, v in params.items()}
        with contextlib.suppress(Exception):
            text = text % params
    return text


def value_of(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "switch"
    if action.metavar:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices:
        return "{" + ",".join(map(str, action.choices)) + "}"
    if action.type is not None:
        return getattr(action.type, "__name__", str(action.type)).upper()
    return "TEXT"


def default_of(action: argparse.Action) -> str:
    d = action.default
    if action.required or d is argparse.SUPPRESS or d is None:
        return "—"
    if action.nargs == 0:
        return "on" if d else "off"
    if d == "":
        return "empty"
    return code(repr(d) if not isinstance(d, str) else d)


def flag_name(action: argparse.Action) -> str:
    if action.option_strings:
        return ", ".join(code(s) for s in action.option_strings)
    return code(value_of(action))  # a positional: shown as its metavar


def env_in_help(text: str) -> list[str]:
    return sorted(set(ENV_PATTERN.findall(text)))


def flag_table(command: Command, actions: list[argparse.Action], backed: dict[tuple, list[str]]) -> list[str]:
    lines = ["| flag | value | required | default | environment | description |",
             "|---|---|---|---|---|---|"]
    for a in actions:
        help_text = expand_help(a, command.parser.prog)
        env = sorted(set(backed.get(action_key(command, a), [])) | set(env_in_help(help_text)))
        lines.append("| " + " | ".join([
            flag_name(a), code(value_of(a)), "yes" if a.required else "", default_of(a),
            ", ".join(code(e) for e in env), md(help_text)]) + " |")
    return lines


# -- rules ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Rule:
    names: list[str]
    comment: str
    line: int


def rules_from_source(path: pathlib.Path) -> list[Rule]:
    """Top-level assignments of rules.py with their comment: the comment lines right above, or above
    the first assignment of an unbroken run of assignments (a commented group), plus any comment at
    the end of the assignment's own lines."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    tree = ast.parse(source)
    rules: list[Rule] = []
    previous_end = -10
    previous_comment = ""
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = []
        for t in targets:
            names += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
        names = [n for n in names if not n.startswith("_")]
        if not names:
            continue
        above = []
        i = node.lineno - 1  # 1-based line above
        while i >= 1 and lines[i - 1].lstrip().startswith("#"):
            above.insert(0, comments.get(i, ""))
            i -= 1
        if above:
            comment = " ".join(above)
        elif previous_end == node.lineno - 1:  # directly under the previous assignment: same group
            comment = previous_comment
        else:
            comment = ""
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments and not lines[n - 1].lstrip().startswith("#")]
        full = " ".join(x for x in (comment, *trailing) if x)
        rules.append(Rule(names, full, node.lineno))
        previous_end, previous_comment = node.end_lineno, comment
    return rules


def render_value(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:_}"
    return repr(value)


def resolve(spec: str):
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    m = re.fullmatch(r"(\w+)\((\w+)\)", attr)
    try:
        if m:  # a constructor parameter's default
            param = inspect.signature(getattr(module, m.group(1))).parameters[m.group(2)]
            if param.default is inspect.Parameter.empty:
                raise KeyError(m.group(2))
            return param.default
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except (AttributeError, KeyError):
        raise GenerationError(f"scripts/gen_config_docs.py OTHER_VALUES: {spec} no longer exists;"
                              " update or remove the entry") from None


# -- the page ------------------------------------------------------------------------------------

def generate() -> str:
    found = env_vars_in_code()
    check_env_table(found)
    with environment():
        commands = walk(build_parser())
    baseline = defaults_of(commands)
    backed = env_backed_defaults(sorted(ENV_VARS), baseline)
    top = commands[0]
    connection = flag_actions(top.parser)
    connection_dests = {a.dest for a in connection}
    runnable = [c for c in commands[1:] if not c.children]

    out = [
        "<!-- GENERATED by scripts/gen_config_docs.py from the code: do not edit by hand. Regenerate with",
        "     `.venv/bin/python scripts/gen_config_docs.py`; tests/test_docs.py fails when this page is stale. -->",
        "",
        "# Configuration reference",
        "",
        "Everything here is read from the code: the `iotda-export` command's parser"
        " (`server/iotda_export_server/cli.py`, `build_parser()`, which mounts the calling commands of"
        " `client/iotda_export_client/cli.py`), the `IOTDA_EXPORT_*` variables the Python"
        " source reads, and the constants of `server/iotda_export_server/domain/rules.py`.",
        "",
        "- [The `iotda-export` command](#the-iotda-export-command)",
        "- [Environment variables](#environment-variables)",
        "- [Rules and limits (`domain/rules.py`)](#rules-and-limits-domainrulespy)",
        "- [Other fixed values](#other-fixed-values)",
        "",
        "## The `iotda-export` command",
        "",
        "A flag wins over its environment variable, which wins over the built-in default shown here (the"
        " defaults are those of an environment without any `IOTDA_EXPORT_*` variable). The calling"
        " commands (`export ...`, `batch ...`) take the connection from, value by value: the flags, the"
        " `--credentials` file, `IOTDA_EXPORT_ADDRESS`/`TOKEN`/`PROJECT`/`INSTANCE_ID`, the file named by"
        " `IOTDA_EXPORT_CREDENTIALS`, then `./data/credentials.json`. `-h`/`--help` works everywhere and"
        " is not listed.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for c in runnable:
        out.append(f"| [{code(c.title)}](#{anchor(c.title)}) | {md(c.help)} |")
    out += ["", "### Connection flags", "",
            "Accepted before the sub-command (`iotda-export --address H:P export list`) and after the sub-command"
            " of every calling command (`iotda-export export list --address H:P`).", ""]
    out += flag_table(top, connection, backed)
    for c in runnable:
        actions = flag_actions(c.parser)
        own = [a for a in actions if a.dest not in connection_dests]
        conn = [a for a in actions if a.dest in connection_dests]
        out += ["", f"### {code(c.title)}", "", md(c.help) + ".", ""]
        if own:
            out += flag_table(c, own, backed)
        else:
            out.append("No flags of its own.")
        if conn:
            out += ["", "Also the [connection flags](#connection-flags): "
                    + ", ".join(code(s) for a in conn for s in a.option_strings) + "."]

    flags_by_env: dict[str, list[str]] = {}
    for key, names in backed.items():
        path, _dest, options = key
        for name in names:
            flags_by_env.setdefault(name, []).append(f"{' '.join(path)} {options[0] if options else _dest}")
    out += ["", "## Environment variables", "",
            "Every `IOTDA_EXPORT_*` name the Python source under `server/` and `client/` reads.", "",
            "| variable | meaning | sets the default of | named in |", "|---|---|---|---|"]
    for name in sorted(ENV_VARS):
        flags = sorted(set(flags_by_env.get(name, [])))
        out.append(f"| {code(name)} | {md(ENV_VARS[name])} | {', '.join(code(f) for f in flags)} | "
                   f"{', '.join(code(f) for f in sorted(found[name]))} |")

    from iotda_export_server.domain import rules as rules_module
    rules_path = pathlib.Path(rules_module.__file__)
    out += ["", "## Rules and limits (`domain/rules.py`)", "",
            "Fixed in the code, not configurable: each constant of"
            " [`server/iotda_export_server/domain/rules.py`](../server/iotda_export_server/domain/rules.py),"
            " its value and the comment above it. The quotas are decided in `domain/exports.py` inside one"
            " transaction locked for the user.", "",
            "| name | value | meaning |", "|---|---|---|"]
    for rule in rules_from_source(rules_path):
        for name in rule.names:
            value = getattr(rules_module, name)
            out.append(f"| {code(name)} | {code(render_value(value))} | {md(rule.comment)} |")

    out += ["", "## Other fixed values", "",
            "Constants elsewhere in the server that shape its behaviour; the values are read from the code.", "",
            "| name | value | meaning |", "|---|---|---|"]
    for spec, meaning in OTHER_VALUES:
        module_name, _, attr = spec.partition(":")
        short = module_name.removeprefix("iotda_export_server.")
        out.append(f"| {code(short + ':' + attr)} | {code(render_value(resolve(spec)))} | {md(meaning)} |")
    return "\n".join(out) + "\n"


def _shown(path: pathlib.Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="exit 1, with a diff, when docs/configuration.md is not what the code generates")
    args = parser.parse_args(argv)
    try:
        text = generate()
    except GenerationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.check:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text, encoding="utf-8")
        print(f"wrote {_shown(OUT)}")
        return 0
    current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
    if current == text:
        print(f"{_shown(OUT)} is up to date")
        return 0
    diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), "docs/configuration.md (committed)",
                                     "docs/configuration.md (from the code)", lineterm="", n=1))
    print("\n".join(diff[:60] + (["..."] if len(diff) > 60 else [])), file=sys.stderr)
    print(f"error: {_shown(OUT)} is stale: run `.venv/bin/python scripts/gen_config_docs.py`"
          " and commit the result", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
