"""Server-side verification of the official SDK's AK/SK request signatures.

Two algorithms, over the same canonical request (the SDK's own rules):
- SDK-HMAC-SHA256: key = SK.
- V11-HMAC-SHA256 (the SDK's "derived" signing): key = hex text of HKDF-SHA256(IKM=SK, salt=AK,
  info="<yyyymmdd>/<region>/<service>", L=32); the scope is part of the string to sign.

Verification is a pure function of the request; looking the AK up is the caller's business.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

SDK_ALGORITHM = "SDK-HMAC-SHA256"
V11_ALGORITHM = "V11-HMAC-SHA256"
DERIVED_SERVICE = "iotdm"  # the service name the SDK uses for IoTDA's derived signatures
CLOCK_SKEW = dt.timedelta(minutes=15)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_SDK_AUTH = re.compile(r"^SDK-HMAC-SHA256\s+Access=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-fA-F]+)$")
_V11_AUTH = re.compile(
    r"^V11-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+),\s*SignedHeaders=([^,\s]+),"
    r"\s*Signature=([0-9a-fA-F]+)$")


class SignatureError(Exception):
    """Why a signature is refused (for logs; clients get one generic message)."""


@dataclass(frozen=True)
class ParsedAuthorization:
    algorithm: str
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str
    scope: tuple[str, str, str] | None = None  # V11: (yyyymmdd, region, service)


def parse_authorization(value: str) -> ParsedAuthorization | None:
    """None when the header is not an AK/SK signature at all."""
    value = value.strip()
    if m := _SDK_AUTH.match(value):
        return ParsedAuthorization(SDK_ALGORITHM, m[1], tuple(m[2].split(";")), m[3].lower())
    if m := _V11_AUTH.match(value):
        return ParsedAuthorization(V11_ALGORITHM, m[1], tuple(m[5].split(";")), m[6].lower(), (m[2], m[3], m[4]))
    return None


def canonical_uri(raw_path: str) -> str:
    segments = unquote(raw_path).split("/")
    uri = "/".join(quote(s, safe="~") for s in segments)
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(raw_query: str) -> str:
    pairs = []
    for item in raw_query.split("&") if raw_query else ():
        key, _, value = item.partition("=")
        pairs.append((unquote(key.replace("+", " ")), unquote(value.replace("+", " "))))
    pairs.sort()
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)


def canonical_request(method: str, raw_path: str, raw_query: str, headers: dict[str, str],
                      signed_headers: tuple[str, ...], payload_hash: str) -> str:
    canonical_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed_headers)
    return "\n".join([method.upper(), canonical_uri(raw_path), canonical_query(raw_query), canonical_headers,
                      ";".join(signed_headers), payload_hash])


def derived_key(access_key: str, secret_key: str, info: str) -> str:
    """HKDF-SHA256 (RFC 5869) with L=32: one expand block. The SDK signs with its hex text."""
    prk = hmac.new(access_key.encode(), secret_key.encode(), hashlib.sha256).digest()
    okm = hmac.new(prk, info.encode() + b"\x01", hashlib.sha256).digest()
    return okm.hex()


def string_to_sign(auth: ParsedAuthorization, sdk_date: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    if auth.algorithm == V11_ALGORITHM:
        return f"{V11_ALGORITHM}\n{sdk_date}\n{'/'.join(auth.scope)}\n{digest}"
    return f"{SDK_ALGORITHM}\n{sdk_date}\n{digest}"


def sign(auth: ParsedAuthorization, secret_key: str, sdk_date: str, canonical: str) -> str:
    if auth.algorithm == V11_ALGORITHM:
        key = derived_key(auth.access_key, secret_key, "/".join(auth.scope)).encode()
    else:
        key = secret_key.encode()
    return hmac.new(key, string_to_sign(auth, sdk_date, canonical).encode("utf-8"), hashlib.sha256).hexdigest()


def payload_hash(body: bytes, headers: dict[str, str], body_sha256: str | None = None) -> str:
    """The payload line of the canonical request, as the SDK computes it. `body_sha256` is the
    body's digest when the caller already computed it (off the event loop, for big bodies).
    UNSIGNED-PAYLOAD (the SDK's choice for any non-JSON Content-Type) is accepted here, as the
    platform's gateway does; the body of such a request is then not covered by the signature and
    must not be used (`payload_is_signed`)."""
    if not body:
        return EMPTY_SHA256
    declared = headers.get("x-sdk-content-sha256")
    if declared == UNSIGNED_PAYLOAD:
        return UNSIGNED_PAYLOAD
    actual = body_sha256 or hashlib.sha256(body).hexdigest()
    if declared is not None and declared.lower() != actual:
        raise SignatureError("x-sdk-content-sha256 does not match the body")
    return actual


def payload_is_signed(body: bytes, headers: dict[str, str]) -> bool:
    """False when the request has a body that its signature does not cover (UNSIGNED-PAYLOAD)."""
    return not body or headers.get("x-sdk-content-sha256") != UNSIGNED_PAYLOAD


def verify(auth: ParsedAuthorization, secret_key: str, method: str, raw_path: str, raw_query: str,
           headers: dict[str, str], body: bytes, now: dt.datetime | None = None,
           body_sha256: str | None = None) -> None:
    """Raises SignatureError unless the request carries a valid, fresh signature by `secret_key`.
    `headers` holds the signed headers, lower-case names, each with its one value."""
    if "host" not in auth.signed_headers or "x-sdk-date" not in auth.signed_headers:
        raise SignatureError("host and x-sdk-date must be signed")
    sdk_date = headers.get("x-sdk-date", "")
    try:
        when = dt.datetime.strptime(sdk_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise SignatureError("X-Sdk-Date is missing or not yyyyMMddTHHmmssZ") from None
    now = now or dt.datetime.now(dt.timezone.utc)
    if abs(now - when) > CLOCK_SKEW:
        raise SignatureError("X-Sdk-Date is more than 15 minutes off the server's clock")
    if auth.algorithm == V11_ALGORITHM:
        day, _region, service = auth.scope
        if day != sdk_date[:8]:
            raise SignatureError("the credential scope's date is not X-Sdk-Date's")
        if service != DERIVED_SERVICE:
            raise SignatureError(f"the credential scope's service must be {DERIVED_SERVICE}")
    canonical = canonical_request(method, raw_path, raw_query, headers, auth.signed_headers,
                                  payload_hash(body, headers, body_sha256))
    expected = sign(auth, secret_key, sdk_date, canonical)
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError("signature mismatch")
