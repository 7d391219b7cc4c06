"""A pooled HTTP transport for the Alibaba Tea SDK's async calls.

darabonba-core's ``DaraCore.async_do_action`` builds an SSL context (loading the CA bundle: 15-30 ms of CPU on the
event loop), a connector and a session for every request, and opens a new TCP+TLS connection each time.
:class:`PooledTransport` keeps the same contract (the request and runtime options in, a ``DaraResponse`` out,
transport failures as ``RetryError``) with one SSL context per TLS setting and one session per event loop, whose
connections are reused. It also honours ``NO_PROXY``, which the SDK ignores.

It is installed in ``alibabacloud_tea_openapi.client`` (the one module that calls ``DaraCore.async_do_action``),
only for the darabonba-core versions it was written against; with any other version the SDK's own transport
stays, and that is logged.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.request
from enum import Enum
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import certifi
import structlog
from darabonba.core import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DaraCore
from darabonba.exceptions import RetryError
from darabonba.response import DaraResponse
from darabonba.utils.stream import BaseStream

log = structlog.get_logger("eipfailover.providers.alibaba")

SUPPORTED = ("1.0.",)


class TimedOut(RetryError):  # type: ignore[misc]
    """A transport failure that was a timeout (connect or read): the SDK wraps it like any other."""
"""darabonba-core versions whose ``async_do_action`` this replaces faithfully."""


class PooledTransport(DaraCore):  # type: ignore[misc]
    contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
    sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    @staticmethod
    def ssl_context(ca: str | None, cert: Any, tls_min: Any) -> ssl.SSLContext:
        key = (ca, tuple(cert) if isinstance(cert, list | tuple) else cert, tls_min)
        context = PooledTransport.contexts.get(key)
        if context is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            DaraCore._set_tls_minimum_version(context, tls_min)
            context.load_verify_locations(ca or certifi.where())
            if isinstance(cert, list | tuple):
                context.load_cert_chain(certfile=cert[0], keyfile=cert[1] if len(cert) > 1 else None)
            elif cert is not None:
                context.load_cert_chain(certfile=cert)
            PooledTransport.contexts[key] = context
        return context

    @staticmethod
    def session() -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = PooledTransport.sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30))
            PooledTransport.sessions[loop] = session
        return session

    @staticmethod
    async def async_do_action(request: Any, runtime_option: dict[str, Any] | None = None) -> DaraResponse:
        options = runtime_option or {}
        url = DaraCore.compose_url(request)
        tls_min = options.get("tlsMinVersion")
        if isinstance(tls_min, Enum):
            tls_min = tls_min.value
        timeout = options.get("timeout")
        connect = int(options.get("connectTimeout") or timeout or DEFAULT_CONNECT_TIMEOUT) / 1000
        read = int(options.get("readTimeout") or timeout or DEFAULT_READ_TIMEOUT) / 1000
        https = request.protocol.upper() == "HTTPS"
        verify: ssl.SSLContext | bool = False
        if https and not options.get("ignoreSSL"):
            verify = PooledTransport.ssl_context(options.get("ca"), options.get("cert"), tls_min)
        body = request.body
        if isinstance(body, BaseStream):
            body = b"".join(body)
        elif isinstance(body, str):
            body = body.encode("utf-8")
        try:
            async with PooledTransport.session().request(
                request.method, url, data=body or b"", headers=request.headers, ssl=verify,
                proxy=_proxy(url, https, options), timeout=aiohttp.ClientTimeout(sock_read=read, sock_connect=connect),
            ) as response:
                answer = DaraResponse()
                answer.body = await response.read()
                answer.headers = {k.lower(): v for k, v in response.headers.items()}
                answer.status_code, answer.status_message, answer.response = (
                    response.status, response.reason, response)
        except OSError as exc:  # aiohttp's client errors and timeouts are OSErrors: retryable, as in the SDK
            if isinstance(exc, TimeoutError):
                raise TimedOut(f"timed out: {exc or type(exc).__name__}") from None
            raise RetryError(str(exc)) from None
        return answer


def _proxy(url: str, https: bool, options: dict[str, Any]) -> str | None:
    """The SDK's choice (its option, else ``HTTP(S)_PROXY``), except for hosts ``NO_PROXY`` exempts."""
    if https:
        proxy = options.get("httpsProxy") or os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    else:
        proxy = options.get("httpProxy") or os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")
    if proxy and urllib.request.proxy_bypass(urlsplit(url).hostname or ""):
        return None
    return proxy or None


_users = 0


def acquire() -> None:
    """A client starts using the SDK: install the pooled transport (once; not on an unknown darabonba-core)."""
    global _users
    import alibabacloud_tea_openapi.client as openapi

    _users += 1
    if openapi.DaraCore is PooledTransport:
        return
    version = metadata.version("darabonba-core")
    if not version.startswith(SUPPORTED):
        log.warning("tea_transport_not_pooled", darabonba_core=version,
                    detail="unknown darabonba-core version: each SDK call builds its own TLS context")
        return
    openapi.DaraCore = PooledTransport


async def release() -> None:
    """A client is closed; the last one closes the pooled sessions."""
    global _users
    _users = max(_users - 1, 0)
    if _users == 0:
        session = PooledTransport.sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
