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
    results = await asyncio.gather(*(_ask(config, name, provider, timeout) for name, provider in providers.items()))
    problems = [line for found, _ in results for line in found]
    unchecked = [line for _, error in results if error is not None for line in [error]]
    return problems, unchecked


async def _ask(config: Config, name: str, provider: Provider, timeout: float) -> tuple[list[str], str | None]:
    """One provider's problems, or why it could not be asked (every provider at once: one timeout in all)."""
    bindings = {f"groups.{g.name}.targets.{t.name}.binding": binding_of(t.binding, provider.kind)
                for g in config.groups if g.provider == name for t in g.targets}
    try:
        async with asyncio.timeout(timeout):
            return await provider.validate(bindings), None
    except ProviderError as exc:
        return [], f"provider {name}: {exc}"
    except TimeoutError:
        return [], f"provider {name}: no answer within {timeout:g}s"
    except Exception as exc:  # a driver's bug, or an answer it cannot read: not the config's fault
        return [], f"provider {name}: internal error: {type(exc).__name__}: {exc}"


async def check(config: Config, providers: Mapping[str, Provider]) -> list[str]:
    """The problems (for a start or a reload to refuse); a provider that cannot be asked is logged and skipped."""
    problems, unchecked = await binding_problems(config, providers)
    for line in unchecked:
        log.warning("bindings_not_validated", error=line, detail="the cloud could not be read; checked again at "
                                                                  "the next start or reload")
    return problems
