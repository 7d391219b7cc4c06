"""The engine with a fake cloud and scripted checks: each tick is driven by the test."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eipfailover import engine as engine_module
from eipfailover.config import parse_config
from eipfailover.engine import Engine, GroupRunner
from eipfailover.errors import ProviderError
from eipfailover.events import FailoverRecord, NullObserver, Observers
from eipfailover.metrics import Metrics, StateCollector
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
        self.times: list[float] = []  # when each event came

    def _add(self, *event: Any) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        self._add("health", target, after.state)

    def on_decision(self, group: str, decision: Decision) -> None:
        self._add("decision", decision.action, decision.reason, decision.target)

    def on_failover_started(self, record: FailoverRecord) -> None:
        self._add("started", record.trigger, record.from_target, record.to_target)

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self._add("finished", record.result, record.to_target, record.error)

    def on_cloud_error(self, group: str, error: ProviderError | None) -> None:
        self._add("cloud_error", None if error is None else error.code)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]

    def timed(self, kind: str) -> list[tuple[Any, ...]]:
        """``(time, *event)`` of each event of ``kind``."""
        return [(t, *e) for t, e in zip(self.times, self.events, strict=True) if e[0] == kind]


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
    assert w.runner.state.last_failover is not None
    assert w.runner.state.last_failover.reason == "active_down"
    await w.ticks(3)
    assert (w.runner.state.cloud.placement, w.runner.state.cloud.active) == (Placement.ON_TARGET, "b")
    assert len(w.cloud.moves()) == 1


async def test_eips_already_on_the_standby_at_start_stay_there() -> None:
    w = World({"e1": B})
    await w.ticks(10)
    assert w.cloud.moves() == []
    assert w.runner.state.cloud.active == "b"


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
    assert w.runner.state.last_failover is not None
    assert w.runner.state.last_failover.reason == "repair_detached"


async def test_an_eip_on_a_foreign_resource_is_left_alone_unless_adopt_foreign() -> None:
    stranger = Binding(instance_id="i-stranger")
    w = World({"e1": stranger})
    await w.ticks(4)
    assert w.cloud.moves() == []
    assert w.runner.decision == Decision(Action.NONE, Reason.FOREIGN)
    assert w.runner.state.cloud.location.foreign == ("e1",)
    adopting = World({"e1": stranger}, adopt_foreign=True)
    await adopting.ticks(2)
    assert adopting.cloud.moves() == [(("e1",), A)]


async def test_a_detached_eip_is_repaired_but_a_foreign_one_of_the_same_group_stays() -> None:
    w = World({"e1": Binding(instance_id="i-stranger"), "e2": None, "e3": B})
    await w.ticks(2)
    assert w.cloud.moves() == [(("e2",), B)]  # to b, which already holds e3; never e1
    assert w.runner.state.last_failover is not None
    assert (w.runner.state.last_failover.reason, w.runner.state.last_failover.eips) == ("repair_detached", ("e2", "e3"))
    await w.ticks(3)
    assert len(w.cloud.moves()) == 1
    assert w.runner.decision == Decision(Action.NONE, Reason.ACTIVE_HEALTHY, "b")  # the others are on b
    assert w.runner.state.cloud.location.foreign == ("e1",)


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
    assert len(w.runner.state.recent_moves) == 1  # the repair is not counted against max_failovers
    w.cloud.placement["e1"] = None
    await w.ticks(1)
    assert len(w.cloud.moves()) == 3  # and again, at once


async def test_adoption_goes_to_the_target_holding_the_other_eips_not_by_preference() -> None:
    w = World({"e1": B, "e2": None})
    await w.ticks(2)
    assert w.cloud.moves() == [(("e2",), B)]  # e1 stays on b: no failback to a
    assert (w.runner.state.cloud.placement, w.runner.state.cloud.active) == (Placement.ON_TARGET, "b")


async def test_a_single_eip_is_adopted_where_the_group_was_last_active() -> None:
    w = World({"e1": B})
    await w.ticks(3)
    assert w.runner.state.cloud.active == "b"
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
    assert w.runner.state.current is None
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
    assert w.runner.state.cloud.active == "b"
    await w.runner.check_round()
    await w.runner.wait_idle()
    assert w.cloud.moves() == [(("e1",), B)]


async def test_a_slow_cloud_does_not_delay_detection() -> None:
    w = World({"e1": A}, interval="100ms", timeout="50ms", fall=3)
    task = asyncio.create_task(w.runner.run())
    await eventually(lambda: w.runner.targets["a"].health.state is TargetState.UP
                     and w.runner.state.cloud.active == "a")
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
    assert w.runner.state.manual is None  # the refused request is not kept around
    assert w.recorder.of("finished") == [("finished", "skipped", "c", "refused: manual_target_unhealthy")]
    w.runner.request_failover(ManualRequest(to="b", reason="patching a", id="m2", requested_by="ops"))
    await w.ticks(1)
    assert w.cloud.moves() == [(("e1",), B)]
    last = w.runner.state.last_failover
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
    w = World({"e1": A}, interval="100ms", timeout="50ms", fast_interval="100ms")
    calls: list[float] = []
    real_round = w.runner.check_round

    async def flaky_round() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("bug")
        await real_round()

    w.runner.check_round = flaky_round  # type: ignore[method-assign]
    task = asyncio.create_task(w.runner.run())
    await eventually(lambda: len(calls) >= 6)  # the loop went on after the failing round
    w.runner.request_stop()
    await asyncio.wait_for(task, 1)
    assert w.runner.ticks == len(calls) - 1  # every round but the failing one completed
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert min(gaps) > 0.08  # on the 100 ms schedule: a late or failing round never makes the next one burst


async def round_starts(w: World, count: int, until: Callable[[], bool] | None = None) -> list[float]:
    """The start times of the runner's next ``count`` check rounds (or those until ``until()``), run on its own
    schedule."""
    starts: list[float] = []
    real_round = w.runner.check_round

    async def timed_round() -> None:
        starts.append(time.monotonic())
        await real_round()

    w.runner.check_round = timed_round  # type: ignore[method-assign]
    task = asyncio.create_task(w.runner.run())
    await eventually(until or (lambda: len(starts) >= count))
    w.runner.request_stop()
    await asyncio.wait_for(task, 1)
    return starts


async def test_a_changing_target_is_probed_at_the_fast_interval() -> None:
    """From a first failure until the target is confirmed DOWN, the group's rounds come every fast_interval; a
    steady group goes back to the interval. Detection: timeout + (fall-1) * fast_interval."""
    w = World({"e1": A}, interval="400ms", timeout="50ms", fast_interval="100ms", rise=1, fall=3)
    await w.ticks(1)  # both UP: steady
    assert w.runner.check_interval() == pytest.approx(0.4)
    w.set(a=FAIL)
    starts = await round_starts(w, 4)  # fail 1 (fast), fail 2 (fast), fail 3: DOWN, then steady again
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert [round(g, 1) for g in gaps[:2]] == [0.1, 0.1], gaps
    assert gaps[2] > 0.35, gaps  # confirmed DOWN: back to the interval
    assert w.runner.targets["a"].health.state is TargetState.DOWN
    assert w.runner.config.policy.detection_seconds == pytest.approx(0.05 + 2 * 0.1)


async def test_a_target_coming_back_is_probed_at_the_fast_interval_until_up() -> None:
    w = World({"e1": A}, interval="400ms", timeout="50ms", fast_interval="100ms", rise=3, fall=1)
    w.set(b=FAIL)
    await w.ticks(3)  # a: UP after 3 passes (probed fast until then)
    assert w.runner.targets["b"].health.state is TargetState.DOWN
    assert w.runner.check_interval() == pytest.approx(0.4)  # a UP, b DOWN and failing: nothing is changing
    w.set(b=CheckStatus.OK)
    await w.runner.check_round()  # a first success: changing
    assert w.runner.check_interval() == pytest.approx(0.1)
    await w.runner.check_round()
    await w.runner.check_round()  # rise 3: UP
    assert w.recorder.of("health")[-1] == ("health", "b", TargetState.UP)
    assert w.runner.check_interval() == pytest.approx(0.4)


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


def named_group(name: str, eips: list[str], **policy: Any) -> Any:
    data = {
        "providers": {"fake": {"type": "aws", "region": "r"}},
        "groups": [{
            "name": name, "provider": "fake", "eips": eips,
            "policy": {"interval": "100ms", "timeout": "50ms", "rise": 2, "fall": 2, "cooldown": 0, **policy},
            "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in "ab"],
        }],
    }
    return parse_config(data).groups[0]


def runner(name: str, cloud: FakeProvider, a: CheckStatus = OK, b: CheckStatus = OK,
           recorder: Recorder | None = None, **policy: Any) -> tuple[GroupRunner, dict[str, ScriptedCheck]]:
    checks = {"a": ScriptedCheck(status=a), "b": ScriptedCheck(status=b)}
    r = GroupRunner(named_group(name, list(cloud.placement), **policy), cloud, {n: [c] for n, c in checks.items()},
                    Observers([recorder or Recorder()]))
    return r, checks


async def test_a_repair_does_not_arm_the_cooldown() -> None:
    """A repair is exempt from the holds and does not arm them: the next real failover does not wait out the
    cooldown (here an hour) because of it."""
    w = World({"e1": None}, cooldown=3600)
    await w.ticks(2)
    assert w.cloud.moves() == [(("e1",), A)]  # repaired onto a (both healthy: by preference)
    w.set(a=FAIL)
    await w.ticks(3)
    assert w.cloud.moves()[-1] == (("e1",), B), f"active a is DOWN but the failover is held: {w.runner.decision}"


@contextlib.asynccontextmanager
async def slow_move_under_way(web: GroupRunner, checks: dict[str, ScriptedCheck],
                              cloud: FakeProvider) -> AsyncIterator[Engine]:
    """An engine running ``web`` (healthy, on target a), then a's failure and a slow (2 s) move to b under way;
    stopped after."""
    engine = Engine([web])
    running = asyncio.create_task(engine.run())
    try:
        await eventually(lambda: web.state.cloud.active == "a" and all(t.health.state.value == "up"
                                                             for t in web.targets.values()), 5)
        cloud.move_delay = 2.0
        checks["a"].status = FAIL
        await eventually(lambda: web.in_progress, 5)
        yield engine
    finally:
        engine.request_stop()
        await running


async def test_a_group_renamed_during_its_move_starts_when_the_move_ends() -> None:
    """A reload that renames a group (removes 'web', adds 'web2' with the same EIPs) while 'web' is moving: 'web2'
    starts only once that move ends, never moving the same EIP at the same time."""
    cloud = FakeProvider({"e1": A}, two_step=True)
    web, checks = runner("web", cloud)
    async with slow_move_under_way(web, checks, cloud) as engine:
        web2, _ = runner("web2", cloud, a=FAIL)
        engine.apply({"web": None, "web2": web2})
        await asyncio.sleep(1.0)  # web's move is still under way (2 s)
        assert web.in_progress
        assert len(cloud.moves()) == 1, f"a second group moved the same EIP during the first's move: {cloud.moves()}"
        assert "web2" not in engine.runners
        await eventually(lambda: "web2" in engine.runners, 5)  # once web's move has ended
        assert not web.in_progress


async def test_a_stop_abandons_a_hanging_cloud_read_at_once(monkeypatch: Any) -> None:
    """A stop with no failover running ends at once: a cloud read under way (here one that never answers) is
    abandoned, not waited for."""
    monkeypatch.setattr(engine_module, "_DESCRIBE_TIMEOUT", 3.0)
    cloud = FakeProvider({"e1": A})
    web, _ = runner("web", cloud)
    engine = Engine([web])
    running = asyncio.create_task(engine.run())
    await eventually(lambda: web.state.cloud.active == "a", 5)
    cloud.hold = asyncio.Event()  # the next describe hangs (a cloud that accepts and never answers)
    await eventually(lambda: cloud.hold is None, 5)
    engine.request_stop()
    t0 = time.monotonic()
    await running
    took = time.monotonic() - t0
    assert engine.at_risk() == {}
    assert took < 1.0, f"the stop waited {took:.1f}s for a describe, with no failover running"


async def test_a_group_replaced_before_its_first_round_still_makes_the_engine_ready() -> None:
    """Groups start spread over their interval; a reload during that first interval that replaces a group which
    has not run yet must not keep the engine from becoming ready (READY=1)."""
    web, _ = runner("web", FakeProvider({"e1": A}), interval="2s", timeout="1s")
    api, _ = runner("api", FakeProvider({"e2": A}), interval="2s", timeout="1s")  # starts after 1 s
    engine = Engine([web, api])
    running = asyncio.create_task(engine.run())
    try:
        await asyncio.sleep(0.2)
        api2, _ = runner("api", FakeProvider({"e2": A}), interval="2s", timeout="1s", cooldown="5s")
        engine.apply({"api": api2})
        await eventually(lambda: web.reconciled.is_set() and api2.reconciled.is_set(), 5)
        await asyncio.sleep(2.5)
        assert engine.ready.is_set(), "every group has reconciled, but the engine never becomes ready"
    finally:
        engine.request_stop()
        await running


async def test_after_a_move_the_foreign_eip_stays_in_the_view() -> None:
    """The verification's describe covers only the EIPs the move took: the foreign one stays in the view as last
    seen (and in eipfailover_eips_foreign)."""
    stranger = Binding(instance_id="i-stranger")
    w = World({"e1": stranger, "e2": None, "e3": B})
    await w.ticks(2)
    assert w.cloud.moves() == [(("e2",), B)]  # the repair; e1 stays where it is
    location = w.runner.state.cloud.location
    assert location.foreign == ("e1",), f"foreign EIP dropped from the view: {location}"


async def test_after_a_move_an_unforced_manual_request_leaves_the_foreign_eip() -> None:
    stranger = Binding(instance_id="i-stranger")
    w = World({"e1": stranger, "e2": None, "e3": B})
    await w.ticks(2)
    w.runner.request_failover(ManualRequest(to="a", id="m1"))
    await w.runner.wait_idle()
    assert w.cloud.placement["e1"] == stranger, f"the foreign EIP was taken without force: {w.cloud.moves()}"


async def test_a_foreign_eip_does_not_hold_back_the_failover_of_the_others() -> None:
    """A foreign EIP is left alone; the group's other EIPs still fail over."""
    stranger = Binding(instance_id="i-stranger")
    w = World({"e1": A, "e2": stranger})
    await w.ticks(2)
    w.set(a=FAIL)
    await w.ticks(3)
    assert w.cloud.placement["e1"] == B, f"active a DOWN, b UP, nothing moved: {w.runner.decision}"


