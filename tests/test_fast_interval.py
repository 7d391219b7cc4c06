"""The fast re-probe (found by the review of issue 12): detection when fast_interval equals the check timeout,
and checks that cannot tell."""

from __future__ import annotations

import asyncio
import itertools

from eipfailover.model import Binding, CheckStatus, TargetState

from .fakes import ScriptedCheck
from .test_engine import World, round_starts

A = Binding(instance_id="i-a")


class BlackHoleCheck(ScriptedCheck):
    """A probe of a dead instance whose packets are dropped: no answer, the check's timeout ends it."""

    def __init__(self, timeout: float) -> None:
        super().__init__("blackhole")
        self.timeout = timeout
        self.dead = False

    async def probe(self) -> tuple[CheckStatus, str]:
        if self.dead:
            await asyncio.Event().wait()
        return CheckStatus.OK, ""


async def test_detection_with_the_default_fast_interval_equal_to_timeout_meets_the_promise() -> None:
    """Fixed: with fast_interval == timeout (the default whenever interval/4 <= timeout, e.g. the default policy
    2 s / 1 s), a target that times out makes every check round last timeout + a few ms, so the next fast slot
    (start + fast_interval) is already past when run_every computes it, and the slot is skipped: the rounds come
    every 2 * fast_interval, and detection takes (fall-1) * 2 * fast_interval + timeout instead of the documented
    (and check-config/API reported) (fall-1) * fast_interval + timeout (README's "default detects in 3 s": 5 s)."""
    w = World({"e1": A}, interval="800ms", timeout="200ms", rise=1, fall=3)
    policy = w.runner.config.policy
    assert policy.fast == policy.timeout == 0.2  # the default fast_interval: max(interval / 4, timeout)
    check = BlackHoleCheck(policy.timeout)
    w.runner.targets["a"].checks = [check]
    await w.ticks(1)
    assert w.runner.targets["a"].health.state is TargetState.UP

    check.dead = True
    starts = await round_starts(w, 0, until=lambda: w.runner.targets["a"].health.state.value == "down")
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(starts)]
    detection = starts[2] - starts[0] + policy.timeout  # first failed probe to the third failure
    assert detection <= policy.detection_seconds + 0.1, (detection, policy.detection_seconds, gaps)


async def test_a_target_whose_checks_cannot_tell_does_not_keep_the_group_on_the_fast_interval() -> None:
    """Fixed: ``Health.changing`` is "failures > 0 and not DOWN"; an ``unknown`` result changes nothing, so a target
    with one failure followed by unknown results (a cloud-reading check whose API is throttled or slow: the very
    instance check that goes through the provider's read limit) stays "changing" forever and the group is probed at
    fast_interval (4x the rate, 4x the instance-state reads against the throttled limit) indefinitely, although no
    state change is under way: the promise "a healthy fleet is probed at the normal rate" breaks, and the extra
    reads feed the throttling that produced the unknowns."""
    w = World({"e1": A}, interval="400ms", timeout="50ms", fast_interval="100ms", rise=1, fall=3)
    await w.ticks(1)
    assert w.runner.check_interval() == 0.4
    w.checks["a"].script = [CheckStatus.FAIL] + [CheckStatus.UNKNOWN] * 50
    for _ in range(51):
        await w.runner.check_round()
    assert w.runner.targets["a"].health.state is TargetState.UP  # nothing happened to it
    assert w.runner.check_interval() == 0.4  # 50 rounds of unknown later: still probed every 100 ms
