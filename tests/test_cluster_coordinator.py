"""The etcd coordinator in process, against a real etcd (one member); some daemons reach it through a small HTTP
proxy that can slow etcd's answers down or cut them off from etcd: fencing under a slow etcd, member keys deleted,
duplicated or left without a lease, the shared memory of moves across a change of leader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import structlog
import structlog.testing
from aiohttp import web

from eipfailover.cluster.etcd import EtcdCoordinator, client_for
from eipfailover.cluster.etcd_client import EtcdClient
from eipfailover.config import ClusterConfig
from eipfailover.errors import NotLeader
from eipfailover.events import GroupMemory
from eipfailover.model import TargetState

from .conftest import eventually
from .etcd_server import EtcdCluster

UP, DOWN = TargetState.UP, TargetState.DOWN


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    return f"/review/{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def raw(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(etcd.client_urls, timeout=5.0)
    yield client
    await client.close()


class EtcdProxy:
    """etcd's JSON gateway through a proxy: ``delays`` holds answers to a path back that long; ``cut`` answers
    every request 503 UNAVAILABLE (as a member cut off would), and ends the open watches."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.delays: dict[str, float] = {}
        self.cut = False
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.cut = True  # ends the watches it relays
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.cut:
            return web.json_response({"error": "cut off", "code": 14, "message": "cut off"}, status=503)
        await asyncio.sleep(self.delays.get(request.path, 0.0))
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "grpc-metadata-hasleader")}
        upstream = await self._session.post(self.upstream + request.path, data=body, headers=headers)
        if request.path != "/v3/watch":
            async with upstream:
                data = await upstream.read()
            return web.Response(body=data, status=upstream.status, content_type="application/json")
        response = web.StreamResponse(status=upstream.status)
        response.content_type = "application/json"
        await response.prepare(request)
        try:
            while not self.cut:
                try:
                    async with asyncio.timeout(0.2):
                        chunk = await upstream.content.readany()
                except TimeoutError:
                    continue
                if not chunk:
                    break
                await response.write(chunk)
        finally:
            upstream.close()
        return response


@contextlib.asynccontextmanager
async def proxied(etcd: EtcdCluster) -> AsyncIterator[EtcdProxy]:
    proxy = EtcdProxy(etcd.client_urls[0])
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


class Daemons:
    """Coordinators running as tasks; all cancelled and closed at the end."""

    def __init__(self) -> None:
        self.running: dict[EtcdCoordinator, asyncio.Task[None] | None] = {}

    def make(self, endpoints: list[str], prefix: str, node: str, ttl: float = 3.0) -> EtcdCoordinator:
        config = ClusterConfig(type="etcd", endpoints=endpoints, prefix=prefix, node=node, ttl=ttl)
        coordinator = EtcdCoordinator(config, None, client_for(config))
        coordinator.set_api(f"http://{node}.example:9797")
        self.running[coordinator] = None
        return coordinator

    def start(self, coordinator: EtcdCoordinator) -> None:
        self.running[coordinator] = asyncio.create_task(coordinator.run())

    async def halt(self, coordinator: EtcdCoordinator) -> None:
        """Stop its loop (not closing it)."""
        task = self.running.get(coordinator)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.running[coordinator] = None

    async def close(self) -> None:
        for coordinator in list(self.running):
            await self.halt(coordinator)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(coordinator.close(), 10)


@pytest.fixture
async def daemons() -> AsyncIterator[Daemons]:
    world = Daemons()
    yield world
    await world.close()


async def test_a_slow_proof_never_lets_a_call_outlive_the_lease(
        etcd: EtcdCluster, prefix: str, daemons: Daemons) -> None:
    """The fence counts the call's duration after its transaction too: an etcd that answers the fencing
    transaction slowly (0.8 s, under the client's timeout) makes it renew and prove again, or refuse; when its re-check
    says "send", the lease (less the margin) outlives the call's deadline."""
    async with proxied(etcd) as proxy:
        leader = daemons.make([proxy.url], prefix, "a", ttl=4.0)
        daemons.start(leader)
        await eventually(leader.acting, timeout=30)
        # the renewal loop is between two renewals (isolated here: it is stopped, so the lease is what the fence sees)
        await daemons.halt(leader)
        proxy.delays["/v3/kv/txn"] = 0.8  # slow, under the client's timeout (1 s at ttl 4)
        seconds = leader._valid_until - leader.margin - time.monotonic() - 0.1  # accepted without a renewal
        assert seconds > 1.0
        try:
            recheck = await leader.fence("web", "f1", "AssociateAddress", seconds)
        except NotLeader:
            return  # refused: fine
        sent_at = time.monotonic()
        lease_end = leader._valid_until
        if recheck():
            assert sent_at + seconds <= lease_end, (
                f"the call sent now may run until {sent_at + seconds - lease_end:.2f}s after the lease may expire")


