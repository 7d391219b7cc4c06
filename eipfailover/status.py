"""A frozen view of one group, for the readers outside the engine (the API, systemd's status line).

The engine's runner is mutable and changes under the event loop; readers take a :class:`GroupStatus` (built by
:meth:`eipfailover.engine.GroupRunner.status`) and never reach into the runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from eipfailover.config import PolicyConfig
from eipfailover.events import FailoverRecord
from eipfailover.model import Binding, CheckResult, Decision, EipState, Health, Location, Placement


@dataclass(frozen=True, slots=True)
class TargetStatus:
    name: str
    binding: Binding
    health: Health
    """This daemon's own view (rise/fall)."""
    verdict: Health
    """What the decision uses: the same for a daemon alone, the observers' quorum in a cluster."""
    checks: Mapping[str, CheckResult]
    observers: Mapping[str, str]
    """In a cluster: each live member's published view of this target (node -> up|down|unknown)."""


@dataclass(frozen=True, slots=True)
class GroupStatus:
    name: str
    provider: str
    policy: PolicyConfig
    adopt_foreign: bool
    active: str | None
    placement: Placement
    location: Location
    """Where the EIPs the group acts on were last seen (kept while the cloud cannot be read)."""
    foreign: tuple[str, ...]
    eip_states: Mapping[str, EipState]
    maintenance: bool
    reconciled: bool
    cloud_error: str | None
    cloud_read_age: float | None
    cloud_problem: str | None
    started: bool
    """A cloud read has completed (successfully or not)."""
    decision: Decision | None
    current: FailoverRecord | None
    last_failover: FailoverRecord | None
    last_tick_age: float | None
    targets: tuple[TargetStatus, ...]

    @property
    def healthy(self) -> int:
        """How many targets the decision sees UP."""
        return sum(1 for t in self.targets if t.verdict.state.value == "up")
