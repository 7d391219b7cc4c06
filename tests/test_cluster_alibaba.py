"""The Alibaba two-step move under fencing (the real driver against tests/fake_aliyun.py, a scripted coordinator)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eipfailover.config import parse_config
from eipfailover.engine import GroupRunner
from eipfailover.errors import NotLeader
from eipfailover.events import Observers
from eipfailover.model import CheckStatus, Reason

from .conftest import eventually
from .fake_aliyun import FakeAliyun, key_file, provider_for
from .fakes import ScriptedCheck
from .test_coordination import ScriptedCoordinator


class EtcdBlip(ScriptedCoordinator):
    """Still the leader (its lease is alive), but after the first ``allowed`` proofs etcd stops answering the
    fencing transaction until ``blip`` is cleared (``fence`` raises NotLeader: "leadership cannot be proven")."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed
        self.blip = True

    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        self.fences.append((group, operation, seconds))
        if len(self.fences) > self.allowed and self.blip:
            raise NotLeader(f"{operation} not sent: leadership cannot be proven: etcd unavailable")
        return lambda: self.acting()


def runner_for(fake: FakeAliyun, tmp_path: Path, coordinator: ScriptedCoordinator) -> tuple[GroupRunner,
                                                                                            dict[str, Any]]:
    data: dict[str, Any] = {
        "providers": {"ali": {"type": "alibaba", "region": fake.region, "access_key_file": str(key_file(tmp_path))}},
        "groups": [{
            "name": "web", "provider": "ali", "eips": ["eip-1"],
            "policy": {"interval": 1, "timeout": 0.5, "rise": 1, "fall": 1, "cooldown": 0},
            "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in ("a", "b")],
        }],
    }
    provider = provider_for(fake, tmp_path)
    checks = {"a": ScriptedCheck(), "b": ScriptedCheck()}
    runner = GroupRunner(parse_config(data).groups[0], provider, {n: [c] for n, c in checks.items()},
                         Observers([]), coordinator=coordinator)
    return runner, checks


async def test_repairs_refused_by_the_fence_do_not_hold_the_repair_once_etcd_answers(fake: FakeAliyun,
                                                                                      tmp_path: Path) -> None:
    """A repair that was refused by the fence before any cloud call (NotLeader) does not arm the repair
    backoff; once leadership can be proven again, the next decision repairs the detached EIP.

    Before the fix: the leader's unassociate went out, then etcd blipped (the lease still alive, so the leader keeps
    acting): the associate and every repair after it are refused by the fence (NotLeader: nothing reached the cloud).
    ``GroupRunner._failover`` counts each such refusal as a failed repair and doubles the repair backoff (1, 2, 4... up
    to 30 s), a backoff meant for "a cloud that refuses it". When etcd answers again a moment later, the EIP stays
    detached until that backoff ends: here seconds of avoidable downtime (up to 30 s)."""
    fake.add_eip("eip-1", "47.1.1.1")
    fake.add_resource("i-a")
    fake.add_resource("i-b")
    fake.bind("eip-1", "i-a")
    coordinator = EtcdBlip(allowed=1)  # the unassociate is proven and sent; etcd blips before the associate
    runner, checks = runner_for(fake, tmp_path, coordinator)
    await runner.read_cloud()
    await runner.check_round()
    checks["a"].status = CheckStatus.FAIL
    await runner.check_round()
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.result == "failure"
    assert not fake.eips["eip-1"].instance_id, "the half move left the EIP detached"

    # the leader keeps deciding every interval while etcd is out: each repair is refused by the fence
    for _ in range(3):
        await decide_once_held(runner)
    assert fake.eips["eip-1"].status == "Available"
    assert runner.state.repair_hold_until is None, "a repair the fence refused armed the repair backoff"

    coordinator.blip = False  # etcd answers again: leadership can be proven
    await decide_once_held(runner)  # at most the one interval a refused move holds the next
    assert runner.decision is not None
    assert runner.decision.reason is not Reason.REPAIR_BACKOFF, (
        f"the repair is held until {runner.state.repair_hold_until} although nothing was refused by the cloud")
    await eventually(lambda: _holder(fake) == "i-b", timeout=10)


async def decide_once_held(runner: GroupRunner) -> None:
    """Read the cloud (and so decide) once the holds of the last refused move are over, and wait for a move."""
    for hold in (runner.state.repair_hold_until, runner.state.fence_hold_until):
        await eventually(lambda h=hold: h is None or time.monotonic() >= h, timeout=30)
    await runner.read_cloud()
    await runner.wait_idle()


def _holder(fake: FakeAliyun) -> str:
    return str(fake.eips["eip-1"].instance_id)
