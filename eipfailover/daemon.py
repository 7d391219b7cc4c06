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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web

from eipfailover import checks, providers, registry
from eipfailover import log as log_config
from eipfailover.api import Api, read_token
from eipfailover.checks.base import Check, CheckContext
from eipfailover.config import CheckConfig, Config, GroupConfig, check_name, load_config
from eipfailover.engine import Engine, GroupRunner, Observers, binding_of
from eipfailover.errors import EipFailoverError
from eipfailover.history import History
from eipfailover.hooks import HookObserver
from eipfailover.log import LogObserver
from eipfailover.metrics import Metrics
from eipfailover.model import Binding
from eipfailover.providers.base import Provider
from eipfailover.systemd import Notifier, SystemdObserver, watchdog

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


class Daemon:
    def __init__(self, config: Config, config_path: str | Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.engine: Engine | None = None
        self.api: Api | None = None
        self.api_port: int | None = None
        self.providers: dict[str, Provider] = {}
        self.guards: list[HaVipGuard] = []
        self.guard_tasks: list[asyncio.Task[None]] = []
        self.notifier = Notifier()
        self.serving = asyncio.Event()
        """Set once the API listens and the engine runs (for in-process tests)."""
        self._reload = asyncio.Event()

    def _runner(self, group: GroupConfig, by_name: Mapping[str, Provider], http: aiohttp.ClientSession,
                observers: Observers) -> GroupRunner:
        provider = by_name[group.provider]
        return GroupRunner(group, provider, build_checks(group, provider, http), observers)

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until SIGTERM or SIGINT (or :meth:`Engine.request_stop`); return the process exit code."""
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
        site_runner: web.AppRunner | None = None
        try:
            try:
                self.providers = build_providers(self.config)
                metrics = Metrics(self.config, {n: type(p).operations for n, p in self.providers.items()})
                for provider in self.providers.values():
                    provider.on_request = metrics.on_request
                history = History()
                hooks = HookObserver({g.name: g.hooks for g in self.config.groups})
                observers = Observers([LogObserver(), metrics, history, hooks])
                engine = Engine(self._runner(g, self.providers, http, observers) for g in self.config.groups)
                self.guards = [gd for g in self.config.groups for gd in build_guards(g, self.providers[g.provider],
                                                                                        http)]
                token = read_token(self.config.api.token_file)
            except (EipFailoverError, ValueError) as exc:
                log.error("startup_failed", error=str(exc))
                return EXIT_CONFIG
            observers.observers.append(SystemdObserver(self.notifier, engine))
            api = self.api = Api(engine, history, metrics.registry, token)
            site_runner = web.AppRunner(api.app, access_log=None, handle_signals=False)
            await site_runner.setup()
            host = self.config.api.host
            try:
                await web.TCPSite(site_runner, host, self.config.api.port).start()
            except OSError as exc:
                log.error("startup_failed", error=f"api.listen {self.config.api.listen}: {exc.strerror or exc}")
                return EXIT_FAILURE
            self.api_port = site_runner.addresses[0][1]
            log.info("api_listening", address=f"{host}:{self.api_port}", changes_enabled=token is not None)
            self.engine = engine
            return await self._serve(engine, _Parts(http, observers, metrics, hooks), install_signals)
        finally:
            self.notifier.close()
            if site_runner is not None:
                await site_runner.cleanup()
            await http.close()
            for provider in self.providers.values():
                await provider.close()

    def _interrupt(self, engine: Engine) -> None:
        if engine.stop.is_set():  # a second Ctrl-C: the operator does not want to wait
            log.warning("daemon_interrupted", exit_code=130)
            os._exit(130)
        engine.request_stop()

    async def _serve(self, engine: Engine, parts: _Parts, install_signals: bool) -> int:
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: engine.request_stop, signal.SIGINT: lambda: self._interrupt(engine),
                    signal.SIGHUP: self._reload.set} if install_signals else {}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        log.info("daemon_starting", groups=[g.name for g in self.config.groups],
                 detection_seconds={g.name: g.policy.detection_seconds for g in self.config.groups})
        running = asyncio.create_task(self._run_all(engine), name="engine")
        pinger = asyncio.create_task(watchdog(self.notifier, engine))
        self.serving.set()
        waiters = {"ready": asyncio.create_task(engine.ready.wait()),
                   "stop": asyncio.create_task(engine.stop.wait()),
                   "reload": asyncio.create_task(self._reload.wait())}
        try:
            while True:
                done, _ = await asyncio.wait({running, *waiters.values()}, return_when=asyncio.FIRST_COMPLETED)
                if "ready" in waiters and waiters["ready"] in done:
                    del waiters["ready"]  # announced once
                    log.info("daemon_ready", groups=len(engine.runners))
                    self.notifier.ready()
                if waiters["reload"] in done and not engine.stop.is_set():
                    self._reload.clear()
                    await self.reload(engine, parts)
                    waiters["reload"] = asyncio.create_task(self._reload.wait())
                if waiters["stop"] in done or running in done:
                    break
            return await self._shutdown(engine, running, parts.hooks)
        finally:
            for task in (*waiters.values(), pinger):
                task.cancel()
            for sig in handlers:
                loop.remove_signal_handler(sig)

    async def _run_all(self, engine: Engine) -> None:
        self.guard_tasks = [asyncio.create_task(guard.run()) for guard in self.guards]
        try:
            await engine.run()
        finally:
            for guard in self.guards:
                guard.stop()
            await asyncio.gather(*self.guard_tasks, return_exceptions=True)

    async def _shutdown(self, engine: Engine, running: asyncio.Task[None], hooks: HookObserver) -> int:
        self.notifier.stopping()
        code = EXIT_OK
        if not running.done():
            log.info("daemon_stopping")
            try:
                async with asyncio.timeout(self.config.stop_timeout):
                    await running
            except TimeoutError:
                log.error("stop_timeout", seconds=self.config.stop_timeout)
                running.cancel()
                code = EXIT_FAILURE
        elif running.exception() is not None:
            log.error("engine_failed", error=repr(running.exception()))
            code = EXIT_FAILURE
        await hooks.drain(5.0)
        log.info("daemon_stopped", exit_code=code)
        return code

    async def reload(self, engine: Engine, parts: _Parts) -> None:
        """SIGHUP: validate the new config and everything it names first; keep the old one if anything is wrong.
        Unchanged groups keep running untouched; changed ones are replaced with their state (health of unchanged
        targets, maintenance, move history) carried over; nothing moves because of the reload itself."""
        self.notifier.reloading()
        log.info("reload_started", config=str(self.config_path))
        fresh: dict[str, Provider] = {}
        try:
            if self.config_path is None:
                raise EipFailoverError("the daemon was not started from a config file")
            new = load_config(self.config_path)
            by_name: dict[str, Provider] = {}
            for name, cfg in new.providers.items():
                if name in self.providers and self.config.providers.get(name) == cfg:
                    by_name[name] = self.providers[name]
                else:
                    cls = registry.load(providers.REGISTRY, cfg.type, Provider)
                    by_name[name] = fresh[name] = cls.from_config(name, cfg)
            old_groups = {g.name: g for g in self.config.groups}
            changed = [g for g in new.groups
                       if old_groups.get(g.name) != g or g.provider in fresh]
            runners = [self._runner(g, by_name, parts.http, parts.observers) for g in changed]
            guards = [gd for g in new.groups for gd in build_guards(g, by_name[g.provider], parts.http)]
            token = read_token(new.api.token_file)
        except (EipFailoverError, ValueError) as exc:
            for provider in fresh.values():
                await provider.close()
            log.error("reload_failed", error=str(exc), kept="the running config")
            parts.metrics.config_reloads.labels("failure").inc()
            self.notifier.ready()
            return
        removed = [name for name in old_groups if name not in {g.name for g in new.groups}]
        for provider_name, provider in fresh.items():
            provider.on_request = parts.metrics.on_request
            parts.metrics.add_provider(provider_name, type(provider).operations)
        for group in changed:
            parts.metrics.add_group(group)
        parts.hooks.configure({g.name: g.hooks for g in new.groups})
        for name in removed:
            await engine.replace(name, None)
        for runner in runners:
            await engine.replace(runner.name, runner)
        stale = [p for name, p in self.providers.items() if by_name.get(name) is not p]
        self.providers = by_name
        for provider in stale:
            await provider.close()
        self._swap_guards(guards)
        if self.api is not None:
            self.api.token = token
        if new.api.listen != self.config.api.listen:
            log.warning("reload_partial", detail=f"api.listen changed to {new.api.listen}: restart to apply")
        if new.log != self.config.log:
            log_config.configure(new.log.format, new.log.level)
        self.config = new
        log.info("reload_done", changed=[r.name for r in runners], removed=removed,
                 unchanged=[g.name for g in new.groups if g not in changed])
        parts.metrics.config_reloads.labels("success").inc()
        self.notifier.ready()

    def _swap_guards(self, guards: list[HaVipGuard]) -> None:
        for guard in self.guards:
            guard.stop()
        self.guards = guards
        self.guard_tasks = [t for t in self.guard_tasks if not t.done()]
        self.guard_tasks += [asyncio.create_task(guard.run()) for guard in guards]


@dataclass(frozen=True, slots=True)
class _Parts:
    """What a reload reuses of the running daemon."""

    http: aiohttp.ClientSession
    observers: Observers
    metrics: Metrics
    hooks: HookObserver
