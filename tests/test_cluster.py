"""Several daemons, one actor: real daemons on a real etcd and one moto server (see ``cluster_world``)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from .cli_run import run_cli
from .cluster_world import POLICY, TTL, ClusterWorld, Node, cluster_world, dump
from .conftest import Ec2World, eventually
from .etcd_server import EtcdCluster

pytestmark = [
    pytest.mark.e2e,
    # the daemons here are subprocesses: this process holds only the tests' own proxies, health servers and client
    # session. Once in dozens of runs one of their sockets (aiohttp's, accepted as a server stopped, most likely)
    # was garbage-collected unclosed (CI, stop 16); not reproduced in 17 runs under tracemalloc. It says nothing
    # about the daemons, whose own leaks the in-process daemon tests (tests/api_daemon.py) still catch.
    pytest.mark.filterwarnings("ignore:Exception ignored in. <function _SelectorTransport.__del__"
                               ":pytest.PytestUnraisableExceptionWarning"),
]


async def all_see(world: ClusterWorld, target: str, state: str, nodes: list[Node] | None = None) -> None:
    """Wait until every daemon of ``nodes`` has published ``target``'s state as ``state`` (as the leader sees)."""
    async def seen() -> bool:
        leader = await world.leader()
        _, group = await world.get(leader, "/v1/groups/web")
        views = {o["node"]: o["state"] for t in group["targets"] if t["name"] == target for o in t["observers"]}
        return all(views.get(n.name) == state for n in (nodes or world.nodes) if n.alive())
    await eventually(seen, timeout=30)


async def test_three_daemons_elect_one_leader_and_only_it_fails_over(ec2: Ec2World, tmp_path: Path) -> None:
    """Exactly one leader, which every daemon's /v1/cluster names; one daemon cut off from the primary moves
    nothing; the primary dead for all: one failover, and only the leader called the cloud."""
    async with cluster_world(ec2, tmp_path) as world:
        leader = await world.leader()

        async def members_agree() -> bool:
            views = [await world.cluster(n) for n in world.nodes]
            return all(v is not None and len(v["members"]) == 3 and v["coordination"] == "ok" for v in views)
        await eventually(members_agree, timeout=30)
        views = [await world.cluster(n) for n in world.nodes]
        assert {v["leader"] for v in views if v} == {leader.name}
        assert sum(1 for v in views if v and v["acting"]) == 1
        await all_see(world, "a", "up")

        # one daemon cut off from the primary: it votes DOWN, the two others UP: nothing moves
        follower = next(n for n in world.nodes if n is not leader)
        await follower.primary.stop()
        await follower.process.wait_for("target_down", 30, target="a")
        await all_see(world, "a", "up", [n for n in world.nodes if n is not follower])
        _, group = await world.get(leader, "/v1/groups/web")
        target_a = next(t for t in group["targets"] if t["name"] == "a")
        assert target_a["verdict"] == "up"
        assert {o["node"]: o["state"] for o in target_a["observers"]}[follower.name] == "down"
        cut = await world.get(leader, "/v1/groups/web")
        assert cut[1]["decision"]["reason"] == "active_healthy", dump(leader)
        assert world.holder() == ec2.instance_a

        # the primary dies for all: one failover, by the leader only
        for node in world.nodes:
            await node.primary.stop()
        await eventually(lambda: world.holder() == ec2.instance_b, timeout=30)
        await leader.process.wait_for("failover_verified", 30)
        assert leader.mutations() == ["AssociateAddress"], dump(leader)
        assert all(n.mutations() == [] for n in world.nodes if n is not leader)
        for node in world.nodes:
            if node is not leader:
                assert node.process.count("failover_started") == 0, dump(node)


