"""The checks at scale (issue 12): the lean probes behave as before on every event loop the daemon may run on
(asyncio's own, and uvloop's when the ``fast`` extra is installed), leave no socket behind, and the quick form of
``bench/checks_rate.py`` runs with every check passing."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from eipfailover.checks import httpwire, sockets
from eipfailover.checks.tcp import TcpCheck
from eipfailover.health import combine
from eipfailover.model import CheckResult, CheckStatus

from . import test_checks as wire
from .test_checks import free_port, http_check, raw_server, response

ROOT = Path(__file__).resolve().parent.parent
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
NEEDS_UVLOOP = pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (the 'fast' extra)")
LOOPS = ["asyncio", pytest.param("uvloop", marks=NEEDS_UVLOOP)]


def run(loop_kind: str, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` on a fresh loop of that kind (uvloop imported by name: it is an optional extra)."""
    factory = importlib.import_module("uvloop").new_event_loop if loop_kind == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


# --- the wire tests of tests/test_checks.py, on uvloop --------------------------------------------------------------

ON_UVLOOP: tuple[Callable[..., Awaitable[None]], ...] = (
    wire.test_tcp_timeout_on_a_full_backlog, wire.test_http_refused, wire.test_http_request_head,
    wire.test_http_interim_responses_then_the_final_one, wire.test_http_too_many_interim_responses_fail_at_once,
    wire.test_http_endless_interim_responses_fail_fast_and_let_the_loop_run, wire.test_http_header_line_limit,
    wire.test_http_header_count_limit, wire.test_http_server_closes_mid_head, wire.test_http_malformed_responses,
    wire.test_http_chunked_body, wire.test_http_body_until_close_and_truncated_content_length,
    wire.test_http_compressed_body, wire.test_http_gzip_bomb_is_inflated_no_further_than_the_cap,
    wire.test_http_head, wire.test_http_status_only_does_not_read_the_body, wire.test_http_ipv6_literal,
    wire.test_tls_hostname_is_verified, wire.test_http_unresolvable_name,
    wire.test_http_invalid_content_length_is_not_healthy_even_without_a_body_check,
    wire.test_http_host_name_the_resolver_cannot_encode_is_a_connection_failure,
    # exec: uvloop's subprocesses (its own process groups, pipes and kills)
    wire.test_exec_ok_and_fail, wire.test_exec_drains_large_output, wire.test_exec_missing_program,
    wire.test_exec_gets_a_minimal_environment, wire.test_exec_timeout_holds_when_a_child_leaves_the_process_group,
    wire.test_exec_timeout_kills_the_process_group,
)


def wire_cases() -> Iterator[Any]:
    """Each of :data:`ON_UVLOOP` with each of its parameter sets (and its skip, if any)."""
    for test in ON_UVLOOP:
        marks = list(getattr(test, "pytestmark", []))
        skips = [pytest.mark.skipif(*m.args, **m.kwargs) for m in marks if m.name == "skipif"]
        grids = [m for m in marks if m.name == "parametrize"]
        if not grids:
            yield pytest.param(test, {}, id=test.__name__, marks=skips)
            continue
        names, rows = grids[0].args
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        for i, row in enumerate(rows):
            values = row if len(names) > 1 else (row,)
            yield pytest.param(test, dict(zip(names, values, strict=True)), id=f"{test.__name__}[{i}]", marks=skips)