class SlowCheck(ScriptedCheck):
    def __init__(self, delay: float) -> None:
        super().__init__("tcp")
        self.delay = delay

    async def probe(self) -> tuple[CheckStatus, str]:
        await asyncio.sleep(self.delay)
        return CheckStatus.OK, ""


async def test_a_removed_group_does_not_get_its_series_back_from_its_last_round() -> None:
    """A removed group's check round under way is dropped with it: it cannot bring the group's series back."""
    data = {
        "providers": {"fake": {"type": "aws", "region": "r"}},
        "groups": [{
            "name": "web", "provider": "fake", "eips": ["e1"],
            "policy": {"interval": "1s", "timeout": "500ms", "rise": 1, "fall": 1, "cooldown": 0},
            "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in "ab"],
        }],
    }
    config = parse_config(data)
    metrics = Metrics(config, {})
    cloud = FakeProvider({"e1": A})
    checks = {"a": SlowCheck(0.4), "b": SlowCheck(0.4)}
    web = GroupRunner(config.groups[0], cloud, {n: [c] for n, c in checks.items()}, Observers([metrics]))
    engine = Engine([web], on_removed=metrics.remove_group)
    metrics.watch(engine)
    running = asyncio.create_task(engine.run())
    try:
        await eventually(lambda: web.ticks >= 1, 5)
        await asyncio.sleep(0.7)  # the next round is under way (it takes 0.4 s, every 1 s)
        engine.apply({"web": None})
        await asyncio.sleep(0.6)  # the round in flight ends
        text = generate_latest(metrics.registry).decode()
        groups = {s.labels.get("group") for f in text_string_to_metric_families(text) for s in f.samples}
        assert "web" not in groups, [line for line in text.splitlines() if 'group="web"' in line][:4]
    finally:
        engine.request_stop()
        await running


