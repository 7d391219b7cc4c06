"""What the cloud says about the config's bindings, checked before the daemon starts (and on reload) and by
``check-config --cloud``: the ENIs an Alibaba binding names exist and suit its mode. A cloud that cannot be read
does not stop the daemon (it starts unready and keeps reading); a binding the cloud contradicts does."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from eipfailover.config import Config
from eipfailover.engine import binding_of
from eipfailover.errors import ProviderError
from eipfailover.providers.base import Provider

log = structlog.get_logger("eipfailover.preflight")
TIMEOUT = 15.0


async def binding_problems(config: Config, providers: Mapping[str, Provider],
                           timeout: float = TIMEOUT) -> tuple[list[str], list[str]]:
    """``(problems, unchecked)``: one line per binding the cloud contradicts, naming the target
    (``groups.web.targets.web-a.binding: ...``), and one per provider that could not be asked, with its error."""
    problems: list[str] = []
    unchecked: list[str] = []
    for name, provider in providers.items():
        bindings = {f"groups.{g.name}.targets.{t.name}.binding": binding_of(t.binding, provider.kind)
                    for g in config.groups if g.provider == name for t in g.targets}
        try:
            async with asyncio.timeout(timeout):
                problems += await provider.validate(bindings)
        except ProviderError as exc:
            unchecked.append(f"provider {name}: {exc}")
        except TimeoutError:
            unchecked.append(f"provider {name}: no answer within {timeout:g}s")
    return problems, unchecked


async def check(config: Config, providers: Mapping[str, Provider]) -> list[str]:
    """The problems (for a start or a reload to refuse); a provider that cannot be asked is logged and skipped."""
    problems, unchecked = await binding_problems(config, providers)
    for line in unchecked:
        log.warning("bindings_not_validated", error=line, detail="the cloud could not be read; checked again at "
                                                                  "the next start or reload")
    return problems
