"""Structured logs: structlog for our events, the stdlib loggers (botocore, aiohttp) routed through the same
renderer. JSON lines (for journald and log shippers) or a console renderer on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

from eipfailover.errors import ProviderError
from eipfailover.events import FailoverRecord, NullObserver
from eipfailover.model import CheckResult, CheckStatus, Decision, EipState, Health, Location, TargetState

log = structlog.get_logger("eipfailover")

_QUIET = {"botocore": logging.WARNING, "boto3": logging.WARNING, "urllib3": logging.WARNING,
          "aiohttp.access": logging.WARNING}


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog and the stdlib root logger. ``fmt`` is ``json``, ``console`` or ``auto`` (console on a
    TTY)."""
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    tail: list[Any] = [] if console else [structlog.processors.dict_tracebacks]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(floor, root.level))


def _binding_text(state: EipState) -> str:
    return str(state.bound_to) if state.bound_to is not None else "unattached"


class LogObserver(NullObserver):
    """Logs one event per transition, with fixed keys: group, target, eips, failover_id, reason,
    duration_seconds."""

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None:
        if result.status is CheckStatus.UNKNOWN:
            log.debug("check_unknown", group=group, target=target, check=check, detail=result.detail)
        elif not result.ok:
            log.debug("check_failed", group=group, target=target, check=check, result=result.status.value,
                      detail=result.detail, latency_seconds=round(result.latency, 4))

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        if after.state is TargetState.UP:
            log.info("target_up", group=group, target=target, previous=before.state.value,
                     successes=after.successes)
        else:
            log.warning("target_down", group=group, target=target, previous=before.state.value,
                        failures=after.failures, result=cause.status.value, detail=cause.detail)

    def on_placement(self, group: str, location: Location, eips: Mapping[str, EipState]) -> None:
        log.info("eips_located", group=group, placement=location.placement.value, target=location.active,
                 eips={eip: _binding_text(s) for eip, s in eips.items()})
        if location.foreign:
            log.warning("eip_on_foreign_resource", group=group,
                        eips={e: _binding_text(eips[e]) for e in location.foreign},
                        detail="on a resource that is none of the group's targets (taken back only with "
                               "adopt_foreign: true)")

    def on_cloud_error(self, group: str, error: ProviderError | None) -> None:
        if error is None:
            log.info("cloud_read_recovered", group=group)
        else:
            log.error("cloud_read_failed", group=group, error=str(error), code=error.code,
                      retryable=error.retryable)

    def on_decision(self, group: str, decision: Decision) -> None:
        log.info("decision", group=group, action=decision.action.value, reason=decision.reason.value,
                 target=decision.target)

    def on_failover_started(self, record: FailoverRecord) -> None:
        log.warning("failover_started", group=record.group, failover_id=record.id, trigger=record.trigger.value,
                    reason=record.reason, target=record.to_target, from_target=record.from_target,
                    eips=list(record.eips), requested_by=record.requested_by)

    def on_maintenance(self, group: str, enabled: bool) -> None:
        log.warning("maintenance_changed", group=group, enabled=enabled)

    def on_failover_finished(self, record: FailoverRecord) -> None:
        fields = {"group": record.group, "failover_id": record.id, "trigger": record.trigger.value,
                  "reason": record.reason, "target": record.to_target, "from_target": record.from_target,
                  "eips": list(record.eips), "attempts": record.attempts,
                  "duration_seconds": round(record.duration or 0.0, 3)}
        if record.result == "success":
            log.info("failover_verified", **fields)
        elif record.result == "skipped":
            log.warning("failover_skipped", error=record.error, requested_by=record.requested_by, **fields)
        elif record.result == "dry_run":
            log.warning("failover_dry_run", detail=record.error, requested_by=record.requested_by, **fields)
        elif record.result == "interrupted":  # found unfinished in the journal at start, and reconciled
            log.warning("failover_interrupted", detail=record.error, **fields)
        else:
            log.error("failover_failed", error=record.error, **fields)
