"""``/metrics``, ``/healthz`` and ``/readyz``: :class:`MetricsServer`, served by the service's event loop.

A tiny HTTP/1.1 server on :func:`asyncio.start_server`: an answer from ``/healthz`` proves the
loop is responsive, and a scrape reads the service's state on the thread that owns it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from stream_learner.errors import ConfigError

log = structlog.get_logger(__name__)


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP/1.1, served by the event loop it starts on.

    - ``GET /metrics``: the registry in the Prometheus text format (OpenMetrics when asked for).
    - ``GET /healthz``: 200 ``ok`` - the process is alive and its event loop answers.
    - ``GET /readyz``: ``health()`` as JSON, 200 when its ``ready`` is true, else 503.

    One request per connection (``Connection: close``); ``HEAD`` is answered without a body.

    Bounded for clients that misbehave:

    - At most ``max_connections`` connections are served at a time; one beyond that is closed at
      once, unread and unanswered (see :meth:`_refuse`), and counted in ``refused_connections``.
    - Each served connection lives at most ``request_timeout_s`` from accept to close, whatever the
      client does: one that sends nothing, dribbles its request or does not read the answer is
      dropped (unsent bytes are discarded).
    - A request that fails inside (a collector or ``health()`` raises) is answered ``500`` with a
      fixed body; the exception goes to the log, never to the client.
    """

    MAX_CONNECTIONS = 64
    """Default bound of concurrent connections: a few scrapers and the kubelet's probes use one or
    two each, so 64 leaves ample room while a flood of idle connections holds at most 64 tasks."""
    INTERNAL_ERROR_BODY = b"internal server error\n"

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], dict[str, Any]],
        host: str,
        port: int,
        *,
        request_timeout_s: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.registry = registry
        self.health = health
        self.host = host
        self.port = port
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.refused_connections = 0
        """Connections closed unanswered because ``max_connections`` were open."""
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    @property
    def open_connections(self) -> int:
        """Connections being served now (at most ``max_connections``)."""
        return len(self._connections)

    async def start(self) -> MetricsServer:
        """Listen; ``port`` 0 picks a free one (read it back from :attr:`port`)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=16 * 1024)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port} for /metrics ({exc.strerror or exc}); "
                "set METRICS_PORT to a free port, or 0 to disable the endpoint"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics_serving", host=self.host, port=self.port, paths=["/metrics", "/healthz", "/readyz"])
        return self

    async def close(self) -> None:
        """Stop listening and drop open connections (unsent answers are discarded); returns once
        every connection's handler has finished."""
        if self._server is None:
            return
        self._server.close()
        handlers = list(self._connections.values())
        for writer in list(self._connections):
            writer.transport.abort()
        if handlers:
            await asyncio.wait(handlers)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection within ``request_timeout_s``, or refuse it when ``max_connections`` are open."""
        if len(self._connections) >= self.max_connections:
            self._refuse(writer)
            return
        task = asyncio.current_task()
        assert task is not None  # start_server runs each connection's handler as a task
        self._connections[writer] = task
        try:
            async with asyncio.timeout(self.request_timeout_s):
                await self._serve(reader, writer)
        except (TimeoutError, ConnectionError):
            # close() would wait to flush what a client that does not read never takes.
            writer.transport.abort()
        finally:
            del self._connections[writer]
            writer.close()

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Close a connection beyond ``max_connections`` at once, unread and unanswered.

        Not a 503: closing a socket whose request is unread makes the kernel reset the connection,
        which may discard the answer before the client reads it (seen on Linux loopback); a 503
        that arrives needs the request read first, and waiting for it is what an idle flood
        exploits. The client sees a reset: a scraper or probe counts it as a failure, as it
        would a 503. Logged at the 1st, 2nd, 4th, 8th ... refusal, so a flood cannot flood the log.
        """
        self.refused_connections += 1
        writer.transport.abort()
        if self.refused_connections & (self.refused_connections - 1) == 0:
            log.warning(
                "metrics_connection_refused",
                open=len(self._connections),
                max_connections=self.max_connections,
                refused=self.refused_connections,
            )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request head and answer it (the caller bounds the time)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._send(writer, 400, "text/plain; charset=utf-8", b"bad request\n", head_only=False)
            return
        method, target = parts[0], parts[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        try:
            status, content_type, body = self._respond(method, target.split("?", 1)[0], headers)
        except Exception:
            log.exception("metrics_request_failed", path=target[:200])
            status, content_type, body = 500, "text/plain; charset=utf-8", self.INTERNAL_ERROR_BODY
        await self._send(writer, status, content_type, body, head_only=method == "HEAD")

    def _respond(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n"
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            return 200, content_type, encoder(self.registry)
        if path == "/healthz":
            return 200, text, b"ok\n"
        if path == "/readyz":
            health = self.health()
            return (200 if health.get("ready") else 503), "application/json", orjson.dumps(health) + b"\n"
        if path == "/":
            return 200, text, b"stream-learner: /metrics /healthz /readyz\n"
        return 404, text, b"not found\n"

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, *, head_only: bool
    ) -> None:
        extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
        writer.write(_head(status, content_type, len(body), extra) + (b"" if head_only else body))
        await writer.drain()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _head(status: int, content_type: str, length: int, extra: str = "") -> bytes:
    """The status line and headers of a one-request connection's answer."""
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n"
    ).encode("latin-1")