async def scrape(world: ClusterWorld, node: Node, name: str) -> float | None:
    assert world.session is not None
    async with world.session.get(node.url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_kill_9_of_the_leader_hands_over_within_ttl(ec2: Ec2World, tmp_path: Path) -> None:
    """kill -9 of the leader: another daemon leads within TTL plus one interval and fails over when needed; the EIP
    moves once; the old leader, restarted, follows."""
    async with cluster_world(ec2, tmp_path) as world:
        old = await world.leader()
        await all_see(world, "a", "up")
        killed_at = loop_time()
        world.kill(old)
        await old.process.wait()
        survivors = [n for n in world.nodes if n is not old]
        new = await world.leader(survivors)
        handover = loop_time() - killed_at
        assert new is not old
        assert handover < TTL + 0.5 + 2.0, handover  # TTL + one interval, and slack for a loaded machine

        for node in world.nodes:
            await node.primary.stop()
        await eventually(lambda: world.holder() == ec2.instance_b, timeout=30)
        await new.process.wait_for("failover_verified", 30)

        await world.start(old)
        assert (await world.leader()) is new
        await old.process.wait_for("target_down", 30, target="a", after=killed_at)  # it has looked, and not acted
        status = await world.cluster(old)
        assert status is not None
        assert status["acting"] is False
        assert status["leader"] == new.name
        assert [op for n in world.nodes for op in n.mutations()] == ["AssociateAddress"]
        assert new.mutations() == ["AssociateAddress"]


async def test_a_leader_frozen_past_its_ttl_makes_no_cloud_call(ec2: Ec2World, tmp_path: Path) -> None:
    """SIGSTOP the leader past its TTL while the active target dies, then SIGCONT: the new leader moved the EIP; the
    old one makes no cloud call and reports leader 0."""
    async with cluster_world(ec2, tmp_path) as world:
        old = await world.leader()
        await all_see(world, "a", "up")
        world.kill(old, signal.SIGSTOP)
        for node in world.nodes:
            await node.primary.stop()
        survivors = [n for n in world.nodes if n is not old]
        new = await world.leader(survivors)
        await eventually(lambda: world.holder() == ec2.instance_b, timeout=30)
        resumed_at = loop_time()
        world.kill(old, signal.SIGCONT)
        await old.process.wait_for("leadership_lost", 30, after=resumed_at)
        await old.process.wait_for("target_down", 30, target="a", after=resumed_at)
        assert await scrape(world, old, "eipfailover_leader") == 0.0
        assert await scrape(world, new, "eipfailover_leader") == 1.0
        assert old.mutations() == [], dump(old)
        assert new.mutations() == ["AssociateAddress"]
        assert (await world.cluster(old) or {}).get("leader") == new.name


async def nothing_moves_without_etcd(world: ClusterWorld, ec2: Ec2World, since: float) -> None:
    """With etcd unusable: every /readyz says 503 coordination_lost; the primary dies; nobody moves the EIP."""
    async def all_unready() -> bool:
        for node in world.nodes:
            status, body = await world.get(node, "/readyz")
            if status != 503 or body.get("error") != "coordination_lost":
                return False
        return True
    await eventually(all_unready, timeout=30)
    for node in world.nodes:
        await node.process.wait_for("coordination_lost", 30, after=since)
        await node.primary.stop()
    for node in world.nodes:  # each has confirmed the primary down, and holds
        await node.process.wait_for("target_down", 30, target="a", after=since)
        await node.process.wait_for("decision", 30, reason="coordination_lost", after=since)
        assert await scrape(world, node, "eipfailover_cluster_up") == 0.0
    assert world.holder() == ec2.instance_a
    assert [op for n in world.nodes for op in n.mutations()] == []


async def test_etcd_stopped_nobody_moves_then_the_failover_happens(ec2: Ec2World, tmp_path: Path) -> None:
    """etcd stopped: no daemon moves anything even when the active target dies, /readyz is 503 everywhere; etcd
    started again: the failover happens, once."""
    async with cluster_world(ec2, tmp_path) as world:
        await world.leader()
        await all_see(world, "a", "up")
        since = loop_time()
        await asyncio.to_thread(world.etcd.stop)
        await nothing_moves_without_etcd(world, ec2, since)
        await asyncio.to_thread(world.etcd.start)
        await eventually(lambda: world.holder() == ec2.instance_b, timeout=30)
        for node in world.nodes:
            await node.process.wait_for("coordination_restored", 30)
        assert sorted(op for n in world.nodes for op in n.mutations()) == ["AssociateAddress"]


async def test_etcd_without_quorum_is_like_etcd_stopped(ec2: Ec2World, tmp_path: Path) -> None:
    """A three-member etcd with two members killed: nobody moves anything; both back: the failover happens."""
    async with cluster_world(ec2, tmp_path, etcd_members=3) as world:
        await world.leader()
        await all_see(world, "a", "up")
        since = loop_time()
        for member in world.etcd.members[1:]:
            member.kill()
        await nothing_moves_without_etcd(world, ec2, since)
        for member in world.etcd.members[1:]:
            await asyncio.to_thread(member.start)
        await eventually(lambda: world.holder() == ec2.instance_b, timeout=30)
        assert sorted(op for n in world.nodes for op in n.mutations()) == ["AssociateAddress"]


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def test_followers_send_changes_to_the_leader(ec2: Ec2World, tmp_path: Path) -> None:
    """A manual failover on a follower: 409 not_leader with the leader's node and API URL; the CLI follows it. The
    maintenance switch set through the leader is every daemon's."""
    async with cluster_world(ec2, tmp_path) as world:
        leader = await world.leader()
        follower = next(n for n in world.nodes if n is not leader)
        await all_see(world, "b", "up")
        status, body = await world.post(follower, "/v1/groups/web/failover", {"to": "b"})
        assert status == 409
        assert body["error"] == "not_leader"
        assert body["leader"] == leader.name
        assert body["leader_api"] == leader.url
        assert follower.mutations() == []

        token = tmp_path / "token"
        cli = await run_cli("failover", "web", "--to", "b", "--api", follower.url, "--token-file", str(token),
                            "--timeout", "30")
        assert cli.code == 0, cli.err
        assert f"sent to the cluster's leader at {leader.url}" in cli.out
        assert world.holder() == ec2.instance_b
        assert leader.mutations() == ["AssociateAddress"]

        cli = await run_cli("maintenance", "web", "on", "--api", follower.url, "--token-file", str(token))
        assert cli.code == 0, cli.err

        async def everywhere() -> bool:
            groups = [(await world.get(n, "/v1/groups/web"))[1] for n in world.nodes]
            return all(group["maintenance"] for group in groups)
        await eventually(everywhere, timeout=15)


async def test_etcd_with_tls_client_certificates_and_a_password(ec2: Ec2World, tmp_path: Path) -> None:
    """A daemon on an etcd that requires a client certificate and a user limited to the prefix elects itself; with a
    wrong password it keeps running, not ready, and says why (credentials that fail at boot often recover)."""
    etcd = EtcdCluster(1, tmp_path / "etcd", tls=True)
    await asyncio.to_thread(etcd.start)
    try:
        await asyncio.to_thread(etcd.enable_auth, "eipf", "s3cret", "/eipfailover/test")
        assert etcd.tls is not None
        password = tmp_path / "etcd-password"
        password.write_text("s3cret\n")
        tls = {"ca_file": str(etcd.tls.ca), "cert_file": str(etcd.tls.client_cert),
               "key_file": str(etcd.tls.client_key)}
        async with cluster_world(ec2, tmp_path / "w", daemons=1, etcd=etcd, tls=tls, username="eipf",
                                 password_file=str(password)) as world:
            node = await world.leader()
            status = await world.cluster(node)
            assert status is not None
            assert status["coordination"] == "ok"
        password.write_text("wrong")
        async with cluster_world(ec2, tmp_path / "x", daemons=1, etcd=etcd, start=False, tls=tls, username="eipf",
                                 password_file=str(password)) as world:
            node = world.nodes[0]
            await node.process.start()
            await node.process.wait_for("cluster_unreachable", 30)
            error = next(e for _, e in node.process.events if e.get("event") == "cluster_unreachable")["error"]
            assert "authentication failed" in error, error

            async def unready() -> bool:
                try:
                    status, body = await world.get(node, "/readyz")
                except OSError:
                    return False
                return status == 503 and body["error"] == "coordination_lost"
            await eventually(unready, timeout=30)
            assert node.alive()
    finally:
        await asyncio.to_thread(etcd.stop)


async def test_max_failovers_holds_across_a_change_of_leader(ec2: Ec2World, tmp_path: Path) -> None:
    """At most one automatic move per hour: the leader moves the EIP to b and dies; the new leader, seeing b die and
    a come back, holds (rate_limited) because it took the dead leader's memory of the move."""
    policy = {**POLICY, "failback": "auto", "max_failovers": {"count": 1, "window": "1h"}}
    async with cluster_world(ec2, tmp_path, policy=policy) as world:
        old = await world.leader()
        await all_see(world, "a", "up")
        for node in world.nodes:
            await node.primary.stop()
        await eventually(lambda: world.holder() == ec2.instance_b, timeout=30)
        await old.process.wait_for("failover_verified", 30)
        world.kill(old)
        await old.process.wait()
        survivors = [n for n in world.nodes if n is not old]
        new = await world.leader(survivors)
        since = loop_time()
        for node in survivors:
            await node.standby.stop()
            await node.primary.start()
        await new.process.wait_for("decision", 30, reason="rate_limited", after=since)
        assert world.holder() == ec2.instance_b
        assert new.mutations() == []


async def test_the_cluster_demo_runs() -> None:
    """``eipfailover demo --cluster``: etcd, moto, three daemons; the leader killed, the hand-over, the failover."""
    result = await run_cli("demo", "--cluster", timeout=180)
    assert result.code == 0, result.out + result.err
    assert "demo --cluster passed" in result.out
    assert "failovers in total: 1 (one, by the leader)" in result.out
