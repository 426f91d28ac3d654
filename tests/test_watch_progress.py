"""WatchProgress fan-out: worker notices instead of waiting for the poll, topic heartbeats, and a
burst of thousands of streams opened at once."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time

import grpc
import pytest

from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc as epb_grpc
from iotda_export_server.config import FilesConfig
from iotda_export_server.domain import rules
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.runner.notices import SOCKET_NAME, ChangeAnnouncer, ChangeListener
from iotda_export_server.testing import ServerThread

from conftest import make_user, wait_for, worker_process


def _create(user, task_id: str) -> epb.ExportTask:
    return user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask",
        resource_condition=epb.ResourceCondition(task_id=task_id)), metadata=user.metadata).export_task


class Collector:
    """A WatchProgress stream read in a thread, its events kept in order."""

    def __init__(self, user, export_task_id: str):
        self.events: list[epb.WatchProgressResponse] = []
        self.error: grpc.RpcError | None = None
        self.call = user.exports.WatchProgress(epb.WatchProgressRequest(
            project_id=user.project_id, export_task_id=export_task_id), metadata=user.metadata)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError as exc:
            self.error = exc


def test_a_worker_in_another_process_tells_watchers_without_waiting_for_the_poll(tmp_path):
    # The hub polls only once a minute here: the stream can reach Success within the deadline
    # only if the worker's change notices wake the API process.
    server = ServerThread(tmp_path / "data", workers=0, watch_poll_seconds=60)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "data" / SOCKET_NAME).st_mode) == 0o600
        with grpc.insecure_channel(server.address) as channel:
            user = make_user(server, channel)
            task_id = seed_batch_task(server.store, user.project_id, "", 3000, seed=5)
            export = _create(user, task_id)
            watch = Collector(user, export.export_task_id)
            wait_for(lambda: watch.events, timeout=10, what="the first event")
            with worker_process(server):
                # The deadline (30 s) is below the 60 s poll: only a notice can end the stream in time.
                wait_for(lambda: not watch.thread.is_alive(), timeout=30, what="the stream to end")
            assert watch.error is None
            assert watch.events[-1].export_task.status == "Success"
    finally:
        server.stop()
    assert not (tmp_path / "data" / SOCKET_NAME).exists()


def test_a_quiet_stream_gets_heartbeats_repeating_the_latest_state(tmp_path):
    server = ServerThread(tmp_path / "data", workers=0, watch_heartbeat_seconds=0.3)
    try:
        with grpc.insecure_channel(server.address) as channel:
            user = make_user(server, channel)
            export = _create(user, seed_batch_task(server.store, user.project_id, "", 10, seed=6))
            watch = Collector(user, export.export_task_id)
            wait_for(lambda: len(watch.events) >= 3, timeout=15, what="two heartbeats")
            watch.call.cancel()
            first, *beats = watch.events[:3]
            assert not first.heartbeat
            for beat in beats:
                assert beat.heartbeat
                assert beat.sequence == first.sequence
                assert beat.export_task == first.export_task
    finally:
        server.stop()


def test_thousands_of_streams_opened_at_once_are_all_served(server):
    # grpc core cancels calls the server has not picked up yet past 1,000 (at random) and 3,000
    # (all): every watcher reconnecting after a restart looks like that. 35 users, each at the
    # per-user cap of streams (100): the cap refuses none of them.
    per_user = rules.MAX_WATCH_STREAMS_PER_USER
    users, streams = 35, 35 * per_user
    with grpc.insecure_channel(server.address) as channel:
        watched = []
        for i in range(users):
            user = make_user(server, channel)
            watched.append((user, _create(user, seed_batch_task(server.store, user.project_id, "", 10, seed=7))))
        for user, export in watched:
            wait_for(lambda: user.exports.GetExportTask(epb.GetExportTaskRequest(
                project_id=user.project_id, export_task_id=export.export_task_id),
                metadata=user.metadata).export_task.status == "Success", timeout=60, what="the exports")

    async def watch_all() -> list[str]:
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
        stubs = [epb_grpc.ExportTaskServiceStub(ch) for ch in channels]

        async def one(i: int) -> str:
            user, export = watched[i % users]
            request = epb.WatchProgressRequest(project_id=user.project_id, export_task_id=export.export_task_id)
            try:
                async for event in stubs[i % 4].WatchProgress(request, metadata=user.metadata, timeout=60):
                    return event.export_task.status
                return "no event"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        try:
            return await asyncio.gather(*(one(i) for i in range(streams)))
        finally:
            for ch in channels:
                await ch.close()

    outcomes = asyncio.run(watch_all())
    assert outcomes.count("Success") == streams, {o: outcomes.count(o) for o in set(outcomes)}


def test_notices_are_off_but_harmless_when_the_socket_path_is_too_long(tmp_path):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    seen: list[str] = []

    async def attempt() -> bool:
        listener = ChangeListener(deep, seen.append)
        started = listener.start()
        listener.close()
        return started

    assert asyncio.run(attempt()) is False
    ChangeAnnouncer(deep)("0123456789abcdef01234567")  # must not raise
    assert seen == []


def test_a_stream_that_subscribes_with_a_newer_state_wakes_the_older_streams(tmp_path):
    # A change the hub has not read yet (no notice, the poll a minute away) reaches a second
    # stream through its own first read: the first stream must get it then, not at a heartbeat.
    server = ServerThread(tmp_path / "data", workers=0, watch_poll_seconds=60, watch_heartbeat_seconds=60)
    try:
        with grpc.insecure_channel(server.address) as channel:
            user = make_user(server, channel)
            export = _create(user, seed_batch_task(server.store, user.project_id, "", 10, seed=8))
            first = Collector(user, export.export_task_id)
            wait_for(lambda: first.events, timeout=10, what="the first stream's first event")
            with server.store.transaction() as tx:  # as a worker on another host would, unannounced
                tx.update_export_task(export.export_task_id, progress=42)
            second = Collector(user, export.export_task_id)
            wait_for(lambda: second.events, timeout=10, what="the second stream's first event")
            assert second.events[0].export_task.progress == 42
            wait_for(lambda: len(first.events) >= 2, timeout=5, what="the first stream to hear of it")
            assert first.events[1].export_task.progress == 42 and not first.events[1].heartbeat
            first.call.cancel()
            second.call.cancel()
    finally:
        server.stop()


def test_heartbeats_go_on_while_the_store_cannot_be_read():
    from iotda_export_server.domain.model import ExportTask  # noqa: F401 - the type the hub holds
    from iotda_export_server.domain.progress import ProgressHub

    async def scenario() -> int:
        async def unavailable(_ids):
            raise OSError("the database is down")

        hub = ProgressHub(unavailable, poll_interval=0.02, heartbeat_seconds=0.1)
        runner = asyncio.create_task(hub.run())
        await asyncio.sleep(0)

        class Current:  # the state a stream has just sent
            version = 1
        topic = hub.subscribe("e" * 24, Current())
        beats = 0
        try:
            deadline = asyncio.get_running_loop().time() + 5
            while beats < 3 and asyncio.get_running_loop().time() < deadline:
                await asyncio.wait_for(topic.wait(), 1)
                beats += 1
        finally:
            runner.cancel()
        return beats

    assert asyncio.run(scenario()) == 3


def test_a_finished_run_report_waits_for_room_in_a_full_notice_queue(tmp_path):
    reports: list[tuple[str, int, float]] = []
    notices: list[str] = []

    async def scenario() -> None:
        listener = ChangeListener(tmp_path, notices.append, lambda *report: reports.append(report))
        assert listener.start()
        announce = ChangeAnnouncer(tmp_path)

        burst_sent = threading.Event()

        def worker() -> None:  # a burst of progress notices, then the run's report
            for _ in range(50):
                announce("e" * 24)
            burst_sent.set()
            announce.finished("e" * 24, "success", 1200, 0.25)

        sender = threading.Thread(target=worker)
        sender.start()
        # The loop is blocked here on purpose: nothing is read while the burst is sent.
        assert burst_sent.wait(5), "the burst of notices was not sent"
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        probe.setblocking(False)
        try:  # the queue is full: one more datagram does not fit (the report is waiting for room)
            with pytest.raises(BlockingIOError):
                probe.sendto(b"probe", str(tmp_path / SOCKET_NAME))
        finally:
            probe.close()
        # The report meets that full queue and waits for room (up to FINISHED_SEND_TIMEOUT_SECONDS):
        # its sender is still in the send while the loop stays blocked. A report sent without
        # waiting would be dropped at once and the sender gone.
        sender.join(0.3)
        assert sender.is_alive(), "the run's report did not wait for room in the full queue"
        deadline = time.monotonic() + 5
        while not reports and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        sender.join(5)
        listener.close()
        announce.close()

    asyncio.run(scenario())
    assert reports == [("success", 1200, 0.25)]
    assert notices[-1] == "e" * 24
    assert len(notices) < 51, "no notice was dropped: the queue never filled"  # 50 progress + 1 report


def test_replicas_sharing_a_data_directory_do_not_take_each_others_notice_socket(tmp_path):
    import pg_support as ps
    from iotda_export_server.store import open_store

    db = ps.TestDatabase().create()
    servers: list[ServerThread] = []
    try:
        open_store(tmp_path / "migrate", db.url, migrate=True).close()
        shared = tmp_path / "shared"
        common = dict(workers=0, database=db.url, files=FilesConfig(dir=str(tmp_path / "files")))
        servers.append(ServerThread(shared, **common))
        owner_socket = os.stat(shared / SOCKET_NAME).st_ino
        servers.append(ServerThread(shared, **common))  # the second replica on the same directory
        assert servers[0].server.changes is not None and servers[1].server.changes is None
        assert os.stat(shared / SOCKET_NAME).st_ino == owner_socket  # not re-bound by the second
        servers.pop().stop()
        assert os.stat(shared / SOCKET_NAME).st_ino == owner_socket  # not removed by its stop
    finally:
        for s in servers:
            s.stop()
        db.drop()
