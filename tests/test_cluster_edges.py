"""Cluster edges: a move remembered twice, garbage under the prefix, a group removed or added by a reload, a stale
read against the maintenance switch."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from eipfailover.cluster.etcd_client import EtcdClient, TxnResult
from eipfailover.model import Binding

from .conftest import eventually
from .etcd_server import EtcdCluster
from .test_cluster_coordinator import Daemons
from .test_engine import World

A = Binding(instance_id="i-a")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    return f"/edges/{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def raw(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(etcd.client_urls, timeout=5.0)
    yield client
    await client.close()


@pytest.fixture
async def daemons() -> AsyncIterator[Daemons]:
    world = Daemons()
    yield world
    await world.close()


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
    w.runner.recent_moves = [now - 30.0]
    w.runner.last_move_at = now - 30.0
    shared = w.runner.memory()  # what this daemon stored in etcd as leader
    await asyncio.sleep(0.01)  # it loses leadership and wins it again later
    w.runner.adopt(shared)
    assert len(w.runner.recent_moves) == 1, f"one move counted {len(w.runner.recent_moves)} times: " \
                                            f"{w.runner.recent_moves}"


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
    a = daemons.make(etcd.client_urls, prefix, "a", ttl=3.0)
    daemons.start(a)
    await eventually(a.available, timeout=30)
    first = a._valid_until
    task = daemons.running[a]
    assert task is not None
    await eventually(lambda: a._valid_until > first + 0.5 or task.done(), timeout=9)
    assert not task.done(), f"the coordinator loop died: {task.exception()!r}"


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
    from eipfailover.engine import Engine, GroupRunner
    from eipfailover.events import Observers

    from .fakes import FakeProvider, ScriptedCheck
    from .test_engine import group_config

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
    from eipfailover.engine import Engine, GroupRunner
    from eipfailover.events import GroupMemory, Observers

    from .fakes import FakeProvider, ScriptedCheck
    from .test_coordination import ScriptedCoordinator
    from .test_engine import group_config

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
        assert runner.last_move_at is not None, "the previous leader's move does not hold the cooldown"
        assert len(runner.recent_moves) == 1, f"the previous leader's move is not counted: {runner.recent_moves}"
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
    from eipfailover.cluster.etcd import EtcdCoordinator
    from eipfailover.config import ClusterConfig

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
