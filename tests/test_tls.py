"""TLS and mutual TLS on both ports, on real sockets (issue 15).

- gRPC and HTTP with the server's certificate only, and with a client CA (mutual TLS);
- the Python client and the CLI: a clear one-line error for each way a handshake goes wrong (wrong CA,
  expired or misnamed server certificate, plaintext against TLS and the reverse, no client
  certificate, one of another CA);
- principals bound to a client certificate's subject or SAN, on both ports;
- certificates renewed on disk are served from the next handshake on, under open WatchProgress
  streams, and a broken pair on disk keeps the previous one;
- `iotda-export dev-certs`, `serve`'s start-up checks and its warning for a public address.

The certificates are made with the same code as `iotda-export dev-certs` (devcerts.py).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conftest import wait_for
from tls_support import Pki, https, mtls_server, new_user, pki, tls_server  # noqa: F401 - fixtures
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc as epb_grpc
from iotda_export_client import ExportApiError, ExportClient, TlsError, TlsSettings
from iotda_export_server import devcerts
from iotda_export_server.app import add_principal
from iotda_export_server.domain.batches import seed_batch_task
from iotda_export_server.testing import ServerThread

CLI = [sys.executable, "-m", "iotda_export_server.cli"]


# -- gRPC with TLS ----------------------------------------------------------------------------------

def test_python_client_exports_watches_and_downloads_over_tls(tls_server, pki, tmp_path):
    user = new_user(tls_server)
    task_id = seed_batch_task(tls_server.store, user["project_id"], "", 300, seed=3)
    with ExportClient(https(tls_server), user["token"], user["project_id"], tls=pki.tls()) as client:
        assert client.secured
        task = client.create_export(task_id)
        final = client.wait(task.export_task_id, timeout=60)
        assert (final.status, final.export_count) == ("Success", 300)
        path = client.download(task.export_task_id, tmp_path / "x.zip")
    assert pathlib.Path(path).read_bytes() == tls_server.server.files.path(task.export_task_id).read_bytes()


def test_the_address_scheme_and_tls_files_decide_the_transport(tls_server, pki):
    user = new_user(tls_server)
    # A bare HOST:PORT with a CA file is TLS; by name (localhost is in the certificate) too.
    for address in (tls_server.address, f"localhost:{tls_server.port}"):
        with ExportClient(address, user["token"], user["project_id"], tls=pki.tls()) as client:
            assert client.list_exports().page.count == 0
    # An http:// address is not a gRPC address: said before any connection, with the TLS spelling.
    with pytest.raises(ValueError, match="has a scheme.*https://HOST:PORT for TLS"):
        ExportClient(f"http://{tls_server.address}", user["token"], user["project_id"], tls=pki.tls())


FAILURES = {
    # case: (what the server serves, what the client does) -> the explanation's words
    "wrong CA": "not signed by the CA you trust",
    "expired server certificate": "has expired",
    "server certificate for another name": "does not name the host you called",
    "plaintext client against TLS": "expects TLS",
    "TLS client against plaintext": "does not speak TLS",
}


@pytest.fixture(scope="module")
def odd_server(tmp_path_factory, pki):
    """A TLS server whose certificate files the tests swap (each swap is served from the next handshake)."""
    directory = tmp_path_factory.mktemp("odd")
    cert, key = directory / "server.crt", directory / "server.key"
    shutil.copy(pki.server[0], cert)
    shutil.copy(pki.server[1], key)
    s = ServerThread(directory / "data", workers=0, tls_cert=str(cert), tls_key=str(key))
    s.cert_files = (cert, key)
    yield s
    s.stop()


def serve_pair(server: ServerThread, pair: tuple[pathlib.Path, pathlib.Path]) -> None:
    """Puts `pair` in place of the server's files as a renewal tool would: new files renamed over
    the old ones, the key first."""
    cert, key = server.cert_files
    for source, target in ((pair[1], key), (pair[0], cert)):
        tmp = target.with_name(target.name + ".new")
        shutil.copy(source, tmp)
        os.replace(tmp, target)


def failure_setup(case: str, pki: Pki, odd_server, plain_server) -> tuple[str, TlsSettings | None]:
    serve_pair(odd_server, pki.server)
    if case == "wrong CA":
        return odd_server.address, pki.tls(ca=pki.other_ca_path)
    if case == "expired server certificate":
        serve_pair(odd_server, pki.expired_server)  # served all the same, with a warning (see below)
        return odd_server.address, pki.tls()
    if case == "server certificate for another name":
        serve_pair(odd_server, pki.misnamed_server)
        return odd_server.address, pki.tls()
    if case == "plaintext client against TLS":
        return odd_server.address, None
    assert case == "TLS client against plaintext"
    return plain_server.address, pki.tls()


@pytest.mark.parametrize("case", FAILURES)
def test_each_handshake_failure_is_one_clear_line(case, pki, odd_server, server, caplog):
    caplog.set_level(logging.WARNING, logger="iotda_export.tls")
    address, tls = failure_setup(case, pki, odd_server, server)
    with ExportClient(address, "token", "project", tls=tls, timeout=10) as client:
        with pytest.raises(TlsError) as info:
            client.list_exports()
    expired_warnings = [r.getMessage() for r in caplog.records if "is not valid now" in r.getMessage()]
    assert bool(expired_warnings) == (case == "expired server certificate"), expired_warnings
    assert FAILURES[case] in info.value.explanation, (info.value.explanation, info.value.message)
    assert info.value.summary() == f"cannot connect to {address}: {info.value.explanation}"
    # The CLI: exit 1, that one line on stderr, nothing of gRPC's own logging, no traceback.
    flags = ["--address", address, "--token", "t", "--project", "p"]
    if tls is not None:
        flags += ["--tls-ca", tls.ca]
    r = subprocess.run([*CLI, *flags, "export", "list"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith(("IOTDA_EXPORT_", "GRPC_V"))})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr == f"error: cannot connect to {address}: {info.value.explanation}\n", r.stderr


def test_a_missing_or_non_pem_tls_file_is_a_usage_error(pki, tls_server, tmp_path):
    (tmp_path / "ca.txt").write_text("not a certificate")
    for ca, words in ((tmp_path / "missing.crt", "cannot read the CA file"), (tmp_path / "ca.txt", "is not PEM")):
        r = subprocess.run([*CLI, "--address", tls_server.address, "--tls-ca", str(ca), "--token", "t", "--project",
                            "p", "export", "list"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_client_key_or_ca_file_that_does_not_fit_is_a_usage_error_not_a_down_server(pki, mtls_server):
    """PEM files that are not what they claim (a key that is not the certificate's, a key given as the
    CA) made gRPC say 'Failed to create security handshaker', which the CLI explained as an
    unreachable server ('is the server running? Start it with ...'): the files are checked first."""
    cert, key = map(str, pki.client)
    cases = (((str(pki.ca_path), cert, str(pki.client_b[1])), "is not the key of the client certificate"),
             ((str(pki.client[1]), cert, key), "holds no certificate"))
    for (ca, c, k), words in cases:
        r = subprocess.run([*CLI, "--address", mtls_server.address, "--tls-ca", ca, "--tls-cert", c, "--tls-key", k,
                            "--token", "t", "--project", "p", "export", "list"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert "is the server running" not in r.stderr and "PRIVATE KEY" not in r.stderr, r.stderr


# -- mutual TLS ---------------------------------------------------------------------------------------

MTLS_REFUSALS = {
    "no client certificate": None,
    "client certificate of another CA": "other_client",
    "expired client certificate": "expired_client",
}


@pytest.mark.parametrize("case", MTLS_REFUSALS)
def test_mutual_tls_refuses_a_connection_without_a_good_client_certificate(case, mtls_server, pki):
    attribute = MTLS_REFUSALS[case]
    tls = pki.tls(getattr(pki, attribute) if attribute else None)
    with ExportClient(mtls_server.address, mtls_server.admin["token"], mtls_server.admin["project_id"], tls=tls,
                      timeout=10) as client:
        with pytest.raises(TlsError) as info:
            client.list_exports()
    assert "client certificate" in info.value.explanation, info.value.explanation
    # HTTP: the handshake fails the same way (TLS 1.3 reports it at the first read).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        http_get(mtls_server, "/healthz", client=getattr(pki, attribute) if attribute else None, pki=pki)


def test_a_bound_client_certificate_authenticates_without_a_token(mtls_server, pki):
    # By subject (svc-a) and by SAN (svc-b): each sees its own project.
    for pair, creds in ((pki.client, mtls_server.svc_a), (pki.client_b, mtls_server.svc_b)):
        task_id = seed_batch_task(mtls_server.store, creds["project_id"], "", 5, seed=5)
        with ExportClient(https(mtls_server), "", creds["project_id"], tls=pki.tls(pair)) as client:
            task = client.create_export(task_id)
            assert client.get_export(task.export_task_id).export_task_id == task.export_task_id
        owner = mtls_server.store.reader().export_task(task.export_task_id).owner
        assert owner == creds["principal_id"]
    # Another project than the bound principal's: refused as for a token.
    with ExportClient(https(mtls_server), "", "project-svc-b", tls=pki.tls(pki.client)) as client:
        with pytest.raises(ExportApiError) as info:
            client.list_exports()
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_token_wins_over_the_certificate_and_an_unbound_certificate_is_no_credential(mtls_server, pki):
    admin = mtls_server.admin
    with ExportClient(https(mtls_server), admin["token"], admin["project_id"], tls=pki.tls(pki.client)) as client:
        assert client.list_exports().page.count == 0  # the admin's project, not svc-a's
    with ExportClient(https(mtls_server), "", admin["project_id"], tls=pki.tls(pki.unbound_client)) as client:
        with pytest.raises(ExportApiError) as info:
            client.list_exports()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with ExportClient(https(mtls_server), "not-a-token", "project-svc-a", tls=pki.tls(pki.client)) as client:
        with pytest.raises(ExportApiError) as info:
            client.list_exports()  # a wrong token is not rescued by the certificate
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_without_a_client_ca_a_client_certificate_names_nobody(tls_server, pki):
    bound = add_principal(tls_server.store, "svc-a-here", "project-a-here", client_cert_subject="CN=svc-a")
    with ExportClient(https(tls_server), "", bound["project_id"], tls=pki.tls(pki.client)) as client:
        with pytest.raises(ExportApiError) as info:
            client.list_exports()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_cli_calls_with_a_client_certificate_and_no_token(mtls_server, pki, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDA_EXPORT_")}
    env.update({"IOTDA_EXPORT_TLS_CA": str(pki.ca_path), "IOTDA_EXPORT_CLIENT_CERT": str(pki.client[0]),
                "IOTDA_EXPORT_CLIENT_KEY": str(pki.client[1])})
    r = subprocess.run([*CLI, "--address", https(mtls_server), "--project", "project-svc-a", "export", "list",
                        "--json"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["page"]["count"] >= 0


# -- HTTP ---------------------------------------------------------------------------------------------

def http_get(server: ServerThread, path: str, *, pki: Pki, client=None, headers: dict | None = None,
             ca: pathlib.Path | None = None) -> tuple[int, bytes, bytes]:
    """GET over a real TLS connection; (status, body, the server certificate's DER)."""
    context = ssl.create_default_context(cafile=str(ca or pki.ca_path))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=context, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()


def test_http_gateway_over_tls_and_a_bound_certificate_on_it(tls_server, mtls_server, pki):
    user = new_user(tls_server)
    status, body, _ = http_get(tls_server, f"/v5/iot/{user['project_id']}/export-tasks", pki=pki,
                               headers={"X-Auth-Token": user["token"]})
    assert status == 200 and json.loads(body)["page"]["count"] == 0
    # Mutual TLS: svc-a's certificate, no header: the gateway vouches for svc-a to its gRPC hop.
    status, body, _ = http_get(mtls_server, "/v5/iot/project-svc-a/export-tasks", pki=pki, client=pki.client)
    assert status == 200, body
    status, body, _ = http_get(mtls_server, "/v5/iot/project-svc-a/export-tasks", pki=pki, client=pki.unbound_client)
    assert status == 401 and json.loads(body)["error_code"] == "IOTDA.000002", body
    # A client certificate is verified, never taken from a header.
    status, body, _ = http_get(mtls_server, "/v5/iot/project-svc-a/export-tasks", pki=pki, client=pki.unbound_client,
                               headers={"X-Client-Cert-Subject": "CN=svc-a", "X-Iotda-Gateway-User":
                                        mtls_server.svc_a["principal_id"]})
    assert status == 401, body


def test_the_http_port_may_have_a_certificate_of_its_own(tmp_path, pki):
    http_pair = pki.write("http-own", devcerts.issue(pki.other_ca, "gateway", server_hosts=("127.0.0.1",)))
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0", tls_cert=str(pki.server[0]),
                          tls_key=str(pki.server[1]), http_tls_cert=str(http_pair[0]), http_tls_key=str(http_pair[1]))
    try:
        _, _, der = http_get(server, "/healthz", pki=pki, ca=pki.other_ca_path)
        assert der == x509.load_pem_x509_certificate(http_pair[0].read_bytes()).public_bytes(Encoding.DER)
        with ExportClient(https(server), server.admin["token"], server.admin["project_id"], tls=pki.tls()) as client:
            assert client.list_exports().page.count == 0  # gRPC: the main pair, of the test CA
    finally:
        server.stop()