@NEEDS_UVLOOP
@pytest.mark.parametrize(("test", "kwargs"), list(wire_cases()))
def test_the_wire_tests_pass_on_uvloop(test: Callable[..., Coroutine[Any, Any, None]], kwargs: dict[str, Any],
                                       ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every limit and wording of the probes holds on uvloop too (its transports, its TLS, its resolver, its
    subprocesses)."""
    fixtures = {"ca": ca, "tmp_path": tmp_path, "monkeypatch": monkeypatch}
    wanted = inspect.signature(test).parameters
    run("uvloop", test(**kwargs, **{name: value for name, value in fixtures.items() if name in wanted}))


# --- the same answers on every loop, by every path -------------------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_tcp_by_address_and_by_name(loop: str) -> None:
    """An IP address (a bare socket on asyncio's loop) and a name (resolved, then a transport) give the same
    results."""
    async def main() -> None:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        by_address, by_name = TcpCheck("tcp", 1.0, "127.0.0.1", port), TcpCheck("tcp", 1.0, "localhost", port)
        assert by_address.address == (socket.AF_INET, ("127.0.0.1", port))
        assert by_name.address is None
        async with server:
            assert (await by_address.run()).ok
            assert (await by_name.run()).ok
        for check in (by_address, by_name):
            result = await check.run()
            assert (result.status, result.detail) == (CheckStatus.FAIL, f"connection refused by {check.host}:{port}")

    run(loop, main())


def test_numeric_addresses() -> None:
    assert sockets.numeric_address("10.1.2.3", 80) == (socket.AF_INET, ("10.1.2.3", 80))
    assert sockets.numeric_address("::1", 443) == (socket.AF_INET6, ("::1", 443, 0, 0))
    assert sockets.numeric_address("fe80::1%lo", 80) == (socket.AF_INET6, ("fe80::1", 80, 0,
                                                                           socket.if_nametoindex("lo")))
    for name in ("localhost", "fe80::1%no-such-interface", "health.example", "a" * 64 + ".example"):
        assert sockets.numeric_address(name, 80) is None
    assert httpwire.parse_url("http://127.0.0.1:8080/").address == (socket.AF_INET, ("127.0.0.1", 8080))
    assert httpwire.parse_url("http://health.example/").address is None


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_large_body_arrives_whole_through_the_flow_control(loop: str, host: str) -> None:
    """Megabytes of body, read while the connection pauses and resumes (bare socket or transport): not a byte lost
    or repeated."""
    body = os.urandom(1_500_000).hex().encode() + b"MARKER"
    in_one_chunk = b"%x\r\n%s\r\n" % (len(body), body) + b"0\r\n\r\n"

    async def main() -> None:
        async with raw_server(response(body)) as server:
            url = f"http://{host}:{server.port}/healthz"
            assert (await http_check(url, body_contains=body[-4000:].decode(), max_body_bytes=4_000_000).run()).ok
        async with raw_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + in_one_chunk) as server:
            url = f"http://{host}:{server.port}/healthz"
            assert (await http_check(url, body_contains=body[-4000:].decode(), max_body_bytes=4_000_000).run()).ok

    run(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_on_every_loop(loop: str, ca: trustme.CA, tmp_path: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def main() -> None:
        async with raw_server(response(b"secure ok"), tls=context) as server:
            for host in ("127.0.0.1", "localhost"):
                url = f"https://{host}:{server.port}/healthz"
                assert (await http_check(url, ca_file=ca_file, body_contains="secure").run()).ok
                assert (await http_check(url, verify_tls=False, body_contains="secure").run()).ok
                untrusted = await http_check(url).run()
                assert untrusted.status is CheckStatus.FAIL
                assert untrusted.detail.startswith("TLS certificate rejected: [SSL: CERTIFICATE_VERIFY_FAILED]")

    run(loop, main())


@contextlib.contextmanager
def hanging_listener() -> Iterator[int]:
    """A port whose connects hang: a listener with a full backlog that never accepts."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            yield port
        finally:
            for filler in fillers:
                filler.close()


def resolving_to(monkeypatch: pytest.MonkeyPatch, ports: list[int]) -> None:
    """Make every name resolve, on the running loop, to 127.0.0.1 at each of ``ports`` in turn (as a dual-stack
    name resolves to several addresses)."""
    infos = [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)) for port in ports]

    async def getaddrinfo(*_: object, **__: object) -> list[Any]:
        return infos

    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.BaseEventLoop):
        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)  # what create_connection resolves with
    monkeypatch.setattr(httpwire, "_resolve", lambda *_: getaddrinfo())  # what the probe resolves with elsewhere


