"""The HTTP API (aiohttp): status, history, metrics, and the token-protected manual failover and maintenance switch.

The API records intents; the engine carries them out. It never calls a provider. Every error is JSON
``{"error": code, "message": text}``. Routes and their documents are in ``openapi.yaml`` beside this module.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from eipfailover.cluster.base import CoordinationError
from eipfailover.cluster.solo import Solo
from eipfailover.credentials import credential_file
from eipfailover.engine import Engine, GroupRunner
from eipfailover.events import FailoverRecord
from eipfailover.model import Action, ManualRequest, Reason
from eipfailover.status import GroupStatus

MAX_BODY = 64 * 1024
BODY_TIMEOUT = 10.0
"""How long a request body may take to arrive (the head's limit is the server's keep-alive timeout)."""
_M = TypeVar("_M", bound=BaseModel)
HistoryReader = Callable[[str | None, int], Awaitable[list[FailoverRecord]]]
"""``(group or None, limit)`` -> the newest failover records first (the journal, or the history in memory)."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class FailoverBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    to: str | None = None
    force: StrictBool = False
    reason: str = Field("", max_length=500)


class MaintenanceBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: StrictBool


def read_token(token_file: Path | None) -> str | None:
    """The API token: from ``token_file`` if configured (an unreadable or empty file is an error), else from
    systemd's ``$CREDENTIALS_DIRECTORY/api-token`` if present, else none (changes are then refused)."""
    path = credential_file(token_file, "api-token")
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"api token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise ValueError(f"api token file {path} is empty")
    return token


def record_json(record: FailoverRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "id": record.id, "group": record.group, "trigger": record.trigger.value, "reason": record.reason,
        "from": record.from_target, "to": record.to_target, "eips": list(record.eips), "result": record.result,
        "error": record.error or None, "requested_by": record.requested_by, "attempts": record.attempts,
        "started_at": record.started_at, "finished_at": record.finished_at, "duration_seconds": record.duration,
        "steps": [{"operation": s.operation, "sent_at": s.sent_at, "seconds": s.seconds, "result": s.result}
                  for s in record.steps],
    }


def _age(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def group_json(group: GroupStatus) -> dict[str, Any]:
    p = group.policy
    decision = group.decision
    return {
        "name": group.name,
        "provider": group.provider,
        "active_target": group.active,
        "placement": group.placement.value,
        "eips": [
            {"allocation_id": eip, "public_ip": state.public_ip,
             "bound_to": None if state.bound_to is None else str(state.bound_to)}
            for eip, state in group.eip_states.items()
        ],
        "foreign_eips": list(group.foreign),
        "adopt_foreign": group.adopt_foreign,
        "maintenance": group.maintenance,
        "reconciled": group.reconciled,
        "cloud_error": group.cloud_error,
        "cloud_read_age_seconds": _age(group.cloud_read_age),
        "cloud_problem": group.cloud_problem,
        "decision": None if decision is None else {
            "action": decision.action.value, "reason": decision.reason.value, "target": decision.target},
        "failover_in_progress": record_json(group.current),
        "last_failover": record_json(group.last_failover),
        "last_tick_age_seconds": _age(group.last_tick_age),
        "policy": {"interval": p.interval, "fast_interval": p.fast, "timeout": p.timeout, "rise": p.rise,
                   "fall": p.fall, "failback": p.failback, "cooldown": p.cooldown,
                   "detection_seconds": p.detection_seconds},
        "targets": [
            {
                "name": t.name,
                "binding": str(t.binding),
                "state": t.health.state.value,
                "consecutive_successes": t.health.successes,
                "consecutive_failures": t.health.failures,
                "checks": [
                    {"name": name, "result": r.status.value, "latency_seconds": round(r.latency, 6),
                     "detail": r.detail}
                    for name, r in t.checks.items()
                ],
                "verdict": t.verdict.state.value,
                "observers": [{"node": node, "state": state} for node, state in sorted(t.observers.items())],
            }
            for t in group.targets
        ],
    }


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message, **exc.extra)
    except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        response = _error(exc.status, code, f"{exc.reason}: {request.method} {request.path}")
        if "Allow" in exc.headers:  # RFC 9110: a 405 says what is allowed
            response.headers["Allow"] = exc.headers["Allow"]
        return response


