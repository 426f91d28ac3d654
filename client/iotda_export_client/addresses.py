"""Where a client may call: the address forms the CLI and the library take, checked without gRPC
(the CLI reads them before it imports gRPC, so that it can set gRPC's log level first)."""

from __future__ import annotations

import re

DEFAULT_ADDRESS = "127.0.0.1:50051"


def split_address(address: str) -> tuple[str, bool | None]:
    """(HOST:PORT, True for https://, False for http://, None without a scheme)."""
    for scheme, tls in (("https://", True), ("grpcs://", True), ("http://", False), ("grpc://", False)):
        if address.lower().startswith(scheme):
            return address[len(scheme):].rstrip("/"), tls
    return address, None


_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")


def check_address(address: str) -> str:
    """`address` if it is where a gRPC channel can go: HOST:PORT (a name, IPv4 or [IPv6]),
    https://HOST:PORT (TLS), or a unix:PATH socket. Anything else raises ValueError saying the
    expected form, since grpc itself takes a URL or a bare host as a name to resolve and fails
    later, vaguely."""
    text = address.strip()
    if text.startswith("unix:") and len(text) > 5:
        return text
    target, tls = split_address(text)
    if tls:  # https:// or grpcs://: TLS to HOST:PORT
        check_address(target)
        return text
    example = f"e.g. 127.0.0.1:50051 or [::1]:50051 (default {DEFAULT_ADDRESS})"
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme:
        rest = text[scheme.end():].split("/", 1)[0]
        return _fail(f"{address!r} has a scheme: give HOST:PORT without {scheme.group(1)}://, e.g."
                     f" {rest if _HOST_PORT.fullmatch(rest) else DEFAULT_ADDRESS} (the gRPC port, serve's"
                     " --grpc-addr; not the HTTP gateway's), or https://HOST:PORT for TLS")
    m = _HOST_PORT.fullmatch(text)
    if m is None:
        if re.fullmatch(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+", text):
            return _fail(f"{address!r} has no port: give HOST:PORT, e.g. {text}:50051")
        return _fail(f"{address!r} is not HOST:PORT: {example}")
    if not 1 <= int(m.group("port")) <= 65535:
        return _fail(f"{address!r}: the port must be 1-65535, {example}")
    return text


def _fail(message: str):
    raise ValueError(message)
