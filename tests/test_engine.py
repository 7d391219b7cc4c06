"""The engine with a fake cloud and scripted checks: each tick is driven by the test."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from eipfailover.config import parse_config
from eipfailover.engine import FailoverRecord, GroupRunner, NullObserver, Observers
from eipfailover.errors import ProviderError
from eipfailover.model import (
    Action,
    Binding,
    CheckResult,
    CheckStatus,
    Decision,
    Health,
    ManualRequest,
    Placement,
    Reason,
    TargetState,
    Trigger,
)

from .fakes import FakeProvider, ScriptedCheck

A, B, C = Binding(instance_id="i-a"), Binding(instance_id="i-b"), Binding(instance_id="i-c")
OK, FAIL = CheckStatus.OK, CheckStatus.FAIL


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        self.events.append(("health", target, after.state))

    def on_decision(self, group: str, decision: Decision) -> None:
        self.events.append(("decision", decision.action, decision.reason, decision.target))

    def on_failover_started(self, record: FailoverRecord) -> None:
        self.events.append(("started", record.trigger, record.from_target, record.to_target))

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self.events.append(("finished", record.result, record.to_target, record.error))

    def on_cloud_error(self, group: str, error: ProviderError | None) -> None:
        self.events.append(("cloud_error", None if error is None else error.code))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


def group_config(targets: int = 2, eips: int = 1, **policy: Any) -> Any:
    names = "abc"[:targets]
    data = {
        "providers": {"fake": {"type": "aws", "region": "r"}},
        "groups": [{
            "name": "g", "provider": "fake", "eips": [f"e{i}" for i in range(1, eips + 1)],
            "policy": {"interval": 1, "timeout": 0.5, "rise": 2, "fall": 2, "cooldown": 0, **policy},
            "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in names],
        }],
    }
    return parse_config(data).groups[0]


class World:
    def __init__(self, placement: dict[str, Binding | None], targets: int = 2, **policy: Any) -> None:
        self.cloud = FakeProvider(placement)
        self.checks = {n: ScriptedCheck() for n in "abc"[:targets]}
        self.recorder = Recorder()
        self.runner = GroupRunner(group_config(targets, len(placement), **policy), self.cloud,
                                  {n: [c] for n, c in self.checks.items()}, Observers([self.recorder]))

    def set(self, **states: CheckStatus) -> None:
        for name, status in states.items():
            self.checks[name].status = status

    async def ticks(self, n: int) -> None:
        for _ in range(n):
            await self.runner.tick()
            await self.runner.wait_idle()


async def test_start_on_a_healthy_primary_moves_nothing() -> None:
    w = World({"e1": A})
    await w.ticks(5)
    assert w.cloud.moves() == []
    assert w.runner.decision == Decision(Action.NONE, Reason.ACTIVE_HEALTHY, "a")
    assert w.recorder.of("decision") == [("decision", Action.NONE, Reason.ACTIVE_UNKNOWN, "a"),
                                         ("decision", Action.NONE, Reason.ACTIVE_HEALTHY, "a")]


async def test_active_down_fails_over_to_the_standby() -> None:
    w = World({"e1": A, "e2": A})
    await w.ticks(2)
    w.set(a=FAIL)
    await w.ticks(1)
    assert w.cloud.moves() == []  # fall is 2: one failure is not enough
    await w.ticks(1)
    assert w.cloud.moves() == [(("e1", "e2"), B)]
    assert w.recorder.of("started") == [("started", Trigger.AUTO, "a", "b")]
    assert w.recorder.of("finished") == [("finished", "success", "b", "")]
    assert w.runner.last_failover is not None
    assert w.runner.last_failover.reason == "active_down"
    await w.ticks(3)
    assert (w.runner.placement, w.runner.active) == (Placement.ON_TARGET, "b")
    assert len(w.cloud.moves()) == 1


async def test_eips_already_on_the_standby_at_start_stay_there() -> None:
    w = World({"e1": B})
    await w.ticks(10)
    assert w.cloud.moves() == []
    assert w.runner.active == "b"


async def test_no_move_to_an_unhealthy_standby() -> None:
    w = World({"e1": A})
    w.set(a=FAIL, b=FAIL)
    await w.ticks(5)
    assert w.cloud.moves() == []
    assert w.runner.decision == Decision(Action.NONE, Reason.NO_HEALTHY_STANDBY)


async def test_detached_eip_is_adopted_by_the_best_healthy_target() -> None:
    w = World({"e1": None}, targets=3)
    w.set(a=FAIL)
    await w.ticks(1)
    assert w.cloud.moves() == []  # nobody is confirmed healthy yet
    await w.ticks(1)
    assert w.cloud.moves() == [(("e1",), B)]
    assert w.recorder.of("started") == [("started", Trigger.AUTO, None, "b")]
    assert w.runner.last_failover is not None
    assert w.runner.last_failover.reason == "adopt"


async def test_eip_on_a_foreign_instance_is_adopted() -> None:
    w = World({"e1": Binding(instance_id="i-stranger")})
    await w.ticks(2)
    assert w.cloud.moves() == [(("e1",), A)]


async def test_manual_failover_and_refusal() -> None:
    w = World({"e1": A}, targets=3)
    w.set(c=FAIL)
    await w.ticks(2)
    w.runner.request_failover(ManualRequest(to="c", id="m1", requested_by="ops"))
    await w.ticks(1)
    assert w.cloud.moves() == []  # c is unhealthy and the request is not forced
    assert w.runner.manual is None  # the refused request is not kept around
    assert w.recorder.of("finished") == [("finished", "skipped", "c", "refused: manual_target_unhealthy")]
    w.runner.request_failover(ManualRequest(to="b", reason="patching a", id="m2", requested_by="ops"))
    await w.ticks(1)
    assert w.cloud.moves() == [(("e1",), B)]
    last = w.runner.last_failover
    assert last is not None
    assert (last.id, last.trigger, last.requested_by, last.reason) == ("m2", Trigger.MANUAL, "ops", "patching a")


async def test_maintenance_pauses_automatic_failover() -> None:
    w = World({"e1": A})
    await w.ticks(2)
    w.runner.set_maintenance(True)
    w.set(a=FAIL)
    await w.ticks(5)
    assert w.cloud.moves() == []
    assert w.runner.decision == Decision(Action.NONE, Reason.MAINTENANCE)
    w.runner.set_maintenance(False)
    await w.ticks(1)
    assert w.cloud.moves() == [(("e1",), B)]


async def test_no_move_while_the_cloud_cannot_be_read() -> None:
    w = World({"e1": A})
    await w.ticks(2)
    w.set(a=FAIL)
    w.cloud.faults["describe"] = [ProviderError("throttled", retryable=True, code="RequestLimitExceeded")] * 3
    await w.ticks(3)
    assert w.cloud.moves() == []
    assert w.runner.decision == Decision(Action.NONE, Reason.CLOUD_UNKNOWN)
    await w.ticks(1)
    assert w.cloud.moves() == [(("e1",), B)]
    # the error is reported once when it starts and once when it clears, not every tick
    assert w.recorder.of("cloud_error") == [("cloud_error", "RequestLimitExceeded"), ("cloud_error", None)]


async def test_one_failover_at_a_time() -> None:
    w = World({"e1": A})
    await w.ticks(2)
    w.set(a=FAIL)
    w.cloud.move_delay = 0.3
    for _ in range(4):
        await w.runner.tick()
    assert w.runner.decision == Decision(Action.NONE, Reason.IN_PROGRESS)
    await w.runner.wait_idle()
    assert w.cloud.moves() == [(("e1",), B)]


async def test_failed_failover_is_reported_and_held_by_cooldown() -> None:
    w = World({"e1": A}, cooldown=60, failover_deadline=0.2)
    await w.ticks(2)
    w.set(a=FAIL)
    w.cloud.faults["move"] = [ProviderError("denied", retryable=False, code="UnauthorizedOperation")]
    await w.ticks(2)
    assert w.recorder.of("finished") == [("finished", "failure", "b", "move failed: denied")]
    await w.ticks(3)
    assert len(w.cloud.moves()) == 1
    assert w.runner.decision == Decision(Action.NONE, Reason.COOLDOWN, "b")


async def test_flapping_is_damped_by_max_failovers() -> None:
    w = World({"e1": A}, max_failovers={"count": 2, "window": "1h"})
    await w.ticks(2)
    for bad, good in (("a", "b"), ("b", "a"), ("a", "b")):
        w.set(**{bad: FAIL, good: OK})
        await w.ticks(3)
    assert len(w.cloud.moves()) == 2
    assert w.runner.decision == Decision(Action.NONE, Reason.RATE_LIMITED, "b")


async def test_failback_auto_after_the_delay() -> None:
    w = World({"e1": B}, failback="auto", failback_delay=0)
    await w.ticks(3)
    assert w.cloud.moves() == [(("e1",), A)]
    assert w.recorder.of("started") == [("started", Trigger.FAILBACK, "b", "a")]


async def test_health_transitions_are_reported() -> None:
    w = World({"e1": A})
    await w.ticks(2)
    w.set(b=FAIL)
    await w.ticks(2)
    assert w.recorder.of("health") == [("health", "a", TargetState.UP), ("health", "b", TargetState.UP),
                                       ("health", "b", TargetState.DOWN)]


async def test_the_loop_keeps_its_schedule_and_survives_a_failing_tick() -> None:
    w = World({"e1": A}, interval="100ms", timeout="50ms")
    calls = 0
    real_tick = w.runner.tick

    async def flaky_tick() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("bug")
        await real_tick()

    w.runner.tick = flaky_tick  # type: ignore[method-assign]
    task = asyncio.create_task(w.runner.run())
    await asyncio.sleep(0.55)
    w.runner.request_stop()
    await asyncio.wait_for(task, 1)
    assert calls in (6, 7)  # at 0, 0.1, ... 0.5 s (+ the one after the stop, when timing is tight)
    assert w.runner.ticks == calls - 1


@pytest.mark.parametrize("status", [CheckStatus.TIMEOUT, CheckStatus.ERROR])
async def test_timeouts_and_errors_count_as_failures(status: CheckStatus) -> None:
    w = World({"e1": A})
    await w.ticks(2)
    w.set(a=status)
    await w.ticks(2)
    assert w.cloud.moves() == [(("e1",), B)]
