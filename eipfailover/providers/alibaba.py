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
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_tea_openapi.utils_models import Config as SdkConfig
from alibabacloud_vpc20160428 import models as vpc
from alibabacloud_vpc20160428.client import Client as VpcClient
from Tea.exceptions import TeaException

from eipfailover import ratelimit
from eipfailover.config import AlibabaProviderConfig, call_deadline
from eipfailover.credentials import credential_file
from eipfailover.errors import ProviderError
from eipfailover.model import Binding, EipState
from eipfailover.providers import tea_transport
from eipfailover.providers.alibaba_auth import DefaultChainCredentials, KeyFileCredentials
from eipfailover.providers.base import (
    Call,
    Coalescer,
    EipAdmin,
    EipRecord,
    InstanceState,
    Provider,
    consume,
    hedged,
)

T = TypeVar("T")
_RETRYABLE_CODES = frozenset({
    "ServiceUnavailable", "SystemBusy", "OperationConflict", "TaskConflict", "LastTokenProcessing",
    "InternalError", "UnknownError", "IncorrectEipStatus", "IncorrectHaVipStatus",
    "OperationFailed.LastTokenProcessing", "InvalidOperation.InvalidEcsState", "InvalidOperation.InvalidEniState",
})
"""Plus every ``Throttling*`` and ``TaskConflict*`` code. ``IncorrectEipStatus`` means a transition is pending;
``InvalidOperation.InvalidEcsState`` an instance neither running nor stopped (stopping, starting: it will be)."""
_PENDING = frozenset({"Associating", "Unassociating"})
_BATCHABLE = frozenset({"Nat", "NetworkInterface"})
ENI_IDS_PER_CALL = 100  # DescribeNetworkInterfaces takes NetworkInterfaceId.1 to .100
EIP_IDS_PER_CALL = 50  # DescribeEipAddresses takes up to 50 comma-separated AllocationIds
SECOND_STEP_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.5)
"""Seconds (then jittered down to half) between sends of a refused second step: short, as the EIP is detached."""
BACKUP_AFTER = 0.5
"""Seconds a second-step call may go unanswered before a second one backs it up (if the EIP is still detached)."""
_UNKNOWN_OUTCOME = frozenset({"InternalError", "UnknownError", "ServiceUnavailable"})
"""Codes after which a call may or may not have been carried out."""
DETACH_RESEND = 2.0
"""Seconds an ENI may stay ``Detaching`` before the detach is sent again."""
CREDENTIAL_NAME = "alibaba-access-key"


