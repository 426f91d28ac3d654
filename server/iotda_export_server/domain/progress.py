"""Fan-out of export-task changes to WatchProgress streams in this process.

Workers run in other processes (and, with PostgreSQL, on other hosts), so changes are found by
re-reading the watched tasks: on a poke (a change made here, a worker's or the database's
notification) and on a short polling interval as the backstop. Each task is read once per round
however many streams watch it.

All streams on one task share a Topic: its latest state, one asyncio.Event pulsed on every change
(not an Event, a timer and a task per stream: thousands of streams are held), and a cache the
transport fills with the encoded message, so a change is encoded once, not once per stream. A
stream reads the latest state after each send, so a slow reader skips states and never lags.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from . import rules
from .errors import passes
from .model import ExportTask

log = logging.getLogger("iotda_export.progress")


class Topic:
    """One watched task: its latest state (None once deleted) and the pulse its streams wait on."""

    __slots__ = ("export_task_id", "latest", "deleted", "version", "streams", "encoded", "_pulse", "pulsed_at")

    def __init__(self, export_task_id: str):
        self.export_task_id = export_task_id
        self.latest: ExportTask | None = None
        self.deleted = False
        self.version = -1  # nothing read yet
        self.streams = 0
        self.encoded: dict = {}  # the transport's cache of the latest state, encoded once per version
        self._pulse = asyncio.Event()
        self.pulsed_at = time.monotonic()

    async def wait(self) -> None:
        """Returns at the next change, heartbeat or shutdown."""
        await self._pulse.wait()

    def pulse(self) -> None:
        # set() resolves every current waiter; clearing at once makes later waits block again.
        self._pulse.set()
        self._pulse.clear()
        self.pulsed_at = time.monotonic()


class ProgressHub:
    def __init__(self, load: Callable[[list[str]], Awaitable[list[ExportTask]]], poll_interval: float = 0.2,
                 heartbeat_seconds: float = rules.WATCH_HEARTBEAT_SECONDS):
        self._load = load
        self.poll_interval = poll_interval
        self.heartbeat_seconds = heartbeat_seconds
        self._topics: dict[str, Topic] = {}
        self._streams = 0  # a plain int: /metrics reads it from another thread
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    @property
    def watchers(self) -> int:
        return self._streams

    def subscribe(self, export_task_id: str, current: ExportTask) -> Topic:
        """A stream starts watching; `current` is the state it has just sent."""
        topic = self._topics.get(export_task_id)
        if topic is None:
            topic = self._topics[export_task_id] = Topic(export_task_id)
        if current.version > topic.version:
            topic.latest, topic.version, topic.encoded = current, current.version, {}
            topic.pulse()  # the topic's other streams are behind this state: the hub reads it as known
        topic.streams += 1
        self._streams += 1
        self.poke()
        return topic

    def unsubscribe(self, topic: Topic) -> None:
        topic.streams -= 1
        self._streams -= 1
        if topic.streams <= 0 and self._topics.get(topic.export_task_id) is topic:
            del self._topics[topic.export_task_id]

    def close(self) -> None:
        """Server shutdown: wake every stream so it can end (with UNAVAILABLE) instead of hanging."""
        self.closing = True
        for topic in self._topics.values():
            topic.pulse()

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
            ids = list(self._topics)
            if not ids:
                continue
            try:
                tasks = await self._load(ids)
            except Exception as exc:  # the database is briefly unavailable: the next round retries
                log.warning("progress poll failed (%s)", exc, exc_info=not passes(exc))
                self._heartbeats()  # streams must not fall silent (idle proxies would cut them)
                continue
            found = {t.export_task_id: t for t in tasks}
            for export_task_id in ids:
                topic = self._topics.get(export_task_id)
                if topic is None:
                    continue
                task = found.get(export_task_id)
                if task is None:
                    topic.latest, topic.deleted, topic.encoded = None, True, {}
                    topic.pulse()
                elif task.version > topic.version:
                    topic.latest, topic.version, topic.encoded = task, task.version, {}
                    topic.pulse()
            self._heartbeats()

    def _heartbeats(self) -> None:
        """Pulses the topics quiet for heartbeat_seconds: their streams repeat the latest state."""
        quiet_since = time.monotonic() - self.heartbeat_seconds
        for topic in list(self._topics.values()):
            if topic.pulsed_at < quiet_since:
                topic.pulse()
