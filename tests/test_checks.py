"""Checks against real local servers and real processes. A check never raises: it reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from eipfailover import __version__
from eipfailover.checks import httpwire
from eipfailover.checks.base import CheckContext
from eipfailover.checks.exec import ExecCheck
from eipfailover.checks.http import HttpCheck
from eipfailover.checks.tcp import TcpCheck
from eipfailover.config import ExecCheckConfig, HttpCheckConfig
from eipfailover.model import Binding, CheckStatus

from .conftest import HealthServer
from .fakes import FakeProvider


def free_port() -> int:
    """A port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_check(url: str, timeout: float = 1.0, **kw: Any) -> HttpCheck:
    return HttpCheck("http", timeout, HttpCheckConfig(type="http", url=url, **kw))


async def test_tcp_ok_and_refused(health_servers: list[HealthServer]) -> None:
    ok = await TcpCheck("tcp", 1.0, "127.0.0.1", health_servers[0].port).run()
    assert ok.status is CheckStatus.OK
    port = free_port()
    refused = await TcpCheck("tcp", 1.0, "127.0.0.1", port).run()
    assert refused.status is CheckStatus.FAIL
    assert refused.detail == f"connection refused by 127.0.0.1:{port}"


async def test_tcp_timeout_on_a_full_backlog() -> None:
    """A listener that never accepts (backlog filled) makes connect hang: the timeout must end it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        for _ in range(8):  # fill the SYN/accept queue so further connects hang
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        try:
            start = time.monotonic()
            result = await TcpCheck("tcp", 0.3, "127.0.0.1", port).run()
            elapsed = time.monotonic() - start
        finally:
            for c in fillers:
                c.close()
    assert result.status is CheckStatus.TIMEOUT
    assert result.detail == "no answer within 0.3s"
    assert 0.25 < elapsed < 1.0


async def test_http_ok(health_servers: list[HealthServer]) -> None:
    result = await http_check(health_servers[0].url).run()
    assert (result.status, result.detail) == (CheckStatus.OK, "")
    assert 0 < result.latency < 1


async def test_http_500(health_servers: list[HealthServer]) -> None:
    health_servers[0].status = 500
    result = await http_check(health_servers[0].url).run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, "HTTP 500, expected 200")


async def test_http_expected_statuses(health_servers: list[HealthServer]) -> None:
    health_servers[0].status = 204
    assert (await http_check(health_servers[0].url, expect_status=[200, 204]).run()).ok
    result = await http_check(health_servers[0].url, expect_status=[200, 202]).run()
    assert result.detail == "HTTP 204, expected 200/202"


async def test_http_body(health_servers: list[HealthServer]) -> None:
    server = health_servers[0]
    server.body = '{"status": "degraded"}'
    wrong = await http_check(server.url, body_contains='"status": "ok"').run()
    assert (wrong.status, wrong.detail) == (CheckStatus.FAIL, "body does not contain '\"status\": \"ok\"'")
    regex = await http_check(server.url, body_regex=r'"status":\s*"(ok|healthy)"').run()
    assert regex.status is CheckStatus.FAIL
    assert regex.detail.startswith("body does not match /")
    server.body = '{"status": "healthy"}'
    assert (await http_check(server.url, body_regex=r'"status":\s*"(ok|healthy)"').run()).ok


async def test_http_body_read_is_bounded(health_servers: list[HealthServer]) -> None:
    server = health_servers[0]
    server.body = "x" * 100_000 + "MARKER"
    assert not (await http_check(server.url, body_contains="MARKER", max_body_bytes=1000).run()).ok
    assert (await http_check(server.url, body_contains="MARKER", max_body_bytes=200_000).run()).ok


async def test_http_refused() -> None:
    port = free_port()
    result = await http_check(f"http://127.0.0.1:{port}/").run()
    assert result.status is CheckStatus.FAIL
    assert result.detail == f"connection refused by 127.0.0.1:{port}"


async def test_http_hanging_server_honours_timeout(health_servers: list[HealthServer]) -> None:
    server = health_servers[0]
    server.hang = True
    start = time.monotonic()
    result = await http_check(server.url, timeout=0.4).run()
    elapsed = time.monotonic() - start
    assert (result.status, result.detail) == (CheckStatus.TIMEOUT, "no answer within 0.4s")
    assert server.hits == 1  # the request was accepted: the server hangs, it does not refuse
    assert 0.35 < elapsed < 1.0
    assert 0.35 < result.latency < 1.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_url(ca: trustme.CA) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="secure ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}/healthz"
    await runner.cleanup()


async def test_tls_verified_with_ca_file(tls_url: str, ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    assert (await http_check(tls_url, ca_file=ca_file, body_contains="secure").run()).ok


async def test_tls_untrusted_certificate_fails(tls_url: str) -> None:
    result = await http_check(tls_url).run()
    assert result.status is CheckStatus.FAIL
    assert result.detail.startswith("TLS certificate rejected")


async def test_tls_verify_off(tls_url: str) -> None:
    assert (await http_check(tls_url, verify_tls=False).run()).ok


# --- the http probe's wire protocol, against raw local servers -------------------------------------------------------

Answer = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """An asyncio server that reads each request head, records it, and answers with ``answer``: fixed bytes (then
    it closes the connection), or a coroutine that writes what it likes until the client goes away."""

    def __init__(self, answer: Answer, host: str) -> None:
        self.answer = answer
        self.host = host
        self.port = 0
        self.requests: list[bytes] = []
        self.handlers: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            if isinstance(self.answer, bytes):
                writer.write(self.answer)
                writer.close()  # once all is sent
                await writer.wait_closed()
            else:
                await self.answer(writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client gave up: what the hostile answers wait for
        finally:
            if not writer.transport.is_closing():
                writer.transport.abort()
            self.handlers.discard(task)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/healthz"

    @property
    def request_lines(self) -> list[str]:
        return self.requests[-1].decode().split("\r\n")[:-2]


@contextlib.asynccontextmanager
async def raw_server(answer: Answer, host: str = "127.0.0.1",
                     tls: ssl.SSLContext | None = None) -> AsyncIterator[RawServer]:
    server = RawServer(answer, host)
    listener = await asyncio.start_server(server.handle, host, 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in list(server.handlers):
            task.cancel()
        await asyncio.gather(*server.handlers, return_exceptions=True)
        await listener.wait_closed()


def response(body: bytes = b"ok", status: str = "200 OK", headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status.encode(), len(body), headers, body)


INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_http_request_head() -> None:
    """One request per check, closed after: the configured method and headers, Host with the port, our User-Agent;
    a POST says it has no body."""
    async with raw_server(response()) as server:
        assert (await http_check(server.url + "?a=1&b=x%20y", headers={"X-Probe": "yes"}).run()).ok
        request = server.request_lines
        assert request[0] == "GET /healthz?a=1&b=x%20y HTTP/1.1"
        headers = dict(line.split(": ", 1) for line in request[1:])
        assert headers["Host"] == f"127.0.0.1:{server.port}"
        assert headers["User-Agent"] == f"eipfailover/{__version__}"
        assert headers["Connection"] == "close"
        assert headers["X-Probe"] == "yes"
        assert "Content-Length" not in headers
        assert (await http_check(server.url, method="POST", headers={"host": "health.internal"}).run()).ok
        request = server.request_lines
        assert request[0] == "POST /healthz HTTP/1.1"
        assert "Content-Length: 0" in request
        assert "host: health.internal" in request
        assert not [line for line in request if line.startswith("Host:")]


def test_http_url_forms() -> None:
    """Default ports are left out of Host; IPv6 literals are bracketed there and not to connect; the path is
    percent-encoded; credentials in the URL become basic authorisation."""
    target = httpwire.parse_url("http://Health.Example:80")
    assert (target.host, target.port, target.authority, target.path) == ("health.example", 80, "health.example", "/")
    target = httpwire.parse_url("https://[::1]/a b?q=ü#frag")
    assert (target.host, target.port, target.authority, target.path) == ("::1", 443, "[::1]", "/a%20b?q=%C3%BC")
    assert httpwire.parse_url("https://[2001:db8::1]:8443/").authority == "[2001:db8::1]:8443"
    assert [httpwire.parse_url(url).literal for url in ("http://[::1]/", "http://10.0.0.1/", "http://h/")] == [
        True, True, False]  # a name is resolved, and its addresses tried as Happy Eyeballs does
    request = httpwire.build_request("GET", httpwire.parse_url("http://user:p%40ss@h:8080/"), {}, "ua")
    assert b"\r\nAuthorization: Basic dXNlcjpwQHNz\r\n" in request
    with pytest.raises(ValueError, match="header"):
        httpwire.build_request("GET", target, {"X-Bad": "a\r\nInjected: 1"}, "ua")


@pytest.mark.parametrize(("url", "headers", "detail"), [
    ("http://127.0.0.1:1/", {"X-Bad": "a\r\nInjected: 1"}, "ValueError: invalid value for header 'X-Bad'"),
    ("http://127.0.0.1:1/", {"Bad Name": "x"}, "ValueError: invalid header name 'Bad Name'"),
    ("http://127.0.0.1:99999/", {}, "ValueError: Port out of range"),
])
async def test_http_config_that_cannot_be_sent_is_an_error_not_a_crash(url: str, headers: dict[str, str],
                                                                          detail: str) -> None:
    """The config refuses these (tests/test_config.py); a check built past it still reports, never raises."""
    config = HttpCheckConfig.model_construct(type="http", url=url, headers=headers, **{
        k: f.default for k, f in HttpCheckConfig.model_fields.items() if k not in ("type", "url", "headers")
        and f.default_factory is None})
    result = await HttpCheck("http", 1.0, config).run()
    assert result.status is CheckStatus.ERROR
    assert result.detail.startswith(detail)


@pytest.mark.parametrize("interim", [1, httpwire.MAX_INTERIM])
async def test_http_interim_responses_then_the_final_one(interim: int) -> None:
    processing = b"HTTP/1.1 102 Processing\r\nX-Progress: 1\r\n\r\n"
    async with raw_server((INTERIM + processing) * (interim // 2) + INTERIM * (interim % 2) + response()) as server:
        result = await http_check(server.url, body_contains="ok").run()
    assert (result.status, result.detail) == (CheckStatus.OK, "")


async def test_http_too_many_interim_responses_fail_at_once() -> None:
    async with raw_server(INTERIM * (httpwire.MAX_INTERIM + 1) + response()) as server:
        result = await http_check(server.url).run()
    assert (result.status, result.detail) == (
        CheckStatus.FAIL, f"more than {httpwire.MAX_INTERIM} interim responses (HTTP 100 Continue), no final one")


async def test_http_endless_interim_responses_fail_fast_and_let_the_loop_run() -> None:
    """A peer that streams interim responses as fast as the socket takes them: the check fails long before its
    timeout, and a timer on the same loop is never held up."""
    async def flood(writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(INTERIM * 4096)
            await writer.drain()

    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    async with raw_server(flood) as server:
        ticking = asyncio.create_task(ticker())
        results = [await http_check(server.url, timeout=5.0).run() for _ in range(20)]
        done.set()
        await ticking
    assert {r.detail for r in results} == {
        f"more than {httpwire.MAX_INTERIM} interim responses (HTTP 100 Continue), no final one"}
    assert max(r.latency for r in results) < 1.0
    assert max(lags) < 0.05


async def test_http_header_line_limit() -> None:
    longest = b"X-Long: " + b"a" * (httpwire.MAX_LINE - 8)
    async with raw_server(response(headers=longest + b"\r\n")) as server:
        assert (await http_check(server.url).run()).ok
    async with raw_server(response(headers=longest + b"a\r\n")) as server:
        result = await http_check(server.url).run()
    assert result.status is CheckStatus.FAIL
    assert result.detail.startswith(
        'ClientResponseError: 400, message="Got more than 8190 bytes when reading: b\'X-Long: aaa')
    async with raw_server(b"HTTP/1.1 200 " + b"K" * 10_000 + b"\r\n\r\n") as server:
        result = await http_check(server.url).run()
    assert result.detail.startswith('ClientResponseError: 400, message="Got more than 8190 bytes when reading: b\'HTTP')


async def test_http_header_count_limit() -> None:
    def filler(n: int) -> bytes:
        return b"".join(b"X-Filler-%d: %d\r\n" % (i, i) for i in range(n))

    async with raw_server(response(headers=filler(httpwire.MAX_HEADERS - 1))) as server:  # and Content-Length
        assert (await http_check(server.url).run()).ok
    too_many = (CheckStatus.FAIL, f"ClientResponseError: 400, message='Too many headers received' (more than "
                                  f"{httpwire.MAX_HEADERS})")
    async with raw_server(response(headers=filler(httpwire.MAX_HEADERS))) as server:
        result = await http_check(server.url).run()
    assert (result.status, result.detail) == too_many
    folded = b"X-Folded: a\r\n" + b" more\r\n" * httpwire.MAX_HEADERS  # folded lines count too
    async with raw_server(response(b"healthy", headers=folded)) as server:
        result = await http_check(server.url).run()
    assert (result.status, result.detail) == too_many
    async with raw_server(response(b"healthy", headers=b"X-Folded: a\r\n\tb\r\n")) as server:
        assert (await http_check(server.url, body_contains="healthy").run()).ok


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/pl",
    b"HTTP/1.1 200 OK\r\n",
    b"",
])
async def test_http_server_closes_mid_head(answer: bytes) -> None:
    async with raw_server(answer) as server:
        result = await http_check(server.url).run()
    assert (result.status, result.detail) == (
        CheckStatus.FAIL, "ServerDisconnectedError: the connection closed before the end of the response head")


@pytest.mark.parametrize(("answer", "detail"), [
    (b"HTTP/1.1 OK\r\n\r\n", "invalid status line: b'HTTP/1.1 OK'"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "invalid status line: b'SSH-2.0-OpenSSH_9.2'"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "invalid header line: b'no colon here'"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef", "invalid Content-Length: '5, 6'"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nabcdef", "invalid Content-Length: '\xb2'"),
])
async def test_http_malformed_responses(answer: bytes, detail: str) -> None:
    async with raw_server(answer) as server:
        result = await http_check(server.url, body_contains="abc").run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, detail)


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"


async def test_http_chunked_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with raw_server(head + chunked(b'{"status": "hea', b"lth", b'y"}')) as server:
        assert (await http_check(server.url, body_contains='"status": "healthy"').run()).ok
        result = await http_check(server.url, body_regex="degraded").run()
        assert (result.status, result.detail) == (CheckStatus.FAIL, "body does not match /degraded/")
    async with raw_server(head + chunked(b"x" * 5000, b"MARKER")) as server:  # beyond max_body_bytes
        assert not (await http_check(server.url, body_contains="MARKER", max_body_bytes=5000).run()).ok
        assert (await http_check(server.url, body_contains="MARKER", max_body_bytes=5006).run()).ok
    async with raw_server(head + b"zz\r\nab\r\n0\r\n\r\n") as server:
        result = await http_check(server.url, body_contains="ab").run()
        assert (result.status, result.detail) == (CheckStatus.FAIL, "invalid chunk size: b'zz'")
    async with raw_server(head + b"10\r\nabc") as server:
        result = await http_check(server.url, body_contains="ab").run()
        assert (result.status, result.detail) == (
            CheckStatus.FAIL, "ServerDisconnectedError: the connection closed before the end of the body")


async def test_http_body_until_close_and_truncated_content_length() -> None:
    async with raw_server(b"HTTP/1.0 200 OK\r\n\r\nall is healthy") as server:
        assert (await http_check(server.url, body_contains="healthy").run()).ok
    async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhealthy") as server:
        result = await http_check(server.url, body_contains="healthy").run()
    assert (result.status, result.detail) == (
        CheckStatus.FAIL, "ServerDisconnectedError: the connection closed before the end of the body")


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("x-gzip", 31), ("deflate", 15), ("deflate", -15)])
async def test_http_compressed_body(encoding: str, wbits: int) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = compressor.compress(b"x" * 100_000 + b'{"status": "healthy"}') + compressor.flush()
    headers = b"Content-Encoding: %s\r\n" % encoding.encode()
    async with raw_server(response(body, headers=headers)) as server:
        assert (await http_check(server.url, body_contains="healthy", max_body_bytes=200_000).run()).ok
        assert not (await http_check(server.url, body_contains="healthy").run()).ok  # beyond 64 KiB inflated
        assert "Accept-Encoding: gzip, deflate" in server.request_lines
    async with raw_server(response(b"\x1f\x8b\x08garbage", headers=headers)) as server:
        result = await http_check(server.url, body_contains="healthy").run()
    assert result.status is CheckStatus.FAIL
    assert result.detail.startswith(f"cannot decode the {encoding} body: ")


async def test_http_gzip_bomb_is_inflated_no_further_than_the_cap() -> None:
    """A body that inflates to zeros for ever: the check reads max_body_bytes of it, and fails."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    more = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)

    async def bomb(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + block)
        while True:
            writer.write(more * 64)
            await writer.drain()

    async with raw_server(bomb) as server:
        result = await http_check(server.url, timeout=5.0, body_contains="healthy").run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, "body does not contain 'healthy'")
    assert result.latency < 1.0


