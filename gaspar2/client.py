"""Clients for gaspar2's protocol.

``request`` uses plain blocking sockets, so under gevent's monkey patching it is cooperative;
``arequest`` is the same call for asyncio; ``pack`` frames a message for any other framework.
A failed request (the server reset the connection, refused it, or the timeout passed) raises
RequestFailed: a reply, even an empty one, always means success.
"""

import asyncio
import socket
import time

from .wire import pack

__all__ = ["RequestFailed", "request", "arequest", "pack", "parse_url"]


class RequestFailed(ConnectionError):
    """The request did not succeed: reset by the server, refused, or timed out."""


def parse_url(url):
    """``"host:port"`` or ``"[v6 address]:port"`` -> (host, port)."""
    host, sep, port = url.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected HOST:PORT, got %r" % (url,))
    return host.strip("[]") or "127.0.0.1", int(port)


def request(url, message, timeout=None):
    """Send ``message`` (bytes or str) to the gaspar2 server at ``url``; return the reply."""
    frame = pack(message)
    address = parse_url(url)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(frame)
            chunks = []
            while True:
                if deadline is not None:
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(262144)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
    except socket.timeout:
        raise RequestFailed("%s: no reply within %s s" % (url, timeout)) from None
    except OSError as exc:
        raise RequestFailed("%s: %s" % (url, _describe(exc))) from exc


async def arequest(url, message, timeout=None):
    """``request`` for asyncio."""
    host, port = parse_url(url)

    async def exchange():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(pack(message))
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        raise RequestFailed("%s: no reply within %s s" % (url, timeout)) from None
    except OSError as exc:
        raise RequestFailed("%s: %s" % (url, _describe(exc))) from exc


def _describe(exc):
    if isinstance(exc, ConnectionResetError):
        return "connection reset: the request failed on the server (see its log)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the server running?"
    return str(exc) or type(exc).__name__
