"""`iotda-export dev-certs`: a private CA and a server and a client certificate, for trying TLS and
mutual TLS (docs/how-to/tls.md). Not for production: the CA's key sits beside the certificates.

The tests make their certificates with this code too, including expired ones and ones of another CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 90
CLIENT_COMMON_NAME = "iotda-export-client"


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in PEM, and the objects they came from (to sign with)."""

    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _validity(days: int, not_before: dt.datetime | None):
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # clocks drift
    return start, start + dt.timedelta(days=days)


def make_ca(common_name: str = "iotda-export dev CA", days: int = DEFAULT_DAYS) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _validity(days, None)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), cert, key)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(ca: Issued, common_name: str, *, server_hosts: tuple[str, ...] = (), client: bool = False,
          sans: tuple[str, ...] = (), days: int = DEFAULT_DAYS, not_before: dt.datetime | None = None) -> Issued:
    """A leaf certificate signed by `ca`: for a server (its names and addresses in `server_hosts`)
    and/or a client; `sans` adds DNS names (or addresses) to the subject alternative names."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, not_before)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    names = [_general_name(h) for h in (*server_hosts, *sans)]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), cert, key)


def write_private(path: pathlib.Path, data: bytes) -> None:
    """A key file: mode 0600 from its creation on (replacing any file there)."""
    _write_new(path, data, 0o600)


def write_public(path: pathlib.Path, data: bytes) -> None:
    """A certificate file, mode 0644."""
    _write_new(path, data, 0o644)


def _write_new(path: pathlib.Path, data: bytes, mode: int) -> None:
    # Created anew at a temporary name (O_EXCL: never through a link left there) with its mode from
    # the start, then renamed over `path`.
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_pair(directory: pathlib.Path, stem: str, issued: Issued) -> tuple[pathlib.Path, pathlib.Path]:
    """<stem>.crt and <stem>.key (0600) in `directory`; returns their paths."""
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    write_private(key_path, issued.key_pem)
    write_public(cert_path, issued.cert_pem)
    return cert_path, key_path


FILE_NAMES = tuple(f"{stem}.{ext}" for stem in ("ca", "server", "client") for ext in ("crt", "key"))


def dev_certs(out: str | os.PathLike, hosts: tuple[str, ...] = (), days: int = DEFAULT_DAYS,
              client_name: str = CLIENT_COMMON_NAME, force: bool = False) -> dict[str, pathlib.Path]:
    """Writes ca.crt/ca.key, server.crt/server.key (localhost, 127.0.0.1, ::1 and `hosts`) and
    client.crt/client.key (CN=`client_name`, client authentication) to `out`; returns the paths.
    Files already there are replaced only with `force` (FileExistsError otherwise): a new CA key
    silently orphans every certificate the previous one signed."""
    directory = pathlib.Path(out)
    existing = [name for name in FILE_NAMES if (directory / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{directory} already holds {', '.join(existing)}: pass --force to replace them"
                              " (certificates signed by the old CA then no longer verify)")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca = make_ca(days=days)
    server_hosts = tuple(dict.fromkeys((*DEFAULT_HOSTS, *hosts)))
    paths: dict[str, pathlib.Path] = {}
    paths["ca_cert"], paths["ca_key"] = write_pair(directory, "ca", ca)
    paths["server_cert"], paths["server_key"] = write_pair(
        directory, "server", issue(ca, "iotda-export server", server_hosts=server_hosts, days=days))
    paths["client_cert"], paths["client_key"] = write_pair(
        directory, "client", issue(ca, client_name, client=True, days=days))
    return paths
