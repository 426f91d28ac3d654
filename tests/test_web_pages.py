"""What the HTTP port serves besides the API (transport/web.py, transport/probes.py): the console's
files with their security headers and caching, /openapi.json, /healthz and /readyz (503 with a
JSON reason while the database or the files directory is out of reach, 200 again after), GET and
HEAD only, no credentials needed there and still needed everywhere else.

The console's behaviour in a real browser is tests/test_console.py.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import pathlib
import re
import socket
import time

import psycopg
import pytest
from conftest import ServerThread, wait_for
from pg_support import TestDatabase, admin_connect

from iotda_export_server.config import FilesConfig
from iotda_export_server.domain import rules
from iotda_export_server.store import open_store
from iotda_export_server.store.sqlite import DB_FILE_NAME
from iotda_export_server.transport import probes, web
from iotda_export_server.transport.grpc_server import MAX_MESSAGE_BYTES
from iotda_export_server.transport.http_server import HttpLimits

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONSOLE_DIR = ROOT / "server" / "iotda_export_server" / "web" / "console"
PAGES = ["/console/", "/console/index.html", "/console/console.js", "/console/api.js", "/console/console.css",
         "/console/icon.svg", "/openapi.json"]


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pages_server(tmp_path_factory):
    s = ServerThread(tmp_path_factory.mktemp("pages"), workers=0, http_addr="127.0.0.1:0")
    yield s
    s.stop()


# -- the console's files and the OpenAPI document ------------------------------------------------

@pytest.mark.parametrize("path", PAGES)
def test_pages_are_served_without_credentials_with_strict_headers(pages_server, path):
    r = request(pages_server.http_port, "GET", path)
    assert r.status == 200, r.body[:300]
    csp = {d.strip().split(" ", 1)[0]: d.strip() for d in r.headers["Content-Security-Policy"].split(";")}
    assert csp["default-src"] == "default-src 'self'"
    assert csp["script-src"] == "script-src 'self'" and csp["style-src"] == "style-src 'self'"  # nothing inline
    assert csp["frame-ancestors"] == "frame-ancestors 'none'" and csp["object-src"] == "object-src 'none'"
    assert csp["require-trusted-types-for"] == "require-trusted-types-for 'script'"
    assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
    assert "unsafe-eval" not in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{32}"', r.headers["ETag"])
    name = "index.html" if path.endswith("/") else path.rsplit("/", 1)[1]
    source = (CONSOLE_DIR / name) if path.startswith("/console/") else ROOT / "docs" / "openapi.json"
    assert r.body == source.read_bytes()
    expected_type = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                     ".json": "application/json"}[pathlib.Path(name).suffix]
    assert r.headers["Content-Type"].split(";")[0] == expected_type


@pytest.mark.parametrize("path", ["/console/", "/console/console.js", "/openapi.json"])
def test_an_unchanged_page_costs_a_304_and_head_has_no_body(pages_server, path):
    port = pages_server.http_port
    first = request(port, "GET", path)
    etag = first.headers["ETag"]
    again = request(port, "GET", path, {"If-None-Match": etag})
    assert again.status == 304 and again.body == b"" and again.headers["ETag"] == etag
    assert request(port, "GET", path, {"If-None-Match": f'W/"x", {etag}'}).status == 304
    assert request(port, "GET", path, {"If-None-Match": '"0123"'}).status == 200
    head = request(port, "HEAD", path)
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == len(first.body)
    assert head.headers["Content-Security-Policy"] == first.headers["Content-Security-Policy"]


def test_console_without_slash_redirects_and_unknown_files_are_the_platform_404(pages_server):
    port = pages_server.http_port
    r = request(port, "GET", "/console")
    assert r.status == 308 and r.headers["Location"] == "/console/"
    for path in ("/console/missing.js", "/console/../app.py", "/console/%2e%2e/app.py", "/console//console.js",
                 "/console/console.js/", "/web/console/index.html", "/openapi.yaml", "/healthz/", "/readyz/x"):
        r = request(port, "GET", path)
        assert r.status == 404, (path, r.status)
        assert r.json()["error_code"] == "APIGW.0101", path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/console/", "/console/console.js", "/openapi.json", "/healthz", "/readyz"])
def test_pages_take_get_and_head_only(pages_server, method, path):
    r = request(pages_server.http_port, method, path, {"Content-Type": "application/x-www-form-urlencoded"},
                b"project_id=p&token=secret-token-value")
    assert r.status == 405, (method, path, r.status)
    assert r.headers["Allow"] == "GET, HEAD"
    doc = r.json()
    assert doc["error_code"] == "APIGW.0102" and set(doc) == {"error_code", "error_msg", "code", "message", "details"}
    assert b"secret-token-value" not in r.body


def test_a_body_sent_to_a_page_is_never_read(tmp_path):
    """10 MB declared, not a byte sent: the 405 comes at once, and the connection is closed rather
    than kept open to discard a body (the server would linger 10 s for an authenticated caller)."""
    limits = HttpLimits(max_body_bytes=MAX_MESSAGE_BYTES, lingering_seconds=10.0)
    s = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0", http_limits=limits)
    try:
        with socket.create_connection(("127.0.0.1", s.http_port), timeout=30) as sock:
            sock.settimeout(30)
            sock.sendall(b"POST /console/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 10000000\r\n\r\n")
            started = time.monotonic()
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            closed_after = time.monotonic() - started
        assert data.startswith(b"HTTP/1.1 405 "), data[:100]
        assert closed_after < 5, f"the connection stayed open {closed_after:.1f} s"
    finally:
        s.stop()


def test_the_api_still_needs_credentials(pages_server):
    project = pages_server.admin["project_id"]
    r = request(pages_server.http_port, "GET", f"/v5/iot/{project}/export-tasks")
    assert r.status == 401 and r.json()["error_code"] == "IOTDA.000002"


def test_the_console_has_no_inline_script_style_or_handlers_and_ships_every_file_it_uses(pages_server):
    html = (CONSOLE_DIR / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline <script>"
    assert "<style" not in html and not re.search(r"\sstyle=", html), "inline style"
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"
    referenced = set(re.findall(r'(?:src|href)="([^"#:]+)"', html)) - {"../openapi.json"}
    for js in CONSOLE_DIR.glob("*.js"):
        referenced |= {m for m in re.findall(r'from "\./([^"]+)"', js.read_text(encoding="utf-8"))}
        text = js.read_text(encoding="utf-8")
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text, js.name
        assert "localStorage" not in text and "console.log" not in text, js.name
    assert referenced, "no file referenced: is the pattern broken?"
    for name in referenced:
        assert request(pages_server.http_port, "GET", f"/console/{name}").status == 200, name
    assert request(pages_server.http_port, "GET", "/openapi.json").status == 200


def test_the_consoles_lists_equal_the_rules():
    text = (CONSOLE_DIR / "console.js").read_text(encoding="utf-8")

    def js_list(name: str) -> tuple[str, ...]:
        m = re.search(rf"const {name} = \[(.*?)\];", text, re.S)
        assert m, name
        return tuple(re.findall(r'"([^"]+)"', m.group(1)))
    assert js_list("BATCH_TASK_TYPES") == rules.BATCH_TASK_TYPES
    assert js_list("BATCH_STATUSES") == rules.BATCH_STATUSES
    assert int(re.search(r"const LIST_OFFSET_MAX = (\d+);", text).group(1)) == rules.LIST_OFFSET_MAX


# -- /healthz and /readyz ------------------------------------------------------------------------

def probe(server: ServerThread, path: str) -> Reply:
    r = request(server.http_port, "GET", path)
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Type"].startswith("application/json")
    return r


def test_healthz_and_readyz_answer_without_credentials(pages_server):
    r = probe(pages_server, "/healthz")
    assert r.status == 200 and r.json() == {"status": "live"}
    r = probe(pages_server, "/readyz")
    assert r.status == 200 and r.json() == {"status": "ready", "checks": {"database": "ok", "files": "ok"}}
    assert request(pages_server.http_port, "HEAD", "/readyz").status == 200


def _ready(server: ServerThread) -> bool:
    return probe(server, "/readyz").status == 200


def _not_ready(server: ServerThread) -> dict | None:
    r = probe(server, "/readyz")
    return r.json() if r.status == 503 else None


def test_readyz_is_503_while_the_sqlite_database_is_gone_and_200_again(tmp_path):
    s = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0")
    try:
        db = pathlib.Path(s.data_dir) / DB_FILE_NAME
        moved = db.with_name("moved-away.db")
        assert _ready(s)
        # The server's open connections still work: only a fresh one tells. (A directory in its
        # place, so that no connection of the server creates a new empty database meanwhile.)
        os.rename(db, moved)
        db.mkdir()
        doc = wait_for(lambda: _not_ready(s), timeout=10, what="/readyz to be 503")
        assert doc["status"] == "not ready"
        assert doc["checks"] == {"database": "unreachable (OperationalError)", "files": "ok"}
        assert doc["reason"] == "database: unreachable (OperationalError)"
        assert probe(s, "/healthz").status == 200  # alive all the same
        db.rmdir()
        os.rename(moved, db)
        wait_for(lambda: _ready(s), timeout=10, what="/readyz to be 200 again")
    finally:
        s.stop()


def test_readyz_is_503_while_the_files_directory_is_gone_and_200_again(tmp_path):
    files = tmp_path / "files"
    s = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0", files=FilesConfig(dir=str(files)))
    try:
        assert _ready(s)
        files.rename(tmp_path / "elsewhere")
        doc = wait_for(lambda: _not_ready(s), timeout=10, what="/readyz to be 503")
        assert doc["checks"] == {"database": "ok", "files": "missing"}
        files.write_text("a file where the directory was")

        def files_check():
            doc = _not_ready(s)
            return doc if doc is not None and doc["checks"]["files"] != "missing" else None
        doc = wait_for(files_check, timeout=10, what="a file in place of the directory")
        assert doc["checks"] == {"database": "ok", "files": "not a directory"}
        files.unlink()
        (tmp_path / "elsewhere").rename(files)
        wait_for(lambda: _ready(s), timeout=10, what="/readyz to be 200 again")
    finally:
        s.stop()


def test_readyz_is_503_while_postgresql_refuses_the_database_and_200_again(tmp_path):
    db = TestDatabase().create()
    s = None
    try:
        open_store(tmp_path, db.url, migrate=True)
        s = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0", database=db.url,
                         files=FilesConfig(dir=str(tmp_path / "files")))
        assert _ready(s)
        with admin_connect() as conn:  # no new connection to it, and every open one cut
            conn.execute(f'ALTER DATABASE "{db.name}" WITH ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db.name,))
        doc = wait_for(lambda: _not_ready(s), timeout=15, what="/readyz to be 503")
        assert doc == {"status": "not ready", "reason": "database: unreachable (OperationalError)",
                       "checks": {"database": "unreachable (OperationalError)", "files": "ok"}}
        assert db.name not in json.dumps(doc) and "127.0.0.1" not in json.dumps(doc)  # details go to the log only
        with admin_connect() as conn:
            conn.execute(f'ALTER DATABASE "{db.name}" WITH ALLOW_CONNECTIONS true')
        wait_for(lambda: _ready(s), timeout=15, what="/readyz to be 200 again")
        # A schema this server does not run (a newer migration applied by another version).
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (999, 0)")
        doc = wait_for(lambda: _not_ready(s), timeout=15, what="/readyz to be 503")
        assert re.fullmatch(r"schema version 999, this server runs \d+", doc["checks"]["database"])
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version = 999")
        wait_for(lambda: _ready(s), timeout=15, what="/readyz to be 200 again")
    finally:
        if s is not None:
            s.stop()
        db.drop()


def test_a_flood_of_probes_opens_at_most_one_connection_a_second(tmp_path, monkeypatch):
    """Anonymous callers cannot make the probe hammer the database: answers are shared and reused."""
    s = ServerThread(tmp_path / "data", workers=0, http_addr="127.0.0.1:0")
    try:
        readiness = s.server.gateway.pages.readiness
        checks = []
        real = readiness.check
        monkeypatch.setattr(readiness, "check", lambda: checks.append(1) or real())
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: request(s.http_port, "GET", "/readyz").status, range(300)))
        elapsed = time.monotonic() - started
        assert set(statuses) == {200}
        assert 1 <= len(checks) <= elapsed / probes.CACHE_SECONDS + 1, (len(checks), elapsed)
        print(f"\n300 probes in {elapsed:.2f} s: {len(checks)} database check(s)")
    finally:
        s.stop()


def test_the_pages_are_the_files_shipped_in_the_package():
    pages = web.Pages()
    names = {p[len("/console/"):] for p in pages.assets if p.startswith("/console/")} - {""}
    assert names == {p.name for p in CONSOLE_DIR.iterdir() if p.suffix in web.CONTENT_TYPES}
    assert pages.assets["/console/"] is pages.assets["/console/index.html"]