def test_a_plaintext_http_request_to_the_tls_port_gets_no_answer(tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = receive_until_closed(sock)
    assert b"HTTP/" not in data and b"live" not in data  # a TLS alert and a close, never the page


def receive_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset counts as closing; the
    socket's timeout fails the test)."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_a_tls_handshake_that_never_completes_is_cut_at_the_header_timeout(tmp_path, pki):
    from iotda_export_server.transport.http_server import HttpLimits
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0", tls_cert=str(pki.server[0]),
                          tls_key=str(pki.server[1]),
                          http_limits=HttpLimits(max_body_bytes=1024, header_timeout_seconds=0.5))
    try:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
            sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
            assert receive_until_closed(sock) == b""  # closed by the server, well before the 30 s of this socket
    finally:
        server.stop()


def test_tls_handshakes_in_progress_count_against_the_http_connection_cap(tmp_path, pki):
    """A connection is counted from its accept, not from the end of its handshake: idle sockets that
    never send a ClientHello cannot hold more than max_connections of the port's sockets (each would
    otherwise stay the whole handshake timeout, uncounted: file descriptors for anyone who connects)."""
    from iotda_export_server.transport.http_server import HttpLimits
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0", tls_cert=str(pki.server[0]),
                          tls_key=str(pki.server[1]),
                          http_limits=HttpLimits(max_body_bytes=1024, header_timeout_seconds=300, max_connections=4))
    held = []
    try:
        held = [socket.create_connection(("127.0.0.1", server.http_port), timeout=30) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        with extra:
            assert receive_until_closed(extra) == b""  # closed at once, not after the 300 s handshake timeout
        for s in held:
            s.close()
        held = []

        def served() -> bool:
            try:
                return http_get(server, "/healthz", pki=pki)[0] == 200
            except (ssl.SSLError, OSError):
                return False
        wait_for(served, timeout=30, what="a TLS request to be served once the idle sockets closed")
    finally:
        for s in held:
            s.close()
        server.stop()


def test_a_grpc_handshake_that_never_completes_is_cut(tls_server):
    """gRPC core's own deadline (grpc.server_handshake_timeout_ms, 20 s here, not its default 120 s):
    an idle socket that costs the machine nothing while the test waits for the close."""
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=60) as sock:
        sock.sendall(b"\x16\x03\x01")
        receive_until_closed(sock)  # returns once gRPC closes it; the 60 s timeout fails the test