async def test_http_head() -> None:
    """HEAD: the answer has a Content-Length and no body; the check neither waits for one nor reads one."""
    async def head_then_hold(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await asyncio.Event().wait()  # the connection stays open: ended by the client or the server's teardown

    async with raw_server(head_then_hold) as server:
        assert (await http_check(server.url, method="HEAD", timeout=5.0).run()).ok
        assert server.request_lines[0] == "HEAD /healthz HTTP/1.1"
        result = await http_check(server.url, method="HEAD", body_contains="ok", timeout=5.0).run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, "body does not contain 'ok'")
    assert result.latency < 1.0


async def test_http_status_only_does_not_read_the_body() -> None:
    async def endless_body(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000000000\r\n\r\n")
        while True:
            writer.write(b"x" * 65536)
            await writer.drain()

    async with raw_server(endless_body) as server:
        result = await http_check(server.url, timeout=5.0).run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, "HTTP 503, expected 200")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_http_ipv6_literal() -> None:
    async with raw_server(response(b"healthy"), host="::1") as server:
        assert (await http_check(server.url, body_contains="healthy").run()).ok
        assert f"Host: [::1]:{server.port}" in server.request_lines
        port = server.port
    result = await http_check(f"http://[::1]:{port}/").run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, f"connection refused by [::1]:{port}")


