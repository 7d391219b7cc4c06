"""The etcd client against real etcd on loopback: one member, a three-member cluster, TLS and auth."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest

from eipfailover.cluster.etcd_client import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    Op,
    WatchEvent,
    make_ssl_context,
)

from .conftest import eventually
from .etcd_server import EtcdCluster

SLACK = 1.5
"""Over a call's timeout, what a loaded machine may add before the call has raised."""


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One member shared by the tests that neither stop nor pause it (each uses its own keys)."""
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A member of the test's own, to pause, kill or restart."""
    with EtcdCluster(1, tmp_path / "etcd") as cluster:
        yield cluster


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(etcd.client_urls, timeout=5.0)
    yield client
    await client.close()


def dead_endpoint() -> str:
    """An URL nobody listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def timed(call: Awaitable[object]) -> tuple[Exception | None, float]:
    """What the call raised (None if nothing; TimeoutError after 30 s: no test hangs), and how long it took."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(30):
            await call
    except Exception as e:
        return e, time.monotonic() - start
    return None, time.monotonic() - start


async def first_events(client: EtcdClient, prefix: str, start_revision: int) -> list[WatchEvent]:
    """The first events a new watch sees (TimeoutError after 10 s)."""
    async with asyncio.timeout(10), contextlib.aclosing(client.watch_prefix(prefix, start_revision)) as watch:
        return await anext(watch)


async def assert_every_call_unavailable(client: EtcdClient, timeout: float, lease: int) -> None:
    """Every kind of call, at once: each raises EtcdUnavailable, within its timeout (and some slack)."""
    calls: dict[str, Awaitable[object]] = {
        "get": client.get("/p/a"), "get_prefix": client.get_prefix("/p/"), "put": client.put("/p/a", b"x"),
        "delete": client.delete("/p/a"), "grant": client.grant(10), "keepalive": client.keepalive(lease),
        "revoke": client.revoke(lease), "watch": first_events(client, "/p/", 0),
        "txn": client.txn([Compare.create_revision("/p/a", "=", 0)], [Op.put("/p/a", b"x")]),
    }
    results = dict(zip(calls, await asyncio.gather(*(timed(call) for call in calls.values())), strict=True))
    for name, (error, elapsed) in results.items():
        assert isinstance(error, EtcdUnavailable), f"{name}: {error!r}"
        assert elapsed < timeout + SLACK, f"{name} took {elapsed:.2f} s"


async def test_put_get_prefix_delete(client: EtcdClient) -> None:
    assert await client.get("/kv/a") is None
    revision = await client.put("/kv/a", b"1")
    assert await client.get("/kv/a") == KeyValue("/kv/a", b"1", revision, revision, 1, 0)
    second = await client.put("/kv/a", b"\x00\xff")
    assert await client.get("/kv/a") == KeyValue("/kv/a", b"\x00\xff", revision, second, 2, 0)
    await client.put("/kv/é", b"")
    await client.put("/kv/b", b"2")
    last = await client.put("/kv0", b"outside")
    kvs, read = await client.get_prefix("/kv/")
    assert [(kv.key, kv.value) for kv in kvs] == [("/kv/a", b"\x00\xff"), ("/kv/b", b"2"), ("/kv/é", b"")]
    assert read >= last
    await client.delete("/kv/a")
    await client.delete("/kv/a")
    assert await client.get("/kv/a") is None
    assert [kv.key for kv in (await client.get_prefix("/kv/"))[0]] == ["/kv/b", "/kv/é"]
    assert {"/kv/b", "/kv/é", "/kv0"} <= {kv.key for kv in (await client.get_prefix(""))[0]}


async def test_txn_election_and_fencing(client: EtcdClient) -> None:
    lease, _ = await client.grant(30)
    campaign = ([Compare.create_revision("/el/leader", "=", 0)], [Op.put("/el/leader", b"a", lease)],
                [Op.get("/el/leader")])
    won = await client.txn(*campaign)
    assert won.succeeded
    assert won.responses == [None]
    leader = await client.get("/el/leader")
    assert leader == KeyValue("/el/leader", b"a", won.revision, won.revision, 1, lease)

    lost = await client.txn(campaign[0], [Op.put("/el/leader", b"b")], campaign[2])
    assert not lost.succeeded
    assert lost.responses == [[leader]]
    assert lost.revision == won.revision

    # Fencing: act only while the key is still ours, in the term won; write the intent in the same txn.
    ours = [Compare.create_revision("/el/leader", "=", won.revision), Compare.value("/el/leader", "=", b"a"),
            Compare.lease("/el/leader", "=", lease), Compare.version("/el/leader", "=", 1),
            Compare.mod_revision("/el/leader", "=", won.revision)]
    fenced = await client.txn(ours, [Op.put("/el/intent", b"move"), Op.get("/el/leader"), Op.delete("/el/none")])
    assert fenced.succeeded
    assert fenced.responses == [None, [leader], None]
    assert (await client.get("/el/intent")) is not None

    for compare in (Compare.value("/el/leader", "!=", b"a"), Compare.create_revision("/el/leader", "<", won.revision),
                    Compare.version("/el/leader", ">", 1), Compare.lease("/el/leader", "=", lease + 1)):
        assert not (await client.txn([compare], [Op.delete("/el/leader")], [Op.get("/el/missing")])).succeeded
    assert (await client.txn([Compare.version("/el/leader", ">", 0)], [], [])).succeeded

    await client.revoke(lease)
    assert await client.get("/el/leader") is None
    with pytest.raises(ValueError, match="compare op"):
        Compare.version("/el/leader", "==", 1)  # type: ignore[arg-type]