# -- rotation -----------------------------------------------------------------------------------------

def test_renewed_certificates_are_served_without_a_restart_and_open_streams_go_on(tmp_path, pki, caplog):
    directory = tmp_path / "certs"
    directory.mkdir()
    cert, key = directory / "server.crt", directory / "server.key"
    shutil.copy(pki.server[0], cert)
    shutil.copy(pki.server[1], key)
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0", watch_heartbeat_seconds=0.2,
                          tls_cert=str(cert), tls_key=str(key))
    server.cert_files = (cert, key)
    try:
        user = add_principal(server.store, "watcher", "project-w")
        task_id = seed_batch_task(server.store, "project-w", "", 5, seed=1)
        old = ExportClient(https(server), user["token"], "project-w", tls=pki.tls())
        export_task_id = old.create_export(task_id).export_task_id  # no workers: it stays Processing
        events: list = []
        stream = old.watch(export_task_id)
        reader = threading.Thread(target=lambda: events.extend(stream), daemon=True)
        reader.start()
        wait_for(lambda: len(events) >= 2, timeout=30, what="the stream's first heartbeats")
        # The same over HTTPS: the gateway's progress stream (one JSON line per event).
        context = ssl.create_default_context(cafile=str(pki.ca_path))
        http_stream = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=context, timeout=30)
        http_stream.request("GET", f"/v5/iot/project-w/export-tasks/{export_task_id}/progress",
                            headers={"X-Auth-Token": user["token"]})
        http_response = http_stream.getresponse()
        assert http_response.status == 200
        assert json.loads(http_response.readline())["result"]["export_task"]["status"] == "Processing"

        # Renewal by a new CA: new connections get the new certificate on both ports ...
        new_ca = devcerts.make_ca("renewed CA")
        new_ca_path = devcerts.write_pair(tmp_path, "new-ca", new_ca)[0]
        renewed = devcerts.write_pair(tmp_path, "renewed", devcerts.issue(new_ca, "server",
                                                                          server_hosts=devcerts.DEFAULT_HOSTS))
        serve_pair(server, renewed)
        with ExportClient(https(server), user["token"], "project-w", tls=pki.tls(ca=new_ca_path)) as fresh:
            assert fresh.get_export(export_task_id).status == "Processing"
        with ExportClient(https(server), user["token"], "project-w", tls=pki.tls(), timeout=10) as stale:
            with pytest.raises(TlsError):
                stale.get_export(export_task_id)
        _, _, der = http_get(server, "/healthz", pki=pki, ca=new_ca_path)
        assert der == x509.load_pem_x509_certificate(renewed[0].read_bytes()).public_bytes(Encoding.DER)
        # ... while the stream opened before goes on, on its old connection (and its calls too).
        seen = len(events)
        wait_for(lambda: len(events) >= seen + 2, timeout=30, what="heartbeats after the renewal")
        assert old.get_export(export_task_id).status == "Processing"

        # A broken pair on disk (a key that is not the certificate's) keeps the renewed one in service.
        caplog.set_level(logging.WARNING, logger="iotda_export.tls")
        broken_key = devcerts.issue(new_ca, "x", server_hosts=("localhost",)).key_pem
        key.with_name("k.new").write_bytes(broken_key)
        os.replace(key.with_name("k.new"), key)
        with ExportClient(https(server), user["token"], "project-w", tls=pki.tls(ca=new_ca_path)) as fresh:
            assert fresh.get_export(export_task_id).status == "Processing"
        warnings = [r.getMessage() for r in caplog.records if r.name == "iotda_export.tls"]
        assert any("cannot be used" in w and str(key) in w for w in warnings), warnings
        assert not any("PRIVATE KEY" in w or broken_key.decode() in w for w in warnings)

        # An event made after all this reaches both streams opened before the renewal: the cancel.
        with ExportClient(https(server), user["token"], "project-w", tls=pki.tls(ca=new_ca_path)) as fresh:
            fresh.cancel_export(export_task_id)
        reader.join(30)
        assert events[-1].export_task.status == "Failed" and not reader.is_alive()
        while (line := http_response.readline()) and json.loads(line)["result"]["export_task"]["status"] != "Failed":
            pass
        assert line, "the HTTPS stream ended without the final event"
        http_stream.close()
        old.close()
    finally:
        server.stop()


