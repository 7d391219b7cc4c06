"""The contract of a health check.

A check probes one target and returns a :class:`CheckResult`; it never raises. Subclasses implement
:meth:`Check.probe`, which returns ``(status, detail)`` or raises; :meth:`Check.run` adds the deadline and the
latency, and turns a timeout into ``timeout`` and any exception into ``error``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from eipfailover.errors import ProviderError
from eipfailover.model import Binding, CheckResult, CheckStatus
from eipfailover.providers.base import Provider

OK: tuple[CheckStatus, str] = (CheckStatus.OK, "")
"""What a probe returns when the target is healthy (one tuple for all)."""


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What a check may use besides its own config: the target's binding, the group's provider, the daemon's
    shared HTTP session, and the names of the group and target it checks."""

    binding: Binding
    provider: Provider
    http: aiohttp.ClientSession
    group: str = ""
    target: str = ""


class Check(ABC):
    timeout_status: ClassVar[CheckStatus] = CheckStatus.TIMEOUT
    """What a probe cut by the timeout reports: ``timeout`` (a failure), or ``unknown`` for checks that read a cloud
    API, whose slowness says nothing about the target."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any, name: str, timeout: float, ctx: CheckContext) -> Check:
        """Build the check from its config model."""

    @abstractmethod
    async def probe(self) -> tuple[CheckStatus, str]:
        """Probe once: ``(OK, "")`` if healthy, ``(FAIL, why)`` if not. May raise; must honour cancellation."""

    async def run(self) -> CheckResult:
        """Probe within ``timeout``; never raises (except for cancellation of the caller)."""
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                status, detail = await self.probe()
        except TimeoutError:
            status, detail = self.timeout_status, f"no answer within {self.timeout:g}s"
        except Exception as exc:  # a check reports, it never raises
            status, detail = CheckStatus.ERROR, describe_exception(exc)
        return CheckResult(status, time.monotonic() - start, detail[:300])


def cloud_unknown(exc: ProviderError) -> tuple[CheckStatus, str]:
    """The result of a check whose cloud call failed: ``unknown`` when the API could not answer now (throttling, 5xx,
    a timeout: control-plane trouble is not the target's), ``error`` otherwise (access denied, a wrong resource)."""
    return (CheckStatus.UNKNOWN if exc.retryable else CheckStatus.ERROR), str(exc)


def describe_exception(exc: BaseException) -> str:
    """A one-line description of an exception for check details and logs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
