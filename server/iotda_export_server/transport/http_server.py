"""The HTTP port's server: aiohttp's low-level server, with the limits a public port needs.

- At most `max_connections` open connections; one more is closed at once.
- A request's headers must be complete within `header_timeout_seconds` of the connection opening or
  of the previous response (aiohttp's keep-alive timer, which it starts at connection time, closes a
  connection still waiting for a whole request then): a client trickling header bytes is cut off.
- Its body must arrive within `body_timeout_seconds` (`read_body`), and may not exceed
  `max_body_bytes`: a declared Content-Length beyond it is refused before any of it is read.
- Malformed requests that aiohttp's parser refuses get the platform's JSON error body, and neither
  the response nor the log quotes the offending bytes (they may hold a credential).
- No router: one handler sees every path, so every path (`%0a` included) gets the same JSON 404.
- With TLS, the handshake must complete within `header_timeout_seconds` too, and a connection counts
  against the cap from its accept, handshake included (HandshakeBoundSite).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from ..domain import errors as domain_errors

log = logging.getLogger("iotda_export.http")

# The longest request line and header line accepted (a signed request's Authorization header is a
# few hundred bytes; a query string of every list filter well under 8 KiB).
MAX_LINE_BYTES = 16 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 64


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP port's limits (README, "Limits")."""

    # The largest request body; the same bound as one gRPC message (transport/grpc_server.py), so a
    # body the gateway accepts always fits the call it becomes (it is checked again once transcoded).
    max_body_bytes: int
    header_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 60.0
    max_connections: int = 1000
    # After refusing an authenticated request whose body it did not read (too large, too slow),
    # the server discards what is still arriving for this long (so the client sees the answer, not
    # a reset), then closes. A request without valid credentials gets no such courtesy: its
    # connection is closed right after the answer (`GuardedRequestHandler.linger_after_refusal`).
    lingering_seconds: float = 2.0


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


async def read_body(request: web.BaseRequest, limits: HttpLimits) -> bytes:
    """The whole body, within the size and time limits (BodyTooLarge, BodyTimeout)."""
    declared = request.content_length
    if declared is not None and declared > limits.max_body_bytes:
        raise BodyTooLarge()
    if not request.body_exists:
        return b""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.body_timeout_seconds):
            async for chunk in request.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > limits.max_body_bytes:  # chunked: counted as it arrives
                    raise BodyTooLarge()
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout() from None
    return b"".join(chunks)


def parse_error(exc: BaseException | None) -> tuple[int, domain_errors.DomainError]:
    """What to answer for a request aiohttp's parser refused, described without quoting it."""
    if isinstance(exc, http_exceptions.LineTooLong) or (
            isinstance(exc, http_exceptions.BadHttpMessage) and "Too many headers" in str(exc)):
        return 431, domain_errors.DomainError(
            "Request header fields too large: a header, the request line or the number of headers is over"
            " the limit.", error_code="IOTDA.000008", reason="REQUEST_HEADERS_TOO_LARGE")
    if isinstance(exc, (http_exceptions.BadStatusLine, http_exceptions.InvalidURLError)):
        what = "the request line is malformed"
    elif isinstance(exc, http_exceptions.PayloadEncodingError):
        what = "the body's framing is malformed"
    else:
        what = "a header is malformed (invalid characters or syntax)"
    return 400, domain_errors.BadRequestFormat(f"Bad request format: {what}.")


ErrorPage = Callable[[int, domain_errors.DomainError, str], web.Response]


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own refusals in the platform's form."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        manager: GuardedServer = self._manager  # type: ignore[assignment]
        request_id = secrets.token_hex(16)
        if status == 500 and not isinstance(exc, http_exceptions.HttpProcessingError):
            log.error("unexpected error handling an HTTP request (request %s)", request_id, exc_info=exc)
            http_status, err = 500, domain_errors.DomainError(
                f"Internal error (request {request_id}).", error_code="IOTDA.000500", reason="INTERNAL")
        elif status == 504:
            http_status, err = 504, domain_errors.DomainError(
                "The request timed out.", error_code="IOTDA.000504", reason="TIMEOUT")
        else:
            http_status, err = parse_error(exc)
            log.info("http request refused by the parser: %s (%s, request %s)", err.message,
                     type(exc).__name__ if exc else "-", request_id)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = manager.error_page(http_status, err, request_id)
        response.force_close()
        return response

    def linger_after_refusal(self, linger: bool) -> None:
        """Whether a response that leaves the request's body unread first reads and discards the
        rest of it (aiohttp's lingering close, so the client sees the answer rather than a reset),
        or closes the connection at once. The gateway says no until the caller has authenticated:
        no work for an anonymous body. (aiohttp decides by its `_lingering_time`.)"""
        self._lingering_time = self._manager.limits.lingering_seconds if linger else 0.0

    def log_exception(self, *args, **kw) -> None:
        # aiohttp's own messages quote the request's bytes (a header with its token): name the
        # exception, never its text.
        exc = kw.get("exc_info")
        log.info("http connection: %s", type(exc).__name__ if isinstance(exc, BaseException) else args[:1])


