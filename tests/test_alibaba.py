"""The Alibaba driver: the official SDK (async) against the fake VPC/ECS API in tests/fake_aliyun.py."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import pytest
import trustme

from eipfailover import failover, ratelimit
from eipfailover.checks.havip import HaVipCheck
from eipfailover.checks.instance import InstanceCheck
from eipfailover.errors import ProviderError
from eipfailover.model import Binding, CheckStatus
from eipfailover.providers import tea_transport
from eipfailover.providers.alibaba import AlibabaProvider

from .conftest import eventually
from .fake_aliyun import ACCESS_KEY_ID, ACCESS_KEY_SECRET, FakeAliyun, Fault, key_file, provider_for

REGION = "cn-hangzhou"
FAST = failover.Backoff(base=0.05, cap=0.2)
ECS_A, ECS_B = Binding(instance_id="i-a", instance_type="EcsInstance"), Binding(instance_id="i-b",
                                                                                instance_type="EcsInstance")


@pytest.fixture
def ali(fake: FakeAliyun, tmp_path: Path) -> AlibabaProvider:
    return provider_for(fake, tmp_path)


def ecs_world(fake: FakeAliyun) -> None:
    fake.add_eip("eip-1", "47.1.1.1")
    fake.add_resource("i-a")
    fake.add_resource("i-b")
    fake.bind("eip-1", "i-a")


async def test_move_between_ecs_instances(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    ecs_world(fake)
    outcome = await failover.execute(ali, ["eip-1"], ECS_B, deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    eip = fake.eips["eip-1"]
    assert (eip.status, eip.instance_id, eip.instance_type) == ("InUse", "i-b", "EcsInstance")
    polls = fake.sequence()
    assert [a.split(" x")[0] for a in polls] == ["DescribeEipAddresses", "UnassociateEipAddress",
                                                 "DescribeEipAddresses", "AssociateEipAddress",
                                                 "DescribeEipAddresses"]
    unassociate = next(e for e in fake.log if e.action == "UnassociateEipAddress")
    assert unassociate.query == {"AllocationId": "eip-1", "InstanceId": "i-a", "InstanceType": "EcsInstance",
                                 "RegionId": REGION}


async def test_describe_reports_transitions_and_bindings(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    ecs_world(fake)
    fake.add_eip("eip-2", "47.1.1.2")
    fake.bind("eip-1", "i-a", status="Associating")
    states = await ali.describe(["eip-1", "eip-2"])
    assert states["eip-1"].pending
    assert states["eip-1"].bound_to == Binding(instance_id="i-a", instance_type="EcsInstance")
    assert states["eip-1"].public_ip == "47.1.1.1"
    assert (states["eip-2"].bound_to, states["eip-2"].pending) == (None, False)


async def test_move_to_an_eni_private_ip_in_nat_mode(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_eip("eip-1", "47.1.1.1")
    fake.add_resource("eni-a", "NetworkInterface", "10.0.0.5")
    fake.add_resource("eni-b", "NetworkInterface", "10.0.1.5", "10.0.1.6")
    fake.bind("eip-1", "eni-a", private_ip="10.0.0.5")
    to = Binding(instance_id="eni-b", instance_type="NetworkInterface", private_ip="10.0.1.6", mode="NAT")
    outcome = await failover.execute(ali, ["eip-1"], to, deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    eip = fake.eips["eip-1"]
    assert (eip.instance_id, eip.private_ip, eip.mode, eip.status) == ("eni-b", "10.0.1.6", "NAT", "InUse")
    associate = next(e for e in fake.log if e.action == "AssociateEipAddress")
    assert associate.query["PrivateIpAddress"] == "10.0.1.6"
    assert associate.query["Mode"] == "NAT"


async def test_move_between_havips(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_eip("eip-1", "47.1.1.1")
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    fake.add_havip("havip-b", "10.0.8.100", ["i-3", "i-4"], master="i-3")
    fake.bind("eip-1", "havip-a")
    outcome = await failover.execute(ali, ["eip-1"], Binding(instance_id="havip-b", instance_type="HaVip"),
                                     deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    assert (fake.eips["eip-1"].instance_id, fake.eips["eip-1"].instance_type) == ("havip-b", "HaVip")
    assert (await ali.describe_havip("havip-b")).eip_addresses == ("47.1.1.1",)


async def test_move_between_clbs(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_eip("eip-1", "47.1.1.1")
    fake.add_resource("lb-a", "SlbInstance")
    fake.add_resource("lb-b", "SlbInstance")
    fake.bind("eip-1", "lb-a")
    to = Binding(instance_id="lb-b", instance_type="SlbInstance")
    outcome = await failover.execute(ali, ["eip-1"], to, deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    assert (fake.eips["eip-1"].instance_id, fake.eips["eip-1"].instance_type) == ("lb-b", "SlbInstance")
    unassociate = next(e for e in fake.log if e.action == "UnassociateEipAddress")
    assert (unassociate.query["InstanceId"], unassociate.query["InstanceType"]) == ("lb-a", "SlbInstance")


async def test_three_eips_move_between_enis_by_batch_in_multi_binded_mode(fake: FakeAliyun,
                                                                         ali: AlibabaProvider) -> None:
    fake.add_resource("eni-a", "NetworkInterface", "10.0.0.5")
    fake.add_resource("eni-b", "NetworkInterface", "10.0.1.5")
    for n in (1, 2, 3):
        fake.add_eip(f"eip-{n}", f"47.1.1.{n}")
        fake.bind(f"eip-{n}", "eni-a", mode="MULTI_BINDED")
    to = Binding(instance_id="eni-b", instance_type="NetworkInterface", mode="MULTI_BINDED")
    outcome = await failover.execute(ali, ["eip-1", "eip-2", "eip-3"], to, deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    assert {(e.instance_id, e.mode) for e in fake.eips.values()} == {("eni-b", "MULTI_BINDED")}
    batch = [e for e in fake.log if e.action == "AssociateEipAddressBatch"]
    assert len(batch) == 1
    assert (batch[0].query["BindedInstanceType"], batch[0].query["Mode"]) == ("NetworkInterface", "MULTI_BINDED")
    assert "AssociateEipAddress" not in fake.actions()


async def test_three_eips_move_between_nat_gateways_by_batch(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_resource("ngw-a", "Nat")
    fake.add_resource("ngw-b", "Nat")
    for n in (1, 2, 3):
        fake.add_eip(f"eip-{n}", f"47.1.1.{n}")
        fake.bind(f"eip-{n}", "ngw-a")
    to = Binding(instance_id="ngw-b", instance_type="Nat")
    outcome = await failover.execute(ali, ["eip-1", "eip-2", "eip-3"], to, deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    assert {e.instance_id for e in fake.eips.values()} == {"ngw-b"}
    assert fake.actions().count("AssociateEipAddressBatch") == 1
    assert "AssociateEipAddress" not in fake.actions()
    batch = next(e for e in fake.log if e.action == "AssociateEipAddressBatch")
    assert {k: v for k, v in batch.query.items() if k.startswith("InstanceIds.")} == {
        "InstanceIds.1": "eip-1", "InstanceIds.2": "eip-2", "InstanceIds.3": "eip-3"}
    assert (batch.query["BindedInstanceId"], batch.query["BindedInstanceType"]) == ("ngw-b", "Nat")


@pytest.mark.parametrize("action", ["DescribeEipAddresses", "UnassociateEipAddress", "AssociateEipAddress"])
async def test_throttling_and_503_on_each_step(fake: FakeAliyun, ali: AlibabaProvider, action: str) -> None:
    ecs_world(fake)
    fake.faults[action] = [Fault(400, "Throttling.User"), Fault(503, "ServiceUnavailable",
                                                               "The request has failed due to a temporary failure."),
                           Fault(400, "Throttling.User", retry_after_ms=100)]
    outcome = await failover.execute(ali, ["eip-1"], ECS_B, deadline=20, backoff=FAST, verify_interval=0.05)
    assert outcome.ok, outcome.error
    assert (fake.eips["eip-1"].instance_id, fake.eips["eip-1"].status) == ("i-b", "InUse")
    assert fake.faults[action] == []  # every fault was served
    assert all(e.retry_attempts is None for e in fake.log)  # the SDK's own retries stay off


async def test_associate_failing_for_good_reattaches_to_the_old_target(fake: FakeAliyun,
                                                                       ali: AlibabaProvider) -> None:
    ecs_world(fake)
    fake.resources["i-b"].status = "Stopping"  # the standby refuses: IncorrectInstanceStatus (not retryable)
    outcome = await failover.execute(ali, ["eip-1"], ECS_B, deadline=5, fallback=[ECS_A], backoff=FAST,
                                     verify_interval=0.05)
    assert not outcome.ok
    assert "IncorrectInstanceStatus" in outcome.error
    assert outcome.error.endswith("re-attached eip-1 to EcsInstance i-a")
    assert outcome.reattached_to == ECS_A
    assert (fake.eips["eip-1"].instance_id, fake.eips["eip-1"].status) == ("i-a", "InUse")


async def test_associate_throttled_past_the_deadline_still_ends_attached(fake: FakeAliyun,
                                                                         ali: AlibabaProvider) -> None:
    ecs_world(fake)
    # the standby's associations are throttled for longer than the deadline; the old target's are not
    fake.faults["AssociateEipAddress"] = [Fault(400, "Throttling.User", match={"InstanceId": "i-b"})
                                          for _ in range(100)]
    outcome = await failover.execute(ali, ["eip-1"], ECS_B, deadline=2.5, fallback=[ECS_A],
                                     backoff=failover.Backoff(base=0.1, cap=0.2), verify_interval=0.05)
    assert (outcome.ok, outcome.code) == (False, "Throttling.User")
    # the deadline ends between two attempts or in the middle of one: the cloud's error is named either way
    throttled = "Alibaba AssociateEipAddress in cn-hangzhou (EIP eip-1 to EcsInstance i-b): Throttling.User"
    assert (outcome.error.startswith(f"move failed: {throttled}")
            or outcome.error.startswith(f"move did not complete within the 2.5s deadline (last error: {throttled}"))
    assert outcome.error.endswith("; re-attached eip-1 to EcsInstance i-a")
    assert (fake.eips["eip-1"].instance_id, fake.eips["eip-1"].status) == ("i-a", "InUse")  # never left detached


@pytest.mark.parametrize(("fault", "retryable", "code"), [
    (Fault(400, "Throttling.User"), True, "Throttling.User"),
    (Fault(400, "Throttling.User", retry_after_ms=50), True, "Throttling.User"),
    (Fault(503, "ServiceUnavailable"), True, "ServiceUnavailable"),
    (Fault(400, "TaskConflict", "Operate too frequent."), True, "TaskConflict"),
    (Fault(400, "OperationConflict"), True, "OperationConflict"),
    (Fault(400, "SystemBusy"), True, "SystemBusy"),
    (Fault(html=True, code=None), True, None),
    (Fault(delay=1.5, code=None), True, None),
    (Fault(403, "Forbidden.RAM", "User not authorized to operate on the specified resource."), False,
     "Forbidden.RAM"),
    (Fault(400, "InvalidParameter"), False, "InvalidParameter"),
])
async def test_error_classification(fake: FakeAliyun, ali: AlibabaProvider, fault: Fault, retryable: bool,
                                    code: str | None) -> None:
    ecs_world(fake)
    fake.faults["DescribeEipAddresses"] = [fault]
    with pytest.raises(ProviderError) as info:
        await ali.describe(["eip-1"])
    assert (info.value.retryable, info.value.code) == (retryable, code)
    assert str(info.value).startswith("Alibaba DescribeEipAddresses in cn-hangzhou")


async def test_unknown_eip_is_named(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    ecs_world(fake)
    with pytest.raises(ProviderError) as info:
        await ali.describe(["eip-1", "eip-nope"])
    assert str(info.value) == "Alibaba DescribeEipAddresses in cn-hangzhou: no EIP eip-nope"
    assert not info.value.retryable
    outcome = await failover.execute(ali, ["eip-nope"], ECS_B, deadline=5)
    assert (outcome.ok, outcome.attempts) == (False, 1)


async def test_unknown_target_is_named(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_eip("eip-1", "47.1.1.1")
    outcome = await failover.execute(ali, ["eip-1"], Binding(instance_id="i-nope", instance_type="EcsInstance"),
                                     deadline=5)
    assert not outcome.ok
    assert "(EIP eip-1 to EcsInstance i-nope): InvalidInstanId.NotFound: " in outcome.error


@pytest.mark.parametrize(("key_id", "secret", "code"), [
    (ACCESS_KEY_ID, "wrong-secret", "SignatureDoesNotMatch"),
    ("LTAIunknown", ACCESS_KEY_SECRET, "InvalidAccessKeyId.NotFound"),
])
async def test_bad_credentials(fake: FakeAliyun, tmp_path: Path, key_id: str, secret: str, code: str) -> None:
    ecs_world(fake)
    provider = provider_for(fake, tmp_path, access_key_file=key_file(tmp_path, secret, key_id))
    with pytest.raises(ProviderError) as info:
        await provider.describe(["eip-1"])
    assert (info.value.code, info.value.retryable) == (code, False)


def test_bad_access_key_file(tmp_path: Path, fake: FakeAliyun) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ProviderError, match=r"access key file .*broken\.json is not JSON"):
        provider_for(fake, tmp_path, access_key_file=broken)
    with pytest.raises(ProviderError, match="No such file or directory"):
        provider_for(fake, tmp_path, access_key_file=tmp_path / "missing.json")


async def test_credentials_from_the_credentials_directory(fake: FakeAliyun, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ecs_world(fake)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "alibaba-access-key").write_text(json.dumps({"AccessKeyId": ACCESS_KEY_ID,
                                                          "AccessKeySecret": ACCESS_KEY_SECRET}))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    provider = provider_for(fake, tmp_path, access_key_file=None)
    assert (await provider.describe(["eip-1"]))["eip-1"].bound_to == ECS_A


async def test_havip_check(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    check = HaVipCheck("havip", 5.0, ali, "havip-a")
    assert (await check.run()).ok
    fake.havips["havip-a"].master, fake.havips["havip-a"].master_at = "", time.monotonic() + 60  # no takeover yet
    result = await check.run()
    assert (result.status, result.detail) == (CheckStatus.FAIL, "HaVip havip-a has no master instance")
    fake.havips["havip-a"].status = "Available"
    assert (await check.run()).detail == "HaVip havip-a is Available"
    missing = await HaVipCheck("havip", 5.0, ali, "havip-nope").run()
    assert (missing.status, missing.detail) == (
        CheckStatus.ERROR, "Alibaba DescribeHaVips in cn-hangzhou: no HaVip havip-nope")


async def test_ecs_instance_check(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    ecs_world(fake)
    check = InstanceCheck("instance", 5.0, ali, ECS_A)
    assert (await check.run()).ok
    fake.resources["i-a"].status = "Stopped"
    assert (await check.run()).detail == "instance i-a is Stopped"
    missing = await InstanceCheck("instance", 5.0, ali, Binding(instance_id="i-x", instance_type="EcsInstance")).run()
    assert missing.detail == "instance i-x does not exist"
    havip = await InstanceCheck("instance", 5.0, ali, Binding(instance_id="havip-a", instance_type="HaVip")).run()
    assert havip.status is CheckStatus.ERROR
    assert "use a havip check" in havip.detail


async def test_timed_out_and_cancelled_requests_are_counted_as_such(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    ecs_world(fake)
    seen: list[tuple[str, str]] = []
    ali.on_request = lambda provider, op, result, seconds: seen.append((op, result))
    fake.faults["DescribeEipAddresses"] = [Fault(delay=1.5, code=None)]  # past the 1 s read timeout
    with pytest.raises(ProviderError) as info:
        await ali.describe(["eip-1"])
    assert (info.value.timed_out, info.value.retryable) == (True, True)
    fake.faults["DescribeEipAddresses"] = [Fault(delay=5, code=None)]
    call = asyncio.create_task(ali.describe(["eip-1"]))
    await eventually(lambda: len(fake.log) == 2)
    call.cancel()  # the caller gives up (a failover deadline, a shutdown)
    with pytest.raises(asyncio.CancelledError):
        await call
    assert seen == [("DescribeEipAddresses", "timeout"), ("DescribeEipAddresses", "cancelled")]


async def test_throttled_cloud_checks_are_unknown_not_failures(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    ecs_world(fake)
    fake.add_havip("havip-a", "10.0.0.100", ["i-a", "i-b"], master="i-a")
    fake.faults["DescribeInstanceStatus"] = [Fault(400, "Throttling.User")]
    fake.faults["DescribeHaVips"] = [Fault(503, "ServiceUnavailable")]
    instance = await InstanceCheck("instance", 5.0, ali, ECS_A).run()
    havip = await HaVipCheck("havip", 5.0, ali, "havip-a").run()
    assert (instance.status, havip.status) == (CheckStatus.UNKNOWN, CheckStatus.UNKNOWN)
    assert "Throttling.User" in instance.detail
    fake.faults["DescribeInstanceStatus"] = [Fault(delay=1.5, code=None)]
    slow = await InstanceCheck("instance", 0.5, ali, ECS_A).run()  # the check's own timeout, on a slow API
    assert (slow.status, slow.detail) == (CheckStatus.UNKNOWN, "no answer within 0.5s")
    assert (await InstanceCheck("instance", 5.0, ali, ECS_A).run()).ok


async def test_https_calls_share_one_tls_context_and_connection(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    world = FakeAliyun(region=REGION)
    await world.start(ssl_context=server_context)
    try:
        ecs_world(world)
        provider = provider_for(world, tmp_path, protocol="https", ca_file=ca_file)
        for _ in range(5):
            assert (await provider.describe(["eip-1"]))["eip-1"].bound_to == ECS_A
        assert len({entry.connection for entry in world.log}) == 1  # one TCP+TLS connection, kept alive
        assert [key for key in tea_transport.PooledTransport.contexts if key[0] == str(ca_file)] == [
            (str(ca_file), None, None)]
    finally:
        await world.stop()


def test_an_unusable_ca_file_is_a_clear_error(fake: FakeAliyun, tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match=r"alibaba provider 'ali': ca_file .*missing\.pem: No such file"):
        provider_for(fake, tmp_path, protocol="https", ca_file=tmp_path / "missing.pem")


async def test_a_move_returns_only_once_every_call_it_sent_is_answered(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """eip-1's unassociate is refused for good, eip-2's is slow but goes through: the move waits for both answers,
    so the secure step sees eip-2 detaching and re-attaches it; no EIP is detached behind the failover's back."""
    for eip, ip in (("eip-1", "47.1.1.1"), ("eip-2", "47.1.1.2")):
        fake.add_eip(eip, ip)
    fake.add_resource("i-a", "Nat")
    fake.add_resource("i-b", "Nat")
    fake.bind("eip-1", "i-a")
    fake.bind("eip-2", "i-a")
    fake.faults["UnassociateEipAddress"] = [
        Fault(403, "Forbidden.RAM", "not allowed", match={"AllocationId": "eip-1"}),
        Fault(code=None, delay=1.0, match={"AllocationId": "eip-2"}),
    ]
    provider = provider_for(fake, tmp_path)
    a, b = Binding(instance_id="i-a", instance_type="Nat"), Binding(instance_id="i-b", instance_type="Nat")
    outcome = await failover.execute(provider, ["eip-1", "eip-2"], b, deadline=5, fallback=[a, b],
                                     verify_interval=0.05)
    assert not outcome.ok
    assert outcome.error.endswith("; re-attached eip-2 to Nat i-a")
    states = {e: (fake.eips[e].status, fake.eips[e].instance_id) for e in ("eip-1", "eip-2")}
    assert all(s == "InUse" for s, _ in states.values()), f"failover said: {outcome.error!r}; now: {states}"


