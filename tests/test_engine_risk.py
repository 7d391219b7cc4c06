"""The engine at the edges of a failed move: the repair backoff (bounded, kept across reloads) and which EIPs it
reports at risk of being detached (kept across reloads, never from a stale view, and no long secure step where
moves are atomic)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from eipfailover import engine as engine_module
from eipfailover.engine import Engine, GroupRunner
from eipfailover.errors import ProviderError
from eipfailover.events import Observers
from eipfailover.model import ManualRequest, Placement, Reason

from .fakes import ScriptedCheck
from .test_engine import A, Recorder, World, group_config


async def halt(engine: Engine) -> None:
    """Stop an engine whose runners were started by :meth:`Engine.apply` without :meth:`Engine.run`."""
    engine.request_stop()
    loops = list(engine._loops.values())
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)


DENIED = ProviderError("Forbidden.RAM", retryable=False, code="Forbidden.RAM")
THROTTLED = ProviderError("Throttling", retryable=True, code="Throttling")


async def test_a_reload_keeps_the_eips_a_failed_move_left_detached_at_risk() -> None:
    """A two-step (Alibaba) move detached e1 and could neither re-attach it nor read the cloud: e1 is at risk (a
    stop now exits 1 with eips_may_be_detached), and stays so across a reload that changes the group."""
    w = World({"e1": A})
    w.cloud.two_step, w.cloud.atomic_moves = True, False
    await w.ticks(3)
    w.cloud.faults["move"] = [DENIED]
    w.cloud.faults["describe"] = [DENIED] * 1000  # the cloud stays unreadable
    w.runner.request_failover(ManualRequest(to="b", id="m1"))
    await w.runner.wait_idle()
    assert w.cloud.placement["e1"] is None
    engine = Engine([w.runner])
    assert engine.at_risk() == {"g": ["e1"]}
    new = GroupRunner(group_config(2, 1, rise=3), w.cloud, {n: [ScriptedCheck()] for n in "ab"},
                      Observers([Recorder()]))
    engine.apply({"g": new})
    try:
        await asyncio.sleep(0.2)  # the new runner's first read fails too
        assert engine.at_risk() == {"g": ["e1"]}, (
            f"after the reload e1 is still detached ({w.cloud.placement}) and unconfirmed, yet at_risk() = "
            f"{engine.at_risk()}: a stop now exits 0 without eips_may_be_detached")
    finally:
        await halt(engine)


async def test_a_forced_move_on_a_stale_view_reports_the_eip_it_could_not_check() -> None:
    """AWS (atomic moves). e1 was last seen on a; then the cloud became unreadable and e1 was detached behind the
    daemon's back. A forced move to b is refused and the secure step cannot read the cloud: the last view being
    stale, e1 is reported at risk (nothing has confirmed it attached since the cloud went dark)."""
    w = World({"e1": A}, failover_deadline="1s")
    await w.ticks(3)
    w.cloud.faults["describe"] = [THROTTLED] * 1000
    await w.runner.read_cloud()
    assert w.runner.state.cloud.placement is Placement.UNKNOWN
    w.cloud.placement["e1"] = None  # gone from a, unseen
    w.cloud.faults["move"] = [DENIED]
    w.runner.request_failover(ManualRequest(to="b", force=True, id="m1"))
    during = Engine([w.runner]).at_risk()
    await w.runner.wait_idle()
    assert w.recorder.of("finished")[-1][1] == "failure"
    assert during == {"g": ["e1"]}
    assert Engine([w.runner]).at_risk() == {"g": ["e1"]}, (
        f"e1 is detached ({w.cloud.placement}) and unconfirmed; at_risk() = {Engine([w.runner]).at_risk()}, "
        f"left_detached = {w.runner.state.left_detached}")


async def test_aborting_an_atomic_move_does_not_wait_a_whole_deadline_for_nothing() -> None:
    """AWS: a move from a to b (AssociateAddress hangs) is aborted by a stop while the cloud is throttled. An atomic
    move of attached EIPs cannot have detached anything: no secure step, the failover ends at once."""
    deadline = 3.0
    w = World({"e1": A}, failover_deadline=f"{deadline}s")
    await w.ticks(3)
    w.cloud.move_delay = 30.0  # the call hangs
    w.runner.request_failover(ManualRequest(to="b", id="m1"))
    await asyncio.sleep(0.1)
    w.cloud.faults["describe"] = [THROTTLED] * 1000
    started = time.monotonic()
    w.runner.abort()
    await w.runner.wait_idle()
    took = time.monotonic() - started
    assert w.cloud.placement["e1"] == A
    assert took < deadline / 2, (f"the aborted atomic move took {took:.1f}s to end (failover_deadline "
                                 f"{deadline:g}s): {w.recorder.of('finished')[-1][3]}")


class _Clock:
    """The engine's clock only (asyncio keeps the real one): ``monotonic`` is advanced by the test."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


