"""A lean HTTP/1.1 client for health probes, on asyncio: one request, one response, strict limits.

The ``http`` check used aiohttp's client, whose ``ClientResponse.start`` loops over interim (1xx) responses without
limit: a peer streaming ``100 Continue`` for ever had ~10,000 of them parsed per 256 KiB read, in one callback, and
stalled the event loop (every other check with it). aiohttp has no hook to bound that loop, and a health probe needs
little of a general client (no pool, no cookies, no redirects), so the probe speaks the protocol itself:

* one request per connection, ``Connection: close``, no request body (a POST says ``Content-Length: 0``);
* the response head within limits: lines of at most :data:`MAX_LINE` bytes, at most :data:`MAX_HEADERS` header
  fields, at most :data:`MAX_INTERIM` interim responses before the final one;
* a body read only when asked, and never more than asked (``Content-Length``, ``chunked`` or until the close), a
  ``gzip`` or ``deflate`` one inflated no further than that either (a gzip bomb costs what the cap allows);
* a yield to the event loop every :data:`YIELD_LINES` lines or :data:`YIELD_BYTES` bytes parsed, so that a peer
  that sends faster than we parse cannot hold the loop: the timeout and the other checks run on time.

A daemon runs thousands of these a second, so each costs as little as it can: the parser works on the bytes
received so far (a whole head in one packet is parsed without a wait), and the connection is the cheapest the event
loop offers. On asyncio's own loop, plain HTTP to an IP address (the common case) is a bare socket read by a reader
callback (:class:`_SocketWire`): no transport, no stream objects, no resolution; TLS and names, and every request
on other loops (uvloop, whose native transports are cheaper), use a transport and a minimal protocol
(:class:`_StreamWire`). Both stop reading while more than :data:`HIGH_WATER` bytes wait to be parsed. A name's
addresses are tried as aiohttp does (Happy Eyeballs, 250 ms apart) on every loop: uvloop's ``create_connection``
does not, so the probe races them itself there (:func:`_happy_eyeballs`).

Errors: :class:`ConnectError` (no connection: refused, unresolvable, unreachable, the TLS handshake or the
certificate failed), :class:`BadResponse` (the answer broke the protocol or a limit; its text is the check's detail),
or any other :class:`OSError` from the connection once made (a reset).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import itertools
import re
import socket
import ssl
import zlib
from asyncio import staggered
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit

from eipfailover.checks import sockets

MAX_LINE = 8190
"""The longest status or header line (without its CRLF), as aiohttp and most servers have it."""
MAX_HEADERS = 128
"""The most header fields in one response head (interim responses count on their own)."""
MAX_INTERIM = 8
"""The most interim (1xx) responses before the final one; a server has no reason to send more than one or two."""
YIELD_LINES = 32
YIELD_BYTES = 64 * 1024
"""Parsed since the last yield to the event loop (head lines or body bytes, raw or inflated): yield again."""
READ_SIZE = 64 * 1024
HIGH_WATER = 64 * 1024
"""Received bytes waiting to be parsed above which the connection stops reading until the parser needs more."""
COMPACT_AFTER = 16 * 1024
"""Parsed bytes kept at the front of the buffer at most (past this, once they are most of it, they are dropped)."""
HAPPY_EYEBALLS_DELAY = 0.25
"""Between the connection attempts to a name's addresses (RFC 8305's recommended 250 ms, as aiohttp)."""
_LIMIT = MAX_LINE + 1
"""The longest line with its CR (a bare LF line may be one byte longer: as asyncio's ``StreamReader`` has it)."""
DEFAULT_PORTS = {"http": 80, "https": 443}

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE = re.compile(rb"HTTP/\d\.\d ([0-9]{3})(?: (.*))?")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_BAD_VALUE = re.compile(r"[\r\n\0]")
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_FRAMING = frozenset({"connection", "content-length", "transfer-encoding"})
"""Request headers the probe sets itself (or leaves out): a configured one is ignored, it would break the framing."""

# The wording of the aiohttp-based check for these three failures, kept: operators' alerts and tests match on it.
TOO_MANY_HEADERS = f"ClientResponseError: 400, message='Too many headers received' (more than {MAX_HEADERS})"
DISCONNECTED_IN_HEAD = "ServerDisconnectedError: the connection closed before the end of the response head"
DISCONNECTED_IN_BODY = "ServerDisconnectedError: the connection closed before the end of the body"


def _line_too_long(start: bytes) -> str:
    message = f"Got more than {MAX_LINE} bytes when reading: {start!r}..."
    return f"ClientResponseError: 400, message={message!r}"


class ConnectError(Exception):
    """No connection to ``host:port``: ``error`` says why (``ssl.SSLCertVerificationError`` for a certificate)."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.error = error
        super().__init__(f"cannot connect to {self.where}: {error}")


class BadResponse(Exception):
    """The answer is not HTTP/1.x as a probe accepts it; the text is the check's detail."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: what to connect to and what to ask for."""

    scheme: str
    host: str
    """To connect to: an IP address (IPv6 without brackets) or a name in ASCII (IDNA), lower case."""
    port: int
    authority: str
    """The ``Host`` header: the host, bracketed if IPv6, with the port unless it is the scheme's default."""
    path: str
    """The request target: the path (``/`` if none) and the query, percent-encoded; never the fragment."""
    userinfo: tuple[str, str] | None = None
    literal: bool = False
    """``host`` is an IP address (no name to resolve)."""
    address: sockets.Address | None = None
    """The socket address of an IP address (None for a name, or a zone that names no interface here)."""


def parse_url(url: str) -> Target:
    """The :class:`Target` of an ``http://`` or ``https://`` URL; ``ValueError`` if it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"not an http or https URL: {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in URL {url!r}")
    port = parts.port or DEFAULT_PORTS[parts.scheme]  # .port raises ValueError for a bad one
    name = host
    try:
        literal = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        literal = None
        if not host.isascii():
            host = name = host.encode("idna").decode("ascii")
    if literal is not None and literal.version == 6:
        name = f"[{host}]"  # a zone stays as the URL writes it (RFC 6874: %25); the connect takes it decoded
        host = unquote(host)
    authority = name if port == DEFAULT_PORTS[parts.scheme] else f"{name}:{port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_QUERY_SAFE)
    userinfo = None
    if parts.username is not None:
        userinfo = (unquote(parts.username), unquote(parts.password or ""))
    return Target(parts.scheme, host, port, authority, path, userinfo, literal is not None,
                  sockets.numeric_address(host, port) if literal is not None else None)


def build_request(method: str, target: Target, headers: Mapping[str, str], user_agent: str) -> bytes:
    """The request head: the default fields, then the configured ones (which replace a default of the same name,
    except the framing: ``Connection: close`` and, for a POST, ``Content-Length: 0``). ``ValueError`` for a header
    that is not a valid field (a name that is not a token, a value with CR, LF or NUL)."""
    fields: dict[str, tuple[str, str]] = {
        "host": ("Host", target.authority),
        "user-agent": ("User-Agent", user_agent),
        "accept": ("Accept", "*/*"),
        "accept-encoding": ("Accept-Encoding", "gzip, deflate"),
    }
    if target.userinfo is not None:
        credentials = base64.b64encode(":".join(target.userinfo).encode("utf-8")).decode("ascii")
        fields["authorization"] = ("Authorization", f"Basic {credentials}")
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name.encode("utf-8")):
            raise ValueError(f"invalid header name {name!r}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for header {name!r}: it holds CR, LF or NUL")
        if name.lower() not in _FRAMING:
            fields[name.lower()] = (name, value.strip())
    fields["connection"] = ("Connection", "close")
    if method == "POST":
        fields["content-length"] = ("Content-Length", "0")
    lines = [f"{method} {target.path} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.values()), "", ""]
    return "\r\n".join(lines).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Response:
    """The final response's head."""

    status: int
    reason: str
    headers: dict[str, str]
    """Lower-case names; a repeated field's values joined with ``", "``."""


class _Pace:
    """Counts the work done since the last yield to the event loop, and says when it is enough."""

    __slots__ = ("bytes", "lines")

    def __init__(self) -> None:
        self.lines = self.bytes = 0

    def due(self, nbytes: int, lines: int = 0) -> bool:
        """Count ``nbytes`` and ``lines``; True (and start counting again) when the caller must yield now."""
        self.lines += lines
        self.bytes += nbytes
        if self.lines >= YIELD_LINES or self.bytes >= YIELD_BYTES:
            self.lines = self.bytes = 0
            return True
        return False


class _Wire:
    """The receiving end of a connection: the bytes that have arrived and are not parsed yet (``buffer`` from
    ``pos``), the end of the stream, and the error that ended it; :meth:`more` waits for more."""

    __slots__ = ("buffer", "eof", "error", "pos")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.pos = 0
        self.eof = False
        self.error: BaseException | None = None

    def send(self, data: bytes) -> Awaitable[None] | None:
        """Send ``data``; an awaitable if the caller must wait for it."""
        raise NotImplementedError

    async def more(self) -> None:
        """Wait until more bytes, the end of the stream or an error arrive (at once if the stream has ended)."""
        raise NotImplementedError

    def close(self) -> None:
        """Abort the connection."""
        raise NotImplementedError

    def consume(self, size: int) -> None:
        """``size`` more bytes parsed; drop the parsed ones once they are most of the buffer."""
        self.pos += size
        if self.pos > COMPACT_AFTER and 2 * self.pos > len(self.buffer):
            self._drop_read()

    def _drop_read(self) -> None:
        """Forget the bytes already parsed."""
        if self.pos:
            del self.buffer[:self.pos]
            self.pos = 0

    def line(self) -> bytes | None:
        """The next line without its line ending (CRLF, or a bare LF), if all of it has arrived; None if not yet.
        ``BadResponse`` for a line longer than the limit, the stream's error if it ended in one."""
        if self.error is not None:
            raise self.error
        buffer, pos = self.buffer, self.pos
        end = buffer.find(b"\n", pos, pos + _LIMIT + 1)
        if end < 0:
            if len(buffer) - pos > _LIMIT:
                raise BadResponse(_line_too_long(bytes(buffer[pos:pos + 40])))
            return None
        stop = end - 1 if end > pos and buffer[end - 1] == 13 else end  # 13: CR
        line = bytes(buffer[pos:stop])
        self.consume(end + 1 - pos)
        return line


class _StreamWire(_Wire, asyncio.Protocol):
    """A transport's protocol (TLS, names, other loops than asyncio's). Reading pauses while more than
    :data:`HIGH_WATER` bytes wait to be parsed; :meth:`more` resumes it."""

    __slots__ = ("paused", "transport", "waiter")

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's are not subclasses)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.paused and len(self.buffer) - self.pos > HIGH_WATER and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        self.eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def more(self) -> None:
        if self.eof:
            return
        self._drop_read()
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        assert self.transport is not None
        self.transport.abort()


class _SocketWire(_Wire):
    """A bare socket on asyncio's own loop (plain HTTP to an IP address), read by a reader callback of the loop's
    while the parser waits for more (and until more than :data:`HIGH_WATER` bytes wait to be parsed): what a
    transport does, without building one."""

    __slots__ = ("fd", "loop", "reading", "sock", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        super().__init__()
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.reading = False
        self.waiter: asyncio.Future[None] | None = None

    def send(self, data: bytes) -> Awaitable[None] | None:
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        return None if sent == len(data) else self.loop.sock_sendall(self.sock, data[sent:])

    def _readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # a reset
            self.error = exc
            data = b""
        if data:
            self.buffer += data
            if len(self.buffer) - self.pos > HIGH_WATER:
                self._stop_reading()
        else:
            self.eof = True
            self._stop_reading()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    async def more(self) -> None:
        if self.eof:
            return
        self._drop_read()
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.fd, self._readable)
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        self._stop_reading()
        self.sock.close()


async def _happy_eyeballs(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A socket connected to one of ``host``'s addresses, tried as asyncio's ``create_connection`` does with
    ``happy_eyeballs_delay`` (families interleaved, a new attempt every :data:`HAPPY_EYEBALLS_DELAY` or at once when
    one fails, the first to connect wins; the same error if none does), for event loops whose ``create_connection``
    tries them one after the other (uvloop): a first address that does not answer would take the whole timeout."""
    infos = await _resolve(loop, host, port)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    families: dict[int, list[Any]] = {}
    for info in infos:
        families.setdefault(info[0], []).append(info)
    ordered = [i for row in itertools.zip_longest(*families.values()) for i in row if i is not None]

    async def attempt(info: Any) -> socket.socket:
        family, kind, proto, _, address = info
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException:  # cancelled too (another attempt won)
            sock.close()
            raise
        return sock

    winner, _, raised = await staggered.staggered_race([functools.partial(attempt, i) for i in ordered],
                                                       HAPPY_EYEBALLS_DELAY, loop=loop)
    if winner is not None:
        return cast(socket.socket, winner)
    errors = [e for e in raised if e is not None]
    if not all(isinstance(e, OSError) for e in errors):
        raise next(e for e in errors if not isinstance(e, OSError))
    if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):  # as asyncio words it
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Any]:
    """``host``'s addresses for :func:`_happy_eyeballs` (a seam for the tests)."""
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class Connection:
    """One connection for one exchange. Use as ``async with await Connection.open(...) as conn``, or call
    :meth:`close` when done: that aborts the connection (there is nothing to say to a server once its answer is
    judged)."""

    __slots__ = ("_pace", "_wire")

    def __init__(self, wire: _Wire) -> None:
        self._wire = wire
        self._pace = _Pace()

    @classmethod
    async def open(cls, target: Target, tls: ssl.SSLContext | None) -> Connection:
        """Connect (to a name's addresses as aiohttp does: Happy Eyeballs, 250 ms apart) and, for https, complete
        the TLS handshake with ``tls`` for the URL's host. ``ConnectError`` if that fails."""
        loop = asyncio.get_running_loop()
        server_hostname = target.host if tls is not None else None
        wire: _Wire
        try:
            if target.address is not None and tls is None and sockets.bare_sockets(loop):
                wire = _SocketWire(loop, await sockets.connect(loop, target.address))
            elif target.literal:
                _, wire = await loop.create_connection(_StreamWire, target.host, target.port, ssl=tls,
                                                       server_hostname=server_hostname)
            elif isinstance(loop, asyncio.BaseEventLoop):
                _, wire = await loop.create_connection(
                    _StreamWire, target.host, target.port, ssl=tls, server_hostname=server_hostname,
                    happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
            else:  # another loop (uvloop) would try a name's addresses one after the other
                sock = await _happy_eyeballs(loop, target.host, target.port)
                try:
                    _, wire = await loop.create_connection(_StreamWire, sock=sock, ssl=tls,
                                                           server_hostname=server_hostname)
                except BaseException:
                    sock.close()
                    raise
        except OSError as exc:  # ssl.SSLError and socket.gaierror too
            raise ConnectError(target.host, target.port, exc) from exc
        except UnicodeError as exc:  # a name the resolver cannot even encode (a label over 63 characters)
            raise ConnectError(target.host, target.port, OSError(f"invalid host name ({exc})")) from exc
        return cls(wire)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._wire.close()

    async def exchange(self, request: bytes) -> Response:
        """Send ``request``; read and return the final response's head, skipping at most :data:`MAX_INTERIM`
        interim responses."""
        sending = self._wire.send(request)
        if sending is not None:
            await sending
        interim = 0
        while True:
            line = self._wire.line()
            if line is None:
                line = await self._line()
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                raise BadResponse(f"invalid status line: {line[:60]!r}")
            status, reason = int(match[1]), (match[2] or b"").decode("latin-1").strip()
            if self._pace.due(len(line) + 2, 1):
                await asyncio.sleep(0)
            headers = await self._headers()
            if not 100 <= status < 200 or status == 101:  # 101 (we ask for no upgrade) is final, and not expected
                _content_length(headers)  # a broken framing is a broken answer, body read or not
                return Response(status, reason, headers)
            interim += 1
            if interim > MAX_INTERIM:
                what = f"HTTP {status} {reason}".rstrip()
                raise BadResponse(f"more than {MAX_INTERIM} interim responses ({what}), no final one")

    async def read_body(self, response: Response, limit: int, *, head: bool = False) -> bytes:
        """At most ``limit`` bytes of the body (inflated if it is gzip or deflate): all of it if shorter. Empty for
        a HEAD (``head``) and the statuses that have no body."""
        if head or response.status in (204, 304) or response.status < 200:
            return b""
        decoder = _Decoder(response.headers.get("content-encoding", ""), limit)
        coding = response.headers.get("transfer-encoding")
        if coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() == "chunked":
                await self._chunked(decoder)
            else:
                await self._raw(decoder, None)  # another coding: the body ends with the connection
            return decoder.body()
        await self._raw(decoder, _content_length(response.headers))
        return decoder.body()

    # --- the head ------------------------------------------------------------------------------------------------

    async def _line(self, closed: str = DISCONNECTED_IN_HEAD) -> bytes:
        """The next line, without its line ending, once it has arrived; ``BadResponse(closed)`` at the end of the
        stream. The caller counts it (:class:`_Pace`)."""
        wire = self._wire
        while (line := wire.line()) is None:
            if wire.eof:
                raise BadResponse(closed)
            await wire.more()
        return line

    async def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        count, last = 0, ""
        wire, pace = self._wire, self._pace
        while True:
            line = wire.line()
            if line is None:
                line = await self._line()
            if pace.due(len(line) + 2, 1):
                await asyncio.sleep(0)
            if not line:
                return headers
            count += 1  # a folded line counts as a field: it costs as much
            if count > MAX_HEADERS:
                raise BadResponse(TOO_MANY_HEADERS)
            if line[:1] in (b" ", b"\t") and last:  # obsolete line folding: part of the previous value
                headers[last] += " " + line.strip().decode("latin-1")
                continue
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise BadResponse(f"invalid header line: {line[:60]!r}")
            last = name.decode("ascii").lower()
            text = value.strip().decode("latin-1")
            headers[last] = f"{headers[last]}, {text}" if last in headers else text

    # --- the body ------------------------------------------------------------------------------------------------

    async def _read(self, size: int) -> bytes:
        """At most ``size`` bytes, once some have arrived; empty at the end of the stream."""
        wire = self._wire
        while True:
            if wire.error is not None:
                raise wire.error
            if len(wire.buffer) > wire.pos:
                data = bytes(wire.buffer[wire.pos:wire.pos + size])
                wire.consume(len(data))
                return data
            if wire.eof:
                return b""
            await wire.more()

    async def _raw(self, decoder: _Decoder, size: int | None) -> None:
        """Feed ``decoder`` ``size`` bytes (or all until the connection closes) or until it has enough."""
        left = size
        while not decoder.full and (left is None or left > 0):
            data = await self._read(READ_SIZE if left is None else min(READ_SIZE, left))
            if not data:
                if left is None:
                    return
                raise BadResponse(DISCONNECTED_IN_BODY)
            if left is not None:
                left -= len(data)
            if self._pace.due(decoder.feed(data)):
                await asyncio.sleep(0)

    async def _body_line(self) -> bytes:
        line = await self._line(DISCONNECTED_IN_BODY)
        if self._pace.due(len(line) + 2, 1):
            await asyncio.sleep(0)
        return line

    async def _chunked(self, decoder: _Decoder) -> None:
        while True:  # until the last chunk, or until the decoder has enough
            line = await self._body_line()
            size_text = line.partition(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise BadResponse(f"invalid chunk size: {size_text[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                return  # the trailer, if any, is of no interest
            await self._raw(decoder, size)
            if decoder.full:
                return
            if await self._body_line():
                raise BadResponse("invalid chunked body: no CRLF after a chunk")


def _content_length(headers: Mapping[str, str]) -> int | None:
    """The body's length from ``Content-Length`` (None without one); ``BadResponse`` if it is not a number, or
    several different ones."""
    length = headers.get("content-length")
    if length is None:
        return None
    values = {value.strip() for value in length.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(size := values.pop()):
        raise BadResponse(f"invalid Content-Length: {length!r}")
    return int(size)


class _Decoder:
    """Collects at most ``limit`` bytes of a body, inflating ``gzip``/``x-gzip``/``deflate`` (zlib-wrapped or raw,
    as servers send both) no further than that. Other codings are kept as they come."""

    def __init__(self, content_encoding: str, limit: int) -> None:
        self.encoding = content_encoding.strip().lower()
        self.limit = limit
        self.raw_limit = 2 * limit + READ_SIZE
        """Compressed input that inflates to nothing is read no further than this either."""
        self.raw = 0
        self.out = bytearray()
        self._inflate: zlib._Decompress | None = None
        self._compressed = self.encoding in ("gzip", "x-gzip", "deflate")

    @property
    def full(self) -> bool:
        return len(self.out) >= self.limit or self.raw >= self.raw_limit

    def body(self) -> bytes:
        return bytes(self.out[:self.limit])

    def feed(self, data: bytes) -> int:
        """Take ``data``; return how many bytes that was, read and inflated (the work done)."""
        size = len(data)
        self.raw += size
        if not self._compressed:
            self.out += data[:self.limit - len(self.out)]
            return size
        if self._inflate is None:
            if self.encoding == "deflate" and data[0] & 0x0F != 8:  # not a zlib header: raw deflate
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            else:
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if self.encoding != "deflate" else
                                                   zlib.MAX_WBITS)
        before = len(self.out)
        try:
            while data and len(self.out) < self.limit and not self._inflate.eof:
                self.out += self._inflate.decompress(data, self.limit - len(self.out))
                data = self._inflate.unconsumed_tail
        except zlib.error as exc:
            raise BadResponse(f"cannot decode the {self.encoding} body: {exc}") from None
        return size + len(self.out) - before
