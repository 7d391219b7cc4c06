"""``eipfailover eip ...`` end to end, as a subprocess: on moto (AWS) and on the fake VPC API (Alibaba, with a NAT
gateway, an ENI in MULTI_BINDED mode, a HaVip and a cut-through ENI), the refusals, ``--dry-run``, the JSON shape
of ``list --json`` (validated against docs/eip-list.schema.json), and an Alibaba associate whose second step is
throttled past its deadline, which leaves the EIP where it was."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from aiohttp import web

from eipfailover import eipcmd
from eipfailover.model import ManualRequest

from .api_daemon import running_daemon
from .cli_run import Result, interrupted, run_cli
from .conftest import REGION, Ec2World, HealthServer, eventually
from .fake_aliyun import FakeAliyun, Fault, key_file
from .test_alibaba_eni import cut_through, group_data, started

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "eip-list.schema.json"


async def eip(config: Path, *args: str) -> Result:
    """``eipfailover eip ARGS -c CONFIG`` as a subprocess."""
    return await run_cli("eip", *args, "-c", str(config))


def validated(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    jsonschema_rs.validate(json.loads(SCHEMA_FILE.read_text()), data)
    return data


def test_the_documented_schema_is_the_one_the_code_prints() -> None:
    assert SCHEMA_FILE.read_text() == eipcmd.schema(), "regenerate docs/eip-list.schema.json with eipcmd.schema()"


# --- AWS, on moto ---
def aws_config(tmp_path: Path, ec2: Ec2World, api: str = "127.0.0.1:9", **group: Any) -> Path:
    """A group ``web`` managing ``ec2.eip`` (web-a: instance A, web-b: instance B); the API where no daemon is."""
    data = {"api": {"listen": api}, "providers": {"moto": {"type": "aws", "region": REGION,
                                                          "endpoint_url": ec2.endpoint}},
            "groups": [{"name": "web", "provider": "moto", "eips": [ec2.eip], **group, "targets": [
                {"name": "web-a", "binding": {"instance_id": ec2.instance_a}, "checks": [{"type": "instance"}]},
                {"name": "web-b", "binding": {"instance_id": ec2.instance_b}, "checks": [{"type": "instance"}]}]}]}
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_list_shows_every_eip_where_it_is_and_which_group_manages_it(ec2: Ec2World, tmp_path: Path) -> None:
    spare = ec2.client.allocate_address(Domain="vpc", TagSpecifications=[
        {"ResourceType": "elastic-ip", "Tags": [{"Key": "team", "Value": "edge"}]}])
    config = aws_config(tmp_path, ec2)
    table = await eip(config, "list")
    assert table.code == 0, table.err
    line = next(x for x in table.out.splitlines() if x.startswith(ec2.eip))
    assert line.split()[1:] == [ec2.public_ip, "associated", f"{ec2.instance_a}", f"({ec2.eni_a}/{ec2.ip_a})",
                                "web/web-a"]
    spare_line = next(x for x in table.out.splitlines() if x.startswith(spare["AllocationId"]))
    assert spare_line.split()[2:] == ["available", "nothing", "-"]
    listing = validated((await eip(config, "list", "--json")).out)
    assert (listing["provider"], listing["type"], listing["region"]) == ("moto", "aws", REGION)
    entries = {e["allocation_id"]: e for e in listing["eips"]}
    assert (entries[ec2.eip]["group"], entries[ec2.eip]["target"]) == ("web", "web-a")
    assert entries[ec2.eip]["bound_to"]["instance_id"] == ec2.instance_a
    assert entries[spare["AllocationId"]] | {"public_ip": ""} == {
        "allocation_id": spare["AllocationId"], "public_ip": "", "status": "available", "bound_to": None,
        "group": None, "target": None, "tags": {"team": "edge"}}


async def test_a_managed_eip_is_refused_while_the_daemon_cannot_confirm_maintenance(ec2: Ec2World,
                                                                                   tmp_path: Path) -> None:
    config = aws_config(tmp_path, ec2)
    for args in (["associate", ec2.eip, "--to", f"instance_id={ec2.instance_b}"], ["disassociate", ec2.eip],
                 ["associate", ec2.public_ip, "--target", "web/web-b", "--dry-run"]):
        refused = await eip(config, *args)
        assert refused.code == 1, refused
        assert f"EIP {ec2.eip} is managed by group web" in refused.err
        assert "the daemon cannot be asked whether it is in maintenance" in refused.err
        assert "if the daemon is stopped, give --force" in refused.err
    assert ec2.holder()["InstanceId"] == ec2.instance_a


async def test_force_moves_a_managed_eip_and_verifies_it(ec2: Ec2World, tmp_path: Path) -> None:
    config = aws_config(tmp_path, ec2)
    moved = await eip(config, "associate", ec2.public_ip, "--target", "web/web-b", "--force")
    assert moved.code == 0, moved.err
    assert ec2.holder()["InstanceId"] == ec2.instance_b
    assert f"{ec2.eip} ({ec2.public_ip}): {ec2.instance_a} (" in moved.out
    assert f"-> {ec2.instance_b}, verified in" in moved.out
    assert "AssociateAddress ok" in moved.out


async def test_maintenance_asked_through_the_api_lets_a_change_through(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    async with running_daemon(ec2, health_servers, tmp_path) as running:
        config = aws_config(tmp_path, ec2, api=running.url.removeprefix("http://"))
        refused = await eip(config, "disassociate", ec2.eip)
        assert (refused.code, "which is not in maintenance" in refused.err) == (1, True), refused
        assert (await running.post("/v1/groups/web/maintenance", {"enabled": True}))[0] == 200
        done = await eip(config, "associate", ec2.eip, "--target", "web/web-b")
        assert done.code == 0, done.err
        assert ec2.holder()["InstanceId"] == ec2.instance_b


async def test_disassociate_allocate_and_release_an_unmanaged_eip(ec2: Ec2World, tmp_path: Path) -> None:
    config = aws_config(tmp_path, ec2)
    allocated = await eip(config, "allocate", "--tag", "eipfailover=managed", "--tag", "team=edge", "--json")
    assert allocated.code == 0, allocated.err
    new = json.loads(allocated.out)
    address = ec2.client.describe_addresses(AllocationIds=[new["allocation_id"]])["Addresses"][0]
    assert {t["Key"]: t["Value"] for t in address["Tags"]} == {"eipfailover": "managed", "team": "edge"}
    moved = await eip(config, "associate", new["allocation_id"], "--to", f"instance_id={ec2.instance_b}")
    assert moved.code == 0, moved.err
    bound = await eip(config, "release", new["allocation_id"])
    assert (bound.code, "disassociate it first" in bound.err) == (1, True), bound
    detached = await eip(config, "disassociate", new["public_ip"])
    assert detached.code == 0, detached.err
    assert f"): {ec2.instance_b} (" in detached.out
    assert "-> nothing, verified in" in detached.out
    assert not ec2.holder(new["allocation_id"]).get("InstanceId")
    released = await eip(config, "release", new["allocation_id"])
    assert released.code == 0, released.err
    assert new["allocation_id"] not in {a["AllocationId"] for a in ec2.client.describe_addresses()["Addresses"]}


async def test_a_managed_eip_is_never_released(ec2: Ec2World, tmp_path: Path) -> None:
    config = aws_config(tmp_path, ec2)
    ec2.client.disassociate_address(AssociationId=ec2.holder()["AssociationId"])
    refused = await eip(config, "release", ec2.eip, "--force")
    assert refused.code == 2, refused  # --force is not even an option of release
    refused = await eip(config, "release", ec2.eip)
    assert (refused.code, "managed by group web: remove it from the config first" in refused.err) == (1, True), \
        refused
    assert ec2.holder()["AllocationId"] == ec2.eip


async def test_dry_run_prints_the_calls_and_changes_nothing(ec2: Ec2World, tmp_path: Path) -> None:
    config = aws_config(tmp_path, ec2)
    dry = await eip(config, "associate", ec2.eip, "--target", "web/web-b", "--force", "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out.strip() == (f"dry run: would call AssociateAddress AllocationId={ec2.eip} "
                               f"InstanceId={ec2.instance_b} AllowReassociation=true")
    assert ec2.holder()["InstanceId"] == ec2.instance_a
    dry = await eip(config, "allocate", "--tag", "k=v", "--dry-run")
    assert dry.out.strip() == "dry run: would call AllocateAddress Domain=vpc Tag.k=v"
    assert len(ec2.client.describe_addresses()["Addresses"]) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["associate", "EIP", "--to", "instance=i-1"], "--to 'instance=i-1': instance: unknown key"),
    (["associate", "EIP", "--to", "i-123"], "expected KEY=VALUE pairs"),
    (["associate", "EIP", "--to", "instance_id=i-1,instance_type=EcsInstance"],
     "instance_type and mode are for alibaba bindings"),
    (["associate", "EIP", "--target", "web/web-z"], "group web has no target 'web-z' (web-a, web-b)"),
    (["associate", "EIP", "--target", "nope"], "expected GROUP/TARGET"),
    (["associate", "eipalloc-00000000", "--to", "instance_id=i-1"], "InvalidAllocationID.NotFound"),
    (["disassociate", "203.0.113.9"], "no EIP with the address 203.0.113.9"),
    (["list", "--provider", "other"], "no provider 'other' in the config (known: moto)"),
    (["allocate", "--tag", "novalue"], "--tag 'novalue': expected KEY=VALUE"),
])
async def test_bad_input_is_a_clear_error(ec2: Ec2World, tmp_path: Path, args: list[str], message: str) -> None:
    config = aws_config(tmp_path, ec2)
    result = await eip(config, *[ec2.eip if a == "EIP" else a for a in args])
    assert result.code == 2, result
    assert message in result.err, result.err
    assert "Traceback" not in result.err


# --- Alibaba, on the fake VPC API ---
@pytest.fixture
async def ali_world(fake: FakeAliyun) -> FakeAliyun:
    """i-a holds eip-1 (group web: i-a, i-b); a NAT gateway with eip-2, a MULTI_BINDED ENI with eip-3 and
    eip-4, a HaVip with eip-5, a cut-through ENI on i-c with eip-6, and 120 spare EIPs (two pages)."""
    for rid in ("i-a", "i-b", "i-c"):
        fake.add_resource(rid)
    fake.add_resource("ngw-1", "Nat")
    fake.add_eni("eni-m", "10.0.0.60", attached_to="i-c")
    fake.add_eni("eni-x", "10.0.0.50")
    fake.add_havip("havip-1", "10.0.0.100", ["i-a", "i-b"], master="i-a")
    for n, (where, mode) in enumerate([("i-a", ""), ("ngw-1", ""), ("eni-m", "MULTI_BINDED"),
                                       ("eni-m", "MULTI_BINDED"), ("havip-1", ""), ("eni-x", "BINDED")], 1):
        fake.add_eip(f"eip-{n}", f"47.1.1.{n}")
        fake.bind(f"eip-{n}", where, mode=mode, private_ip="10.0.0.50" if mode == "BINDED" else "")
    eni = fake.resources["eni-x"]
    eni.attached_to, eni.eni_status = "i-c", "InUse"
    for n in range(120):
        fake.add_eip(f"eip-spare-{n:03}", f"47.2.{n // 200}.{n % 200 + 1}")
    return fake


def ali_config(tmp_path: Path, fake: FakeAliyun) -> Path:
    data = {"api": {"listen": "127.0.0.1:9"},
            "providers": {"ali": {"type": "alibaba", "region": fake.region, "endpoint": fake.endpoint,
                                  "ecs_endpoint": fake.endpoint, "protocol": "http",
                                  "access_key_file": str(key_file(tmp_path)), "poll_interval": "100ms"}},
            "groups": [{"name": "web", "provider": "ali", "eips": ["eip-1"], "targets": [
                {"name": "web-a", "binding": {"instance_id": "i-a"}, "checks": [{"type": "instance"}]},
                {"name": "web-b", "binding": {"instance_id": "i-b"}, "checks": [{"type": "instance"}]}]}]}
    path = tmp_path / "ali.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_alibaba_list_reads_every_page_and_every_kind_of_binding(ali_world: FakeAliyun,
                                                                       tmp_path: Path) -> None:
    config = ali_config(tmp_path, ali_world)
    listing = validated((await eip(config, "list", "--json")).out)
    entries = {e["allocation_id"]: e for e in listing["eips"]}
    assert len(entries) == 126
    assert {q.query.get("PageNumber") for q in ali_world.log if q.action == "DescribeEipAddresses"} == {"1", "2"}
    text = {e: entries[e]["bound_to"]["text"] for e in ("eip-1", "eip-2", "eip-3", "eip-5", "eip-6")}
    assert text == {"eip-1": "EcsInstance i-a", "eip-2": "Nat ngw-1", "eip-3": "NetworkInterface eni-m (MULTI_BINDED)",
                    "eip-5": "HaVip havip-1", "eip-6": "ENI eni-x on i-c (BINDED)"}
    assert (entries["eip-1"]["status"], entries["eip-1"]["group"], entries["eip-1"]["target"]) == (
        "InUse", "web", "web-a")
    assert (entries["eip-spare-000"]["bound_to"], entries["eip-spare-000"]["status"]) == (None, "Available")
    table = await eip(config, "list")
    assert "126 EIP(s) in ali (alibaba cn-hangzhou)" in table.out


async def test_alibaba_associate_to_a_nat_gateway_and_a_cut_through_eni(ali_world: FakeAliyun,
                                                                        tmp_path: Path) -> None:
    config = ali_config(tmp_path, ali_world)
    to_nat = await eip(config, "associate", "eip-spare-000", "--to", "instance_id=ngw-1,instance_type=Nat")
    assert to_nat.code == 0, to_nat.err
    assert (ali_world.eips["eip-spare-000"].instance_id, ali_world.eips["eip-spare-000"].status) == ("ngw-1", "InUse")
    moved = await eip(config, "associate", "eip-6", "--to", "instance_id=i-b,network_interface_id=eni-x")
    assert moved.code == 0, moved.err
    assert "ENI eni-x on i-c (BINDED) -> ENI eni-x on i-b (BINDED)" in moved.out
    calls = moved.out.splitlines()[0]
    assert ("DetachNetworkInterface ok" in calls, "AttachNetworkInterface ok" in calls) == (True, True), calls
    assert (ali_world.resources["eni-x"].attached_to, ali_world.eips["eip-6"].instance_id) == ("i-b", "eni-x")


async def test_alibaba_dry_run_prints_both_steps(ali_world: FakeAliyun, tmp_path: Path) -> None:
    config = ali_config(tmp_path, ali_world)
    dry = await eip(config, "associate", "eip-1", "--target", "web/web-b", "--force", "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out.splitlines() == [
        "dry run: would call UnassociateEipAddress AllocationId=eip-1 InstanceId=i-a InstanceType=EcsInstance",
        "dry run: would call AssociateEipAddress AllocationId=eip-1 InstanceId=i-b InstanceType=EcsInstance"]
    assert not [a for a in ali_world.actions() if not a.startswith("Describe")]


async def test_alibaba_associate_whose_second_step_is_throttled_leaves_the_eip_where_it_was(
        ali_world: FakeAliyun, tmp_path: Path) -> None:
    config = ali_config(tmp_path, ali_world)
    ali_world.faults["AssociateEipAddress"] = [Fault(match={"InstanceId": "i-b"}) for _ in range(500)]
    result = await eip(config, "associate", "eip-1", "--target", "web/web-b", "--force", "--timeout", "3")
    assert result.code == 1, result
    assert "Throttling.User" in result.err, result.err
    assert "eip-1 is on EcsInstance i-a again" in result.err, result.err
    ali_world.advance()
    eip1 = ali_world.eips["eip-1"]
    assert (eip1.instance_id, eip1.status) == ("i-a", "InUse")
    mutations = [e for e in ali_world.log if not e.action.startswith("Describe")]
    assert mutations[0].action == "UnassociateEipAddress"
    assert {e.query["InstanceId"] for e in mutations[1:-1]} == {"i-b"}  # throttled, retried until the deadline
    assert (mutations[-1].action, mutations[-1].query["InstanceId"]) == ("AssociateEipAddress", "i-a")


async def test_alibaba_allocate_with_tags_then_release(ali_world: FakeAliyun, tmp_path: Path) -> None:
    config = ali_config(tmp_path, ali_world)
    allocated = await eip(config, "allocate", "--tag", "eipfailover=managed", "--json")
    assert allocated.code == 0, allocated.err
    new = json.loads(allocated.out)
    assert ali_world.eips[new["allocation_id"]].tags == {"eipfailover": "managed"}
    released = await eip(config, "release", new["public_ip"])
    assert released.code == 0, released.err
    assert new["allocation_id"] not in ali_world.eips
    refused = await eip(config, "release", "eip-2")  # on the NAT gateway
    assert (refused.code, "bound to Nat ngw-1: disassociate it first" in refused.err) == (1, True), refused


# --- safety, interruptions and garbage ---
WEB_GROUP = {"name": "web", "provider": "ali", "eips": ["eip-1"], "targets": [
    {"name": "web-a", "binding": {"instance_id": "i-a"}, "checks": [{"type": "instance"}]},
    {"name": "web-b", "binding": {"instance_id": "i-b"}, "checks": [{"type": "instance"}]}]}
CUT_GROUP = {"name": "cut", "provider": "ali", "eips": ["eip-6"], "targets": [
    {"name": "cut-c", "binding": {"instance_id": "i-c", "network_interface_id": "eni-x"},
     "checks": [{"type": "instance"}]},
    {"name": "cut-b", "binding": {"instance_id": "i-b", "network_interface_id": "eni-x"},
     "checks": [{"type": "instance"}]}]}


def ali_data(tmp_path: Path, fake: FakeAliyun, groups: list[dict[str, Any]]) -> Path:
    data = {"api": {"listen": "127.0.0.1:9"},
            "providers": {"ali": {"type": "alibaba", "region": fake.region, "endpoint": fake.endpoint,
                                  "ecs_endpoint": fake.endpoint, "protocol": "http",
                                  "access_key_file": str(key_file(tmp_path)), "poll_interval": "100ms"}},
            "groups": groups}
    path = tmp_path / "review-ali.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
async def garbage_api() -> AsyncIterator[dict[str, Any]]:
    """An HTTP server where the daemon's API should be; ``answer["body"]`` is what ``GET /v1/groups/web`` gets
    (status 200)."""
    answer: dict[str, Any] = {"body": "", "port": 0}

    async def handle(_: web.Request) -> web.Response:
        return web.Response(status=200, text=answer["body"], content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    answer["port"] = runner.addresses[0][1]
    yield answer
    await runner.cleanup()


async def test_a_failed_associate_to_a_cut_through_eni_leaves_that_eni_attached_where_it_was(
        ali_world: FakeAliyun, tmp_path: Path) -> None:
    """eni-x (secondary, on i-c) carries eip-6 in cut-through mode. `eip associate eip-spare-000 --to
    network_interface_id=eni-x,instance_id=i-c` cannot succeed (one EIP per cut-through ENI): it must fail (exit 1)
    without leaving eni-x detached from i-c, where it was (the never-stranded rule: "an ENI left detached is
    re-attached where it was")."""
    config = ali_data(tmp_path, ali_world, [WEB_GROUP])
    result = await eip(config, "associate", "eip-spare-000", "--to", "network_interface_id=eni-x,instance_id=i-c")
    assert result.code == 1, result
    ali_world.advance()
    eni = ali_world.resources["eni-x"]
    assert (eni.attached_to, eni.eni_status) == ("i-c", "InUse"), (result.err, ali_world.sequence())


async def test_associating_another_eip_with_a_managed_cut_through_eni_is_refused(
        ali_world: FakeAliyun, tmp_path: Path) -> None:
    """Group `cut` manages eip-6, which rides on eni-x. Moving an unmanaged EIP onto eni-x changes eip-6 (the ENI
    is detached from its instance first), so it must be refused (exit 1, naming group cut) unless cut is in
    maintenance or --force is given."""
    config = ali_data(tmp_path, ali_world, [WEB_GROUP, CUT_GROUP])
    result = await eip(config, "associate", "eip-spare-000", "--to", "network_interface_id=eni-x,instance_id=i-b")
    assert result.code == 1, result
    assert "managed by group cut" in result.err, result.err
    assert "DetachNetworkInterface" not in ali_world.actions(), ali_world.sequence()


def two_provider_config(tmp_path: Path, ec2: Ec2World) -> Path:
    """Providers `moto` and `moto-ops` (the same account and region, e.g. two profiles); group web (on `moto`)
    manages ec2.eip."""
    provider = {"type": "aws", "region": REGION, "endpoint_url": ec2.endpoint}
    data = {"api": {"listen": "127.0.0.1:9"}, "providers": {"moto": provider, "moto-ops": provider},
            "groups": [{"name": "web", "provider": "moto", "eips": [ec2.eip], "targets": [
                {"name": "web-a", "binding": {"instance_id": ec2.instance_a}, "checks": [{"type": "instance"}]},
                {"name": "web-b", "binding": {"instance_id": ec2.instance_b}, "checks": [{"type": "instance"}]}]}]}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_a_managed_eip_is_never_released_whichever_provider_entry_is_named(ec2: Ec2World,
                                                                                 tmp_path: Path) -> None:
    """An EIP belongs to one group of the config (the config itself says so, across providers). `release` of a
    managed EIP is refused even with --force, so `eip release EIP --provider moto-ops` must be refused too (exit 1,
    naming group web)."""
    config = two_provider_config(tmp_path, ec2)
    ec2.client.disassociate_address(AssociationId=ec2.holder()["AssociationId"])  # e.g. after a bad maintenance
    result = await eip(config, "release", ec2.eip, "--provider", "moto-ops")
    assert ec2.eip in {a["AllocationId"] for a in ec2.client.describe_addresses()["Addresses"]}, result
    assert (result.code, "managed by group web" in result.err) == (1, True), result


async def test_a_managed_eip_cannot_be_disassociated_through_another_provider_entry(ec2: Ec2World,
                                                                                   tmp_path: Path) -> None:
    """`eip disassociate EIP --provider moto-ops` of the EIP group web manages must be refused (exit 1) like
    `--provider moto`; today it detaches the managed EIP without asking anything."""
    config = two_provider_config(tmp_path, ec2)
    result = await eip(config, "disassociate", ec2.eip, "--provider", "moto-ops")
    assert ec2.holder().get("InstanceId") == ec2.instance_a, result
    assert result.code == 1, result


async def test_associating_an_eip_with_the_instance_holding_a_managed_eip_is_refused(ec2: Ec2World,
                                                                                    tmp_path: Path) -> None:
    """AWS AssociateAddress documents: "If you associate an Elastic IP address with an instance that has an existing
    Elastic IP address, the existing address is disassociated from the instance". So `eip associate NEW --to
    instance_id=<web-a's instance>` detaches the EIP group web manages: it must be refused (exit 1, naming group
    web) unless web is in maintenance or --force is given. (moto does not model the
    displacement, so only the refusal is checked.)"""
    config = aws_config(tmp_path, ec2)
    spare = ec2.new_eip()
    result = await eip(config, "associate", spare, "--to", f"instance_id={ec2.instance_a}")
    assert result.code == 1, result
    assert "managed by group web" in result.err, result.err


@pytest.mark.parametrize("body", ["<html>this is not the daemon</html>", '{"maintenance": "false"}'])
async def test_a_garbled_answer_about_maintenance_is_a_refusal_not_a_traceback_or_a_pass(
        ec2: Ec2World, tmp_path: Path, garbage_api: dict[str, Any], body: str) -> None:
    """Whatever the API address answers, a change to a managed EIP goes through only if the daemon clearly says
    its group is in maintenance (`"maintenance": true`); otherwise it is refused (exit 1, `refused: ...`), with no
    traceback. A non-JSON answer, or the string "false", is no answer."""
    garbage_api["body"] = body
    config = aws_config(tmp_path, ec2, api=f"127.0.0.1:{garbage_api['port']}")
    result = await eip(config, "associate", ec2.eip, "--target", "web/web-b")
    assert "Traceback" not in result.err, result.err
    assert ec2.holder()["InstanceId"] == ec2.instance_a, result
    assert (result.code, "refused" in result.err) == (1, True), result


async def test_a_target_that_does_not_exist_is_bad_input_and_never_detaches_the_eip(ali_world: FakeAliyun,
                                                                                    tmp_path: Path) -> None:
    """`eip associate eip-1 --to instance_id=i-typo --force`: the instance does not exist. That is bad input
    (exit 2, as for an unknown EIP), and it must be found out before eip-1 is unassociated from i-a."""
    config = ali_data(tmp_path, ali_world, [WEB_GROUP])
    result = await eip(config, "associate", "eip-1", "--to", "instance_id=i-typo", "--force")
    assert "UnassociateEipAddress" not in ali_world.actions(), (result, ali_world.sequence())
    assert result.code == 2, result


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_an_interrupted_associate_does_not_leave_the_eip_detached(ali_world: FakeAliyun, tmp_path: Path,
                                                                       signal_number: int) -> None:
    """The runbook's `eip associate eip-1 --target web/web-b --force`, interrupted (Ctrl-C, `kill`, the SSH session
    dropping) after its first step (eip-1 unassociated from i-a) while its second is still being throttled. The
    daemon under SIGTERM finishes or undoes a move before it exits; the command must do the same: when it exits,
    eip-1 is on i-a again (or on i-b), never left detached."""
    config = ali_data(tmp_path, ali_world, [WEB_GROUP])
    ali_world.faults["AssociateEipAddress"] = [Fault(match={"InstanceId": "i-b"}) for _ in range(500)]
    result = await interrupted(lambda: "AssociateEipAddress" in ali_world.actions(), signal_number, "eip",
                               "associate", "eip-1", "--target", "web/web-b", "--force", "--timeout", "60", "-c",
                               str(config))
    ali_world.advance()
    eip1 = ali_world.eips["eip-1"]
    assert eip1.instance_id in ("i-a", "i-b"), (result, ali_world.sequence())


@pytest.mark.parametrize("args", [["--force"], []])
async def test_a_forced_or_unmanaged_change_does_not_depend_on_the_daemons_api_client(
        ec2: Ec2World, tmp_path: Path, args: list[str]) -> None:
    """The daemon is down and its HTTPS certificate is not readable here (another host, or a root-only file). The
    API is only needed to ask about maintenance, so `eip associate` of an unmanaged EIP, or of a managed one with
    --force (the runbook's own command), must work (exit 0)."""
    config = aws_config(tmp_path, ec2)
    data = yaml.safe_load(config.read_text())
    data["api"]["tls"] = {"cert_file": str(tmp_path / "absent" / "cert.pem"),
                          "key_file": str(tmp_path / "absent" / "key.pem")}
    config.write_text(yaml.safe_dump(data))
    which = ec2.eip if args else ec2.new_eip()
    result = await eip(config, "associate", which, "--to", f"instance_id={ec2.instance_b}", *args)
    assert result.code == 0, result
    assert ec2.holder(which)["InstanceId"] == ec2.instance_b


async def test_release_dry_run_refuses_an_eip_still_on_a_detached_cut_through_eni(ali_world: FakeAliyun,
                                                                                  tmp_path: Path) -> None:
    """eip-6 is associated (InUse, BINDED) with eni-x, which is attached to no instance: `eip list` shows it
    "ENI eni-x on no instance (BINDED)". `eip release eip-6 --dry-run` must be refused like any bound EIP (exit 1,
    "disassociate it first"), not print a ReleaseEipAddress the cloud would refuse (IncorrectEipStatus): the
    release check reads the daemon's view (an EIP whose ENI is on no instance is "detached") instead of the
    association."""
    eni = ali_world.resources["eni-x"]
    eni.attached_to, eni.eni_status = "", "Available"
    config = ali_data(tmp_path, ali_world, [WEB_GROUP])
    listed = await eip(config, "list")
    assert "ENI eni-x on no instance (BINDED)" in listed.out, listed
    dry = await eip(config, "release", "eip-6", "--dry-run")
    assert (dry.code, "disassociate it first" in dry.err) == (1, True), dry


async def test_an_eip_on_a_cut_through_eni_is_not_already_on_the_instance_itself(ali_world: FakeAliyun,
                                                                                 tmp_path: Path) -> None:
    """eip-6 is in cut-through mode on eni-x, attached to i-c. `eip associate eip-6 --to instance_id=i-c` asks for
    the EcsInstance binding (NAT on i-c's primary ENI): the command must make it so (exit 0, and the cloud then
    reports InstanceType EcsInstance on i-c), or refuse it. An EIP on a cut-through ENI attached to i-c is not on
    i-c's own ENI: it is never "already on" it."""
    config = ali_data(tmp_path, ali_world, [WEB_GROUP])
    result = await eip(config, "associate", "eip-6", "--to", "instance_id=i-c")
    ali_world.advance()
    assert "already on" not in result.out, result
    assert result.code != 0 or (ali_world.eips["eip-6"].instance_type, ali_world.eips["eip-6"].instance_id) == (
        "EcsInstance", "i-c"), (result, ali_world.eips["eip-6"])


@pytest.mark.parametrize("timeout", ["-1", "0", "nan"])
async def test_a_nonsense_timeout_is_bad_input(ec2: Ec2World, tmp_path: Path, timeout: str) -> None:
    """`--timeout` is "seconds for the change and its verification": a negative, zero or NaN value is bad input
    (exit 2, nothing sent)."""
    config = aws_config(tmp_path, ec2)
    spare = ec2.new_eip()
    result = await eip(config, "associate", spare, "--to", f"instance_id={ec2.instance_b}", "--timeout", timeout)
    assert result.code == 2, result
    assert not ec2.holder(spare).get("InstanceId"), result


async def test_an_eip_command_is_refused_while_the_daemon_is_moving_that_eip(
        fake: FakeAliyun, tmp_path: Path, health_servers: list[HealthServer]) -> None:
    """Maintenance stops automatic moves, not a move already running (one started before maintenance was switched
    on, or an operator's ``failover``, which ignores maintenance). The daemon's API reports it as
    ``failover_in_progress``. ``eip associate`` must refuse (exit 1) while that is set: two movers of one ENI
    detach and attach it against each other."""
    cut_through(fake)
    data = group_data(fake, tmp_path, health_servers)
    data["stop_timeout"] = "1s"
    data["groups"][0]["policy"]["failover_deadline"] = "60s"
    daemon, task = await started(data, tmp_path / "c.yaml")
    assert daemon.engine is not None
    runner = daemon.engine.runners["web"]
    eni = fake.resources["eni-x"]
    try:
        await eventually(lambda: all(t.health.state == "up" for t in runner.targets.values()), timeout=10)
        runner.set_maintenance(True)
        fake.faults["AttachNetworkInterface"] = [Fault(match={"InstanceId": "i-b"}) for _ in range(100000)]
        runner.request_failover(ManualRequest(to="web-b", id="by-hand"))  # `eipfailover failover web --to web-b`
        await eventually(lambda: runner.state.current is not None and eni.eni_status == "Available", timeout=10)
        cli = dict(data, api={"listen": f"127.0.0.1:{daemon.api_port}"})
        path = tmp_path / "cli.yaml"
        await asyncio.to_thread(path.write_text, yaml.safe_dump(cli))
        assert runner.state.current is not None
        result = await eip(path, "associate", "eip-1", "--target", "web/web-a")
        assert (result.code, "refused" in result.err) == (1, True), (result, eni)
    finally:
        fake.faults["AttachNetworkInterface"] = []
        daemon.engine.request_stop()
        await asyncio.wait_for(task, 60)


def _world(fake: FakeAliyun) -> None:
    """eip-1 on i-a (group web: i-a, i-b); eni-y, a secondary ENI carrying no EIP, attached to i-c; eip-9 on
    nothing."""
    for rid in ("i-a", "i-b", "i-c"):
        fake.add_resource(rid)
    fake.add_eip("eip-1", "47.1.1.1")
    fake.bind("eip-1", "i-a")
    fake.add_eni("eni-y", "10.0.0.80", attached_to="i-c")
    fake.add_eip("eip-9", "47.1.1.9")


async def test_a_failed_associate_onto_a_cut_through_eni_re_attaches_that_eni_where_it_was(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """eni-y (secondary, no EIP) is attached to i-c. `eip associate eip-9 --to network_interface_id=eni-y,
    instance_id=i-b` detaches it from i-c, puts eip-9 on it and attaches it to i-b. If that attach is throttled past
    `--timeout`, the issue's rule applies: "an ENI left detached is re-attached where it was" (README: "the
    never-stranded rule of every move"). The command must fail (exit 1) with eni-y back on i-c, not leave i-c
    without its ENI and eni-y on no instance."""
    _world(fake)
    fake.faults["AttachNetworkInterface"] = [Fault(match={"InstanceId": "i-b"}) for _ in range(1000)]
    config = ali_data(tmp_path, fake, [WEB_GROUP])
    result = await eip(config, "associate", "eip-9", "--to", "network_interface_id=eni-y,instance_id=i-b",
                       "--timeout", "3")
    fake.advance()
    eni = fake.resources["eni-y"]
    assert result.code == 1, result
    assert (eni.attached_to, eni.eni_status) == ("i-c", "InUse"), (result.err[-800:], fake.sequence(
        skip=("DescribeEipAddresses", "DescribeNetworkInterfaces")))


async def test_an_interrupt_after_the_second_step_was_sent_puts_the_eip_back_where_it_was(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """README, Operating by hand: "An interrupt (Ctrl-C, ...) during a move stops it and puts the EIP back where it
    was before the command exits (130)"; the command itself says "putting the EIP back where it was". Ctrl-C while
    AssociateEipAddress to i-b is on the wire (answered 3 s later, under the 5 s read timeout) must end with eip-1
    on i-a, where it was, and exit 130."""
    for rid in ("i-a", "i-b"):
        fake.add_resource(rid)
    fake.add_eip("eip-1", "47.1.1.1")
    fake.bind("eip-1", "i-a")
    fake.faults["AssociateEipAddress"] = [Fault(code=None, delay=3.0, match={"InstanceId": "i-b"})]
    config = ali_data(tmp_path, fake, [WEB_GROUP])
    result = await interrupted(lambda: "AssociateEipAddress" in fake.actions(), signal.SIGINT, "eip", "associate",
                               "eip-1", "--target", "web/web-b", "--force", "-c", str(config))
    fake.advance()
    assert result.code == 130, result
    assert fake.eips["eip-1"].instance_id == "i-a", (result.err[-600:], fake.sequence())


def assert_both_back_home(fake: FakeAliyun, result: Result, code: int) -> None:
    """The command exited ``code`` with eip-1 back on i-a and eni-y back on i-c, where each was."""
    fake.advance()
    eni = fake.resources["eni-y"]
    assert result.code == code, result
    assert fake.eips["eip-1"].instance_id == "i-a", result.err[-600:]
    assert (eni.attached_to, eni.eni_status) == ("i-c", "InUse"), (result.err[-800:], fake.sequence(
        skip=("DescribeEipAddresses", "DescribeNetworkInterfaces")))


async def test_a_failed_move_of_a_bound_eip_onto_a_cut_through_eni_re_attaches_that_eni_too(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """Issue 9: "an ENI left detached is re-attached where it was" (README: the never-stranded rule of every move).
    `eip associate eip-1 --to network_interface_id=eni-y,instance_id=i-b --force`, eip-1 being on i-a: the move
    detaches eni-y from i-c, unassociates eip-1 from i-a, then its AssociateEipAddress onto eni-y is throttled past
    `--timeout`. The command fails (exit 1) with eip-1 back on i-a AND eni-y back on i-c."""
    _world(fake)
    fake.faults["AssociateEipAddress"] = [Fault(match={"InstanceId": "eni-y"}) for _ in range(1000)]
    config = ali_data(tmp_path, fake, [WEB_GROUP])
    result = await eip(config, "associate", "eip-1", "--to", "network_interface_id=eni-y,instance_id=i-b",
                       "--force", "--timeout", "3")
    assert_both_back_home(fake, result, 1)


async def test_an_interrupt_of_a_bound_eips_move_onto_a_cut_through_eni_re_attaches_that_eni_too(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """README, Operating by hand: an interrupt "stops it and puts the EIP back where it was". Ctrl-C while the
    AssociateEipAddress of eip-1 onto eni-y (detached from i-c for the move) is being throttled: eip-1 ends on i-a
    and eni-y on i-c, where each was; exit 130."""
    _world(fake)
    fake.faults["AssociateEipAddress"] = [Fault(match={"InstanceId": "eni-y"}) for _ in range(1000)]
    config = ali_data(tmp_path, fake, [WEB_GROUP])
    result = await interrupted(lambda: "AssociateEipAddress" in fake.actions(), signal.SIGINT, "eip", "associate",
                               "eip-1", "--to", "network_interface_id=eni-y,instance_id=i-b", "--force", "--timeout",
                               "30", "-c", str(config))
    assert_both_back_home(fake, result, 130)


async def test_an_interrupt_of_an_eip_bound_to_nothing_leaves_it_bound_to_nothing(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """README, Operating by hand: "An interrupt ... during a move stops it and puts the EIP back where it was before
    the command exits (130)"; the command says "putting the EIP back where it was". eip-9 is bound to nothing; Ctrl-C
    while its AssociateEipAddress to i-b is on the wire (answered 3 s later): when the command exits 130, eip-9 is
    bound to nothing again."""
    _world(fake)
    fake.faults["AssociateEipAddress"] = [Fault(code=None, delay=3.0, match={"InstanceId": "i-b"})]
    config = ali_data(tmp_path, fake, [WEB_GROUP])
    result = await interrupted(lambda: "AssociateEipAddress" in fake.actions(), signal.SIGINT, "eip", "associate",
                               "eip-9", "--to", "instance_id=i-b", "-c", str(config))
    # the delayed AssociateEipAddress is answered 3 s after it was sent, whether or not the command still waits
    with suppress(AssertionError):
        await eventually(lambda: fake.eips["eip-9"].status != "Available", timeout=6)

    def settled() -> bool:
        fake.advance()
        return not fake.eips["eip-9"].pending()

    await eventually(settled, timeout=10)
    assert result.code == 130, result
    assert fake.eips["eip-9"].instance_id == "", (result.err[-600:], fake.sequence())


async def test_check_config_cloud_reads_a_large_healthy_config_within_its_budget(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """`check-config --cloud` on a healthy config must exit 0 ("cloud: every EIP, instance and ENI found"). 40
    groups of one EIP on two ECS instances each, on a cloud answering DescribeInstanceStatus in 0.2 s (a far
    region): the lookups are batched and concurrent, within the provider's one 15 s budget
    (preflight.TIMEOUT), never "cannot check" for a config with nothing wrong."""
    groups = []
    for n in range(40):
        fake.add_resource(f"i-{n}a")
        fake.add_resource(f"i-{n}b")
        fake.add_eip(f"eip-{n}", f"47.1.2.{n + 1}")
        fake.bind(f"eip-{n}", f"i-{n}a")
        groups.append({"name": f"g{n}", "provider": "ali", "eips": [f"eip-{n}"], "targets": [
            {"name": "a", "binding": {"instance_id": f"i-{n}a"}, "checks": [{"type": "instance"}]},
            {"name": "b", "binding": {"instance_id": f"i-{n}b"}, "checks": [{"type": "instance"}]}]})
    fake.faults["DescribeInstanceStatus"] = [Fault(code=None, delay=0.2) for _ in range(500)]
    config = ali_data(tmp_path, fake, groups)
    result = await run_cli("check-config", "--cloud", "-c", str(config))
    assert result.code == 0, result


async def test_check_config_cloud_says_it_cannot_check_when_an_eip_lookup_is_forbidden(
        fake: FakeAliyun, tmp_path: Path) -> None:
    """README: `check-config --cloud` exits "2 for a binding the cloud contradicts, 1 if the cloud cannot be read".
    A RAM policy without DescribeEipAddresses (403 Forbidden.RAM, a permanent error) means the EIPs could not be
    read, not that they do not exist: exit 1 with "cannot check", not exit 2 counting it as "1 binding problem(s)
    found in the cloud": only NotFound is a problem."""
    _world(fake)
    fake.faults["DescribeEipAddresses"] = [Fault(status=403, code="Forbidden.RAM",
                                                 message="User not authorized to operate on the specified resource.")]
    config = ali_data(tmp_path, fake, [WEB_GROUP])
    result = await run_cli("check-config", "--cloud", "-c", str(config))
    assert "binding problem" not in result.err, result.err
    assert result.code == 1, result
