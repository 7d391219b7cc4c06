"""Prometheus metrics on the daemon's own registry (design.md section 5).

:class:`Metrics` is an engine observer and a provider request observer. Every known label set is initialised at
start so that ``rate()`` and ``increase()`` see the first event. Labels are bounded: names from the config and
fixed vocabularies, never IDs or IPs.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from eipfailover import __version__
from eipfailover.config import Config, GroupConfig, check_name
from eipfailover.engine import FailoverRecord, NullObserver
from eipfailover.model import CheckResult, CheckStatus, Decision, EipState, Health, Placement, Reason, TargetState

CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAILOVER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TRIGGERS = ("auto", "manual", "failback")
RESULTS = ("success", "failure", "skipped")
PROVIDER_RESULTS = ("ok", "retryable", "error")
_HELD = frozenset({Reason.COOLDOWN, Reason.RATE_LIMITED, Reason.NO_HEALTHY_STANDBY})
"""Decisions that hold back an automatic move that was called for (refused manual requests come as records)."""


class Metrics(NullObserver):
    def __init__(self, config: Config, provider_operations: Mapping[str, tuple[str, ...]]) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the series count and no alert uses them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "eipfailover_"
        self.build_info = Gauge(p + "build_info", "Always 1; the version is a label.", ["version"], registry=r)
        self.target_up = Gauge(p + "target_up", "1 if the target is confirmed UP (rise/fall), else 0.",
                               ["group", "target"], registry=r)
        self.active_target = Gauge(p + "active_target", "1 for the target that holds all of the group's EIPs.",
                                   ["group", "target"], registry=r)
        self.checks = Counter(p + "checks", "Health check results.", ["group", "target", "check", "result"],
                              registry=r)
        self.check_duration = Histogram(p + "check_duration_seconds", "Health check latency.",
                                        ["group", "target", "check"], buckets=CHECK_BUCKETS, registry=r)
        self.failovers = Counter(p + "failovers", "Failovers by trigger and result (skipped: a move was called "
                                 "for but held back).", ["group", "trigger", "result"], registry=r)
        self.failover_duration = Histogram(p + "failover_duration_seconds", "Time from the start of a failover to "
                                           "its verification or failure.", ["group"], buckets=FAILOVER_BUCKETS,
                                           registry=r)
        self.last_failover = Gauge(p + "last_failover_timestamp_seconds", "When the last failover finished "
                                   "(Unix time).", ["group"], registry=r)
        self.maintenance = Gauge(p + "maintenance", "1 while the group is in maintenance.", ["group"], registry=r)
        self.eip_attached = Gauge(p + "eip_attached", "1 when every EIP of the group is on one of its targets.",
                                  ["group"], registry=r)
        self.provider_requests = Counter(p + "provider_requests", "Cloud API requests.",
                                         ["provider", "operation", "result"], registry=r)
        self.provider_duration = Histogram(p + "provider_request_duration_seconds", "Cloud API request latency.",
                                           ["provider", "operation"], buckets=PROVIDER_BUCKETS, registry=r)

        self.config_reloads = Counter(p + "config_reloads", "Config reloads (SIGHUP) by result.", ["result"],
                                      registry=r)
        self.targets: dict[str, list[str]] = {}
        self.build_info.labels(__version__).set(1)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        for group in config.groups:
            self.add_group(group)
        for provider, operations in provider_operations.items():
            self.add_provider(provider, operations)

    def add_group(self, group: GroupConfig) -> None:
        """Initialise a group's label sets (at start, and for groups added by a reload)."""
        self.targets[group.name] = [t.name for t in group.targets]
        self.maintenance.labels(group.name).set(0)
        self.eip_attached.labels(group.name).set(0)
        self.failover_duration.labels(group.name)
        for trigger in TRIGGERS:
            for result in RESULTS:
                self.failovers.labels(group.name, trigger, result)
        for target in group.targets:
            self.target_up.labels(group.name, target.name).set(0)
            self.active_target.labels(group.name, target.name).set(0)
            for check in target.checks:
                name = check_name(check)
                self.check_duration.labels(group.name, target.name, name)
                for status in CheckStatus:
                    self.checks.labels(group.name, target.name, name, status.value)

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
        self.checks.labels(group, target, check, result.status.value).inc()
        self.check_duration.labels(group, target, check).observe(result.latency)

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        self.target_up.labels(group, target).set(1 if after.state is TargetState.UP else 0)

    def on_placement(self, group: str, placement: Placement, active: str | None,
                     eips: Mapping[str, EipState]) -> None:
        self.eip_attached.labels(group).set(1 if placement is Placement.ON_TARGET else 0)
        for target in self.targets[group]:
            self.active_target.labels(group, target).set(1 if target == active else 0)

    def on_decision(self, group: str, decision: Decision) -> None:
        if decision.reason in _HELD:
            self.failovers.labels(group, "auto", "skipped").inc()

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self.failovers.labels(record.group, record.trigger.value, record.result).inc()
        if record.result != "skipped" and record.finished_at is not None:
            self.failover_duration.labels(record.group).observe(record.duration or 0.0)
            self.last_failover.labels(record.group).set(record.finished_at)

    def on_maintenance(self, group: str, enabled: bool) -> None:
        self.maintenance.labels(group).set(1 if enabled else 0)
