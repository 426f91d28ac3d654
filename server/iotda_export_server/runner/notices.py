"""Notices from worker processes to the API process that started them (same host).

PostgreSQL tells every replica of each changed export task (a trigger's NOTIFY). SQLite has no such
thing, so the API process binds a Unix datagram socket in its data directory and each worker sends
the id of every export task it changes. A notice is only a hint to re-read the task now rather than
at the next poll: a lost or forged one costs at most an extra read, and polling stays the backstop.

The same socket carries a report of each finished run (outcome, rows, seconds) for the metrics.
Datagrams: "<export_task_id>" or "F <export_task_id> <outcome> <rows> <seconds>".
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("iotda_export.changes")
SOCKET_NAME = "changes.sock"
MAX_NOTICE_BYTES = 256
FINISHED_OUTCOMES = ("success", "failed")
FINISHED_SEND_TIMEOUT_SECONDS = 1.0


class ChangeListener:
    """The API process's end: calls `on_change(export_task_id)` in the event loop for each notice."""

    def __init__(self, data_dir: str | os.PathLike, on_change: Callable[[str], None],
                 on_finished: Callable[[str, int, float], None] | None = None):
        self.path = Path(data_dir) / SOCKET_NAME
        self.on_change = on_change
        self.on_finished = on_finished or (lambda _outcome, _rows, _seconds: None)
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> bool:
        """Binds the socket. The caller must hold the data directory's lock: a socket left there is
        then stale, and no other process's socket is taken over."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.path.unlink(missing_ok=True)
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)  # only this user's workers write (the directory is 0700 too)
            self._inode = os.stat(self.path).st_ino
        except OSError as exc:  # e.g. a data directory path longer than a socket address allows
            sock.close()
            log.info("worker change notices off (%s); watchers learn of changes by polling", exc)
            return False
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._drain)
        return True

    def _drain(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_NOTICE_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._notice(data.decode("ascii", "replace"))

    def _notice(self, text: str) -> None:
        if not text.startswith("F "):
            self.on_change(text)
            return
        try:
            _, export_task_id, outcome, rows, seconds = text.split(" ")
            rows_done, elapsed = int(rows), float(seconds)
        except ValueError:
            return  # not ours, or truncated: ignore it
        if outcome in FINISHED_OUTCOMES and rows_done >= 0 and elapsed >= 0:
            self.on_finished(outcome, rows_done, elapsed)
        self.on_change(export_task_id)

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        try:
            if os.stat(self.path).st_ino == self._inode:  # still ours
                self.path.unlink()
        except FileNotFoundError:
            pass


class ChangeAnnouncer:
    """A worker's end: never blocks and never fails the export (notices are hints)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.path = str(Path(data_dir) / SOCKET_NAME)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        # A finished run's report waits (briefly) for room: the queue holds only ~10 datagrams and
        # a busy server may let progress notices fill it; a dropped report would be a lost count.
        self._patient = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._patient.settimeout(FINISHED_SEND_TIMEOUT_SECONDS)

    def __call__(self, export_task_id: str) -> None:
        self._send(self._sock, export_task_id)

    def finished(self, export_task_id: str, outcome: str, rows: int, seconds: float) -> None:
        self._send(self._patient, f"F {export_task_id} {outcome} {rows} {seconds:.3f}")

    def _send(self, sock: socket.socket, text: str) -> None:
        try:
            sock.sendto(text.encode("ascii", "replace")[:MAX_NOTICE_BYTES], self.path)
        except OSError:  # no server listening, its queue full, or the path too long
            pass

    def close(self) -> None:
        self._sock.close()
        self._patient.close()
