"""AWS EC2 driver (boto3).

boto3 is synchronous: calls run in a thread pool; the provider's limits let ``max_concurrency`` reads and as many
mutating calls be in flight at once. botocore makes one attempt per request, within explicit connect and read
timeouts; the driver itself retries throttling and transient errors briefly (``max_attempts`` in all, jittered
backoff), each attempt a request of its own: through the provider's rate limit, and in a cluster fenced anew. Longer
retries belong to the failover module. ``AssociateAddress`` is always sent with ``AllowReassociation=True``, which
makes a move one atomic call: the EIP is never detached on the way. The EIPs of every group are read together, in
one ``DescribeAddresses`` whatever their number: filtered on their allocation IDs up to :data:`FILTER_VALUES` of
them, else unfiltered (every address of the region: the call is not paginated, and takes from the same request
bucket).
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from eipfailover.config import AwsProviderConfig, call_deadline
from eipfailover.errors import NotLeader, ProviderError
from eipfailover.model import Binding, EipState
from eipfailover.providers.base import Call, EipAdmin, EipRecord, InstanceState, Provider, send_check

_RETRYABLE_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError", "InternalFailure",
    "ServiceUnavailable", "Unavailable", "RequestTimeout", "RequestExpired", "IncorrectState",
    "ConcurrentTagAccess", "AuthFailure",
})
"""``AuthFailure`` included: credentials that fail at boot (clock skew, an IAM role not yet attached) often recover."""
_NOT_RETRIED_HERE = frozenset({"AuthFailure", "NoCredentials", "IncorrectState", "ConcurrentTagAccess",
                               "RequestExpired"})
"""Retryable errors the driver leaves to its caller's longer retries: they do not clear within a second."""
FILTER_VALUES = 200
"""The most values EC2 takes in one filter (its ``FilterLimitExceeded``)."""
_HEALTHY_STATUS = frozenset({"ok", "initializing", "not-applicable", "insufficient-data"})


