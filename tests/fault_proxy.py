"""A loopback fault-injection HTTP proxy for the cloud APIs (test and benchmark code, not shipped).

:class:`FaultProxy` is an aiohttp server on 127.0.0.1 (a free port) that forwards every request to one upstream (the
moto server, or ``tests/fake_aliyun.py``) and can answer some of them with a fault instead, per operation (EC2's
``Action`` form field; Alibaba's ``x-acs-action`` header, or its ``Action`` parameter in V2 RPC style): by a script
(a queue of faults per operation, one per call) or by probability (a seeded :class:`random.Random`). The script wins;
without one, the probability rules are rolled in the order they were set, the first hit applies.

Forwarding is byte-exact: method, path and query (not re-encoded), body and headers, **Host included**: the Alibaba
V3 signature signs ``host`` (the fake checks it) and EC2 SigV4 does too (moto does not check). Only hop-by-hop
headers are dropped, and aiohttp adds none of its own (no ``User-Agent``, ``Accept*`` or ``Content-Type``). All
upstream calls share one :class:`aiohttp.ClientSession`, with a bounded connection pool.

Faults (:data:`Kind`):

``throttle``
    the cloud's throttling error, not forwarded: EC2 ``RequestLimitExceeded`` (HTTP 503, EC2's XML error body);
    Alibaba ``Throttling.User`` (HTTP 400, its JSON error body, no ``x-acs-retry-after``).
``http500``, ``http503``
    that status with an empty ``text/plain`` body (or ``body``), not the cloud's error shape; not forwarded.
``reset``
    the connection is reset (RST) once the request is read, not forwarded: the client gets no answer.
``reset_after``
    forwarded and applied upstream, then reset: applied but unanswered, the case that makes double moves.
``delay``
    held ``delay`` seconds (default 3, past the tests' read timeouts), then forwarded. The client may have given up
    by then; the call is applied upstream all the same, as a real cloud applies a call whose answer is lost.
``html``
    an HTML page, not forwarded: with ``status`` 200 (the default) a captive portal's HTML5 page (not well-formed
    XML), with 4xx/5xx nginx's error page (which starts with ``<html>``); or ``body``.
``late``
    forwarded (the change is applied upstream); then for ``late_seconds`` (default 2, counted from the upstream's
    answer) every describe call (:data:`DESCRIBES`) is answered, without being forwarded, with the last answer the
    proxy saw for the same parameters before this call (signature, nonce and timestamp fields left out of the
    comparison): eventual consistency, describe shows the old association. A describe never seen before the call
    is forwarded. Another ``late`` call inside the window extends it and keeps the older answers.

EC2's request throttling (``buckets=``, an :class:`~tests.ec2_buckets.Ec2Buckets`): every EC2 request first takes a
token from its bucket (per action and Region, the documented sizes and refill rates); a request that finds none is
answered as ``throttle`` is (EC2's ``RequestLimitExceeded``), not forwarded, and no scripted or probable fault is
used up on it. Logged with ``fault="throttle"`` and ``limited=True``; :attr:`Seen.bucket` names the bucket.

Every request is recorded in :attr:`FaultProxy.log` (a :class:`Seen`) when it arrives and updated as it goes: its
operation, fault, time, the parameters, the SDK's attempt number, whether it was forwarded (sent upstream: applied,
or possibly so), and the status the client was sent.

What the clients make of them (tests/test_fault_proxy.py): botocore (``standard`` mode) retries ``throttle``,
``reset``, ``reset_after``, ``delay`` (a read timeout), and a 5xx whose body is empty or starts with ``<html>``
(error code ``"500"``, ``"502"``, ...); a 5xx with a text body, or a 200 HTML5 page, is a ``ResponseParserError``
at once, not retried; a 200 page that is well-formed XML is an empty success. The Alibaba SDK (retries off) raises
``ClientException`` ``Throttling.User`` for ``throttle``, and for every other fault an ``UnretryableException``
with no code: a non-JSON body, even a 5xx, is "Failed to parse the value as json".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Literal, Self, get_args
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .ec2_buckets import Ec2Buckets, region_of

Kind = Literal["throttle", "http500", "http503", "reset", "reset_after", "delay", "html", "late"]
Cloud = Literal["ec2", "aliyun"]
KINDS: tuple[Kind, ...] = get_args(Kind)
DESCRIBES: dict[Cloud, frozenset[str]] = {
    "ec2": frozenset({"DescribeAddresses"}),
    "aliyun": frozenset({"DescribeEipAddresses", "DescribeNetworkInterfaces", "DescribeHaVips"}),
}
"""The describe calls a ``late`` fault answers from the past."""
VOLATILE = frozenset({
    "Signature", "SignatureNonce", "Timestamp", "ClientToken", "X-Amz-Date", "X-Amz-Signature", "X-Amz-Credential",
    "X-Amz-Security-Token", "X-Amz-Algorithm", "X-Amz-SignedHeaders", "X-Amz-Expires",
})
"""Parameters that differ between two identical requests: left out of :attr:`Seen.params` and the describe cache."""
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "content-length"})
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

EC2_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
             "<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>")
PORTAL_PAGE = ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Sign in to the network</title></head>\n'
               '<body><h1>Guest Wi-Fi</h1><form method="post"><input type="submit" value="Accept"></form>'
               "</body></html>\n")
"""A captive portal's page (HTML5, not well-formed XML)."""
ERROR_PAGE = ("<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
              "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
"""nginx's error page, byte for byte."""


@dataclass(frozen=True)
class Fault:
    """One fault and its parameters (each used by one kind only)."""

    kind: Kind
    delay: float = 3.0
    """``delay``: seconds the request is held before it is forwarded."""
    late_seconds: float = 2.0
    """``late``: how long describe calls answer from before the call."""
    status: int = 200
    """``html``: the page's HTTP status."""
    body: str = ""
    """``http500``, ``http503``: the ``text/plain`` body (empty by default). ``html``: the page, instead of a captive
    portal's HTML5 page (status < 400) or nginx's error page."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {', '.join(KINDS)}")


@dataclass
class Seen:
    """One request the proxy received, updated as it is handled."""

    operation: str
    fault: Kind | None
    at: float
    """``time.monotonic()`` when it arrived."""
    params: dict[str, str]
    attempt: int | None
    """The SDK's attempt number: ``amz-sdk-request: attempt=N`` (EC2, from 1), ``x-acs-retry-attempts`` (Alibaba)."""
    forwarded: bool = False
    """Sent upstream: applied there (or, if the upstream did not answer, possibly so)."""
    status: int | None = None
    """The status the proxy answered with (even to a client that had given up); None while pending, or when the
    connection was reset instead."""
    stale: bool = False
    """Answered from the describe cache by a ``late`` fault."""
    bucket: str | None = None
    """With ``buckets``: the request-token bucket it took a token from, or found empty."""
    limited: bool = False
    """With ``buckets``: refused for want of a token (and answered ``throttle``)."""


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: bytes


_Key = tuple[str, tuple[tuple[str, str], ...]]


class FaultProxy:
    """A fault-injecting reverse proxy in front of ``upstream`` (``http://host:port`` or ``host:port``), speaking
    ``cloud``'s error dialect, enforcing EC2's request throttling with ``buckets`` (EC2 only). Use
    ``async with FaultProxy(...) as proxy`` or :meth:`start` and :meth:`stop`."""

    def __init__(self, upstream: str, cloud: Cloud, *, seed: int = 0, log_limit: int = 100_000,
                 cache_limit: int = 256, buckets: Ec2Buckets | None = None) -> None:
        if buckets is not None and cloud != "ec2":
            raise ValueError("buckets model EC2's throttling: cloud must be 'ec2'")
        self.upstream = (upstream if "://" in upstream else f"http://{upstream}").rstrip("/")
        self.cloud: Cloud = cloud
        self.describes = DESCRIBES[cloud]
        self.random = random.Random(seed)
        self.buckets = buckets
        """EC2's request-token buckets, or None: no throttling but the faults chosen."""
        self.log: list[Seen] = []
        """Every request, oldest first; beyond ``log_limit`` the oldest tenth is dropped (counted in ``dropped``)."""
        self.dropped = 0
        self.log_limit = log_limit
        self._script: dict[str, deque[Fault | None]] = {}
        self._rules: dict[Kind, tuple[float, frozenset[str] | None, Fault]] = {}
        self._cache: OrderedDict[_Key, _Answer] = OrderedDict()
        self._cache_limit = cache_limit
        self._stale: dict[_Key, _Answer] = {}
        self._stale_until = 0.0
        self._closing = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0

    # --- life cycle ---
    async def start(self) -> None:
        """Serve on 127.0.0.1, on a free port (see :attr:`url`)."""
        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=15), cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60),
        )
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving: delayed requests are dropped unforwarded (their clients reset), then the upstream session
        is closed."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: boto3's ``endpoint_url``."""
        return f"http://{self.endpoint}"

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``: the Alibaba SDK's ``endpoint`` (with ``protocol="http"``)."""
        return f"127.0.0.1:{self._port}"

    # --- choosing faults ---
    def script(self, operation: str, *faults: Kind | Fault | None) -> None:
        """Apply ``faults`` to the next calls of ``operation``, one each, in order (None: forward that one as is);
        appended to what is already scripted."""
        queue = self._script.setdefault(operation, deque())
        queue.extend(f if f is None or isinstance(f, Fault) else Fault(f) for f in faults)

    def set_probability(self, kind: Kind, p: float, operations: Iterable[str] | str | None = None,
                        **params: float | str) -> None:
        """Apply ``kind`` (with :class:`Fault` ``params``) to each call of ``operations`` (all if None) with
        probability ``p``; replaces the earlier rule for ``kind``, and ``p=0`` removes it."""
        if not 0 <= p <= 1:
            raise ValueError(f"probability {p} is not in [0, 1]")
        if p == 0:
            self._rules.pop(kind, None)
            return
        ops = frozenset([operations] if isinstance(operations, str) else operations) if operations else None
        self._rules[kind] = (p, ops, Fault(kind, **params))  # type: ignore[arg-type]

    def clear(self) -> None:
        """Forget every script and probability rule and end a ``late`` window (the log stays)."""
        self._script.clear()
        self._rules.clear()
        self._stale, self._stale_until = {}, 0.0

    def calls(self, operation: str | None = None, *, forwarded: bool | None = None) -> list[Seen]:
        """The logged requests, optionally of one operation and by :attr:`Seen.forwarded`."""
        return [s for s in self.log if (operation is None or s.operation == operation)
                and (forwarded is None or s.forwarded == forwarded)]

    def _choose(self, operation: str) -> Fault | None:
        queue = self._script.get(operation)
        if queue:
            return queue.popleft()
        for p, ops, fault in self._rules.values():
            if (ops is None or operation in ops) and self.random.random() < p:
                return fault
        return None

    # --- serving ---
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        pairs = _params(request, body)
        operation = request.headers.get("x-acs-action") or next((v for k, v in pairs if k == "Action"), "")
        bucket, limited = None, False
        if self.buckets is not None and operation:
            bucket = self.buckets.bucket_name(operation, pairs)
            limited = not self.buckets.admit_named(bucket, region_of(request.headers.get("Authorization"), pairs))
        fault = Fault("throttle") if limited else self._choose(operation)
        kept = tuple(sorted((k, v) for k, v in pairs if k not in VOLATILE))
        seen = Seen(operation, fault.kind if fault is not None else None, time.monotonic(), dict(kept),
                    _attempt(request), bucket=bucket, limited=limited)
        self._record(seen)
        response = await self._answer(request, body, seen, fault, (operation, kept))
        if response is None:
            return _reset(request)
        seen.status = response.status
        return response

    async def _answer(self, request: web.Request, body: bytes, seen: Seen, fault: Fault | None,
                      key: _Key) -> web.Response | None:
        """The answer to send, or None to reset the connection instead."""
        kind = fault.kind if fault is not None else None
        if fault is not None and kind in ("throttle", "http500", "http503", "html"):
            return self._fault_answer(fault, request)
        if kind == "reset":
            return None
        if fault is not None and kind == "delay":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.delay)
            if self._closing.is_set():
                return None
        if kind is None and key[0] in self.describes:
            stale = self._stale_answer(key)
            if stale is not None:
                seen.stale = True
                return _response(stale)
        before = dict(self._cache) if kind == "late" else {}
        seen.forwarded = True
        try:
            answer = await self._forward(request, body)
        except (aiohttp.ClientError, OSError) as exc:  # OSError covers the timeouts
            return web.Response(status=502, text=f"fault proxy: upstream failed: {exc!r}\n")
        if key[0] in self.describes and answer.status == 200:
            self._cache[key] = answer
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)
        if fault is not None and kind == "late":
            self._start_late(before, fault.late_seconds)
        return None if kind == "reset_after" else _response(answer)

    def _record(self, seen: Seen) -> None:
        self.log.append(seen)
        if len(self.log) > self.log_limit:
            drop = max(self.log_limit // 10, 1)
            del self.log[:drop]
            self.dropped += drop

    def _start_late(self, before: dict[_Key, _Answer], seconds: float) -> None:
        now = time.monotonic()
        if now >= self._stale_until:  # a new window; inside one, the older answers stay
            self._stale = before
        self._stale_until = max(self._stale_until, now + seconds)

    def _stale_answer(self, key: _Key) -> _Answer | None:
        if not self._stale:
            return None
        if time.monotonic() >= self._stale_until:
            self._stale = {}
            return None
        return self._stale.get(key)

    async def _forward(self, request: web.Request, body: bytes) -> _Answer:
        assert self._session is not None, "FaultProxy.start() first"
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        async with self._session.request(
            request.method, URL(self.upstream + request.raw_path, encoded=True), data=body, headers=headers,
            skip_auto_headers=NO_AUTO_HEADERS, allow_redirects=False,
        ) as reply:
            content = await reply.read()
            kept = CIMultiDict((k, v) for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP)
            return _Answer(reply.status, reply.reason, kept, content)

    def _fault_answer(self, fault: Fault, request: web.Request) -> web.Response:
        rid = str(uuid.uuid4())
        if fault.kind == "throttle" and self.cloud == "ec2":
            body = EC2_ERROR.format(code="RequestLimitExceeded", message="Request limit exceeded.", rid=rid)
            return web.Response(status=503, body=body.encode(), content_type="text/xml", charset="UTF-8")
        if fault.kind == "throttle":
            host = "ecs.aliyuncs.com" if request.headers.get("x-acs-version") == "2014-05-26" else "vpc.aliyuncs.com"
            error = {"RequestId": rid.upper(), "HostId": host, "Code": "Throttling.User",
                     "Message": "Request was denied due to user flow control.",
                     "Recommend": "https://api.aliyun.com/troubleshoot?q=Throttling.User"}
            return web.Response(status=400, text=json.dumps(error), content_type="application/json")
        if fault.kind == "html":
            title = f"{fault.status} {HTTPStatus(fault.status).phrase}"
            page = fault.body or (PORTAL_PAGE if fault.status < 400 else ERROR_PAGE.format(title=title))
            return web.Response(status=fault.status, text=page, content_type="text/html")
        return web.Response(status=500 if fault.kind == "http500" else 503, text=fault.body)


def _params(request: web.Request, body: bytes) -> list[tuple[str, str]]:
    """The query's and a form body's parameters, in order."""
    pairs = list(request.query.items())
    if request.content_type == "application/x-www-form-urlencoded" and body:
        pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return pairs


def _attempt(request: web.Request) -> int | None:
    value = request.headers.get("x-acs-retry-attempts")
    if value is None:
        sdk = dict(p.strip().partition("=")[::2] for p in request.headers.get("amz-sdk-request", "").split(";"))
        value = sdk.get("attempt")
    return int(value) if value is not None and value.isdigit() else None


def _response(answer: _Answer) -> web.Response:
    return web.Response(status=answer.status, reason=answer.reason, headers=answer.headers, body=answer.body)


def _reset(request: web.Request) -> web.Response:
    """Reset the client's connection (RST: linger 0, then abort). The response returned goes nowhere."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=499)
