"""Binding the server's ports: a busy port is a one-line start-up error naming it, and a port is
shared with another process only when reuse_port says so."""

from __future__ import annotations

import errno
import socket

from service.errors import StartupError


def bind_error(what: str, host: str, port: int, exc: OSError) -> StartupError:
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"the {what} port {port} on {host} is in use by another process "
                            f"(choose another with --{what.lower()}-port, or 0 for any free one)")
    return StartupError(f"cannot bind the {what} port {port} on {host}: {exc.strerror or exc}")


def bound_socket(what: str, host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port) and not yet listening: until it listens, connections to
    it are refused."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"host {host!r}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may bind at once
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise bind_error(what, host, port, exc) from exc
    return sock


def check_port_free(what: str, host: str, port: int) -> None:
    """Bind and release the port: a busy one is an error now, not after every model loaded."""
    if port != 0:
        bound_socket(what, host, port).close()
