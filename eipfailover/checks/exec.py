"""``exec``: run a program (no shell); exit status 0 means healthy. On timeout its whole process group is killed."""

from __future__ import annotations

from eipfailover.checks.base import Check, CheckContext
from eipfailover.config import ExecCheckConfig
from eipfailover.model import CheckStatus
from eipfailover.process import describe_status, run_program


class ExecCheck(Check):
    def __init__(self, name: str, timeout: float, argv: list[str]) -> None:
        super().__init__(name, timeout)
        self.argv = argv

    @classmethod
    def from_config(cls, config: ExecCheckConfig, name: str, timeout: float, ctx: CheckContext) -> ExecCheck:
        return cls(name, timeout, list(config.argv))

    async def probe(self) -> tuple[CheckStatus, str]:
        try:
            code, last_line = await run_program(self.argv)
        except OSError as exc:
            return CheckStatus.ERROR, f"cannot run {self.argv[0]}: {exc.strerror or exc}"
        if code == 0:
            return CheckStatus.OK, ""
        return CheckStatus.FAIL, describe_status(code) + (f": {last_line}" if last_line else "")
