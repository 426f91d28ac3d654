"""Fan-out of export-task changes to WatchProgress streams in this process.

Workers run in other processes (and, with PostgreSQL, on other hosts), so changes are found by
re-reading the watched tasks: on a poke (a change made here, or a database notification) and on a
short polling interval as the backstop. Each task is read once per round however many streams watch
it, and each stream keeps only the latest state (slow readers skip intermediate states, never lag).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .model import ExportTask

log = logging.getLogger("iotda_export.progress")


class Watch:
    """One stream's view: the latest state seen for its task (None once the task is deleted)."""

    __slots__ = ("export_task_id", "latest", "deleted", "changed")

    def __init__(self, export_task_id: str):
        self.export_task_id = export_task_id
        self.latest: ExportTask | None = None
        self.deleted = False
        self.changed = asyncio.Event()


class ProgressHub:
    def __init__(self, load: Callable[[list[str]], Awaitable[list[ExportTask]]], poll_interval: float = 0.2):
        self._load = load
        self.poll_interval = poll_interval
        self._watches: dict[str, set[Watch]] = {}
        self._versions: dict[str, int] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    @property
    def watchers(self) -> int:
        return sum(len(s) for s in self._watches.values())

    def subscribe(self, export_task_id: str) -> Watch:
        w = Watch(export_task_id)
        self._watches.setdefault(export_task_id, set()).add(w)
        self.poke()
        return w

    def unsubscribe(self, w: Watch) -> None:
        s = self._watches.get(w.export_task_id)
        if s is not None:
            s.discard(w)
            if not s:
                del self._watches[w.export_task_id]
                self._versions.pop(w.export_task_id, None)

    def close(self) -> None:
        """Server shutdown: wake every stream so it can end (with UNAVAILABLE) instead of hanging."""
        self.closing = True
        for watches in self._watches.values():
            for w in watches:
                w.changed.set()

    def poke(self, _export_task_id: str | None = None) -> None:
        """Re-read soon. Safe to call from any thread."""
        if self._loop is None or self._wake is None:
            return
        try:
            if asyncio.get_running_loop() is self._loop:
                self._wake.set()
                return
        except RuntimeError:
            pass
        self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            ids = list(self._watches)
            if not ids:
                continue
            try:
                tasks = await self._load(ids)
            except Exception:  # the database is briefly unavailable: the next round retries
                log.warning("progress poll failed", exc_info=True)
                continue
            found = {t.export_task_id: t for t in tasks}
            for export_task_id in ids:
                task = found.get(export_task_id)
                version = task.version if task is not None else -1
                if self._versions.get(export_task_id) == version:
                    continue
                self._versions[export_task_id] = version
                for w in self._watches.get(export_task_id, ()):
                    w.latest, w.deleted = task, task is None
                    w.changed.set()
