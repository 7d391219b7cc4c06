"""Alibaba Cloud VPC driver (the official ``alibabacloud-vpc20160428`` SDK, its ``*_async`` methods).

Alibaba has no atomic reassociation: a move is UnassociateEipAddress, wait until the EIP is ``Available``, then
AssociateEipAddress (or AssociateEipAddressBatch for several EIPs on a NAT gateway or a multi-EIP ENI); the caller
verifies with describe until every EIP is ``InUse`` on the target. If the move fails half-way, the failover module
re-attaches the EIPs to a healthy target: an EIP is never left detached by a failover.

The SDK's own retries stay off (its async backoff blocks the event loop with ``time.sleep``) and it has no overall
deadline: every call runs under ``asyncio.timeout`` and the failover module retries with ``asyncio.sleep``. Errors
are classified by their ``code``, not their class (a throttle without ``x-acs-retry-after`` is a plain
``ClientException``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_tea_openapi.utils_models import Config as SdkConfig
from alibabacloud_vpc20160428 import models as vpc
from alibabacloud_vpc20160428.client import Client as VpcClient
from Tea.exceptions import TeaException

from eipfailover.config import AlibabaProviderConfig
from eipfailover.credentials import credential_file
from eipfailover.errors import ProviderError
from eipfailover.model import Binding, EipState
from eipfailover.providers import tea_transport
from eipfailover.providers.alibaba_auth import DefaultChainCredentials, KeyFileCredentials
from eipfailover.providers.base import InstanceState, Provider

T = TypeVar("T")
_RETRYABLE_CODES = frozenset({
    "ServiceUnavailable", "SystemBusy", "OperationConflict", "TaskConflict", "LastTokenProcessing",
    "InternalError", "UnknownError", "IncorrectEipStatus", "IncorrectHaVipStatus",
    "OperationFailed.LastTokenProcessing",
})
"""Plus every ``Throttling*`` and ``TaskConflict*`` code. ``IncorrectEipStatus`` means a transition is pending."""
_PENDING = frozenset({"Associating", "Unassociating"})
_BATCHABLE = frozenset({"Nat", "NetworkInterface"})
CREDENTIAL_NAME = "alibaba-access-key"


@dataclass(frozen=True, slots=True)
class HaVipState:
    havip_id: str
    status: str
    master_instance_id: str
    instances: tuple[str, ...]
    eip_addresses: tuple[str, ...]


class AlibabaProvider(Provider):
    kind = "alibaba"
    operations = ("DescribeEipAddresses", "AssociateEipAddress", "AssociateEipAddressBatch",
                  "UnassociateEipAddress", "DescribeHaVips", "UnassociateHaVip", "DescribeInstanceStatus")
    mutating = frozenset({"AssociateEipAddress", "AssociateEipAddressBatch", "UnassociateEipAddress",
                          "UnassociateHaVip"})

    def __init__(self, name: str, config: AlibabaProviderConfig) -> None:
        super().__init__(name)
        self.config = config
        self.region = config.region
        if config.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(config.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ProviderError(f"alibaba provider {name!r}: ca_file {config.ca_file}: "
                                    f"{getattr(exc, 'strerror', None) or exc}", retryable=False) from None
        key_file = credential_file(config.access_key_file, CREDENTIAL_NAME)
        source = KeyFileCredentials(key_file) if key_file is not None else DefaultChainCredentials()
        self.credentials = source
        self._sdk_config = {"credential": CredentialClient(provider=source), "region_id": config.region,
                            "protocol": config.protocol, "connect_timeout": int(config.connect_timeout * 1000),
                            "read_timeout": int(config.read_timeout * 1000),
                            "ca": str(config.ca_file) if config.ca_file is not None else None}
        try:
            self.vpc = VpcClient(SdkConfig(endpoint=config.endpoint, **self._sdk_config))
        except Exception as exc:  # the SDK raises plain exceptions for a bad endpoint or region
            raise ProviderError(f"alibaba provider {name!r}: {exc}", retryable=False) from None
        tea_transport.acquire()
        self._ecs: Any = None
        self._limit = asyncio.Semaphore(config.max_concurrency)
        self._call_timeout = config.connect_timeout + config.read_timeout + 1.0

    @classmethod
    def from_config(cls, name: str, config: AlibabaProviderConfig) -> AlibabaProvider:
        return cls(name, config)

    async def close(self) -> None:
        await tea_transport.release()

    # --- calls and errors ---
    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], about: str = "") -> T:
        async def guarded() -> T:
            async with self._limit:
                try:
                    async with asyncio.timeout(self._call_timeout):
                        return await call()
                except TimeoutError:
                    raise ProviderError(f"Alibaba {operation} in {self.region}: no answer within "
                                        f"{self._call_timeout:g}s", retryable=True, timed_out=True) from None
                except TeaException as exc:
                    raise self._error(operation, exc, about) from None

        return await self.request(operation, guarded)

    def _error(self, operation: str, exc: TeaException, about: str) -> ProviderError:
        code = getattr(exc, "code", None)
        status = int(getattr(exc, "status_code", 0) or 0)
        where = f" ({about})" if about else ""
        inner = getattr(exc, "inner_exception", None)
        if isinstance(inner, ProviderError):  # ours, from the credentials provider, wrapped by the SDK
            return ProviderError(f"Alibaba {operation} in {self.region}{where}: {inner}", retryable=inner.retryable,
                                 code=inner.code)
        if not code:  # transport: refused, reset, read timeout, an unparsable (HTML) answer
            detail = str(inner or getattr(exc, "message", "") or exc).splitlines()[0]
            return ProviderError(f"Alibaba {operation} in {self.region}{where}: {detail}", retryable=True,
                                 timed_out=isinstance(inner, tea_transport.TimedOut))
        code = str(code)
        retryable = (code in _RETRYABLE_CODES or code.startswith(("Throttling", "TaskConflict"))
                     or status >= 500)
        message = str(getattr(exc, "message", "") or "")
        return ProviderError(f"Alibaba {operation} in {self.region}{where}: {code}: {message}",
                             retryable=retryable, code=code)

    # --- the contract ---
    async def describe(self, eips: Sequence[str]) -> dict[str, EipState]:
        request = vpc.DescribeEipAddressesRequest(region_id=self.region, allocation_id=",".join(eips),
                                                  page_size=100)
        reply = await self._call("DescribeEipAddresses", lambda: self.vpc.describe_eip_addresses_async(request))
        items = reply.body.eip_addresses.eip_address if reply.body and reply.body.eip_addresses else []
        found = {item.allocation_id: _eip_state(item) for item in items or []}
        missing = [e for e in eips if e not in found]
        if missing:
            raise ProviderError(f"Alibaba DescribeEipAddresses in {self.region}: no EIP {', '.join(missing)}",
                                retryable=False, code="InvalidAllocationId.NotFound")
        return found

    async def move(self, eips: Sequence[str], to: Binding) -> None:
        """Unassociate what is elsewhere, wait until ``Available``, associate. Returns once the associations are
        requested (they are ``Associating`` then); the caller verifies."""
        states = await self.describe(eips)
        busy = [f"{e} is {'associating' if s.bound_to else 'unassociating'}" for e, s in states.items() if s.pending]
        if busy:
            raise ProviderError(f"EIP transition in progress: {'; '.join(busy)}", retryable=True,
                                code="IncorrectEipStatus")
        elsewhere = {e: s.bound_to for e, s in states.items() if s.bound_to is not None and not to.matches(s.bound_to)}
        await _all(self._unassociate(e, b) for e, b in elsewhere.items() if b is not None)
        if elsewhere:
            await self._wait_available(list(elsewhere))
        attach = [e for e in eips if states[e].bound_to is None or e in elsewhere]
        if len(attach) > 1 and to.instance_type in _BATCHABLE and to.private_ip is None:
            await self._associate_batch(attach, to)
        else:
            await _all(self._associate(e, to) for e in attach)

    async def _unassociate(self, eip: str, current: Binding) -> None:
        request = vpc.UnassociateEipAddressRequest(
            region_id=self.region, allocation_id=eip, instance_id=current.instance_id,
            instance_type=current.instance_type, private_ip_address=current.private_ip,
        )
        await self._call("UnassociateEipAddress", lambda: self.vpc.unassociate_eip_address_async(request),
                         f"EIP {eip} from {current}")

    async def _associate(self, eip: str, to: Binding) -> None:
        request = vpc.AssociateEipAddressRequest(
            region_id=self.region, allocation_id=eip, instance_id=to.instance_id, instance_type=to.instance_type,
            private_ip_address=to.private_ip, mode=to.mode,
        )
        await self._call("AssociateEipAddress", lambda: self.vpc.associate_eip_address_async(request),
                         f"EIP {eip} to {to}")

    async def _associate_batch(self, eips: list[str], to: Binding) -> None:
        request = vpc.AssociateEipAddressBatchRequest(
            region_id=self.region, binded_instance_id=to.instance_id, binded_instance_type=to.instance_type,
            instance_ids=eips, mode="MULTI_BINDED" if to.instance_type == "NetworkInterface" else None,
        )
        await self._call("AssociateEipAddressBatch", lambda: self.vpc.associate_eip_address_batch_async(request),
                         f"EIPs {', '.join(eips)} to {to}")

    async def _wait_available(self, eips: list[str]) -> None:
        """Poll until every EIP is detached and settled (``Available``); the caller's deadline bounds this."""
        while True:
            states = await self.describe(eips)
            if all(s.bound_to is None and not s.pending for s in states.values()):
                return
            await asyncio.sleep(self.config.poll_interval)

    async def instance_state(self, binding: Binding) -> InstanceState:
        if binding.instance_type not in (None, "EcsInstance"):
            raise ProviderError(f"the instance check reads ECS instances; {binding} is a {binding.instance_type} "
                                f"(use a havip check or a tcp/http check)", retryable=False)
        ecs, models = self._ecs_client()
        request = models.DescribeInstanceStatusRequest(region_id=self.region, instance_id=[binding.instance_id])
        reply = await self._call("DescribeInstanceStatus", lambda: ecs.describe_instance_status_async(request),
                                 f"instance {binding.instance_id}")
        statuses = reply.body.instance_statuses.instance_status if reply.body.instance_statuses else []
        status = next((s.status for s in statuses or [] if s.instance_id == binding.instance_id), None)
        if status is None:
            return InstanceState(False, f"instance {binding.instance_id} does not exist")
        return InstanceState(status == "Running", f"instance {binding.instance_id} is {status}")

    def _ecs_client(self) -> tuple[Any, Any]:
        if self._ecs is None:
            try:
                from alibabacloud_ecs20140526 import models
                from alibabacloud_ecs20140526.client import Client as EcsClient
            except ImportError:
                raise ProviderError("the instance check on Alibaba Cloud needs the ECS SDK: "
                                    "pip install 'eipfailover[alibaba-ecs]'", retryable=False) from None
            self._ecs = (EcsClient(SdkConfig(endpoint=self.config.ecs_endpoint, **self._sdk_config)), models)
        return self._ecs  # type: ignore[no-any-return]

    async def describe_havip(self, havip_id: str) -> HaVipState:
        request = vpc.DescribeHaVipsRequest(region_id=self.region, filter=[
            vpc.DescribeHaVipsRequestFilter(key="HaVipId", value=[havip_id])])
        reply = await self._call("DescribeHaVips", lambda: self.vpc.describe_ha_vips_async(request),
                                 f"HaVip {havip_id}")
        havips = reply.body.ha_vips.ha_vip if reply.body.ha_vips else []
        item = next((h for h in havips or [] if h.ha_vip_id == havip_id), None)
        if item is None:
            raise ProviderError(f"Alibaba DescribeHaVips in {self.region}: no HaVip {havip_id}", retryable=False,
                                code="InvalidHaVipId.NotFound")
        instances = item.associated_instances.associated_instance if item.associated_instances else None
        eips = item.associated_eip_addresses.associated_eip_addresse if item.associated_eip_addresses else None
        return HaVipState(havip_id, item.status or "", item.master_instance_id or "", tuple(instances or ()),
                          tuple(eips or ()))


    async def unassociate_havip(self, havip_id: str, instance_id: str, *, force: bool) -> None:
        """Detach an instance from a HaVip; ``force`` is needed to detach its master."""
        request = vpc.UnassociateHaVipRequest(region_id=self.region, ha_vip_id=havip_id, instance_id=instance_id,
                                              instance_type="EcsInstance", force="True" if force else "False")
        await self._call("UnassociateHaVip", lambda: self.vpc.unassociate_ha_vip_async(request),
                         f"instance {instance_id} from HaVip {havip_id}")


async def _all(calls: Iterable[Awaitable[None]]) -> None:
    """Run ``calls`` together and return only when every one has its answer: a move never returns (or raises)
    while one of its own calls is still changing the cloud. The first permanent error wins, else the first."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise min(errors, key=lambda e: isinstance(e, ProviderError) and e.retryable)


def _eip_state(item: Any) -> EipState:
    bound = None
    if item.instance_id:
        bound = Binding(instance_id=item.instance_id, instance_type=item.instance_type or None,
                        private_ip=item.private_ip_address or None, mode=item.mode or None)
    return EipState(allocation_id=item.allocation_id, public_ip=item.ip_address or "", bound_to=bound,
                    pending=item.status in _PENDING)
