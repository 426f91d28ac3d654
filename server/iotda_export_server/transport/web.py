"""What the HTTP port serves besides the API: the web console (`/console/`), the OpenAPI document
(`/openapi.json`) and the probes (`/healthz`, `/readyz`). GET and HEAD only, no credentials: the
console is static files that call the API with the user's token (never on a URL); the document
describes the API; the probes say whether the process answers and can work (transport/probes.py).

The files ship inside the package (`web/`), are read once at start and kept in memory: nothing is
fetched at run time, no path from a request ever reaches the file system. Every page carries a
strict Content-Security-Policy (scripts, styles, images and connections from this origin only, no
inline script or style, Trusted Types, no framing) and is revalidated on each use (`no-cache` with
a strong ETag: an upgraded server is never hidden by a stale copy, an unchanged file costs a 304).
"""

from __future__ import annotations

import hashlib
import pathlib
from dataclasses import dataclass

from aiohttp import web

from .probes import Readiness, healthz

WEB_DIR = pathlib.Path(__file__).resolve().parent.parent / "web"
CONSOLE_DIR = WEB_DIR / "console"
OPENAPI_FILE = WEB_DIR / "openapi.json"
CONSOLE_PREFIX = "/console/"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json",
}
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
    "font-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
    "require-trusted-types-for 'script'", "trusted-types 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def load(cls, path: pathlib.Path) -> "Asset":
        body = path.read_bytes()
        return cls(body, CONTENT_TYPES[path.suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class Pages:
    """Routes of the pages: `serves(path)` says whether a path is one of them, `respond` answers
    a GET or HEAD of it (the gateway refuses other methods with a 405)."""

    METHODS = ("GET", "HEAD")

    def __init__(self, readiness: Readiness | None = None):
        self.readiness = readiness
        self.assets: dict[str, Asset] = {}
        for path in sorted(CONSOLE_DIR.iterdir()):
            if path.is_file() and path.suffix in CONTENT_TYPES:
                self.assets[CONSOLE_PREFIX + path.name] = Asset.load(path)
        self.assets[CONSOLE_PREFIX] = self.assets[CONSOLE_PREFIX + "index.html"]
        self.assets["/openapi.json"] = Asset.load(OPENAPI_FILE)

    def serves(self, raw_path: str) -> bool:
        return raw_path in self.assets or raw_path in ("/console", "/healthz") or (
            raw_path == "/readyz" and self.readiness is not None)

    async def respond(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == "/healthz":
            return healthz()
        if path == "/readyz":
            return await self.readiness.response()
        if path == "/console":
            return web.Response(status=308, headers={"Location": CONSOLE_PREFIX, **SECURITY_HEADERS})
        asset = self.assets[path]
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": asset.etag}
        match = _etags(request.headers.get("If-None-Match", ""))
        if asset.etag in match or "*" in match:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def _etags(header: str) -> set[str]:
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return tags - {""}