@dataclass(frozen=True, slots=True)
class HaVipState:
    havip_id: str
    status: str
    master_instance_id: str
    instances: tuple[str, ...]
    eip_addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EniState:
    """An ENI as ECS describes it: ``status`` ``Available``, ``Attaching``, ``InUse``, ``Detaching``; ``kind``
    ``Primary`` (an instance's own) or ``Secondary``."""

    eni_id: str
    status: str
    kind: str
    instance_id: str | None
    private_ips: tuple[str, ...]
    """The primary private IP first."""

    @property
    def pending(self) -> bool:
        return self.status in ("Attaching", "Detaching")


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a move does, in this order: detach the ENI, unassociate EIPs from where they are, associate the rest
    (in one batch or one by one), attach the ENI."""

    detach: tuple[str, str] | None = None  # (ENI, instance)
    unassociate: Mapping[str, Binding] = field(default_factory=dict)
    associate: tuple[str, ...] = ()
    associate_to: Binding | None = None
    batch: bool = False
    attach: tuple[str, str] | None = None  # (ENI, instance)


class AlibabaProvider(Provider, EipAdmin):
    kind = "alibaba"
    operations = ("DescribeEipAddresses", "AssociateEipAddress", "AssociateEipAddressBatch",
                  "UnassociateEipAddress", "DescribeHaVips", "UnassociateHaVip", "DescribeInstanceStatus",
                  "DescribeNetworkInterfaces", "AttachNetworkInterface", "DetachNetworkInterface")
    manual_operations = ("AllocateEipAddress", "ReleaseEipAddress")
    mutating = frozenset({"AssociateEipAddress", "AssociateEipAddressBatch", "UnassociateEipAddress",
                          "UnassociateHaVip", "AttachNetworkInterface", "DetachNetworkInterface",
                          "AllocateEipAddress", "ReleaseEipAddress"})
    ECS_OPERATIONS: ClassVar[frozenset[str]] = frozenset({
        "DescribeInstanceStatus", "DescribeNetworkInterfaces", "AttachNetworkInterface", "DetachNetworkInterface"})
    """The operations of the ECS API (the others are VPC's)."""

    attaching = frozenset({"AssociateEipAddress", "AssociateEipAddressBatch", "AttachNetworkInterface"})
    throttling = ("Throttling",)
    default_limits = ((8.0, 100), (1.6, 20))
    """Alibaba allows DescribeEipAddresses 600 calls a minute and AssociateEipAddress 120 (its EIP quotas page):
    no minute here can exceed 580 and 116."""

    def __init__(self, name: str, config: AlibabaProviderConfig) -> None:
        super().__init__(name, config.rate_limit, config.max_concurrency)
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
        self._region_eips: int | None = None
        """The number of EIPs in the region, when last seen (to read the groups' EIPs in the fewest calls)."""
        self._polls = Coalescer(lambda eips: self._describe_eips(eips, strict=False), self.limits.reads)
        """The polls of moves in progress, batched like :meth:`describe` (the EIPs as the VPC API reports them)."""
        self._call_timeout = self.call_deadline = call_deadline(config)

    @classmethod
    def from_config(cls, name: str, config: AlibabaProviderConfig) -> AlibabaProvider:
        return cls(name, config)

    async def close(self) -> None:
        await tea_transport.release()

    # --- calls and errors ---
    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], about: str = "") -> T:
        async def guarded() -> T:
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

    def _listed(self, reply: Any, operation: str, container: str, item: str) -> list[Any]:
        """The items of a describe answer. An answer without the list at all is not the API's (a wrong endpoint, a
        proxy's page): a retryable error, never "nothing there"."""
        body = getattr(reply, "body", None)
        holder = getattr(body, container, None) if body is not None else None
        if holder is None:
            raise ProviderError(f"Alibaba {operation} in {self.region}: the answer has no "
                                f"{container.replace('_', ' ')} (is the endpoint right?)", retryable=True)
        return list(getattr(holder, item, None) or [])

    # --- the contract ---
    async def read_eips(self, eips: Sequence[str]) -> dict[str, EipState]:
        """An EIP in cut-through mode is where its ENI is: on the instance the ENI is attached to, in transition
        while the ENI is attaching or detaching, and detached while the ENI is on no instance."""
        found = await self._describe_eips(eips, strict=False)
        enis = await self._enis_of(found.values())
        return {e: _through(s, enis) for e, s in found.items()}

    def not_found(self, missing: Sequence[str]) -> ProviderError:
        return ProviderError(f"Alibaba DescribeEipAddresses in {self.region}: no EIP {', '.join(missing)}",
                             retryable=False, code="InvalidAllocationId.NotFound")

    async def _describe_eips(self, eips: Sequence[str], *, strict: bool = True) -> dict[str, EipState]:
        """The EIPs as the VPC API reports them (an EIP in cut-through mode on its ENI); with ``strict``, a missing
        one is an error. By their IDs, 50 a call; or, when that takes more calls, by reading every EIP of the
        region, 100 a page, then those not seen (the pages shifted while read) by their IDs. The region's size is
        learnt from a first page, the first time, and again whenever the pages are read."""
        found: dict[str, EipState] = {}
        if len(eips) > EIP_IDS_PER_CALL and (self._region_eips is None
                                             or _pages(self._region_eips, 100) < _pages(len(eips), EIP_IDS_PER_CALL)):
            wanted = set(eips)
            found = {item.allocation_id: _eip_state(item) for item in await self._every_eip(
                lambda total: _pages(total, 100) < _pages(len(eips), EIP_IDS_PER_CALL)) if item.allocation_id in wanted}
        rest = [e for e in eips if e not in found]
        for chunk in (rest[i:i + EIP_IDS_PER_CALL] for i in range(0, len(rest), EIP_IDS_PER_CALL)):
            request = vpc.DescribeEipAddressesRequest(region_id=self.region, allocation_id=",".join(chunk),
                                                      page_size=100)
            reply = await self._call("DescribeEipAddresses",
                                     lambda r=request: self.vpc.describe_eip_addresses_async(r))  # type: ignore[misc]
            items = self._listed(reply, "DescribeEipAddresses", "eip_addresses", "eip_address")
            found.update({item.allocation_id: _eip_state(item) for item in items})
        missing = [e for e in eips if e not in found]
        if missing and strict:
            raise self.not_found(missing)
        return found

    async def _enis_of(self, states: Iterable[EipState]) -> dict[str, EniState]:
        ids = sorted({s.bound_to.instance_id for s in states if _cut_through(s) and s.bound_to is not None
                      and s.bound_to.instance_id is not None})
        return await self.describe_enis(ids) if ids else {}

    async def describe_enis(self, eni_ids: Sequence[str]) -> dict[str, EniState]:
        """The ENIs that exist among ``eni_ids`` (ECS DescribeNetworkInterfaces, 100 IDs a call)."""
        found: dict[str, EniState] = {}
        for chunk in (eni_ids[i:i + ENI_IDS_PER_CALL] for i in range(0, len(eni_ids), ENI_IDS_PER_CALL)):
            found.update(await self._describe_enis(chunk))
        return found

    async def _describe_enis(self, eni_ids: Sequence[str]) -> dict[str, EniState]:
        ecs, models = self._ecs_client()
        request = models.DescribeNetworkInterfacesRequest(region_id=self.region, network_interface_id=list(eni_ids),
                                                          max_results=ENI_IDS_PER_CALL)
        reply = await self._call("DescribeNetworkInterfaces",
                                 lambda: ecs.describe_network_interfaces_async(request), f"ENI {', '.join(eni_ids)}")
        found = {}
        for item in self._listed(reply, "DescribeNetworkInterfaces", "network_interface_sets",
                                 "network_interface_set"):
            ips = sorted(item.private_ip_sets.private_ip_set if item.private_ip_sets else [],
                         key=lambda p: not p.primary)
            found[item.network_interface_id] = EniState(
                item.network_interface_id, item.status or "", item.type or "", item.instance_id or None,
                tuple(p.private_ip_address for p in ips) or ((item.private_ip_address,) if item.private_ip_address
                                                             else ()))
        return found

    async def validate(self, bindings: Mapping[str, Binding]) -> list[str]:
        """Every ENI a binding names exists, and suits the binding: cut-through and MULTI_BINDED modes need a
        secondary ENI, NAT mode one of the ENI's private IPs."""
        named = {key: b.network_interface_id or b.instance_id for key, b in bindings.items()
                 if b.network_interface_id is not None or b.instance_type == "NetworkInterface"}
        if not named:
            return []
        enis = await self.describe_enis(sorted({e for e in named.values() if e is not None}))
        problems = []
        for key, eni_id in named.items():
            binding, eni = bindings[key], enis.get(eni_id or "")
            mode = binding.mode or "NAT"
            if eni is None:
                problems.append(f"{key}: ENI {eni_id} does not exist in {self.region}")
            elif mode != "NAT" and eni.kind != "Secondary":
                owner = eni.instance_id or "no instance"
                problems.append(f"{key}: ENI {eni_id} is a {eni.kind.lower()} ENI (of {owner}): {mode} mode needs "
                                f"a secondary ENI")
            elif mode == "NAT" and binding.private_ip not in eni.private_ips:
                problems.append(f"{key}: {binding.private_ip} is not a private IP of ENI {eni_id} "
                                f"({', '.join(eni.private_ips) or 'none'})")
        return problems

    async def move(self, eips: Sequence[str], to: Binding) -> None:
        """Returns once the last step is requested (the EIPs are ``Associating``, or the ENI ``Attaching``); the
        caller verifies. A cut-through ENI is detached first (and waited for), then its EIP associated if it is not,
        then the ENI attached to ``to``'s instance."""
        plan = await self._plan(eips, to)
        if plan.detach is None and not plan.unassociate:
            await self._steps(plan)
            return
        # two steps: the token of the call that attaches again is taken before anything is detached, so that a
        # mass move never has more EIPs detached than the rate limit lets it attach again at once
        await self.limits.mutations.acquire(slot=False)
        with ratelimit.prepaid(self.limits.mutations, self.attaching, slot=False):
            await self._steps(plan)

    async def _steps(self, plan: _Plan) -> None:
        if plan.detach is not None:
            await self._detach(*plan.detach)
        try:
            await self._carry_out(plan)
        except ProviderError as exc:
            # retryable: the caller retries the move (which attaches the ENI), or secures it at its deadline;
            # permanent: nothing will attach the ENI to ``to``, so it goes back where it was
            if plan.detach is None or exc.retryable:
                raise
            await self._eni_call("AttachNetworkInterface", *plan.detach)
            raise ProviderError(f"{exc}; ENI {plan.detach[0]} re-attached to {plan.detach[1]}", retryable=False,
                                code=exc.code) from None

    async def _carry_out(self, plan: _Plan) -> None:
        """A plan's steps after the ENI's detachment."""
        if plan.unassociate:
            try:
                await _all(self._unassociate(e, b) for e, b in plan.unassociate.items())
            except ProviderError as exc:  # the answer lost, the call perhaps carried out: look before retrying
                if not exc.retryable or not _lost(exc):
                    raise
                states = await self._poll(list(plan.unassociate), _settled)
                if any(s.bound_to is not None for s in states.values()):
                    raise
            await self._wait_eips(list(plan.unassociate), associated=False)
        if plan.associate and plan.associate_to is not None:
            if plan.unassociate or plan.detach is not None or any(e not in plan.unassociate for e in plan.associate):
                await self._second_step(plan.associate, plan.associate_to, plan.batch)
            if plan.attach is not None:  # the EIP is on the ENI before the ENI is on the instance
                await self._wait_eips(list(plan.associate), associated=True)
        if plan.attach is not None:
            await self._eni_call("AttachNetworkInterface", *plan.attach)

    async def _plan(self, eips: Sequence[str], to: Binding) -> _Plan:
        states = await self._poll(list(eips))
        busy = [f"{e} is {'associating' if s.bound_to else 'unassociating'}" for e, s in states.items() if s.pending]
        if busy:
            raise ProviderError(f"EIP transition in progress: {'; '.join(busy)}", retryable=True,
                                code="IncorrectEipStatus")
        if to.network_interface_id is None:
            return _plan_association(eips, states, to)
        eni = (await self.describe_enis([to.network_interface_id])).get(to.network_interface_id)
        if eni is None:
            raise ProviderError(f"Alibaba DescribeNetworkInterfaces in {self.region}: no ENI "
                                f"{to.network_interface_id}", retryable=False, code="InvalidEniId.NotFound")
        if eni.status == "Attaching":  # (one stuck Detaching is detached again: the documented remedy)
            raise ProviderError(f"ENI {eni.eni_id} is attaching", retryable=True,
                                code="InvalidOperation.InvalidEniState")
        plan = _plan_eni_move(eips, states, to, eni)
        if plan.associate:
            others = sorted(set(await self._eips_on(eni.eni_id)) - set(eips))
            if others:  # refused before the ENI is detached: its EIP would lose its instance for nothing
                raise ProviderError(f"ENI {eni.eni_id} already carries {', '.join(others)}: a cut-through ENI takes "
                                    f"one EIP", retryable=False, code="Mode.NotSupport")
        return plan

    async def _eips_on(self, eni_id: str) -> list[str]:
        request = vpc.DescribeEipAddressesRequest(region_id=self.region, associated_instance_id=eni_id,
                                                  associated_instance_type="NetworkInterface", page_size=100)
        reply = await self._call("DescribeEipAddresses", lambda: self.vpc.describe_eip_addresses_async(request),
                                 f"EIPs on {eni_id}")
        return [item.allocation_id for item in self._listed(reply, "DescribeEipAddresses", "eip_addresses",
                                                              "eip_address")]

    async def _eni_call(self, operation: str, eni: str, instance: str) -> None:
        ecs, models = self._ecs_client()
        method = "attach_network_interface_async" if operation == "AttachNetworkInterface" \
            else "detach_network_interface_async"
        request = getattr(models, f"{operation}Request")(region_id=self.region, network_interface_id=eni,
                                                         instance_id=instance)
        verb = "to" if operation == "AttachNetworkInterface" else "from"
        await self._call(operation, lambda: getattr(ecs, method)(request), f"ENI {eni} {verb} {instance}")

    async def _detach(self, eni_id: str, instance: str) -> None:
        """Detach the ENI and poll until it is ``Available``, sending the detach again every
        :data:`DETACH_RESEND` seconds while it is ``Detaching``: an instance whose OS does not answer (a failed
        instance: the very case of a failover) leaves it so until the request is re-sent, as ECS documents. The
        caller's deadline bounds this."""
        await self._eni_call("DetachNetworkInterface", eni_id, instance)
        sent = time.monotonic()
        while True:
            await asyncio.sleep(self.config.poll_interval)
            eni = (await self.describe_enis([eni_id])).get(eni_id)
            if eni is None:
                raise ProviderError(f"ENI {eni_id} disappeared", retryable=False, code="InvalidEniId.NotFound")
            if eni.status == "Available":
                return
            if eni.status == "Detaching" and time.monotonic() - sent >= DETACH_RESEND:
                await self._eni_call("DetachNetworkInterface", eni_id, eni.instance_id or instance)
                sent = time.monotonic()

    async def _wait_eips(self, eips: list[str], *, associated: bool) -> None:
        """Poll until every EIP has settled, associated or not (waiting for them to be detached, every
        ``poll_interval / 4``: each poll missed then is downtime). The caller's deadline bounds this."""
        interval = self.config.poll_interval if associated else self.config.poll_interval / 4
        await self._poll(eips, lambda states: all((s.bound_to is not None) == associated and not s.pending
                                                  for s in states.values()), interval)

    async def _landed(self, eips: list[str], to: Binding) -> bool:
        """Whether every EIP is on ``to`` once none is in transition (a refusal may be an earlier send's doing)."""
        states = await self._poll(eips, _settled)
        return all(_on(state, to) for state in states.values())

    async def _poll(self, eips: list[str], done: Callable[[dict[str, EipState]], bool] = lambda _: True,
                    interval: float | None = None) -> dict[str, EipState]:
        """Describe ``eips`` every ``interval`` (default ``poll_interval / 4``: the EIPs may be detached, or a
        decision waits on the answer) until an answer is ``done`` (by default the first). A describe that fails
        retryably, or is slow, neither ends nor holds up the poll (see :func:`hedged`); a permanent error is raised."""
        answer: dict[str, EipState] = {}
        failed: list[ProviderError] = []

        def accept(outcome: dict[str, EipState] | Exception) -> bool:
            if isinstance(outcome, ProviderError) and outcome.retryable:
                return False
            if isinstance(outcome, Exception):
                failed.append(outcome if isinstance(outcome, ProviderError) else ProviderError(
                    f"Alibaba DescribeEipAddresses in {self.region}: {outcome!r}", retryable=True))
                return True
            answer.update(outcome)
            return done(outcome)

        await hedged(lambda: self._polled(eips), interval or self.config.poll_interval / 4, accept)
        if failed:
            raise failed[0]
        return answer

    async def _polled(self, eips: list[str]) -> dict[str, EipState]:
        found = await self._polls.read(eips)
        missing = [e for e in eips if e not in found]
        if missing:
            raise self.not_found(missing)
        return {e: found[e] for e in eips}

    async def _second_step(self, eips: tuple[str, ...], to: Binding, batch: bool) -> None:
        """Associate EIPs that are detached: every second now is downtime. A retryable refusal (throttling, a
        transition still settling) is answered by sending again at once and often (:data:`SECOND_STEP_BACKOFF`),
        with no describe in between; only where the answer was lost (no answer, a dropped connection, an
        unparsable or internal-error reply) does a describe come first, since the call may have gone through.
        Returns once every EIP is associating or on ``to``; the caller's deadline bounds this."""
        left = list(eips)
        unknown = False
        attempt = 0
        while True:
            try:
                if unknown:  # the first answer of describes sent every poll_interval / 4
                    states = await self._poll(left)
                    left = [e for e in left if not _on(states[e], to)]
                    busy = [e for e in left if states[e].pending]
                    if not left:
                        return
                    if busy:  # still unassociating: sending now would only be refused
                        raise ProviderError(f"EIP transition in progress: {', '.join(busy)}", retryable=True,
                                            code="IncorrectEipStatus")
                await self._send_backed(left, to, batch)
                return
            except ProviderError as exc:
                if not exc.retryable:
                    if attempt == 0:
                        raise
                    # refused after a resend: perhaps because an earlier send went through after all
                    if await self._landed(left, to):
                        return
                    raise
                # refused as not Available: an earlier send (answer lost, or held up on the way) may have landed
                unknown = len(left) > 1 or _lost(exc) or exc.code == "IncorrectEipStatus"
            await asyncio.sleep(SECOND_STEP_BACKOFF[min(attempt, len(SECOND_STEP_BACKOFF) - 1)] *
                                random.uniform(0.5, 1.0))
            attempt += 1

    async def _send_backed(self, eips: list[str], to: Binding, batch: bool) -> None:
        """Send the association once. If it has no answer after :data:`BACKUP_AFTER` (held up on the way: the EIP
        is detached meanwhile) and a describe shows the EIPs still ``Available``, send it once more: the first
        success ends it (the other, if it lands later, is refused as the EIP is no longer ``Available``; its
        answer is awaited by :meth:`Provider.settle`, as for every mutating call). If every send failed, raises the
        most telling error, unless a refusal of one may be the other's doing and the EIPs are on ``to``."""
        def send() -> asyncio.Future[None]:
            if batch and len(eips) > 1:
                return asyncio.ensure_future(self._associate_batch(eips, to))
            return asyncio.ensure_future(_all(self._associate(e, to) for e in eips))

        sends = {send()}
        done, _ = await asyncio.wait(sends, timeout=BACKUP_AFTER)
        if not done:
            try:
                async with asyncio.timeout(BACKUP_AFTER):
                    states = await self._poll(eips)
                if all(states[e].bound_to is None and not states[e].pending for e in eips):
                    sends.add(send())
            except (ProviderError, TimeoutError):
                pass
        backed = len(sends) > 1
        errors: list[BaseException] = []
        while sends:
            done, sends = await asyncio.wait(sends, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                if (failed := future.exception()) is None:
                    for other in sends:
                        other.add_done_callback(consume)
                    return
                errors.append(failed)
        refused = any(not (isinstance(e, ProviderError) and e.retryable) for e in errors)
        if backed and refused and await self._landed(eips, to):
            return
        raise min(errors, key=lambda e: isinstance(e, ProviderError) and e.retryable)

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

    # --- the eip commands ---
    async def list_eips(self) -> list[EipRecord]:
        return await self._records(await self._every_eip())

    async def _every_eip(self, worth: Callable[[int], bool] = lambda _: True) -> list[Any]:
        """Every EIP of the region, 100 a page; only the first page unless ``worth(the region's size)``."""
        items: list[Any] = []
        page = 1
        while True:
            request = vpc.DescribeEipAddressesRequest(region_id=self.region, page_size=100, page_number=page)
            reply = await self._call("DescribeEipAddresses",
                                     lambda r=request: self.vpc.describe_eip_addresses_async(r))  # type: ignore[misc]
            batch = self._listed(reply, "DescribeEipAddresses", "eip_addresses", "eip_address")
            items += batch
            total = self._region_eips = int(reply.body.total_count or 0)
            if not batch or len(items) >= total or not worth(total):
                return items
            page += 1

    async def record(self, eip: str) -> EipRecord:
        request = vpc.DescribeEipAddressesRequest(region_id=self.region, allocation_id=eip)
        reply = await self._call("DescribeEipAddresses", lambda: self.vpc.describe_eip_addresses_async(request))
        items = [i for i in self._listed(reply, "DescribeEipAddresses", "eip_addresses", "eip_address")
                 if i.allocation_id == eip]
        if not items:
            raise ProviderError(f"Alibaba DescribeEipAddresses in {self.region}: no EIP {eip}", retryable=False,
                                code="InvalidAllocationId.NotFound")
        return (await self._records(items))[0]

    async def _records(self, items: list[Any]) -> list[EipRecord]:
        states = [_eip_state(item) for item in items]
        enis = await self._enis_of(states)
        return [EipRecord(item.allocation_id, item.ip_address or "", item.status or "",
                          _through(state, enis, keep_detached=True).bound_to,
                          {t.key: t.value for t in (item.tags.tag if item.tags else None) or []})
                for item, state in zip(items, states, strict=True)]

    async def plan_move(self, eip: str, to: Binding) -> list[Call]:
        return _calls(await self._plan([eip], to))

    async def home_of(self, to: Binding) -> Binding | None:
        if to.network_interface_id is None:
            return None
        eni = (await self.describe_enis([to.network_interface_id])).get(to.network_interface_id)
        if eni is None or eni.instance_id is None:
            return None
        return Binding(instance_id=eni.instance_id, network_interface_id=eni.eni_id, instance_type="EcsInstance",
                       mode="BINDED")

    async def send_home(self, home: Binding) -> bool:
        eni_id, instance = home.network_interface_id, home.instance_id
        if eni_id is None or instance is None:
            return True
        while True:
            eni = (await self.describe_enis([eni_id])).get(eni_id)
            if eni is None:
                return False
            if eni.status == "Available":
                await self._eni_call("AttachNetworkInterface", eni_id, instance)
            elif eni.status == "InUse":
                return eni.instance_id == instance
            await asyncio.sleep(self.config.poll_interval)  # attaching or detaching: it settles

    async def disassociate(self, eip: str, *, dry_run: bool = False) -> list[Call]:
        state = (await self._describe_eips([eip]))[eip]
        if state.pending:
            raise ProviderError(f"EIP {eip} is {'associating' if state.bound_to else 'unassociating'}",
                                retryable=True, code="IncorrectEipStatus")
        if state.bound_to is None:
            return []
        calls = _calls(_Plan(unassociate={eip: state.bound_to}))
        if not dry_run:
            await self._unassociate(eip, state.bound_to)
        return calls

    async def allocate(self, tags: Mapping[str, str], *,
                       dry_run: bool = False) -> tuple[EipRecord | None, list[Call]]:
        call = Call("AllocateEipAddress", {"RegionId": self.region, **{
            f"Tag.{n}.{part}": value for n, (k, v) in enumerate(tags.items(), 1)
            for part, value in (("Key", k), ("Value", v))}})
        if dry_run:
            return None, [call]
        request = vpc.AllocateEipAddressRequest(region_id=self.region, tag=[
            vpc.AllocateEipAddressRequestTag(key=k, value=v) for k, v in tags.items()] or None)
        reply = await self._call("AllocateEipAddress", lambda: self.vpc.allocate_eip_address_async(request))
        return EipRecord(reply.body.allocation_id, reply.body.eip_address or "", "Available", None, dict(tags)), [call]

    async def release(self, eip: str, *, dry_run: bool = False) -> list[Call]:
        call = Call("ReleaseEipAddress", {"RegionId": self.region, "AllocationId": eip})
        if not dry_run:
            request = vpc.ReleaseEipAddressRequest(region_id=self.region, allocation_id=eip)
            await self._call("ReleaseEipAddress", lambda: self.vpc.release_eip_address_async(request), f"EIP {eip}")
        return [call]

    async def instance_state(self, binding: Binding) -> InstanceState:
        if binding.instance_type not in (None, "EcsInstance"):
            raise ProviderError(f"the instance check reads ECS instances; {binding} is a {binding.instance_type} "
                                f"(use a havip check or a tcp/http check)", retryable=False)
        ecs, models = self._ecs_client()
        request = models.DescribeInstanceStatusRequest(region_id=self.region, instance_id=[binding.instance_id])
        reply = await self._call("DescribeInstanceStatus", lambda: ecs.describe_instance_status_async(request),
                                 f"instance {binding.instance_id}")
        statuses = self._listed(reply, "DescribeInstanceStatus", "instance_statuses", "instance_status")
        status = next((s.status for s in statuses if s.instance_id == binding.instance_id), None)
        if status is None:
            return InstanceState(False, f"instance {binding.instance_id} does not exist", exists=False)
        return InstanceState(status == "Running", f"instance {binding.instance_id} is {status}")

    def _ecs_client(self) -> tuple[Any, Any]:
        """The ECS client and its models, imported on first use (the SDK takes a second to import)."""
        if self._ecs is None:
            from alibabacloud_ecs20140526 import models
            from alibabacloud_ecs20140526.client import Client as EcsClient

            self._ecs = (EcsClient(SdkConfig(endpoint=self.config.ecs_endpoint, **self._sdk_config)), models)
        return self._ecs  # type: ignore[no-any-return]

    async def describe_havip(self, havip_id: str) -> HaVipState:
        request = vpc.DescribeHaVipsRequest(region_id=self.region, filter=[
            vpc.DescribeHaVipsRequestFilter(key="HaVipId", value=[havip_id])])
        reply = await self._call("DescribeHaVips", lambda: self.vpc.describe_ha_vips_async(request),
                                 f"HaVip {havip_id}")
        havips = self._listed(reply, "DescribeHaVips", "ha_vips", "ha_vip")
        item = next((h for h in havips if h.ha_vip_id == havip_id), None)
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


def _pages(count: int, size: int) -> int:
    return -(-count // size)


async def _all(calls: Iterable[Awaitable[None]]) -> None:
    """Run ``calls`` together and return only when every one has its answer: a move never returns (or raises)
    while one of its own calls is still changing the cloud. The first permanent error wins, else the first."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise min(errors, key=lambda e: isinstance(e, ProviderError) and e.retryable)


def _lost(exc: ProviderError) -> bool:
    """Whether a failed call's answer was lost: it may or may not have been carried out."""
    return exc.code is None or exc.timed_out or exc.code in _UNKNOWN_OUTCOME


def _on(state: EipState, to: Binding) -> bool:
    return state.bound_to is not None and to.matches(state.bound_to)


def _settled(states: Mapping[str, EipState]) -> bool:
    return not any(s.pending for s in states.values())


def _plan_association(eips: Sequence[str], states: Mapping[str, EipState], to: Binding) -> _Plan:
    """Unassociate what is elsewhere, associate what is not on ``to`` (in one batch where the API allows)."""
    elsewhere = {e: s.bound_to for e, s in states.items() if s.bound_to is not None and not to.matches(s.bound_to)}
    attach = tuple(e for e in eips if states[e].bound_to is None or e in elsewhere)
    batch = len(attach) > 1 and to.instance_type in _BATCHABLE and to.private_ip is None
    return _Plan(unassociate=elsewhere, associate=attach, associate_to=to, batch=batch)


def _plan_eni_move(eips: Sequence[str], states: Mapping[str, EipState], to: Binding, eni: EniState) -> _Plan:
    """Cut-through: the EIPs must be on the ENI (in ``BINDED`` mode) before the ENI is attached to ``to``'s
    instance, and an EIP can only be associated with a detached ENI."""
    on_eni = Binding(instance_id=eni.eni_id, instance_type="NetworkInterface", mode="BINDED")
    where = {e: states[e].bound_to for e in eips}
    missing = [e for e, b in where.items() if b is None or not on_eni.matches(b)]
    if not missing and eni.instance_id == to.instance_id:
        return _Plan()
    detach = (eni.eni_id, eni.instance_id) if eni.instance_id is not None else None
    elsewhere = {e: b for e in missing if (b := where[e]) is not None}
    primary = eni.private_ips[0] if eni.private_ips else None
    assert to.instance_id is not None, "a cut-through binding names its instance"
    return _Plan(detach=detach, unassociate=elsewhere, associate=tuple(missing),
                 associate_to=Binding(instance_id=eni.eni_id, instance_type="NetworkInterface", private_ip=primary,
                                      mode="BINDED"),
                 attach=(eni.eni_id, to.instance_id))


def _calls(plan: _Plan) -> list[Call]:
    """The requests ``plan`` sends, for ``--dry-run``."""
    calls = []
    if plan.detach is not None:
        calls.append(Call("DetachNetworkInterface", {"NetworkInterfaceId": plan.detach[0],
                                                     "InstanceId": plan.detach[1]}))
    for eip, where in plan.unassociate.items():
        calls.append(Call("UnassociateEipAddress", _params(AllocationId=eip, InstanceId=where.instance_id,
                                                           InstanceType=where.instance_type,
                                                           PrivateIpAddress=where.private_ip)))
    to = plan.associate_to
    if plan.batch and to is not None:
        calls.append(Call("AssociateEipAddressBatch", _params(
            BindedInstanceId=to.instance_id, BindedInstanceType=to.instance_type,
            InstanceIds=",".join(plan.associate), Mode="MULTI_BINDED" if to.instance_type == "NetworkInterface"
            else None)))
    elif to is not None:
        calls += [Call("AssociateEipAddress", _params(AllocationId=eip, InstanceId=to.instance_id,
                                                      InstanceType=to.instance_type, PrivateIpAddress=to.private_ip,
                                                      Mode=to.mode)) for eip in plan.associate]
    if plan.attach is not None:
        calls.append(Call("AttachNetworkInterface", {"NetworkInterfaceId": plan.attach[0],
                                                     "InstanceId": plan.attach[1]}))
    return calls


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


def _cut_through(state: EipState) -> bool:
    b = state.bound_to
    return b is not None and b.instance_type == "NetworkInterface" and b.mode == "BINDED"


def _through(state: EipState, enis: Mapping[str, EniState], *, keep_detached: bool = False) -> EipState:
    """An EIP in cut-through mode placed where its ENI is (see :meth:`AlibabaProvider.describe`); with
    ``keep_detached``, an ENI on no instance still shows (``ENI eni-1 on no instance``) instead of nothing."""
    if not _cut_through(state) or state.bound_to is None:
        return state
    eni = enis.get(state.bound_to.instance_id or "")
    if eni is None:  # the ENI is gone: as the VPC API reports it
        return state
    where = Binding(instance_id=eni.instance_id, network_interface_id=eni.eni_id, instance_type="EcsInstance",
                    mode="BINDED")
    attached = eni.instance_id is not None and eni.status == "InUse"
    bound = where if attached or eni.pending or keep_detached else None
    return EipState(state.allocation_id, state.public_ip, bound, pending=state.pending or eni.pending)


def _eip_state(item: Any) -> EipState:
    bound = None
    if item.instance_id:
        bound = Binding(instance_id=item.instance_id, instance_type=item.instance_type or None,
                        private_ip=item.private_ip_address or None, mode=item.mode or None)
    return EipState(allocation_id=item.allocation_id, public_ip=item.ip_address or "", bound_to=bound,
                    pending=item.status in _PENDING)
