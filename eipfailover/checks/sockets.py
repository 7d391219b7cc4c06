"""Bare non-blocking sockets for the probes: cheaper than transports where nothing more is needed.

On asyncio's own event loop a transport costs more than the probe's exchange (its set-up, its callbacks, its
selector registrations), and so does ``sock_connect``: the ``tcp`` check and the plain ``http`` probe of an IP
address use a bare non-blocking socket and the loop's reader and writer callbacks instead (``bench/checks_rate.py``
measures the difference). Other loops (uvloop) have native transports cheaper than their socket methods: the probes
keep the transports there.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from asyncio import selector_events
from typing import Any

Address = tuple[socket.AddressFamily, Any]
"""A socket family and address (``(host, port)``, or ``(host, port, flowinfo, scope_id)`` for IPv6)."""


def numeric_address(host: str, port: int) -> Address | None:
    """The family and socket address of ``host`` if it is an IP address (IPv6 with its zone, if any, as a scope ID);
    None for a name, or a zone that names no interface here. No name service is asked (``AI_NUMERICHOST``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    family, _, _, _, address = infos[0]
    return family, address


def bare_sockets(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether bare sockets are the cheaper way on ``loop``: asyncio's own selector loops (which have the reader and
    writer callbacks this needs), not uvloop's."""
    return isinstance(loop, selector_events.BaseSelectorEventLoop)


async def connect(loop: asyncio.AbstractEventLoop, address: Address) -> socket.socket:
    """A non-blocking socket connected to ``address``; ``OSError`` if it cannot be (the socket then closed), worded
    as asyncio's ``sock_connect`` words it.

    Not ``sock_connect`` itself: on asyncio's loop it costs more than the connection (it resolves the address again,
    converts the socket's family and type to enums several times, looks the socket up among the transports)."""
    family, sockaddr = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        error = sock.connect_ex(sockaddr)
        if error in (errno.EINPROGRESS, errno.EINTR):
            fd = sock.fileno()
            done = loop.create_future()
            loop.add_writer(fd, _wake, done)
            try:
                await done
            finally:
                loop.remove_writer(fd)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"Connect call failed {sockaddr}")
        elif error:
            raise OSError(error, os.strerror(error))
    except BaseException:  # cancelled too
        sock.close()
        raise
    return sock


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
