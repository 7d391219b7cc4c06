"""The etcd coordinator in process, against a real etcd (one member); some daemons reach it through a small HTTP
proxy that can slow etcd's answers down or cut them off from etcd: fencing under a slow etcd, member keys deleted,
duplicated or left without a lease, the shared memory of moves across a change of leader; garbage under the prefix,
a group removed or added by a reload, a stale read against the maintenance switch; a leader key on no lease; moves
bound to their term, and moves the fence refused (the real AWS driver against moto)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import structlog.testing
from aiohttp import web

from eipfailover.cluster.base import Coordinator
from eipfailover.cluster.etcd import EtcdCoordinator, client_for
from eipfailover.cluster.etcd_client import EtcdClient, TxnResult
from eipfailover.config import AwsProviderConfig, ClusterConfig, parse_config
from eipfailover.engine import Engine, GroupRunner
from eipfailover.errors import NotLeader
from eipfailover.events import FailoverRecord, GroupMemory, NullObserver, Observers
from eipfailover.history import MemoryStore
from eipfailover.journal import Journal
from eipfailover.model import Binding, CheckStatus, Reason, TargetState
from eipfailover.providers.aws import AwsProvider
from eipfailover.ratelimit import Limiter

from .conftest import REGION, Ec2World, HealthServer, eventually
from .etcd_server import EtcdCluster
from .fake_aliyun import FakeAliyun, provider_for
from .fakes import FakeProvider, ScriptedCheck
from .test_coordination import ScriptedCoordinator
from .test_engine import World, group_config
from .test_havip import dying_master_tick

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
        await eventually(lambda: any(e.get("event") == "node_name_conflict" for e in logs), timeout=15)
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


A = Binding(instance_id="i-a")


async def test_a_leader_that_adopts_its_own_shared_memory_counts_each_move_once() -> None:
    """A move already remembered is not added again (the merge tolerates the conversion's jitter).

    Before the fix: ``GroupRunner.adopt`` merges the cluster's memory into the runner's own with a set union of floats.
    The shared memory is the runner's own moves converted to wall-clock time (``memory()``) and back (``_monotonic``),
    each conversion reading ``time.time() - time.monotonic()`` afresh, so the same move comes back a few microseconds
    off and is counted twice. That is the common case: a leader re-elected after an etcd blip, or a leader restarted
    (its journal restores the moves, etcd has the same ones) adopts its own moves. Each adoption doubles the window, so
    ``max_failovers`` is reached with half (then a quarter...) of the moves."""
    w = World({"e1": A})
    now = time.monotonic()
    w.runner.state = replace(w.runner.state, recent_moves=(now - 30.0,), last_move_at=now - 30.0)
    shared = w.runner.memory()  # what this daemon stored in etcd as leader
    await asyncio.sleep(0.01)  # it loses leadership and wins it again later
    w.runner.adopt(shared)
    moves = w.runner.state.recent_moves
    assert len(moves) == 1, f"one move counted {len(moves)} times: {moves}"


async def keeps_renewing(daemons: Daemons, etcd: EtcdCluster, prefix: str) -> None:
    """A daemon started on ``prefix`` renews its lease again and again: its loop survives what is there."""
    a = daemons.make(etcd.client_urls, prefix, "a", ttl=3.0)
    daemons.start(a)
    await eventually(a.available, timeout=30)
    first = a._valid_until
    task = daemons.running[a]
    assert task is not None
    # the lease is renewed every ttl/3: within 3 ttl it must have been renewed at least once more
    await eventually(lambda: a._valid_until > first + 0.5 or task.done(), timeout=9)
    assert not task.done(), f"the coordinator loop died: {task.exception()!r}"
    assert a.available()


@pytest.mark.parametrize("value", [b'{"last_move_at": 1' + b"0" * 400 + b"}",
                                   b'{"window_starts": [1' + b"0" * 400 + b"]}"])
async def test_garbage_memory_under_the_prefix_does_not_kill_the_coordinator(
        etcd: EtcdCluster, prefix: str, daemons: Daemons, raw: EtcdClient, value: bytes) -> None:
    """An unreadable memory key is ignored like any other garbage, and the daemon keeps its lease.

    Before the fix: ``_memory`` parses ``<prefix>/memory/<group>`` with ``float()`` and catches only ValueError,
    AttributeError and TypeError. A JSON integer too large for a float (valid JSON, e.g. written by hand or by a buggy
    tool) raises OverflowError, which escapes ``_read`` and ``_apply``; ``run`` only catches EtcdError, so the
    coordinator task dies: its lease is never renewed again, and every daemon of the deployment (all read the same key)
    loses coordination for good, silently (no log, the task's exception is never retrieved)."""
    await raw.put(f"{prefix}/memory/web", value)
    await keeps_renewing(daemons, etcd, prefix)


@pytest.mark.parametrize("where", ["memory", "member"])
async def test_deeply_nested_json_under_the_prefix_does_not_kill_the_coordinator(
        etcd: EtcdCluster, prefix: str, daemons: Daemons, raw: EtcdClient, where: str) -> None:
    """The value is ignored as garbage; the daemon keeps renewing its lease.

    Before the fix: every value under the prefix is parsed with ``json.loads`` guarded by ValueError/AttributeError/
    TypeError (KeyError for the leader key) only. Deeply nested JSON raises RecursionError, which kills the coordinator
    loop (``run`` catches EtcdError only): one stray key (a peer's member key on a lease, or a memory key) takes every
    daemon of the deployment out of coordination for good."""
    value = b"[" * 200_000 + b"]" * 200_000
    if where == "memory":
        await raw.put(f"{prefix}/memory/web", value)
    else:
        lease, _ = await raw.grant(60)
        await raw.put(f"{prefix}/members/stray", value, lease=lease)
    await keeps_renewing(daemons, etcd, prefix)


async def test_a_group_removed_by_a_reload_stops_voting(
        etcd: EtcdCluster, prefix: str, daemons: Daemons) -> None:
    """Once the group is gone from this daemon, its member key carries no view of it, and the peers see it
    as having no vote for the group.

    Before the fix: ``EtcdCoordinator.publish`` only ever sets ``_views[group]``; nothing removes a group's view when a
    reload removes (or renames) the group (``Engine.apply`` / ``on_removed`` never tell the coordinator). The daemon
    keeps publishing its last view of that group in its member key for as long as it runs, and the other daemons, which
    still have the group, count that frozen vote (a target seen DOWN at the time keeps voting DOWN after it recovers, a
    standby seen UP keeps voting UP after it dies). docs/multi-node.md: "A daemon that lacks a group counts as unknown
    for it."""

    a, b = daemons.make(etcd.client_urls, prefix, "a"), daemons.make(etcd.client_urls, prefix, "b")
    daemons.start(a)
    daemons.start(b)
    await eventually(lambda: a.available() and b.available(), timeout=30)
    checks = {"a": ScriptedCheck(), "b": ScriptedCheck()}
    runner = GroupRunner(group_config(2, 1), FakeProvider({"e1": A}), {n: [c] for n, c in checks.items()},
                         Observers([]), coordinator=a)
    await runner.read_cloud()
    for _ in range(3):
        await runner.check_round()
    await eventually(lambda: b.observers("g").get("a") == {"a": "up", "b": "up"}, timeout=30)

    engine = Engine([runner], coordinator=a)
    engine.apply({"g": None})  # a reload removed group g on daemon a
    assert "g" not in engine.runners
    # three full reads of b and several publishes of a later, a must no longer vote on g
    await eventually(lambda: b.observers("g").get("a") in (None, {}), timeout=15)


async def test_a_group_added_by_a_reload_on_the_leader_takes_the_clusters_memory_of_its_moves() -> None:
    """A runner that starts while this daemon leads adds the cluster's memory of its group, as a new leader
    does.

    Before the fix: the cluster's memory of a group's moves (``<prefix>/memory/<group>``) is adopted only in
    ``Engine.leading``, at the start of a term. A group that a reload adds on the daemon that already leads (a rolling
    config change: the previous leader had the group and moved it, this one gets it by SIGHUP) starts with the journal's
    memory only, so the cooldown and ``max_failovers`` of the moves made by the previous leaders do not hold:
    docs/multi-node.md promises they hold "whoever leads"."""

    coordinator = ScriptedCoordinator()  # this daemon leads
    now = time.time()
    coordinator.shared["g"] = GroupMemory(False, (now - 60,), now - 60)  # the previous leader's move of g
    engine = Engine([], coordinator=coordinator)
    checks = {"a": ScriptedCheck(), "b": ScriptedCheck()}
    runner = GroupRunner(group_config(2, 1), FakeProvider({"e1": A}), {n: [c] for n, c in checks.items()},
                         Observers([]), coordinator=coordinator)
    engine.apply({"g": runner})  # SIGHUP added group g
    try:
        assert engine.runners.get("g") is runner
        assert runner.state.last_move_at is not None, "the previous leader's move does not hold the cooldown"
        moves = runner.state.recent_moves
        assert len(moves) == 1, f"the previous leader's move is not counted: {moves}"
    finally:
        engine.request_stop()
        for task in list(engine._loops.values()):
            task.cancel()


async def test_a_full_read_older_than_the_maintenance_switch_does_not_undo_it() -> None:
    """A read older than a change this daemon made itself is ignored (the switch stays on).

    Before the fix: ``EtcdCoordinator.set_maintenance`` stores the switch, then sets ``_maintenance[group]``, but does
    not advance ``_revision`` to the put's revision. A periodic full read (``_read``) whose snapshot was taken just
    before the put, and whose answer comes after it, passes the ``revision < self._revision`` guard (the watch has not
    brought the put yet) and replaces ``_maintenance`` wholesale: the switch the operator just set on the leader is off
    again, ``Engine.cluster_changed`` takes the group out of maintenance (and decides: a failover that maintenance was
    meant to hold can start) until the watch event or the next read puts it back."""

    class SlowRead:
        """etcd as seen through a read taken at revision 10, answered after a put at revision 11."""

        def __init__(self) -> None:
            self.release = asyncio.Event()
            self.reading = asyncio.Event()

        async def get_prefix(self, prefix: str) -> tuple[list[Any], int]:
            self.reading.set()
            await self.release.wait()
            return [], 10

        async def txn(self, compare: Any, success: Any, failure: Any = ()) -> TxnResult:
            return TxnResult(True, 11, [None])

    client = SlowRead()
    config = ClusterConfig(type="etcd", endpoints=["http://127.0.0.1:1"], prefix="/p", node="a", ttl=3.0)
    coordinator = EtcdCoordinator(config, None, client)  # type: ignore[arg-type]
    coordinator._maintenance, coordinator._revision = {}, 10  # as the last read and the watch left it
    read = asyncio.create_task(coordinator._read())
    await client.reading.wait()
    await coordinator.set_maintenance("g", True)  # the operator's switch, on the leader
    assert coordinator.maintenance("g") is True
    client.release.set()
    await read
    assert coordinator.maintenance("g") is True, "a read older than the switch turned maintenance off again"


async def moved_once_held(runner: GroupRunner) -> None:
    """Decide again (a fresh read and a check round) once the one interval a refused move holds the next is over,
    and wait for the move."""
    hold = runner.state.fence_hold_until
    await eventually(lambda: hold is None or time.monotonic() >= hold, timeout=30)
    await runner.read_cloud()
    await runner.check_round()
    await asyncio.wait_for(runner.wait_idle(), 30)


def aws_runner(ec2: Ec2World, coordinator: Coordinator, *, second: str | None = None,
               **policy: Any) -> tuple[GroupRunner, dict[str, ScriptedCheck], AwsProvider]:
    """Group ``web`` (a, b) on the real AWS driver against moto: one mutating call in flight at a time, or, with a
    ``second`` EIP, two (a read timeout of 5 s then)."""
    data: dict[str, Any] = {
        "providers": {"aws": {"type": "aws", "region": REGION}},
        "groups": [{
            "name": "web", "provider": "aws", "eips": [ec2.eip] if second is None else [ec2.eip, second],
            "policy": {"interval": 1, "timeout": 0.5, "rise": 1, "fall": 1, "cooldown": 0, **policy},
            "targets": [{"name": name, "binding": {"instance_id": iid},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]}
                        for name, iid in (("a", ec2.instance_a), ("b", ec2.instance_b))],
        }],
    }
    provider = AwsProvider("aws", AwsProviderConfig(
        type="aws", region=REGION, endpoint_url=ec2.endpoint, connect_timeout=0.5,
        read_timeout=1 if second is None else 5, max_concurrency=1 if second is None else 2))
    checks = {"a": ScriptedCheck(), "b": ScriptedCheck()}
    runner = GroupRunner(parse_config(data).groups[0], provider, {n: [c] for n, c in checks.items()},
                         Observers([]), coordinator=coordinator)
    return runner, checks, provider


async def primary_fails(runner: GroupRunner, checks: dict[str, ScriptedCheck]) -> None:
    """The group reads the cloud and checks its targets; then target a fails, and a failover starts."""
    await runner.read_cloud()
    await runner.check_round()
    checks["a"].status = CheckStatus.FAIL
    await runner.check_round()
    assert runner.in_progress, runner.decision


async def queue_a_failover(runner: GroupRunner, checks: dict[str, ScriptedCheck], mutations: Limiter) -> None:
    """Target a fails, and the failover's AssociateAddress waits in the rate limit: the one mutation slot is held
    (another group's move) until the test releases it."""
    await mutations.acquire(token=False)
    await primary_fails(runner, checks)
    await eventually(lambda: bool(mutations._waiters), timeout=10)


async def wind_down(mutations: Limiter, *worlds: tuple[GroupRunner, AwsProvider]) -> None:
    """The end of a test: the mutation slot it held given back, every runner stopped and idle, every driver
    closed."""
    if mutations._waiters:
        mutations.release()
    for runner, _ in worlds:
        runner.request_stop()
    for runner, provider in worlds:
        await runner.wait_idle()
        await provider.close()


def engine_for(ec2: Ec2World, coordinator: EtcdCoordinator, **policy: Any) -> tuple[GroupRunner,
                                                                                   dict[str, ScriptedCheck],
                                                                                   AwsProvider]:
    """:func:`aws_runner` in an engine that the coordinator tells of changes and of a new term."""
    runner, checks, provider = aws_runner(ec2, coordinator, **policy)
    engine = Engine([runner], coordinator=coordinator)
    coordinator.on_change, coordinator.on_leading = engine.cluster_changed, engine.leading
    return runner, checks, provider


async def next_leader_fails_over_at_once(daemons: Daemons, b: EtcdCoordinator, runner: GroupRunner,
                                         checks: dict[str, ScriptedCheck], ec2: Ec2World) -> None:
    """Daemon b, started once a's lease has expired, leads and fails over at once: no cooldown of a's."""
    daemons.start(b)
    await eventually(b.acting, timeout=30)
    checks["a"].status = CheckStatus.FAIL
    await runner.read_cloud()
    await runner.check_round()
    assert runner.decision is not None
    assert runner.decision.reason is not Reason.COOLDOWN, (
        f"the next leader holds the cooldown of a move that sent nothing: {b.memory('web')}")
    await asyncio.wait_for(runner.wait_idle(), 30)
    assert ec2.holder().get("InstanceId") == ec2.instance_b, runner.decision


async def test_a_move_decided_in_one_term_is_not_sent_in_a_later_term(
        etcd: EtcdCluster, prefix: str, raw: EtcdClient, daemons: Daemons, ec2: Ec2World) -> None:
    """A move is bound to the term it was decided in. Here its call waits in the rate limit's queue (the one
    mutation slot is busy) while the lease expires in etcd and the same daemon wins a new term; meanwhile the operator
    parks the EIP on an instance outside the group. The queued call is refused when its turn comes (the term is
    over); the new term re-reads the cloud and leaves the foreign EIP alone.

    Before the fix: the fence proved only that the daemon leads *now*, so the stale move was sent in the new term on
    the old term's view of the cloud, and dragged the parked EIP to target b."""
    a = daemons.make(etcd.client_urls, prefix, "a", ttl=4.0)
    runner, checks, provider = engine_for(ec2, a)
    mutations = provider.limits.mutations
    try:
        daemons.start(a)
        await eventually(a.acting, timeout=30)
        first_term, lease = a.term(), a._lease
        assert lease is not None
        await queue_a_failover(runner, checks, mutations)
        await raw.revoke(lease)  # the lease expires in etcd (an etcd blip longer than the TTL)
        await eventually(lambda: a.acting() and a.term() not in (None, first_term), timeout=30)
        reply = ec2.client.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.micro")
        parked = reply["Instances"][0]["InstanceId"]
        ec2.client.associate_address(AllocationId=ec2.eip, InstanceId=parked, AllowReassociation=True)
        mutations.release()  # the queue moves on
        await asyncio.wait_for(runner.wait_idle(), 30)
        done = runner.state.last_failover
        assert done is not None
        assert f"decided in term {first_term}, which is over" in done.error, done
        assert ec2.holder().get("InstanceId") == parked
        await runner.read_cloud()  # the new term's own read: the EIP is foreign, left alone
        await runner.check_round()
        assert runner.state.current is None, runner.decision  # no move
        assert ec2.holder().get("InstanceId") == parked
    finally:
        runner.request_stop()
        await provider.close()


async def test_a_leader_key_on_no_lease_is_removed_and_a_leader_elected(
        etcd: EtcdCluster, prefix: str, raw: EtcdClient, daemons: Daemons) -> None:
    """A leader key that no lease holds (written by hand, or restored without its lease) would never expire: it is
    nobody alive, as a member key on no lease is. It is reported (``leader_key_without_lease``), removed, and a
    daemon is elected with a term of its own.

    Before the fix: the key counted as the leader forever; nobody ever led, and only an info ``leader_seen`` said
    anything."""
    await raw.put(f"{prefix}/leader", json.dumps({"node": "old", "api": None}).encode())  # no lease
    a = daemons.make(etcd.client_urls, prefix, "a", ttl=3.0)
    with structlog.testing.capture_logs() as logs:
        daemons.start(a)
        await eventually(a.acting, timeout=30)
    assert a.status().leader == "a"
    assert any(e["event"] == "leader_key_without_lease" and e["log_level"] == "error" for e in logs)
    kvs, _ = await raw.get_prefix(f"{prefix}/leader")
    assert [(kv.lease, kv.create_revision) for kv in kvs] == [(a._lease, a.term())]


async def test_a_failover_the_fence_refused_does_not_start_the_cooldown(
        etcd: EtcdCluster, prefix: str, daemons: Daemons, ec2: Ec2World) -> None:
    """A move the fence refused before any cloud call (etcd did not answer the proof) changed nothing: it neither
    starts the cooldown (60 s here) nor takes a place in the ``max_failovers`` window. When etcd answers again
    within the TTL (the same leader, the same term) and the primary is still DOWN, the failover happens at once.

    Before the fix: the refused move held the group for the whole cooldown, and its memory went to etcd for the
    next leader too."""
    async with proxied(etcd) as proxy:
        a = daemons.make([proxy.url], prefix, "a", ttl=6.0)
        runner, checks, provider = aws_runner(ec2, a, cooldown=60)
        try:
            daemons.start(a)
            await eventually(a.acting, timeout=30)
            term = a.term()
            await runner.read_cloud()
            await runner.check_round()
            proxy.cut = True  # etcd does not answer for a moment (the lease has seconds left)
            checks["a"].status = CheckStatus.FAIL
            await runner.check_round()
            assert runner.in_progress, runner.decision
            await asyncio.wait_for(runner.wait_idle(), 30)
            refused = runner.state.last_failover
            assert refused is not None
            assert "not sent" in refused.error, refused
            assert (runner.state.last_move_at, runner.state.recent_moves) == (None, ())
            proxy.cut = False  # etcd answers again: still the same leader and term
            await eventually(lambda: a.acting() and a.term() == term and not a._unshared, timeout=30)
            memory = a.memory("web")
            assert memory is None or memory.window_starts == (), memory
            await moved_once_held(runner)
            assert runner.decision is not None
            assert runner.decision.reason is not Reason.COOLDOWN
            assert ec2.holder().get("InstanceId") == ec2.instance_b, runner.decision
        finally:
            await provider.close()
class LapsesInTheThread(ScriptedCoordinator):
    """The proof succeeds and the re-check in the event loop says "send"; the re-check made again in the AWS driver's
    thread (after the wait for a free thread) says the lease lapsed meanwhile: nothing goes out."""

    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        await super().fence(group, failover_id, operation, seconds, term)
        answers = iter([True])  # the loop's re-check: True; the thread's: False
        return lambda: next(answers, False)


async def test_a_move_refused_in_the_aws_thread_takes_back_its_cooldown(ec2: Ec2World) -> None:
    """A failover whose only call the AWS driver's thread refused (the lease lapsed while the call waited
    for a free thread: ``NotLeader``, nothing sent) changed nothing: it takes back its cooldown (60 s) and its
    ``max_failovers`` place.

    Before the fix: the move was marked ``sent`` before the thread's own check, so it kept both."""
    coordinator = LapsesInTheThread()
    runner, checks, provider = aws_runner(ec2, coordinator, cooldown=60)
    try:
        await primary_fails(runner, checks)
        await asyncio.wait_for(runner.wait_idle(), 30)
        refused = runner.state.last_failover
        assert refused is not None
        assert "waited for a thread" in refused.error, refused
        assert ec2.holder().get("InstanceId") == ec2.instance_a  # nothing went out
        assert (runner.state.last_move_at, runner.state.recent_moves) == (None, ()), (
            "a move refused before anything was sent keeps its cooldown and window place")
    finally:
        await runner.wait_idle()
        await provider.close()


@pytest.mark.parametrize("kind", ["memory", "journal"])
async def test_a_refused_move_is_not_remembered_as_a_move_by_the_store(ec2: Ec2World, tmp_path: Path,
                                                                         kind: str) -> None:
    """A failover the fence refused before sending anything is not remembered as a move by the state
    store either (read back at a restart, or when a reload adds the group again).

    Before the fix: the store was told at ``begin`` that the move counts, and never told otherwise: ``remember``
    brought the refused move back as the start of a 60 s cooldown and a place in the window."""
    coordinator = ScriptedCoordinator()
    coordinator.refuse = "AssociateAddress not sent: leadership cannot be proven: etcd timed out"
    store: Any = MemoryStore() if kind == "memory" else Journal.open(tmp_path / "state", max_age=3600,
                                                                         max_records=100)
    runner, checks, provider = aws_runner(ec2, coordinator, cooldown=60)
    runner.store = runner.actuator.store = store
    runner.observers = Observers([store])  # as in the daemon: the store records every failover
    try:
        await runner.read_cloud()
        await runner.check_round()
        checks["a"].status = CheckStatus.FAIL
        await runner.check_round()
        await asyncio.wait_for(runner.wait_idle(), 30)
        assert (runner.state.last_move_at, runner.state.recent_moves) == (None, ())  # taken back in the runner
        memory = (await store.remember({"web": runner.config.policy.max_failovers.window}))["web"]
        assert (memory.last_move_at, memory.window_starts) == (None, ()), (
            f"the store remembers the refused move: {memory}")
    finally:
        await runner.wait_idle()
        await provider.close()
        if kind == "journal":
            await store.close()


@pytest.mark.parametrize("havip_proof", [False, True], ids=["alone", "after-a-havip-proof"])
async def test_a_refused_move_does_not_hand_its_cooldown_to_the_next_leader(
        etcd: EtcdCluster, prefix: str, raw: Any, daemons: Daemons, ec2: Ec2World, fake: FakeAliyun,
        health_servers: list[HealthServer], tmp_path: Path, havip_proof: bool) -> None:
    """Daemon a leads and decides a failover; its call waits in the rate limit (the one mutation slot is
    busy). Meanwhile, in one case, the HaVip guard of a target of the same group forces its dead master off, proven
    with ``fence("web", "havip-...", ...)``. a is then cut off from etcd: the fence refuses the failover's call,
    nothing is sent. a's lease expires, b is elected, the primary is still DOWN: b fails over at once.

    Before the fixes: the memory of the move's start (the cooldown armed, a window place) was stored in etcd as soon
    as the move started; then with *any* proof of its group (here the HaVip's), not only its own; and the corrected
    memory could never be stored (a no longer led): b adopted it and held the dead primary for the whole cooldown."""
    async with proxied(etcd) as proxy:
        a = daemons.make([proxy.url], prefix, "a", ttl=4.0)
        runner_a, checks_a, provider_a = engine_for(ec2, a, cooldown=60)
        mutations = provider_a.limits.mutations
        b = daemons.make(etcd.client_urls, prefix, "b", ttl=4.0)
        runner_b, checks_b, provider_b = engine_for(ec2, b, cooldown=60)
        try:
            daemons.start(a)
            await eventually(a.acting, timeout=30)
            await queue_a_failover(runner_a, checks_a, mutations)
            if havip_proof:  # the group's HaVip guard takes over meanwhile: its UnassociateHaVip is proven
                g, tick = await dying_master_tick(fake, provider_for(fake, tmp_path), health_servers, a)
                await asyncio.wait_for(tick, 10)
                assert "UnassociateHaVip" in fake.actions(), g.decision
            kvs, _ = await raw.get_prefix(f"{prefix}/memory/web")
            assert kvs == [], "the start of a move is stored only with its own first proof"
            proxy.cut = True  # a is cut off from etcd: its proof fails, nothing is sent
            mutations.release()
            await asyncio.wait_for(runner_a.wait_idle(), 30)
            refused = runner_a.state.last_failover
            assert refused is not None
            assert "not sent" in refused.error, refused
            assert ec2.holder().get("InstanceId") == ec2.instance_a
            assert runner_a.state.last_move_at is None  # taken back, on a

            await next_leader_fails_over_at_once(daemons, b, runner_b, checks_b, ec2)
        finally:
            await wind_down(mutations, (runner_a, provider_a), (runner_b, provider_b))


async def test_a_move_refused_in_a_new_term_of_the_same_leader_takes_back_its_cooldown(
        etcd: EtcdCluster, prefix: str, raw: Any, daemons: Daemons, ec2: Ec2World,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The term scenario with a 60 s cooldown: a's move waits in the rate limit; its lease expires in etcd and
    a wins a new term, adopting the cluster's memory (its own move's start, back through wall-clock time); the queued
    call is refused (the term is over). The wall clock was stepped back 1 ms meanwhile (an NTP correction; the
    sampling jitter of ``time.time() - time.monotonic()`` does the same about half the time). The refused move takes
    back its cooldown, and the new term fails over at once from its fresh read.

    Before the fix: the echo of the move's own start, 1 ms off, was kept as the start of the cooldown."""
    a = daemons.make(etcd.client_urls, prefix, "a", ttl=4.0)
    runner, checks, provider = engine_for(ec2, a, cooldown=60)
    mutations = provider.limits.mutations
    try:
        daemons.start(a)
        await eventually(a.acting, timeout=30)
        first_term, lease = a.term(), a._lease
        assert lease is not None
        await queue_a_failover(runner, checks, mutations)
        await eventually(lambda: not a._unshared, timeout=10)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 0.001)  # the wall clock is stepped back 1 ms
        await raw.revoke(lease)
        await eventually(lambda: a.acting() and a.term() not in (None, first_term), timeout=30)
        mutations.release()
        await asyncio.wait_for(runner.wait_idle(), 30)
        refused = runner.state.last_failover
        assert refused is not None
        assert f"decided in term {first_term}, which is over" in refused.error, refused
        assert ec2.holder().get("InstanceId") == ec2.instance_a
        await moved_once_held(runner)  # the new term's own read
        assert runner.decision is not None
        assert runner.decision.reason is not Reason.COOLDOWN, (
            f"a move the fence refused before sending anything holds the group: {runner.decision}")
        assert ec2.holder().get("InstanceId") == ec2.instance_b
    finally:
        runner.request_stop()
        await runner.wait_idle()
        await provider.close()