def make(name: str, eips: list[str], cloud: FakeProvider, a: CheckStatus = OK,
         b: CheckStatus = OK) -> tuple[GroupRunner, dict[str, ScriptedCheck]]:
    checks = {"a": ScriptedCheck(status=a), "b": ScriptedCheck(status=b)}
    r = GroupRunner(named_group(name, eips), cloud, {n: [c] for n, c in checks.items()}, Observers([Recorder()]))
    return r, checks


async def test_an_eip_handed_to_a_group_listed_before_its_old_group_waits_for_the_move() -> None:
    """A reload gives e2 from 'web' (changed: now e1 only) to a new group 'api', listed first, while 'web' is moving
    e1+e2: 'api' starts only once that move ends, whatever the order of the groups in the config."""
    cloud = FakeProvider({"e1": A, "e2": A}, two_step=True)
    web, checks = make("web", ["e1", "e2"], cloud)
    async with slow_move_under_way(web, checks, cloud) as engine:
        api, _ = make("api", ["e2"], cloud)
        web2, _ = make("web", ["e1"], cloud, a=FAIL)
        engine.apply({"api": api, "web": web2})  # in config order, as Daemon.reload does
        await asyncio.sleep(1.0)  # web's move (2 s) is still under way
        assert web.in_progress
        moves_of_e2 = [m for m in cloud.moves() if "e2" in m[0]]
        assert "api" not in engine.runners, f"'api' started during web's move of e2; moves: {cloud.moves()}"
        assert len(moves_of_e2) == 1, f"e2 moved by two groups at once: {cloud.moves()}"
        await eventually(lambda: "api" in engine.runners, 5)  # once web's move has ended


