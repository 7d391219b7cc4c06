"""The fault proxy (tests/fault_proxy.py) end to end: boto3 and the AWS driver against moto through it, the Alibaba
driver and SDK against the fake Alibaba API through it; what the clients see of each fault, and what it logs.

botocore's retry decisions are its own; only its backoff sleeps are cut to nothing (:func:`no_backoff`), for speed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_vpc20160428 import models as vpc
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from botocore.parsers import ResponseParserError
from botocore.retries.standard import ExponentialBackoff

from eipfailover.config import AwsProviderConfig
from eipfailover.errors import ProviderError
from eipfailover.model import Binding
from eipfailover.providers.alibaba import AlibabaProvider
from eipfailover.providers.aws import AwsProvider

from .conftest import REGION, Ec2World, eventually
from .fake_aliyun import FakeAliyun, provider_for
from .fault_proxy import Fault, FaultProxy, Kind

LATE = 1.2  # the late window: long enough for a describe right after the move, even on a loaded machine
ECS_B = Binding(instance_id="i-b", instance_type="EcsInstance")


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)


@pytest.fixture
async def ec2_proxy(ec2: Ec2World, no_backoff: None) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(ec2.endpoint, "ec2") as proxy:
        yield proxy


@pytest.fixture
def via(ec2_proxy: FaultProxy) -> Iterator[Callable[..., Any]]:
    """boto3 EC2 clients through the proxy: ``via(attempts, read_timeout)`` (botocore's ``standard`` mode)."""
    clients: list[Any] = []

    def make(attempts: int = 2, read_timeout: float = 1.0) -> Any:
        clients.append(boto3.client(
            "ec2", endpoint_url=ec2_proxy.url, region_name=REGION, aws_access_key_id="testing",
            aws_secret_access_key="testing", config=Config(
                retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=1,
                read_timeout=read_timeout)))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


async def call(method: Callable[..., dict[str, Any]], **params: Any) -> dict[str, Any]:
    """A boto3 call, in a thread: the proxy runs on this event loop."""
    return await asyncio.to_thread(method, **params)


def trail(proxy: FaultProxy, operation: str) -> list[tuple[Kind | None, int | None, bool, int | None]]:
    """Each call of ``operation``: (fault, attempt, forwarded, status)."""
    return [(s.fault, s.attempt, s.forwarded, s.status) for s in proxy.calls(operation)]


# --- EC2 (boto3, moto) ---
async def test_ec2_throttles_are_retried_by_botocore(ec2: Ec2World, ec2_proxy: FaultProxy,
                                                     via: Callable[..., Any]) -> None:
    client = via(attempts=3)
    ec2_proxy.script("AssociateAddress", "throttle", "throttle")
    reply = await call(client.associate_address, AllocationId=ec2.eip, InstanceId=ec2.instance_b,
                       AllowReassociation=True)
    assert reply["ResponseMetadata"]["RetryAttempts"] == 2
    assert trail(ec2_proxy, "AssociateAddress") == [("throttle", 1, False, 503), ("throttle", 2, False, 503),
                                                    (None, 3, True, 200)]
    assert ec2.holder()["InstanceId"] == ec2.instance_b

    ec2_proxy.script("DescribeAddresses", "throttle", "throttle", "throttle")
    with pytest.raises(ClientError) as caught:
        await call(client.describe_addresses)
    error = caught.value.response
    assert error["Error"]["Code"] == "RequestLimitExceeded"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert (error["ResponseMetadata"]["RetryAttempts"], error["ResponseMetadata"]["MaxAttemptsReached"]) == (2, True)
    assert len(ec2_proxy.calls("DescribeAddresses")) == 3
    assert ec2_proxy.calls("DescribeAddresses", forwarded=True) == []


@pytest.mark.parametrize(("fault", "error", "code", "requests"), [
    ("http500", ClientError, "500", 2),  # an empty 5xx body: botocore's "generic" error, retried on its status
    ("http503", ClientError, "503", 2),
    (Fault("http503", body="Service Unavailable"), ResponseParserError, None, 1),  # a 5xx text: not retried
    ("html", ResponseParserError, None, 1),  # a captive portal's 200: not retried
    (Fault("html", status=502), ClientError, "502", 2),  # nginx's page starts with <html>: "generic", retried
    ("reset", ConnectionClosedError, None, 2),
    ("reset_after", ConnectionClosedError, None, 2),
    (Fault("delay", delay=2.0), ReadTimeoutError, None, 2),
], ids=["http500", "http503", "http503-text", "html-200", "html-502", "reset", "reset_after", "delay"])
async def test_ec2_what_botocore_makes_of_each_fault(ec2_proxy: FaultProxy, via: Callable[..., Any],
                                                     fault: Kind | Fault, error: type[Exception], code: str | None,
                                                     requests: int) -> None:
    client = via(attempts=2, read_timeout=0.5)
    ec2_proxy.script("DescribeAddresses", fault, fault)
    with pytest.raises(error) as caught:
        await call(client.describe_addresses)
    if code is not None:
        assert isinstance(caught.value, ClientError)
        assert caught.value.response["Error"]["Code"] == code
        assert caught.value.response["ResponseMetadata"]["RetryAttempts"] == requests - 1
    seen = ec2_proxy.calls("DescribeAddresses")
    assert [s.attempt for s in seen] == list(range(1, requests + 1))
    kind = fault if isinstance(fault, str) else fault.kind
    assert all(s.fault == kind for s in seen)
    if kind == "reset_after":
        assert all(s.forwarded and s.status is None for s in seen)
    elif kind != "delay":  # a delayed request is forwarded later, or dropped when the proxy stops
        assert not any(s.forwarded for s in seen)


async def test_ec2_a_well_formed_xhtml_page_is_an_empty_success_to_botocore(ec2_proxy: FaultProxy,
                                                                             via: Callable[..., Any]) -> None:
    ec2_proxy.script("DescribeAddresses", Fault("html", body="<html><body><p>Please sign in</p></body></html>"))
    reply = await call(via().describe_addresses)
    assert "Addresses" not in reply  # not an error: "no EIP at all"
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200


async def test_ec2_driver_makes_an_unparsable_answer_a_retryable_error(ec2: Ec2World, ec2_proxy: FaultProxy) -> None:
    """botocore's ResponseParserError (an HTML page) is no BotoCoreError: the driver makes it a retryable error."""
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=ec2_proxy.url,
                                                    max_attempts=1))
    ec2_proxy.script("DescribeAddresses", "html")
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.describe([ec2.eip])
    finally:
        await provider.close()
    assert caught.value.retryable
    assert str(caught.value).startswith("EC2 DescribeAddresses in us-east-1: the answer could not be read (")


