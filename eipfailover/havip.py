"""HaVip takeover (Alibaba): keep a HaVip's master healthy.

A HaVip is an in-zone floating private IP that keepalived moves between ECS instances; an EIP on the HaVip follows
it. keepalived only notices a dead host, not a dead service on a live host that still advertises. For a target with
``havip_takeover``, a :class:`HaVipGuard` checks every member instance (rise/fall, like targets) and reads the
HaVip's master; when the master is confirmed DOWN while another member is UP, it unassociates the master from the
HaVip with ``Force=True``, so keepalived on the healthy member takes the HaVip over, and runs ``on_takeover``.
The decision is :func:`eipfailover.policy.havip_takeover`.

In a cluster every daemon's guard checks the members and publishes its view (under :attr:`HaVipGuard.key`); the
decision takes each member's state from the observers' quorum, as a group's does for its targets, and only the
leader's guard takes over, each unassociate fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from eipfailover import health, policy, quorum
from eipfailover.checks.base import Check
from eipfailover.cluster.base import Coordinator
from eipfailover.config import HaVipTakeoverConfig, PolicyConfig
from eipfailover.engine import run_every
from eipfailover.errors import NotLeader, ProviderError
from eipfailover.hooks import hook_environment, run_hook, substitute
from eipfailover.model import Action, CheckResult, Decision, Health
from eipfailover.providers.alibaba import AlibabaProvider
from eipfailover.providers.base import fenced

log = structlog.get_logger("eipfailover.havip")


@dataclass(slots=True)
class Cooldown:
    """When the guard last took the HaVip over (monotonic). A cell shared with the guard a reload rebuilds this one
    as, so that a takeover still in flight holds the cooldown of both, or gives it back to both."""

    since: float | None = None


class HaVipGuard:
    def __init__(self, group: str, target: str, havip_id: str, provider: AlibabaProvider,
                 members: Mapping[str, Sequence[Check]], config: HaVipTakeoverConfig, policy_config: PolicyConfig,
                 spec: tuple[object, ...] = (), dry_run: bool = False,
                 coordinator: Coordinator | None = None) -> None:
        self.spec = spec
        self.coordinator = coordinator
        """In a cluster, only the leader's guard takes over (each unassociate fenced); None: a daemon alone."""
        self.dry_run = dry_run
        """What the guard was built from: a reload rebuilds it only when this changes."""
        self.group, self.target, self.havip_id = group, target, havip_id
        self.provider = provider
        self.members = dict(members)
        self.config = config
        self.policy = policy_config
        self.health = {m: Health() for m in self.members}
        self.master = ""
        self.decision: Decision | None = None
        self.cooldown = Cooldown()
        self.cloud_error: str | None = None
        self.hooks: set[asyncio.Task[bool]] = set()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Tick every group interval until :meth:`stop`, then let a running hook finish."""
        await run_every(lambda: self.policy.interval, self._stop, self._stop, self.tick, group=self.group,
                        target=self.target)
        await asyncio.gather(*self.hooks, return_exceptions=True)

    @property
    def key(self) -> str:
        """The name its members' views are published under in a cluster (never a group's: a group's name has no
        ``/``)."""
        return f"{self.group}/{self.target}/havip"

    def stop(self) -> None:
        self._stop.set()
        if self.coordinator is not None:  # it no longer votes (a rebuilt guard publishes again at once)
            self.coordinator.forget(self.key)

    def carry_over(self, old: HaVipGuard) -> None:
        """After a reload that changed this guard: keep the cooldown, and the health of members whose checks did
        not change."""
        self.cooldown = old.cooldown  # the same cell: a takeover still in flight holds, or gives back, both
        old_members = {m.instance_id: m for m in old.config.members}
        for member in self.config.members:
            if old_members.get(member.instance_id) == member and member.instance_id in old.health:
                self.health[member.instance_id] = old.health[member.instance_id]

    async def tick(self) -> None:
        async def run_member(checks: Sequence[Check]) -> list[CheckResult]:
            return list(await asyncio.gather(*(c.run() for c in checks)))

        results, state = await asyncio.gather(
            asyncio.gather(*(run_member(c) for c in self.members.values())), self._read())
        if self._stop.is_set():  # stopped meanwhile (a reload removed it): no vote, no takeover
            return
        now = time.monotonic()
        for member, member_results in zip(self.members, results, strict=True):
            before = self.health[member]
            combined = health.combine(member_results)
            self.health[member] = health.apply(before, combined, rise=self.policy.rise, fall=self.policy.fall,
                                               now=now)
            if self.health[member].state is not before.state:
                log.info("havip_member_" + self.health[member].state.value, group=self.group, target=self.target,
                         havip=self.havip_id, instance=member, detail=combined.detail)
        verdicts = self._verdicts(blind=state is None)
        if state is None:
            return
        self.master = state
        decision = policy.havip_takeover(self.master, tuple(self.members), verdicts, now,
                                         self.cooldown.since, self.config.cooldown)
        if decision != self.decision:
            log.info("havip_decision", group=self.group, target=self.target, havip=self.havip_id,
                     master=self.master, action=decision.action.value, reason=decision.reason.value,
                     standby=decision.target)
            self.decision = decision
        if decision.action is Action.TAKEOVER and decision.target is not None:
            term = None
            if self.coordinator is not None:
                if not self.coordinator.acting():
                    return  # the cluster's leader takes over (its own guard decides it)
                term = self.coordinator.term()
            previous, self.cooldown.since = self.cooldown.since, now  # armed before the call goes out...
            if not await self._take_over(self.master, decision.target, term) and self.cooldown.since == now:
                self.cooldown.since = previous  # ...and given back if the fence refused it: nothing was sent

    def _verdicts(self, blind: bool) -> Mapping[str, Health]:
        """The members' health to decide on: this daemon's own, or in a cluster each member's state as the observers'
        quorum sees it (this daemon's view published first: ``unknown`` for all while it cannot read the HaVip, or
        sees every member down)."""
        if self.coordinator is None:
            return self.health
        self.coordinator.publish(self.key, quorum.vote(self.health, blind=blind))
        return {m: replace(h, state=self.coordinator.verdict(self.key, m, h.state)) for m, h in self.health.items()}

    async def _read(self) -> str | None:
        """The HaVip's master, or None if the cloud cannot tell now (logged once per distinct error)."""
        try:
            state = await self.provider.describe_havip(self.havip_id)
        except ProviderError as exc:
            if str(exc) != self.cloud_error:
                log.error("cloud_read_failed", group=self.group, target=self.target, error=str(exc), code=exc.code)
            self.cloud_error = str(exc)
            return None
        self.cloud_error = None
        return state.master_instance_id if state.status == "InUse" else ""

    def _fenced(self, term: int | None) -> contextlib.AbstractContextManager[None]:
        """In a cluster, the unassociate is proven to come from the leader, in the term it was decided in, right
        before it is sent."""
        coordinator = self.coordinator
        if coordinator is None:
            return contextlib.nullcontext()

        async def fence(operation: str, seconds: float) -> Callable[[], bool]:
            still_leading = await coordinator.fence(self.group, f"havip-{self.havip_id}", operation, seconds, term)
            if self._stop.is_set():  # stopped while proving (a reload removed it): not sent
                raise NotLeader(f"{operation} not sent: the HaVip guard was stopped")
            return still_leading
        return fenced(fence)

    async def _take_over(self, master: str, standby: str, term: int | None) -> bool:
        """Force ``master`` off the HaVip (and run ``on_takeover``); False if the fence refused it (nothing sent)."""
        fields = {"group": self.group, "target": self.target, "havip": self.havip_id, "from_instance": master,
                  "to_instance": standby}
        if self.dry_run:  # decided and reported, not made
            log.warning("havip_takeover_dry_run", detail="would unassociate the master (Force=True)", **fields)
            return True
        log.warning("havip_takeover_started", **fields)
        try:
            with self._fenced(term):
                await self.provider.unassociate_havip(self.havip_id, master, force=True)
        except ProviderError as exc:
            log.error("havip_takeover_failed", error=str(exc), **fields)
            return not isinstance(exc, NotLeader)  # refused by the fence: nothing was sent
        log.warning("havip_takeover_done", **fields)
        if self.config.on_takeover:
            values = {"group": self.group, "target": self.target, "havip": self.havip_id, "from": master,
                      "to": standby}
            task = asyncio.create_task(run_hook(substitute(self.config.on_takeover, values), self.config.hook_timeout,
                                                hook_environment(values, self.config.env), group=self.group,
                                                target=self.target))
            self.hooks.add(task)
            task.add_done_callback(self.hooks.discard)
        return True
