"""The failover action: retries within the deadline, verification by describe, partial moves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from eipfailover import failover
from eipfailover.errors import ProviderError
from eipfailover.model import Binding

from .conftest import eventually
from .fakes import FakeProvider

A, B = Binding(instance_id="i-a"), Binding(instance_id="i-b")
FAST = failover.Backoff(base=0.01, cap=0.05)


def throttle() -> ProviderError:
    return ProviderError("throttled", retryable=True, code="RequestLimitExceeded")


async def test_move_and_verify() -> None:
    cloud = FakeProvider({"e1": A, "e2": A})
    outcome = await failover.execute(cloud, ["e1", "e2"], B, deadline=5, backoff=FAST)
    assert (outcome.ok, outcome.attempts) == (True, 1)
    assert cloud.placement == {"e1": B, "e2": B}


async def test_verification_waits_for_an_eventually_consistent_cloud() -> None:
    cloud = FakeProvider({"e1": A}, lag=3)
    outcome = await failover.execute(cloud, ["e1"], B, deadline=5, verify_interval=0.01)
    assert outcome.ok
    assert [op for op, *_ in cloud.calls].count("describe") == 4  # 3 stale answers, then the truth


async def test_not_verified_within_the_deadline() -> None:
    cloud = FakeProvider({"e1": A}, lag=10_000)
    start = time.monotonic()
    outcome = await failover.execute(cloud, ["e1"], B, deadline=0.3, verify_interval=0.05)
    assert not outcome.ok
    assert outcome.error == "not verified within 0.3s (last seen: e1 on i-a)"
    assert time.monotonic() - start < 0.5


async def test_retryable_errors_are_retried() -> None:
    cloud = FakeProvider({"e1": A})
    cloud.faults["move"] = [throttle(), throttle()]
    outcome = await failover.execute(cloud, ["e1"], B, deadline=5, backoff=FAST)
    assert (outcome.ok, outcome.attempts) == (True, 3)


async def test_permanent_error_stops_at_once() -> None:
    cloud = FakeProvider({"e1": A})
    cloud.faults["move"] = [ProviderError("denied", retryable=False, code="UnauthorizedOperation")]
    outcome = await failover.execute(cloud, ["e1"], B, deadline=5, backoff=FAST)
    assert (outcome.ok, outcome.attempts, outcome.error) == (False, 1, "move failed: denied")
    assert cloud.placement == {"e1": A}


async def test_retries_end_at_the_deadline() -> None:
    cloud = FakeProvider({"e1": A})
    cloud.faults["move"] = [throttle() for _ in range(1000)]
    start = time.monotonic()
    outcome = await failover.execute(cloud, ["e1"], B, deadline=0.5, backoff=failover.Backoff(base=0.05, cap=0.1))
    assert not outcome.ok
    assert outcome.code == "RequestLimitExceeded"
    # the deadline ends either between attempts or in the middle of one: the cloud's error is named either way
    assert outcome.error in ("move failed: throttled",
                             "move did not complete within the 0.5s deadline (last error: throttled)")
    assert time.monotonic() - start < 0.6
    assert outcome.attempts > 3


async def test_a_deadline_ending_mid_call_keeps_the_last_cloud_error() -> None:
    class SlowAfterThrottling(FakeProvider):
        async def move(self, eips: Sequence[str], to: Binding) -> None:
            if self.moves():
                self.move_delay = 10  # the retry hangs past the deadline
            await super().move(eips, to)

    cloud = SlowAfterThrottling({"e1": A})
    cloud.faults["move"] = [throttle()]
    outcome = await failover.execute(cloud, ["e1"], B, deadline=0.3, backoff=FAST)
    assert (outcome.ok, outcome.code) == (False, "RequestLimitExceeded")
    assert outcome.error == "move did not complete within the 0.3s deadline (last error: throttled)"


async def test_a_hanging_move_is_cut_at_the_deadline() -> None:
    cloud = FakeProvider({"e1": A})
    cloud.move_delay = 10
    start = time.monotonic()
    outcome = await failover.execute(cloud, ["e1"], B, deadline=0.2)
    assert (outcome.ok, outcome.error) == (False, "move did not complete within the 0.2s deadline")
    assert time.monotonic() - start < 0.4


async def test_only_eips_not_in_place_are_moved() -> None:
    cloud = FakeProvider({"e1": B, "e2": A})
    states = await cloud.describe(["e1", "e2"])
    outcome = await failover.execute(cloud, ["e1", "e2"], B, deadline=5, states=states)
    assert outcome.ok
    assert cloud.moves() == [(("e2",), B)]


async def test_a_partial_move_is_completed_on_retry() -> None:
    """The first attempt moves e1 and then fails: the retry moves only e2 (re-read from the cloud)."""

    class HalfMoving(FakeProvider):
        async def move(self, eips: Sequence[str], to: Binding) -> None:
            if len(eips) == 2:
                self.placement[eips[0]] = to
                self.calls.append(("move", tuple(eips), to))
                raise throttle()
            await super().move(eips, to)

    cloud = HalfMoving({"e1": A, "e2": A})
    outcome = await failover.execute(cloud, ["e1", "e2"], B, deadline=5, backoff=FAST)
    assert outcome.ok
    assert cloud.moves() == [(("e1", "e2"), B), (("e2",), B)]


async def test_eni_private_ip_must_match_exactly() -> None:
    """A cloud that puts the EIP on the ENI's primary IP instead of the requested one is not a success."""
    wanted = Binding(network_interface_id="eni-b", private_ip="10.0.0.20")

    class PrimaryIpOnly(FakeProvider):
        async def move(self, eips: Sequence[str], to: Binding) -> None:
            await super().move(eips, Binding(network_interface_id=to.network_interface_id, private_ip="10.0.0.10"))

    cloud = PrimaryIpOnly({"e1": A})
    outcome = await failover.execute(cloud, ["e1"], wanted, deadline=0.2, verify_interval=0.05)
    assert not outcome.ok
    assert outcome.error.endswith("(last seen: e1 on eni-b/10.0.0.10)")