async def test_ec2_reset_after_an_associate_applies_it_twice_through_the_driver(
        ec2: Ec2World, ec2_proxy: FaultProxy) -> None:
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=ec2_proxy.url,
                                                    max_attempts=2, connect_timeout=1, read_timeout=1))
    try:
        ec2_proxy.script("AssociateAddress", "reset_after")
        await provider.move([ec2.eip], Binding(instance_id=ec2.instance_b))
    finally:
        await provider.close()
    # the driver's own retry: a call of its own (botocore's attempt 1 again), through the rate limit
    assert trail(ec2_proxy, "AssociateAddress") == [("reset_after", 1, True, None), (None, 1, True, 200)]
    assert ec2.holder()["InstanceId"] == ec2.instance_b


async def test_ec2_a_delayed_associate_is_applied_after_the_client_gave_up(ec2: Ec2World, ec2_proxy: FaultProxy,
                                                                           via: Callable[..., Any]) -> None:
    client = via(attempts=1, read_timeout=0.5)
    ec2_proxy.script("AssociateAddress", Fault("delay", delay=1.5))
    with pytest.raises(ReadTimeoutError):
        await call(client.associate_address, AllocationId=ec2.eip, InstanceId=ec2.instance_b,
                   AllowReassociation=True)
    assert ec2.holder()["InstanceId"] == ec2.instance_a
    await eventually(lambda: ec2.holder()["InstanceId"] == ec2.instance_b)
    [seen] = ec2_proxy.calls("AssociateAddress")
    assert (seen.fault, seen.forwarded) == ("delay", True)
    await eventually(lambda: seen.status == 200)  # answered, into a connection the client had closed


async def test_ec2_late_describe_shows_the_old_association_for_a_while(ec2: Ec2World, ec2_proxy: FaultProxy,
                                                                       via: Callable[..., Any]) -> None:
    client = via()

    async def holder() -> str:
        reply = await call(client.describe_addresses, AllocationIds=[ec2.eip])
        return str(reply["Addresses"][0]["InstanceId"])

    assert await holder() == ec2.instance_a  # the proxy keeps this answer
    ec2_proxy.script("AssociateAddress", Fault("late", late_seconds=LATE))
    start = time.monotonic()
    await call(client.associate_address, AllocationId=ec2.eip, InstanceId=ec2.instance_b, AllowReassociation=True)
    assert ec2.holder()["InstanceId"] == ec2.instance_b  # applied at once
    assert await holder() == ec2.instance_a  # but describe says otherwise

    async def moved() -> bool:
        return await holder() == ec2.instance_b

    await eventually(moved)
    assert time.monotonic() - start >= LATE
    describes = ec2_proxy.calls("DescribeAddresses")
    assert [(d.forwarded, d.stale) for d in describes[:2]] == [(True, False), (False, True)]
    assert (describes[-1].forwarded, describes[-1].stale) == (True, False)
    # a describe with other parameters was never seen before the move: it is forwarded, and current
    everything = await call(client.describe_addresses)
    assert everything["Addresses"][0]["InstanceId"] == ec2.instance_b


