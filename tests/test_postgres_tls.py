"""PostgreSQL replicas behind TLS, with real processes: two `serve` replicas on one database of their
own, each with the same certificate and client CA on both ports (mutual TLS), sharing --files-dir. A
principal bound to a client certificate by `principal add --database` is known to both; an export
created on one replica with that certificate (no token) is watched and downloaded on the other, and
listed through the other's HTTPS gateway."""

from __future__ import annotations

import json
import re

import pytest

import pg_support as ps
from iotda_export_client import ExportClient, TlsError
from test_tls import http_get
from tls_support import Pki

LISTENING = re.compile(r"listening on (\S+) \(gRPC, mutual TLS\)")
HTTPS = re.compile(r"listening on https://\S+:(\d+) \(HTTP/JSON gateway\)")
PROJECT = "tls-replicas"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, pki):
    root = tmp_path_factory.mktemp("pg-tls")
    db = ps.TestDatabase().create()
    procs: list[ps.Proc] = []
    try:
        ps.run_cli("migrate", "--database", db.url)
        addresses = {}
        for name, workers in (("a", "1"), ("b", "0")):
            p = ps.Proc(f"replica-{name}", [
                "serve", "--database", db.url, "--data-dir", str(root / name), "--files-dir", str(root / "files"),
                "--workers", workers, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
                "--tls-cert", str(pki.server[0]), "--tls-key", str(pki.server[1]),
                "--tls-client-ca", str(pki.ca_path)], root)
            procs.append(p)
            grpc_address = p.wait_line(LISTENING).group(1)
            addresses[name] = (grpc_address, int(p.wait_line(HTTPS).group(1)))
        yield db, addresses
    finally:
        problems = [problem for p in procs if (problem := p.stop(timeout=10))]
        db.drop()
    assert not problems, problems


class HttpPort:
    """What test_tls.http_get needs of a server: its HTTP port."""

    def __init__(self, port: int):
        self.http_port = port


def test_a_certificate_bound_principal_works_across_tls_replicas(replicas, pki, tmp_path):
    db, addresses = replicas
    out = ps.run_cli("principal", "add", "--database", db.url, "--user", "svc-a", "--project", PROJECT,
                     "--client-cert-subject", "CN=svc-a", "--json").stdout
    assert "token" in json.loads(out)
    task_id = json.loads(ps.run_cli("seed", "--database", db.url, "--data-dir", str(tmp_path / "seeder"),
                                    "--subtasks", "50", "--project", PROJECT, "--json").stdout)["task_id"]
    (a, _), (b, b_http) = addresses["a"], addresses["b"]
    with ExportClient(f"https://{a}", "", PROJECT, tls=pki.tls(pki.client), timeout=20) as on_a:
        export_task_id = on_a.create_export(task_id).export_task_id
    with ExportClient(f"https://{b}", "", PROJECT, tls=pki.tls(pki.client), timeout=20) as on_b:
        final = on_b.wait(export_task_id, timeout=60)
        assert (final.status, final.export_count) == ("Success", 50)
        path = on_b.download(export_task_id, tmp_path / "x.zip")
    assert open(path, "rb").read(4) == b"PK\x03\x04"
    status, body, _ = http_get(HttpPort(b_http), f"/v5/iot/{PROJECT}/export-tasks", pki=pki, client=pki.client)
    assert status == 200 and json.loads(body)["export_tasks"][0]["export_task_id"] == export_task_id
    # Without a client certificate neither replica completes a handshake.
    for address, _ in addresses.values():
        with ExportClient(address, "", PROJECT, tls=pki.tls(), timeout=10) as anonymous:
            with pytest.raises(TlsError):
                anonymous.list_exports()
