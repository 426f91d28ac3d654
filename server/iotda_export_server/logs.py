"""Log set-up shared by the server, its worker processes and the CLI.

Readable lines by default, JSON lines when asked (`--log-format json` or
IOTDA_EXPORT_LOG_FORMAT=json, a LogConfig the server hands its worker processes too). Every line
carries the request id and the user of the RPC it was written for ("-" outside one). Nothing logs
a token, an SK, a signature or a database password: log ids and names, never credentials.
"""

from __future__ import annotations

import contextvars
import logging

from pythonjsonlogger.json import JsonFormatter

from .config import LogConfig

FORMATS = ("text", "json")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
user_var: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="-")


class _RequestContext(logging.Filter):
    """Stamps each record with the current RPC's request id and user (context variables: asyncio
    tasks and the threads of asyncio.to_thread carry them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.user = user_var.get()
        return True


def configure(process: str, config: LogConfig) -> None:
    """Sets up the root logger of this process (`process` names it on every line: server, worker-…).
    ValueError for a format or level of no known name."""
    level = config.level.upper()
    fmt = config.format.lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler()
    handler.addFilter(_RequestContext())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "{levelname}{name}{message}{request_id}{user}", style="{", timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"}, static_fields={"process": process}))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {process} %(name)s [request_id=%(request_id)s user=%(user)s] %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