def test_a_renewed_client_ca_decides_from_the_next_handshake_on_both_ports(tmp_path, pki):
    client_ca = tmp_path / "client-ca.crt"
    shutil.copy(pki.ca_path, client_ca)
    server = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0", tls_cert=str(pki.server[0]),
                          tls_key=str(pki.server[1]), tls_client_ca=str(client_ca))
    try:
        admin = server.admin

        def grpc_call(client_pair):
            with ExportClient(https(server), admin["token"], admin["project_id"], tls=pki.tls(client_pair),
                              timeout=10) as client:
                return client.list_exports().page.count

        assert grpc_call(pki.client) == 0
        assert http_get(server, "/healthz", pki=pki, client=pki.client)[0] == 200
        with pytest.raises(TlsError):
            grpc_call(pki.other_client)
        # The other CA replaces the client CA: its certificates get in, the first CA's no longer.
        replacement = client_ca.with_name("client-ca.new")
        shutil.copy(pki.other_ca_path, replacement)
        os.replace(replacement, client_ca)
        assert grpc_call(pki.other_client) == 0
        assert http_get(server, "/healthz", pki=pki, client=pki.other_client)[0] == 200
        with pytest.raises(TlsError):
            grpc_call(pki.client)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            http_get(server, "/healthz", pki=pki, client=pki.client)
    finally:
        server.stop()