def test_backoff_is_jittered_and_capped() -> None:
    backoff = failover.Backoff(base=0.25, cap=2.0)
    delays = [backoff.delay(n) for n in range(8)]
    assert 0.125 <= delays[0] <= 0.25
    assert all(1.0 <= d <= 2.0 for d in delays[4:])
    assert len({backoff.delay(3) for _ in range(20)}) > 1


async def test_abort_cuts_a_two_step_move_and_reattaches_the_detached_eip() -> None:
    cloud = FakeProvider({"e1": A}, two_step=True)
    cloud.move_delay = 10  # unassociated at once, then a long wait before the associate
    abort = asyncio.Event()
    moving = asyncio.create_task(failover.execute(cloud, ["e1"], B, deadline=30, fallback=[A, B], abort=abort,
                                                  backoff=FAST, verify_interval=0.01))
    await eventually(lambda: cloud.placement["e1"] is None)  # in the detached window
    cloud.move_delay = 0
    abort.set()
    outcome = await asyncio.wait_for(moving, 5)
    assert not outcome.ok
    assert outcome.error == "aborted: the daemon is stopping; re-attached e1 to i-b"  # finished where it was going
    assert cloud.placement["e1"] == B


async def test_abort_before_anything_is_detached_moves_nothing() -> None:
    cloud = FakeProvider({"e1": A})
    cloud.move_delay = 10  # an atomic move that hangs (a slow AssociateAddress)
    abort = asyncio.Event()
    moving = asyncio.create_task(failover.execute(cloud, ["e1"], B, deadline=30, fallback=[A, B], abort=abort))
    await eventually(lambda: cloud.moves() != [])
    abort.set()
    outcome = await asyncio.wait_for(moving, 5)
    assert (outcome.ok, outcome.error) == (False, "aborted: the daemon is stopping; none detached (e1 on i-a)")
    assert cloud.placement["e1"] == A
    assert len(cloud.moves()) == 1


async def test_a_driver_bug_mid_move_still_ends_with_the_eip_attached() -> None:
    class Buggy(FakeProvider):
        async def move(self, eips: Sequence[str], to: Binding) -> None:
            if to == B:
                for eip in eips:
                    self.placement[eip] = None  # the first step went through
                raise AttributeError("'NoneType' object has no attribute 'body'")
            await super().move(eips, to)

    cloud = Buggy({"e1": A}, two_step=True)  # a driver of a cloud whose moves detach first (Alibaba)
    outcome = await failover.execute(cloud, ["e1"], B, deadline=5, fallback=[A], backoff=FAST)
    assert not outcome.ok
    assert outcome.error == ("move failed: internal error: AttributeError: 'NoneType' object has no attribute "
                             "'body'; re-attached e1 to i-a")
    assert cloud.placement["e1"] == A


