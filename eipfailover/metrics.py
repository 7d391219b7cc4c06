"""Prometheus metrics on the daemon's own registry (design.md section 5).

Counters and histograms are fed by events: :class:`Metrics` is an engine observer and a provider request observer;
every known label set is initialised when a group appears, so that ``rate()`` and ``increase()`` see the first
event, and removed when the group goes. The state gauges (``target_up``, ``active_target``, ``maintenance``,
``eip_attached``, ``eips_foreign``, ``cloud_read_age_seconds``) are read from the engine at scrape time by
:class:`StateCollector`, so they always show the engine's actual state, after a reload too. Labels are bounded:
names from the config and fixed vocabularies, never IDs or IPs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from eipfailover import __version__
from eipfailover.cluster.base import Coordinator
from eipfailover.config import Config, GroupConfig, check_name
from eipfailover.engine import Engine
from eipfailover.events import FailoverRecord, NullObserver
from eipfailover.model import CheckResult, CheckStatus, Decision, Placement, Reason, TargetState

CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAILOVER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TRIGGERS = ("auto", "manual", "failback")
RESULTS = ("success", "failure", "skipped", "dry_run", "interrupted")
PROVIDER_RESULTS = ("ok", "throttled", "retryable", "error", "timeout", "cancelled")
_HELD = frozenset({Reason.COOLDOWN, Reason.RATE_LIMITED, Reason.NO_HEALTHY_STANDBY})
"""Decisions that hold back an automatic move that was called for (refused manual requests come as records)."""
P = "eipfailover_"


class Metrics(NullObserver):
    def __init__(self, config: Config, provider_operations: dict[str, tuple[str, ...]]) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the series count and no alert uses them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Gauge(P + "build_info", "Always 1; the version is a label.", ["version"], registry=r)
        self.checks = Counter(P + "checks", "Health check results (unknown: the check could not tell, e.g. the "
                              "cloud API it reads was throttled).", ["group", "target", "check", "result"],
                              registry=r)
        self.check_duration = Histogram(P + "check_duration_seconds", "Health check latency.",
                                        ["group", "target", "check"], buckets=CHECK_BUCKETS, registry=r)
        self.failovers = Counter(P + "failovers", "Failovers by trigger and result (skipped: a move was called "
                                 "for but held back; dry_run: a move a group in dry run would have made; interrupted: "
                                 "the daemon died during it, reconciled at the next start).",
                                  ["group", "trigger", "result"], registry=r)
        self.failover_duration = Histogram(P + "failover_duration_seconds", "Time from the start of a failover to "
                                           "its verification or failure.", ["group"], buckets=FAILOVER_BUCKETS,
                                           registry=r)
        self.last_failover = Gauge(P + "last_failover_timestamp_seconds", "When the last failover finished "
                                   "(Unix time).", ["group"], registry=r)
        self.provider_requests = Counter(P + "provider_requests", "Cloud API requests by result (throttled: refused "
                                         "for its rate; timeout: no answer in time; cancelled: abandoned, e.g. at "
                                         "shutdown).",
                                         ["provider", "operation", "result"], registry=r)
        self.provider_duration = Histogram(P + "provider_request_duration_seconds", "Cloud API request latency.",
                                           ["provider", "operation"], buckets=PROVIDER_BUCKETS, registry=r)
        self.config_reloads = Counter(P + "config_reloads", "Config reloads (SIGHUP) by result.", ["result"],
                                      registry=r)
        self.last_interrupted = Gauge(P + "last_interrupted_failover_timestamp_seconds", "When a failover cut by "
                                      "the daemon's death was reconciled at a start (Unix time; 0: none since "
                                      "this start).", ["group"], registry=r)
        self.journal_up = Gauge(P + "journal_up", "1 while the journal records (or there is none: state_directory "
                                "null); 0 when degraded: writes fail or hang, failovers go on unrecorded.",
                                registry=r)
        self.journal_up.set(1)
        self.groups: dict[str, GroupConfig] = {}
        self.build_info.labels(__version__).set(1)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        for group in config.groups:
            self.add_group(group)
        for provider, operations in provider_operations.items():
            self.add_provider(provider, operations)

    def watch(self, engine: Engine) -> None:
        """Export the engine's state gauges, and in a cluster the cluster's (read at each scrape)."""
        self.registry.register(StateCollector(engine))
        if engine.coordinator is not None:
            self.registry.register(ClusterCollector(engine.coordinator))

    def add_group(self, group: GroupConfig) -> None:
        """Initialise a group's label sets (at start, and for groups a reload adds or changes); a changed group's
        targets and checks that are gone lose their series."""
        old = self.groups.get(group.name)
        self.groups[group.name] = group
        if old is not None:
            self._remove(set(_label_sets(old)) - set(_label_sets(group)))
        self.failover_duration.labels(group.name)
        self.last_failover.labels(group.name)
        self.last_interrupted.labels(group.name)
        for trigger in TRIGGERS:
            for result in RESULTS:
                self.failovers.labels(group.name, trigger, result)
        for _, target, check in _label_sets(group):
            self.check_duration.labels(group.name, target, check)
            for status in CheckStatus:
                self.checks.labels(group.name, target, check, status.value)

    def remove_group(self, name: str) -> None:
        """Drop every series of a group that is gone."""
        group = self.groups.pop(name, None)
        if group is None:
            return
        self._remove(_label_sets(group))
        for metric in (self.failover_duration, self.last_failover, self.last_interrupted):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        for trigger in TRIGGERS:
            for result in RESULTS:
                with contextlib.suppress(KeyError):
                    self.failovers.remove(name, trigger, result)

    def _remove(self, label_sets: Iterable[tuple[str, str, str]]) -> None:
        for group, target, check in label_sets:
            with contextlib.suppress(KeyError):
                self.check_duration.remove(group, target, check)
            for status in CheckStatus:
                with contextlib.suppress(KeyError):
                    self.checks.remove(group, target, check, status.value)

    def add_provider(self, provider: str, operations: tuple[str, ...]) -> None:
        for operation in operations:
            self.provider_duration.labels(provider, operation)
            for result in PROVIDER_RESULTS:
                self.provider_requests.labels(provider, operation, result)

    # --- provider requests ---
    def on_request(self, provider: str, operation: str, result: str, seconds: float) -> None:
        self.provider_requests.labels(provider, operation, result).inc()
        self.provider_duration.labels(provider, operation).observe(seconds)

    # --- engine events ---
    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None:
        if group not in self.groups:  # the last word of a group that is gone: do not bring its series back
            return
        self.checks.labels(group, target, check, result.status.value).inc()
        self.check_duration.labels(group, target, check).observe(result.latency)

    def on_decision(self, group: str, decision: Decision) -> None:
        if group in self.groups and decision.reason in _HELD:
            self.failovers.labels(group, "auto", "skipped").inc()

    def on_failover_finished(self, record: FailoverRecord) -> None:
        if record.group not in self.groups:
            return
        self.failovers.labels(record.group, record.trigger.value, record.result).inc()
        if record.result == "interrupted" and record.finished_at is not None:  # its duration includes the outage
            self.last_interrupted.labels(record.group).set(record.finished_at)
        elif record.result not in ("skipped", "dry_run") and record.finished_at is not None:
            self.failover_duration.labels(record.group).observe(record.duration or 0.0)
            self.last_failover.labels(record.group).set(record.finished_at)


def _label_sets(group: GroupConfig) -> list[tuple[str, str, str]]:
    return [(group.name, t.name, check_name(c)) for t in group.targets for c in t.checks]


class StateCollector(Collector):
    """The engine's state, read at scrape time (on the event loop: the aiohttp exporter runs there)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _families(self) -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        return {
            "target_up": GaugeMetricFamily(P + "target_up", "1 if the target is confirmed UP (rise/fall), else 0.",
                                           labels=["group", "target"]),
            "active_target": GaugeMetricFamily(P + "active_target", "1 for the target that holds the group's EIPs "
                                               "(as last seen; EIPs on a foreign resource, left alone, aside).",
                                               labels=["group", "target"]),
            "maintenance": GaugeMetricFamily(P + "maintenance", "1 while the group is in maintenance.",
                                             labels=["group"]),
            "eip_attached": GaugeMetricFamily(P + "eip_attached", "1 when every EIP of the group is on one of its "
                                              "targets (as last seen).", labels=["group"]),
            "eips_foreign": GaugeMetricFamily(P + "eips_foreign", "EIPs of the group found on a resource that is "
                                              "none of its targets (as last seen).", labels=["group"]),
            "cloud_read_age": GaugeMetricFamily(P + "cloud_read_age_seconds", "Seconds since the group's last "
                                                "successful cloud read (before the first one: since the group "
                                                "started).", labels=["group"]),
            "limit_rate": GaugeMetricFamily(P + "provider_rate_limit", "The requests a second the provider's "
                                            "client-side rate limit allows now (below the configured rate for a "
                                            "while after the cloud throttled a request).", labels=["provider", "kind"]),
            "limit_wait": CounterMetricFamily(P + "provider_rate_limit_wait_seconds", "Seconds cloud requests "
                                              "spent waiting for the provider's rate limit.",
                                              labels=["provider", "kind"]),
        }

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        f = self._families()
        now = time.monotonic()
        for runner in self.engine.runners.values():
            name, cloud = runner.name, runner.state.cloud
            for target in runner.targets.values():
                f["target_up"].add_metric([name, target.name], float(target.health.state is TargetState.UP))
                f["active_target"].add_metric([name, target.name], float(target.name == cloud.managed.active))
            f["maintenance"].add_metric([name], float(runner.state.maintenance))
            f["eip_attached"].add_metric([name], float(cloud.location.placement is Placement.ON_TARGET))
            f["eips_foreign"].add_metric([name], float(len(cloud.location.foreign)))
            since = cloud.read_ok_at or runner.started_at
            f["cloud_read_age"].add_metric([name], now - since if since is not None else 0.0)
        providers = {r.config.provider: r.provider for r in self.engine.runners.values()}
        for name, provider in providers.items():
            for kind, limiter in (("reads", provider.limits.reads), ("mutations", provider.limits.mutations)):
                f["limit_rate"].add_metric([name, kind], limiter.current_rate)
                f["limit_wait"].add_metric([name, kind], limiter.waited)
        return iter(f.values())


class ClusterCollector(Collector):
    """``leader``, ``cluster_up`` and ``cluster_members``, read at scrape time (they change with the clock too: a
    lease runs out without any event)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {
            "leader": GaugeMetricFamily(P + "leader", "1 on the daemon that acts for the cluster (it leads and its "
                                        "lease is safely alive), else 0."),
            "up": GaugeMetricFamily(P + "cluster_up", "1 while this daemon reaches the coordination store and its "
                                    "lease is alive; 0: nobody here moves anything."),
            "members": GaugeMetricFamily(P + "cluster_members", "Daemons of the cluster alive as this one last saw "
                                         "(itself included)."),
        }

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        f = self._families()
        status = self.coordinator.status()
        f["leader"].add_metric([], float(status.acting))
        f["up"].add_metric([], float(status.coordination == "ok"))
        f["members"].add_metric([], float(len(status.members)))
        return iter(f.values())