# -- start-up, defaults, dev-certs --------------------------------------------------------------------

def serve_process(tmp_path: pathlib.Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "serve", "--data-dir", str(tmp_path / "data"), "--workers", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if not k.startswith("IOTDA_EXPORT_")})


def stop(p: subprocess.Popen) -> tuple[str, str]:
    p.terminate()
    return p.communicate(timeout=30)


def test_serve_warns_once_on_a_public_address_without_tls(tmp_path, pki):
    p = serve_process(tmp_path, "--grpc-addr", "0.0.0.0:0", "--http-addr", "0.0.0.0:0")
    assert "listening on" in p.stdout.readline()
    _, err = stop(p)
    warnings = [line for line in err.splitlines() if "not a loopback address" in line]
    assert len(warnings) == 1 and "--tls-cert" in warnings[0] and "0.0.0.0:0 and 0.0.0.0:0" in warnings[0], err
    p = serve_process(tmp_path, "--grpc-addr", "127.0.0.1:0", "--http-addr", "localhost:0")
    assert "listening on" in p.stdout.readline()
    _, err = stop(p)
    assert "loopback" not in err, err  # make run's kind of addresses: no warning

    p = serve_process(tmp_path, "--grpc-addr", "0.0.0.0:0", "--tls-cert", str(pki.server[0]),
                      "--tls-key", str(pki.server[1]))
    assert "(gRPC, TLS)" in p.stdout.readline()
    _, err = stop(p)
    assert "loopback" not in err, err


