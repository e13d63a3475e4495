"""The HTTP API (``[http] listen``): ``GET /api/v1/{method}`` answers the read-only operations of
the one operations table — parameters from the query string, validated by the same models as on
the query socket — with exactly the JSON the socket puts in ``result``; ``GET /metrics`` is
Prometheus text. Every error is ``{"error": "error: ..."}`` with the status of its kind
(``httpwire.STATUS_OF_KIND``). aiohttp serves it in the service's own event loop.

Bounds, like the query socket's: a request line (the URL) of at most :data:`MAX_URL` bytes, no
request body read, connections idle for ``idle_timeout`` closed, at most ``max_connections`` open
(more are answered 503 and closed), a request whose client closes its connection is cancelled
(aiohttp's ``handler_cancellation``), a long answer is encoded off the event loop, and shutdown
lets requests finish, then cancels them. Requests that are not HTTP get the same JSON errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from buildref.api.httpwire import API_PREFIX, METRICS_PATH, STATUS_OF_KIND, error_body
from buildref.api.metrics import Metrics
from buildref.api.operations import OPERATIONS, Caller, Services, bind
from buildref.api.rpc import BIG_ANSWER, off_loop, weight
from buildref.config import HttpConfig
from buildref.errors import BadConfig, BadRequest, BuildrefError, clients_mistake, quoted
from buildref.models import Status, dump

# Bytes in the request line. The longest valid one, a lookup with every parameter at its bound
# and every character four UTF-8 bytes percent-encoded (12 bytes), is about 64,000 bytes.
MAX_URL = 80 * 1024
MAX_BODY = 64 * 1024  # nothing here reads a body; aiohttp refuses larger ones unread
# connections accepted at one wake-up (asyncio's backlog, which is also the listen queue): each
# takes a descriptor before max_connections is checked (api/sockets.RESERVED_FDS counts them)
ACCEPT_BURST = 32
REMOTE = Caller(None)  # an HTTP caller has no uid the kernel vouches for: it may only read

OnError = Callable[[str, BaseException], None]


@contextlib.contextmanager
def listening(config: HttpConfig) -> Iterator[list[socket.socket]]:
    """The listening sockets — one per address of the host (an IP address has one; ``localhost``
    may have two) — bound now, so that a taken port stops the service at start; closed at exit."""
    sockets: list[socket.socket] = []
    try:
        try:
            found = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            for family, _, _, _, address in dict.fromkeys(found):
                # "[::]" means every address, IPv4 ones too (as "[::]:8745" reads); "[::1]" is IPv6 only
                everywhere = family == socket.AF_INET6 and address[0] == "::" and socket.has_dualstack_ipv6()
                sock = socket.create_server(address, family=family, backlog=1024, dualstack_ipv6=everywhere)
                sock.setblocking(False)
                sockets.append(sock)
        except (OSError, UnicodeError) as e:
            raise BadConfig(f"cannot listen on {config.address}: {_reason(e)}") from None
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _reason(e: Exception) -> str:
    if isinstance(e, socket.gaierror):  # a name that does not resolve: its own message
        return e.strerror or str(e)
    if isinstance(e, OSError) and e.errno:  # not create_server's "(while attempting to bind ...)"
        return os.strerror(e.errno)
    return str(e)


class HttpServer:
    def __init__(self, sockets: list[socket.socket], services: Services,
                 status: Callable[[], Awaitable[Status]], metrics: Metrics, on_error: OnError, *,
                 idle_timeout: float, max_connections: int, wire: Executor | None = None) -> None:
        self._sockets = sockets
        self._services = services
        self._status = status
        self._metrics = metrics
        self._on_error = on_error
        self._max_connections = max_connections
        self._wire = wire
        self._requests: set[asyncio.Task[Any]] = set()  # in flight, for shutdown
        self._draining = False
        self._closed = False
        self._servers: list[asyncio.Server] = []
        app = web.Application(middlewares=[self._count, self._answer_errors], client_max_size=MAX_BODY)
        app.router.add_get(API_PREFIX + "{method}", self._operation)
        app.router.add_get(METRICS_PATH, self._metrics_text)
        # aiohttp closes a connection that sends no request for keepalive_timeout, new ones too;
        # its shutdown_timeout only matters for requests that arrive while drain() waits
        self._protocol: dict[str, Any] = {"access_log": None, "logger": _protocol_logger(),
                                          "keepalive_timeout": idle_timeout, "max_line_size": MAX_URL}
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0,
                                     handler_cancellation=True, **self._protocol)

    async def start(self) -> None:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            self._servers.append(await loop.create_server(self._connection, sock=sock, backlog=ACCEPT_BURST))

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for requests in flight, cancel the rest, then close every
        connection; how many requests were cancelled. (aiohttp's own shutdown would only cancel
        a handler after twice its timeout.)"""
        self.stop_accepting()
        self._draining = True
        if self._requests:
            await asyncio.wait(set(self._requests), timeout=grace)
        left = set(self._requests)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
        await self.close()
        return len(left)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop_accepting()
        await self._runner.cleanup()

    def _connection(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None  # start() set it up before accepting
        if len(server.connections) >= self._max_connections:
            return _Refused()
        return _JsonErrors(server, loop=asyncio.get_running_loop(), **self._protocol)

    # -- middlewares: the outer one counts what the inner one answered

    @web.middleware
    async def _count(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        task = asyncio.current_task()  # aiohttp runs each request in a task of its own
        assert task is not None
        self._requests.add(task)
        started = time.monotonic()
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            if not self._draining:  # aiohttp cancels a request whose client closed the connection
                structlog.get_logger().warning("request cancelled: client left", socket="http",
                                               path=_route(request.path),
                                               ms=round((time.monotonic() - started) * 1000, 1))
            raise
        finally:
            self._requests.discard(task)
        self._metrics.http_request(_route(request.path), response.status)
        return response

    @web.middleware
    async def _answer_errors(self, request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
        try:
            return await handler(request)
        except BuildrefError as e:
            if clients_mistake(e):
                self._on_error("bad query", e)
            return _error(STATUS_OF_KIND[e.kind], str(e))
        except web.HTTPException as e:  # aiohttp's own answers: no such route, not GET
            if e.status == 404:
                return _error(404, f"error: no endpoint {quoted(request.path, 60)}: the API is "
                                   f"{API_PREFIX}{{{','.join(OPERATIONS)}}} and {METRICS_PATH}")
            if e.status == 405:
                return _error(405, f"error: {request.method[:20]} is not served here: only GET (and HEAD)",
                              {"Allow": "GET, HEAD"})
            return _error(e.status, f"error: {e.reason}")
        except Exception as e:  # a bug must not take the service down; the caller hears of it
            self._on_error("query failed", e)
            return _error(500, f"error: internal error ({type(e).__name__})")

    # -- handlers

    async def _operation(self, request: web.Request) -> web.Response:
        run = bind(self._services, REMOTE, request.match_info["method"], _params(request.query), text=True)
        result = await run()
        body = await off_loop(self._wire, weight(result) > BIG_ANSWER, _encode, result)
        return web.Response(body=body, content_type="application/json")

    async def _metrics_text(self, request: web.Request) -> web.Response:
        if request.query:
            raise BadRequest(f"{METRICS_PATH} takes no parameters")
        body, content_type = self._metrics.exposition(await self._status(), request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})


def _encode(result: Any) -> bytes:
    return json.dumps(dump(result)).encode()


def _params(query: Mapping[str, str]) -> dict[str, str]:
    """The query string as parameters; a parameter given twice is ambiguous and refused."""
    params: dict[str, str] = {}
    for key, value in query.items():
        if key in params:
            raise BadRequest(f"{quoted(key, 40)} is given more than once")
        params[key] = value
    return params


def _route(path: str) -> str:
    """The metrics label of a request: an operation's path, the metrics path, or ``other`` (so an
    unknown path cannot add a label value)."""
    if path == METRICS_PATH or (path.startswith(API_PREFIX) and path[len(API_PREFIX):] in OPERATIONS):
        return path
    return "other"


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(message), content_type="application/json",
                        headers=headers)


class _Refused(asyncio.Protocol):
    """A connection over ``max_connections``: one 503 answer, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        body = error_body("error: too many connections; try again")
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nRetry-After: 1\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        transport.close()


class _JsonErrors(RequestHandler):
    """aiohttp's protocol, whose answer to what is not an HTTP request (or is one over the
    bounds) is a JSON error like every other, not aiohttp's text quoting the request."""

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; raises when an answer was begun
        if isinstance(exc, LineTooLong):
            text = f"error: a request line or header over {MAX_URL // 1024} KiB"
        elif status >= 500:
            text = "error: internal error"
        else:
            text = "error: not an HTTP request this service can read"
        response = _error(status, text)
        response.force_close()
        return response


class _ToStructlog(logging.Handler):
    """aiohttp reports requests that are not HTTP (a URL over :data:`MAX_URL`, garbage) on a
    standard logger; they become one ``bad http request`` line in the service's log."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        structlog.get_logger().warning("bad http request",
                                       error=str(error)[:200] if error else record.getMessage()[:200])


def _protocol_logger() -> logging.Logger:
    logger = logging.getLogger("buildref.http")
    if not logger.handlers:
        logger.addHandler(_ToStructlog())
        logger.setLevel(logging.INFO)  # aiohttp logs non-HTTP traffic (scanners) at debug: not kept
        logger.propagate = False
    return logger
