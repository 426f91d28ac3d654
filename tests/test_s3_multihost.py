"""Several hosts with no shared filesystem (issue 16), with real processes only: two API replicas
(`serve --workers 0`) and `iotda-export worker` processes on one PostgreSQL database and one SeaweedFS
bucket, each process with a --data-dir of its own and --files-url s3://. Leases are 3 s so a takeover
is quick. PostgreSQL or SeaweedFS missing is a failure, never a skip."""

from __future__ import annotations

import hashlib
import json
import pathlib

import grpc
import pytest

import pg_support as ps
from conftest import wait_for
from iotda_export_client import ExportApiError, ExportClient
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.store import open_store
from s3_support import SeaweedS3

LEASE_SECONDS = 3
BIG_SUBTASKS = 150_000  # seconds of export on this machine: long enough to kill its worker mid-upload
PROJECT = "s3-hosts"
PREFIX = "hosts"


class Hosts:
    def __init__(self, root: pathlib.Path, db: ps.TestDatabase, s3: SeaweedS3):
        self.root, self.db, self.s3 = root, db, s3
        self.files_url = f"s3://{s3.bucket}/{PREFIX}"
        self.procs: list[ps.Proc] = []
        self.addresses: dict[str, str] = {}
        self.store = None

    def _files_args(self, name: str) -> list[str]:
        return ["--database", self.db.url, "--data-dir", str(self.root / name), "--files-url", self.files_url,
                "--lease-seconds", str(LEASE_SECONDS)]

    def serve(self, name: str) -> None:
        p = ps.Proc(name, ["serve", *self._files_args(name), "--workers", "0", "--grpc-addr", "127.0.0.1:0"],
                    self.root)
        self.procs.append(p)
        self.addresses[name] = p.wait_line(ps.LISTENING).group(1)

    def worker(self, name: str) -> ps.Proc:
        p = ps.Proc(name, ["worker", *self._files_args(name), "--workers", "1"], self.root)
        self.procs.append(p)
        p.wait_line("worker running 1 export processes")
        wait_for(lambda: p.children(), timeout=10, what=f"{name}'s export process")
        return p

    def user(self, name: str) -> dict:
        return json.loads(ps.run_cli("principal", "add", "--database", self.db.url, "--user", name, "--project",
                                     PROJECT, "--json").stdout)

    def client(self, creds: dict, replica: str) -> ExportClient:
        return ExportClient(self.addresses[replica], creds["token"], creds["project_id"], timeout=30)

    def batch_task(self, subtasks: int) -> str:
        if self.store is None:
            self.store = open_store(self.root / "seeder", self.db.url, migrate=False)
        return seed_batch_task(self.store, PROJECT, "", subtasks, seed=subtasks)

    def row(self, export_task_id: str) -> dict:
        keys = ("status", "run_state", "attempts", "worker_id", "progress", "file_sha256", "file_key")
        rows = self.db.query(f"SELECT {', '.join(keys)} FROM export_tasks WHERE export_task_id = %s",
                             (export_task_id,))
        assert rows, export_task_id
        return dict(zip(keys, rows[0]))

    def local_files(self) -> list[pathlib.Path]:
        """Result files in any process's own directory: there must be none."""
        return [p for p in self.root.rglob("*.zip*") if "weed" not in p.parts]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3hosts")
    s3 = SeaweedS3(root / "s3").start()
    db = ps.TestDatabase().create()
    h = Hosts(root, db, s3)
    problems = []
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in s3.env().items():  # every process gets the store's address and credentials
                mp.setenv(k, v)
            ps.run_cli("migrate", "--database", db.url)
            h.serve("replica-a")
            h.serve("replica-b")
            h.workers = [h.worker("worker-1")]
            yield h
    finally:
        problems = [problem for p in h.procs if (problem := p.stop(timeout=10))]
        if h.store is not None:
            h.store.close()
        db.drop()
        s3.stop()
    assert not problems, problems