def test_sighup_checks_the_files_at_once_and_the_server_goes_on(tmp_path, pki):
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server[0], cert)
    shutil.copy(pki.server[1], key)
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        p = subprocess.Popen([*CLI, "serve", "--data-dir", str(tmp_path / "data"), "--workers", "0", "--grpc-addr",
                              "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)], stdout=subprocess.PIPE,
                             stderr=err, text=True, stdin=subprocess.DEVNULL)
    try:
        address = p.stdout.readline().split("listening on ", 1)[1].split()[0]
        key.with_name("k.new").write_bytes(pki.client[1].read_bytes())  # not the certificate's key
        os.replace(key.with_name("k.new"), key)
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "cannot be used" in log.read_text(), timeout=30, what="the warning about the broken pair")
        assert "PRIVATE KEY" not in log.read_text()
        with ExportClient(f"https://{address}", "t", "p", tls=pki.tls(), timeout=10) as client:
            with pytest.raises(ExportApiError) as info:
                client.list_exports()  # still served with the previous pair: the call reaches the service
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert p.poll() is None
    finally:
        p.terminate()
        p.communicate(timeout=30)


def test_serve_refuses_to_start_on_unusable_tls_files(tmp_path, pki):
    big_bundle = tmp_path / "bundle.crt"
    big_bundle.write_bytes(pki.ca_path.read_bytes() * (2 * 1024 * 1024 // len(pki.ca_path.read_bytes()) + 1))
    cases = (
        (["--tls-cert", str(pki.server[0])], "go together"),
        (["--tls-cert", str(pki.server[0]), "--tls-key", str(pki.client[1])], "cannot use the TLS files"),
        (["--tls-cert", str(tmp_path / "none.crt"), "--tls-key", str(pki.server[1])], "none.crt"),
        (["--tls-client-ca", str(pki.ca_path)], "needs --tls-cert"),
        # A CA bundle past the 1 MiB read cap (2,000 copies of a CA): was cut at the cap and refused
        # with the PEM parser's complaint about the cut, now named for what it is.
        (["--tls-cert", str(pki.server[0]), "--tls-key", str(pki.server[1]), "--tls-client-ca",
          str(big_bundle)], "larger than 1 MiB"),
    )
    for flags, words in cases:
        r = subprocess.run([*CLI, "serve", "--data-dir", str(tmp_path / "data"), "--workers", "0",
                            "--grpc-addr", "127.0.0.1:0", *flags], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and words in r.stderr, (flags, r.stderr)
        assert "Traceback" not in r.stderr and "PRIVATE KEY" not in r.stderr


def test_dev_certs_writes_a_ca_a_server_and_a_client_certificate(tmp_path):
    out = tmp_path / "certs"
    r = subprocess.run([*CLI, "dev-certs", "--out", str(out), "--host", "export.internal", "--host", "10.0.0.7"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "client.crt", "client.key", "server.crt",
                                                     "server.key"]
    for name in ("ca.key", "client.key", "server.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server_cert = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    client_cert = x509.load_pem_x509_certificate((out / "client.crt").read_bytes())
    for cert in (server_cert, client_cert):
        cert.verify_directly_issued_by(ca)
    sans = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "export.internal"}
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.7"}
    usages = client_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert client_cert.subject.rfc4514_string() == "CN=iotda-export-client"


def test_dev_certs_never_replaces_a_ca_silently(tmp_path):
    """A second run into the same directory made a new CA key without a word: every client certificate
    the old CA signed stopped verifying. Now it refuses, in one line, unless --force."""
    out = tmp_path / "certs"
    assert subprocess.run([*CLI, "dev-certs", "--out", str(out)], capture_output=True, timeout=60).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = subprocess.run([*CLI, "dev-certs", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--force" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = subprocess.run([*CLI, "dev-certs", "--out", str(out), "--force"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (out / "ca.key").read_bytes() != before["ca.key"]
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600


def test_principal_add_binds_a_certificate_once_and_checks_the_subject(tmp_path):
    data = ["--data-dir", str(tmp_path / "data")]

    def cli(*args):
        return subprocess.run([*CLI, "principal", *args, *data], capture_output=True, text=True, timeout=60)
    r = cli("add", "--user", "svc", "--project", "p1", "--client-cert-subject", "cn=svc-a,o=Example", "--json")
    assert r.returncode == 0, r.stderr
    r = cli("list", "--json")
    assert json.loads(r.stdout)[0]["client_cert_subject"] == "CN=svc-a,O=Example"
    r = cli("add", "--user", "svc2", "--project", "p1", "--client-cert-subject", "CN=svc-a,O=Example")
    assert r.returncode == 1 and "already bound" in r.stderr, r.stderr
    r = cli("add", "--user", "svc3", "--project", "p1", "--client-cert-subject", "no equals sign")
    assert r.returncode == 2 and "client_cert_subject" in r.stderr, r.stderr
    r = cli("add", "--user", "svc4", "--project", "p1", "--client-cert-san", "has space")
    assert r.returncode == 2 and "client_cert_san" in r.stderr, r.stderr


def test_a_stub_on_a_raw_secure_channel_works_too(tls_server, pki):
    """Any gRPC client with the CA: grpc.ssl_channel_credentials, nothing of ours."""
    user = new_user(tls_server)
    creds = grpc.ssl_channel_credentials(pki.ca_path.read_bytes())
    with grpc.secure_channel(tls_server.address, creds) as channel:
        response = epb_grpc.ExportTaskServiceStub(channel).ListExportTasks(
            epb.ListExportTasksRequest(project_id=user["project_id"]),
            metadata=(("authorization", f"Bearer {user['token']}"),), timeout=10)
    assert response.page.count == 0