class GuardedServer(web.Server):
    """web.Server with a cap on open connections and GuardedRequestHandler connections."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], limits: HttpLimits,
                 error_page: ErrorPage):
        super().__init__(handler, handler_cancellation=True, max_line_size=MAX_LINE_BYTES,
                         max_field_size=MAX_HEADER_BYTES, max_headers=MAX_HEADERS,
                         keepalive_timeout=limits.header_timeout_seconds,
                         lingering_time=limits.lingering_seconds, auto_decompress=False,
                         access_log=None)  # the gateway logs each request itself
        self.limits = limits
        self.error_page = error_page
        self.refused_connections = 0

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self._connections) >= self.limits.max_connections:
            handler.force_close()
            self.refuse(transport)
            return
        super().connection_made(handler, transport)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        """A connection past the cap: closed at once (counted, logged now and then)."""
        self.refused_connections += 1
        if self.refused_connections == 1 or self.refused_connections % 1000 == 0:
            log.warning("HTTP connection refused: %d connections open (the limit); %d refused so far",
                        len(self._connections), self.refused_connections)
        transport.abort()


class HandshakeBoundSite(web.TCPSite):
    """aiohttp's TCPSite; with TLS, each accepted connection is counted against the connection cap
    from its accept on and its handshake must end within `handshake_timeout`. (Given ssl=, asyncio
    makes a connection, and the cap counts it, only once its handshake is done: sockets that never
    send a ClientHello would each hold a file descriptor for the whole timeout, in any number.)"""

    def __init__(self, *args, handshake_timeout: float, **kw):
        super().__init__(*args, **kw)
        self.handshake_timeout = handshake_timeout
        self.handshakes: set[asyncio.Task] = set()  # in progress (counted; referenced until done)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        factory = server if self._ssl_context is None else functools.partial(_TlsAdmission, self, server)
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

    async def stop(self) -> None:
        for task in list(self.handshakes):
            task.cancel()
        await super().stop()


class _TlsAdmission(asyncio.Protocol):
    """An accepted TCP connection of a TLS site: refused at once when the handshakes in progress
    and the open connections reach the cap, else upgraded (loop.start_tls) and handed to aiohttp."""

    def __init__(self, site: HandshakeBoundSite, server: GuardedServer):
        self.site = site
        self.server = server
        # What the TLS layer delivers between the handshake's end and the handover (a request that
        # came with the client's Finished), replayed to aiohttp's handler.
        self._early: list[bytes] = []
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # the ClientHello stays in the socket for start_tls
        if len(self.site.handshakes) + len(self.server.connections) >= self.server.limits.max_connections:
            self.server.refuse(transport)
            return
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self.site.handshakes.add(task)
        task.add_done_callback(self.site.handshakes.discard)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        try:
            tls_transport = await asyncio.get_running_loop().start_tls(
                transport, self, self.site._ssl_context, server_side=True,
                ssl_handshake_timeout=self.site.handshake_timeout)
        except asyncio.CancelledError:
            transport.abort()
            raise
        except Exception as exc:  # noqa: BLE001 - a failed, cut or timed-out handshake: nothing to serve
            log.debug("TLS handshake failed: %s", type(exc).__name__)
            transport.abort()
            return
        if tls_transport is None or tls_transport.is_closing():
            return
        self.site.handshakes.discard(asyncio.current_task())  # counted from here as a connection
        handler = self.server()
        tls_transport.set_protocol(handler)
        handler.connection_made(tls_transport)
        for data in self._early:
            handler.data_received(data)
        if self._eof and not handler.eof_received():
            tls_transport.close()

    def data_received(self, data: bytes) -> None:
        self._early.append(data)  # at most what arrives in one loop turn, within the socket's buffer

    def eof_received(self) -> bool:
        self._eof = True
        return True  # half-open until the handler decides

    def connection_lost(self, exc: BaseException | None) -> None:
        pass  # before or during the handshake: start_tls's waiter sees it
