"""``tcp``: healthy when a TCP connection is accepted within the timeout."""

from __future__ import annotations

import asyncio
import contextlib

from eipfailover.checks.base import Check, CheckContext
from eipfailover.config import TcpCheckConfig
from eipfailover.model import CheckStatus


class TcpCheck(Check):
    def __init__(self, name: str, timeout: float, host: str, port: int) -> None:
        super().__init__(name, timeout)
        self.host = host
        self.port = port

    @classmethod
    def from_config(cls, config: TcpCheckConfig, name: str, timeout: float, ctx: CheckContext) -> TcpCheck:
        return cls(name, timeout, config.host, config.port)

    async def probe(self) -> tuple[CheckStatus, str]:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except ConnectionRefusedError:
            return CheckStatus.FAIL, f"connection refused by {self.host}:{self.port}"
        except OSError as exc:
            return CheckStatus.FAIL, f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
        writer.close()
        with contextlib.suppress(OSError):  # the peer may reset the connection we are closing anyway
            await writer.wait_closed()
        return CheckStatus.OK, ""