def _download(client: ExportClient, export_task_id: str, offset: int = 0) -> bytes:
    return b"".join(msg.body.data for msg in client.download_stream(export_task_id, offset=offset))


def test_created_on_a_run_by_the_worker_downloaded_on_b_byte_identical(hosts):
    creds = hosts.user("alice")
    batch_task_id = hosts.batch_task(5000)
    with hosts.client(creds, "replica-a") as a:
        task = a.create_export(batch_task_id)
        final = a.wait(task.export_task_id, timeout=60)
    assert final.status == "Success", final
    row = hosts.row(task.export_task_id)
    stored = hosts.s3.client().get_object(Bucket=hosts.s3.bucket, Key=row["file_key"])["Body"].read()
    with hosts.client(creds, "replica-b") as b:
        data = _download(b, task.export_task_id)
    assert data == stored and hashlib.sha256(data).hexdigest() == row["file_sha256"]
    assert hosts.local_files() == []  # no process wrote a result file of its own


def test_a_worker_killed_mid_upload_is_taken_over_and_leaves_no_orphan(hosts):
    creds = hosts.user("bob")
    batch_task_id = hosts.batch_task(BIG_SUBTASKS)
    (victim,) = hosts.workers
    with hosts.client(creds, "replica-a") as a:
        task = a.create_export(batch_task_id)
        task_prefix = f"{PREFIX}/{task.export_task_id}/"
        # Mid-upload: the run's multipart upload is open (created when the run starts writing) and
        # the export is under way.
        wait_for(lambda: hosts.row(task.export_task_id)["progress"] > 5 and hosts.s3.uploads(task_prefix),
                 timeout=60, interval=0.02, what="the export to be uploading")
        victim.kill()  # SIGKILL to the whole group: the `worker` command and its export process
        survivor = hosts.worker("worker-2")
        hosts.workers = [survivor]
        row = wait_for(lambda: (r := hosts.row(task.export_task_id))["attempts"] == 2 and r["run_state"] == "running"
                       and r, timeout=LEASE_SECONDS + 60, what="another worker to take the export over")
        assert row["worker_id"].split(":")[1] == str(survivor.pid), row
        final = a.wait(task.export_task_id, timeout=120)
    assert (final.status, final.export_count) == ("Success", BIG_SUBTASKS), final
    row = hosts.row(task.export_task_id)
    # Nothing leaked: the bucket holds the recorded object only, and no upload is left open (the
    # dead run's was aborted when its lease was recovered).
    assert hosts.s3.objects(task_prefix) == [row["file_key"]]
    assert hosts.s3.uploads(f"{PREFIX}/") == []
    stored = hosts.s3.client().get_object(Bucket=hosts.s3.bucket, Key=row["file_key"])["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == row["file_sha256"]
    hosts.state_big = (task.export_task_id, creds, stored)


def test_the_store_restarted_mid_download_is_a_clean_error_then_success(hosts):
    export_task_id, creds, stored = hosts.state_big
    received = b""
    error = None
    with hosts.client(creds, "replica-b") as b:
        stream = b.download_stream(export_task_id)
        try:
            for msg in stream:
                received += msg.body.data
                if len(received) >= 256 * 1024 and hosts.s3.proc.poll() is None:
                    hosts.s3.kill()  # the store dies with the download under way
        except ExportApiError as exc:
            error = exc
        try:
            # While it is down: every read is a clean UNAVAILABLE naming the store, never INTERNAL.
            if error is None:  # the rest was already on its way: a new read shows the error
                with pytest.raises(ExportApiError) as info:
                    _download(b, export_task_id, offset=len(received) // 2)
                error = info.value
            assert error.code == grpc.StatusCode.UNAVAILABLE, error
            assert "object store" in error.message and "unreachable" in error.message, error.message
        finally:
            hosts.s3.start(create_bucket=False)
        # Back: the download resumes where it stopped (or starts again) and the file is whole.
        received = received[:len(received) // 65536 * 65536]
        data = received + _download(b, export_task_id, offset=len(received))
    assert data == stored
