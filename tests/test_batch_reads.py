"""One cloud read for all groups: Provider.describe batches every describe waiting at the same moment, and the
engine's groups read on a shared grid, so that a provider sends one read per interval whatever the number of
groups (the figures: bench/api_scale.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from eipfailover.config import RateLimitConfig, parse_config
from eipfailover.engine import Engine, GroupRunner
from eipfailover.errors import ProviderError
from eipfailover.events import NullObserver, Observers
from eipfailover.model import Binding, EipState

from .conftest import eventually
from .fakes import FakeProvider, ScriptedCheck

A, B = Binding(instance_id="i-a"), Binding(instance_id="i-b")


class LimitedCloud(FakeProvider):
    """A fake whose reads are requests, under the read limit ``rate``/``burst``."""

    operations = ("Describe",)

    def __init__(self, placement: dict[str, Binding | None], rate: float, burst: int) -> None:
        super().__init__(placement)
        self.limits.reads.rate, self.limits.reads.burst = rate, burst

    async def read_eips(self, eips: Sequence[str]) -> dict[str, EipState]:
        return await self.request("Describe", lambda: super(LimitedCloud, self).read_eips(eips))


def reads(cloud: FakeProvider) -> list[tuple[str, ...]]:
    return [eips for op, eips, _ in cloud.calls if op == "describe"]


async def test_describes_waiting_together_are_one_read_and_each_gets_its_own_eips() -> None:
    cloud = FakeProvider({"e1": A, "e2": B, "e3": A})
    one, two, three = await asyncio.gather(cloud.describe(["e1"]), cloud.describe(["e3", "e2"]),
                                           cloud.describe(["e1"]))
    assert reads(cloud) == [("e1", "e2", "e3")]
    assert (list(one), list(two), list(three)) == (["e1"], ["e3", "e2"], ["e1"])
    assert two["e2"].bound_to == B


async def test_a_describe_is_answered_by_a_read_sent_after_it() -> None:
    """A describe that comes while a read is in flight waits for the next one: a verification after a move never
    takes an answer sent before the move."""
    cloud = FakeProvider({"e1": A})
    hold = cloud.hold = asyncio.Event()
    first = asyncio.create_task(cloud.describe(["e1"]))
    await eventually(lambda: len(reads(cloud)) == 1)  # in flight, held
    cloud.placement["e1"] = B  # the cloud changes meanwhile
    second = asyncio.create_task(cloud.describe(["e1"]))
    hold.set()
    assert (await first)["e1"].bound_to == A
    assert (await second)["e1"].bound_to == B
    assert len(reads(cloud)) == 2


async def test_an_unknown_eip_fails_only_the_describe_that_asked_for_it() -> None:
    cloud = FakeProvider({"e1": A})
    good, bad = await asyncio.gather(cloud.describe(["e1"]), cloud.describe(["e1", "nope"]),
                                     return_exceptions=True)
    assert isinstance(good, dict)
    assert list(good) == ["e1"]
    assert isinstance(bad, ProviderError)
    assert (str(bad), bad.code, bad.retryable) == ("fake: no EIP nope", "NotFound", False)
    assert reads(cloud) == [("e1", "nope")]


async def test_a_failed_read_fails_every_describe_of_its_batch() -> None:
    cloud = FakeProvider({"e1": A, "e2": B})
    cloud.faults["describe"] = [ProviderError("throttled", retryable=True, code="RequestLimitExceeded")]
    results = await asyncio.gather(cloud.describe(["e1"]), cloud.describe(["e2"]), return_exceptions=True)
    assert [str(r) for r in results] == ["throttled", "throttled"]
    assert (await cloud.describe(["e2"]))["e2"].bound_to == B  # the next batch is a new read


async def test_a_read_nobody_waits_for_any_more_is_not_sent() -> None:
    cloud = LimitedCloud({"e1": A}, rate=1.0, burst=1)
    await cloud.describe(["e1"])  # the only token for a second
    waiting = asyncio.create_task(cloud.describe(["e1"]))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert cloud._reads._open is None
    assert len(reads(cloud)) == 1
    assert list(await cloud.describe(["e1"])) == ["e1"]  # a new batch, not the cancelled one


async def test_describes_held_back_by_the_read_limit_join_the_waiting_batch() -> None:
    """While the read bucket is empty the batch keeps taking callers: a burst of verifications is one read."""
    cloud = LimitedCloud({f"e{i}": A for i in range(20)}, rate=10.0, burst=1)
    await cloud.describe(["e0"])  # the token: the next read waits 100 ms for one
    calls = []
    for i in range(20):
        calls.append(asyncio.create_task(cloud.describe([f"e{i}"])))
        await asyncio.sleep(0.002)  # one after the other, not in the same instant
    await asyncio.gather(*calls)
    assert len(reads(cloud)) == 2
    assert len(reads(cloud)[1]) == 20


def group(name: str, eips: list[str], interval: str) -> Any:
    data = {
        "providers": {"p": {"type": "aws", "region": "us-east-1"}},
        "groups": [{"name": name, "provider": "p", "eips": eips, "policy": {"interval": interval, "timeout": "10ms"},
                    "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                                 "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in ("a", "b")]}],
    }
    return parse_config(data).groups[0]


async def test_the_groups_of_a_provider_read_the_cloud_together_once_an_interval() -> None:
    """40 groups on one provider, their checks spread over the interval: one read per interval, for all."""
    count, interval = 40, 0.2
    cloud = FakeProvider({f"e{i}": A for i in range(count)})
    runners = [GroupRunner(group(f"g{i}", [f"e{i}"], f"{interval}s"), cloud,
                           {"a": [ScriptedCheck()], "b": [ScriptedCheck()]}, Observers([NullObserver()]))
               for i in range(count)]
    engine = Engine(runners)
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(engine.ready.wait(), 5)
    loop = asyncio.get_running_loop()
    before, start = len(reads(cloud)), loop.time()
    await asyncio.sleep(10 * interval)
    sent, elapsed = len(reads(cloud)) - before, loop.time() - start
    engine.request_stop()
    await asyncio.wait_for(task, 5)
    assert sent <= elapsed / interval + 1, reads(cloud)
    assert all(len(eips) == count for eips in reads(cloud)[before:])  # each read is every group's


def test_rate_limits_default_to_the_drivers_and_can_be_set() -> None:
    cloud = FakeProvider({})
    assert cloud.limits.reads.rate == 1e6
    from eipfailover.config import AwsProviderConfig
    from eipfailover.providers.aws import AwsProvider
    aws = AwsProvider("aws", AwsProviderConfig(type="aws", region="us-east-1"))
    assert (aws.limits.reads.rate, aws.limits.reads.burst) == (18.0, 90)
    assert (aws.limits.mutations.rate, aws.limits.mutations.burst) == (4.5, 45)
    limits = RateLimitConfig.model_validate({"mutations": {"requests_per_second": 2}})
    tuned = AwsProvider("aws", AwsProviderConfig(type="aws", region="us-east-1", rate_limit=limits))
    assert (tuned.limits.mutations.rate, tuned.limits.mutations.burst) == (2.0, 45)  # the burst: the default
    aws.executor.shutdown()
    tuned.executor.shutdown()
