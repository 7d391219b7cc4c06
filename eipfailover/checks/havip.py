"""``havip`` (Alibaba): healthy when the HaVip is ``InUse`` and has a master instance (keepalived elected one)."""

from __future__ import annotations

from eipfailover.checks.base import Check, CheckContext, cloud_unknown
from eipfailover.config import HaVipCheckConfig
from eipfailover.errors import ProviderError
from eipfailover.model import CheckStatus
from eipfailover.providers.alibaba import AlibabaProvider


class HaVipCheck(Check):
    timeout_status = CheckStatus.UNKNOWN

    def __init__(self, name: str, timeout: float, provider: AlibabaProvider, havip_id: str) -> None:
        super().__init__(name, timeout)
        self.provider = provider
        self.havip_id = havip_id

    @classmethod
    def from_config(cls, config: HaVipCheckConfig, name: str, timeout: float, ctx: CheckContext) -> HaVipCheck:
        if not isinstance(ctx.provider, AlibabaProvider):
            raise ValueError("a havip check needs an alibaba provider")
        havip_id = config.havip_id or ctx.binding.instance_id
        if havip_id is None:
            raise ValueError("a havip check needs havip_id")
        return cls(name, timeout, ctx.provider, havip_id)

    async def probe(self) -> tuple[CheckStatus, str]:
        try:
            state = await self.provider.describe_havip(self.havip_id)
        except ProviderError as exc:
            return cloud_unknown(exc)
        if state.status != "InUse":
            return CheckStatus.FAIL, f"HaVip {self.havip_id} is {state.status or 'in no state'}"
        if not state.master_instance_id:
            return CheckStatus.FAIL, f"HaVip {self.havip_id} has no master instance"
        return CheckStatus.OK, ""
