"""HTTP probes beside gRPC health: `/healthz` (the process answers) and `/readyz` (it can work: the
database answers a read and the result files' directory is there, or their object store's bucket answers).

The database check is the store's (`Store.check_reachable`, given by the wiring in app.py): it opens
a fresh connection each time (the process's own connections may hide a database file moved away, or
be the last ones a server still serves) and reads the schema version, which must be the one the
server started with; it never writes. The port is public and the probe anonymous, so:
- at most one check runs at a time (callers arriving meanwhile share its answer) and an answer is
  reused for `CACHE_SECONDS`: a flood of probes opens at most one connection per second;
- an answer that takes longer than `TIMEOUT_SECONDS` is "not ready" (the check goes on in its thread
  and its connection has timeouts of its own);
- the body names what failed and the exception's class only: the detail (a host, a path) is logged,
  once per change between ready and not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("iotda_export.probes")

TIMEOUT_SECONDS = 3.0
CACHE_SECONDS = 1.0
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def healthz() -> web.Response:
    return web.json_response({"status": "live"}, headers=NO_STORE)


@dataclass(frozen=True)
class Verdict:
    checks: dict[str, str]  # check -> "ok" or why not
    at: float

    @property
    def ready(self) -> bool:
        return all(v == "ok" for v in self.checks.values())

    def body(self) -> dict:
        doc: dict = {"status": "ready" if self.ready else "not ready"}
        if not self.ready:
            doc["reason"] = "; ".join(f"{k}: {v}" for k, v in self.checks.items() if v != "ok")
        doc["checks"] = dict(self.checks)
        return doc


class Readiness:
    """`await readiness.response()`: 200 when ready, else 503, both with a JSON body."""

    def __init__(self, check_database: Callable[[], int], schema_version: int, files):
        # Blocking: the schema version read on a fresh connection, or what reaching it raised.
        self.check_database = check_database
        self.schema_version = schema_version  # what this server started with
        # A local directory (ResultFiles.dir), checked here; else an object store that checks itself.
        self.files = files
        self.files_dir = pathlib.Path(files.dir) if getattr(files, "dir", None) is not None else None
        self._last: Verdict | None = None
        self._running: asyncio.Future | None = None
        self._was_ready = True

    async def response(self) -> web.Response:
        verdict = await self.verdict()
        return web.json_response(verdict.body(), status=200 if verdict.ready else 503, headers=NO_STORE)

    async def verdict(self) -> Verdict:
        last = self._last
        if last is not None and time.monotonic() - last.at < CACHE_SECONDS:
            return last
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self.check))
        try:
            verdict = await asyncio.wait_for(asyncio.shield(self._running), TIMEOUT_SECONDS)
        except TimeoutError:
            verdict = Verdict({"database": f"no answer within {TIMEOUT_SECONDS:.0f} s", "files": "not checked"},
                              time.monotonic())
            self._note(verdict, {})
        return verdict

    def check(self) -> Verdict:
        """Blocking: both checks, with the details for the log."""
        details: dict[str, str] = {}
        checks = {"database": self._database(details), "files": self._files(details)}
        verdict = Verdict(checks, time.monotonic())
        self._last = verdict
        self._note(verdict, details)
        return verdict

    def _note(self, verdict: Verdict, details: dict[str, str]) -> None:
        if verdict.ready != self._was_ready:
            self._was_ready = verdict.ready
            if verdict.ready:
                log.info("ready again: the database and the result files answer")
            else:
                log.warning("not ready: %s", "; ".join(
                    f"{k}: {v}" + (f" ({details[k]})" if k in details else "")
                    for k, v in verdict.checks.items() if v != "ok"))

    # -- the checks ------------------------------------------------------------------------------

    def _database(self, details: dict[str, str]) -> str:
        try:
            version = self.check_database()
        except Exception as exc:  # noqa: BLE001 - any failure is the answer, named by its class
            details["database"] = _one_line(exc)
            return f"unreachable ({type(exc).__name__})"
        if version != self.schema_version:
            return f"schema version {version}, this server runs {self.schema_version}"
        return "ok"

    def _files(self, details: dict[str, str]) -> str:
        if self.files_dir is None:
            try:
                self.files.check()
            except Exception as exc:  # noqa: BLE001 - any failure is the answer, named by its class
                details["files"] = _one_line(exc)
                return f"unreachable ({type(exc.__cause__ or exc).__name__})"
            return "ok"
        path = self.files_dir
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return "missing"
        except NotADirectoryError:
            return "not a directory"
        except OSError as exc:
            details["files"] = _one_line(exc)
            return f"unreachable ({errno.errorcode.get(exc.errno, type(exc).__name__)})"
        try:
            os.fstatvfs(fd)  # a mount gone stale answers here
        except OSError as exc:
            details["files"] = _one_line(exc)
            return f"unreachable ({errno.errorcode.get(exc.errno, type(exc).__name__)})"
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        if not os.access(path, os.W_OK | os.X_OK):
            return "not writable"
        return "ok"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else '-'}"[:300]

