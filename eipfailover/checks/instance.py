"""``instance``: the provider's view; healthy when the target's instance (or its ENI's instance) is running."""

from __future__ import annotations

from eipfailover.checks.base import Check, CheckContext, cloud_unknown
from eipfailover.config import InstanceCheckConfig
from eipfailover.errors import ProviderError
from eipfailover.model import Binding, CheckStatus
from eipfailover.providers.base import Provider


class InstanceCheck(Check):
    timeout_status = CheckStatus.UNKNOWN

    def __init__(self, name: str, timeout: float, provider: Provider, binding: Binding) -> None:
        super().__init__(name, timeout)
        self.provider = provider
        self.binding = binding

    @classmethod
    def from_config(cls, config: InstanceCheckConfig, name: str, timeout: float, ctx: CheckContext) -> InstanceCheck:
        return cls(name, timeout, ctx.provider, ctx.binding)

    async def probe(self) -> tuple[CheckStatus, str]:
        try:
            state = await self.provider.instance_state(self.binding)
        except ProviderError as exc:
            return cloud_unknown(exc)
        return (CheckStatus.OK, "") if state.running else (CheckStatus.FAIL, state.detail)