async def test_many_eips_are_read_by_pages_and_the_missing_by_their_ids(fake: FakeAliyun,
                                                                         ali: AlibabaProvider) -> None:
    """Over 50 EIPs (the most IDs one call takes): every EIP of the region, 100 a page; an EIP the pages did not
    show is then asked for by its ID, and only the describe that wanted it fails."""
    ecs_world(fake)
    eips = [f"eip-x{i:03d}" for i in range(150)]
    for i, eip in enumerate(eips):
        fake.add_eip(eip, f"47.2.{i // 250}.{i % 250}")
        fake.bind(eip, "i-b")
    found, missing = await asyncio.gather(ali.describe(eips), ali.describe(["eip-1", "eip-gone"]),
                                          return_exceptions=True)
    assert isinstance(found, dict)
    assert list(found) == eips
    assert all(state.bound_to == ECS_B for state in found.values())
    assert isinstance(missing, ProviderError)
    assert missing.code == "InvalidAllocationId.NotFound"
    assert str(missing) == "Alibaba DescribeEipAddresses in cn-hangzhou: no EIP eip-gone"
    reads = [e.query for e in fake.log if e.action == "DescribeEipAddresses"]
    assert [(r.get("PageNumber"), r.get("AllocationId")) for r in reads] == [("1", None), ("2", None),
                                                                            (None, "eip-gone")]