async def test_lease_keepalive_expiry_and_revoke(client: EtcdClient) -> None:
    lease, ttl = await client.grant(2)
    assert ttl >= 2
    revision = await client.put("/lease/a", b"x", lease)
    assert await client.get("/lease/a") == KeyValue("/lease/a", b"x", revision, revision, 1, lease)
    # Renewed for longer than its TTL, the key stays.
    end = time.monotonic() + ttl + 1
    while time.monotonic() < end:
        assert await client.keepalive(lease) >= 2
        assert await client.get("/lease/a") is not None
        await asyncio.sleep(0.4)
    # Left alone, it expires: the key goes, keepalive says 0, revoking it is fine.
    await eventually(lambda: _gone(client, "/lease/a"), timeout=15)
    assert await client.keepalive(lease) == 0
    await client.revoke(lease)

    lease, _ = await client.grant(60)
    await client.put("/lease/b", b"y", lease)
    await client.revoke(lease)
    assert await client.get("/lease/b") is None
    assert await client.keepalive(lease) == 0


async def _gone(client: EtcdClient, key: str) -> bool:
    return await client.get(key) is None


async def _answers(client: EtcdClient) -> bool:
    with contextlib.suppress(EtcdUnavailable):
        await client.get("/p/a")
        return True
    return False


async def test_watch_sees_puts_and_deletes(client: EtcdClient, etcd: EtcdCluster) -> None:
    _, start = await client.get_prefix("/w/")
    first = await client.put("/w/a", b"1")
    seen: list[WatchEvent] = []
    async with contextlib.aclosing(client.watch_prefix("/w/", start + 1)) as watch:
        async with asyncio.timeout(10):
            seen += await anext(watch)  # from history: the put before the watch
            await client.put("/w0", b"outside")
            await client.put("/w/b", b"2")
            deleted = await client.put("/wx", b"outside") + 1
            await client.delete("/w/a")
            while len(seen) < 3:
                seen += await anext(watch)
    assert [(e.type, e.kv.key, e.kv.value) for e in seen] == [("put", "/w/a", b"1"), ("put", "/w/b", b"2"),
                                                               ("delete", "/w/a", b"")]
    assert seen[0].kv.create_revision == first
    assert seen[2].kv.mod_revision == deleted

    # A revision compacted away: etcd cancels the watch, the caller reads again.
    etcd.etcdctl("compact", str(deleted))
    with pytest.raises(EtcdError, match="compacted") as raised:
        await first_events(client, "/w/", first)
    assert not isinstance(raised.value, EtcdUnavailable)


async def test_watch_ends_when_the_member_dies(solo: EtcdCluster) -> None:
    client = EtcdClient(solo.client_urls, timeout=5.0)
    try:
        _, revision = await client.get_prefix("/d/")
        async with contextlib.aclosing(client.watch_prefix("/d/", revision + 1)) as watch:
            await client.put("/d/a", b"1")
            async with asyncio.timeout(10):
                assert [e.kv.key for e in await anext(watch)] == ["/d/a"]
                solo.members[0].kill()
                with pytest.raises(EtcdUnavailable, match="ended"):
                    await anext(watch)
    finally:
        await client.close()


async def test_endpoint_failover_is_immediate_on_refused(etcd: EtcdCluster) -> None:
    client = EtcdClient([dead_endpoint(), *etcd.client_urls], timeout=10.0)
    try:
        error, elapsed = await timed(client.put("/fo/a", b"1"))
        assert error is None
        assert elapsed < 2, elapsed
        assert (await client.get("/fo/a")) is not None
    finally:
        await client.close()
    client = EtcdClient([dead_endpoint(), dead_endpoint()], timeout=10.0)
    try:
        error, elapsed = await timed(client.get("/fo/a"))
        assert isinstance(error, EtcdUnavailable)
        assert "cannot connect" in str(error)
        assert elapsed < 2, elapsed
    finally:
        await client.close()


async def test_every_call_times_out_while_etcd_is_paused(solo: EtcdCluster) -> None:
    client = EtcdClient(solo.client_urls, timeout=1.0)
    try:
        lease, _ = await client.grant(60)
        solo.members[0].pause()
        try:
            await assert_every_call_unavailable(client, 1.0, lease)
        finally:
            solo.members[0].resume()
        # (What was sent to the paused etcd, the revoke too, may yet be applied: check with a read.)
        await eventually(lambda: _answers(client), timeout=10)
    finally:
        await client.close()