async def test_a_member_key_deleted_by_hand_is_published_again(
        etcd: EtcdCluster, prefix: str, daemons: Daemons, raw: EtcdClient) -> None:
    """A live daemon whose member key disappears (deleted by hand, ``etcdctl del --prefix``) publishes it again
    at once: the others count it and its view again."""
    a, b = daemons.make(etcd.client_urls, prefix, "a"), daemons.make(etcd.client_urls, prefix, "b")
    daemons.start(a)
    daemons.start(b)
    await eventually(lambda: a.available() and b.available(), timeout=30)
    a.publish("web", {"t": UP})
    b.publish("web", {"t": DOWN})
    await eventually(lambda: a.observers("web").get("b") == {"t": "down"}, timeout=30)
    assert a.members() == 2

    deleted = await raw.put(f"{prefix}/other", b"")  # the revision the delete comes after
    await raw.delete(f"{prefix}/members/b")

    async def back() -> bool:
        kv = await raw.get(f"{prefix}/members/b")
        return kv is not None and kv.create_revision > deleted
    await eventually(back, timeout=4 * 3.0)
    await eventually(lambda: a.observers("web").get("b") == {"t": "down"} and a.members() == 2, timeout=4 * 3.0)


async def test_two_daemons_with_the_same_node_name_are_reported_and_neither_acts(
        etcd: EtcdCluster, prefix: str, daemons: Daemons) -> None:
    """Two live daemons with the same ``node`` would share one member key and each leave the other out of its
    count: the clash is detected (``node_name_conflict`` at error level, ``/readyz`` says why) and neither acts until
    one is renamed."""
    first, second = daemons.make(etcd.client_urls, prefix, "web"), daemons.make(etcd.client_urls, prefix, "web")
    with structlog.testing.capture_logs() as logs:
        daemons.start(first)
        await eventually(first.acting, timeout=30)
        daemons.start(second)
        await eventually(second.available, timeout=30)
        await eventually(lambda: second.status().leader == "web", timeout=30)
        first.publish("g", {"t": DOWN})  # the leader alone cannot reach t
        second.publish("g", {"t": UP})
        await asyncio.sleep(1.0)  # several watch events and one full read: both views went through etcd
        await eventually(lambda: second.observers("g")["web"] == {"t": "up"})
    assert any(e.get("event") == "node_name_conflict" and e.get("log_level") == "error" for e in logs)
    await eventually(lambda: not first.acting() and not second.acting(), timeout=10)
    assert "node name 'web'" in (first.problem() or "") + (second.problem() or "")


async def test_a_deposed_leader_does_not_overwrite_the_shared_memory(
        etcd: EtcdCluster, prefix: str, daemons: Daemons, raw: EtcdClient) -> None:
    """The cluster's memory of a group's moves is written only by the leader, and only while it leads (a
    transaction on the leader key): a leader cut off from etcd as its move ends does not overwrite, when it comes
    back, the memory the new leader stored since."""
    async with proxied(etcd) as proxy:
        old = daemons.make([proxy.url], prefix, "old")
        daemons.start(old)
        await eventually(old.acting, timeout=30)
        new = daemons.make(etcd.client_urls, prefix, "new")
        daemons.start(new)
        await eventually(lambda: new.status().leader == "old", timeout=30)

        proxy.cut = True  # the old leader is cut off from etcd just as its move ends
        now = time.time()
        old.share_memory("web", GroupMemory(False, (now - 5,), now - 4))
        await eventually(lambda: not old.available(), timeout=30)
        await eventually(new.acting, timeout=30)
        new.share_memory("web", GroupMemory(False, (now - 5, now), now))  # the new leader moved too
        await eventually(lambda: new._unshared == {}, timeout=10)

        proxy.cut = False  # the old one comes back: a follower now
        await eventually(lambda: old.available() and old._unshared == {}, timeout=30)
        await eventually(lambda: old.status().leader == "new", timeout=30)
        stored = await raw.get(f"{prefix}/memory/web")
        assert stored is not None
        memory = json.loads(stored.value)
        assert now in memory["window_starts"], f"the new leader's move was erased from the shared memory: {memory}"


async def test_a_member_key_without_a_lease_does_not_vote(
        etcd: EtcdCluster, prefix: str, daemons: Daemons, raw: EtcdClient) -> None:
    """Only member keys on a lease count as live members: a key no lease holds (written by hand, copied by
    ``etcdctl make-mirror``) never expires, and must not vote."""
    await raw.put(f"{prefix}/members/ghost",
                  json.dumps({"api": None, "views": {"g": {"t": "down"}}}).encode())  # no lease
    a, b = daemons.make(etcd.client_urls, prefix, "a"), daemons.make(etcd.client_urls, prefix, "b")
    daemons.start(a)
    await eventually(a.acting, timeout=30)
    daemons.start(b)
    a.publish("g", {"t": DOWN})  # the leader alone cannot reach t
    b.publish("g", {"t": UP})
    await eventually(lambda: a.observers("g").get("b") == {"t": "up"}, timeout=30)
    assert a.members() == 2, sorted(a.observers("g"))
    assert a.verdict("g", "t", DOWN) is TargetState.UNKNOWN  # one DOWN of two live daemons: no quorum
