"""uvicorn (httptools) serving the REST app on the server's own event loop, beside grpc.aio.

The socket is bound here, not by uvicorn: port 0 is resolved before the `serving` log line, a busy
port is the same one-line start-up error as gRPC's, and SO_REUSEPORT is never set by accident.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import uvicorn

from service.errors import StartupError
from service.ports import bound_socket

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, app, host: str, port: int, reuse_port: bool, tls: dict | None,
                 graceful_s: float):
        self._host, self._requested_port, self._reuse_port = host, port, reuse_port
        config = uvicorn.Config(
            app, host=host, port=port, loop="none", http="httptools", lifespan="off",
            log_config=None, access_log=False, server_header=False,
            # The app reads neither the peer's address nor the scheme, so X-Forwarded-* headers
            # need no rewriting: no ProxyHeadersMiddleware around every call.
            proxy_headers=False,
            timeout_graceful_shutdown=max(int(graceful_s), 1), **(tls or {}))
        try:
            config.load()  # reads the TLS files
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"REST over TLS: cannot use the certificate or key: {exc}") from exc
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._socket: socket.socket | None = None
        self._ticker: asyncio.Task | None = None
        self.port = 0

    def bind(self) -> None:
        """Take the port now (a busy one fails the start before any model loads); connections
        are refused until `start` listens."""
        self._socket = bound_socket("HTTP", self._host, self._requested_port, self._reuse_port)
        self._socket.setblocking(False)
        self.port = self._socket.getsockname()[1]

    async def start(self) -> None:
        """Listen on the bound socket; uvicorn's once-a-second tick keeps its Date header fresh."""
        await self._server.startup(sockets=[self._socket])
        self._ticker = asyncio.ensure_future(self._server.main_loop())

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to the graceful timeout), close."""
        if self._ticker is None:
            return
        self._server.should_exit = True
        await self._ticker
        await self._server.shutdown(sockets=[self._socket])


def tls_options(cert: str, key: str, client_ca: str | None) -> dict:
    """uvicorn's TLS settings: the same files as gRPC's, client certificates required with a CA."""
    options = {"ssl_certfile": cert, "ssl_keyfile": key}
    if client_ca:
        options.update(ssl_ca_certs=client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options
