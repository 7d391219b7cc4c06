"""The composition root: build everything from the config, run the engine and the API, handle signals, shut down.

Lifecycle: startup (providers, checks, observers, API), main loop (the engine until SIGTERM/SIGINT), shutdown
(stop starting work, let a running failover finish within ``STOP_TIMEOUT``, drain hooks, close the API and the
clients). Signal handlers only set events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web

from eipfailover import checks, providers, registry
from eipfailover.api import Api, read_token
from eipfailover.checks.base import Check, CheckContext
from eipfailover.config import CheckConfig, Config, GroupConfig, check_name
from eipfailover.engine import Engine, GroupRunner, Observers, binding_of
from eipfailover.errors import EipFailoverError
from eipfailover.history import History
from eipfailover.hooks import HookObserver
from eipfailover.log import LogObserver
from eipfailover.metrics import Metrics
from eipfailover.model import Binding
from eipfailover.providers.base import Provider

if TYPE_CHECKING:
    from eipfailover.havip import HaVipGuard

log = structlog.get_logger("eipfailover.daemon")

STOP_TIMEOUT = 20.0
"""How long shutdown waits for a running failover to finish its current work."""
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


class StartupError(EipFailoverError):
    """Something named in a valid config cannot be built (a missing SDK, an unreadable CA file, a bad profile)."""


def build_providers(config: Config) -> dict[str, Provider]:
    built: dict[str, Provider] = {}
    for name, cfg in config.providers.items():
        cls = registry.load(providers.REGISTRY, cfg.type, Provider)
        built[name] = cls.from_config(name, cfg)
    return built


def _checks(configs: Sequence[CheckConfig], ctx: CheckContext, timeout: float, where: str) -> list[Check]:
    built = []
    for i, cfg in enumerate(configs):
        cls = registry.load(checks.REGISTRY, cfg.type, Check)
        try:
            built.append(cls.from_config(cfg, check_name(cfg), cfg.timeout or timeout, ctx))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StartupError(f"{where}.checks[{i}]: {exc}") from None
    return built


def build_checks(group: GroupConfig, provider: Provider, http: aiohttp.ClientSession) -> dict[str, list[Check]]:
    return {
        t.name: _checks(t.checks, CheckContext(binding_of(t.binding, provider.kind), provider, http),
                        group.policy.timeout, f"groups.{group.name}.targets.{t.name}")
        for t in group.targets
    }


def build_guards(group: GroupConfig, provider: Provider, http: aiohttp.ClientSession) -> list[HaVipGuard]:
    """A HaVip guard for each target with ``havip_takeover`` (the config guarantees an Alibaba HaVip binding)."""
    guards: list[HaVipGuard] = []
    for target in group.targets:
        takeover = target.havip_takeover
        if takeover is None or target.binding.instance_id is None:
            continue
        from eipfailover.havip import HaVipGuard  # imports the Alibaba SDK (about 1 s): only when used
        from eipfailover.providers.alibaba import AlibabaProvider

        if not isinstance(provider, AlibabaProvider):
            raise StartupError(f"groups.{group.name}.targets.{target.name}.havip_takeover needs an alibaba provider")
        members = {
            m.instance_id: _checks(m.checks, CheckContext(Binding(m.instance_id, instance_type="EcsInstance"),
                                                          provider, http), group.policy.timeout,
                                   f"groups.{group.name}.targets.{target.name}.havip_takeover.{m.instance_id}")
            for m in takeover.members
        }
        guards.append(HaVipGuard(group.name, target.name, target.binding.instance_id, provider, members, takeover,
                                 group.policy))
    return guards


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.api: Api | None = None
        self.api_port: int | None = None
        self.serving = asyncio.Event()
        """Set once the API listens and the engine runs (for in-process tests)."""

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until SIGTERM or SIGINT (or :meth:`Engine.request_stop`); return the process exit code."""
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
        built: Mapping[str, Provider] = {}
        site_runner: web.AppRunner | None = None
        try:
            try:
                built = build_providers(self.config)
                metrics = Metrics(self.config, {name: type(p).operations for name, p in built.items()})
                for provider in built.values():
                    provider.on_request = metrics.on_request
                history = History()
                hooks = HookObserver({g.name: g.hooks for g in self.config.groups})
                observers = Observers([LogObserver(), metrics, history, hooks])
                engine = Engine(
                    GroupRunner(g, built[g.provider], build_checks(g, built[g.provider], http), observers)
                    for g in self.config.groups
                )
                guards = [guard for g in self.config.groups for guard in build_guards(g, built[g.provider], http)]
                token = read_token(self.config.api.token_file, os.environ.get("CREDENTIALS_DIRECTORY"))
            except (EipFailoverError, ValueError) as exc:
                log.error("startup_failed", error=str(exc))
                return EXIT_CONFIG
            api = self.api = Api(engine, history, metrics.registry, token)
            site_runner = web.AppRunner(api.app, access_log=None, handle_signals=False)
            await site_runner.setup()
            host, port = split_listen(self.config.api.listen)
            try:
                await web.TCPSite(site_runner, host, port).start()
            except OSError as exc:
                log.error("startup_failed", error=f"api.listen {self.config.api.listen}: {exc.strerror or exc}")
                return EXIT_FAILURE
            self.api_port = site_runner.addresses[0][1]
            log.info("api_listening", address=f"{host}:{self.api_port}", changes_enabled=token is not None)
            self.engine = engine
            return await self._serve(engine, hooks, guards, install_signals)
        finally:
            if site_runner is not None:
                await site_runner.cleanup()
            await http.close()
            for provider in built.values():
                await provider.close()

    @staticmethod
    async def _run_all(engine: Engine, guards: list[HaVipGuard]) -> None:
        await asyncio.gather(engine.run(), *(guard.run(engine.stop) for guard in guards))

    async def _serve(self, engine: Engine, hooks: HookObserver, guards: list[HaVipGuard],
                     install_signals: bool) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, engine.request_stop)
        try:
            log.info("daemon_starting", groups=[g.name for g in self.config.groups],
                     detection_seconds={g.name: g.policy.detection_seconds for g in self.config.groups})
            running = asyncio.create_task(self._run_all(engine, guards), name="engine")
            self.serving.set()
            ready = asyncio.create_task(engine.ready.wait())
            await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                log.info("daemon_ready", groups=len(engine.runners))
            stopping = asyncio.create_task(engine.stop.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            stopping.cancel()
            code = EXIT_OK
            if not running.done():
                log.info("daemon_stopping")
                try:
                    async with asyncio.timeout(STOP_TIMEOUT):
                        await running
                except TimeoutError:
                    log.error("stop_timeout", seconds=STOP_TIMEOUT)
                    running.cancel()
                    code = EXIT_FAILURE
            elif running.exception() is not None:
                log.error("engine_failed", error=repr(running.exception()))
                code = EXIT_FAILURE
            await hooks.drain(5.0)
            log.info("daemon_stopped", exit_code=code)
            return code
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
