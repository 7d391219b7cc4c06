"""What the cloud says about the config, checked before the daemon starts (and on reload) and by
``check-config --cloud``: the ENIs an Alibaba binding names exist and suit its mode. A cloud that cannot be read
does not stop the daemon (it starts unready and keeps reading); a binding the cloud contradicts does.
``check-config --cloud`` also checks that the groups' EIPs and the targets' instances exist (the daemon reports
those at run time instead: a terminated standby must not stop it from serving the other groups)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping

import structlog

from eipfailover.config import Config
from eipfailover.engine import binding_of
from eipfailover.errors import ProviderError
from eipfailover.model import Binding
from eipfailover.providers.base import Provider

log = structlog.get_logger("eipfailover.preflight")
TIMEOUT = 15.0


async def binding_problems(config: Config, providers: Mapping[str, Provider], timeout: float = TIMEOUT, *,
                           existence: bool = False) -> tuple[list[str], list[str]]:
    """``(problems, unchecked)``: one line per binding the cloud contradicts, naming the target
    (``groups.web.targets.web-a.binding: ...``), and one per provider that could not be asked, with its error.
    ``existence``: also look up every group's EIPs and every target's instance (or ENI, on AWS)."""
    results = await asyncio.gather(*(_ask(config, name, provider, timeout, existence)
                                     for name, provider in providers.items()))
    problems = [line for found, _ in results for line in found]
    unchecked = [line for _, error in results if error is not None for line in [error]]
    return problems, unchecked


async def _ask(config: Config, name: str, provider: Provider, timeout: float,
               existence: bool) -> tuple[list[str], str | None]:
    """One provider's problems, or why it could not be asked (every provider at once: one timeout in all)."""
    bindings = {f"groups.{g.name}.targets.{t.name}.binding": binding_of(t.binding, provider.kind)
                for g in config.groups if g.provider == name for t in g.targets}
    try:
        async with asyncio.timeout(timeout):
            problems = await provider.validate(bindings)
            if existence:
                problems += await _missing(config, name, provider, bindings)
            return problems, None
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


async def _missing(config: Config, name: str, provider: Provider, bindings: Mapping[str, Binding]) -> list[str]:
    """The EIPs and instances the cloud does not know (NotFound). Any other error is raised: the cloud could not
    say. All the provider's EIPs are read at once (each group again only if one is missing, to name it), every
    instance once, concurrently."""
    groups = [g for g in config.groups if g.provider == name]
    problems = []
    if await _not_found(provider.describe([e for g in groups for e in g.eips])) is not None:
        for group, error in zip(groups, await asyncio.gather(*(_not_found(provider.describe(g.eips))
                                                                for g in groups)), strict=True):
            if error is not None:
                problems.append(f"groups.{group.name}.eips: {error}")
    looked_up: dict[Binding, list[str]] = {}
    for key, binding in bindings.items():
        if binding.instance_type in (None, "EcsInstance"):  # what the instance check reads
            looked_up.setdefault(binding, []).append(key)
    states = await asyncio.gather(*(provider.instance_state(b) for b in looked_up))
    for keys, state in zip(looked_up.values(), states, strict=True):
        if not state.exists:
            problems += [f"{key}: {state.detail}" for key in keys]
    return problems


async def _not_found(call: Awaitable[object]) -> ProviderError | None:
    """The call's NotFound error, if it has one; any other error is raised."""
    try:
        await call
    except ProviderError as exc:
        if exc.code is not None and exc.code.endswith("NotFound"):
            return exc
        raise
    return None
