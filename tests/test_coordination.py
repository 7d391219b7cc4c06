"""The engine under a coordinator, in process: a follower holds its decisions, nobody acts without coordination,
the quorum's verdict is what the policy sees, and every mutating cloud call is fenced right before it is sent
(the real AWS driver against moto, a scripted coordinator)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from eipfailover.cluster.base import ClusterStatus, Coordinator, Member
from eipfailover.config import AwsProviderConfig, parse_config
from eipfailover.engine import Engine, GroupRunner
from eipfailover.errors import NotLeader
from eipfailover.events import GroupMemory, Observers
from eipfailover.model import CheckStatus, Reason, TargetState
from eipfailover.providers.aws import AwsProvider

from .conftest import REGION, Ec2World
from .fakes import ScriptedCheck


class ScriptedCoordinator(Coordinator):
    """A coordinator whose answers the test sets; it records every fence and every published view."""

    def __init__(self) -> None:
        self.node = "n1"
        self.leading = True
        self.up = True
        self.verdicts: dict[str, TargetState] = {}
        """Overrides of the local state, by target."""
        self.shared_maintenance: bool | None = None
        self.refuse: str | None = None
        self.lapsed = False
        """The re-check at send time says the lease lapsed since the proof."""
        self.fences: list[tuple[str, str, float]] = []
        self.terms: list[int | None] = []
        """The term each fenced call was decided in."""
        self.current_term = 1
        self.published: list[dict[str, TargetState]] = []
        self.shared: dict[str, GroupMemory] = {}

    def acting(self) -> bool:
        return self.leading and self.up

    def available(self) -> bool:
        return self.up

    def verdict(self, group: str, target: str, local: TargetState) -> TargetState:
        return self.verdicts.get(target, local)

    def publish(self, group: str, views: Mapping[str, TargetState]) -> None:
        self.published.append(dict(views))

    def forget(self, group: str) -> None:
        self.published.append({})

    def observers(self, group: str) -> dict[str, dict[str, str]]:
        return {"n1": {t: s.value for t, s in self.published[-1].items()}} if self.published else {}

    def maintenance(self, group: str) -> bool | None:
        return self.shared_maintenance

    async def set_maintenance(self, group: str, enabled: bool) -> None:
        self.shared_maintenance = enabled

    def memory(self, group: str) -> GroupMemory | None:
        return self.shared.get(group)

    def share_memory(self, group: str, memory: GroupMemory, *, proof_of: str | None = None) -> None:
        self.shared[group] = memory

    def term(self) -> int | None:
        return self.current_term if self.acting() else None

    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        self.fences.append((group, operation, seconds))
        self.terms.append(term)
        if self.refuse is not None:
            raise NotLeader(self.refuse)
        return lambda: not self.lapsed

    def status(self) -> ClusterStatus:
        return ClusterStatus("n1", "n1", None, 1, (Member("n1", None, True, None),), "ok", self.acting())

    async def run(self) -> None:
        raise NotImplementedError

    async def close(self, release: bool = True) -> None:
        pass


def world(ec2: Ec2World) -> tuple[GroupRunner, ScriptedCoordinator, dict[str, ScriptedCheck], AwsProvider]:
    data: dict[str, Any] = {
        "providers": {"aws": {"type": "aws", "region": REGION}},
        "groups": [{
            "name": "web", "provider": "aws", "eips": [ec2.eip],
            "policy": {"interval": 1, "timeout": 0.5, "rise": 1, "fall": 1, "cooldown": 0},
            "targets": [{"name": name, "binding": {"instance_id": iid},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]}
                        for name, iid in (("a", ec2.instance_a), ("b", ec2.instance_b))],
        }],
    }
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=ec2.endpoint,
                                                    connect_timeout=1, read_timeout=2))
    coordinator = ScriptedCoordinator()
    checks = {"a": ScriptedCheck(), "b": ScriptedCheck()}
    runner = GroupRunner(parse_config(data).groups[0], provider, {n: [c] for n, c in checks.items()},
                         Observers([]), coordinator=coordinator)
    return runner, coordinator, checks, provider


def holder(ec2: Ec2World) -> str | None:
    address = ec2.client.describe_addresses(AllocationIds=[ec2.eip])["Addresses"][0]
    return address.get("InstanceId")  # type: ignore[no-any-return]


async def primary_fails(runner: GroupRunner, checks: dict[str, ScriptedCheck]) -> None:
    await runner.read_cloud()
    await runner.check_round()
    checks["a"].status = CheckStatus.FAIL
    await runner.check_round()


@pytest.fixture
async def aws_world(ec2: Ec2World) -> Any:
    runner, coordinator, checks, provider = world(ec2)
    yield runner, coordinator, checks
    await runner.wait_idle()
    await provider.close()


async def test_a_follower_holds_what_it_would_do(aws_world: Any, ec2: Ec2World) -> None:
    runner, coordinator, checks = aws_world
    coordinator.leading = False
    await primary_fails(runner, checks)
    assert runner.decision is not None
    assert runner.decision.reason is Reason.NOT_LEADER
    assert runner.decision.target == "b"
    assert not runner.in_progress
    assert coordinator.fences == []
    assert holder(ec2) == ec2.instance_a


async def test_without_coordination_nothing_is_decided(aws_world: Any, ec2: Ec2World) -> None:
    """Even a daemon that was leading: its lease lapsed, the store is unreachable: it holds, and says why."""
    runner, coordinator, checks = aws_world
    coordinator.up = False
    await runner.read_cloud()
    await runner.check_round()
    assert runner.decision is not None
    assert runner.decision.reason is Reason.COORDINATION_LOST  # also when there is nothing to do
    checks["a"].status = CheckStatus.FAIL
    await runner.check_round()
    assert runner.decision.reason is Reason.COORDINATION_LOST
    assert not runner.in_progress
    assert holder(ec2) == ec2.instance_a


async def test_the_quorum_verdict_is_what_the_policy_sees(aws_world: Any, ec2: Ec2World) -> None:
    """This daemon sees the primary down, the quorum does not: no failover. The published vote is its own view."""
    runner, coordinator, checks = aws_world
    coordinator.verdicts["a"] = TargetState.UP
    await primary_fails(runner, checks)
    assert runner.decision is not None
    assert runner.decision.reason is Reason.ACTIVE_HEALTHY
    assert coordinator.published[-1] == {"a": TargetState.DOWN, "b": TargetState.UP}
    status = runner.status(0.0)
    assert [(t.name, t.health.state, t.verdict.state) for t in status.targets] == [
        ("a", TargetState.DOWN, TargetState.UP), ("b", TargetState.UP, TargetState.UP)]
    assert holder(ec2) == ec2.instance_a


async def test_every_mutation_is_fenced_with_the_call_deadline(aws_world: Any, ec2: Ec2World) -> None:
    runner, coordinator, checks = aws_world
    await primary_fails(runner, checks)
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.result == "success", runner.state.last_failover.error
    assert coordinator.fences == [("web", "AssociateAddress", 3.0)]  # one attempt: connect 1 s + read 2 s
    assert holder(ec2) == ec2.instance_b


async def test_a_refused_fence_sends_nothing(aws_world: Any, ec2: Ec2World) -> None:
    runner, coordinator, checks = aws_world
    coordinator.refuse = "AssociateAddress not sent: this daemon no longer leads (term 7 is over)"
    await primary_fails(runner, checks)
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.result == "failure"
    assert "no longer leads" in runner.state.last_failover.error
    assert len(coordinator.fences) == 1  # NotLeader is not retried
    assert holder(ec2) == ec2.instance_a


async def test_a_lease_that_lapsed_after_the_proof_sends_nothing(aws_world: Any, ec2: Ec2World) -> None:
    """The instant before the call goes out, the clock is checked again: a leader frozen between its proof and
    its call sends nothing when it wakes."""
    runner, coordinator, checks = aws_world
    coordinator.lapsed = True
    sent: list[str] = []
    runner.provider.client.meta.events.register("before-send.ec2.AssociateAddress",
                                                lambda request, **_: sent.append("sent"))
    await primary_fails(runner, checks)
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.result == "failure"
    assert "lapsed" in runner.state.last_failover.error
    assert sent == []
    assert holder(ec2) == ec2.instance_a


async def test_a_new_leader_reads_the_cloud_before_it_decides(aws_world: Any, ec2: Ec2World) -> None:
    runner, coordinator, checks = aws_world
    coordinator.leading = False
    await primary_fails(runner, checks)
    engine = Engine([runner], coordinator=coordinator)
    coordinator.leading = True
    engine.leading()  # the view it had as a follower is dropped
    engine.cluster_changed()
    assert runner.decision is not None
    assert runner.decision.reason is Reason.CLOUD_UNKNOWN
    assert not runner.in_progress
    await runner.read_cloud()  # a fresh read: now it acts
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.result == "success"
    assert holder(ec2) == ec2.instance_b


async def test_the_shared_maintenance_switch_is_taken(aws_world: Any, ec2: Ec2World) -> None:
    runner, coordinator, checks = aws_world
    engine = Engine([runner], coordinator=coordinator)
    coordinator.shared_maintenance = True
    engine.cluster_changed()
    assert runner.status(0.0).maintenance
    await primary_fails(runner, checks)
    assert runner.decision is not None
    assert runner.decision.reason is Reason.MAINTENANCE
    coordinator.shared_maintenance = False
    engine.cluster_changed()
    assert not runner.status(0.0).maintenance
    await runner.wait_idle()
    assert holder(ec2) == ec2.instance_b




async def test_the_window_and_the_cooldown_hold_across_a_change_of_leader(aws_world: Any, ec2: Ec2World) -> None:
    """A leader shares its memory of the moves after each one; a daemon that becomes leader adds it to its own, so
    ``max_failovers`` and the cooldown hold whoever leads."""
    runner, coordinator, checks = aws_world
    await primary_fails(runner, checks)
    await runner.wait_idle()
    shared = coordinator.shared["web"]
    assert len(shared.window_starts) == 1
    assert shared.last_move_at is not None
    assert abs(shared.last_move_at - time.time()) < 5

    follower, other, _, provider = world(ec2)
    try:
        other.shared = coordinator.shared
        assert follower.snapshot().recent_moves == ()
        Engine([follower], coordinator=other).leading()
        snapshot = follower.snapshot()
        assert len(snapshot.recent_moves) == 1
        assert snapshot.last_move_at is not None
        assert abs(snapshot.last_move_at - time.monotonic()) < 5
    finally:
        await provider.close()
