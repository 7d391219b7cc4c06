"""``eipfailover eip ...`` end to end, as a subprocess: on moto (AWS) and on the fake VPC API (Alibaba, with a NAT
gateway, an ENI in MULTI_BINDED mode, a HaVip and a cut-through ENI), the refusals, ``--dry-run``, the JSON shape
of ``list --json`` (validated against docs/eip-list.schema.json), and an Alibaba associate whose second step is
throttled past its deadline, which leaves the EIP where it was."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from eipfailover import eipcmd

from .api_daemon import running_daemon
from .conftest import REGION, Ec2World, HealthServer
from .fake_aliyun import FakeAliyun, Fault, key_file

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "eip-list.schema.json"


@dataclass
class Result:
    code: int
    out: str
    err: str


async def eip(config: Path, *args: str) -> Result:
    """``eipfailover eip ARGS -c CONFIG`` as a subprocess (the test's event loop keeps serving the fakes)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "eipfailover", "eip", *args, "-c",
                                                str(config), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


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
    assert "eip-1 is back on EcsInstance i-a" in result.err, result.err
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
