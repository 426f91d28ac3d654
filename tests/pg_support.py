"""Real PostgreSQL and real `iotda-export` processes for the scale-out tests.

- `TestDatabase`: a database of its own on the machine's PostgreSQL (CREATE DATABASE as the
  superuser, dropped WITH (FORCE) afterwards). PostgreSQL unreachable is a test failure with the
  command that starts it, never a skip.
- `Proc`: an `iotda-export` command in its own process group (so the export worker processes it
  spawns go with it), stdout read line by line by a thread, stderr in a log file; `wait_line` waits
  for a line with a deadline, `kill` ends the whole group.
- `pg_restart`, `pg_accepts_connections`: the machine's cluster, through pg_ctlcluster.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

ADMIN_URL = os.environ.get("IOTDA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
CLI = [sys.executable, "-m", "iotda_export_server.cli"]
LISTENING = re.compile(r"listening on (\S+) \(gRPC\)")


def _url_for(dbname: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def admin_connect(url: str = ADMIN_URL, timeout: float = 5) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=int(timeout))


class TestDatabase:
    __test__ = False  # not a test class

    def __init__(self):
        self.name = f"iotda_test_{secrets.token_hex(6)}"
        self.url = _url_for(self.name)

    def create(self) -> "TestDatabase":
        try:
            with admin_connect() as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            return self
        except psycopg.OperationalError as e:
            error = str(e).replace("\n", " ")
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({error}). These tests need it: start it with"
                    f" `{START_HINT}` (or set IOTDA_TEST_PG_ADMIN_URL)", pytrace=False)

    def drop(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with admin_connect() as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                return
            except psycopg.OperationalError:  # e.g. still starting after a restart
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def query(self, sql: str, args=()) -> list[tuple]:
        with self.connect() as conn:
            return conn.execute(sql, args).fetchall()

    def scalar(self, sql: str, args=()):
        rows = self.query(sql, args)
        return rows[0][0] if rows else None


def env(**extra) -> dict:
    """The caller's environment without IOTDA_EXPORT_* settings (but the log level)."""
    out = {k: v for k, v in os.environ.items()
           if not k.startswith("IOTDA_EXPORT_") or k == "IOTDA_EXPORT_LOG_LEVEL"}
    out.setdefault("IOTDA_EXPORT_LOG_LEVEL", "INFO")
    out.update(extra)
    return out


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *args], env=env(), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"iotda-export {' '.join(args[:2])} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


class Proc:
    """A long-running `iotda-export` command (serve, worker) in its own process group."""

    def __init__(self, name: str, args: list[str], log_dir: pathlib.Path):
        self.name = name
        self.log_path = log_dir / f"{name}.stderr"
        self._log = open(self.log_path, "w")
        self.popen = subprocess.Popen([*CLI, *args], env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._log, text=True, start_new_session=True)
        self.pid = self.popen.pid
        self.lines: list[str] = []
        self.stop_seconds: float | None = None
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_line(self, pattern: re.Pattern | str, timeout: float = 30) -> re.Match:
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no line matching {pattern.pattern!r} within {timeout:.0f} s;"
                                     f" stdout {self.lines}, stderr:\n{self.stderr_tail()}") from None
            if line is None:
                raise AssertionError(f"{self.name} exited ({self.popen.wait()}) before printing"
                                     f" {pattern.pattern!r}; stdout {self.lines}, stderr:\n{self.stderr_tail()}")
            if m := pattern.search(line):
                return m

    def stderr_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def children(self) -> list[int]:
        """Pids of the direct children (the export worker processes)."""
        try:
            text = pathlib.Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]

    def exited(self) -> bool:
        """Whether the command has exited, without reaping it: while it is not reaped its pid, and so
        its process group id, cannot be taken by anyone else's process."""
        if self.popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
        except ChildProcessError:
            return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signals the whole process group (the command and the workers it spawned); only while the
        command is not reaped, so the group id is still ours."""
        if self.popen.returncode is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10) -> str | None:
        """SIGTERM, then SIGKILL after `timeout`; the group is always killed at the end (no leftovers).
        Returns what went wrong with the graceful stop of a running command, or None."""
        problem = None
        if not self.exited():
            started = time.monotonic()
            self.kill(signal.SIGTERM)
            while not self.exited() and time.monotonic() - started < timeout:
                time.sleep(0.02)
            if not self.exited():
                problem = f"{self.name} did not stop within {timeout:.0f} s of SIGTERM"
            self.stop_seconds = time.monotonic() - started
        self.kill(signal.SIGKILL)  # anything left in the group, before the command is reaped
        try:
            code = self.popen.wait(10)
            if problem is None and self.stop_seconds is not None and code != 0:
                problem = f"{self.name} exited {code} on SIGTERM"
        finally:
            self._log.close()
        return problem


def serve(name: str, log_dir: pathlib.Path, database: str, data_dir: pathlib.Path, files_dir: pathlib.Path,
          workers: int = 0, lease_seconds: float = 3) -> Proc:
    return Proc(name, ["serve", "--database", database, "--data-dir", str(data_dir), "--files-dir", str(files_dir),
                       "--workers", str(workers), "--lease-seconds", str(lease_seconds),
                       "--grpc-addr", "127.0.0.1:0"], log_dir)


def worker(name: str, log_dir: pathlib.Path, database: str, data_dir: pathlib.Path, files_dir: pathlib.Path,
           workers: int = 1, lease_seconds: float = 3, *extra: str) -> Proc:
    return Proc(name, ["worker", "--database", database, "--data-dir", str(data_dir), "--files-dir", str(files_dir),
                       "--workers", str(workers), "--lease-seconds", str(lease_seconds), *extra], log_dir)


def _cluster() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    assert versions, "no PostgreSQL cluster under /etc/postgresql"
    return versions[-1]


def pg_restart(timeout: float = 60) -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", _cluster(), "main", "restart"], check=True,
                   timeout=timeout, capture_output=True)


def pg_accepts_connections() -> bool:
    try:
        with admin_connect(timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False
