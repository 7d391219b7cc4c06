"""Checks against real local servers and real processes. A check never raises: it reports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from eipfailover.checks.base import CheckContext
from eipfailover.checks.exec import ExecCheck
from eipfailover.checks.http import HttpCheck
from eipfailover.checks.tcp import TcpCheck
from eipfailover.config import ExecCheckConfig, HttpCheckConfig
from eipfailover.model import Binding, CheckStatus

from .conftest import HealthServer
from .fakes import FakeProvider


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def free_port() -> int:
    """A port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_check(session: aiohttp.ClientSession, url: str, timeout: float = 1.0, **kw: Any) -> HttpCheck:
    return HttpCheck("http", timeout, HttpCheckConfig(type="http", url=url, **kw), session)


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


async def test_http_ok(session: aiohttp.ClientSession, health_servers: list[HealthServer]) -> None:
    result = await http_check(session, health_servers[0].url).run()
    assert (result.status, result.detail) == (CheckStatus.OK, "")
    assert 0 < result.latency < 1


async def test_http_500(session: aiohttp.ClientSession, health_servers: list[HealthServer]) -> None:
    health_servers[0].status = 500
    result = await http_check(session, health_servers[0].url).run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, "HTTP 500, expected 200")


async def test_http_expected_statuses(session: aiohttp.ClientSession, health_servers: list[HealthServer]) -> None:
    health_servers[0].status = 204
    assert (await http_check(session, health_servers[0].url, expect_status=[200, 204]).run()).ok
    result = await http_check(session, health_servers[0].url, expect_status=[200, 202]).run()
    assert result.detail == "HTTP 204, expected 200/202"


async def test_http_body(session: aiohttp.ClientSession, health_servers: list[HealthServer]) -> None:
    server = health_servers[0]
    server.body = '{"status": "degraded"}'
    wrong = await http_check(session, server.url, body_contains='"status": "ok"').run()
    assert (wrong.status, wrong.detail) == (CheckStatus.FAIL, "body does not contain '\"status\": \"ok\"'")
    regex = await http_check(session, server.url, body_regex=r'"status":\s*"(ok|healthy)"').run()
    assert regex.status is CheckStatus.FAIL
    assert regex.detail.startswith("body does not match /")
    server.body = '{"status": "healthy"}'
    assert (await http_check(session, server.url, body_regex=r'"status":\s*"(ok|healthy)"').run()).ok


async def test_http_body_read_is_bounded(session: aiohttp.ClientSession, health_servers: list[HealthServer]) -> None:
    server = health_servers[0]
    server.body = "x" * 100_000 + "MARKER"
    assert not (await http_check(session, server.url, body_contains="MARKER", max_body_bytes=1000).run()).ok
    assert (await http_check(session, server.url, body_contains="MARKER", max_body_bytes=200_000).run()).ok


async def test_http_refused(session: aiohttp.ClientSession) -> None:
    port = free_port()
    result = await http_check(session, f"http://127.0.0.1:{port}/").run()
    assert result.status is CheckStatus.FAIL
    assert result.detail == f"connection refused by 127.0.0.1:{port}"


async def test_http_hanging_server_honours_timeout(session: aiohttp.ClientSession,
                                                   health_servers: list[HealthServer]) -> None:
    server = health_servers[0]
    server.hang = True
    start = time.monotonic()
    result = await http_check(session, server.url, timeout=0.4).run()
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


async def test_tls_verified_with_ca_file(session: aiohttp.ClientSession, tls_url: str, ca: trustme.CA,
                                         tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    assert (await http_check(session, tls_url, ca_file=ca_file, body_contains="secure").run()).ok


async def test_tls_untrusted_certificate_fails(session: aiohttp.ClientSession, tls_url: str) -> None:
    result = await http_check(session, tls_url).run()
    assert result.status is CheckStatus.FAIL
    assert result.detail.startswith("TLS certificate rejected")


async def test_tls_verify_off(session: aiohttp.ClientSession, tls_url: str) -> None:
    assert (await http_check(session, tls_url, verify_tls=False).run()).ok


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