async def test_a_leader_cut_off_from_etcd_does_not_retry_a_refused_failover_in_a_tight_loop(
        etcd: EtcdCluster, prefix: str, daemons: Daemons, ec2: Ec2World) -> None:
    """The leader is cut off from etcd (each proof fails at once) while its lease is still valid by its own
    clock, and the primary goes DOWN: every move is refused by the fence before anything is sent. A refused move is
    tried again at most once per interval (1 s): each attempt is a failover record, a ``before_failover`` hook run, an
    etcd proof and a cloud read.

    Before the fix: the refused move took back its cooldown and woke a cloud read at once, whose decision started the
    same move again: dozens of refused failovers a second."""
    class Starts(NullObserver):
        def __init__(self) -> None:
            self.count = 0

        def on_failover_started(self, record: FailoverRecord) -> None:
            self.count += 1

    async with proxied(etcd) as proxy:
        a = daemons.make([proxy.url], prefix, "a", ttl=6.0)
        runner, checks, provider = aws_runner(ec2, a, cooldown=60)
        starts = Starts()
        runner.observers = Observers([starts])
        daemons.start(a)
        await eventually(a.acting, timeout=30)
        task = asyncio.create_task(runner.run())
        try:
            await eventually(lambda: runner.reconciled.is_set(), timeout=10)
            proxy.cut = True
            checks["a"].status = CheckStatus.FAIL
            began = time.monotonic()
            await eventually(lambda: not a.acting(), timeout=30)
            seconds = time.monotonic() - began
            assert ec2.holder().get("InstanceId") == ec2.instance_a
            allowed = int(seconds / runner.config.policy.interval) + 2
            assert starts.count <= allowed, (
                f"{starts.count} refused failovers in {seconds:.1f}s (at most {allowed} expected)")
        finally:
            runner.request_stop()
            await task
            await runner.wait_idle()
            await provider.close()