async def test_a_driver_bug_in_the_describe_before_a_retry_is_survived() -> None:
    """A two-step move detaches e1, then fails retryably; the describe before the retry raises a driver bug: the
    move goes on and ends with e1 attached."""
    cloud = FakeProvider({"e1": A}, two_step=True)
    cloud.faults["move"] = [ProviderError("throttled", retryable=True, code="Throttling")]
    cloud.faults["describe"] = [KeyError("EipAddresses")]
    outcome = await failover.execute(cloud, ["e1"], B, deadline=5, fallback=[A, B], backoff=FAST,
                                     verify_interval=0.01)
    assert outcome.ok, outcome.error
    assert cloud.placement["e1"] == B


async def test_a_driver_bug_in_the_secure_step_is_survived() -> None:
    """The move detaches e1 and fails for good; the secure step's first describe raises a driver bug: it tries
    again, and re-attaches e1."""
    cloud = FakeProvider({"e1": A}, two_step=True)
    cloud.faults["move"] = [ProviderError("denied", retryable=False, code="Forbidden")]
    cloud.faults["describe"] = [RuntimeError("Session is closed")]
    outcome = await failover.execute(cloud, ["e1"], B, deadline=5, fallback=[A, B], backoff=FAST,
                                     verify_interval=0.01)
    assert not outcome.ok
    assert outcome.error == "move failed: denied; re-attached e1 to i-a"
    assert cloud.placement["e1"] == A


C, D = Binding(instance_id="i-c"), Binding(instance_id="i-d")


class SharedCloud(FakeProvider):
    """A two-step cloud whose moves go through Provider.request as a mutating call (like the Alibaba driver)."""

    operations = ("Associate",)
    mutating = frozenset({"Associate"})

    def __init__(self, placement: dict[str, Binding | None]) -> None:
        super().__init__(placement, two_step=True)
        self.slow: dict[str, float] = {}

    async def move(self, eips: Sequence[str], to: Binding) -> None:
        async def call() -> None:
            delay = max(self.slow.get(e, 0.0) for e in eips)
            if delay:
                await asyncio.sleep(delay)
            await FakeProvider.move(self, eips, to)

        await self.request("Associate", call)


async def test_securing_one_group_does_not_wait_for_another_groups_calls() -> None:
    """Groups 'web' (e1) and 'api' (e2) share a provider; api's move is slow (a call of 10 s). web's move fails after
    detaching e1: its secure step waits for web's own calls only, and re-attaches e1 within web's deadline."""
    cloud = SharedCloud({"e1": A, "e2": C})
    cloud.slow["e2"] = 10.0
    api = asyncio.create_task(failover.execute(cloud, ["e2"], D, deadline=30))
    await asyncio.sleep(0.1)
    cloud.faults["move"] = [ProviderError("InvalidInstanceId.NotFound", retryable=False)]
    t0 = time.monotonic()
    outcome = await failover.execute(cloud, ["e1"], B, deadline=2, fallback=[A], verify_interval=0.05)
    took = time.monotonic() - t0
    api.cancel()
    try:
        assert cloud.placement["e1"] == A, f"e1 left detached after {took:.1f}s: {outcome.error}"
    finally:
        await asyncio.gather(api, return_exceptions=True)
        await cloud.settle(15)


async def test_the_wait_for_the_rate_limit_does_not_count_against_the_deadline() -> None:
    """A mass failover queues at the provider's mutation limit: a move whose turn comes after its deadline's
    length still goes out and is verified (the deadline runs from its first token), instead of failing with no call
    sent and holding its group on a dead primary for a cooldown."""

    class Limited(FakeProvider):
        operations = ("Associate",)
        mutating = frozenset({"Associate"})

        async def move(self, eips: Sequence[str], to: Binding) -> None:
            await self.request("Associate", lambda: FakeProvider.move(self, eips, to))

    cloud = Limited({"e1": A, "e2": A, "e3": A})
    cloud.limits.mutations.rate, cloud.limits.mutations.burst = 4.0, 1
    outcomes = await asyncio.gather(*(failover.execute(cloud, [e], B, deadline=0.3) for e in ("e1", "e2", "e3")))
    assert [o.ok for o in outcomes] == [True, True, True], [o.error for o in outcomes]  # the third waits 0.5 s
    assert len(cloud.moves()) == 3
