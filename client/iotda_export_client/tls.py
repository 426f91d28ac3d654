"""TLS for the client: which addresses use it, the channel credentials, and what a failed handshake
means in one line.

An address `https://HOST:PORT` uses TLS, `http://HOST:PORT` and a bare `HOST:PORT` plaintext, unless
a CA, a client certificate or `tls=True` is given. Without a CA file the system's roots verify
the server.
"""

from __future__ import annotations

import dataclasses
import os
import ssl

import grpc

from .addresses import split_address

ENV_TLS_CA = "IOTDA_EXPORT_TLS_CA"
ENV_CLIENT_CERT = "IOTDA_EXPORT_CLIENT_CERT"
ENV_CLIENT_KEY = "IOTDA_EXPORT_CLIENT_KEY"
MAX_PEM_BYTES = 1024 * 1024


class TlsFileError(Exception):
    """A CA, certificate or key file that cannot be read or that is not PEM."""


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    """How to secure the channel: `ca` (PEM file of the CA that signed the server's certificate;
    None: the system's roots), `cert` and `key` (PEM files of a client certificate, for mutual TLS)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise TlsFileError("a client certificate needs its key: give both --tls-cert and --tls-key")
        ca = _read_pem(self.ca, "CA") if self.ca else None
        key = _read_pem(self.key, "client key") if self.key else None
        cert = _read_pem(self.cert, "client certificate") if self.cert else None
        # gRPC reports files that do not fit only as "Failed to create security handshaker", which
        # reads like a server that is down: check them here (the standard library's OpenSSL).
        if ca is not None:
            try:
                ssl.create_default_context(cadata=ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError):
                raise TlsFileError(f"the CA file {self.ca} holds no certificate") from None
        if cert is not None:
            try:  # the same files again: load_cert_chain takes paths only
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(self.cert, self.key, password=_no_password)
            except (ssl.SSLError, ValueError, TypeError):
                raise TlsFileError(f"the client key file {self.key} is not the key of the client certificate"
                                   f" {self.cert} (or not an unencrypted private key)") from None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _no_password() -> bytes:
    """An encrypted key: refused (gRPC cannot decrypt one) rather than a password prompt."""
    raise ValueError("encrypted key")


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        raise TlsFileError(f"cannot read the {what} file {path}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data or len(data) > MAX_PEM_BYTES:
        raise TlsFileError(f"the {what} file {path} is not PEM (expected -----BEGIN ...)")
    return data


def open_channel(address: str, tls: TlsSettings | None = None, options: list | None = None,
                 aio: bool = False) -> tuple[grpc.Channel, bool]:
    """A channel to `address` (a grpc.aio one with `aio`), secured when the address or `tls` asks for
    it; (channel, secured)."""
    make = grpc.aio if aio else grpc
    target, scheme_tls = split_address(address)
    secured = scheme_tls if scheme_tls is not None else tls is not None
    if scheme_tls is False and tls is not None and (tls.ca or tls.cert):
        raise TlsFileError(f"{address} is a plaintext (http://) address, but TLS files were given:"
                           " use https:// or drop --tls-ca/--tls-cert")
    if secured:
        return make.secure_channel(target, (tls or TlsSettings()).credentials(), options=options or []), True
    return make.insecure_channel(target, options=options or []), False


# What gRPC's transport says when a handshake fails -> what to fix. The first match wins; `secured` is
# whether this client spoke TLS (the same "socket closed" means something else for each).
_EXPLANATIONS: tuple[tuple[str, bool | None, str], ...] = (
    ("certificate has expired", True,
     "the server's certificate has expired (or is not yet valid): renew it on the server"),
    ("hostname verification check failed", True,
     "the server's certificate does not name the host you called: call it by a name or address in its"
     " subject alternative names, or reissue it with that name (dev-certs --host NAME)"),
    ("wrong_version_number", True,
     "the server does not speak TLS: call it with a plaintext address (no https://, no --tls-ca)"),
    ("self signed certificate", True,
     "the server's certificate is not signed by a CA you trust: pass the CA that signed it with --tls-ca"),
    ("self-signed certificate", True,
     "the server's certificate is not signed by a CA you trust: pass the CA that signed it with --tls-ca"),
    ("certificate_verify_failed", True,
     "the server's certificate is not signed by the CA you trust: pass the CA that signed it with --tls-ca"),
    ("certificate required", True,
     "the server requires a client certificate: pass --tls-cert and --tls-key signed by its client CA"),
    ("bad certificate", True,
     "the server refused your client certificate: it must be signed by the server's client CA and valid now"),
    ("certificate unknown", True,
     "the server refused your client certificate: it must be signed by the server's client CA and valid now"),
    ("unknown ca", True,
     "the server refused your client certificate: it is not signed by the server's client CA"),
    *((closed, True,
       "the server closed the connection during the TLS handshake: it requires a client certificate signed by"
       " its client CA (--tls-cert and --tls-key), or refused the one you sent (another CA, expired)")
      for closed in ("socket closed", "connection reset")),
    ("socket closed", False,
     "the server closed the plaintext connection: it expects TLS; use an https:// address and --tls-ca"),
    ("connection reset", False,
     "the server closed the plaintext connection: it expects TLS; use an https:// address and --tls-ca"),
    ("tls handshake failed", True, "the TLS handshake failed: check --tls-ca, --tls-cert and --tls-key"),
    ("handshake failed", True, "the TLS handshake failed: check --tls-ca, --tls-cert and --tls-key"),
)


def explain(message: str, secured: bool) -> str | None:
    """One line saying what to fix for a connection failure gRPC reported as `message`, or None
    when it is not about TLS."""
    text = (message or "").lower()
    for needle, when_secured, explanation in _EXPLANATIONS:
        if needle in text and (when_secured is None or when_secured == secured):
            return explanation
    return None


def settings_from(ca: str | None, cert: str | None, key: str | None, env=None) -> TlsSettings | None:
    """Flags first, then IOTDA_EXPORT_TLS_CA, IOTDA_EXPORT_CLIENT_CERT, IOTDA_EXPORT_CLIENT_KEY;
    None when nothing asks for TLS."""
    env = os.environ if env is None else env
    ca = ca or env.get(ENV_TLS_CA) or None
    cert = cert or env.get(ENV_CLIENT_CERT) or None
    key = key or env.get(ENV_CLIENT_KEY) or None
    if not (ca or cert or key):
        return None
    return TlsSettings(ca, cert, key)