async def test_three_members(tmp_path: Path) -> None:
    with EtcdCluster(3, tmp_path) as cluster:
        leader = cluster.leader()
        # The survivor of two kills, a follower: a leader goes on renewing leases until it steps down.
        follower = next(m for m in cluster.members if m is not leader)
        client = EtcdClient(cluster.client_urls, timeout=3.0)
        survivor = EtcdClient([follower.client_url], timeout=3.0)
        try:
            lease, _ = await client.grant(60)
            await client.put("/c/a", b"1", lease)
            for url in cluster.client_urls:  # linearizable reads: every member sees the write
                one = EtcdClient([url])
                try:
                    assert (await client.get("/c/a")) == (await one.get("/c/a"))
                finally:
                    await one.close()

            # A paused member first in the list gets a third of the time; the next one answers.
            paused_first = EtcdClient([follower.client_url, *(u for u in cluster.client_urls
                                                                if u != follower.client_url)], timeout=3.0)
            follower.pause()
            try:
                error, elapsed = await timed(paused_first.get("/c/a"))
                assert error is None
                assert elapsed < 3.0, elapsed
                error, elapsed = await timed(paused_first.get("/c/a"))  # from the one that answered
                assert error is None
                assert elapsed < 1.0, elapsed
            finally:
                follower.resume()
                await paused_first.close()

            # Two of three gone: the survivor has no leader. Linearizable reads would hang; with the client's
            # "require leader" they time out at first, then fail at once. Its watches end (3 election timeouts).
            _, revision = await survivor.get_prefix("/c/")
            async with contextlib.aclosing(survivor.watch_prefix("/c/", revision + 1)) as watch:
                await client.put("/c/b", b"2")
                async with asyncio.timeout(10):
                    assert [e.kv.key for e in await anext(watch)] == ["/c/b"]
                for member in cluster.members:
                    if member is not follower:
                        member.kill()
                await assert_every_call_unavailable(client, 3.0, lease)
                with pytest.raises(EtcdUnavailable, match="ended"):
                    async with asyncio.timeout(20):
                        await anext(watch)
            error, elapsed = await timed(survivor.get("/c/a"))
            assert isinstance(error, EtcdUnavailable)
            assert "no leader" in str(error)
            assert elapsed < 1.0, elapsed
        finally:
            await client.close()
            await survivor.close()


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    with EtcdCluster(1, tmp_path, tls=True) as cluster:
        tls = cluster.tls
        assert tls is not None
        assert cluster.client_urls[0].startswith("https://")
        client = EtcdClient(cluster.client_urls, ssl_context=make_ssl_context(tls.ca, tls.client_cert, tls.client_key))
        try:
            await client.put("/tls/a", b"1")
            assert (await client.get("/tls/a")) is not None
            assert [e.kv.key for e in await first_events(client, "/tls/", 1)] == ["/tls/a"]
        finally:
            await client.close()

        for context in (make_ssl_context(tls.ca), None):  # no client certificate; etcd's CA not trusted
            client = EtcdClient(cluster.client_urls, ssl_context=context)
            try:
                with pytest.raises(EtcdError, match="TLS") as raised:
                    await client.get("/tls/a")
                assert cluster.client_urls[0] in str(raised.value)
            finally:
                await client.close()

    with pytest.raises(EtcdError, match=r"missing\.pem"):
        make_ssl_context(tmp_path / "missing.pem")
    with pytest.raises(EtcdError, match=r"client\.key"):
        make_ssl_context(tls.ca, tls.client_cert, tmp_path / "client.key")


async def test_username_and_password(tmp_path: Path) -> None:
    with EtcdCluster(1, tmp_path) as cluster:
        cluster.enable_auth("app", "app-secret", "/app/")
        client = EtcdClient(cluster.client_urls, username="app", password="app-secret")
        try:
            await client.put("/app/a", b"1")
            assert (await client.get("/app/a")) is not None
            assert [e.kv.key for e in await first_events(client, "/app/", 1)] == ["/app/a"]
            with pytest.raises(EtcdError, match="permission denied") as raised:
                await client.put("/other", b"1")
            assert not isinstance(raised.value, EtcdUnavailable)

            # A restarted member forgets its tokens: the client gets a new one.
            await asyncio.to_thread(cluster.members[0].stop)
            await asyncio.to_thread(cluster.members[0].start)
            assert (await client.get("/app/a")) is not None
        finally:
            await client.close()

        for username, password, message in (("app", "wrong", "authentication failed"),
                                            (None, None, "user name is empty")):
            client = EtcdClient(cluster.client_urls, username=username, password=password)
            try:
                with pytest.raises(EtcdError, match=message) as raised:
                    await client.get("/app/a")
                assert not isinstance(raised.value, EtcdUnavailable)
                assert cluster.client_urls[0] in str(raised.value)
            finally:
                await client.close()