async def test_a_forced_request_to_the_active_target_takes_the_foreign_eip_back() -> None:
    """e1 on a, e2 moved by hand to a stranger: a forced request to the active target brings e2 back."""
    stranger = Binding(instance_id="i-stranger")
    w = World({"e1": A, "e2": stranger})
    await w.ticks(2)
    w.runner.request_failover(ManualRequest(to="a", force=True, id="m1"))
    await w.runner.wait_idle()
    assert w.cloud.placement["e2"] == A, (f"forced request refused: {w.runner.decision}; "
                                          f"{w.recorder.of('finished')}")


async def test_eips_a_failover_could_not_secure_stop_being_at_risk_once_the_cloud_shows_them_attached() -> None:
    """A failed move whose secure step could not read the cloud leaves its EIP at risk, until a read shows it
    attached: then a stop has nothing to warn about."""
    w = World({"e1": A})
    w.cloud.atomic_moves = False  # a two-step cloud (Alibaba)
    await w.ticks(3)
    w.cloud.faults["move"] = [ProviderError("Forbidden.RAM", retryable=False, code="Forbidden.RAM")]
    w.cloud.faults["describe"] = [ProviderError("Forbidden.RAM", retryable=False, code="Forbidden.RAM")]
    w.runner.request_failover(ManualRequest(to="b", id="m1"))
    await w.runner.wait_idle()
    assert w.runner.state.left_detached == ("e1",)
    await w.ticks(5)  # the cloud answers again: e1 is on a, healthy; nothing to do
    assert w.runner.state.cloud.placement is Placement.ON_TARGET
    assert w.runner.state.cloud.active == "a"
    assert Engine([w.runner]).at_risk() == {}, (
        f"the cloud shows e1 attached to a, yet a stop now would exit 1: {Engine([w.runner]).at_risk()}")


