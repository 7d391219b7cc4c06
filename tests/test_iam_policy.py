"""config/iam/aws-policy.json against the calls the AWS driver really makes (moto has no IAM): each EC2 request of
a failover, captured on the wire, is evaluated against the policy's statements, with the tag condition checked on
every resource the request names (the EIP, and the instance or ENI it goes to), as IAM does for AssociateAddress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from eipfailover import failover
from eipfailover.config import AwsProviderConfig
from eipfailover.model import Binding
from eipfailover.providers.aws import AwsProvider

from .conftest import REGION, Ec2World

POLICY = json.loads((Path(__file__).resolve().parent.parent / "config" / "iam" / "aws-policy.json").read_text())
TAG = {"Key": "eipfailover", "Value": "managed"}


def resource_tags(ec2: Ec2World, params: dict[str, str]) -> list[dict[str, str]]:
    """The tags of each resource a request names, as IAM sees them."""
    tagged: list[list[dict[str, str]]] = []
    if "AllocationId" in params:
        tagged.append(ec2.client.describe_addresses(AllocationIds=[params["AllocationId"]])["Addresses"][0]
                      .get("Tags", []))
    if "InstanceId" in params:
        reservation = ec2.client.describe_instances(InstanceIds=[params["InstanceId"]])["Reservations"][0]
        tagged.append(reservation["Instances"][0].get("Tags", []))
    if "NetworkInterfaceId" in params:
        nic = ec2.client.describe_network_interfaces(NetworkInterfaceIds=[params["NetworkInterfaceId"]])
        tagged.append(nic["NetworkInterfaces"][0].get("TagSet", []))
    return [{t["Key"]: t["Value"] for t in tags} for tags in tagged]


def allowed(action: str, tags: list[dict[str, str]], context: dict[str, str] | None = None, *,
            daemon_only: bool = False) -> bool:
    """Allowed by some Allow statement whose StringEquals conditions hold: those on aws:ResourceTag for every
    resource, the others (``ec2:CreateAction``) in the request's ``context``. ``daemon_only``: without the
    optional statements of the ``eip`` commands (``Sid`` ``EipCommands*``)."""
    for statement in POLICY["Statement"]:
        if daemon_only and statement["Sid"].startswith("EipCommands"):
            continue
        if statement["Effect"] != "Allow" or f"ec2:{action}" not in statement["Action"]:
            continue
        conditions = statement.get("Condition", {})
        assert set(conditions) <= {"StringEquals"}, "this evaluator knows StringEquals only"
        equals = conditions.get("StringEquals", {})
        wanted = {k.removeprefix("aws:ResourceTag/"): v for k, v in equals.items() if k.startswith("aws:ResourceTag/")}
        keys = {k: v for k, v in equals.items() if not k.startswith("aws:ResourceTag/")}
        if all(resource.get(k) == v for resource in tags for k, v in wanted.items()) and all(
                (context or {}).get(k) == v for k, v in keys.items()):
            return True
    return False


class Wire:
    """Every EC2 request the driver sends: its action and parameters."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []

    def __call__(self, request: Any, **_: Any) -> None:
        params = {k: v[0] for k, v in parse_qs(request.body.decode() if isinstance(request.body, bytes)
                                                else request.body).items()}
        self.requests.append((params.pop("Action"), params))


@pytest.mark.parametrize("to", ["instance", "eni"])
async def test_a_failover_needs_only_what_the_policy_grants_to_tagged_resources(ec2: Ec2World, to: str) -> None:
    ec2.client.create_tags(Resources=[ec2.eip, ec2.instance_a, ec2.instance_b, ec2.eni_b], Tags=[TAG])
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=ec2.endpoint))
    wire = Wire()
    provider.client.meta.events.register("before-send.ec2", wire)
    target = Binding(instance_id=ec2.instance_b) if to == "instance" else Binding(network_interface_id=ec2.eni_b,
                                                                                  private_ip=ec2.ip_b)
    try:
        outcome = await failover.execute(provider, [ec2.eip], target, deadline=10)
        assert outcome.ok, outcome.error
        await provider.instance_state(target)  # the instance check's calls too
    finally:
        await provider.close()
    actions = {action for action, _ in wire.requests}
    assert "AssociateAddress" in actions
    for action, params in wire.requests:
        assert allowed(action, resource_tags(ec2, params), daemon_only=True), (action, params)


async def test_the_tag_condition_refuses_an_untagged_eip_or_target(ec2: Ec2World) -> None:
    associate = {"AllocationId": ec2.eip, "InstanceId": ec2.instance_b}
    assert not allowed("AssociateAddress", resource_tags(ec2, associate))  # nothing tagged
    ec2.client.create_tags(Resources=[ec2.eip], Tags=[TAG])
    assert not allowed("AssociateAddress", resource_tags(ec2, associate))  # the target is not tagged
    ec2.client.create_tags(Resources=[ec2.instance_b], Tags=[TAG])
    assert allowed("AssociateAddress", resource_tags(ec2, associate))
    # the daemon's statements grant nothing more than the daemon calls
    assert not allowed("DisassociateAddress", resource_tags(ec2, associate), daemon_only=True)


async def test_the_eip_commands_need_only_the_optional_statements_on_tagged_eips(ec2: Ec2World) -> None:
    """Allocate with the tag, move, disassociate and release, each request evaluated as IAM would: tagging on
    creation needs ``ec2:CreateTags`` with ``ec2:CreateAction``; disassociation and release need the tag."""
    ec2.client.create_tags(Resources=[ec2.instance_b], Tags=[TAG])
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=ec2.endpoint))
    wire = Wire()
    provider.client.meta.events.register("before-send.ec2", wire)
    try:
        record, _ = await provider.allocate({"eipfailover": "managed"})
        assert record is not None
        (eip_tags,) = resource_tags(ec2, {"AllocationId": record.allocation_id})  # as the cloud tagged it
        assert (await failover.execute(provider, [record.allocation_id], Binding(instance_id=ec2.instance_b),
                                       deadline=10)).ok
        association = ec2.holder(record.allocation_id)["AssociationId"]
        assert await provider.disassociate(record.allocation_id)
        await provider.release(record.allocation_id)
    finally:
        await provider.close()
    sent = [action for action, _ in wire.requests]
    assert {"AllocateAddress", "DisassociateAddress", "ReleaseAddress"} <= set(sent)
    managed = [eip_tags]  # the new EIP's tags (the target's are the same), as IAM sees them
    for action, params in wire.requests:
        if action == "AllocateAddress":
            assert allowed(action, [])
            assert allowed("CreateTags", [], {"ec2:CreateAction": "AllocateAddress"})  # its tag specification
            assert not allowed("CreateTags", [], {"ec2:CreateAction": "RunInstances"})
        elif action == "DisassociateAddress":  # IAM checks the EIP the association belongs to
            assert params["AssociationId"] == association
            assert allowed(action, managed)
            assert not allowed(action, [{}])
        elif action in ("AssociateAddress", "ReleaseAddress"):
            assert allowed(action, managed * 2)
            assert not allowed(action, [{}])
        else:
            assert action.startswith("Describe"), action
            assert allowed(action, [])
