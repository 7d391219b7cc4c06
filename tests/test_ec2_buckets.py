"""EC2's request-token buckets (tests/ec2_buckets.py): the arithmetic on a manual clock, then boto3 against moto
through the fault proxy enforcing them (tests/fault_proxy.py ``buckets=``).

Exact counts use a :class:`ManualClock` (time moves only when the test says); the one real-clock test waits for
the bucket's own "time until a token", never a fixed pause.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.retries.standard import ExponentialBackoff, RetryContext, ThrottledRetryableChecker

from .conftest import REGION, Ec2World, eventually
from .ec2_buckets import (
    CATEGORY_LIMITS,
    UNFILTERED_ACTIONS,
    Counts,
    Ec2Buckets,
    Limit,
    ManualClock,
    Second,
    TokenBucket,
    category,
    is_unfiltered,
    region_of,
)
from .fault_proxy import FaultProxy

THROTTLED = "RequestLimitExceeded"
Serve = Callable[..., Awaitable[FaultProxy]]


# --- the arithmetic ---
def test_a_bucket_starts_full_refills_continuously_and_never_overflows() -> None:
    bucket = TokenBucket(Limit(50, 5), now=0.0)
    assert [bucket.take(0.0) for _ in range(51)] == [True] * 50 + [False]
    assert bucket.until_token(0.0) == pytest.approx(0.2)
    assert not bucket.take(0.1)  # half a token
    assert bucket.until_token(0.1) == pytest.approx(0.1)
    assert bucket.take(0.2)
    assert not bucket.take(0.2)
    assert bucket.tokens(1000.0) == 50  # refill tokens at a full bucket are dropped
    assert sum(bucket.take(1000.0) for _ in range(60)) == 50
    # sustained: one token every 1/refill seconds, after the burst
    assert sum(bucket.take(1000.0 + i * 0.2) for i in range(1, 11)) == 10
    assert TokenBucket(Limit(0.5, 1), 0.0).until_token(0.0) == float("inf")
    assert TokenBucket(Limit(5, 0), 0.0).until_token(0.0) == 0.0


def test_the_documented_limits_of_our_actions() -> None:
    buckets = Ec2Buckets(clock=ManualClock())
    for action in ("AssociateAddress", "DisassociateAddress", "AllocateAddress", "ReleaseAddress"):
        assert (category(action), buckets.limit(buckets.bucket_name(action))) == ("mutating", Limit(50, 5))
    # DescribeAddresses is not in the unfiltered-and-unpaginated subset: 100 / 20, with or without a filter
    assert buckets.bucket_name("DescribeAddresses") == "DescribeAddresses"
    assert buckets.limit("DescribeAddresses") == Limit(100, 20)
    for action in ("DescribeInstanceStatus", "DescribeNetworkInterfaces"):
        assert action in UNFILTERED_ACTIONS
        assert (category(action), buckets.bucket_name(action)) == ("unfiltered", f"{action}[unfiltered]")
        assert buckets.limit(f"{action}[unfiltered]") == Limit(50, 10)
        for narrowed in ({"Filter.1.Name": "x", "Filter.1.Value.1": "y"}, {"InstanceId.1": "i-1"},
                         {"NetworkInterfaceId.1": "eni-1"}, {"MaxResults": "5"}, {"NextToken": "t"}):
            assert (category(action, narrowed), buckets.bucket_name(action, narrowed)) == ("non-mutating", action)
        assert buckets.limit(action) == Limit(100, 20)
    assert category("CreateTags") == "uncategorized"
    assert buckets.limit("CreateTags") == Limit(100, 10)
    assert category("RequestSpotInstances") == "resource-intensive"
    assert CATEGORY_LIMITS["non-mutating"] == Limit(100, 20)


def test_unfiltered_means_no_list_parameter_and_no_pagination() -> None:
    assert is_unfiltered({"Action": "DescribeInstanceStatus", "Version": "2016-11-15", "IncludeAllInstances": "true"})
    assert is_unfiltered([("Action", "DescribeAddresses"), ("X-Amz-Credential", "a/b/c")])
    for narrowed in ("Filter.1.Name", "AllocationId.1", "PublicIp.3", "InstanceId.12", "MaxResults", "NextToken"):
        assert not is_unfiltered({"Action": "DescribeAddresses", narrowed: "x"})


def test_overrides_by_category_and_by_bucket() -> None:
    buckets = Ec2Buckets(clock=ManualClock(), categories={"mutating": Limit(3, 1)},
                         actions={"DescribeAddresses": Limit(7, 2), "DescribeInstanceStatus[unfiltered]": Limit(2, 1)},
                         unfiltered_actions=UNFILTERED_ACTIONS | {"DescribeAddresses"})
    assert buckets.limit("AssociateAddress") == Limit(3, 1)
    assert buckets.limit("DescribeAddresses") == Limit(7, 2)
    assert buckets.bucket_name("DescribeAddresses") == "DescribeAddresses[unfiltered]"
    assert buckets.limit("DescribeAddresses[unfiltered]") == Limit(50, 10)
    assert buckets.limit("DescribeInstanceStatus[unfiltered]") == Limit(2, 1)
    assert buckets.limit("DescribeNetworkInterfaces[unfiltered]") == Limit(50, 10)


def _pattern(buckets: Ec2Buckets, clock: ManualClock, times: list[float]) -> list[bool]:
    out = []
    for t in times:
        clock.advance(t - clock.now)
        out.append(buckets.admit("AssociateAddress"))
    return out


def test_speed_compresses_time_and_scale_shrinks_the_buckets() -> None:
    times = [i / 16 for i in range(400)]  # 16 a second for 25 s (binary fractions: exact arithmetic)
    ec2_clock, fast_clock = ManualClock(0), ManualClock(0)
    on_ec2 = _pattern(Ec2Buckets(clock=ec2_clock), ec2_clock, times)
    fast = _pattern(Ec2Buckets(clock=fast_clock, speed=8), fast_clock, [t / 8 for t in times])
    assert fast == on_ec2
    # 50 + 5/16 a request: all admitted while 50 - (1 - 5/16) j >= 1, then 5 a second; never full again
    assert on_ec2[:73] == [True] * 72 + [False]
    assert sum(on_ec2) == int(50 + 5 / 16 * 399)

    small = Ec2Buckets(clock=ManualClock(), scale=0.1)
    assert small.limit("AssociateAddress") == Limit(5, 0.5)
    assert small.limit("DescribeNetworkInterfaces[unfiltered]") == Limit(5, 1)
    assert small.until_token("AssociateAddress") == 0
    assert sum(small.admit("AssociateAddress") for _ in range(10)) == 5
    assert small.until_token("AssociateAddress") == pytest.approx(2.0)  # 5 / 0.5: as long as 50 / 5 on EC2
    with pytest.raises(ValueError, match="positive"):
        Ec2Buckets(scale=0)


def test_counts_series_and_reset() -> None:
    clock = ManualClock(100.0)
    buckets = Ec2Buckets(clock=clock, actions={"AssociateAddress": Limit(3, 1)})
    assert [buckets.admit("AssociateAddress") for _ in range(5)] == [True, True, True, False, False]
    clock.advance(2.5)  # 2.5 tokens
    assert [buckets.admit("AssociateAddress") for _ in range(3)] == [True, True, False]
    assert buckets.admit("DescribeAddresses", region="eu-west-1")
    assert buckets.counts("AssociateAddress") == Counts(requests=8, admitted=5, throttled=3)
    assert buckets.counts("DescribeAddresses", region=REGION) == Counts()
    assert buckets.counts() == Counts(requests=9, admitted=6, throttled=3)
    assert buckets.stats() == {"AssociateAddress": Counts(8, 5, 3), "DescribeAddresses": Counts(1, 1, 0)}
    assert buckets.series("AssociateAddress") == [Second(0, 3, 2), Second(1, 0, 0), Second(2, 2, 1)]
    assert buckets.series("Nothing") == []

    buckets.reset_counters()  # the counters start again; the tokens stay as they were
    assert buckets.counts() == Counts()
    assert not buckets.admit("AssociateAddress")
    assert buckets.series("AssociateAddress") == [Second(0, 0, 1)]
    buckets.refill()
    assert buckets.tokens("AssociateAddress") == 3


def test_region_from_the_sigv4_credential_scope() -> None:
    auth = ("AWS4-HMAC-SHA256 Credential=testing/20250101/eu-central-1/ec2/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date, Signature=abc")
    assert region_of(auth) == "eu-central-1"
    assert region_of(None, {"X-Amz-Credential": "testing/20250101/ap-south-1/ec2/aws4_request"}) == "ap-south-1"
    assert region_of("Basic Zm9vOmJhcg==") is None


# --- through the proxy, with boto3 and moto ---
@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def serve(ec2: Ec2World, clock: ManualClock) -> AsyncIterator[Serve]:
    """``await serve(**options)``: a proxy in front of moto enforcing ``Ec2Buckets(clock=clock, **options)``."""
    proxies: list[FaultProxy] = []

    async def start(**options: Any) -> FaultProxy:
        proxies.append(FaultProxy(ec2.endpoint, "ec2", buckets=Ec2Buckets(**{"clock": clock, **options})))
        await proxies[-1].start()
        return proxies[-1]

    yield start
    for proxy in proxies:
        await proxy.stop()


@pytest.fixture
def via() -> Iterator[Callable[..., Any]]:
    """boto3 EC2 clients through a proxy: ``via(proxy, attempts=1, region=REGION)``."""
    clients: list[Any] = []

    def make(proxy: FaultProxy, attempts: int = 1, region: str = REGION) -> Any:
        clients.append(boto3.client(
            "ec2", endpoint_url=proxy.url, region_name=region, aws_access_key_id="testing",
            aws_secret_access_key="testing", config=Config(
                retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=5, read_timeout=30)))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


async def outcomes(call: Callable[[], Any], n: int = 1) -> list[str]:
    """``call`` n times in a row (in a thread: the proxy runs on this loop): "ok" or the error code, each."""
    def run() -> list[str]:
        out = []
        for _ in range(n):
            try:
                call()
                out.append("ok")
            except ClientError as exc:
                out.append(exc.response["Error"]["Code"])
        return out
    return await asyncio.to_thread(run)


def mover(client: Any, ec2: Ec2World, instance: str | None = None) -> Callable[[], Any]:
    return lambda: client.associate_address(AllocationId=ec2.eip, InstanceId=instance or ec2.instance_b,
                                            AllowReassociation=True)


def buckets_of(proxy: FaultProxy) -> Ec2Buckets:
    assert proxy.buckets is not None
    return proxy.buckets




async def test_a_burst_of_associates_admits_exactly_the_bucket(ec2: Ec2World, serve: Serve, via: Callable[..., Any],
                                                              clock: ManualClock) -> None:
    proxy = await serve()
    buckets, move = buckets_of(proxy), mover(via(proxy), ec2)
    n, k = 50, 4  # the documented mutating bucket: 50
    assert await outcomes(move, n + k) == ["ok"] * n + [THROTTLED] * k
    assert buckets.counts("AssociateAddress") == Counts(requests=n + k, admitted=n, throttled=k)
    limited = [s for s in proxy.calls("AssociateAddress") if s.limited]
    assert [(s.fault, s.forwarded, s.status, s.bucket) for s in limited] == [
        ("throttle", False, 503, "AssociateAddress")] * k
    assert len(proxy.calls("AssociateAddress", forwarded=True)) == n

    wait = buckets.until_token("AssociateAddress")
    assert wait == pytest.approx(1 / 5)
    clock.advance(wait / 2)
    assert await outcomes(move) == [THROTTLED]  # half a token
    clock.advance(buckets.until_token("AssociateAddress"))
    assert await outcomes(move, 2) == ["ok", THROTTLED]
    assert buckets.counts("AssociateAddress") == Counts(requests=n + k + 3, admitted=n + 1, throttled=k + 2)


async def test_refill_admits_what_the_rate_allows(ec2: Ec2World, serve: Serve, via: Callable[..., Any],
                                                  clock: ManualClock) -> None:
    proxy = await serve()
    buckets, client = buckets_of(proxy), via(proxy)
    for _ in range(50):
        assert buckets.admit("AssociateAddress")  # drained out of band
    assert await outcomes(mover(client, ec2)) == [THROTTLED]
    clock.advance(1.0)  # five a second
    assert await outcomes(mover(client, ec2, ec2.instance_a), 7) == ["ok"] * 5 + [THROTTLED] * 2
    assert ec2.holder()["InstanceId"] == ec2.instance_a
    clock.advance(3600)  # full again, no more
    assert await outcomes(mover(client, ec2), 51) == ["ok"] * 50 + [THROTTLED]
    assert buckets.counts("AssociateAddress") == Counts(requests=50 + 1 + 7 + 51, admitted=105, throttled=4)


async def test_botocore_takes_it_for_a_retryable_throttle(ec2: Ec2World, serve: Serve, via: Callable[..., Any],
                                                          no_backoff: None) -> None:
    proxy = await serve()
    for _ in range(50):
        buckets_of(proxy).admit("AssociateAddress")
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(mover(via(proxy, attempts=3), ec2))
    error = caught.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == (THROTTLED, 503)
    assert (error["ResponseMetadata"]["RetryAttempts"], error["ResponseMetadata"]["MaxAttemptsReached"]) == (2, True)
    assert ThrottledRetryableChecker().is_retryable(RetryContext(attempt_number=1, parsed_response=error))
    assert [(s.attempt, s.limited) for s in proxy.calls("AssociateAddress")] == [(1, True), (2, True), (3, True)]


async def test_describes_and_mutations_use_separate_buckets(ec2: Ec2World, serve: Serve,
                                                            via: Callable[..., Any]) -> None:
    proxy = await serve(actions={"AssociateAddress": Limit(2, 1)})
    client = via(proxy)
    assert await outcomes(mover(client, ec2), 3) == ["ok", "ok", THROTTLED]
    assert await outcomes(lambda: client.describe_addresses(AllocationIds=[ec2.eip]), 3) == ["ok"] * 3
    assert await outcomes(lambda: client.disassociate_address(PublicIp=ec2.public_ip)) == ["ok"]  # its own bucket
    assert buckets_of(proxy).stats() == {"AssociateAddress": Counts(3, 2, 1), "DescribeAddresses": Counts(3, 3, 0),
                                         "DisassociateAddress": Counts(1, 1, 0)}


async def test_an_unfiltered_describe_of_the_subset_uses_the_smaller_bucket(ec2: Ec2World, serve: Serve,
                                                                            via: Callable[..., Any]) -> None:
    proxy = await serve(scale=0.1)  # non-mutating 10 / 2, unfiltered 5 / 1
    client = via(proxy)
    assert await outcomes(client.describe_network_interfaces, 6) == ["ok"] * 5 + [THROTTLED]
    filtered = await outcomes(lambda: client.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [ec2.instance_a]}]), 4)
    by_id = await outcomes(lambda: client.describe_network_interfaces(NetworkInterfaceIds=[ec2.eni_a]), 4)
    paginated = await outcomes(lambda: client.describe_network_interfaces(MaxResults=5), 4)
    assert filtered + by_id + paginated == ["ok"] * 10 + [THROTTLED] * 2
    statuses = await outcomes(lambda: client.describe_instance_status(IncludeAllInstances=True), 6)
    assert statuses == ["ok"] * 5 + [THROTTLED]  # its own small bucket
    assert buckets_of(proxy).stats() == {"DescribeNetworkInterfaces[unfiltered]": Counts(6, 5, 1),
                                         "DescribeNetworkInterfaces": Counts(12, 10, 2),
                                         "DescribeInstanceStatus[unfiltered]": Counts(6, 5, 1)}
    assert [s.bucket for s in proxy.calls("DescribeNetworkInterfaces") if s.limited] == [
        "DescribeNetworkInterfaces[unfiltered]", "DescribeNetworkInterfaces", "DescribeNetworkInterfaces"]


async def test_describe_addresses_filtered_or_not_uses_the_standard_bucket(ec2: Ec2World, serve: Serve,
                                                                           via: Callable[..., Any]) -> None:
    """As documented: DescribeAddresses is not one of the unfiltered-and-unpaginated actions."""
    proxy = await serve(scale=0.1)
    client = via(proxy)
    unfiltered = await outcomes(client.describe_addresses, 6)
    filtered = await outcomes(lambda: client.describe_addresses(
        Filters=[{"Name": "allocation-id", "Values": [ec2.eip]}]), 5)
    assert unfiltered + filtered == ["ok"] * 10 + [THROTTLED]
    assert buckets_of(proxy).stats() == {"DescribeAddresses": Counts(11, 10, 1)}


async def test_describe_addresses_in_the_subset_if_told_so(ec2: Ec2World, serve: Serve,
                                                           via: Callable[..., Any]) -> None:
    """Were DescribeAddresses in the subset (it is not, as of the document): unfiltered 5, filtered 10."""
    proxy = await serve(scale=0.1, unfiltered_actions=UNFILTERED_ACTIONS | {"DescribeAddresses"})
    client = via(proxy)
    assert await outcomes(client.describe_addresses, 6) == ["ok"] * 5 + [THROTTLED]
    filtered = await outcomes(lambda: client.describe_addresses(
        Filters=[{"Name": "allocation-id", "Values": [ec2.eip]}]), 3)
    by_id = await outcomes(lambda: client.describe_addresses(AllocationIds=[ec2.eip]), 3)
    by_ip = await outcomes(lambda: client.describe_addresses(PublicIps=[ec2.public_ip]), 4)
    assert filtered + by_id + by_ip == ["ok"] * 10
    assert await outcomes(lambda: client.describe_addresses(AllocationIds=[ec2.eip]), 3) == [THROTTLED] * 3
    assert buckets_of(proxy).stats() == {"DescribeAddresses[unfiltered]": Counts(6, 5, 1),
                                         "DescribeAddresses": Counts(13, 10, 3)}


async def test_each_region_has_its_buckets(serve: Serve, via: Callable[..., Any]) -> None:
    proxy = await serve(scale=0.05)  # non-mutating 5 / 1
    here, there = via(proxy, region=REGION), via(proxy, region="eu-west-1")
    assert await outcomes(here.describe_addresses, 6) == ["ok"] * 5 + [THROTTLED]
    assert await outcomes(there.describe_addresses, 2) == ["ok"] * 2
    assert buckets_of(proxy).counts("DescribeAddresses", region=REGION) == Counts(6, 5, 1)
    assert buckets_of(proxy).counts("DescribeAddresses", region="eu-west-1") == Counts(2, 2, 0)


async def test_a_refused_request_uses_up_no_scripted_fault(ec2: Ec2World, serve: Serve, via: Callable[..., Any],
                                                           clock: ManualClock) -> None:
    proxy = await serve(actions={"AssociateAddress": Limit(1, 1)})
    move = mover(via(proxy), ec2)
    assert await outcomes(move) == ["ok"]
    proxy.script("AssociateAddress", "http500")
    assert await outcomes(move) == [THROTTLED]  # the bucket first: the script waits
    clock.advance(1.0)
    assert await outcomes(move) == ["500"]
    assert [(s.fault, s.limited) for s in proxy.calls("AssociateAddress")] == [
        (None, False), ("throttle", True), ("http500", False)]


async def test_on_the_real_clock_a_token_comes_back_when_the_bucket_says(ec2: Ec2World,
                                                                         via: Callable[..., Any]) -> None:
    """No manual clock: drain (a refill of 1 a second cannot keep up with back-to-back calls), then wait until the
    bucket says a token is there."""
    buckets = Ec2Buckets(actions={"AssociateAddress": Limit(2, 1)})
    async with FaultProxy(ec2.endpoint, "ec2", buckets=buckets) as proxy:
        move = mover(via(proxy), ec2)
        for _ in range(50):
            if await outcomes(move) != ["ok"]:
                break
        assert buckets.counts("AssociateAddress").throttled == 1
        await eventually(lambda: buckets.until_token("AssociateAddress") == 0)
        assert await outcomes(move) == ["ok"]
        assert buckets.counts("AssociateAddress").throttled == 1


def test_only_ec2_has_buckets() -> None:
    with pytest.raises(ValueError, match="ec2"):
        FaultProxy("127.0.0.1:1", "aliyun", buckets=Ec2Buckets())
