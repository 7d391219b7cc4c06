"""The hostile-endpoint soak (``bench/hostile_soak.py``), quick and in-process: the daemon's own tcp and http checks
against endpoints that hang, trickle, flood, lie about TLS or do not resolve all fail, each within its timeout plus
100 ms, and leave no descriptor, task or thread behind; and one flooding interim responses stalls neither its own
check nor the others'."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from bench import hostile_soak

TIMEOUT, SLACK = 0.5, 0.1


@pytest.fixture(scope="module")
def report() -> hostile_soak.SoakReport:
    """One quick soak (1 s of warm-up, 3 s measured) shared by the tests of this module."""
    return asyncio.run(hostile_soak.soak(3.0, warmup=1.0, timeout=TIMEOUT, limits=hostile_soak.Limits(slack=SLACK)))


def test_every_check_fails_within_its_timeout(report: hostile_soak.SoakReport) -> None:
    assert len(report.kinds) == 14
    for kind, stats in report.kinds.items():
        assert stats.checks >= 8, kind  # a check every 250 ms for 3 s: 12 (fewer only on a stalled machine)
        assert stats.failed == stats.checks, (kind, dict(stats.statuses))
        assert max(stats.latencies) <= TIMEOUT + SLACK, (kind, max(stats.latencies))
    assert report.problems == []


def test_each_hostile_endpoint_fails_the_way_it_should(report: hostile_soak.SoakReport) -> None:
    """Hangs and trickles are cut by the timeout; floods, broken headers, a bad certificate and a name that does not
    resolve are failures at once, each with its own reason."""
    for kind in ("http-hang", "https-handshake-hang", "https-hang-after-handshake", "http-trickle",
                 "tcp-connect-hang"):
        assert set(report.kinds[kind].statuses) == {"timeout"}, kind
    prompt = {
        "http-gigabyte-body": "body does not contain 'healthy'",
        "http-gzip-bomb": "body does not contain 'healthy'",
        "http-endless-headers": "ClientResponseError: 400, message='Too many headers received'",
        "http-endless-header-line": "ClientResponseError: 400, message=\"Got more than 8190 bytes",
        "http-close-mid-headers": "ServerDisconnectedError",
        "https-self-signed": "TLS certificate rejected: [SSL: CERTIFICATE_VERIFY_FAILED]",
        "http-unresolvable": f"cannot connect to {hostile_soak.INVALID_HOST}:80",
        "tcp-unresolvable": f"cannot connect to {hostile_soak.INVALID_HOST}:80",
    }
    for kind, reason in prompt.items():
        stats = report.kinds[kind]
        assert set(stats.statuses) == {"fail"}, kind
        assert all(detail.startswith(reason) for detail in stats.details), (kind, list(stats.details))
    assert "error" in report.resolve  # the .invalid name fails here, and fast
    assert report.resolve["ms"] < 1000 * TIMEOUT


def test_the_floods_are_read_no_further_than_the_cap(report: hostile_soak.SoakReport) -> None:
    """The check reads 64 KiB of a body (``max_body_bytes``), 128 headers or an 8190-byte line, then closes: what a
    flooding server gets into the socket per connection is bounded by the kernel's buffers, not by its 1 GiB."""
    endpoints = report.server["endpoints"]
    for name in ("gigabyte", "gzip-bomb", "headers", "header-line"):
        assert endpoints[name]["connections"] > 0, name
        assert 0 < endpoints[name]["max_bytes_per_connection"] < 64 << 20, (name, endpoints[name])
    assert endpoints["bad-cert"]["tls_handshakes_failed"] == endpoints["bad-cert"]["connections"] > 0
    assert endpoints["bad-cert"]["bytes_sent"] == 0


def test_no_descriptor_task_or_thread_is_left_behind(report: hostile_soak.SoakReport) -> None:
    start, end = report.start, report.end
    assert end.fds <= start.fds + 4, (start, end)
    assert end.tasks <= start.tasks + 2, (start, end)
    assert end.threads <= start.threads + 2, (start, end)
    assert end.rss_mb <= start.rss_mb + 20, (start, end)


async def _every(period: float, stop: asyncio.Event, action: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        await action()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(period):
                await stop.wait()


async def test_endless_interim_responses_stall_neither_the_check_nor_the_others() -> None:
    """One target's endpoint floods interim responses while a healthy target's tcp check runs every 50 ms, both built
    by the daemon's ``build_checks`` on one loop with the daemon's session."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    healthy_results: list[bool] = []
    flood_latencies: list[float] = []

    async def tick() -> None:
        before = loop.time()
        await asyncio.sleep(0.01)
        lags.append(loop.time() - before - 0.01)

    with socket.socket() as healthy:
        healthy.bind(("127.0.0.1", 0))
        healthy.listen(4096)  # the kernel completes each connect; nothing needs to accept
        async with hostile_soak.endpoints() as (ports, finish), hostile_soak.daemon_session() as http:
            checks = hostile_soak.build({
                "flood": hostile_soak.check_configs(ports)["http-endless-100-continue"],
                "healthy": {"type": "tcp", "host": "127.0.0.1", "port": healthy.getsockname()[1], "timeout": 0.2},
            }, TIMEOUT, http)

            async def healthy_check() -> None:
                healthy_results.append((await checks["healthy"].run()).ok)

            stop = asyncio.Event()
            background = [asyncio.create_task(_every(0.0, stop, tick)),
                          asyncio.create_task(_every(0.05, stop, healthy_check))]
            for _ in range(4):
                start = time.monotonic()
                result = await checks["flood"].run()
                flood_latencies.append(time.monotonic() - start)
                assert not result.ok
            stop.set()
            await asyncio.gather(*background)
            await finish()
    assert max(flood_latencies) <= TIMEOUT + SLACK, flood_latencies
    assert all(healthy_results), f"{healthy_results.count(False)} of {len(healthy_results)} healthy checks failed"
    assert max(lags) <= 0.1, f"the event loop stalled for {1000 * max(lags):.0f} ms"
