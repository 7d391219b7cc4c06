"""``exec``: run a program (no shell); exit status 0 means healthy. On timeout its whole process group is killed.

The program runs in a minimal environment: ``PATH``, ``LANG``, ``EIPFAILOVER_GROUP``, ``EIPFAILOVER_TARGET``,
``EIPFAILOVER_CHECK`` and the check's ``env``.
"""

from __future__ import annotations

from collections.abc import Mapping

from eipfailover.checks.base import Check, CheckContext
from eipfailover.config import ExecCheckConfig
from eipfailover.model import CheckStatus
from eipfailover.process import describe_status, run_program


class ExecCheck(Check):
    def __init__(self, name: str, timeout: float, argv: list[str], env: Mapping[str, str]) -> None:
        super().__init__(name, timeout)
        self.argv = argv
        self.env = dict(env)

    @classmethod
    def from_config(cls, config: ExecCheckConfig, name: str, timeout: float, ctx: CheckContext) -> ExecCheck:
        env = {"EIPFAILOVER_GROUP": ctx.group, "EIPFAILOVER_TARGET": ctx.target, "EIPFAILOVER_CHECK": name,
               **config.env}
        return cls(name, timeout, list(config.argv), env)

    async def probe(self) -> tuple[CheckStatus, str]:
        try:
            code, last_line = await run_program(self.argv, self.env)
        except OSError as exc:
            return CheckStatus.ERROR, f"cannot run {self.argv[0]}: {exc.strerror or exc}"
        if code == 0:
            return CheckStatus.OK, ""
        return CheckStatus.FAIL, describe_status(code) + (f": {last_line}" if last_line else "")
