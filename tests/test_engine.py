"""The engine with a fake cloud and scripted checks: each tick is driven by the test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from eipfailover.config import parse_config
from eipfailover.engine import GroupRunner
from eipfailover.errors import ProviderError
from eipfailover.events import FailoverRecord, NullObserver, Observers
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

from .conftest import eventually
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


def group_config(targets: int = 2, eips: int = 1, adopt_foreign: bool = False, **policy: Any) -> Any:
    names = "abc"[:targets]
    data = {
        "providers": {"fake": {"type": "aws", "region": "r"}},
        "groups": [{
            "name": "g", "provider": "fake", "eips": [f"e{i}" for i in range(1, eips + 1)],
            "adopt_foreign": adopt_foreign,
            "policy": {"interval": 1, "timeout": 0.5, "rise": 2, "fall": 2, "cooldown": 0, **policy},
            "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in names],
        }],
    }
    return parse_config(data).groups[0]


class World:
    def __init__(self, placement: dict[str, Binding | None], targets: int = 2, adopt_foreign: bool = False,
                 **policy: Any) -> None:
        self.cloud = FakeProvider(placement)
        self.checks = {n: ScriptedCheck() for n in "abc"[:targets]}
        self.recorder = Recorder()
        self.runner = GroupRunner(group_config(targets, len(placement), adopt_foreign, **policy), self.cloud,
                                  {n: [c] for n, c in self.checks.items()}, Observers([self.recorder]))

    def set(self, **states: CheckStatus) -> None:
        for name, status in states.items():
            self.checks[name].status = status

    async def ticks(self, n: int) -> None:
        """``n`` rounds of a cloud read then a check round, each followed by the end of any failover it started."""
        for _ in range(n):
            await self.runner.read_cloud()
            await self.runner.wait_idle()
            await self.runner.check_round()
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
    assert w.runner.last_failover.reason == "repair_detached"


async def test_an_eip_on_a_foreign_resource_is_left_alone_unless_adopt_foreign() -> None:
    stranger = Binding(instance_id="i-stranger")
    w = World({"e1": stranger})
    await w.ticks(4)
    assert w.cloud.moves() == []
    assert w.runner.decision == Decision(Action.NONE, Reason.FOREIGN)
    assert w.runner.location.foreign == ("e1",)
    adopting = World({"e1": stranger}, adopt_foreign=True)
    await adopting.ticks(2)
    assert adopting.cloud.moves() == [(("e1",), A)]


async def test_a_detached_eip_is_repaired_but_a_foreign_one_of_the_same_group_stays() -> None:
    w = World({"e1": Binding(instance_id="i-stranger"), "e2": None, "e3": B})
    await w.ticks(2)
    assert w.cloud.moves() == [(("e2",), B)]  # to b, which already holds e3; never e1
    assert w.runner.last_failover is not None
    assert (w.runner.last_failover.reason, w.runner.last_failover.eips) == ("repair_detached", ("e2", "e3"))
    await w.ticks(3)
    assert len(w.cloud.moves()) == 1
    assert w.runner.decision == Decision(Action.NONE, Reason.FOREIGN)


async def test_repair_ignores_cooldown_and_max_failovers_and_does_not_count() -> None:
    w = World({"e1": A}, cooldown=3600, max_failovers={"count": 1, "window": "1h"})
    await w.ticks(2)
    w.set(a=FAIL)
    await w.ticks(2)
    assert w.cloud.moves() == [(("e1",), B)]
    assert w.runner.decision == Decision(Action.NONE, Reason.ACTIVE_HEALTHY, "b")
    w.cloud.placement["e1"] = None  # detached (a failed two-step move, a slip of the hand)
    await w.ticks(1)
    assert w.cloud.moves() == [(("e1",), B), (("e1",), B)]
    assert w.recorder.of("started")[-1] == ("started", Trigger.AUTO, None, "b")
    assert len(w.runner.recent_moves) == 1  # the repair is not counted against max_failovers
    w.cloud.placement["e1"] = None
    await w.ticks(1)
    assert len(w.cloud.moves()) == 3  # and again, at once


async def test_adoption_goes_to_the_target_holding_the_other_eips_not_by_preference() -> None:
    w = World({"e1": B, "e2": None})
    await w.ticks(2)
    assert w.cloud.moves() == [(("e2",), B)]  # e1 stays on b: no failback to a
    assert (w.runner.placement, w.runner.active) == (Placement.ON_TARGET, "b")


async def test_a_single_eip_is_adopted_where_the_group_was_last_active() -> None:
    w = World({"e1": B})
    await w.ticks(3)
    assert w.runner.active == "b"
    w.cloud.placement["e1"] = None
    await w.ticks(1)
    assert w.cloud.moves() == [(("e1",), B)]


async def test_a_driver_bug_fails_the_failover_and_the_group_goes_on() -> None:
    w = World({"e1": A})
    await w.ticks(2)
    w.set(a=FAIL)
    w.cloud.faults["move"] = [KeyError("AllocationId")]
    await w.ticks(2)
    finished = w.recorder.of("finished")
    assert finished[0][:3] == ("finished", "failure", "b")
    assert "internal error: KeyError: 'AllocationId'" in finished[0][3]
    assert w.runner.current is None
    await w.runner.wait_idle()  # does not re-raise
    await w.ticks(1)
    assert w.cloud.placement["e1"] == B  # the next decision retried, and it worked


async def test_a_read_that_straddles_a_failover_is_discarded() -> None:
    w = World({"e1": A})
    await w.ticks(2)
    w.set(a=FAIL)
    release = w.cloud.hold = asyncio.Event()
    stale = asyncio.create_task(w.runner.read_cloud())  # reads e1 on a, then waits
    await asyncio.sleep(0)
    await w.runner.check_round()
    await w.runner.check_round()  # a is DOWN: the failover starts from the last view
    await w.runner.wait_idle()
    assert w.cloud.moves() == [(("e1",), B)]
    release.set()
    await stale  # answers "e1 on a": stale, it must not be taken for the truth
    assert w.runner.active == "b"
    await w.runner.check_round()
    await w.runner.wait_idle()
    assert w.cloud.moves() == [(("e1",), B)]


async def test_a_slow_cloud_does_not_delay_detection() -> None:
    w = World({"e1": A}, interval="100ms", timeout="50ms", fall=3)
    task = asyncio.create_task(w.runner.run())
    await eventually(lambda: w.runner.targets["a"].health.state is TargetState.UP and w.runner.active == "a")
    w.cloud.describe_delay = 5.0  # every read from now on takes 5 s
    await asyncio.sleep(0.15)  # the read in flight now is slow
    failed = time.monotonic()
    w.set(a=FAIL)
    await eventually(lambda: w.runner.targets["a"].health.state is TargetState.DOWN, timeout=4)
    detected = time.monotonic() - failed
    assert detected < 1.5  # (fall-1)*interval + timeout = 0.25 s, plus one interval; not the 5 s describe
    # the decision used the freshest view it had (e1 on a, read before the slowdown): the failover is under way
    await eventually(lambda: w.cloud.moves() == [(("e1",), B)], timeout=2)
    w.runner.request_stop()
    await asyncio.wait_for(task, 10)


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
        await w.runner.read_cloud()
        await w.runner.check_round()
    assert w.runner.decision == Decision(Action.NONE, Reason.IN_PROGRESS)
    await w.runner.wait_idle()
    assert w.cloud.moves() == [(("e1",), B)]


async def test_failed_failover_is_reported_and_held_by_cooldown() -> None:
    w = World({"e1": A}, cooldown=60, failover_deadline=0.2)
    await w.ticks(2)
    w.set(a=FAIL)
    w.cloud.faults["move"] = [ProviderError("denied", retryable=False, code="UnauthorizedOperation")]
    await w.ticks(2)
    assert w.recorder.of("finished") == [("finished", "failure", "b",
                                                  "move failed: denied; none detached (e1 on i-a)")]
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
    real_round = w.runner.check_round

    async def flaky_round() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("bug")
        await real_round()

    w.runner.check_round = flaky_round  # type: ignore[method-assign]
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


async def test_unknown_results_never_fail_a_target_over() -> None:
    w = World({"e1": A})
    await w.ticks(2)
    w.set(a=CheckStatus.UNKNOWN)  # the cloud API behind the check is throttled, for a long time
    await w.ticks(10)
    assert w.cloud.moves() == []
    assert w.runner.targets["a"].health.state is TargetState.UP
