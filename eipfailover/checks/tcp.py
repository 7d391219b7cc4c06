"""``tcp``: healthy when a TCP connection is accepted within the timeout.

The connection is closed as soon as it is made, and nothing more is built than needed: on asyncio's own loop, an IP
address (the common case) is connected to with a bare socket (:mod:`eipfailover.checks.sockets`); otherwise (a
name, which is resolved and whose addresses are tried in turn, or another loop such as uvloop)
``loop.create_connection`` with a protocol that does nothing.
"""

from __future__ import annotations

import asyncio

from eipfailover.checks import sockets
from eipfailover.checks.base import OK, Check, CheckContext
from eipfailover.config import TcpCheckConfig
from eipfailover.model import CheckStatus


class TcpCheck(Check):
    def __init__(self, name: str, timeout: float, host: str, port: int) -> None:
        super().__init__(name, timeout)
        self.host = host
        self.port = port
        self.address = sockets.numeric_address(host, port)
        """Where to connect when ``host`` is an IP address (None: a name, resolved at each probe)."""

    @classmethod
    def from_config(cls, config: TcpCheckConfig, name: str, timeout: float, ctx: CheckContext) -> TcpCheck:
        return cls(name, timeout, config.host, config.port)

    async def probe(self) -> tuple[CheckStatus, str]:
        loop = asyncio.get_running_loop()
        try:
            if self.address is not None and sockets.bare_sockets(loop):
                (await sockets.connect(loop, self.address)).close()
            else:
                transport, _ = await loop.create_connection(asyncio.Protocol, self.host, self.port)
                transport.close()
        except ConnectionRefusedError:
            return CheckStatus.FAIL, f"connection refused by {self.host}:{self.port}"
        except OSError as exc:
            return CheckStatus.FAIL, f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
        return OK