class FirstProofOnly(ScriptedCoordinator):
    """The first proof succeeds; every later one is refused (the term ended between two of a move's calls)."""

    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        proven = await super().fence(group, failover_id, operation, seconds, term)
        if len(self.fences) > 1:
            raise NotLeader(f"{operation} not sent: this daemon no longer leads (term {term} is over)")
        return proven


async def test_a_move_whose_call_is_in_flight_at_the_deadline_is_not_taken_back(ec2: Ec2World) -> None:
    """Two EIPs on the real AWS driver, cooldown 60 s, failover_deadline 1 s. The move's first
    AssociateAddress is proven and sent (EC2 answers after 2.5 s); the second one's proof is refused (the term ended
    between them). At the deadline the first call is still in flight; it then lands and moves an EIP. The move sent
    a call: it keeps its cooldown.

    Before the fix: a call counted as sent only once answered, so this move was taken for one refused before
    anything went out: its cooldown and window place were given back and the store uncounted it."""
    second = ec2.new_eip(on_instance=ec2.instance_a)
    coordinator = FirstProofOnly()
    runner, checks, provider = aws_runner(ec2, coordinator, second=second, cooldown=60, failover_deadline=1)
    real = provider.client.associate_address
    answered = threading.Event()

    def slow_associate(**params: Any) -> Any:  # runs in the driver's thread: EC2 answers after 2.5 s
        try:
            time.sleep(2.5)
            return real(**params)
        finally:
            answered.set()

    provider.client.associate_address = slow_associate
    try:
        await primary_fails(runner, checks)
        await asyncio.wait_for(runner.wait_idle(), 30)
        done = runner.state.last_failover
        assert done is not None
        # the proven call lands: the move changed the cloud
        await eventually(lambda: {ec2.holder(e).get("InstanceId") for e in (ec2.eip, second)}
                         == {ec2.instance_a, ec2.instance_b}, timeout=10)
        assert runner.state.last_move_at is not None, (
            f"a move whose AssociateAddress went out (and moved an EIP) gave back its cooldown: {done.error}")
    finally:
        await runner.wait_idle()
        await asyncio.to_thread(answered.wait, 10)  # the slow thread's call ends before the driver closes
        await provider.close()


