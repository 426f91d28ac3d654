"""The Python client library on its own (issue 17): its how-to runs as written against a live server,
it installs and works in a fresh virtual environment without any of the server's dependencies, and
refusals arrive as typed exceptions carrying the IOTDA code and the request id (sync and asyncio)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import venv

import grpc
import pytest

from iotda_export_client import (AsyncExportClient, ExportApiError, ExportClient, InvalidArgument, NotFound,
                                 PermissionDenied, ServerUnreachable, Unauthenticated)
from iotda_export_server.domain.batches import seed_batch_task

from conftest import ServerThread, make_user

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOW_TO = ROOT / "docs" / "how-to" / "python-client.md"


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(encoding="utf-8"), re.M | re.S)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server with one export worker; its first start writes <cwd>/data/credentials.json."""
    cwd = tmp_path_factory.mktemp("python-client")
    server = ServerThread(cwd / "data", workers=1)
    try:
        yield cwd, server
    finally:
        server.stop()


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDA_EXPORT_")}
    env.update(extra)
    return env


def test_the_how_to_runs_as_written(live):
    cwd, server = live
    blocks = python_blocks(HOW_TO)
    assert len(blocks) == 5
    # One session, as the page says: the blocks in order, in a folder holding ./data/credentials.json.
    r = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=cwd, capture_output=True, text=True,
                       timeout=240, env=clean_env(IOTDA_EXPORT_ADDRESS=server.address))
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = r.stdout
    assert out.splitlines()[0] == "SERVING"
    assert re.search(r"^Success 100 3000$", out, re.M)
    kept = int(re.search(r"^kept (\d+) bytes$", out, re.M).group(1))
    assert 0 < kept < (cwd / "export.zip").stat().st_size  # really resumed from a partial file
    assert re.search(r"^\['export-[0-9a-f]{24}\.xls'\]$", out, re.M)
    assert not (cwd / "export.zip.part").exists() and not (cwd / "again.zip").exists()
    assert re.search(r"^IOTDA\.018003 [0-9a-f]{32} retry after \d", out, re.M)
    assert re.search(r"^IOTDA\.000006 \[\('export_task_id', ", out, re.M)
    assert re.search(r"^IOTDA\.018001 [0-9a-f]{32}$", out, re.M)
    assert re.search(r"^async Success 100$", out, re.M)
    assert re.search(r"^async IOTDA\.018001 [0-9a-f]{32}$", out, re.M)


def test_typed_errors_carry_the_code_and_the_request_id(live):
    _, server = live
    with grpc.insecure_channel(server.address) as channel:
        user = make_user(server, channel, actions=["iotda:exporttasks:queryList"])
        full = make_user(server, channel)
    token, project = user.creds["token"], user.project_id
    with ExportClient(server.address, token, project) as client:
        with pytest.raises(PermissionDenied) as denied:
            client.create_export("0" * 24)
        assert denied.value.error_code == "IOTDA.000003" and re.fullmatch(r"[0-9a-f]{32}", denied.value.request_id)
        assert isinstance(denied.value, ExportApiError) and denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.request_id in repr(denied.value)
    with ExportClient(server.address, "0" * 64, project) as client:
        with pytest.raises(Unauthenticated) as unknown:
            client.list_exports()
        assert unknown.value.error_code == "IOTDA.000002" and unknown.value.request_id
    # No server: ServerUnreachable, without a request id (nobody gave one).
    with ExportClient("127.0.0.1:1", token, project, timeout=5) as client:
        with pytest.raises(ServerUnreachable) as gone:
            client.list_exports()
        assert gone.value.request_id is None and gone.value.address == "127.0.0.1:1"

    async def asynchronous():
        async with AsyncExportClient(server.address, full.creds["token"], full.project_id) as client:
            with pytest.raises(InvalidArgument) as bad:
                await client.get_export("not-an-id!")
            assert bad.value.error_code == "IOTDA.000006" and bad.value.request_id
            assert [f for f, _ in bad.value.field_violations] == ["export_task_id"]
            with pytest.raises(NotFound):
                await client.download(("0" * 24), "nothing.zip")
    asyncio.run(asynchronous())
    # An address is HOST:PORT, checked before any channel is made.
    for address in ("http://127.0.0.1:50051", "localhost"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            ExportClient(address, token, project)


def test_the_client_installs_and_exports_without_the_server_or_its_dependencies(live, tmp_path):
    """`pip install ./api ./client` into a fresh virtual environment (from copies: a build writes next
    to its sources), then its CLI and library export, watch and download against the live server."""
    _, server = live
    sources = []
    for name in ("api", "client"):  # the stubs' distribution and the client, nothing of the server
        sources.append(str(tmp_path / name))
        shutil.copytree(ROOT / name, sources[-1], ignore=shutil.ignore_patterns("node", "*.egg-info", "build",
                                                                                "__pycache__"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, cli = env_dir / "bin" / "python", env_dir / "bin" / "iotda-export-client"
    r = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *sources], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True,
                               text=True, timeout=60)
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert {"iotda-export-api", "iotda-export-client"} <= names
    assert not names & {"aiohttp", "psycopg", "psycopg-binary", "xlwt", "boto3", "prometheus-client",
                        "cryptography", "iotda-export"}
    r = subprocess.run([str(python), "-c", "import iotda_export_client, iotda.export.v1.export_task_pb2_grpc"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for module in ("aiohttp", "psycopg", "xlwt", "boto3", "prometheus_client", "cryptography",
                   "iotda_export_server"):
        r = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and f"No module named '{module}'" in r.stderr, (module, r.stderr)
    r = subprocess.run([str(cli), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("usage: iotda-export-client"), r.stderr

    with grpc.insecure_channel(server.address) as channel:
        user = make_user(server, channel)
    task_id = seed_batch_task(server.store, user.project_id, "", 700, seed=5)
    env = clean_env(IOTDA_EXPORT_ADDRESS=server.address, IOTDA_EXPORT_TOKEN=user.creds["token"],
                    IOTDA_EXPORT_PROJECT=user.project_id)
    r = subprocess.run([str(cli), "export", "create", "--task-id", task_id, "--watch", "--json"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])["export_task"]
    assert (final["status"], final["export_count"]) == ("Success", 700)
    script = ("import sys, zipfile\n"
              "from iotda_export_client import ExportClient, load_credentials\n"
              "with ExportClient.from_credentials(load_credentials()) as c:\n"
              "    path = c.download(sys.argv[1], 'out.zip')\n"
              "print(zipfile.ZipFile(path).namelist())\n")
    r = subprocess.run([str(python), "-c", script, final["export_task_id"]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"['export-{final['export_task_id']}.xls']"
    # Its own command is complete without the server's: no serve, with completion and --version.
    r = subprocess.run([str(cli), "serve"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "invalid choice: 'serve'" in r.stderr
    assert subprocess.run([str(cli), "--version"], capture_output=True, text=True,
                          timeout=30).stdout.strip() == "iotda-export-client 0.1.0"
