"""Certificates and TLS servers shared by the TLS tests (test_tls.py, test_tls_clients.py), made with
the same code as `iotda-export dev-certs` (server/iotda_export_server/devcerts.py)."""

from __future__ import annotations

import datetime as dt
import os
import pathlib

import pytest

from iotda_export_client import TlsSettings
from iotda_export_server import devcerts
from iotda_export_server.app import add_principal
from iotda_export_server.testing import ServerThread


class Pki:
    """A CA with server and client pairs, and what goes wrong: another CA, an expired server
    certificate, one for another name, a client certificate of another CA and an expired one."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = devcerts.make_ca("test CA")
        self.ca_path = self.write("ca", self.ca)[0]
        self.server = self.write("server", devcerts.issue(self.ca, "server", server_hosts=devcerts.DEFAULT_HOSTS))
        self.client = self.write("client", devcerts.issue(self.ca, "svc-a", client=True, sans=("svc-a.internal",)))
        self.client_b = self.write("client-b", devcerts.issue(self.ca, "svc-b", client=True, sans=("svc-b.internal",)))
        self.unbound_client = self.write("client-unbound", devcerts.issue(self.ca, "nobody", client=True))
        self.other_ca = devcerts.make_ca("other CA")
        self.other_ca_path = self.write("other-ca", self.other_ca)[0]
        self.other_client = self.write("client-other-ca", devcerts.issue(self.other_ca, "svc-a", client=True))
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
        self.expired_client = self.write("client-expired", devcerts.issue(self.ca, "svc-a", client=True, days=1,
                                                                          not_before=past))
        self.expired_server = self.write("server-expired", devcerts.issue(
            self.ca, "server", server_hosts=devcerts.DEFAULT_HOSTS, days=1, not_before=past))
        self.misnamed_server = self.write("server-misnamed", devcerts.issue(self.ca, "server",
                                                                            server_hosts=("svc.example",)))

    def write(self, stem: str, issued: devcerts.Issued) -> tuple[pathlib.Path, pathlib.Path]:
        return devcerts.write_pair(self.root, stem, issued)

    def tls(self, client: tuple | None = None, ca: pathlib.Path | None = None) -> TlsSettings:
        return TlsSettings(str(ca or self.ca_path), *(map(str, client) if client else (None, None)))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    """TLS with the server's certificate only (no client CA), on gRPC and HTTP."""
    s = ServerThread(tmp_path_factory.mktemp("tls"), workers=1, http_addr="127.0.0.1:0",
                     tls_cert=str(pki.server[0]), tls_key=str(pki.server[1]))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    """Mutual TLS: both ports require a client certificate of the test CA."""
    s = ServerThread(tmp_path_factory.mktemp("mtls"), workers=1, http_addr="127.0.0.1:0",
                     tls_cert=str(pki.server[0]), tls_key=str(pki.server[1]), tls_client_ca=str(pki.ca_path))
    # svc-a by subject, svc-b by SAN; each a principal of its own project.
    s.svc_a = add_principal(s.store, "svc-a", "project-svc-a", client_cert_subject="CN=svc-a")
    s.svc_b = add_principal(s.store, "svc-b", "project-svc-b", client_cert_san="svc-b.internal")
    yield s
    s.stop()


def new_user(server: ServerThread, **kw) -> dict:
    return add_principal(server.store, f"user-{os.urandom(4).hex()}", os.urandom(16).hex(), **kw)


def https(server: ServerThread) -> str:
    return f"https://127.0.0.1:{server.port}"