class RefusesOneHoldsTheOther(ScriptedCoordinator):
    """Two calls of one move proven at once: the first proof fails at once (etcd timed out on it); the second
    one is slow (a renewal, a second transaction) and succeeds once ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        first = not self.fences
        proven = await super().fence(group, failover_id, operation, seconds, term)
        if first:
            raise NotLeader(f"{operation} not sent: leadership cannot be proven: etcd timed out")
        self.holding.set()
        await self.release.wait()
        return proven


async def test_a_parallel_call_still_in_the_fence_at_the_deadline_keeps_the_moves_cooldown(ec2: Ec2World) -> None:
    """Two EIPs on the real AWS driver, cooldown 60 s, failover_deadline 1 s. The move's two AssociateAddress
    calls are proven at once: one proof fails (``NotLeader``), the other is slow and still under way at the
    deadline; it then succeeds and its call goes out, moving an EIP. The move keeps its cooldown.

    Before the fix: a call counted only once proven, so the move, whose last error was the first call's
    ``NotLeader``, counted as refused before anything was sent and gave its cooldown back."""
    second = ec2.new_eip(on_instance=ec2.instance_a)
    coordinator = RefusesOneHoldsTheOther()
    runner, checks, provider = aws_runner(ec2, coordinator, second=second, cooldown=60, failover_deadline=1)
    try:
        await primary_fails(runner, checks)
        await asyncio.wait_for(coordinator.holding.wait(), 10)
        await asyncio.wait_for(runner.wait_idle(), 30)  # the deadline: the second proof still under way
        done = runner.state.last_failover
        assert done is not None
        coordinator.release.set()  # the slow proof succeeds: its call goes out
        await eventually(lambda: ec2.instance_b in {ec2.holder(e).get("InstanceId") for e in (ec2.eip, second)},
                         timeout=10)
        assert runner.state.last_move_at is not None, (
            f"a move whose AssociateAddress went out (and moved an EIP) gave back its cooldown: {done.error}")
    finally:
        coordinator.release.set()
        await runner.wait_idle()
        await provider.settle(10)
        await provider.close()


async def test_a_step_down_that_ends_in_the_same_term_keeps_the_memory_of_a_moves_start(
        etcd: EtcdCluster, prefix: str, raw: Any, daemons: Daemons, ec2: Ec2World) -> None:
    """Daemon a leads (term T) and decides a failover (cooldown 60 s); its call waits in the rate limit. etcd's
    answers to a's lease renewals come after the client's timeout for a while: the renewals reach etcd (its lease and
    leader key stay alive), but a's own clock says its lease lapsed, so it steps down, then leads again in the
    *same* term T. The queued call is then proven in T and sent, and the EIP moves; a dies right then. b is elected;
    target b fails: b holds the cooldown of a's move (it was stored with the move's first proof).

    Before the fix: a step-down dropped the move's start, so the proof carried nothing; b moved the EIP straight
    back, two moves within the cooldown."""
    async with proxied(etcd) as proxy:
        a = daemons.make([proxy.url], prefix, "a", ttl=4.0)
        runner_a, checks_a, provider_a = engine_for(ec2, a, cooldown=60)
        mutations = provider_a.limits.mutations
        b = daemons.make(etcd.client_urls, prefix, "b", ttl=4.0)
        runner_b, checks_b, provider_b = engine_for(ec2, b, cooldown=60)
        real = provider_a.client.associate_address
        started, go = threading.Event(), threading.Event()

        def held_associate(**params: Any) -> Any:  # in the driver's thread: the call is going out
            started.set()
            go.wait(30)
            return real(**params)

        provider_a.client.associate_address = held_associate
        try:
            daemons.start(a)
            await eventually(a.acting, timeout=30)
            term = a.term()
            await queue_a_failover(runner_a, checks_a, mutations)
            proxy.delays["/v3/lease/keepalive"] = 1.5  # answers after the client's 1 s timeout: lost, but renewed
            await eventually(lambda: a.term() is None, timeout=30)  # a's clock: the lease lapsed, it stepped down
            proxy.delays.clear()
            await eventually(a.acting, timeout=30)
            assert a.term() == term, "precondition: a leads again in the same term (its lease survived in etcd)"
            mutations.release()  # the queued call goes on: proven in term T, sent
            await eventually(started.is_set, timeout=30)
            await daemons.halt(a)  # a dies as its call goes out (no background publish any more)
            go.set()
            await asyncio.wait_for(runner_a.wait_idle(), 30)
            assert ec2.holder().get("InstanceId") == ec2.instance_b  # a's move did move the EIP

            daemons.start(b)
            await eventually(b.acting, timeout=30)  # once a's lease expired
            checks_b["b"].status = CheckStatus.FAIL  # the new active target fails; a is up again
            await runner_b.read_cloud()
            await runner_b.check_round()
            assert runner_b.decision is not None
            assert runner_b.decision.reason is Reason.COOLDOWN, runner_b.decision
        finally:
            go.set()
            await wind_down(mutations, (runner_a, provider_a), (runner_b, provider_b))


async def test_the_lease_is_counted_for_what_etcd_grants_not_the_configured_ttl(
        etcd: EtcdCluster, prefix: str, daemons: Daemons) -> None:
    """etcd grants leases in whole seconds: ``ttl: 2.5s`` is a 2 s lease. The daemon counts its lease valid for
    what etcd granted, after the grant and after every renewal, so the margin is not used up.

    Before the fix: a renewal counted the configured 2.5 s, half a second past the lease's expiry in etcd."""
    a = daemons.make(etcd.client_urls, prefix, "a", ttl=2.5)
    daemons.start(a)
    await eventually(a.acting, timeout=30)
    end = time.monotonic() + 2.5  # past a renewal or two (every ttl/3)
    while time.monotonic() < end:
        assert a._valid_until - time.monotonic() <= 2.0, "the lease is counted past its expiry in etcd"
        await asyncio.sleep(0.05)  # a poll step: the renewals are what is looked at