async def test_a_repair_that_fails_for_good_is_not_retried_in_a_tight_loop() -> None:
    """A detached EIP whose re-attachment is refused for good (AssociateAddress denied): each failed repair makes
    the next one wait, one interval and doubling, instead of retrying as fast as the cloud answers."""
    cloud = FakeProvider({"e1": None})
    recorder = Recorder()
    web = GroupRunner(named_group("web", ["e1"], interval="500ms", timeout="250ms", rise=1),
                      cloud, {n: [ScriptedCheck()] for n in "ab"}, Observers([recorder]))
    cloud.faults["move"] = [ProviderError("denied", retryable=False, code="UnauthorizedOperation")] * 1000
    engine = Engine([web])
    running = asyncio.create_task(engine.run())
    try:
        await eventually(lambda: len(recorder.of("finished")) >= 3, 10)
        assert web.decision is not None
        assert web.decision.reason is Reason.REPAIR_BACKOFF
    finally:
        engine.request_stop()
        await running
    starts = [t for t, *_ in recorder.timed("started")]
    assert len(starts) == 3  # at 0, then after 0.5 s, then after 1 s more
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.45
    assert gaps[1] >= 0.95


async def test_the_active_target_gauge_agrees_with_the_api_when_an_eip_is_foreign() -> None:
    """e1 on a, e2 on a stranger (left alone): the group acts on e1 on a; the gauge says so too, so that
    EipFailoverActiveTargetDown can fire for it."""
    stranger = Binding(instance_id="i-stranger")
    w = World({"e1": A, "e2": stranger})
    await w.ticks(3)
    assert w.runner.state.cloud.active == "a"
    families = {f.name: f for f in StateCollector(Engine([w.runner])).collect()}
    active = {s.labels["target"]: s.value for s in families["eipfailover_active_target"].samples}
    assert active.get("a") == 1.0, f"API active_target={w.runner.state.cloud.active!r}, gauge: {active}"