@pytest.mark.parametrize("loop", LOOPS)
def test_a_name_is_connected_to_by_happy_eyeballs_on_every_loop(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name whose first address does not answer: the next one is tried 250 ms later, not after the timeout (uvloop's
    own create_connection would wait for the first); when every address refuses, the words are asyncio's."""
    async def main() -> None:
        async with raw_server(response(b"healthy")) as server:
            with hanging_listener() as hanging:
                resolving_to(monkeypatch, [hanging, server.port])
                result = await http_check("http://health.example/healthz", timeout=2.0, body_contains="healthy").run()
        assert (result.status, result.detail) == (CheckStatus.OK, "")
        assert httpwire.HAPPY_EYEBALLS_DELAY <= result.latency < 1.5
        refusing = [free_port(), free_port()]
        resolving_to(monkeypatch, refusing)
        result = await http_check("http://health.example/").run()
        assert (result.status, result.detail) == (CheckStatus.FAIL, "cannot connect to health.example:80: Multiple "
                                                  f"exceptions: [Errno 111] Connect call failed ('127.0.0.1', "
                                                  f"{refusing[0]}), [Errno 111] Connect call failed ('127.0.0.1', "
                                                  f"{refusing[1]})")

    run(loop, main())


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor, closed by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("loop", LOOPS)
def test_no_socket_is_left_behind(loop: str) -> None:
    """Whatever the outcome (pass, refused, an error status, a broken answer, a reset, a timeout), every probe's
    socket is closed."""
    async def main() -> None:
        release = asyncio.Event()

        async def hang(_: asyncio.StreamWriter) -> None:
            await release.wait()

        async def reset(writer: asyncio.StreamWriter) -> None:
            writer.transport.abort()

        before = open_sockets()
        async with raw_server(response(b"healthy")) as ok, raw_server(response(status="500 Oops")) as error, \
                raw_server(b"HTTP/1.1 OK\r\n\r\n") as broken, raw_server(hang) as hanging, \
                raw_server(reset) as resetting:
            refused = free_port()
            checks = [http_check(ok.url), http_check(ok.url, body_contains="healthy"), http_check(error.url),
                      http_check(broken.url), http_check(resetting.url), http_check(hanging.url, timeout=0.2),
                      http_check(f"http://127.0.0.1:{refused}/"), http_check(f"http://localhost:{ok.port}/"),
                      TcpCheck("tcp", 1.0, "127.0.0.1", ok.port), TcpCheck("tcp", 1.0, "127.0.0.1", refused),
                      TcpCheck("tcp", 1.0, "localhost", ok.port)]
            results = await asyncio.gather(*(check.run() for check in checks * 20))
            assert [r.status for r in results[:len(checks)]] == [
                CheckStatus.OK, CheckStatus.OK, CheckStatus.FAIL, CheckStatus.FAIL, CheckStatus.FAIL,
                CheckStatus.TIMEOUT, CheckStatus.FAIL, CheckStatus.OK, CheckStatus.OK, CheckStatus.FAIL, CheckStatus.OK]
            release.set()
        for _ in range(1000):  # what was aborted closes on a later turn of the loop (the servers' side too)
            if open_sockets() <= before:
                break
            await asyncio.sleep(0)
        assert open_sockets() <= before

    run(loop, main())


# --- health.combine, rewritten for speed: the same answers as before -------------------------------------------------

def combine_before(results: list[CheckResult]) -> CheckResult:
    """The definition it had (a list, a max, two scans)."""
    latency = max((r.latency for r in results), default=0.0)
    failed = next((r for r in results if not r.ok and r.status is not CheckStatus.UNKNOWN), None)
    unknown = next((r for r in results if r.status is CheckStatus.UNKNOWN), None)
    return failed or unknown or CheckResult(CheckStatus.OK, latency, "")


@given(st.lists(st.builds(CheckResult, st.sampled_from(CheckStatus), st.floats(0, 10), st.sampled_from(["", "x"])),
                max_size=6))
def test_combine_answers_as_before(results: list[CheckResult]) -> None:
    assert combine(iter(results)) == combine_before(results)


# --- the bench, quick ----------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_quick_checks_rate_bench() -> None:
    """``bench/checks_rate.py --quick``: the daemon's engine with 400 targets at 1,000 checks a second, on each loop
    installed; every check passes and the rate is held (the CPU figures are the machine's: printed, not judged)."""
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "bench" / "checks_rate.py"), "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert [row["loop"] for row in document["rows"]] == (["asyncio", "uvloop"] if HAVE_UVLOOP else ["asyncio"])
    for row in document["rows"]:
        assert row["failed"] == 0, row
        assert row["rate"] >= 0.9 * document["rate"], row
        assert 0 < row["us_per_check"] < 10_000, row
        assert row["rss_mb"] < 250, row
