"""The composition root: build everything from the config, run the engine and the API, handle signals, shut down.

Lifecycle: startup (:meth:`Daemon._build` for providers, checks, runners and HaVip guards; observers; the API),
main loop (the engine until SIGTERM/SIGINT; SIGHUP reloads through the same :meth:`Daemon._build`), shutdown
(start no new work; let a running failover finish within ``stop_timeout``; then abort it, which re-attaches any EIP
it detached, within ``stop_timeout`` again; drain hooks; close the API and the clients). Signal handlers only set
events, except a second SIGINT, which exits at once and says which EIPs may be left detached.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import signal
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web

from eipfailover import checks, preflight, providers, recovery, registry
from eipfailover import log as log_config
from eipfailover.api import Api, read_token
from eipfailover.checks.base import Check, CheckContext
from eipfailover.cluster.etcd_client import EtcdError
from eipfailover.config import (
    CheckConfig,
    Config,
    GroupConfig,
    check_name,
    dry,
    lease_problems,
    load_config,
    split_host_port,
)
from eipfailover.engine import Engine, GroupRunner, binding_of
from eipfailover.errors import EipFailoverError
from eipfailover.events import Observers, StateStore
from eipfailover.history import MemoryStore
from eipfailover.hooks import HookObserver
from eipfailover.journal import Journal
from eipfailover.log import LogObserver
from eipfailover.metrics import Metrics
from eipfailover.model import Binding
from eipfailover.providers.base import Provider
from eipfailover.serve import CappedSite, app_runner, server_tls
from eipfailover.systemd import Notifier, SystemdObserver, watchdog

if TYPE_CHECKING:
    from eipfailover.cluster.etcd import EtcdCoordinator
    from eipfailover.havip import HaVipGuard

log = structlog.get_logger("eipfailover.daemon")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
PRUNE_PERIOD = 3600.0
GuardKey = tuple[str, str]


class StartupError(EipFailoverError):
    """Something named in a valid config cannot be built (a missing SDK, an unreadable CA file, a bad profile)."""


async def _preflight(config: Config, built: Mapping[str, Provider]) -> None:
    problems = await preflight.check(config, built)
    if problems:
        raise StartupError("; ".join(problems))


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
        t.name: _checks(t.checks, CheckContext(binding_of(t.binding, provider.kind), provider, http, group.name,
                                               t.name), group.policy.timeout, f"groups.{group.name}.targets.{t.name}")
        for t in group.targets
    }


def _guard_spec(group: GroupConfig, target_name: str, provider: Provider) -> tuple[object, ...]:
    target = next(t for t in group.targets if t.name == target_name)
    p = group.policy
    return (target.havip_takeover, target.binding, id(provider), p.interval, p.timeout, p.rise, p.fall,
            group.dry_run)


def build_guard(group: GroupConfig, target_name: str, provider: Provider, http: aiohttp.ClientSession) -> HaVipGuard:
    """The HaVip guard of a target with ``havip_takeover`` (the config guarantees an Alibaba HaVip binding)."""
    from eipfailover.havip import HaVipGuard  # imports the Alibaba SDK (about 1 s): only when used
    from eipfailover.providers.alibaba import AlibabaProvider

    target = next(t for t in group.targets if t.name == target_name)
    takeover = target.havip_takeover
    assert takeover is not None
    assert target.binding.instance_id is not None
    where = f"groups.{group.name}.targets.{target.name}.havip_takeover"
    if not isinstance(provider, AlibabaProvider):
        raise StartupError(f"{where} needs an alibaba provider")
    members = {
        m.instance_id: _checks(m.checks, CheckContext(Binding(m.instance_id, instance_type="EcsInstance"), provider,
                                                      http, group.name, target.name), group.policy.timeout,
                               f"{where}.{m.instance_id}")
        for m in takeover.members
    }
    return HaVipGuard(group.name, target.name, target.binding.instance_id, provider, members, takeover, group.policy,
                      spec=_guard_spec(group, target_name, provider), dry_run=group.dry_run)


def _guard_keys(config: Config) -> list[GuardKey]:
    return [(g.name, t.name) for g in config.groups for t in g.targets if t.havip_takeover is not None]


@dataclass
class _Build:
    """What a config builds, reusing what a running daemon already has where nothing changed."""

    providers: dict[str, Provider]
    fresh: dict[str, Provider]
    runners: list[GroupRunner]
    guards: dict[GuardKey, HaVipGuard]
    token: str | None


@dataclass
class _Parts:
    """The running daemon's long-lived pieces."""

    http: aiohttp.ClientSession
    observers: Observers
    metrics: Metrics
    hooks: HookObserver
    status: SystemdObserver
    store: StateStore
    journal: Journal | None = None
    guards: dict[GuardKey, tuple[HaVipGuard, asyncio.Task[None]]] = field(default_factory=dict)
    closing: set[asyncio.Task[None]] = field(default_factory=set)


