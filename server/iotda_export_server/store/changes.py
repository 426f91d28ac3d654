"""Change notices from worker processes to the API process on one host (the embedded default).

PostgreSQL tells every replica of each changed export task (a trigger's NOTIFY). SQLite has no such
thing, so the API process binds a Unix datagram socket in its data directory and each worker sends
the id of every export task it changes. A notice is only a hint to re-read the task now rather than
at the next poll: a lost or forged one costs at most an extra read, and polling stays the backstop.
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


class ChangeListener:
    """The API process's end: calls `on_change(export_task_id)` in the event loop for each notice."""

    def __init__(self, data_dir: str | os.PathLike, on_change: Callable[[str], None]):
        self.path = Path(data_dir) / SOCKET_NAME
        self.on_change = on_change
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> bool:
        """Binds the socket (the caller owns the data directory, so a leftover one is stale)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.path.unlink(missing_ok=True)
            old_umask = os.umask(0o177)  # 0600 from the start: only this user's workers may write
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old_umask)
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
            self.on_change(data.decode("ascii", "replace"))

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        self.path.unlink(missing_ok=True)


class ChangeAnnouncer:
    """A worker's end: never blocks and never fails the export (notices are hints)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.path = str(Path(data_dir) / SOCKET_NAME)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def __call__(self, export_task_id: str) -> None:
        try:
            self._sock.sendto(export_task_id.encode("ascii", "replace")[:MAX_NOTICE_BYTES], self.path)
        except OSError:  # no server listening, its queue is full, or the path is too long
            pass

    def close(self) -> None:
        self._sock.close()
