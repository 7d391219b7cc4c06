"""HaVip takeover: the pure decision, and the guard against the fake VPC API with real member checks."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from eipfailover.checks.tcp import TcpCheck
from eipfailover.cluster.base import Coordinator
from eipfailover.config import HaVipTakeoverConfig, PolicyConfig, parse_config
from eipfailover.errors import ConfigError, ProviderError
from eipfailover.havip import HaVipGuard
from eipfailover.model import Action, Health, Reason, TargetState
from eipfailover.policy import havip_takeover
from eipfailover.providers.alibaba import AlibabaProvider

from .conftest import HealthServer, eventually
from .fake_aliyun import FakeAliyun, Fault, provider_for
from .test_coordination import ScriptedCoordinator

UP, DOWN, U = TargetState.UP, TargetState.DOWN, TargetState.UNKNOWN
MEMBERS = ("i-1", "i-2", "i-3")


def states(*s: TargetState) -> dict[str, Health]:
    return {m: Health(state=x) for m, x in zip(MEMBERS, s, strict=True)}


@pytest.mark.parametrize(("master", "health", "last", "action", "reason", "target"), [
    ("i-1", states(UP, UP, UP), None, Action.NONE, Reason.HAVIP_MASTER_HEALTHY, "i-1"),
    ("i-1", states(U, UP, UP), None, Action.NONE, Reason.HAVIP_MASTER_HEALTHY, "i-1"),  # not confirmed down
    ("i-1", states(DOWN, UP, UP), None, Action.TAKEOVER, Reason.HAVIP_MASTER_DOWN, "i-2"),
    ("i-1", states(DOWN, DOWN, UP), None, Action.TAKEOVER, Reason.HAVIP_MASTER_DOWN, "i-3"),
    ("i-1", states(DOWN, DOWN, U), None, Action.NONE, Reason.NO_HEALTHY_STANDBY, None),
    ("i-2", states(UP, DOWN, DOWN), None, Action.TAKEOVER, Reason.HAVIP_MASTER_DOWN, "i-1"),
    ("", states(DOWN, UP, UP), None, Action.NONE, Reason.HAVIP_NO_MASTER, None),  # keepalived is electing
    ("i-9", states(DOWN, UP, UP), None, Action.NONE, Reason.HAVIP_MASTER_NOT_MEMBER, "i-9"),
    ("i-1", states(DOWN, UP, UP), 990.0, Action.NONE, Reason.COOLDOWN, "i-2"),
    ("i-1", states(DOWN, UP, UP), 900.0, Action.TAKEOVER, Reason.HAVIP_MASTER_DOWN, "i-2"),
])
def test_havip_takeover_decision(master: str, health: dict[str, Health], last: float | None, action: Action,
                                 reason: Reason, target: str | None) -> None:
    decision = havip_takeover(master, MEMBERS, health, now=1000.0, last_takeover_at=last, cooldown=60)
    assert (decision.action, decision.reason, decision.target) == (action, reason, target)


@pytest.fixture
def ali(fake: FakeAliyun, tmp_path: Path) -> AlibabaProvider:
    return provider_for(fake, tmp_path)


def guard(ali: AlibabaProvider, servers: list[HealthServer], hook: list[str] | None = None) -> HaVipGuard:
    members = {f"i-{n}": [TcpCheck("tcp", 0.5, "127.0.0.1", s.port)] for n, s in enumerate(servers, start=1)}
    config = HaVipTakeoverConfig.model_validate({
        "members": [{"instance_id": m, "checks": [{"type": "tcp", "host": "127.0.0.1", "port": 1}]}
                    for m in members],
        "on_takeover": hook, "cooldown": 60})
    return HaVipGuard("web", "zone-a", "havip-a", ali, members, config,
                      PolicyConfig(interval=1, timeout=0.5, rise=2, fall=2))


async def test_dead_master_is_forced_off_and_the_hook_runs(fake: FakeAliyun, ali: AlibabaProvider,
                                                           health_servers: list[HealthServer],
                                                           tmp_path: Path) -> None:
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    out = tmp_path / "hook.json"
    hook = [sys.executable, "-c", f"import json, sys; json.dump(sys.argv[1:], open({str(out)!r}, 'w'))",
            "{group}", "{target}", "{havip}", "{from}", "{to}"]
    g = guard(ali, health_servers, hook)
    for _ in range(3):
        await g.tick()
    assert "UnassociateHaVip" not in fake.actions()  # a healthy master is left alone
    await health_servers[0].stop()
    with capture_logs() as logs:
        for _ in range(2):
            await g.tick()
    unassociate = [e for e in fake.log if e.action == "UnassociateHaVip"]
    assert len(unassociate) == 1
    assert (unassociate[0].query["InstanceId"], unassociate[0].query["Force"]) == ("i-1", "True")
    assert [e["event"] for e in logs if e["event"].startswith("havip_takeover")] == [
        "havip_takeover_started", "havip_takeover_done"]
    for task in list(g.hooks):
        await task
    assert json.loads(out.read_text()) == ["web", "zone-a", "havip-a", "i-1", "i-2"]
    async def i2_is_master() -> bool:  # the fake's transition: keepalived on i-2 takes over
        return (await ali.describe_havip("havip-a")).master_instance_id == "i-2"
    await eventually(i2_is_master)
    for _ in range(2):
        await g.tick()
    assert g.decision is not None
    assert g.decision.reason is Reason.HAVIP_MASTER_HEALTHY  # i-2 is the healthy master now
    assert len([e for e in fake.log if e.action == "UnassociateHaVip"]) == 1


async def test_no_takeover_without_a_healthy_standby(fake: FakeAliyun, ali: AlibabaProvider,
                                                     health_servers: list[HealthServer]) -> None:
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    g = guard(ali, health_servers)
    for server in health_servers:
        await server.stop()
    for _ in range(4):
        await g.tick()
    assert "UnassociateHaVip" not in fake.actions()
    assert g.decision is not None
    assert g.decision.reason is Reason.NO_HEALTHY_STANDBY


async def test_the_master_cannot_be_removed_without_force(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    with pytest.raises(ProviderError) as info:
        await ali.unassociate_havip("havip-a", "i-1", force=False)
    assert (info.value.code, info.value.retryable) == ("Forbidden.UnassociateMaster", False)
    await ali.unassociate_havip("havip-a", "i-2", force=False)  # a non-master member can go
    assert fake.havips["havip-a"].instances == ["i-1"]


def config(provider: str, binding: dict[str, Any]) -> dict[str, Any]:
    takeover = {"members": [{"instance_id": f"i-{n}", "checks": [{"type": "tcp", "host": "h", "port": 1}]}
                            for n in (1, 2)]}
    return {
        "providers": {"p": {"type": provider, "region": "r"}},
        "groups": [{"name": "g", "provider": "p", "eips": ["e"], "targets": [
            {"name": "a", "binding": binding, "checks": [{"type": "tcp", "host": "h", "port": 1}],
             "havip_takeover": takeover},
            {"name": "b", "binding": binding | {"instance_id": "other"},
             "checks": [{"type": "tcp", "host": "h", "port": 1}]}]}],
    }


@pytest.mark.parametrize(("provider", "binding"), [
    ("aws", {"instance_id": "i-1"}),
    ("alibaba", {"instance_id": "i-1", "instance_type": "EcsInstance"}),
])
def test_takeover_needs_an_alibaba_havip_target(provider: str, binding: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(provider, binding))
    assert "groups[0].targets[0].havip_takeover: needs an alibaba provider and a binding with instance_type HaVip" \
        in info.value.problems


def test_takeover_config_is_valid_on_a_havip() -> None:
    parsed = parse_config(config("alibaba", {"instance_id": "havip-1", "instance_type": "HaVip"}))
    takeover = parsed.groups[0].targets[0].havip_takeover
    assert takeover is not None
    assert [m.instance_id for m in takeover.members] == ["i-1", "i-2"]


async def test_a_guard_in_dry_run_reports_the_takeover_and_makes_none(fake: FakeAliyun, ali: AlibabaProvider,
                                                                      health_servers: list[HealthServer]) -> None:
    """A group in dry run: the takeover is decided and logged (``havip_takeover_dry_run``), no UnassociateHaVip is
    sent, and the cooldown holds the next one back."""
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    g = guard(ali, health_servers)
    g.dry_run = True
    for _ in range(2):
        await g.tick()
    await health_servers[0].stop()
    with capture_logs() as logs:
        for _ in range(4):
            await g.tick()
    assert "UnassociateHaVip" not in fake.actions()
    assert [e["event"] for e in logs if e["event"].startswith("havip_takeover")] == ["havip_takeover_dry_run"]
    assert g.decision is not None
    assert g.decision.reason is Reason.COOLDOWN


async def test_in_a_cluster_the_observers_quorum_decides_a_takeover(fake: FakeAliyun, ali: AlibabaProvider,
                                                                    health_servers: list[HealthServer]) -> None:
    """A guard in a cluster publishes its view of the members and decides on the quorum's verdict: a master only
    this daemon sees down is left alone; once the quorum confirms it, the leader takes over (fenced)."""
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    g = guard(ali, health_servers)
    coordinator = g.coordinator = ScriptedCoordinator()
    for _ in range(2):
        await g.tick()
    assert coordinator.published[-1] == {"i-1": UP, "i-2": UP}
    await health_servers[0].stop()  # this daemon alone: the others still reach i-1
    coordinator.verdicts["i-1"] = U
    for _ in range(3):
        await g.tick()
    assert coordinator.published[-1] == {"i-1": DOWN, "i-2": UP}  # its own vote
    assert "UnassociateHaVip" not in fake.actions()
    assert g.decision is not None
    assert g.decision.reason is Reason.HAVIP_MASTER_HEALTHY
    coordinator.verdicts["i-1"] = DOWN  # a majority sees it down now
    await g.tick()
    assert [(e.query["InstanceId"], e.query["Force"]) for e in fake.log if e.action == "UnassociateHaVip"] == [
        ("i-1", "True")]
    assert [op for _, op, _ in coordinator.fences] == ["UnassociateHaVip"]


async def test_in_a_cluster_a_follower_guard_votes_but_never_takes_over(fake: FakeAliyun, ali: AlibabaProvider,
                                                                        health_servers: list[HealthServer]) -> None:
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    g = guard(ali, health_servers)
    coordinator = g.coordinator = ScriptedCoordinator()
    coordinator.leading = False
    await health_servers[0].stop()
    for _ in range(3):
        await g.tick()
    assert coordinator.published[-1] == {"i-1": DOWN, "i-2": UP}
    assert g.decision is not None
    assert g.decision.action is Action.TAKEOVER  # decided, for the leader to make
    assert "UnassociateHaVip" not in fake.actions()
    assert coordinator.fences == []


async def test_a_guard_that_cannot_read_the_havip_votes_unknown_and_stops_voting_when_stopped(
        fake: FakeAliyun, ali: AlibabaProvider, health_servers: list[HealthServer]) -> None:
    """A daemon that cannot see the HaVip (here: it is not there) votes ``unknown`` for every member, not what its
    own checks say; a stopped guard (its target removed by a reload) withdraws its view."""
    g = guard(ali, health_servers)
    coordinator = g.coordinator = ScriptedCoordinator()
    await health_servers[0].stop()
    for _ in range(3):
        await g.tick()
    assert g.health["i-1"].state is DOWN
    assert coordinator.published[-1] == {"i-1": U, "i-2": U}
    g.stop()
    assert coordinator.published[-1] == {}  # the scripted coordinator's record of forget()
    assert g.key == "web/zone-a/havip"


async def test_a_guard_stopped_during_its_tick_neither_votes_nor_takes_over(
        fake: FakeAliyun, ali: AlibabaProvider, health_servers: list[HealthServer]) -> None:
    """A guard stopped while a tick is under way (a reload removes ``havip_takeover``, or the daemon stops): the tick
    ends without publishing its view again (after ``forget``) and without taking the HaVip over."""
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    g = guard(ali, health_servers)
    coordinator = g.coordinator = ScriptedCoordinator()  # this daemon leads
    for _ in range(2):
        await g.tick()
    await health_servers[0].stop()  # the master's service dies
    await g.tick()  # one failure (fall is 2)
    reads = len([e for e in fake.log if e.action == "DescribeHaVips"])
    fake.faults.setdefault("DescribeHaVips", []).append(Fault(code=None, delay=0.5))  # a slow read: the tick lasts
    tick = asyncio.create_task(g.tick())
    await eventually(lambda: len([e for e in fake.log if e.action == "DescribeHaVips"]) > reads, timeout=10)
    g.stop()
    assert coordinator.published[-1] == {}  # withdrawn
    await asyncio.wait_for(tick, 10)
    assert "UnassociateHaVip" not in fake.actions(), "a stopped guard took the HaVip over"
    assert coordinator.published[-1] == {}, f"a stopped guard votes again: {coordinator.published[-1]}"


async def test_a_takeover_the_fence_refused_does_not_start_the_cooldown(
        fake: FakeAliyun, ali: AlibabaProvider, health_servers: list[HealthServer]) -> None:
    """The fence refused the takeover (etcd did not answer the proof): nothing was sent, so the cooldown does not
    start; once leadership is proven again, the dead master is forced off at the next tick. The unassociate is fenced
    in the term it was decided in."""
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    g = guard(ali, health_servers)
    coordinator = g.coordinator = ScriptedCoordinator()  # this daemon leads
    for _ in range(2):
        await g.tick()
    await health_servers[0].stop()
    coordinator.refuse = "UnassociateHaVip not sent: leadership cannot be proven: etcd timed out"
    for _ in range(2):
        await g.tick()
    assert [op for _, op, _ in coordinator.fences] == ["UnassociateHaVip"]
    assert "UnassociateHaVip" not in fake.actions()
    coordinator.refuse = None  # etcd answers again
    await g.tick()
    assert "UnassociateHaVip" in fake.actions(), f"the dead master keeps the HaVip: {g.decision}"
    assert coordinator.terms == [1, 1]
class HeldFence(ScriptedCoordinator):
    """The proof waits for ``release``; then refuses if ``refuse`` is set (etcd's answer: not the leader)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        self.entered.set()
        await self.release.wait()
        return await super().fence(group, failover_id, operation, seconds, term)


async def dying_master_tick(fake: FakeAliyun, ali: AlibabaProvider, servers: list[HealthServer],
                            coordinator: Coordinator) -> tuple[Any, asyncio.Task[None]]:
    """A guard (leading) whose master has just died; its tick deciding the takeover is under way, in the fence."""
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    g = guard(ali, servers)
    g.coordinator = coordinator
    for _ in range(2):
        await g.tick()
    await servers[0].stop()
    await g.tick()  # one failure (fall is 2)
    tick = asyncio.create_task(g.tick())
    return g, tick


async def test_a_reload_during_a_refused_havip_takeover_does_not_keep_its_cooldown(
        fake: FakeAliyun, ali: AlibabaProvider, health_servers: list[HealthServer]) -> None:
    """A reload rebuilds the guard while its takeover waits for the fence's proof; the proof then fails
    (etcd did not answer): nothing was sent, and the new guard, leading again, forces the dead master off at its next
    tick.

    Before the fix: the cooldown was armed before the proof; the rebuilt guard copied it and held the dead master for
    the whole cooldown."""
    coordinator = HeldFence()
    old, tick = await dying_master_tick(fake, ali, health_servers, coordinator)
    await asyncio.wait_for(coordinator.entered.wait(), 10)  # the takeover is decided, its proof under way
    new = guard(ali, health_servers)  # the reload's rebuilt guard (the daemon: stop the old one, carry over)
    new.coordinator = coordinator
    old.stop()
    new.carry_over(old)
    coordinator.refuse = "UnassociateHaVip not sent: leadership cannot be proven: etcd timed out"
    coordinator.release.set()
    await asyncio.wait_for(tick, 10)
    assert "UnassociateHaVip" not in fake.actions()
    assert old.cooldown.since is None  # taken back on the old guard
    coordinator.refuse = None  # etcd answers again
    await new.tick()
    assert "UnassociateHaVip" in fake.actions(), f"the dead master keeps the HaVip: {new.decision}"


async def test_a_havip_guard_stopped_while_its_takeover_awaits_the_proof_does_not_take_over(
        fake: FakeAliyun, ali: AlibabaProvider, health_servers: list[HealthServer]) -> None:
    """A guard stopped (a reload removes ``havip_takeover``) while its takeover waits for the fence's proof
    does not send the unassociate.

    Before the fix: the stop was checked only after the read, not after the proof: ``UnassociateHaVip`` went out."""
    coordinator = HeldFence()
    g, tick = await dying_master_tick(fake, ali, health_servers, coordinator)
    await asyncio.wait_for(coordinator.entered.wait(), 10)
    g.stop()  # removed by a reload
    coordinator.release.set()  # the proof succeeds
    await asyncio.wait_for(tick, 10)
    assert "UnassociateHaVip" not in fake.actions(), "a stopped guard forced the master off"




async def test_a_reload_during_a_havip_takeover_in_flight_keeps_its_cooldown(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """The guard's UnassociateHaVip (Force) is sent and VPC takes 2 s to answer; a reload rebuilds the guard
    meanwhile (``old.stop(); new.carry_over(old)``, the new guard ticking at once). The rebuilt guard shares the
    takeover's cooldown and does not force the master off a second time.

    Before the fix: the cooldown was armed only once the call returned, so the rebuilt guard carried none and sent a
    second UnassociateHaVip."""
    ali: AlibabaProvider = provider_for(fake, tmp_path, read_timeout=5)
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    fake.faults["UnassociateHaVip"] = [Fault(code=None, delay=2.0)]  # answered (and carried out) after 2 s
    old = guard(ali, health_servers)
    for _ in range(2):
        await old.tick()
    await health_servers[0].stop()
    await old.tick()  # one failure (fall is 2)
    tick = asyncio.create_task(old.tick())  # the second: the takeover
    try:
        await eventually(lambda: "UnassociateHaVip" in fake.actions(), timeout=10)
        new = guard(ali, health_servers)  # the reload
        old.stop()
        new.carry_over(old)
        await new.tick()
        await asyncio.wait_for(tick, 10)
        sent = [e for e in fake.log if e.action == "UnassociateHaVip"]
        assert len(sent) == 1, (
            f"{len(sent)} UnassociateHaVip sent: the rebuilt guard forced the master off again ({new.decision})")
    finally:
        if not tick.done():
            await asyncio.wait({tick}, timeout=10)