async def test_a_long_refused_repair_does_not_wedge_the_group(monkeypatch: Any) -> None:
    """A detached EIP whose re-attachment the cloud refuses for a long time (an IAM mistake, fixed later): after
    1,100 failed repairs (hours of refusal at the 30 s cap) the group still repairs once the cloud accepts again."""
    clock = _Clock()
    monkeypatch.setattr(engine_module, "time", clock)
    w = World({"e1": None})
    w.cloud.faults["move"] = [ProviderError("denied", retryable=False, code="UnauthorizedOperation")] * 10_000
    crashed: BaseException | None = None
    for _ in range(1100):
        clock.now += 31.0  # past the longest backoff: every tick may repair
        await w.runner.read_cloud()
        try:
            await w.runner.wait_idle()
        except Exception as exc:  # the failover task died
            crashed = exc
            break
        await w.runner.check_round()
        await w.runner.wait_idle()
    failed = len([e for e in w.recorder.of("finished") if e[1] == "failure"])
    w.cloud.faults["move"] = []  # the cloud accepts again
    for _ in range(3):
        clock.now += 31.0
        await w.runner.read_cloud()
        await asyncio.sleep(0)
        await w.runner.check_round()
        await asyncio.sleep(0)
    assert crashed is None, (f"after {failed} failed repairs (repair_failures={w.runner.state.repair_failures}) the "
                             f"failover task raised {crashed!r}; in_progress={w.runner.in_progress}, "
                             f"decision={w.runner.decision}, e1 on {w.cloud.placement['e1']}")
    assert w.cloud.placement["e1"] is not None


async def test_a_reload_does_not_reset_the_repair_backoff() -> None:
    """A repair the cloud refuses: the next one waits (repair_backoff), also after a reload that changes the group
    (config management re-applying the file must not hammer the refusing cloud)."""
    w = World({"e1": None}, rise=1)
    w.cloud.faults["move"] = [ProviderError("denied", retryable=False, code="UnauthorizedOperation")] * 100
    await w.runner.check_round()
    await w.runner.read_cloud()
    await w.runner.wait_idle()
    moves_after_first = len(w.cloud.moves())
    assert moves_after_first > 0
    await w.runner.read_cloud()  # the detached EIP again: the next repair waits
    assert w.runner.decision is not None
    assert w.runner.decision.reason is Reason.REPAIR_BACKOFF
    engine = Engine([w.runner])
    engine._loops[w.runner] = asyncio.create_task(asyncio.sleep(3600))  # as if it ran
    new = GroupRunner(group_config(2, 1, rise=2), w.cloud,
                      {n: [ScriptedCheck()] for n in "ab"}, Observers([Recorder()]))
    engine.apply({"g": new})  # the old runner is idle: the new one starts now, with the state carried over
    try:
        await asyncio.sleep(0.3)  # well within the 1 s backoff of the first failure
        assert len(w.cloud.moves()) == moves_after_first, (
            f"the reloaded group retried the refused repair at once: {len(w.cloud.moves()) - moves_after_first} "
            f"more AssociateAddress calls within 0.3 s of the refusal")
    finally:
        await halt(engine)

