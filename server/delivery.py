"""How much of a request body an upstream has: it may bill a prompt only once it has all of it.

A body goes upstream in pieces of ``PIECE_BYTES``, each once the connection's buffer has room, so
a try cut short mid-upload has handed over only part of it. When a try ends before its answer
came (the client left, a timeout), the upstream has the whole body only if its machine
acknowledged every byte; otherwise routegate resets the connection, so that what is still queued
on this machine never reaches it (a graceful close would send it, and an upstream that reads late
would get a whole prompt that nobody was charged for).
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import sys
import termios
from collections.abc import AsyncIterator
from contextvars import ContextVar

import aiohttp
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

#: how much of a body is handed to a connection at a time: aiohttp's writer waits for the socket
#: once it buffers more than 64 KiB
PIECE_BYTES = 64 * 1024


class Delivery:
    """One try's body: ``whole`` once the upstream has all of it (as far as can be told)."""

    def __init__(self) -> None:
        self.whole = False
        self.transport: asyncio.Transport | None = None  # the try's connection, once it has one
        self._unacknowledged_at_close: int | None = None

    async def pieces(self, body: bytes) -> AsyncIterator[bytes]:
        """``body`` in pieces; ``whole`` as the last goes (aiohttp writes a piece to the connection
        as it takes it, with no pause in between in which the try could be cut short)."""
        for start in range(0, len(body), PIECE_BYTES):
            end = start + PIECE_BYTES
            self.whole = end >= len(body)
            yield body[start:end]  # a small body is passed on as it is, not copied

    def closing(self) -> None:
        """aiohttp is about to close or release the try's connection. When it closes it because the
        try failed or was cut short (it does so while handling that exception), what the upstream
        has not acknowledged now is what counts: closing a TLS connection queues an alert of its
        own. An answer read whole releases the connection too, and costs no system call here."""
        if sys.exc_info()[1] is not None:
            self._unacknowledged_at_close = _unacknowledged_bytes(self.transport)

    def cut(self) -> None:
        """The try ended before its answer came: unless the upstream's machine acknowledged the
        whole body, it is not whole and the connection is reset. Where that cannot be told (the
        socket already closed, a system without ``SIOCOUTQ``), a body handed over whole counts."""
        unacknowledged = self._unacknowledged_at_close
        if unacknowledged is None:
            unacknowledged = _unacknowledged_bytes(self.transport)
        if unacknowledged is None or (self.whole and unacknowledged == 0):
            return
        self.whole = False
        assert self.transport is not None
        _reset(self.transport)


def _reset(transport: asyncio.Transport) -> None:
    """Close ``transport`` now with a reset, so that what is queued is dropped, not sent. Called while
    the try's own exception propagates, so it raises nothing: a socket already gone is left as it is."""
    sock = transport.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, ValueError):  # closed meanwhile (uvloop raises ValueError)
        pass
    transport.abort()


def _unacknowledged_bytes(transport: asyncio.Transport | None) -> int | None:
    """Bytes written to ``transport`` that its peer has not acknowledged: in its buffer and in the
    kernel's send queue (Linux ``SIOCOUTQ``); None when that cannot be told."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or sock is None or sock.fileno() < 0:
        return None
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ on a TCP socket
    except OSError:
        return None
    return transport.get_write_buffer_size() + struct.unpack("i", queued)[0]


#: the ``Delivery`` of the try whose request is being sent in this task
TRYING: ContextVar[Delivery | None] = ContextVar("routegate_trying", default=None)


class DeliveryConnector(aiohttp.TCPConnector):
    """aiohttp's keep-alive pool, telling the ``Delivery`` of the try in ``TRYING`` which
    connection carries it."""

    async def connect(self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        connection = await super().connect(req, traces, timeout)
        delivery = TRYING.get()
        if delivery is not None:
            delivery.transport = connection.transport
            connection.add_callback(delivery.closing)  # called before aiohttp closes or releases it
        return connection