async def test_tls_hostname_is_verified(ca: trustme.CA, tmp_path: Path) -> None:
    """The certificate must name the URL's host: ``localhost`` here, not 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with raw_server(response(b"secure"), tls=context) as server:
        port = server.port
        assert (await http_check(f"https://localhost:{port}/", ca_file=ca_file, body_contains="secure").run()).ok
        assert f"Host: localhost:{port}" in server.request_lines
        result = await http_check(f"https://127.0.0.1:{port}/", ca_file=ca_file).run()
        assert result.status is CheckStatus.FAIL
        assert result.detail.startswith("TLS certificate rejected: [SSL: CERTIFICATE_VERIFY_FAILED]")
        assert "IP address mismatch" in result.detail
        assert (await http_check(f"https://127.0.0.1:{port}/", verify_tls=False, body_contains="secure").run()).ok


async def test_http_unresolvable_name() -> None:
    result = await http_check("http://eipfailover-test.invalid/").run()
    assert result.status is CheckStatus.FAIL
    assert result.detail.startswith("cannot connect to eipfailover-test.invalid:80: ")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def exec_check(argv: list[str], timeout: float = 5.0) -> ExecCheck:
    return ExecCheck("exec", timeout, argv, {})


async def test_exec_ok_and_fail() -> None:
    assert (await exec_check(py("pass")).run()).ok
    result = await exec_check(py("print('disk full'); raise SystemExit(3)")).run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, "exit status 3: disk full")


async def test_exec_drains_large_output() -> None:
    result = await exec_check(py("print('x' * 1_000_000); print('last'); raise SystemExit(1)")).run()
    assert result.detail == "exit status 1: last"


async def test_exec_missing_program() -> None:
    result = await exec_check(["/nonexistent/check"]).run()
    assert result.status is CheckStatus.ERROR
    assert result.detail == "cannot run /nonexistent/check: No such file or directory"


async def test_exec_gets_a_minimal_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in (("NOTIFY_SOCKET", "/run/systemd/notify"), ("AWS_SECRET_ACCESS_KEY", "do-not-leak"),
                        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "do-not-leak"),
                        ("CREDENTIALS_DIRECTORY", "/run/credentials/eipfailover.service"), ("LANG", "C.UTF-8")):
        monkeypatch.setenv(name, value)
    out = tmp_path / "env.json"
    config = ExecCheckConfig(type="exec", argv=py(f"import json, os; json.dump(dict(os.environ), "
                                                  f"open({str(out)!r}, 'w'))"), env={"ROLE": "db"})
    ctx = CheckContext(Binding(instance_id="i-a"), FakeProvider({}), None, "web", "web-a")  # type: ignore[arg-type]
    assert (await ExecCheck.from_config(config, "probe", 5.0, ctx).run()).ok
    env = json.loads(out.read_text())
    env.pop("LC_CTYPE", None)  # Python may add it for the C locale
    assert env == {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "ROLE": "db", "EIPFAILOVER_GROUP": "web",
                   "EIPFAILOVER_TARGET": "web-a", "EIPFAILOVER_CHECK": "probe"}


@pytest.mark.parametrize("parent", ["hangs", "exits"])
async def test_exec_timeout_holds_when_a_child_leaves_the_process_group(tmp_path: Path, parent: str) -> None:
    pidfile = tmp_path / "escaped.pid"
    script = ("import subprocess, sys, time\n"  # a child in a session of its own, holding our output open
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "start_new_session=True)\n"
              f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
              + ("time.sleep(60)\n" if parent == "hangs" else "print('started'); sys.exit(0)\n"))
    try:
        start = time.monotonic()
        result = await exec_check(py(script), timeout=0.5).run()
        elapsed = time.monotonic() - start
        expected = (CheckStatus.TIMEOUT, "no answer within 0.5s") if parent == "hangs" else (CheckStatus.OK, "")
        assert (result.status, result.detail) == expected
        assert elapsed < 2.0
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def test_exec_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    result = await exec_check(py(script), timeout=0.5).run()
    assert result.status is CheckStatus.TIMEOUT
    assert time.monotonic() - start < 2.0
    child = int(pidfile.read_text())
    for _ in range(50):  # the grandchild was killed with its group (a zombie until init reaps it)
        if not alive(child):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"grandchild {child} survived the timeout")


def test_http_url_with_an_ipv6_zone() -> None:
    """RFC 6874: ``[addr%25zone]`` in the URL; the connection takes the zone decoded, the Host header as written."""
    target = httpwire.parse_url("http://[fe80::1%25eth0]:8080/healthz")
    assert (target.host, target.authority, target.literal) == ("fe80::1%eth0", "[fe80::1%25eth0]:8080", True)


async def test_http_invalid_content_length_is_not_healthy_even_without_a_body_check() -> None:
    """A final response whose head breaks the framing (``Content-Length: abc``) is a broken answer, whether or not
    the check reads the body."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await http_check(f"http://127.0.0.1:{port}/").run()
    finally:
        server.close()
    assert (result.status, result.detail) == (CheckStatus.FAIL, "invalid Content-Length: 'abc'")


async def test_http_host_name_the_resolver_cannot_encode_is_a_connection_failure() -> None:
    """A label longer than 63 characters cannot even be encoded for the resolver: ``fail``, as any name that does
    not resolve, not ``error``."""
    result = await http_check("http://" + "a" * 64 + ".example/").run()
    assert result.status is CheckStatus.FAIL
    assert result.detail.startswith("cannot connect to ")
