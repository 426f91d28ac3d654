"""TLS for both ports: the certificate files, reloaded without a restart, and client identities.

Rotation is a file watch, not a signal: before each new handshake the files' (mtime, size, inode)
are compared with those last loaded (three stat calls; no thread, no inotify). A change is loaded,
checked (the key must match the certificate, the client CA must parse) and only then served; a pair
that does not load (half written, mismatched) keeps the previous one in service and logs a warning
naming the files, never their bytes. Established connections keep the session they negotiated, so
open WatchProgress streams are not dropped.

- gRPC: grpc.dynamic_ssl_server_credentials, whose fetcher gRPC core calls on new handshakes.
- HTTP: an ssl.SSLContext whose sni_callback (called on every ClientHello, with or without SNI)
  points the connection at the newest context.
With a client CA, a client certificate it verifies is required on both ports (mutual TLS), and TLS
session tickets are off, so a resumed session can never skip the certificate check after a rotation.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

log = logging.getLogger("iotda_export.tls")

# A client certificate names at most this many SANs that we look up (each is an index lookup).
MAX_IDENTITY_SANS = 16


class TlsConfigError(ValueError):
    """The certificate files given at start cannot be served (the message names the file)."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one port: its certificate chain and key, and the CA of client certificates
    (None: no client certificate asked for)."""

    cert: str
    key: str
    client_ca: str | None = None

    def paths(self) -> tuple[str, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


@dataclass(frozen=True)
class LoadedPair:
    """What one reload read: the bytes both servers hand out, and the HTTP port's context for them."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None
    context: ssl.SSLContext
    generation: int


def _stamp(paths: tuple[str, ...]) -> tuple:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def server_context(cert_pem: bytes, key_pem: bytes, client_ca_pem: bytes | None) -> ssl.SSLContext:
    """An HTTP server context for these bytes (raises ssl.SSLError or ValueError when they do not
    load: a key that is not the certificate's, a file that is not PEM). The key passes through a
    0600 file in a private directory, as ssl loads keys only from files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET  # TLS 1.2 tickets
    context.num_tickets = 0  # TLS 1.3 tickets: no resumption that skips a (rotated) check
    with tempfile.TemporaryDirectory(prefix="iotda-tls-") as directory:  # mkdtemp: mode 0700
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(cert_pem)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    if client_ca_pem is not None:
        context.load_verify_locations(cadata=client_ca_pem.decode("ascii", "strict"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class CertificateSource:
    """The certificate files of one port, reloaded when they change (see the module's docstring).
    Thread-safe: gRPC core calls `current()` from its own threads."""

    def __init__(self, files: TlsFiles):
        self.files = files
        self._lock = threading.Lock()
        self._generation = 0
        self._seen_stamp: tuple | None = None  # of the files last tried, loaded or not (no retry until they change)
        try:
            self._seen_stamp, self._pair = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TlsConfigError(f"cannot use the TLS files {', '.join(files.paths())}: {_reason(exc)}") from None
        _warn_if_expired(self.files.cert, self._pair.cert_pem)

    @property
    def requires_client_cert(self) -> bool:
        return self.files.client_ca is not None

    def _load(self) -> tuple[tuple, LoadedPair]:
        stamp = _stamp(self.files.paths())
        cert_pem = _read(self.files.cert)
        key_pem = _read(self.files.key)
        ca_pem = _read(self.files.client_ca) if self.files.client_ca else None
        context = server_context(cert_pem, key_pem, ca_pem)
        if ca_pem is not None:
            x509.load_pem_x509_certificates(ca_pem)  # grpc core wants PEM certificates only
        self._generation += 1
        return stamp, LoadedPair(cert_pem, key_pem, ca_pem, context, self._generation)

    def current(self) -> LoadedPair:
        """The pair to serve now: reloaded first when the files changed since they were last tried."""
        try:
            stamp = _stamp(self.files.paths())
        except OSError:  # mid-rename: keep serving what we have
            return self._pair
        if stamp == self._seen_stamp:
            return self._pair
        with self._lock:
            if stamp == self._seen_stamp:
                return self._pair
            self._seen_stamp = stamp
            try:
                loaded_stamp, pair = self._load()
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("TLS files %s changed but cannot be used (%s): still serving the previous"
                            " certificate", ", ".join(self.files.paths()), _reason(exc))
                return self._pair
            # The stamp of what was read (files changed since are read again at the next handshake).
            self._pair, self._seen_stamp = pair, loaded_stamp
            log.info("TLS certificate reloaded from %s (%s)", self.files.cert, _describe(pair.cert_pem))
            _warn_if_expired(self.files.cert, pair.cert_pem)
        return self._pair

    # -- gRPC --------------------------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials:
        last = [self._pair.generation]

        def configuration(pair: LoadedPair):
            return grpc.ssl_server_certificate_configuration([(pair.key_pem, pair.cert_pem)],
                                                             root_certificates=pair.client_ca_pem)

        def fetch():  # gRPC core, on a new handshake: None keeps the configuration it has
            pair = self.current()
            if pair.generation == last[0]:
                return None
            last[0] = pair.generation
            return configuration(pair)

        return grpc.dynamic_ssl_server_credentials(configuration(self._pair), fetch,
                                                   require_client_authentication=self.requires_client_cert)

    # -- HTTP --------------------------------------------------------------------------------------

    def http_context(self) -> ssl.SSLContext:
        """The context to give the HTTP site: its sni_callback switches each new connection to the
        newest pair's context."""
        front = server_context(self._pair.cert_pem, self._pair.key_pem, self._pair.client_ca_pem)

        def on_hello(ssl_object: ssl.SSLObject, _server_name, _context) -> None:
            pair = self.current()
            ssl_object.context = pair.context
            return None
        front.sni_callback = on_hello
        return front


MAX_PEM_BYTES = 1024 * 1024  # a PEM chain or CA bundle is a few KiB: bound it anyway


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_PEM_BYTES + 1)
    if len(data) > MAX_PEM_BYTES:  # refused whole: a cut file fails with the PEM parser's puzzling reason
        raise ValueError(f"{path} is larger than 1 MiB: not a certificate chain, CA bundle or key")
    return data


