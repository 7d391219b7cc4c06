"""A faithful fake of the Alibaba Cloud VPC API (2016-04-28) and of ECS DescribeInstanceStatus (2014-05-26), for
the official SDK to talk to over HTTP on 127.0.0.1.

Fidelity, as measured against the SDK (see ../shared/notes/cloud-apis-offline.md):
- V3 ``ACS3-HMAC-SHA256`` signatures are verified (``SignatureDoesNotMatch``, ``InvalidAccessKeyId.NotFound``); the
  action and version come in ``x-acs-action``/``x-acs-version``, the parameters in the query string. An STS key
  (added with :meth:`FakeAliyun.add_key` and a token) must come with its ``x-acs-security-token``, which must be
  signed (``InvalidSecurityToken.Malformed``, ``InvalidSecurityToken.MismatchWithAccessKey``).
- Responses use the exact wire keys the SDK maps (``EipAddresses.EipAddress[]``, ``HaVips.HaVip[]``,
  ``associatedInstance``, ``associatedEipAddresse``); the SDK drops unknown keys silently.
- Associations change asynchronously: ``Associating`` → ``InUse`` and ``Unassociating`` → ``Available`` after
  ``transition`` seconds; out-of-state calls get the documented errors (``IncorrectEipStatus``,
  ``InvalidAssociation.Duplicated``, ``InvalidAllocationId.NotFound``, ``InvalidInstanId.NotFound`` [sic],
  ``IncorrectInstanceStatus``, ``Forbidden.UnassociateMaster``).
- Scripted faults per action: an error code and status, a delay (for read timeouts), an HTML 502, a retry-after.
- Every request is logged (action, query, retry headers) for assertions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from eipfailover.config import AlibabaProviderConfig
from eipfailover.providers.alibaba import AlibabaProvider

ACCESS_KEY_ID = "LTAIfakeAccessKeyId"
ACCESS_KEY_SECRET = "fakeAccessKeySecret"
VPC, ECS = "2016-04-28", "2014-05-26"
HOST_ID = "vpc.aliyuncs.com"


class ApiFault(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Fault:
    """A scripted answer to the next call of an action, instead of (or before) the real one."""

    status: int = 400
    code: str | None = "Throttling.User"
    message: str = "Request was denied due to user flow control."
    delay: float = 0.0  # sleep first (past the client's read timeout, the client gives up)
    html: bool = False  # a gateway's HTML 502
    retry_after_ms: int | None = None  # x-acs-retry-after header (the SDK then raises ThrottlingException)
    match: dict[str, str] = field(default_factory=dict)  # only for calls with these query parameters


@dataclass
class Eip:
    allocation_id: str
    ip: str
    status: str = "Available"
    instance_id: str = ""
    instance_type: str = ""
    private_ip: str = ""
    mode: str = ""
    done_at: float = 0.0  # when the running transition completes
    tags: dict[str, str] = field(default_factory=dict)

    def pending(self) -> bool:
        return self.status in ("Associating", "Unassociating")


@dataclass
class Resource:
    id: str
    kind: str  # EcsInstance | NetworkInterface | HaVip | Nat | SlbInstance
    status: str = "Running"  # for ECS: Running, Stopped, Starting, Stopping, Pending
    private_ips: tuple[str, ...] = ()  # for NetworkInterface: the first is its primary private IP
    eni_type: str = "Secondary"  # for NetworkInterface: Primary (an instance's own) or Secondary
    attached_to: str = ""  # for NetworkInterface: the ECS instance it is attached to
    eni_status: str = "Available"  # for NetworkInterface: Available, Attaching, InUse, Detaching
    eni_done_at: float = 0.0  # when the running attach or detach completes

    def eni_pending(self) -> bool:
        return self.eni_status in ("Attaching", "Detaching")


@dataclass
class HaVip:
    id: str
    ip: str
    instances: list[str] = field(default_factory=list)
    master: str = ""
    status: str = "InUse"
    master_at: float = 0.0  # when the next master takes over after a forced unassociate


@dataclass
class Logged:
    action: str
    query: dict[str, str]
    retry_attempts: str | None
    connection: str = ""  # the client's address and port: one per TCP connection


ONE_EIP = {"EcsInstance", "SlbInstance", "HaVip"}  # these take a single EIP
MULTI_BINDED_MAX = 10  # EIPs on one secondary ENI in MULTI_BINDED mode
# the documented codes (VPC AssociateEipAddress error table); where a rule has none, the closest documented one
BINDED_PRIMARY = ("InvalidParameter.EniInstanceId", "Cut-through mode needs a secondary ENI, not a primary one.")
MULTI_PRIMARY = ("OperationUnsupported.EipBindModel",
                 "The instance type of ecs does not support MULTI_BINDED model Eip.")
ENI_ATTACHED = ("Eni.Attached", "The eni should be detached from ecs when associating with direct eip.")
ENI_QUOTA = ("QuotaExceed.MultiBindedEip", "The number of multi binded eip is over limit.")


class FakeAliyun:
    def __init__(self, transition: float = 0.3, region: str = "cn-hangzhou") -> None:
        self.transition = transition
        self.region = region
        self.eips: dict[str, Eip] = {}
        self.resources: dict[str, Resource] = {}
        self.havips: dict[str, HaVip] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.log: list[Logged] = []
        self.timeline: list[tuple[float, str, str, str]] = []
        """Every EIP status change: ``(monotonic time, allocation ID, status, instance ID)``; a transition's end at
        the time it was due (the state machine runs lazily)."""
        self.nonces: set[str] = set()
        self.keys: dict[str, tuple[str, str | None]] = {ACCESS_KEY_ID: (ACCESS_KEY_SECRET, None)}
        """AccessKeyId -> (secret, the STS security token it must come with, if it is an STS key)."""
        self.app = web.Application()
        self.app.router.add_route("*", "/", self.handle)
        self.endpoint = ""
        self.clients: list[AlibabaProvider] = []
        """Drivers made by :func:`provider_for`, closed with the fake."""
        self._runner: web.AppRunner | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve on 127.0.0.1 (HTTPS with ``ssl_context``), on a free port: ``endpoint`` is then
        ``127.0.0.1:PORT``."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        self.endpoint = f"127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        for provider in self.clients:
            await provider.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- world building ---
    def add_eip(self, allocation_id: str, ip: str) -> Eip:
        self.eips[allocation_id] = Eip(allocation_id, ip)
        return self.eips[allocation_id]

    def add_resource(self, rid: str, kind: str = "EcsInstance", *private_ips: str) -> Resource:
        self.resources[rid] = Resource(rid, kind, private_ips=private_ips)
        return self.resources[rid]

    def add_eni(self, eni_id: str, *private_ips: str, attached_to: str = "", primary: bool = False) -> Resource:
        """An ENI (its first private IP is its primary one), attached to ``attached_to`` if given; a ``primary``
        ENI is an instance's own and cannot be detached."""
        eni = self.add_resource(eni_id, "NetworkInterface", *private_ips)
        eni.eni_type = "Primary" if primary else "Secondary"
        eni.attached_to, eni.eni_status = attached_to, "InUse" if attached_to else "Available"
        return eni

    def add_key(self, key_id: str, secret: str, token: str | None = None) -> None:
        """Accept another AccessKey; with ``token``, an STS key that is only valid with that security token."""
        self.keys[key_id] = (secret, token)

    def add_havip(self, hid: str, ip: str, instances: list[str], master: str) -> HaVip:
        self.add_resource(hid, "HaVip")
        self.havips[hid] = HaVip(hid, ip, list(instances), master)
        return self.havips[hid]

    def bind(self, allocation_id: str, instance_id: str, *, status: str = "InUse", private_ip: str = "",
             mode: str = "") -> None:
        """Put an EIP on a resource directly (the world as the daemon finds it)."""
        eip = self.eips[allocation_id]
        eip.status, eip.instance_id = status, instance_id
        eip.instance_type = self.resources[instance_id].kind
        eip.private_ip, eip.mode = private_ip, mode or ("NAT" if eip.instance_type == "NetworkInterface" else "")
        eip.done_at = time.monotonic() + self.transition

    def actions(self) -> list[str]:
        return [entry.action for entry in self.log]

    def sequence(self, skip: tuple[str, ...] = ()) -> list[str]:
        """The actions with repeats folded, for assertions and reports: ``[A, B x3, C]``."""
        out: list[str] = []
        counts: list[int] = []
        for action in (a for a in self.actions() if a not in skip):
            if out and out[-1] == action:
                counts[-1] += 1
            else:
                out.append(action)
                counts.append(1)
        return [a if n == 1 else f"{a} x{n}" for a, n in zip(out, counts, strict=True)]

    # --- HTTP ---
    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = dict(request.query)
        action = headers.get("x-acs-action", "")
        version = headers.get("x-acs-version", "")
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.log.append(Logged(action, query, headers.get("x-acs-retry-attempts"), str(peer)))
        try:
            self._authenticate(request.method, request.path, query, headers, body)
            fault = self._pop_fault(action, query)
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.html:
                    return web.Response(status=502, content_type="text/html",
                                        text="<html><body><h1>502 Bad Gateway</h1></body></html>")
                if fault.code is not None:
                    extra = {} if fault.retry_after_ms is None else {"x-acs-retry-after": str(fault.retry_after_ms)}
                    return self._error(ApiFault(fault.status, fault.code, fault.message), extra)
            handler = getattr(self, f"_{version.replace('-', '_')}_{action}", None)
            if handler is None:
                raise ApiFault(404, "InvalidAction.NotFound", f"Specified api {action} ({version}) is not found")
            self.advance()
            result: dict[str, Any] = handler(query)
        except ApiFault as fault_:
            return self._error(fault_)
        return web.json_response({"RequestId": _request_id(), **result})

    def _pop_fault(self, action: str, query: dict[str, str]) -> Fault | None:
        queue = self.faults.get(action, [])
        for i, fault in enumerate(queue):
            if all(query.get(k) == v for k, v in fault.match.items()):
                return queue.pop(i)
        return None

    def _error(self, fault: ApiFault, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(
            {"RequestId": _request_id(), "HostId": HOST_ID, "Code": fault.code, "Message": fault.message,
             "Recommend": f"https://api.aliyun.com/troubleshoot?q={fault.code}"},
            status=fault.status, headers=headers,
        )

    def _authenticate(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                      body: bytes) -> None:
        auth = headers.get("authorization", "")
        algorithm, _, rest = auth.partition(" ")
        if algorithm != "ACS3-HMAC-SHA256":
            raise ApiFault(400, "MissingAuthorization", "The Authorization header is missing or not ACS3-HMAC-SHA256.")
        parts = dict(p.split("=", 1) for p in rest.split(",") if "=" in p)
        secret, token = self.keys.get(parts.get("Credential", ""), (None, None))
        if secret is None:
            raise ApiFault(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        presented = headers.get("x-acs-security-token")
        if token is not None and not presented:
            raise ApiFault(400, "InvalidSecurityToken.Malformed", "The security token you provided is malformed.")
        if token is not None and presented != token:
            raise ApiFault(400, "InvalidSecurityToken.MismatchWithAccessKey",
                           "The security token you provided does not match the access key.")
        if presented is not None and "x-acs-security-token" not in parts.get("SignedHeaders", "").split(";"):
            raise ApiFault(400, "SignatureDoesNotMatch", "The security token header is not signed.")
        payload_hash = hashlib.sha256(body).hexdigest()
        if headers.get("x-acs-content-sha256") != payload_hash:
            raise ApiFault(400, "SignatureDoesNotMatch", "The request body hash does not match.")
        signed = parts.get("SignedHeaders", "")
        canonical = "\n".join([
            method, path or "/",
            "&".join(f"{quote(k, safe='~')}={quote(query[k], safe='~')}" for k in sorted(query)),
            "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed.split(";")),
            signed, payload_hash,
        ])
        to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
        expected = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, parts.get("Signature", "")):
            raise ApiFault(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        nonce = headers.get("x-acs-signature-nonce", "")
        if nonce in self.nonces:
            raise ApiFault(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        self.nonces.add(nonce)

    # --- the asynchronous state machine ---
    def advance(self) -> None:
        """Complete the transitions that are due (done on every request; tests may call it to look at the
        world)."""
        now = time.monotonic()
        for eip in self.eips.values():
            if eip.pending() and now >= eip.done_at:
                if eip.status == "Associating":
                    eip.status = "InUse"
                else:
                    eip.status, eip.instance_id, eip.instance_type, eip.private_ip, eip.mode = (
                        "Available", "", "", "", "")
                self.timeline.append((eip.done_at, eip.allocation_id, eip.status, eip.instance_id))
        for eni in self.resources.values():
            if eni.eni_pending() and now >= eni.eni_done_at:
                if eni.eni_status == "Attaching":
                    eni.eni_status = "InUse"
                else:
                    eni.eni_status, eni.attached_to = "Available", ""
        for havip in self.havips.values():
            if not havip.master and havip.instances and now >= havip.master_at:
                havip.master = havip.instances[0]  # keepalived on the remaining member takes over

    def _region(self, q: dict[str, str]) -> None:
        if not q.get("RegionId"):
            raise ApiFault(400, "MissingParameter",
                           "The input parameter RegionId that is mandatory for processing this request is not "
                           "supplied.")
        if q["RegionId"] != self.region:
            raise ApiFault(400, "InvalidRegionId.NotFound", f"The specified region {q['RegionId']} does not exist.")

    def _eip(self, allocation_id: str | None) -> Eip:
        if not allocation_id:
            raise ApiFault(400, "MissingParameter", "The input parameter AllocationId that is mandatory for "
                                                    "processing this request is not supplied.")
        if allocation_id not in self.eips:
            raise ApiFault(404, "InvalidAllocationId.NotFound", "Specified allocation ID is not found")
        return self.eips[allocation_id]

    def _target(self, instance_id: str | None, kind: str) -> Resource:
        resource = self.resources.get(instance_id or "")
        if resource is None or resource.kind != kind:
            raise ApiFault(404, "InvalidInstanId.NotFound", "Specified instance does not exist.")
        if resource.status not in ("Running", "Stopped"):
            raise ApiFault(400, "IncorrectInstanceStatus", "Current instance status does not support this operation.")
        return resource

    def _check_free(self, eip: Eip, resource: Resource, private_ip: str, mode: str) -> None:
        """The documented rules: an ECS instance, a CLB or a HaVip takes one EIP; on an ENI, NAT mode takes one EIP
        per private IP, cut-through (BINDED) one EIP on a detached secondary ENI's primary private IP, and
        MULTI_BINDED up to 10 EIPs on a secondary ENI."""
        if eip.status != "Available":
            raise ApiFault(400, "IncorrectEipStatus", "Current elastic IP status does not support this operation")
        holders = [e for e in self.eips.values() if e.instance_id == resource.id and e is not eip]
        if resource.kind == "NetworkInterface":
            self._check_eni_mode(resource, private_ip, mode, holders)
        elif holders and resource.kind in ONE_EIP:
            raise ApiFault(400, "InvalidAssociation.Duplicated", "Specified instance already is associated.")

    def _check_eni_mode(self, eni: Resource, private_ip: str, mode: str, holders: list[Eip]) -> None:
        if mode in ("BINDED", "MULTI_BINDED") and eni.eni_type == "Primary":
            raise ApiFault(400, *(BINDED_PRIMARY if mode == "BINDED" else MULTI_PRIMARY))
        if any(e.mode != mode for e in holders):
            raise ApiFault(400, "Mode.Conflict", "The eni can bind only one mode of eip.")
        if mode == "MULTI_BINDED":
            if len(holders) >= MULTI_BINDED_MAX:
                raise ApiFault(400, ENI_QUOTA[0], ENI_QUOTA[1])
            return
        if mode == "BINDED":
            if private_ip and private_ip != eni.private_ips[0]:
                raise ApiFault(400, "InvalidParameter", f"PrivateIpAddress {private_ip} is not the primary private "
                                                        f"IP of {eni.id}: cut-through mode uses the primary one.")
            if eni.attached_to or eni.eni_status != "Available":
                raise ApiFault(400, ENI_ATTACHED[0], ENI_ATTACHED[1])
        elif private_ip not in eni.private_ips:
            raise ApiFault(400, "InvalidParameter", f"PrivateIpAddress {private_ip or '(none)'} is not an IP of "
                                                    f"{eni.id}.")
        if mode == "BINDED" and holders:
            raise ApiFault(400, "Mode.NotSupport", "The user cannot use multi direct eip.")
        if any(e.private_ip == private_ip for e in holders):
            raise ApiFault(400, "InvalidAssociation.Duplicated", "Specified instance already is associated.")

    def _start(self, eip: Eip, resource: Resource, status: str, private_ip: str = "", mode: str = "") -> None:
        eip.status, eip.instance_id, eip.instance_type = status, resource.id, resource.kind
        eip.private_ip, eip.mode = private_ip, mode
        eip.done_at = time.monotonic() + self.transition
        self.timeline.append((time.monotonic(), eip.allocation_id, status, resource.id))

    # --- VPC 2016-04-28 ---
    def _2016_04_28_DescribeEipAddresses(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        wanted = [a for a in q.get("AllocationId", "").split(",") if a]
        if len(wanted) > 50:
            raise ApiFault(400, "InvalidParameter", "AllocationId takes at most 50 IDs.")
        eips = [e for e in self.eips.values() if (not wanted or e.allocation_id in wanted)
                and q.get("AssociatedInstanceId", e.instance_id) == e.instance_id
                and q.get("AssociatedInstanceType", e.instance_type) == e.instance_type]
        size, page = int(q.get("PageSize", "10")), int(q.get("PageNumber", "1"))
        if not 1 <= size <= 100:
            raise ApiFault(400, "InvalidParameter", "The specified PageSize is invalid.")
        shown = eips[(page - 1) * size: page * size]
        return {"TotalCount": len(eips), "PageNumber": page, "PageSize": size,
                "EipAddresses": {"EipAddress": [self._eip_json(e) for e in shown]}}

    def _eip_json(self, e: Eip) -> dict[str, Any]:
        return {"AllocationId": e.allocation_id, "IpAddress": e.ip, "Status": e.status, "InstanceId": e.instance_id,
                "InstanceType": e.instance_type, "PrivateIpAddress": e.private_ip, "Mode": e.mode,
                "RegionId": self.region, "InstanceRegionId": self.region if e.instance_id else "",
                "Bandwidth": "5", "ChargeType": "PostPaid", "InternetChargeType": "PayByTraffic",
                "AllocationTime": "2026-11-01T00:00:00Z", "BusinessStatus": "Normal",
                "OperationLocks": {"LockReason": []},
                "Tags": {"Tag": [{"Key": k, "Value": v} for k, v in e.tags.items()]}}

    def _2016_04_28_AssociateEipAddress(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        eip = self._eip(q.get("AllocationId"))
        kind = q.get("InstanceType", "EcsInstance")
        resource = self._target(q.get("InstanceId"), kind)
        private_ip, mode = q.get("PrivateIpAddress", ""), q.get("Mode", "NAT" if kind == "NetworkInterface" else "")
        self._check_free(eip, resource, private_ip, mode)
        if mode == "BINDED":
            private_ip = resource.private_ips[0]
        self._start(eip, resource, "Associating", private_ip, mode)
        return {}

    def _2016_04_28_AssociateEipAddressBatch(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        kind = q.get("BindedInstanceType", "")
        if kind not in ("Nat", "NetworkInterface"):
            raise ApiFault(400, "InvalidParameter", "BindedInstanceType must be Nat or NetworkInterface.")
        resource = self._target(q.get("BindedInstanceId"), kind)
        ids = [v for k, v in sorted(q.items(), key=lambda kv: kv[0]) if k.startswith("InstanceIds.")]
        if not 1 <= len(ids) <= 50:
            raise ApiFault(400, "InvalidParameter", "InstanceIds must list 1 to 50 EIPs.")
        eips = [self._eip(a) for a in ids]
        mode = q.get("Mode", "")
        if kind == "NetworkInterface" and mode != "MULTI_BINDED":
            raise ApiFault(400, "InvalidParameter", "Mode must be MULTI_BINDED for a NetworkInterface.")
        for eip in eips:
            self._check_free(eip, resource, "", mode)
        held = sum(e.instance_id == resource.id for e in self.eips.values())
        if kind == "NetworkInterface" and held + len(eips) > MULTI_BINDED_MAX:
            raise ApiFault(400, ENI_QUOTA[0], ENI_QUOTA[1])
        for eip in eips:
            self._start(eip, resource, "Associating", "", mode)
        return {}

    def _2016_04_28_UnassociateEipAddress(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        eip = self._eip(q.get("AllocationId"))
        if eip.status != "InUse":
            raise ApiFault(400, "IncorrectEipStatus", "Current elastic IP status does not support this operation")
        if q.get("InstanceId") and q["InstanceId"] != eip.instance_id:
            raise ApiFault(400, "InvalidInstanceId.MisMatch", "The EIP is not associated with the specified instance.")
        eip.status, eip.done_at = "Unassociating", time.monotonic() + self.transition
        self.timeline.append((time.monotonic(), eip.allocation_id, "Unassociating", eip.instance_id))
        return {}

    def _2016_04_28_AllocateEipAddress(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        n = len(self.eips) + 1
        eip = self.add_eip(f"eip-{uuid.uuid4().hex[:20]}", f"47.100.{n // 250}.{n % 250 + 1}")
        keys = {k.split(".")[1]: v for k, v in q.items() if k.startswith("Tag.") and k.endswith(".Key")}
        eip.tags = {key: q.get(f"Tag.{i}.Value", "") for i, key in keys.items()}
        return {"AllocationId": eip.allocation_id, "EipAddress": eip.ip, "ResourceGroupId": "rg-fake"}

    def _2016_04_28_ReleaseEipAddress(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        eip = self._eip(q.get("AllocationId"))
        if eip.status != "Available":
            raise ApiFault(400, "IncorrectEipStatus", "Current elastic IP status does not support this operation.")
        del self.eips[eip.allocation_id]
        return {}

    def _2016_04_28_DescribeHaVips(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        filters: dict[str, list[str]] = {}
        for key, value in q.items():
            if key.startswith("Filter.") and key.endswith(".Key"):
                n = key.split(".")[1]
                filters[value] = [v for k, v in q.items() if k.startswith(f"Filter.{n}.Value.")]
        havips = [h for h in self.havips.values() if h.id in filters.get("HaVipId", [h.id])]
        return {"TotalCount": len(havips), "PageNumber": 1, "PageSize": 10, "HaVips": {"HaVip": [
            {"HaVipId": h.id, "IpAddress": h.ip, "Status": h.status, "MasterInstanceId": h.master,
             "AssociatedInstanceType": "EcsInstance", "AssociatedInstances": {"associatedInstance": h.instances},
             "AssociatedEipAddresses": {"associatedEipAddresse": [
                 e.ip for e in self.eips.values() if e.instance_id == h.id and e.status == "InUse"]},
             "VpcId": "vpc-fake", "VSwitchId": "vsw-fake", "RegionId": self.region, "Name": h.id,
             "Description": "", "CreateTime": "2026-11-01T00:00:00Z"}
            for h in havips]}}

    def _2016_04_28_UnassociateHaVip(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        havip = self.havips.get(q.get("HaVipId", ""))
        if havip is None:
            raise ApiFault(404, "InvalidHaVipId.NotFound", "Specified HaVip does not exist.")
        instance = q.get("InstanceId", "")
        if instance not in havip.instances:
            raise ApiFault(400, "InvalidInstanceId.NotFound", "Specified instance is not associated with the HaVip.")
        if instance == havip.master and q.get("Force", "").lower() != "true":
            raise ApiFault(400, "Forbidden.UnassociateMaster",
                           "The master instance of the HaVip cannot be unassociated without Force.")
        havip.instances.remove(instance)
        if instance == havip.master:
            havip.master, havip.master_at = "", time.monotonic() + self.transition
        if not havip.instances:
            havip.status = "Available"
        return {}

    # --- ECS 2014-05-26 ---
    def _2014_05_26_DescribeInstanceStatus(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        ids = [v for k, v in q.items() if k.startswith("InstanceId.")]
        found = [r for r in self.resources.values() if r.kind == "EcsInstance" and (not ids or r.id in ids)]
        return {"TotalCount": len(found), "PageNumber": 1, "PageSize": 50, "InstanceStatuses": {
            "InstanceStatus": [{"InstanceId": r.id, "Status": r.status} for r in found]}}


    def _2014_05_26_DescribeNetworkInterfaces(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        ids = [v for k, v in q.items() if k.startswith("NetworkInterfaceId.")]
        if len(ids) > 100:
            raise ApiFault(400, "InvalidParameter", "NetworkInterfaceId takes at most 100 IDs.")
        enis = [r for r in self.resources.values() if r.kind == "NetworkInterface" and (not ids or r.id in ids)]
        return {"TotalCount": len(enis), "PageNumber": 1, "PageSize": 100, "NetworkInterfaceSets": {
            "NetworkInterfaceSet": [self._eni_json(e) for e in enis]}}

    def _eni_json(self, eni: Resource) -> dict[str, Any]:
        return {"NetworkInterfaceId": eni.id, "Status": eni.eni_status, "Type": eni.eni_type,
                "InstanceId": eni.attached_to, "PrivateIpAddress": eni.private_ips[0] if eni.private_ips else "",
                "PrivateIpSets": {"PrivateIpSet": [{"PrivateIpAddress": ip, "Primary": i == 0}
                                                   for i, ip in enumerate(eni.private_ips)]},
                "VpcId": "vpc-fake", "VSwitchId": "vsw-fake", "ZoneId": f"{self.region}-a",
                "MacAddress": "00:16:3e:00:00:01", "CreationTime": "2026-11-01T00:00:00Z"}

    def _eni(self, q: dict[str, str]) -> Resource:
        eni = self.resources.get(q.get("NetworkInterfaceId", ""))
        if eni is None or eni.kind != "NetworkInterface":
            raise ApiFault(404, "InvalidEniId.NotFound", "The specified network interface does not exist.")
        return eni

    def _2014_05_26_AttachNetworkInterface(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        eni = self._eni(q)
        instance = self.resources.get(q.get("InstanceId", ""))
        if instance is None or instance.kind != "EcsInstance":
            raise ApiFault(404, "InvalidEcsId.NotFound", "The specified ECS instance does not exist.")
        if eni.eni_type == "Primary" or eni.eni_status != "Available":
            raise ApiFault(400, "InvalidOperation.InvalidEniState",
                           f"The network interface is {eni.eni_status} ({eni.eni_type}): it cannot be attached.")
        if instance.status not in ("Running", "Stopped"):
            raise ApiFault(400, "InvalidOperation.InvalidEcsState", f"The instance is {instance.status}.")
        eni.eni_status, eni.attached_to = "Attaching", instance.id
        eni.eni_done_at = time.monotonic() + self.transition
        return {}

    def _2014_05_26_DetachNetworkInterface(self, q: dict[str, str]) -> dict[str, Any]:
        self._region(q)
        eni = self._eni(q)
        if eni.eni_type == "Primary":
            raise ApiFault(400, "InvalidOperation.DetachPrimaryEniNotAllowed",
                           "The primary network interface of an instance cannot be detached.")
        instance = self.resources.get(q.get("InstanceId", ""))
        if instance is not None and instance.status not in ("Running", "Stopped"):
            raise ApiFault(400, "InvalidOperation.InvalidEcsState", f"The instance is {instance.status}.")
        if eni.eni_status == "Detaching" and eni.attached_to == q.get("InstanceId", ""):
            return {}  # documented: an ENI Detaching may be detached again
        if eni.eni_status != "InUse" or eni.attached_to != q.get("InstanceId", ""):
            raise ApiFault(400, "InvalidOperation.InvalidEniState",
                           f"The network interface is {eni.eni_status} "
                           f"{'on ' + eni.attached_to if eni.attached_to else ''}: it cannot be detached from "
                           f"{q.get('InstanceId', '(none)')}.")
        eni.eni_status, eni.eni_done_at = "Detaching", time.monotonic() + self.transition
        return {}


def _request_id() -> str:
    return str(uuid.uuid4()).upper()


def key_file(directory: Path, secret: str = ACCESS_KEY_SECRET, key_id: str = ACCESS_KEY_ID) -> Path:
    """An AccessKey file as the daemon reads it."""
    path = directory / f"ak-{key_id}-{secret}.json"
    path.write_text(json.dumps({"access_key_id": key_id, "access_key_secret": secret}))
    return path


def provider_for(fake: FakeAliyun, directory: Path, **settings: object) -> AlibabaProvider:
    """The real driver, pointed at the fake with the fake's keys (``settings`` override)."""
    config = {"type": "alibaba", "region": fake.region, "endpoint": fake.endpoint, "ecs_endpoint": fake.endpoint,
              "protocol": "http", "access_key_file": key_file(directory), "read_timeout": 1, "connect_timeout": 1,
              "poll_interval": 0.05, **settings}
    provider = AlibabaProvider("ali", AlibabaProviderConfig.model_validate(config))
    fake.clients.append(provider)
    return provider