async def test_a_verified_move_of_every_eip_is_not_read_again_at_once() -> None:
    """The verification's describe is the freshest view there is: after a move that verified every EIP of the group
    the next cloud read waits for its slot (in a mass failover, one extra describe per move was half the read
    burst); a failed move is read again at once."""
    w = World({"e1": A}, interval="5s", timeout="50ms", rise=1, fall=1)
    await w.ticks(1)
    task = asyncio.create_task(w.runner.run())
    try:
        await eventually(lambda: len(reads(w.cloud)) >= 2)  # the loop's first read, at once
        w.set(a=FAIL)
        await eventually(lambda: w.runner.state.last_failover is not None)
        assert w.runner.state.last_failover is not None
        assert w.runner.state.last_failover.result == "success"
        settled = len(reads(w.cloud))
        w.cloud.faults["move"] = [ProviderError("denied", retryable=False, code="Forbidden")]
        w.set(a=OK)
        await w.runner.check_round()  # a: UP again
        w.runner.request_failover(ManualRequest(to="a"))
        await eventually(lambda: (done := w.runner.state.last_failover) is not None and done.to_target == "a")
        await eventually(lambda: len(reads(w.cloud)) == settled + 1)  # the failed move: a read at once
    finally:
        w.runner.request_stop()
        await asyncio.wait_for(task, 5)
    assert len(reads(w.cloud)) == settled + 1  # and none after the verified move, before its slot


def reads(cloud: FakeProvider) -> list[tuple[str, ...]]:
    return [eips for op, eips, _ in cloud.calls if op == "describe"]