class AwsProvider(Provider, EipAdmin):
    kind = "aws"
    operations = ("DescribeAddresses", "AssociateAddress", "DescribeInstanceStatus", "DescribeNetworkInterfaces")
    manual_operations = ("DisassociateAddress", "AllocateAddress", "ReleaseAddress", "CreateTags")
    """``CreateTags`` is what IAM checks when ``AllocateAddress`` tags the new EIP."""
    mutating = frozenset({"AssociateAddress", "DisassociateAddress", "AllocateAddress", "ReleaseAddress"})
    atomic_moves = True
    throttling = ("RequestLimitExceeded", "Throttling")
    default_limits = ((18.0, 90), (4.5, 45))
    """EC2's request-token buckets (non-mutating actions 100 tokens, 20 a second; mutating ones 50, 5 a second),
    less 10% for the account's other clients."""

    def __init__(self, name: str, config: AwsProviderConfig) -> None:
        super().__init__(name, config.rate_limit, config.max_concurrency)
        self.region = config.region
        self.config = config
        self.call_deadline = call_deadline(config)
        try:
            self.session = boto3.session.Session(profile_name=config.profile, region_name=config.region)
            self.client = self.session.client(
                "ec2",
                endpoint_url=config.endpoint_url,
                config=BotoConfig(
                    retries={"mode": "standard", "total_max_attempts": 1},
                    connect_timeout=config.connect_timeout,
                    read_timeout=config.read_timeout,
                    max_pool_connections=2 * config.max_concurrency,
                ),
            )
        except (ProfileNotFound, NoRegionError, ValueError) as exc:
            raise ProviderError(f"aws provider {name!r}: {exc}", retryable=False) from None
        # a thread for every request the limits let through: reads and mutations, max_concurrency of each
        self.executor = ThreadPoolExecutor(max_workers=2 * config.max_concurrency, thread_name_prefix=f"aws-{name}")

    @classmethod
    def from_config(cls, name: str, config: AwsProviderConfig) -> AwsProvider:
        return cls(name, config)

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.client.close)

    async def _ec2(self, operation: str, **params: Any) -> dict[str, Any]:
        """One call, with up to ``max_attempts`` attempts (each one a request: rate-limited, fenced, recorded)."""
        attempt = 1
        while True:
            try:
                return await self._attempt(operation, params)
            except ProviderError as exc:
                if attempt >= self.config.max_attempts or not exc.retryable or exc.code in _NOT_RETRIED_HERE:
                    raise
            await asyncio.sleep(random.uniform(0, min(5.0, 0.5 * 2 ** (attempt - 1))))
            attempt += 1

    async def _attempt(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        method = functools.partial(getattr(self.client, _snake(operation)), **params)

        async def call() -> dict[str, Any]:
            check = send_check()  # fenced: checked again in the thread, after any wait for a free one
            run = method if check is None else functools.partial(_if_leading, check, operation, method)
            try:
                result: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(self.executor, run)
            except (ClientError, BotoCoreError) as exc:
                raise self._error(operation, exc) from None
            except ResponseParserError as exc:  # not a BotoCoreError: an HTML page, a truncated body
                detail = str(exc).splitlines()[0][:200] if str(exc) else "ResponseParserError"
                raise ProviderError(f"EC2 {operation} in {self.region}: the answer could not be read ({detail})",
                                    retryable=True) from None
            return result

        return await self.request(operation, call)

    def _error(self, operation: str, exc: ClientError | BotoCoreError) -> ProviderError:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "Unknown"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            retryable = code in _RETRYABLE_CODES or status >= 500
            return ProviderError(
                f"EC2 {operation} in {self.region}: {code}: {err.get('Message', '')}",
                retryable=retryable, code=code,
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ProviderError(
                f"EC2 {operation}: no usable AWS credentials ({exc}); set a profile, the environment or an "
                "instance role", retryable=True, code="NoCredentials",
            )
        retryable = not isinstance(exc, ParamValidationError)
        return ProviderError(f"EC2 {operation} in {self.region}: {exc}", retryable=retryable,
                             timed_out=isinstance(exc, ReadTimeoutError | ConnectTimeoutError))

    async def read_eips(self, eips: Sequence[str]) -> dict[str, EipState]:
        wanted = set(eips)
        where = {"Filters": [{"Name": "allocation-id", "Values": list(eips)}]} if len(eips) <= FILTER_VALUES else {}
        reply = await self._ec2("DescribeAddresses", **where)
        found = {a["AllocationId"]: _eip_state(a) for a in reply.get("Addresses", [])
                 if a.get("AllocationId") in wanted}
        if eips and not found:  # none exists, or the endpoint is not EC2's: EC2 itself tells which
            if not await self._lookup("DescribeAddresses", "InvalidAllocationID.NotFound", "Addresses",
                                      AllocationIds=list(eips[:FILTER_VALUES])):
                return found
            raise ProviderError(f"EC2 DescribeAddresses in {self.region}: the answer lists none of the EIPs asked "
                                f"for (is the endpoint right?)", retryable=True)
        return found

    def not_found(self, missing: Sequence[str]) -> ProviderError:
        return ProviderError(f"EC2 DescribeAddresses in {self.region}: InvalidAllocationID.NotFound: no EIP "
                             f"{', '.join(missing)}", retryable=False, code="InvalidAllocationID.NotFound")

    async def move(self, eips: Sequence[str], to: Binding) -> None:
        where = _where(to)
        results = await asyncio.gather(
            *(self._ec2("AssociateAddress", AllocationId=eip, AllowReassociation=True, **where) for eip in eips),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # the permanent error is the one to report; the others may clear on a retry
            raise min(errors, key=lambda e: isinstance(e, ProviderError) and e.retryable)

    # --- the eip commands ---
    async def list_eips(self) -> list[EipRecord]:
        reply = await self._ec2("DescribeAddresses")  # not paginated: every address of the region at once
        return [_record(a) for a in reply.get("Addresses", []) if "AllocationId" in a]

    async def record(self, eip: str) -> EipRecord:
        await self.describe([eip])  # the not-found error
        reply = await self._ec2("DescribeAddresses", AllocationIds=[eip])
        return _record(reply["Addresses"][0])

    async def plan_move(self, eip: str, to: Binding) -> list[Call]:
        await self.describe([eip])  # a clear error for an unknown EIP, as the move would give
        return [Call("AssociateAddress", {"AllocationId": eip, **_where(to), "AllowReassociation": "true"})]

    async def home_of(self, to: Binding) -> Binding | None:
        return None  # an association moves no resource

    async def send_home(self, home: Binding) -> bool:
        return True

    async def disassociate(self, eip: str, *, dry_run: bool = False) -> list[Call]:
        reply = await self._ec2("DescribeAddresses", AllocationIds=[eip])
        association = next((a.get("AssociationId") for a in reply.get("Addresses", [])), None)
        if not association:
            return []
        call = Call("DisassociateAddress", {"AssociationId": association})
        if not dry_run:
            await self._ec2(call.operation, **call.params)
        return [call]

    async def allocate(self, tags: Mapping[str, str], *,
                       dry_run: bool = False) -> tuple[EipRecord | None, list[Call]]:
        params: dict[str, Any] = {"Domain": "vpc"}
        if tags:
            params["TagSpecifications"] = [{"ResourceType": "elastic-ip",
                                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        call = Call("AllocateAddress", {"Domain": "vpc", **{f"Tag.{k}": v for k, v in tags.items()}})
        if dry_run:
            return None, [call]
        reply = await self._ec2("AllocateAddress", **params)
        return EipRecord(reply["AllocationId"], reply.get("PublicIp", ""), "available", None, dict(tags)), [call]

    async def release(self, eip: str, *, dry_run: bool = False) -> list[Call]:
        call = Call("ReleaseAddress", {"AllocationId": eip})
        if not dry_run:
            await self._ec2(call.operation, **call.params)
        return [call]

    async def instance_state(self, binding: Binding) -> InstanceState:
        if binding.network_interface_id is not None:
            return await self._eni_state(binding.network_interface_id, binding.private_ip)
        assert binding.instance_id is not None
        return await self._instance_state(binding.instance_id)

    async def _lookup(self, operation: str, not_found: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """The items of a describe call; an empty list when the cloud says the resource does not exist."""
        try:
            reply = await self._ec2(operation, **params)
        except ProviderError as exc:
            if exc.code == not_found:
                return []
            raise
        items: list[dict[str, Any]] = reply.get(key, [])
        return items

    async def _instance_state(self, instance_id: str) -> InstanceState:
        statuses = await self._lookup("DescribeInstanceStatus", "InvalidInstanceID.NotFound", "InstanceStatuses",
                                      InstanceIds=[instance_id], IncludeAllInstances=True)
        if not statuses:
            return InstanceState(False, f"instance {instance_id} does not exist", exists=False)
        status = statuses[0]
        state = status.get("InstanceState", {}).get("Name", "unknown")
        if state != "running":
            return InstanceState(False, f"instance {instance_id} is {state}")
        for kind in ("InstanceStatus", "SystemStatus"):
            value = status.get(kind, {}).get("Status", "ok")
            if value not in _HEALTHY_STATUS:
                return InstanceState(False, f"instance {instance_id} {kind} is {value}")
        return InstanceState(True, f"instance {instance_id} is running")

    async def _eni_state(self, eni: str, private_ip: str | None) -> InstanceState:
        interfaces = await self._lookup("DescribeNetworkInterfaces", "InvalidNetworkInterfaceID.NotFound",
                                        "NetworkInterfaces", NetworkInterfaceIds=[eni])
        if not interfaces:
            return InstanceState(False, f"ENI {eni} does not exist", exists=False)
        nic = interfaces[0]
        ips = {p.get("PrivateIpAddress") for p in nic.get("PrivateIpAddresses", [])}
        if private_ip is not None and private_ip not in ips:
            return InstanceState(False, f"private IP {private_ip} is not assigned to ENI {eni}", exists=False)
        instance_id = nic.get("Attachment", {}).get("InstanceId")
        if not instance_id:
            return InstanceState(False, f"ENI {eni} is not attached to an instance (status {nic.get('Status')})")
        return await self._instance_state(instance_id)


def _record(address: dict[str, Any]) -> EipRecord:
    return EipRecord(address["AllocationId"], address.get("PublicIp", ""),
                     "associated" if address.get("AssociationId") else "available", _eip_state(address).bound_to,
                     {t["Key"]: t["Value"] for t in address.get("Tags", [])})


def _where(to: Binding) -> dict[str, str]:
    """AssociateAddress's parameters for a binding."""
    if to.network_interface_id is not None:
        where = {"NetworkInterfaceId": to.network_interface_id}
        if to.private_ip is not None:
            where["PrivateIpAddress"] = to.private_ip
        return where
    if to.instance_id is not None:
        return {"InstanceId": to.instance_id}
    raise ProviderError(f"binding {to} names no instance or ENI", retryable=False)


def _eip_state(address: dict[str, Any]) -> EipState:
    instance = address.get("InstanceId") or None
    eni = address.get("NetworkInterfaceId") or None
    bound = (
        Binding(instance_id=instance, network_interface_id=eni, private_ip=address.get("PrivateIpAddress") or None)
        if instance or eni
        else None
    )
    return EipState(allocation_id=address["AllocationId"], public_ip=address.get("PublicIp", ""), bound_to=bound)


def _if_leading(check: Callable[[], bool], operation: str, method: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if not check():
        raise NotLeader(f"{operation} not sent: the lease may have lapsed while the call waited for a thread")
    return method()


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
