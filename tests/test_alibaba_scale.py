"""Alibaba at scale (found by the review of issue 12): batched reads over 50 EIPs, verification polls during
moves, and the mutation burst in a mass move."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from eipfailover import failover, ratelimit
from eipfailover.model import Binding

from .fake_aliyun import FakeAliyun, provider_for
from .test_alibaba import most_detached_in_a_mass_move


async def test_reading_51_eips_does_not_page_through_every_eip_of_the_region(fake: FakeAliyun,
                                                                             tmp_path: Path) -> None:
    """Fixed: over 50 EIPs, ``_describe_eips`` reads every EIP of the *region*, 100 a page, whatever the number
    wanted: the cost of the once-an-interval read grows with the account, not with the daemon's groups. 51 managed
    EIPs in a region of 2000 cost 20 DescribeEipAddresses every interval (2.5 s of the default 8/s read budget,
    more than the default 2 s interval) where 2 calls by ID (50 + 1) would do."""
    fake.add_resource("i-a")
    for i in range(2000):
        fake.add_eip(f"eip-{i:04d}", f"47.{i // 250}.{i % 250}.1")
    wanted = [f"eip-{i:04d}" for i in range(51)]
    for eip in wanted:
        fake.bind(eip, "i-a")
    ali = provider_for(fake, tmp_path)
    found = await ali.describe(wanted)
    assert len(found) == 51
    calls = [e for e in fake.log if e.action == "DescribeEipAddresses"]
    assert len(calls) <= 1 + math.ceil(len(wanted) / 50), len(calls)  # a first page tells the region's size
    found = await ali.describe(wanted)
    assert len(found) == 51
    calls = [e for e in fake.log if e.action == "DescribeEipAddresses"][len(calls):]
    assert len(calls) == math.ceil(len(wanted) / 50), len(calls)  # then by their IDs


async def test_the_polls_of_concurrent_moves_are_coalesced(fake: FakeAliyun, tmp_path: Path) -> None:
    """Fixed: the issue asks that verification polls during moves go through the shared reader (coalesced). On
    Alibaba the polls inside a move (``_plan``, ``_wait_eips`` until Available / associated, ``_landed``,
    ``_second_step``) call ``_describe_eips`` directly, each its own DescribeEipAddresses every poll_interval/4,
    bypassing ``Provider.describe``: N moves at once poll N times as often, at REPAIR priority, starving the
    provider's read limit. Two moves polling at the same moments never share a read."""
    for i in range(2):
        fake.add_resource(f"i-a{i}")
        fake.add_resource(f"i-b{i}")
        fake.add_eip(f"eip-m{i}", f"47.3.0.{i}")
        fake.bind(f"eip-m{i}", f"i-a{i}")
    ali = provider_for(fake, tmp_path, rate_limit={"reads": {"requests_per_second": 5, "burst": 1}})
    with ratelimit.priority(ratelimit.Priority.REPAIR):
        outcomes = await asyncio.gather(*(
            failover.execute(ali, [f"eip-m{i}"], Binding(instance_id=f"i-b{i}", instance_type="EcsInstance"),
                             deadline=30, verify_interval=0.05) for i in range(2)))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    reads = [e.query.get("AllocationId", "") for e in fake.log if e.action == "DescribeEipAddresses"]
    # both moves start at the same instant and first read their EIP (``_plan``), then wait for it to be Available,
    # each held back by the read limit (5 a second): those polls should go out together, as one read
    in_move = [r for r in reads if "," not in r]
    assert len(in_move) <= 2, reads  # actual: every in-move poll alone, e.g. m0, m1, m0, m1, ...


async def test_a_mass_failback_does_not_detach_every_eip_at_once_with_the_default_burst(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """Fixed: Priority.ATTACH only orders queued calls. While the mutation bucket holds tokens (the default burst is
    20), every two-step move's UnassociateEipAddress goes out at once (no waiters: the fast path), and only then do
    the associations queue at the steady rate: ten failbacks of healthy EIPs with a burst of 10 at 2 calls a second
    detach all ten at once and the last is re-attached ~5 s later, downtime the failbacks were never forced into.
    The limiter should hold a token back for the second step of each move already detached."""
    assert await most_detached_in_a_mass_move(fake, tmp_path, 2, 10, ratelimit.Priority.FAILBACK) <= 3


async def test_requests_leave_within_the_rate_limit_when_the_concurrency_cap_holds_them(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """Fixed: ``Provider.request`` takes the rate-limit token *before* the driver waits for a free slot of its
    concurrency cap (Alibaba's semaphore, AWS's thread pool). While slow calls hold every slot, the waiting requests
    keep taking tokens at the configured rate; when the slots free up they all go out back to back, far above the
    rate the operator set (here: 10 describes within milliseconds under a limit of 10/s with a burst of 1). The
    token must be taken when the request can actually be sent (after the slot), or the slot wait must count."""
    import time

    from .fake_aliyun import Fault

    fake.add_resource("i-a")
    fake.add_eip("eip-1", "47.1.1.1")
    fake.bind("eip-1", "i-a")
    ali = provider_for(fake, tmp_path, max_concurrency=1, read_timeout=3,
                       rate_limit={"reads": {"requests_per_second": 10, "burst": 1}})
    sent: list[float] = []
    real = fake._pop_fault

    def timed(action: str, query: dict[str, str]) -> object:  # when each request reaches the cloud
        if action == "DescribeEipAddresses":
            sent.append(time.monotonic())
        return real(action, query)

    fake._pop_fault = timed  # type: ignore[assignment,method-assign]
    fake.faults["DescribeEipAddresses"] = [Fault(code=None, delay=1.5)]  # a slow answer holds the only slot
    await asyncio.gather(*(ali._describe_eips(["eip-1"]) for _ in range(11)))
    # a token bucket of rate 10/s and burst 1 must accept the times the requests reached the cloud
    tokens, last = 1.0, sent[0] - 10.0
    for at in sorted(sent):
        tokens = min(1.0, tokens + (at - last) * 10.0)
        last = at
        assert tokens >= 1.0 - 1e-3, [round(t - sent[0], 3) for t in sorted(sent)]
        tokens -= 1.0
