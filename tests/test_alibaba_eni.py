"""Alibaba's ENI modes as the cloud documents them: the fake refuses what the cloud refuses (with the documented
codes), the driver moves a cut-through ENI between instances (never leaving it detached), and the config check and
the start-up check reject bindings the cloud would refuse, naming the target."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from eipfailover import failover, preflight
from eipfailover.config import load_config, parse_config
from eipfailover.daemon import Daemon
from eipfailover.errors import ConfigError, ProviderError
from eipfailover.model import Binding
from eipfailover.providers.alibaba import AlibabaProvider

from .cli_run import run_cli
from .conftest import REGION, HealthServer, eventually, serving
from .fake_aliyun import MULTI_BINDED_MAX, FakeAliyun, Fault, key_file, provider_for

ON_A = Binding(instance_id="i-a", network_interface_id="eni-x", instance_type="EcsInstance", mode="BINDED")
ON_B = Binding(instance_id="i-b", network_interface_id="eni-x", instance_type="EcsInstance", mode="BINDED")


@pytest.fixture
async def ali(fake: FakeAliyun, tmp_path: Path) -> AlibabaProvider:
    return provider_for(fake, tmp_path)


def cut_through(fake: FakeAliyun) -> None:
    """Two instances; the secondary ENI eni-x on i-a, carrying eip-1 in cut-through mode."""
    fake.add_resource("i-a")
    fake.add_resource("i-b")
    fake.add_eni("eni-a0", "10.0.0.2", attached_to="i-a", primary=True)
    fake.add_eni("eni-x", "10.0.0.50", "10.0.0.51")
    fake.add_eip("eip-1", "47.1.1.1")
    fake.bind("eip-1", "eni-x", private_ip="10.0.0.50", mode="BINDED")
    eni = fake.resources["eni-x"]
    eni.attached_to, eni.eni_status = "i-a", "InUse"  # associated first, then attached: the documented order


def settled(fake: FakeAliyun, *eips: str) -> bool:
    fake.advance()
    return all(fake.eips[e].status == "InUse" for e in eips)


async def refused(ali: AlibabaProvider, eips: list[str], to: Binding) -> str:
    with pytest.raises(ProviderError) as err:
        await ali.move(eips, to)
    return str(err.value.code)


# --- the fake enforces the documented rules ---
async def test_cut_through_is_refused_on_a_primary_eni(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_resource("i-a")
    fake.add_eni("eni-p", "10.0.0.2", attached_to="i-a", primary=True)
    fake.add_eip("eip-1", "47.1.1.1")
    to = Binding(instance_id="eni-p", instance_type="NetworkInterface", private_ip="10.0.0.2", mode="BINDED")
    assert await refused(ali, ["eip-1"], to) == "InvalidParameter.EniInstanceId"


async def test_cut_through_is_refused_on_an_attached_eni(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_resource("i-a")
    fake.add_eni("eni-x", "10.0.0.50", attached_to="i-a")
    fake.add_eip("eip-1", "47.1.1.1")
    to = Binding(instance_id="eni-x", instance_type="NetworkInterface", private_ip="10.0.0.50", mode="BINDED")
    assert await refused(ali, ["eip-1"], to) == "Eni.Attached"
    fake.resources["eni-x"].attached_to, fake.resources["eni-x"].eni_status = "", "Available"
    secondary_ip = Binding(instance_id="eni-x", instance_type="NetworkInterface", private_ip="10.0.0.99",
                           mode="BINDED")
    assert await refused(ali, ["eip-1"], secondary_ip) == "InvalidParameter"  # only the primary private IP
    await ali.move(["eip-1"], to)  # detached: accepted
    await eventually(lambda: settled(fake, "eip-1"))
    fake.add_eip("eip-2", "47.1.1.2")
    assert await refused(ali, ["eip-2"], to) == "Mode.NotSupport"  # one EIP per cut-through ENI


async def test_multi_binded_needs_a_secondary_eni_and_takes_ten_eips(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    fake.add_resource("i-a")
    fake.add_eni("eni-p", "10.0.0.2", attached_to="i-a", primary=True)
    fake.add_eni("eni-m", "10.0.0.60", attached_to="i-a")
    for n in range(MULTI_BINDED_MAX + 1):
        fake.add_eip(f"eip-{n}", f"47.1.2.{n}")
    primary = Binding(instance_id="eni-p", instance_type="NetworkInterface", mode="MULTI_BINDED")
    assert await refused(ali, ["eip-0"], primary) == "OperationUnsupported.EipBindModel"
    multi = Binding(instance_id="eni-m", instance_type="NetworkInterface", mode="MULTI_BINDED")
    ten = [f"eip-{n}" for n in range(MULTI_BINDED_MAX)]
    await ali.move(ten, multi)  # one batch; an attached secondary ENI is fine in this mode
    await eventually(lambda: settled(fake, *ten))
    assert await refused(ali, [f"eip-{MULTI_BINDED_MAX}"], multi) == "QuotaExceed.MultiBindedEip"


async def test_nat_mode_takes_one_eip_per_private_ip_and_an_instance_one_eip(fake: FakeAliyun,
                                                                            ali: AlibabaProvider) -> None:
    fake.add_resource("i-a")
    fake.add_eni("eni-n", "10.0.0.70", "10.0.0.71", attached_to="i-a")
    for n in (1, 2, 3, 4):
        fake.add_eip(f"eip-{n}", f"47.1.3.{n}")
    fake.bind("eip-1", "eni-n", private_ip="10.0.0.70")
    fake.bind("eip-4", "i-a")
    same_ip = Binding(instance_id="eni-n", instance_type="NetworkInterface", private_ip="10.0.0.70", mode="NAT")
    assert await refused(ali, ["eip-2"], same_ip) == "InvalidAssociation.Duplicated"
    assert await refused(ali, ["eip-2"], Binding(instance_id="eni-n", instance_type="NetworkInterface",
                                                 private_ip="10.9.9.9", mode="NAT")) == "InvalidParameter"
    other_ip = Binding(instance_id="eni-n", instance_type="NetworkInterface", private_ip="10.0.0.71", mode="NAT")
    await ali.move(["eip-2"], other_ip)
    assert await refused(ali, ["eip-3"], Binding(instance_id="i-a", instance_type="EcsInstance")) \
        == "InvalidAssociation.Duplicated"


async def test_the_primary_eni_cannot_be_detached(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    cut_through(fake)
    with pytest.raises(ProviderError) as err:
        await ali._eni_call("DetachNetworkInterface", "eni-a0", "i-a")
    assert err.value.code == "InvalidOperation.DetachPrimaryEniNotAllowed"


# --- the driver: a cut-through failover moves the ENI ---
async def test_a_cut_through_failover_moves_the_eni_with_its_eip(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    cut_through(fake)
    assert (await ali.describe(["eip-1"]))["eip-1"].bound_to == ON_A
    outcome = await failover.execute(ali, ["eip-1"], ON_B, deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    eni, eip = fake.resources["eni-x"], fake.eips["eip-1"]
    assert (eni.attached_to, eni.eni_status) == ("i-b", "InUse")
    assert (eip.instance_id, eip.mode, eip.status) == ("eni-x", "BINDED", "InUse")  # the EIP never moved
    mutations = [a for a in fake.actions() if not a.startswith("Describe")]
    assert mutations == ["DetachNetworkInterface", "AttachNetworkInterface"]
    assert (await ali.describe(["eip-1"]))["eip-1"].bound_to == ON_B


async def test_an_eni_on_no_instance_reads_as_detached_and_is_repaired_by_attaching(
        fake: FakeAliyun, ali: AlibabaProvider) -> None:
    cut_through(fake)
    eni = fake.resources["eni-x"]
    eni.attached_to, eni.eni_status = "", "Available"
    state = (await ali.describe(["eip-1"]))["eip-1"]
    assert (state.bound_to, state.pending) == (None, False)  # serving nothing: the engine repairs it
    outcome = await failover.execute(ali, ["eip-1"], ON_A, deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    assert [a for a in fake.actions() if not a.startswith("Describe")] == ["AttachNetworkInterface"]


async def test_an_eip_off_its_eni_is_associated_while_the_eni_is_detached(fake: FakeAliyun,
                                                                         ali: AlibabaProvider) -> None:
    cut_through(fake)
    fake.eips["eip-1"].status, fake.eips["eip-1"].instance_id = "Available", ""  # unassociated by hand
    outcome = await failover.execute(ali, ["eip-1"], ON_A, deadline=10, verify_interval=0.05)
    assert outcome.ok, outcome.error
    assert [a for a in fake.actions() if not a.startswith("Describe")] == [
        "DetachNetworkInterface", "AssociateEipAddress", "AttachNetworkInterface"]
    associate = next(e for e in fake.log if e.action == "AssociateEipAddress")
    assert (associate.query["Mode"], associate.query["PrivateIpAddress"]) == ("BINDED", "10.0.0.50")
    assert (fake.resources["eni-x"].attached_to, fake.eips["eip-1"].mode) == ("i-a", "BINDED")


async def test_an_eni_whose_attach_is_throttled_past_the_deadline_goes_back_where_it_was(
        fake: FakeAliyun, ali: AlibabaProvider) -> None:
    cut_through(fake)
    fake.faults["AttachNetworkInterface"] = [Fault(match={"InstanceId": "i-b"}) for _ in range(200)]
    outcome = await failover.execute(ali, ["eip-1"], ON_B, deadline=2, fallback=[ON_A], verify_interval=0.05)
    assert not outcome.ok
    assert outcome.reattached_to == ON_A, outcome.error
    assert (fake.resources["eni-x"].attached_to, fake.resources["eni-x"].eni_status) == ("i-a", "InUse")
    assert fake.eips["eip-1"].instance_id == "eni-x"
    assert "Throttling.User" in outcome.error


async def test_the_list_resolves_more_cut_through_enis_than_one_call_takes(fake: FakeAliyun,
                                                                           ali: AlibabaProvider) -> None:
    fake.add_resource("i-a")
    for n in range(150):
        fake.add_eni(f"eni-{n:03}", f"10.0.{n // 200}.{n % 200 + 1}")
        fake.add_eip(f"eip-{n:03}", f"47.1.{n // 200}.{n % 200 + 1}")
        fake.bind(f"eip-{n:03}", f"eni-{n:03}", private_ip=f"10.0.{n // 200}.{n % 200 + 1}", mode="BINDED")
    fake.resources["eni-149"].attached_to, fake.resources["eni-149"].eni_status = "i-a", "InUse"
    records = {r.allocation_id: r for r in await ali.list_eips()}
    assert len(records) == 150
    assert str(records["eip-000"].bound_to) == "ENI eni-000 on no instance (BINDED)"
    assert str(records["eip-149"].bound_to) == "ENI eni-149 on i-a (BINDED)"
    assert len([e for e in fake.log if e.action == "DescribeNetworkInterfaces"]) == 2


async def test_validate_names_the_binding_the_cloud_contradicts(fake: FakeAliyun, ali: AlibabaProvider) -> None:
    cut_through(fake)
    bindings = {
        "good": ON_A,
        "primary": Binding(instance_id="i-a", network_interface_id="eni-a0", instance_type="EcsInstance",
                           mode="BINDED"),
        "missing": Binding(instance_id="eni-nope", instance_type="NetworkInterface", private_ip="10.0.0.5",
                           mode="NAT"),
        "wrong-ip": Binding(instance_id="eni-x", instance_type="NetworkInterface", private_ip="10.9.9.9", mode="NAT"),
        "multi-primary": Binding(instance_id="eni-a0", instance_type="NetworkInterface", mode="MULTI_BINDED"),
        "plain": Binding(instance_id="i-b", instance_type="EcsInstance"),
    }
    problems = await ali.validate(bindings)
    assert sorted(p.split(":")[0] for p in problems) == ["missing", "multi-primary", "primary", "wrong-ip"]
    assert any("ENI eni-a0 is a primary ENI (of i-a): BINDED mode needs a secondary ENI" in p for p in problems)


# --- the config check and the start-up check ---
def group_data(fake: FakeAliyun, tmp_path: Path, servers: list[HealthServer], eni: str = "eni-x",
               **binding: Any) -> dict[str, Any]:
    endpoint = fake.endpoint
    return {
        "log": {"format": "json"},
        "api": {"listen": "127.0.0.1:0"},
        "providers": {"ali": {"type": "alibaba", "region": fake.region, "endpoint": endpoint,
                              "ecs_endpoint": endpoint, "protocol": "http",
                              "access_key_file": str(key_file(tmp_path)), "poll_interval": "100ms"}},
        "groups": [{
            "name": "web", "provider": "ali", "eips": ["eip-1"],
            "policy": {"interval": "500ms", "timeout": "250ms", "rise": 2, "fall": 2, "cooldown": "5s"},
            "targets": [
                {"name": "web-a", "binding": {"instance_id": "i-a", "network_interface_id": eni, **binding},
                 "checks": [{"type": "http", "url": servers[0].url}]},
                {"name": "web-b", "binding": {"instance_id": "i-b", "network_interface_id": eni, **binding},
                 "checks": [{"type": "http", "url": servers[1].url}]},
            ],
        }],
    }


def test_the_config_check_rejects_bindings_cut_through_mode_cannot_fail_over() -> None:
    base: dict[str, Any] = {"providers": {"ali": {"type": "alibaba", "region": "cn-hangzhou"}}}
    static = {**base, "groups": [{"name": "web", "provider": "ali", "eips": ["eip-1"], "targets": [
        {"name": "web-a", "binding": {"instance_id": "eni-a", "instance_type": "NetworkInterface", "mode": "BINDED",
                                      "private_ip": "10.0.0.5"}, "checks": [{"type": "instance"}]},
        {"name": "web-b", "binding": {"instance_id": "i-b"}, "checks": [{"type": "instance"}]}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(static)
    assert any(p.startswith("groups[0].targets[0].binding.mode: an EIP in cut-through mode (BINDED)")
               for p in err.value.problems), err.value.problems
    mixed = {**base, "groups": [{"name": "web", "provider": "ali", "eips": ["eip-1", "eip-2"], "targets": [
        {"name": "web-a", "binding": {"instance_id": "i-a", "network_interface_id": "eni-x"},
         "checks": [{"type": "instance"}]},
        {"name": "web-b", "binding": {"instance_id": "i-b", "network_interface_id": "eni-y", "mode": "NAT"},
         "checks": [{"type": "instance"}]}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(mixed)
    paths = sorted(p.split(":")[0] for p in err.value.problems)
    assert paths == ["groups[0].eips", "groups[0].targets[1].binding", "groups[0].targets[1].binding"
                                                                       ".network_interface_id"], err.value.problems


async def test_a_primary_eni_is_refused_at_start_up_and_by_check_config_cloud_naming_the_target(
        fake: FakeAliyun, tmp_path: Path, health_servers: list[HealthServer]) -> None:
    cut_through(fake)
    path = tmp_path / "eipfailover.yaml"
    path.write_text(yaml.safe_dump(group_data(fake, tmp_path, health_servers, eni="eni-a0")))
    for args in (["check-config", "--cloud"], ["run"]):
        result = await run_cli(*args, "-c", str(path))
        text = result.out + result.err
        assert result.code == 2, text
        assert "groups.web.targets.web-a.binding: ENI eni-a0 is a primary ENI (of i-a)" in text, text
        assert "groups.web.targets.web-b.binding" in text, text


async def test_check_config_cloud_passes_a_good_cut_through_group(fake: FakeAliyun, tmp_path: Path,
                                                                  health_servers: list[HealthServer]) -> None:
    cut_through(fake)
    path = tmp_path / "eipfailover.yaml"
    path.write_text(yaml.safe_dump(group_data(fake, tmp_path, health_servers)))
    result = await run_cli("check-config", "--cloud", "-c", str(path))
    assert result.code == 0, result
    assert "cloud: every EIP, instance and ENI found, as the bindings describe them" in result.out


async def test_the_daemon_fails_a_cut_through_group_over_by_moving_the_eni(
        fake: FakeAliyun, tmp_path: Path, health_servers: list[HealthServer]) -> None:
    cut_through(fake)
    daemon = Daemon(parse_config(group_data(fake, tmp_path, health_servers)))
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await eventually(lambda: daemon.engine is not None and daemon.engine.ready.is_set(), timeout=20)
        assert daemon.engine is not None
        runner = daemon.engine.runners["web"]
        assert runner.state.cloud.location.active == "web-a"
        await health_servers[0].stop()  # web-a's service dies
        await eventually(lambda: (done := runner.state.last_failover) is not None and done.result != "running",
                         timeout=20)
        assert runner.state.last_failover is not None
        assert (runner.state.last_failover.result, runner.state.last_failover.to_target) == ("success", "web-b")
        assert (fake.resources["eni-x"].attached_to, fake.resources["eni-x"].eni_status) == ("i-b", "InUse")
        assert (fake.eips["eip-1"].instance_id, fake.eips["eip-1"].status) == ("eni-x", "InUse")
        await eventually(lambda: runner.state.cloud.location.active == "web-b", timeout=10)  # read back from the cloud
    finally:
        assert daemon.engine is not None
        daemon.engine.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def test_the_fake_refuses_to_detach_an_eni_from_an_instance_neither_running_nor_stopped(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """ECS DetachNetworkInterface documents: "Make sure that the instance from which you want to detach an ENI is
    in the Running or Stopped state" (error InvalidOperation.InvalidEcsState). The failed active instance of a
    cut-through group is often neither (Stopping, Starting: crashed, being recovered). The fake must refuse the
    detach like the cloud, or the tests never see the driver face it; today it accepts it."""
    cut_through(fake)
    fake.resources["i-a"].status = "Stopping"
    ali = provider_for(fake, tmp_path)
    with pytest.raises(ProviderError) as err:
        await ali._eni_call("DetachNetworkInterface", "eni-x", "i-a")
    assert err.value.code == "InvalidOperation.InvalidEcsState"


async def test_a_cut_through_failover_waits_out_an_instance_in_transition(fake: FakeAliyun, tmp_path: Path) -> None:
    """The failed active instance i-a is Stopping: DetachNetworkInterface is refused with
    InvalidOperation.InvalidEcsState until it is Stopped (a few seconds). That is a transient state, like
    IncorrectEipStatus: the failover must retry within its deadline and succeed (the ENI on i-b)."""
    cut_through(fake)
    fake.faults["DetachNetworkInterface"] = [
        Fault(code="InvalidOperation.InvalidEcsState", message="The operation is not allowed in the current ECS "
                                                               "state.") for _ in range(2)]
    ali = provider_for(fake, tmp_path)
    outcome = await failover.execute(ali, ["eip-1"], ON_B, deadline=10, fallback=[ON_A], verify_interval=0.05)
    assert outcome.ok, outcome.error
    assert fake.resources["eni-x"].attached_to == "i-b"


@pytest.mark.parametrize("binding", [
    {"instance_id": "i-a"},
    {"instance_id": "havip-1", "instance_type": "HaVip"},
    {"instance_id": "eni-n", "instance_type": "NetworkInterface", "private_ip": "10.0.0.70"},
], ids=["EcsInstance", "HaVip", "NAT-one-private-ip"])
def test_the_config_check_rejects_two_eips_on_a_binding_that_takes_one(binding: dict[str, str]) -> None:
    """Issue 9: "An ECS instance holds at most one EIP" and "NAT mode: ... no more EIPs than private IPs" are rules
    the config check must follow too (a HaVip, a CLB take one EIP as well). A group of two EIPs whose target is an
    ECS instance, a HaVip or one private IP of an ENI can never be moved whole (the cloud refuses the second
    EIP, InvalidAssociation.Duplicated, in every failover and every re-attach). `check-config` must reject it,
    naming the group's eips; today it accepts it."""
    from eipfailover.config import parse_config
    from eipfailover.errors import ConfigError

    checks = [{"type": "tcp", "host": "10.0.0.1", "port": 80}]
    data = {"providers": {"ali": {"type": "alibaba", "region": "cn-hangzhou"}},
            "groups": [{"name": "web", "provider": "ali", "eips": ["eip-1", "eip-2"], "targets": [
                {"name": "web-a", "binding": binding, "checks": checks},
                {"name": "web-b", "binding": {**binding, "instance_id": binding["instance_id"] + "-b"},
                 "checks": checks}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert any("eips" in p for p in err.value.problems), err.value.problems


# --- a failed instance, the start-up and reload check ---


class HungOsFake(FakeAliyun):
    """The failed instance's operating system does not answer the first DetachNetworkInterface: the ENI stays
    ``Detaching`` until the request is sent again (ECS DetachNetworkInterface: "If the ENI is stuck in the
    Detaching state ... the operating system of the instance did not respond to the ENI detachment request ...
    you can re-initiate the request to detach the ENI"; an ENI in ``Detaching`` may be detached)."""

    def _2014_05_26_DetachNetworkInterface(self, q: dict[str, str]) -> dict[str, Any]:
        eni = self._eni(q)
        if eni.eni_status == "Detaching":  # re-initiated: this time the OS answers
            eni.eni_done_at = time.monotonic() + self.transition
            return {}
        result = super()._2014_05_26_DetachNetworkInterface(q)
        eni.eni_done_at = math.inf  # the hung OS never acknowledges the first request
        return result


@pytest.fixture
async def hung_fake() -> AsyncIterator[HungOsFake]:
    async with serving(HungOsFake(transition=0.3, region="cn-hangzhou")) as world:
        yield world


@pytest.fixture
async def json_list_server() -> AsyncIterator[str]:
    """An HTTP endpoint that answers every request with 200 and the JSON ``["ok"]`` (a wrong ``ecs_endpoint``)."""
    async def handle(_: web.Request) -> web.Response:
        return web.json_response(["ok"])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def started(data: dict[str, Any], path: Path) -> tuple[Daemon, asyncio.Task[int]]:
    await asyncio.to_thread(path.write_text, yaml.safe_dump(data))
    daemon = Daemon(load_config(path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    await asyncio.wait_for(daemon.serving.wait(), 30)
    assert daemon.engine is not None
    await asyncio.wait_for(daemon.engine.ready.wait(), 30)
    return daemon, task


async def test_a_cut_through_failover_re_sends_a_detach_the_failed_instance_never_acknowledged(
        hung_fake: HungOsFake, tmp_path: Path) -> None:
    """Cut-through failover exists for the moment the active instance fails, which is when its OS is most likely
    not to answer the detach request. ECS documents the ENI then stays ``Detaching`` and the remedy is to send
    DetachNetworkInterface again. The move must do so while it waits for ``Available``, and the failover succeed
    (ENI on i-b)."""
    cut_through(hung_fake)
    ali = provider_for(hung_fake, tmp_path)
    outcome = await failover.execute(ali, ["eip-1"], ON_B, deadline=10, fallback=[ON_A], verify_interval=0.05)
    eni = hung_fake.resources["eni-x"]
    detaches = hung_fake.actions().count("DetachNetworkInterface")
    assert outcome.ok, (outcome.error, hung_fake.sequence(skip=("DescribeEipAddresses",)))
    assert detaches >= 2
    assert (eni.attached_to, eni.eni_status) == ("i-b", "InUse")


async def test_the_fake_accepts_a_detach_of_an_eni_that_is_still_detaching(fake: FakeAliyun,
                                                                           tmp_path: Path) -> None:
    """ECS DetachNetworkInterface: "Make sure that the ENI to be detached is in the Detaching (Unbinding) or InUse
    (Bound) state". The fake must accept it, as the cloud does, or the tests cannot exercise the documented remedy
    for an ENI stuck detaching."""
    cut_through(fake)
    fake.transition = 30.0
    ali = provider_for(fake, tmp_path)
    await ali._eni_call("DetachNetworkInterface", "eni-x", "i-a")
    assert fake.resources["eni-x"].eni_status == "Detaching"
    await ali._eni_call("DetachNetworkInterface", "eni-x", "i-a")


async def test_a_reload_whose_binding_validation_crashes_leaves_the_daemon_running(
        fake: FakeAliyun, tmp_path: Path, health_servers: list[HealthServer], json_list_server: str) -> None:
    """SIGHUP with a config whose ``ecs_endpoint`` answers ``200 ["ok"]`` (a wrong endpoint): the start-up check's
    DescribeNetworkInterfaces gets an answer that is not the API's. The check is skipped as for an unreadable cloud
    (or the reload refused), and the daemon keeps running, whatever the driver raises."""
    cut_through(fake)
    data = group_data(fake, tmp_path, health_servers)
    daemon, task = await started(data, tmp_path / "c.yaml")
    assert daemon.engine is not None
    try:
        with capture_logs() as logs:
            data["providers"]["ali"]["ecs_endpoint"] = json_list_server
            await asyncio.to_thread((tmp_path / "c.yaml").write_text, yaml.safe_dump(data))
            daemon.request_reload()
            await eventually(lambda: task.done() or any(e["event"] in ("reload_done", "reload_failed")
                                                        for e in logs), timeout=20)
        assert not task.done(), f"the daemon died: {task.exception()!r}"
        warning = next(e for e in logs if e["event"] == "bindings_not_validated")
        assert "the answer has no network interface sets (is the endpoint right?)" in warning["error"]
    finally:
        if not task.done():
            daemon.engine.request_stop()
            await asyncio.wait_for(task, 30)


async def test_a_stop_during_a_reloads_cloud_validation_is_not_held_up_by_it(
        fake: FakeAliyun, tmp_path: Path, health_servers: list[HealthServer]) -> None:
    """SIGTERM while a reload is validating bindings against a cloud that does not answer: the stop is acted on at
    once (the shutdown and its ``stop_timeout`` clock must fit the unit's TimeoutStopSec), the reload is dropped,
    and (with nothing moving) the daemon exits within 3 s."""
    cut_through(fake)
    data = group_data(fake, tmp_path, health_servers)
    data["providers"]["ali"]["read_timeout"] = "8s"
    daemon, task = await started(data, tmp_path / "c.yaml")
    assert daemon.engine is not None
    try:
        data["groups"][0]["policy"]["cooldown"] = "7s"
        await asyncio.to_thread((tmp_path / "c.yaml").write_text, yaml.safe_dump(data))
        fake.faults["DescribeNetworkInterfaces"] = [Fault(code=None, delay=9.0) for _ in range(3)]
        sent = len(fake.log)
        daemon.request_reload()
        await eventually(lambda: "DescribeNetworkInterfaces" in [e.action for e in fake.log[sent:]], timeout=10)
        daemon.engine.request_stop()
        done, _ = await asyncio.wait({task}, timeout=3)
        assert done, "the daemon did not stop within 3 s: it waits for the reload's validation first"
    finally:
        await asyncio.wait_for(task, 60)


async def test_the_binding_validation_asks_every_provider_at_once(fake: FakeAliyun, tmp_path: Path,
                                                                 health_servers: list[HealthServer]) -> None:
    """The start-up (and reload) check runs before the daemon serves anything: N unreachable providers (regions)
    must not hold the start for N x the timeout (6 would reach the unit's TimeoutStartSec=90s, a restart loop while
    the cloud is down). The providers are asked at once, the whole check bounded by one ``timeout``."""
    cut_through(fake)
    base = group_data(fake, tmp_path, health_servers)
    provider = dict(base["providers"]["ali"], read_timeout="10s")
    names = ["ali1", "ali2", "ali3"]
    groups = []
    for n, name in enumerate(names):
        group = yaml.safe_load(yaml.safe_dump(base["groups"][0]))
        group["name"], group["provider"], group["eips"] = f"web{n}", name, [f"eip-{n + 10}"]
        for target in group["targets"]:
            target["binding"]["network_interface_id"] = f"eni-{n}"  # each group its own ENI
        groups.append(group)
    config = parse_config({**base, "providers": dict.fromkeys(names, provider), "groups": groups})
    built = {}
    for name in names:
        built[name] = AlibabaProvider.from_config(name, config.providers[name])  # type: ignore[arg-type]
        fake.clients.append(built[name])
    fake.faults["DescribeNetworkInterfaces"] = [Fault(code=None, delay=5.0) for _ in names]
    start = time.monotonic()
    problems, unchecked = await preflight.binding_problems(config, built, timeout=1.5)
    took = time.monotonic() - start
    assert (problems, len(unchecked)) == ([], 3)
    assert took < 3.0, f"{took:.1f}s for 3 providers with a 1.5 s timeout: asked one after the other"


def test_the_config_check_rejects_two_groups_moving_the_same_cut_through_eni() -> None:
    """A cut-through ENI carries one EIP, and a group in cut-through mode moves that ENI between its own instances.
    Two groups naming the same ``network_interface_id`` would move one ENI between different instances (and the
    second group's EIP can never be on it: every repair of it fails, forever). ``check-config`` rejects the second
    group, naming it."""
    data: dict[str, Any] = {"providers": {"ali": {"type": "alibaba", "region": "cn-hangzhou"}}, "groups": [
        {"name": name, "provider": "ali", "eips": [eip_id], "targets": [
            {"name": f"{name}-a", "binding": {"instance_id": a, "network_interface_id": "eni-x"},
             "checks": [{"type": "instance"}]},
            {"name": f"{name}-b", "binding": {"instance_id": b, "network_interface_id": "eni-x"},
             "checks": [{"type": "instance"}]}]}
        for name, eip_id, a, b in (("web", "eip-1", "i-a", "i-b"), ("api", "eip-2", "i-c", "i-d"))]}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert any(p.startswith("groups[1]") and "eni-x" in p for p in err.value.problems), err.value.problems


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kind", ["aws", "alibaba"])
async def test_check_config_cloud_says_so_when_the_cloud_cannot_be_read(tmp_path: Path, kind: str) -> None:
    """README, commands table: `check-config --cloud` "also checks the bindings against the cloud, as the daemon
    does at start-up (exit 2 for a binding the cloud contradicts, 1 if the cloud cannot be read)". With the
    provider's endpoint refusing connections, it must not exit 0 saying all was found:
    the cloud was never read."""
    port = _closed_port()
    provider: dict[str, Any] = (
        {"type": "aws", "region": REGION, "endpoint_url": f"http://127.0.0.1:{port}", "max_attempts": 1}
        if kind == "aws" else
        {"type": "alibaba", "region": "cn-hangzhou", "endpoint": f"127.0.0.1:{port}",
         "ecs_endpoint": f"127.0.0.1:{port}", "protocol": "http", "access_key_file": str(key_file(tmp_path))})
    data = {"providers": {"p": provider}, "groups": [{"name": "web", "provider": "p", "eips": ["eip-1"], "targets": [
        {"name": "web-a", "binding": {"instance_id": "i-a"}, "checks": [{"type": "instance"}]},
        {"name": "web-b", "binding": {"instance_id": "i-b"}, "checks": [{"type": "instance"}]}]}]}
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(data))
    result = await run_cli("check-config", "--cloud", "-c", str(path))
    assert "cloud:" not in result.out, result
    assert result.code == 1, result


def test_the_config_check_rejects_more_eips_than_a_multi_binded_eni_takes() -> None:
    """README (ENI modes table): MULTI_BINDED takes "up to 10" EIPs per secondary ENI (the fake refuses the 11th,
    QuotaExceed.MultiBindedEip). The config check refuses a group of several EIPs on a one-EIP target because such a
    group "can never be moved whole"; a group of 11 EIPs on MULTI_BINDED ENIs is the same case and must be refused,
    naming the group's eips."""
    checks = [{"type": "tcp", "host": "10.0.0.1", "port": 80}]
    data = {"providers": {"ali": {"type": "alibaba", "region": "cn-hangzhou"}},
            "groups": [{"name": "m", "provider": "ali", "eips": [f"eip-{n:02}" for n in range(11)], "targets": [
                {"name": "a", "binding": {"instance_id": "eni-a", "instance_type": "NetworkInterface",
                                          "mode": "MULTI_BINDED"}, "checks": checks},
                {"name": "b", "binding": {"instance_id": "eni-b", "instance_type": "NetworkInterface",
                                          "mode": "MULTI_BINDED"}, "checks": checks}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert any("eips" in p for p in err.value.problems), err.value.problems


async def test_check_config_cloud_names_every_eip_and_instance_the_cloud_does_not_know(
        fake: FakeAliyun, tmp_path: Path, health_servers: list[HealthServer]) -> None:
    """``check-config --cloud`` reads the groups' EIPs and the targets' instances too: an allocation ID or an
    instance ID the cloud does not know is exit 2, each named by its key path."""
    cut_through(fake)
    data = group_data(fake, tmp_path, health_servers)
    data["groups"][0]["eips"] = ["eip-nope"]
    data["groups"][0]["targets"][1]["binding"]["instance_id"] = "i-nope"
    path = tmp_path / "eipfailover.yaml"
    path.write_text(yaml.safe_dump(data))
    result = await run_cli("check-config", "--cloud", "-c", str(path))
    assert result.code == 2, result
    assert "groups.web.eips: Alibaba DescribeEipAddresses in cn-hangzhou: no EIP eip-nope" in result.err, result
    assert "groups.web.targets.web-b.binding: instance i-nope does not exist" in result.err, result


def test_the_config_check_reports_the_multi_binded_limit_and_a_one_eip_target_together() -> None:
    """config.py: `load_config` "reports every problem at once". 11 EIPs on targets a (an ENI in MULTI_BINDED mode:
    ten at most) and b (an ECS instance: one EIP) are two problems, both reported."""
    checks = [{"type": "tcp", "host": "10.0.0.1", "port": 80}]
    data = {"providers": {"ali": {"type": "alibaba", "region": "cn-hangzhou"}},
            "groups": [{"name": "m", "provider": "ali", "eips": [f"eip-{n:02}" for n in range(11)], "targets": [
                {"name": "a", "binding": {"instance_id": "eni-a", "instance_type": "NetworkInterface",
                                          "mode": "MULTI_BINDED"}, "checks": checks},
                {"name": "b", "binding": {"instance_id": "i-b"}, "checks": checks}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert any("MULTI_BINDED" in p for p in err.value.problems), err.value.problems
    assert any("target b" in p for p in err.value.problems), err.value.problems