# --- Alibaba (the driver and the SDK, the fake Alibaba API) ---
@pytest.fixture
async def ali_proxy(fake: FakeAliyun) -> AsyncIterator[FaultProxy]:
    fake.add_eip("eip-1", "47.1.1.1")
    fake.add_resource("i-a")
    fake.add_resource("i-b")
    fake.bind("eip-1", "i-a")
    async with FaultProxy(fake.endpoint, "aliyun", seed=7) as proxy:
        yield proxy


@pytest.fixture
def ali(fake: FakeAliyun, ali_proxy: FaultProxy, tmp_path: Path) -> AlibabaProvider:
    """The driver through the proxy (read timeout 1 s); the proxy keeps the Host header the signature covers."""
    return provider_for(fake, tmp_path, endpoint=ali_proxy.endpoint, ecs_endpoint=ali_proxy.endpoint)


async def test_aliyun_throttle_is_the_sdk_s_client_exception(ali_proxy: FaultProxy, ali: AlibabaProvider) -> None:
    ali_proxy.script("DescribeEipAddresses", "throttle", "throttle")
    with pytest.raises(ClientException) as raw:  # not ThrottlingException: there is no x-acs-retry-after
        await ali.vpc.describe_eip_addresses_async(vpc.DescribeEipAddressesRequest(region_id="cn-hangzhou"))
    assert (raw.value.code, raw.value.status_code) == ("Throttling.User", 400)
    assert set(raw.value.data) >= {"RequestId", "HostId", "Code", "Message", "Recommend"}
    with pytest.raises(ProviderError) as caught:
        await ali.describe(["eip-1"])
    assert (caught.value.code, caught.value.retryable) == ("Throttling.User", True)
    assert trail(ali_proxy, "DescribeEipAddresses") == [("throttle", None, False, 400)] * 2
    assert (await ali.describe(["eip-1"]))["eip-1"].bound_to == Binding(instance_id="i-a", instance_type="EcsInstance")


@pytest.mark.parametrize(("fault", "says"), [
    ("http500", "Failed to parse the value as json"),  # the SDK reads any 4xx/5xx body as JSON: code and status lost
    (Fault("http503", body="Service Unavailable"), "Failed to parse the value as json"),
    ("html", "Failed to parse the value as json"),
    (Fault("html", status=502), "Failed to parse the value as json"),
    ("reset", "Connection reset by peer"),
    ("reset_after", "Connection reset by peer"),
    (Fault("delay", delay=2.0), "timed out"),
], ids=["http500", "http503-text", "html-200", "html-502", "reset", "reset_after", "delay"])
async def test_aliyun_what_the_driver_makes_of_each_fault(fake: FakeAliyun, ali_proxy: FaultProxy,
                                                          ali: AlibabaProvider, fault: Kind | Fault,
                                                          says: str) -> None:
    ali_proxy.script("DescribeEipAddresses", fault)
    with pytest.raises(ProviderError) as caught:
        await ali.describe(["eip-1"])
    kind = fault if isinstance(fault, str) else fault.kind
    assert caught.value.code is None  # a transport error to the driver, whatever the status
    assert caught.value.retryable
    assert caught.value.timed_out == (kind == "delay")
    assert says in str(caught.value)
    [seen] = ali_proxy.calls("DescribeEipAddresses")
    assert seen.fault == kind
    assert seen.params == {"AllocationId": "eip-1", "PageSize": "100", "RegionId": "cn-hangzhou"}
    if kind == "reset_after":
        assert (seen.forwarded, seen.status, fake.actions()) == (True, None, ["DescribeEipAddresses"])
    elif kind != "delay":
        assert (seen.forwarded, fake.actions()) == (False, [])


async def test_aliyun_reset_after_an_associate_leaves_it_applied_but_unanswered(
        fake: FakeAliyun, ali_proxy: FaultProxy, ali: AlibabaProvider) -> None:
    """The answer is lost, the association made: the driver describes before sending it again, finds the EIP
    associating with the target, and is done without a second send."""
    fake.add_eip("eip-2", "47.1.1.2")
    ali_proxy.script("AssociateEipAddress", "reset_after")
    await ali.move(["eip-2"], ECS_B)
    assert (fake.eips["eip-2"].instance_id, fake.eips["eip-2"].status) == ("i-b", "Associating")
    assert trail(ali_proxy, "AssociateEipAddress") == [("reset_after", None, True, None)]


