"""The request headers the HTTP gateway reads, taken exactly: one value each, printable ASCII.

Every header that decides what a request does (its credentials, its scope, its body's form) is read
through `RequestHeaders.one`, which refuses a header given twice (a signed request could otherwise be
verified with one value and acted on with the other) and a value holding anything but printable
ASCII (the platform's headers are ASCII; the gRPC metadata they turn into must be too). Refusals name
the header, never its value: a malformed credential must not end up in a response or a log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..domain import errors as domain_errors
from . import signing

# Headers that carry credentials: a problem with one of them is a 401, not a 400.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-auth-token", "x-sdk-date", "x-security-token",
                                "x-sdk-content-sha256"})
# Headers whose value changes what a request does; with an AK/SK signature each must be signed when
# present (`Credential.require_signed`).
SCOPE_HEADERS = ("instance-id", "x-project-id")
# Every header the gateway reads, or that decides how the body is framed. None may be repeated.
MEANINGFUL_HEADERS = frozenset({*CREDENTIAL_HEADERS, *SCOPE_HEADERS, "host", "content-type", "content-length",
                                "content-encoding", "transfer-encoding", "expect"})
# A bearer token: what `principal add` issues is 64 hex characters; anything longer is not one.
TOKEN = re.compile(r"^[\x21-\x7e]{1,256}\Z")
_PRINTABLE = re.compile(rb"^[\x20-\x7e]*\Z")


class HeaderError(Exception):
    """A header refused before anything else happens: `error` says how to answer."""

    def __init__(self, error: domain_errors.DomainError):
        super().__init__(error.message)
        self.error = error


def _refusal(name: str, problem: str) -> HeaderError:
    if name in CREDENTIAL_HEADERS:
        return HeaderError(domain_errors.Unauthenticated(f"Request unauthorized: the {_title(name)} header {problem}."))
    return HeaderError(domain_errors.invalid(_title(name), problem))


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


@dataclass(frozen=True)
class Credential:
    """What the caller presented: a bearer token, or an AK/SK signature (parsed, not yet verified)."""

    token: str | None = None
    signature: signing.ParsedAuthorization | None = None


class RequestHeaders:
    """A request's raw headers (aiohttp's `raw_headers`: bytes pairs, in arrival order)."""

    def __init__(self, raw_headers: tuple[tuple[bytes, bytes], ...]):
        self._values: dict[str, list[bytes]] = {}
        for name, value in raw_headers:
            self._values.setdefault(name.decode("latin-1").lower(), []).append(value)
        for name in MEANINGFUL_HEADERS:
            if len(self._values.get(name, ())) > 1:
                raise _refusal(name, "is given more than once")

    def one(self, name: str) -> str | None:
        """The header's only value (None when absent), printable ASCII and stripped."""
        values = self._values.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise _refusal(name, "is given more than once")
        if not _PRINTABLE.match(values[0]):
            raise _refusal(name, "holds characters other than printable ASCII")
        return values[0].decode("ascii").strip()

    def credential(self) -> Credential | None:
        """The one credential the request carries (None: no credentials at all). Looks at nothing
        but the two credential headers: no body, no lookup."""
        authorization = self.one("authorization")
        token = self.one("x-auth-token")
        if authorization and token:
            raise _refusal("authorization", "and X-Auth-Token cannot both be given")
        if authorization:
            if authorization[:7].lower() == "bearer ":
                token = authorization[7:].strip()
            else:
                parsed = signing.parse_authorization(authorization)
                if parsed is None:
                    raise _refusal("authorization", "is neither an AK/SK signature nor a bearer token")
                return Credential(signature=parsed)
        if token is None or token == "":
            return None
        if not TOKEN.match(token):
            raise _refusal("x-auth-token", "is not a token")
        return Credential(token=token)

    def signed(self, signature: signing.ParsedAuthorization) -> dict[str, str]:
        """The values of the headers the signature covers, exactly as verified and then used."""
        out = {}
        for name in signature.signed_headers:
            values = self._values.get(name, ())
            if len(values) > 1:  # any signed header, meaningful to us or not
                raise HeaderError(domain_errors.Unauthenticated(
                    f"Request unauthorized: the signed header {_title(name)} is given more than once."))
            value = self.one(name) if values else ""
            out[name] = value
        if "x-sdk-content-sha256" not in out and (declared := self.one("x-sdk-content-sha256")) is not None:
            out["x-sdk-content-sha256"] = declared  # part of the payload line, so covered by the signature
        return out

    def require_signed(self, signature: signing.ParsedAuthorization, names: tuple[str, ...]) -> None:
        """A signed request may carry these headers only signed: an unsigned one could be added to a
        captured request to redirect it (another instance, another project)."""
        for name in names:
            if name in self._values and name not in signature.signed_headers:
                raise HeaderError(domain_errors.Unauthenticated(
                    f"Request unauthorized: the {_title(name)} header must be signed."))