_REFUSALS = {
    Reason.CLOUD_UNKNOWN: "the cloud cannot be read now, so where the EIPs are is unknown; use force to move anyway",
    Reason.IN_TRANSITION: "the cloud is still moving an EIP of this group; use force to move anyway",
    Reason.IN_PROGRESS: "a failover of this group is already running",
    Reason.MANUAL_ALREADY_ACTIVE: "the EIPs are already on that target",
    Reason.MANUAL_TARGET_UNHEALTHY: "the target is not confirmed healthy; use force to move anyway",
    Reason.FOREIGN: "every EIP of this group is on a resource outside it; use force to take them",
}
_CODES = {Reason.IN_TRANSITION: "in_transition"}
"""API error codes that differ from the decision's reason."""


class Api:
    """The aiohttp application over an engine, its history and its metrics registry."""

    def __init__(self, engine: Engine, history: HistoryReader, registry: CollectorRegistry,
                 token: str | None) -> None:
        self.engine = engine
        self.history = history
        self.token = token
        self.metrics = make_aiohttp_handler(registry)
        self.app = web.Application(middlewares=[_json_errors], client_max_size=MAX_BODY)
        self.app.add_routes([
            *self._probes(),
            web.get("/v1/groups", self.groups),
            web.get("/v1/groups/{name}", self.group),
            web.get("/v1/history", self.history_list),
            web.get("/v1/cluster", self.cluster),
            web.get("/v1/openapi.yaml", self.openapi),
            web.post("/v1/groups/{name}/failover", self.failover),
            web.post("/v1/groups/{name}/maintenance", self.maintenance),
        ])

    def _probes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz), web.get("/metrics", self.metrics)]

    def metrics_app(self) -> web.Application:
        """The application of the separate metrics listener: the probes and ``/metrics`` only."""
        app = web.Application(middlewares=[_json_errors], client_max_size=1024)
        app.add_routes(self._probes())
        return app

    # --- helpers ---
    def _runner(self, request: web.Request) -> GroupRunner:
        name = request.match_info["name"]
        runner = self.engine.runners.get(name)
        if runner is None:
            raise ApiError(404, "unknown_group", f"no group named {name!r}")
        return runner

    def _authorize(self, request: web.Request) -> None:
        if self.token is None:
            raise ApiError(403, "changes_disabled",
                           "no API token is configured (api.token_file or $CREDENTIALS_DIRECTORY/api-token), "
                           "so the API accepts no changes")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # the header arrives decoded with surrogateescape: bytes that are not UTF-8 can never match the token
        presented = given.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, self.token.encode()):
            raise ApiError(401, "unauthorized", "missing, malformed or wrong bearer token")

    async def _body(self, request: web.Request, model: type[_M]) -> _M:
        too_large = ApiError(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise too_large
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                raw = await request.read()
        except TimeoutError:
            raise ApiError(408, "request_timeout", f"the body did not arrive within {BODY_TIMEOUT:g}s") from None
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_request", "the body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: "
                f"{'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}"
                for e in exc.errors()
            )
            raise ApiError(400, "invalid_request", problems) from None

    # --- probes ---
    async def healthz(self, request: web.Request) -> web.Response:
        """200 while every group's loop completes ticks; 503 if one's last tick is older than 3 intervals."""
        stale = self.engine.stalled(time.monotonic())
        if stale:
            return _error(503, "engine_stalled", f"no completed check round for 3 intervals: {', '.join(stale)}")
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 only while the daemon can do its job: every group has read the cloud successfully within the last 3
        intervals (and has completed a check round). 503 names each group that cannot, and why."""
        if self.engine.stop.is_set():
            return _error(503, "stopping", "the daemon is stopping")
        coordinator = self.engine.coordinator
        problem = coordinator.problem() if coordinator is not None else None
        if problem is not None:
            return _error(503, "coordination_lost", f"{problem}: nobody here moves anything")
        now = time.monotonic()
        problems = self.engine.blind(now)
        for runner in self.engine.runners.values():
            if runner.last_tick_at is None and not runner.stopping:
                problems.setdefault(runner.name, "no completed check round yet")
        if problems:
            text = "; ".join(f"{name}: {why}" for name, why in problems.items())
            return _error(503, "not_ready", text, groups=[{"name": n, "reason": why} for n, why in problems.items()])
        return web.json_response({"status": "ready"})

    # --- reads ---
    async def groups(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        return web.json_response({"groups": [group_json(r.status(now)) for r in self.engine.runners.values()]})

    async def group(self, request: web.Request) -> web.Response:
        return web.json_response(group_json(self._runner(request).status(time.monotonic())))

    async def history_list(self, request: web.Request) -> web.Response:
        group = request.query.get("group")
        if group is not None and group not in self.engine.runners:
            raise ApiError(404, "unknown_group", f"no group named {group!r}")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= 1000:
            raise ApiError(400, "invalid_request", "limit must be an integer from 1 to 1000")
        return web.json_response({"failovers": [record_json(r) for r in await self.history(group, limit)]})

    async def cluster(self, request: web.Request) -> web.Response:
        coordinator = self.engine.coordinator
        status = (coordinator or Solo()).status()
        return web.json_response({
            "node": status.node, "leader": status.leader, "leader_api": status.leader_api, "term": status.term,
            "acting": status.acting, "coordination": status.coordination, "clustered": coordinator is not None,
            "members": [{"node": m.node, "api": m.api, "leader": m.leader, "last_seen": m.last_seen}
                        for m in status.members],
        })

    def _leading(self) -> None:
        """Changes go to the daemon that acts: on a follower, 409 ``not_leader`` names it (the CLI follows); on the
        leader while it cannot act (its lease is within the margin of lapsing, being renewed), 503 ``not_acting``."""
        coordinator = self.engine.coordinator
        if coordinator is None or coordinator.acting():
            return
        if not coordinator.available():
            raise ApiError(503, "coordination_lost", "the coordination store (etcd) cannot be reached: nobody can "
                                                     "act now; try again once it is back")
        status = coordinator.status()
        if status.leader == status.node:  # not another daemon: following would come back here
            raise ApiError(503, "not_acting", f"the leader key names this daemon ({status.node}) but it cannot act "
                                              "now (its lease is being renewed, or a previous run's lease has yet "
                                              "to expire); try again")
        where = f"{status.leader} at {status.leader_api}" if status.leader else "no leader is elected yet"
        raise ApiError(409, "not_leader", f"this daemon ({status.node}) does not lead the cluster: {where}",
                       leader=status.leader, leader_api=status.leader_api)

    async def openapi(self, request: web.Request) -> web.Response:
        text = resources.files("eipfailover").joinpath("openapi.yaml").read_text(encoding="utf-8")
        return web.Response(text=text, content_type="application/yaml")

    # --- changes ---
    async def failover(self, request: web.Request) -> web.Response:
        self._authorize(request)
        self._runner(request)  # an unknown group is a 404 before the body is read
        body = await self._body(request, FailoverBody)
        self._leading()
        runner = self._runner(request)  # the group as it is now: a reload may have replaced it meanwhile
        if body.to is not None and body.to not in runner.targets:
            raise ApiError(404, "unknown_target", f"group {runner.name!r} has no target named {body.to!r}")
        if self.engine.stop.is_set() or runner.stopping:
            raise ApiError(503, "stopping", "the daemon is stopping, or reloading this group; try again")
        if runner.state.manual is not None:
            raise ApiError(409, "failover_pending", "a manual failover of this group is already waiting")
        requested_by = request.headers.get("X-Requested-By") or f"api@{request.remote}"
        req = ManualRequest(to=body.to, force=body.force, reason=body.reason, id=uuid.uuid4().hex[:12],
                            requested_by=requested_by[:200])
        decision, _ = runner.plan(replace(runner.snapshot(), manual=req), time.monotonic())
        if decision.action is Action.NONE:
            runner.refuse(req, decision)
            code = _CODES.get(decision.reason, decision.reason.value)
            raise ApiError(409, code, _REFUSALS.get(decision.reason, code))
        runner.request_failover(req)
        return web.json_response(
            {"failover_id": req.id, "group": runner.name, "to": decision.target, "status": "accepted"}, status=202
        )

    async def maintenance(self, request: web.Request) -> web.Response:
        self._authorize(request)
        self._runner(request)
        body = await self._body(request, MaintenanceBody)
        self._leading()
        if self.engine.coordinator is not None:  # shared: every daemon takes it, and it outlives this one
            try:
                await self.engine.coordinator.set_maintenance(request.match_info["name"], body.enabled)
            except CoordinationError as exc:
                raise ApiError(503, "coordination_lost", str(exc)) from None
        runner = self._runner(request)  # the group as it is now (carried over to its replacement if reloading)
        runner.set_maintenance(body.enabled)
        return web.json_response({"group": runner.name, "maintenance": runner.state.maintenance})
