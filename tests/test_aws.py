"""The AWS driver: boto3 against a moto EC2 server over HTTP on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

from eipfailover import failover
from eipfailover.checks.instance import InstanceCheck
from eipfailover.config import AwsProviderConfig
from eipfailover.errors import ProviderError
from eipfailover.model import Binding, CheckStatus
from eipfailover.providers.aws import AwsProvider

from .conftest import REGION, Ec2World, eventually
from .ec2_faults import Faults


@pytest.fixture
async def aws(ec2: Ec2World) -> AsyncIterator[AwsProvider]:
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=ec2.endpoint,
                                                    max_attempts=2, connect_timeout=1, read_timeout=2))
    yield provider
    await provider.close()


@pytest.fixture
def faults(aws: AwsProvider) -> Faults:
    hook = Faults()
    aws.client.meta.events.register("before-send.ec2", hook)
    return hook


async def test_describe(aws: AwsProvider, ec2: Ec2World) -> None:
    detached = ec2.new_eip()
    states = await aws.describe([ec2.eip, detached])
    assert states[ec2.eip].public_ip == ec2.public_ip
    assert states[ec2.eip].bound_to == Binding(instance_id=ec2.instance_a, network_interface_id=ec2.eni_a,
                                               private_ip=ec2.ip_a)
    assert states[detached].bound_to is None


async def test_move_to_instance_is_verified_in_moto(aws: AwsProvider, ec2: Ec2World) -> None:
    second = ec2.new_eip(on_instance=ec2.instance_a)
    outcome = await failover.execute(aws, [ec2.eip, second], Binding(instance_id=ec2.instance_b), deadline=10)
    assert outcome.ok, outcome.error
    for eip in (ec2.eip, second):
        assert ec2.holder(eip)["InstanceId"] == ec2.instance_b


async def test_move_to_eni_and_private_ip(aws: AwsProvider, ec2: Ec2World) -> None:
    # moto ignores PrivateIpAddress and reports the ENI's primary IP, so the primary IP is the one to use here;
    # a mismatching private IP is covered in test_failover.py against a fake that honours it.
    target = Binding(network_interface_id=ec2.eni_b, private_ip=ec2.ip_b)
    outcome = await failover.execute(aws, [ec2.eip], target, deadline=10)
    assert outcome.ok, outcome.error
    address = ec2.holder()
    assert (address["NetworkInterfaceId"], address["PrivateIpAddress"]) == (ec2.eni_b, ec2.ip_b)


async def test_unknown_allocation_id_is_a_clear_permanent_error(aws: AwsProvider, ec2: Ec2World) -> None:
    with pytest.raises(ProviderError) as info:
        await aws.describe(["eipalloc-00000000000000000"])
    assert info.value.code == "InvalidAllocationID.NotFound"
    assert not info.value.retryable
    assert str(info.value) == ("EC2 DescribeAddresses in us-east-1: InvalidAllocationID.NotFound: no EIP "
                               "eipalloc-00000000000000000")
    outcome = await failover.execute(aws, ["eipalloc-00000000000000000"], Binding(instance_id=ec2.instance_b),
                                     deadline=10)
    assert not outcome.ok
    assert outcome.attempts == 1  # not retried
    assert "InvalidAllocationID.NotFound" in outcome.error


async def test_unknown_instance_move_fails_without_touching_the_eip(aws: AwsProvider, ec2: Ec2World) -> None:
    outcome = await failover.execute(aws, [ec2.eip], Binding(instance_id="i-0000000000000dead"), deadline=10)
    assert not outcome.ok
    assert "InvalidInstanceID.NotFound" in outcome.error
    assert ec2.holder()["InstanceId"] == ec2.instance_a


async def test_instance_check(aws: AwsProvider, ec2: Ec2World) -> None:
    running = InstanceCheck("instance", 5.0, aws, Binding(instance_id=ec2.instance_a))
    assert (await running.run()).ok
    ec2.client.stop_instances(InstanceIds=[ec2.instance_a])
    stopped = await running.run()
    assert (stopped.status, stopped.detail) == (CheckStatus.FAIL, f"instance {ec2.instance_a} is stopped")
    missing = await InstanceCheck("instance", 5.0, aws, Binding(instance_id="i-0000000000000dead")).run()
    assert (missing.status, missing.detail) == (CheckStatus.FAIL, "instance i-0000000000000dead does not exist")


async def test_instance_check_through_an_eni(aws: AwsProvider, ec2: Ec2World) -> None:
    check = InstanceCheck("instance", 5.0, aws, Binding(network_interface_id=ec2.eni_b, private_ip=ec2.ip_b))
    assert (await check.run()).ok
    wrong_ip = await InstanceCheck("instance", 5.0, aws,
                                   Binding(network_interface_id=ec2.eni_b, private_ip="10.255.255.1")).run()
    assert wrong_ip.detail == f"private IP 10.255.255.1 is not assigned to ENI {ec2.eni_b}"
    ec2.client.stop_instances(InstanceIds=[ec2.instance_b])
    assert (await check.run()).detail == f"instance {ec2.instance_b} is stopped"
    gone = await InstanceCheck("instance", 5.0, aws, Binding(network_interface_id="eni-00000000000000000")).run()
    assert gone.detail == "ENI eni-00000000000000000 does not exist"


async def test_throttling_and_timeouts_are_retried_until_the_move_lands(
        aws: AwsProvider, ec2: Ec2World, faults: Faults) -> None:
    # botocore makes 2 attempts per call (max_attempts=2), so 4 faults need one failover-level retry on top
    faults.script["AssociateAddress"] = [
        (503, "RequestLimitExceeded"), ConnectTimeoutError(endpoint_url=ec2.endpoint),
        (500, "InternalError"), (503, "Unavailable"),
    ]
    outcome = await failover.execute(aws, [ec2.eip], Binding(instance_id=ec2.instance_b), deadline=20,
                                     backoff=failover.Backoff(base=0.05))
    assert outcome.ok, outcome.error
    assert outcome.attempts == 3
    assert faults.sent.count("AssociateAddress") == 5
    assert ec2.holder()["InstanceId"] == ec2.instance_b


async def test_permanent_errors_are_not_retried(aws: AwsProvider, ec2: Ec2World, faults: Faults) -> None:
    faults.script["AssociateAddress"] = [(403, "UnauthorizedOperation")]
    outcome = await failover.execute(aws, [ec2.eip], Binding(instance_id=ec2.instance_b), deadline=20)
    assert not outcome.ok
    assert outcome.attempts == 1
    assert "UnauthorizedOperation" in outcome.error
    assert faults.sent.count("AssociateAddress") == 1
    assert ec2.holder()["InstanceId"] == ec2.instance_a


async def test_describe_errors_are_typed(aws: AwsProvider, ec2: Ec2World, faults: Faults) -> None:
    faults.script["DescribeAddresses"] = [(503, "RequestLimitExceeded")] * 2 + [(401, "AuthFailure")]
    with pytest.raises(ProviderError) as throttled:
        await aws.describe([ec2.eip])
    assert (throttled.value.code, throttled.value.retryable) == ("RequestLimitExceeded", True)
    with pytest.raises(ProviderError) as auth:
        await aws.describe([ec2.eip])
    # credentials that fail at boot often recover: retryable, and reported loudly by the engine
    assert (auth.value.code, auth.value.retryable) == ("AuthFailure", True)


async def test_unreachable_endpoint_is_retryable() -> None:
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url="http://127.0.0.1:9",
                                                    max_attempts=1, connect_timeout=0.5))
    try:
        with pytest.raises(ProviderError) as info:
            await provider.describe(["eipalloc-1"])
    finally:
        await provider.close()
    assert info.value.retryable
    assert "Could not connect to the endpoint URL" in str(info.value)


async def test_requests_are_reported(aws: AwsProvider, ec2: Ec2World) -> None:
    seen: list[tuple[str, str, str]] = []
    aws.on_request = lambda provider, op, result, seconds: seen.append((provider, op, result))
    await aws.describe([ec2.eip])
    with pytest.raises(ProviderError):
        await aws.describe(["eipalloc-00000000000000000"])
    # the unknown EIP: the filtered read finds nothing, then EC2 is asked by ID to tell "none" from a wrong endpoint
    assert seen == [("aws", "DescribeAddresses", "ok"), ("aws", "DescribeAddresses", "ok"),
                    ("aws", "DescribeAddresses", "error")]


async def test_timed_out_and_cancelled_requests_are_counted_as_such(aws: AwsProvider, ec2: Ec2World,
                                                                   faults: Faults) -> None:
    seen: list[tuple[str, str]] = []
    aws.on_request = lambda provider, op, result, seconds: seen.append((op, result))
    faults.script["DescribeAddresses"] = [ReadTimeoutError(endpoint_url=ec2.endpoint)] * 2  # both attempts
    with pytest.raises(ProviderError) as info:
        await aws.describe([ec2.eip])
    assert info.value.timed_out
    release = threading.Event()
    faults.script["DescribeAddresses"] = [lambda: release.wait(10)]
    call = asyncio.create_task(aws.describe([ec2.eip]))
    await eventually(lambda: len(faults.sent) == 3)
    call.cancel()  # the caller gives up (a failover deadline, a shutdown)
    with pytest.raises(asyncio.CancelledError):
        await call
    release.set()
    assert seen == [("DescribeAddresses", "timeout"), ("DescribeAddresses", "timeout"),  # each attempt
                    ("DescribeAddresses", "cancelled")]


async def test_a_throttled_instance_check_is_unknown_not_a_failure(aws: AwsProvider, ec2: Ec2World,
                                                                  faults: Faults) -> None:
    faults.script["DescribeInstanceStatus"] = [(503, "RequestLimitExceeded")] * 2
    result = await InstanceCheck("instance", 5.0, aws, Binding(instance_id=ec2.instance_a)).run()
    assert result.status is CheckStatus.UNKNOWN
    assert "RequestLimitExceeded" in result.detail
    assert (await InstanceCheck("instance", 5.0, aws, Binding(instance_id=ec2.instance_a)).run()).ok


def test_bad_profile_is_a_clear_error() -> None:
    with pytest.raises(ProviderError, match="aws provider 'x': The config profile \\(nope\\) could not be found"):
        AwsProvider("x", AwsProviderConfig(type="aws", region=REGION, profile="nope"))
