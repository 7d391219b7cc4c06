"""Serving the HTTP API robustly: a deadline for request heads, a cap on connections, optional TLS.

aiohttp closes a connection whose request head is incomplete only after its keep-alive timeout (an hour by
default) and has no cap on connections, so a client that half-sends requests would exhaust file descriptors. Here
the keep-alive timeout doubles as the head deadline (:data:`HEAD_TIMEOUT`), and :class:`CappedSite` answers a
connection beyond :data:`MAX_CONNECTIONS` with a canned ``503`` (over TLS: just closes it) and closes it. With TLS it
does the handshake itself, within :data:`HEAD_TIMEOUT` too, so that connections still shaking hands count. Request
bodies have their own deadline in the handlers (``api.BODY_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

HEAD_TIMEOUT = 10.0
"""Seconds a connection may take to deliver a complete request head, and may stay idle between requests."""
MAX_CONNECTIONS = 256
"""Connections served at once per listener."""
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: 73\r\n\r\n"
         b'{"error": "too_many_connections", "message": "too many open connections"}')


@dataclass
class _Gate:
    limit: int
    active: int = 0


class _Capped(asyncio.Protocol):
    """Admits a connection to aiohttp's protocol only while fewer than ``limit`` are open. With ``tls``, it does the
    TLS handshake itself (within :data:`HEAD_TIMEOUT`), so that connections still in their handshake are counted
    and bounded too."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], gate: _Gate, tls: ssl.SSLContext | None) -> None:
        self._factory = factory
        self._gate = gate
        self._tls = tls
        self._inner: asyncio.Protocol | None = None
        self._counted = False
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # what arrives between the end of the handshake and the admission
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._gate.active >= self._gate.limit:
            assert isinstance(transport, asyncio.WriteTransport)
            if self._tls is None:  # over TLS a plain-text answer would be garbage: just close
                transport.write(_BUSY)
            transport.close()
            return
        self._gate.active += 1
        self._counted = True
        if self._tls is None:
            self._admit(transport)
        else:
            self._handshake = asyncio.ensure_future(self._start_tls(transport))

    async def _start_tls(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        assert self._tls is not None
        try:
            secure = await loop.start_tls(transport, self, self._tls, server_side=True,  # type: ignore[arg-type]
                                          ssl_handshake_timeout=HEAD_TIMEOUT)
        except (OSError, ssl.SSLError, asyncio.CancelledError):
            transport.close()
            self._release()
            return
        if secure is None:
            self._release()
            return
        self._admit(secure)

    def _admit(self, transport: asyncio.BaseTransport) -> None:
        self._inner = self._factory()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)
        if self._eof:
            self._inner.eof_received()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self._gate.active -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        if self._inner is not None:
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:  # only over TLS, between the handshake and the admission: replayed then
            self._eof = True
            return None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class CappedSite(web.BaseSite):
    """A TCP site (like ``web.TCPSite``) that serves at most ``max_connections`` connections at once, TLS ones
    counted from their first byte."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, max_connections: int | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner)
        self._app_runner = runner
        self._host, self._port = host, port
        self._tls = ssl_context
        self.gate = _Gate(max_connections or MAX_CONNECTIONS)

    @property
    def name(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._app_runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Capped(server, self.gate, self._tls), self._host, self._port, backlog=self._backlog,
            reuse_address=True)


def app_runner(app: web.Application) -> web.AppRunner:
    """The runner of one listener: no access log, no signal handling of its own, the head deadline. (aiohttp
    silently drops every setting if one is unknown to it: a test checks that these took.)"""
    return web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=HEAD_TIMEOUT,
                         lingering_time=1.0)


def server_tls(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS server context from PEM files (raises ``OSError``/``ssl.SSLError`` if they are unusable)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    return context