def _reason(exc: BaseException) -> str:
    """Why files failed to load, without their contents (ssl's messages name only the check)."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or 'not a usable certificate and key'}"
    return type(exc).__name__ if not str(exc) or "PRIVATE KEY" in str(exc) else str(exc).splitlines()[0][:200]


def _warn_if_expired(path: str, cert_pem: bytes) -> None:
    """Served all the same (clients refuse it, each with a clear message): the operator hears it here."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        log.warning("the TLS certificate in %s is not valid now (valid %s to %s UTC): clients will refuse it", path,
                    f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}", f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}")


def _describe(cert_pem: bytes) -> str:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "unparsed"
    return f"subject {cert.subject.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


# -- client identities ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientIdentity:
    """A verified client certificate's names: its subject (RFC 4514, as `openssl x509 -subject
    -nameopt RFC2253` prints it) and its subject alternative names (DNS, IP, URI, email values)."""

    subject: str
    sans: tuple[str, ...]


@functools.lru_cache(maxsize=256)  # every call of a connection presents the same certificate
def identity_of(der_or_pem: bytes | None) -> ClientIdentity | None:
    if not der_or_pem:
        return None
    try:
        if der_or_pem.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(der_or_pem)
        else:
            cert = x509.load_der_x509_certificate(der_or_pem)
    except ValueError:
        return None
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.DNSName, x509.IPAddress, x509.UniformResourceIdentifier, x509.RFC822Name):
            sans += [str(v) for v in ext.get_values_for_type(kind)]
    except (x509.ExtensionNotFound, ValueError):
        pass
    return ClientIdentity(cert.subject.rfc4514_string(), tuple(sans[:MAX_IDENTITY_SANS]))


def normalized_subject(text: str) -> str:
    """A subject as `principal add --client-cert-subject` takes it, in the form identity_of gives
    (raises ValueError for one that is not RFC 4514)."""
    return x509.Name.from_rfc4514_string(text.strip(), _LOWERCASE_NAMES).rfc4514_string()


# RFC 4514's attribute names are case-insensitive; cryptography reads only the upper-case ones.
_LOWERCASE_NAMES = {name.lower(): oid for name, oid in (
    ("CN", NameOID.COMMON_NAME), ("O", NameOID.ORGANIZATION_NAME), ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("C", NameOID.COUNTRY_NAME), ("L", NameOID.LOCALITY_NAME), ("ST", NameOID.STATE_OR_PROVINCE_NAME),
    ("STREET", NameOID.STREET_ADDRESS), ("DC", NameOID.DOMAIN_COMPONENT), ("UID", NameOID.USER_ID))}


def grpc_peer_identity(context: grpc.aio.ServicerContext) -> ClientIdentity | None:
    """The client certificate of a gRPC call, when the connection presented one (gRPC core verified
    it against the client CA: without one, no certificate is asked for and this is None)."""
    auth = context.auth_context() or {}
    pem = auth.get("x509_pem_cert")
    return identity_of(pem[0]) if pem else None


def http_peer_identity(transport) -> ClientIdentity | None:
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    return identity_of(ssl_object.getpeercert(binary_form=True))