class Daemon:
    def __init__(self, config: Config, config_path: str | Path | None = None, *, dry_run: bool = False) -> None:
        """``dry_run``: every group in dry run, whatever the file says (also after a reload), and no driver may
        send a mutating call."""
        self.dry_run = dry_run
        self.config = dry(config) if dry_run else config
        self.config_path = config_path
        self.engine: Engine | None = None
        self.api: Api | None = None
        self.api_port: int | None = None
        self.metrics_port: int | None = None
        self.providers: dict[str, Provider] = {}
        self.notifier = Notifier()
        self.serving = asyncio.Event()
        """Set once the API listens and the engine runs (for in-process tests)."""
        self.guards: dict[GuardKey, HaVipGuard] = {}
        """The running HaVip takeover guards, by (group, target)."""
        self._reload = asyncio.Event()
        self._opened: list[Provider] = []
        self._building: dict[str, Provider] = {}
        self._announced = False  # READY=1 went out: a reload may say RELOADING=1 and READY=1 again
        self.journal: Journal | None = None
        self.store: StateStore = MemoryStore()
        """The journal, or memory when there is none."""
        self.coordinator: EtcdCoordinator | None = None
        """The cluster (``cluster:`` in the config); None: this daemon acts alone."""

    def request_reload(self) -> None:
        """What SIGHUP does: reload the config file at the next turn of the main loop."""
        self._reload.set()

    def _build(self, config: Config, parts: _Parts | None, http: aiohttp.ClientSession,
               observers: Observers) -> _Build:
        """Build what ``config`` needs. With ``parts`` (a reload), reuse every provider whose config is unchanged,
        and build runners and guards only for the groups and targets that changed. New providers go to
        ``self._opened`` at once: if the build fails, :meth:`_close_unused` closes them."""
        old = self.config if parts is not None else None
        by_name: dict[str, Provider] = {}
        fresh: dict[str, Provider] = {}
        self._building = fresh
        built = _Build(by_name, fresh, [], {}, None)
        for name, cfg in config.providers.items():
            if old is not None and name in self.providers and old.providers.get(name) == cfg:
                by_name[name] = self.providers[name]
            else:
                cls = registry.load(providers.REGISTRY, cfg.type, Provider)
                by_name[name] = fresh[name] = cls.from_config(name, cfg)
                fresh[name].read_only = self.dry_run
                self._opened.append(fresh[name])
        old_groups = {g.name: g for g in old.groups} if old is not None else {}
        for group in config.groups:
            provider = by_name[group.provider]
            if old_groups.get(group.name) != group or group.provider in fresh:
                built.runners.append(GroupRunner(group, provider, build_checks(group, provider, http),
                                                 observers, self.store, self.coordinator))
        for key in _guard_keys(config):
            group = next(g for g in config.groups if g.name == key[0])
            provider = by_name[group.provider]
            running = parts.guards.get(key) if parts is not None else None
            if running is None or running[0].spec != _guard_spec(group, key[1], provider):
                built.guards[key] = build_guard(group, key[1], provider, http)
                built.guards[key].coordinator = self.coordinator
        built.token = read_token(config.api.token_file)
        _check_tls(config)
        return built

    async def _close_unused(self) -> None:
        """Close the providers that a failed reload built: nothing uses them."""
        for provider in self._building.values():
            self._opened.remove(provider)
            await provider.close()
        self._building = {}

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until SIGTERM or SIGINT (or :meth:`Engine.request_stop`); return the process exit code."""
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
        runner: web.AppRunner | None = None
        metrics_runner: web.AppRunner | None = None
        pruning: asyncio.Task[None] | None = None
        clustering: asyncio.Task[None] | None = None
        handlers: list[signal.Signals] = []
        try:
            metrics = Metrics(self.config, {})
            hooks = HookObserver({g.name: g.hooks for g in self.config.groups})
            observers = Observers([LogObserver(), metrics, hooks])
            try:
                self.journal = _open_journal(self.config)
                if self.journal is not None:
                    self.store = self.journal
                self.coordinator = _coordinator(self.config)
                built = self._build(self.config, None, http, observers)
                await _preflight(self.config, built.providers)
            except (EipFailoverError, EtcdError, ValueError, OSError, ssl.SSLError) as exc:
                log.error("startup_failed", error=str(exc))
                return EXIT_CONFIG
            # what start-up made (modules, SDK models: some 100,000 objects) lives as long as the daemon: out of
            # the collector's way, a full collection takes ~0 ms instead of 75-200 ms, a stall that would eat into
            # a check's timeout (bench/side_by_side.py)
            gc.collect()
            gc.freeze()
            journal = self.journal
            observers.observers.append(self.store)
            self.providers = built.providers
            for name, provider in built.providers.items():
                provider.on_request = metrics.on_request
                metrics.add_provider(name, type(provider).operations)
            coordinator = self.coordinator
            engine = Engine(built.runners, on_removed=metrics.remove_group, coordinator=coordinator)
            metrics.watch(engine)
            status = SystemdObserver(self.notifier, engine)
            observers.observers.append(status)
            parts = _Parts(http, observers, metrics, hooks, status, self.store, journal)
            if install_signals:  # from here on: a signal during the start-up recovery is handled, not fatal
                handlers = self._install_signals(engine)
            if journal is not None:
                journal.on_state(metrics.journal_up.set)
                await _restore(journal, built.runners)
                pruning = asyncio.create_task(journal.prune_every(PRUNE_PERIOD), name="journal-prune")
            api = self.api = Api(engine, self.store.query, metrics.registry, built.token)
            tls = server_tls(self.config.api.tls.cert_file, self.config.api.tls.key_file) if self.config.api.tls \
                else None
            runner = app_runner(api.app)
            await runner.setup()
            try:
                self.api_port = await _listen(runner, self.config.api.listen, tls)
                if self.config.api.metrics_listen is not None:
                    metrics_runner = app_runner(api.metrics_app())
                    await metrics_runner.setup()
                    self.metrics_port = await _listen(metrics_runner, self.config.api.metrics_listen, tls)
            except OSError as exc:
                log.error("startup_failed", error=f"api: cannot listen: {exc.strerror or exc}")
                return EXIT_FAILURE
            log.info("api_listening", address=f"{self.config.api.host}:{self.api_port}", tls=tls is not None,
                     changes_enabled=built.token is not None, metrics_port=self.metrics_port)
            self.engine = engine
            if coordinator is not None:  # its API URL is known now (the port may have been 0)
                coordinator.set_api(self._advertised())
                coordinator.on_change, coordinator.on_leading = engine.cluster_changed, engine.leading
                clustering = asyncio.create_task(coordinator.run(), name="cluster")
            self._start_guards(parts, built.guards)
            return await self._serve(engine, parts)
        finally:
            for sig in handlers:
                asyncio.get_running_loop().remove_signal_handler(sig)
            self.notifier.close()
            if pruning is not None:
                pruning.cancel()
            if clustering is not None:
                clustering.cancel()
                await asyncio.gather(clustering, return_exceptions=True)
            if self.coordinator is not None:  # after the engine: the next leader takes over without waiting the TTL
                await self.coordinator.close(release=await _settled(self._opened))
            for site_runner in (runner, metrics_runner):
                if site_runner is not None:
                    await site_runner.cleanup()
            await http.close()
            for provider in self._opened:
                await provider.close()
            if self.journal is not None:
                await self.journal.close()

    def _interrupt(self, engine: Engine) -> None:
        if engine.stop.is_set():  # a second Ctrl-C: the operator does not want to wait
            log.warning("daemon_interrupted", exit_code=130, eips_may_be_detached=engine.at_risk(),
                        detail="the next start repairs detached EIPs first")
            os._exit(130)
        engine.request_stop()

    def _install_signals(self, engine: Engine) -> list[signal.Signals]:
        """TERM: stop; INT: stop, a second one exits at once; HUP: reload. The handlers only set flags."""
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: engine.request_stop, signal.SIGINT: lambda: self._interrupt(engine),
                    signal.SIGHUP: self.request_reload}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        return list(handlers)

    async def _serve(self, engine: Engine, parts: _Parts) -> int:
        log.info("daemon_starting", groups=[g.name for g in self.config.groups],
                 detection_seconds={g.name: g.policy.detection_seconds for g in self.config.groups},
                 event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
        running = asyncio.create_task(engine.run(), name="engine")
        helpers = [asyncio.create_task(watchdog(self.notifier, engine)), asyncio.create_task(parts.status.refresh())]
        self.serving.set()
        waiters = {"ready": asyncio.create_task(engine.ready.wait()),
                   "stop": asyncio.create_task(engine.stop.wait()),
                   "reload": asyncio.create_task(self._reload.wait())}
        try:
            while True:
                done, _ = await asyncio.wait({running, *waiters.values()}, return_when=asyncio.FIRST_COMPLETED)
                if "ready" in waiters and waiters["ready"] in done:
                    del waiters["ready"]  # announced once
                    blind = engine.blind(time.monotonic())
                    log.info("daemon_ready", groups=len(engine.runners), cloud_unreadable=sorted(blind))
                    parts.status.update()
                    self.notifier.ready()
                    self._announced = True
                if waiters["reload"] in done and not engine.stop.is_set():
                    self._reload.clear()
                    await self._reload_unless_stopped(engine, parts, waiters["stop"])
                    waiters["reload"] = asyncio.create_task(self._reload.wait())
                if waiters["stop"] in done or running in done:
                    break
            return await self._shutdown(engine, running, parts)
        finally:
            for task in (*waiters.values(), *helpers):
                task.cancel()

    async def _reload_unless_stopped(self, engine: Engine, parts: _Parts, stop: asyncio.Task[bool]) -> None:
        """A reload (its cloud check can take seconds) that a stop cancels: the stop is never held up by it."""
        reloading = asyncio.create_task(self.reload(engine, parts), name="reload")
        await asyncio.wait({reloading, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not reloading.done():
            reloading.cancel()
            await asyncio.wait({reloading})

    def _start_guards(self, parts: _Parts, guards: Mapping[GuardKey, HaVipGuard]) -> None:
        for key, guard in guards.items():
            parts.guards[key] = (guard, asyncio.create_task(guard.run(), name=f"havip-{key[0]}-{key[1]}"))
        self.guards = {key: guard for key, (guard, _) in parts.guards.items()}

    async def _shutdown(self, engine: Engine, running: asyncio.Task[None], parts: _Parts) -> int:
        self.notifier.stopping()
        code = EXIT_OK
        for guard, _ in parts.guards.values():
            guard.stop()
        if not running.done():
            timeout = self.config.stop_timeout
            log.info("daemon_stopping", failovers_running=engine.at_risk())
            if not await _finished(running, timeout):
                log.warning("stop_timeout", seconds=timeout, aborting=engine.at_risk(),
                            detail="no further move; EIPs left detached are re-attached first")
                engine.abort()
                # the critical section: securing what the move detached is bounded by its failover_deadline
                last_resort = max(r.config.policy.failover_deadline for r in engine.runners.values()) + 10.0
                if not await _finished(running, last_resort):
                    running.cancel()
        elif running.exception() is not None:
            log.error("engine_failed", error=repr(running.exception()))
            code = EXIT_FAILURE
        if engine.at_risk():
            log.error("eips_may_be_detached", eips=engine.at_risk(), detail="the next start repairs them first")
            code = EXIT_FAILURE
        if code == EXIT_FAILURE:  # what still waits for a move we gave up on would wait for it
            for task in parts.closing:
                task.cancel()
        pending = [*(task for _, task in parts.guards.values()), *parts.closing]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        await parts.hooks.drain(5.0)
        log.info("daemon_stopped", exit_code=code)
        return code

    async def reload(self, engine: Engine, parts: _Parts) -> None:
        """SIGHUP: validate the new config and everything it names first; keep the old one if anything is wrong.
        Unchanged groups keep running untouched; changed ones are replaced with their state (health of unchanged
        targets, maintenance, move history) carried over, each as soon as its own running failover ends; nothing
        moves because of the reload itself."""
        announce = self._announced  # before the first READY=1, a reload must not tell systemd the start is done
        if announce:
            self.notifier.reloading()
        log.info("reload_started", config=str(self.config_path))
        self._building = {}
        try:
            if self.config_path is None:
                raise EipFailoverError("the daemon was not started from a config file")
            new = load_config(self.config_path)
            new = dry(new) if self.dry_run else new
            if self.config.cluster is not None and new.cluster != self.config.cluster:
                # the cluster section applies at restart: the new providers must suit the running lease
                short = lease_problems(new.providers, self.config.cluster)
                if short:
                    raise EipFailoverError("; ".join(f"{where} (the running cluster.ttl: cluster applies at "
                                                     f"restart): {what}" for where, what in short))
            built = self._build(new, parts, parts.http, parts.observers)
            await _preflight(new, built.providers)
        except asyncio.CancelledError:  # the daemon is stopping: the new config is not applied
            log.warning("reload_cancelled", detail="the daemon is stopping", kept="the running config")
            await self._close_unused()
            raise
        except Exception as exc:  # whatever goes wrong, the running config stays, and so does the daemon
            error = str(exc) if isinstance(exc, EipFailoverError | ValueError | OSError | ssl.SSLError) \
                else f"internal error: {type(exc).__name__}: {exc}"
            log.error("reload_failed", error=error, kept="the running config")
            await self._close_unused()
            parts.metrics.config_reloads.labels("failure").inc()
            if announce:
                self.notifier.ready()
            return
        old_groups = {g.name for g in self.config.groups}
        removed = sorted(old_groups - {g.name for g in new.groups})
        for name, provider in built.fresh.items():
            provider.on_request = parts.metrics.on_request
            parts.metrics.add_provider(name, type(provider).operations)
        for runner in built.runners:
            parts.metrics.add_group(runner.config)
        # a group added back finds its maintenance and recent moves again
        await _remember(parts.store, [r for r in built.runners if r.name not in old_groups])
        if new.state_directory != self.config.state_directory or new.journal != self.config.journal:
            log.warning("reload_partial", detail="state_directory and journal apply at restart")
        if new.cluster != self.config.cluster:
            log.warning("reload_partial", detail="cluster applies at restart")
        parts.hooks.configure({g.name: g.hooks for g in new.groups})
        stale = [p for name, p in self.providers.items() if built.providers.get(name) is not p]
        users = {id(p): [r for r in engine.runners.values() if r.provider is p] for p in stale}
        engine.apply({**dict.fromkeys(removed), **{r.name: r for r in built.runners}})
        wanted = set(_guard_keys(new))
        for key in [k for k in parts.guards if k not in wanted or k in built.guards]:
            guard, task = parts.guards.pop(key)
            self.guards.pop(key, None)
            guard.stop()
            if key in built.guards:
                built.guards[key].carry_over(guard)
            parts.closing.add(task)
            task.add_done_callback(parts.closing.discard)
        self._start_guards(parts, built.guards)
        for provider in stale:  # closed once nothing uses it any more (a replaced group may still be moving)
            task = asyncio.create_task(self._close_when_idle(provider, users[id(provider)], parts))
            parts.closing.add(task)
            task.add_done_callback(parts.closing.discard)
        self.providers = built.providers
        if self.api is not None:
            self.api.token = built.token
        if (new.api.listen, new.api.tls, new.api.metrics_listen) != (
                self.config.api.listen, self.config.api.tls, self.config.api.metrics_listen):
            log.warning("reload_partial", detail="api.listen, api.tls and api.metrics_listen apply at restart")
        if new.log != self.config.log:
            log_config.configure(new.log.format, new.log.level)
        unchanged = [g.name for g in new.groups if g.name not in {r.name for r in built.runners}]
        self.config = new
        gc.unfreeze()  # what start-up froze may now be garbage (the runners replaced): collect it, freeze the rest
        gc.collect()
        gc.freeze()
        log.info("reload_done", changed=[r.name for r in built.runners], removed=removed, unchanged=unchanged,
                 havip_guards_rebuilt=[f"{g}/{t}" for g, t in built.guards])
        parts.metrics.config_reloads.labels("success").inc()
        if announce:
            self.notifier.ready()

    def _advertised(self) -> str:
        """This daemon's API as peers and clients reach it: ``cluster.advertise_api``, else ``api.listen`` with the
        port it got (said loudly when that is loopback or a wildcard: other hosts cannot use it)."""
        cluster = self.config.cluster
        if cluster is not None and cluster.advertise_api is not None:
            return cluster.advertise_api
        host = self.config.api.url.rsplit(":", 1)[0]
        if _local_only(self.config.api.host):
            log.warning("api_not_advertised", api=f"{host}:{self.api_port}", listen=self.config.api.listen,
                        detail="set cluster.advertise_api to an address the other daemons and the CLI reach: a "
                               "follower names this URL when it sends a change to the leader")
        return f"{host}:{self.api_port}"

    async def _close_when_idle(self, provider: Provider, users: Iterable[GroupRunner], parts: _Parts) -> None:
        await asyncio.gather(*(r.wait_idle() for r in users))
        await asyncio.gather(*(t for g, t in parts.guards.values() if g.provider is provider), return_exceptions=True)
        if provider in self._opened:
            self._opened.remove(provider)
            await provider.close()


def _coordinator(config: Config) -> EtcdCoordinator | None:
    if config.cluster is None:
        return None
    from eipfailover.cluster.etcd import EtcdCoordinator, client_for

    log.info("cluster_configured", node=config.cluster.node, endpoints=config.cluster.endpoints,
             prefix=config.cluster.prefix, ttl=config.cluster.ttl)
    return EtcdCoordinator(config.cluster, None, client_for(config.cluster))


def _open_journal(config: Config) -> Journal | None:
    if config.state_directory is None:
        log.warning("journal_disabled", detail="state_directory is null: history and state live in memory only")
        return None
    journal = Journal.open(config.state_directory, max_age=config.journal.max_age,
                           max_records=config.journal.max_records)
    log.info("journal_opened", path=str(journal.path))
    return journal


async def _restore(journal: Journal, runners: Sequence[GroupRunner]) -> None:
    """Before the engine starts: each group's memory, then the failovers a crash left unfinished, reconciled (those
    of groups no longer configured are recorded as not reconciled)."""
    await _remember(journal, runners)
    try:
        unfinished = await journal.unfinished()
    except Exception as exc:
        log.error("journal_read_failed", error=str(exc), detail="unfinished failovers are not reconciled; the "
                                                                "engine repairs any EIP left detached")
        return
    groups = {r.name: r for r in runners}
    for record in await recovery.recover(unfinished, groups):
        if record.group not in groups:
            journal.on_failover_finished(record)


async def _remember(store: StateStore, runners: Sequence[GroupRunner]) -> None:
    try:
        memory = await store.remember({r.name: r.config.policy.max_failovers.window for r in runners})
    except Exception as exc:
        log.error("journal_read_failed", error=str(exc), detail="maintenance and recent moves not restored")
        return
    for runner in runners:
        runner.remember(memory[runner.name])


def _local_only(host: str) -> bool:
    """A listen address other hosts cannot reach this daemon at: a wildcard or loopback."""
    if host in ("", "0.0.0.0", "::", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _settled(providers: Iterable[Provider]) -> bool:
    """Whether every mutating cloud call still under way has been answered (each given its driver's longest call):
    only then may a leader hand over at once."""
    results = await asyncio.gather(*(p.settle(p.call_deadline) for p in providers))
    return all(results)


async def _finished(task: asyncio.Task[None], timeout: float) -> bool:
    """Wait up to ``timeout`` for ``task`` without cancelling it; True if it is done."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    return bool(done)


async def _listen(runner: web.AppRunner, address: str, tls: ssl.SSLContext | None) -> int:
    """Serve ``runner`` on ``address``; the port it got (``address`` may ask for port 0)."""
    host, port = split_host_port(address)
    await CappedSite(runner, host, port, ssl_context=tls).start()
    return int(runner.addresses[0][1])


def _check_tls(config: Config) -> None:
    if config.api.tls is not None:
        try:
            server_tls(config.api.tls.cert_file, config.api.tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"api.tls: {getattr(exc, 'strerror', None) or exc}") from None