async def test_a_mass_move_under_the_rate_limit_reattaches_each_eip_before_detaching_more(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """Ten groups' EIPs move at once on Alibaba (two steps each) through a mutation limit of 5 calls a second:
    an EIP's association, once it is detached, goes before the next group's unassociation, so that few EIPs are
    ever detached at the same time (not all ten while the queue drains)."""
    assert await most_detached_in_a_mass_move(fake, tmp_path, 5, 1, ratelimit.Priority.REPAIR) <= 3


async def most_detached_in_a_mass_move(fake: FakeAliyun, tmp_path: Path, rate: float, burst: int,
                                       level: int) -> int:
    """Ten EIPs, one per ECS instance, moved at once (each to its own standby) through a mutation limit of
    ``rate``/``burst``, at ``level``: every move verified; the most EIPs detached at the same time."""
    eips = [f"eip-m{i}" for i in range(10)]
    for i, eip in enumerate(eips):
        fake.add_resource(f"i-a{i}")
        fake.add_resource(f"i-b{i}")
        fake.add_eip(eip, f"47.3.0.{i}")
        fake.bind(eip, f"i-a{i}")
    ali = provider_for(fake, tmp_path, rate_limit={"mutations": {"requests_per_second": rate, "burst": burst}})
    with ratelimit.priority(level):  # as the actuator runs the moves
        outcomes = await asyncio.gather(*(
            failover.execute(ali, [eip], Binding(instance_id=f"i-b{i}", instance_type="EcsInstance"), deadline=30,
                             verify_interval=0.05) for i, eip in enumerate(eips)))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    detached, most = set(), 0
    for _, eip, status, _ in sorted(fake.timeline):
        if status in ("Unassociating", "Available"):
            detached.add(eip)
        else:
            detached.discard(eip)
        most = max(most, len(detached))
    return most