async def test_aliyun_a_delayed_unassociate_is_applied_after_the_driver_gave_up(
        fake: FakeAliyun, ali_proxy: FaultProxy, ali: AlibabaProvider) -> None:
    ali_proxy.script("UnassociateEipAddress", Fault("delay", delay=2.0))  # past the read timeout of 1 s
    with pytest.raises(ProviderError) as caught:
        await ali.disassociate("eip-1")
    assert caught.value.timed_out
    assert fake.eips["eip-1"].status == "InUse"
    await eventually(lambda: "UnassociateEipAddress" in fake.actions())
    assert fake.eips["eip-1"].status in ("Unassociating", "Available")
    [seen] = ali_proxy.calls("UnassociateEipAddress")
    assert (seen.fault, seen.forwarded) == ("delay", True)


async def test_aliyun_late_describe_shows_the_old_association_for_a_while(
        fake: FakeAliyun, ali_proxy: FaultProxy, ali: AlibabaProvider) -> None:
    on_a = Binding(instance_id="i-a", instance_type="EcsInstance")
    ali_proxy.script("UnassociateEipAddress", Fault("late", late_seconds=LATE))
    start = time.monotonic()
    await ali.disassociate("eip-1")  # its describe is the answer the proxy keeps
    assert fake.eips["eip-1"].status == "Unassociating"
    stale = (await ali.describe(["eip-1"]))["eip-1"]
    assert (stale.bound_to, stale.pending) == (on_a, False)

    async def detached() -> bool:
        return (await ali.describe(["eip-1"]))["eip-1"].bound_to is None

    await eventually(detached)
    assert time.monotonic() - start >= LATE
    describes = ali_proxy.calls("DescribeEipAddresses")
    assert [(d.forwarded, d.stale) for d in describes[:2]] == [(True, False), (False, True)]
    assert (describes[-1].forwarded, describes[-1].stale) == (True, False)


async def test_probabilities_are_seeded_per_operation_and_the_script_wins(ali_proxy: FaultProxy,
                                                                          ali: AlibabaProvider) -> None:
    ali_proxy.set_probability("throttle", 0.5, "DescribeEipAddresses")
    ali_proxy.set_probability("reset", 1.0, operations=["UnassociateEipAddress"])  # never rolled for describes

    async def outcome() -> str:
        try:
            await ali.describe(["eip-1"])
        except ProviderError as exc:
            return str(exc.code)  # None: a transport error
        return "ok"

    dice = random.Random(7)
    assert [await outcome() for _ in range(20)] == ["Throttling.User" if dice.random() < 0.5 else "ok"
                                                    for _ in range(20)]
    ali_proxy.set_probability("throttle", 1.0, "DescribeEipAddresses")
    ali_proxy.script("DescribeEipAddresses", None, "http503")
    assert [await outcome() for _ in range(3)] == ["ok", "None", "Throttling.User"]  # the script first
    ali_proxy.set_probability("throttle", 0)
    assert await outcome() == "ok"
    ali_proxy.clear()
    with pytest.raises(ValueError, match="probability"):
        ali_proxy.set_probability("throttle", 1.5)
    with pytest.raises(ValueError, match="unknown fault"):
        ali_proxy.script("DescribeEipAddresses", "boom")  # type: ignore[arg-type]
    assert [s.operation for s in ali_proxy.log] == ["DescribeEipAddresses"] * 24
    assert all(s.at <= t.at for s, t in zip(ali_proxy.log, ali_proxy.log[1:], strict=False))


async def test_ec2_driver_takes_an_answer_without_the_eips_asked_for_as_retryable(ec2: Ec2World,
                                                                                  ec2_proxy: FaultProxy) -> None:
    """A well-formed XML page (a portal, a wrong endpoint) is an empty success to botocore; EC2 itself answers
    InvalidAllocationID.NotFound for an EIP it does not have, so an answer that lists none of them is not proof that
    the EIP is gone: retryable, never NotFound."""
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=ec2_proxy.url))
    ec2_proxy.script("DescribeAddresses", Fault("html", status=200, body="<html><body>Log in</body></html>"))
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.describe([ec2.eip])
        assert caught.value.retryable
        assert caught.value.code is None
        assert "lists none of the EIPs asked for" in str(caught.value)
        assert (await provider.describe([ec2.eip]))[ec2.eip].bound_to is not None  # the next answer is read
    finally:
        await provider.close()
