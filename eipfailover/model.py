"""Value types of the domain. No I/O here.

The ``StrEnum`` values are lowercase and used verbatim in JSON, logs, metric labels and hook argv.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class CheckStatus(StrEnum):
    OK = "ok"
    FAIL = "fail"
    TIMEOUT = "timeout"
    ERROR = "error"
    UNKNOWN = "unknown"
    """The check could not tell (e.g. the cloud API it reads was throttled): neither a pass nor a failure."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one probe: never an exception."""

    status: CheckStatus
    latency: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is CheckStatus.OK


class TargetState(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Health:
    """A target's confirmed state after rise/fall hysteresis, with its consecutive counters.

    ``since`` is the monotonic time of the last state change (or of the first result).
    """

    state: TargetState = TargetState.UNKNOWN
    successes: int = 0
    failures: int = 0
    since: float = 0.0

    @property
    def changing(self) -> bool:
        """A failure not yet confirmed DOWN, or a success not yet confirmed UP: probe again soon."""
        return (self.failures > 0 and self.state is not TargetState.DOWN) or (
            self.successes > 0 and self.state is not TargetState.UP)


@dataclass(frozen=True, slots=True)
class Binding:
    """Where an EIP is (or goes): the provider-neutral fields a cloud reports. ``None`` means "not specified".

    AWS uses ``instance_id``, or ``network_interface_id`` and ``private_ip``; Alibaba uses ``instance_id`` with
    ``instance_type`` (``EcsInstance``, ``NetworkInterface``, ``HaVip``, ``Nat``, ``SlbInstance``) and, for an ENI,
    ``private_ip`` and ``mode``. An Alibaba EIP in cut-through mode is where its ENI is: ``network_interface_id``
    attached to the ``EcsInstance`` ``instance_id``, ``mode`` ``BINDED``.
    """

    instance_id: str | None = None
    network_interface_id: str | None = None
    private_ip: str | None = None
    instance_type: str | None = None
    mode: str | None = None

    def matches(self, actual: Binding) -> bool:
        """True if ``actual`` (the cloud's report) equals this binding in every field this binding specifies.

        Exact comparisons only: ``i-a`` does not match ``i-ab``. An Alibaba binding (``instance_type`` set) also
        matches on ``network_interface_id`` either way: an EIP in cut-through mode on an ENI attached to ``i-a`` is
        not on the ``EcsInstance`` ``i-a`` itself.
        """
        if self.instance_type is not None and self.network_interface_id != actual.network_interface_id:
            return False
        wanted = [(self.instance_id, actual.instance_id), (self.network_interface_id, actual.network_interface_id),
                  (self.private_ip, actual.private_ip), (self.instance_type, actual.instance_type),
                  (self.mode, actual.mode)]
        return any(w is not None for w, _ in wanted) and all(w is None or w == a for w, a in wanted)

    def __str__(self) -> str:
        """``i-1``, ``eni-1/10.0.0.5``, ``i-1 (eni-1/10.0.0.5)`` when the cloud reports both, or
        ``HaVip havip-1``, ``NetworkInterface eni-1/10.0.0.5`` for Alibaba's typed bindings."""
        eni = None
        if self.network_interface_id is not None:
            eni = self.network_interface_id + (f"/{self.private_ip}" if self.private_ip else "")
            if self.instance_type is not None:  # Alibaba cut-through: the ENI, and where it is attached
                return f"ENI {eni} on {self.instance_id or 'no instance'}" + (f" ({self.mode})" if self.mode else "")
        if self.instance_id is not None:
            if self.instance_type is not None:
                ip = f"/{self.private_ip}" if self.private_ip else ""
                return f"{self.instance_type} {self.instance_id}{ip}" + (f" ({self.mode})" if self.mode else "")
            return self.instance_id + (f" ({eni})" if eni else "")
        return eni or "-"


@dataclass(frozen=True, slots=True)
class EipState:
    """The cloud's view of one EIP: ``bound_to`` is ``None`` when it is not associated."""

    allocation_id: str
    public_ip: str
    bound_to: Binding | None
    pending: bool = False
    """An association or disassociation is still in progress (Alibaba's ``Associating``/``Unassociating``)."""


class Placement(StrEnum):
    """Where a group's EIPs are, as a whole, relative to its targets."""

    ON_TARGET = "on_target"  # every EIP on one and the same target
    DETACHED = "detached"  # at least one EIP is not associated
    FOREIGN = "foreign"  # at least one EIP is on something that is not a target of the group
    SPLIT = "split"  # the EIPs are on different targets of the group
    IN_TRANSITION = "in_transition"  # the cloud is still associating or disassociating an EIP
    UNKNOWN = "unknown"  # the cloud could not be read


@dataclass(frozen=True, slots=True)
class Location:
    """A group's EIPs relative to its targets. ``placement`` sums it up, in this order of precedence:
    ``IN_TRANSITION``, ``DETACHED``, ``FOREIGN``, ``SPLIT``, ``ON_TARGET``."""

    placement: Placement
    active: str | None = None
    """For ``ON_TARGET``: the target that holds every EIP."""
    holders: tuple[str, ...] = ()
    """The targets that hold at least one EIP, those holding the most first (then in preference order)."""
    detached: tuple[str, ...] = ()
    """EIPs associated with nothing."""
    foreign: tuple[str, ...] = ()
    """EIPs associated with a resource that is not a target of the group."""
    pending: tuple[str, ...] = ()
    """EIPs the cloud is still associating or disassociating."""


UNKNOWN_LOCATION = Location(Placement.UNKNOWN)


def locate(eips: Mapping[str, EipState], targets: Mapping[str, Binding]) -> Location:
    """Place a group's EIPs (the cloud's view of each) relative to its targets (in preference order)."""
    pending, detached, foreign = [], [], []
    held: dict[str, int] = {}
    for eip, state in eips.items():
        if state.pending:
            pending.append(eip)
        elif state.bound_to is None:
            detached.append(eip)
        else:
            holder = next((name for name, b in targets.items() if b.matches(state.bound_to)), None)
            if holder is None:
                foreign.append(eip)
            else:
                held[holder] = held.get(holder, 0) + 1
    order = list(targets)
    holders = tuple(sorted(held, key=lambda t: (-held[t], order.index(t))))
    if pending:
        placement = Placement.IN_TRANSITION
    elif detached:
        placement = Placement.DETACHED
    elif foreign:
        placement = Placement.FOREIGN
    elif len(holders) > 1:
        placement = Placement.SPLIT
    else:
        placement = Placement.ON_TARGET
    active = holders[0] if placement is Placement.ON_TARGET and holders else None
    return Location(placement, active, holders, tuple(detached), tuple(foreign), tuple(pending))


class Action(StrEnum):
    NONE = "none"
    FAILOVER = "failover"
    FAILBACK = "failback"
    ADOPT = "adopt"
    TAKEOVER = "takeover"  # a HaVip's master is forced off so that a healthy member takes over


class Trigger(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"
    FAILBACK = "failback"


class Reason(StrEnum):
    """Why the policy decided what it did: logged and asserted in tests."""

    ACTIVE_HEALTHY = "active_healthy"
    ACTIVE_UNKNOWN = "active_unknown"
    ACTIVE_DOWN = "active_down"
    NO_HEALTHY_STANDBY = "no_healthy_standby"
    NO_HEALTHY_TARGET = "no_healthy_target"
    ADOPT = "adopt"
    REPAIR = "repair_detached"
    REPAIR_BACKOFF = "repair_backoff"  # the last repair failed: the next one waits a little (doubling, capped)
    FOREIGN = "eip_on_foreign_resource"
    COOLDOWN = "cooldown"
    RATE_LIMITED = "rate_limited"
    MAINTENANCE = "maintenance"
    CLOUD_UNKNOWN = "cloud_unknown"
    IN_TRANSITION = "eip_in_transition"
    IN_PROGRESS = "failover_in_progress"
    STOPPING = "stopping"  # the daemon is stopping, or the group is being replaced by a reload
    NOT_LEADER = "not_leader"  # in a cluster: another daemon acts
    COORDINATION_LOST = "coordination_lost"  # in a cluster: the store is unreachable, so nobody acts
    FAILBACK = "failback"
    FAILBACK_PENDING = "failback_pending"
    MANUAL = "manual"
    MANUAL_TARGET_UNHEALTHY = "manual_target_unhealthy"
    MANUAL_ALREADY_ACTIVE = "manual_already_active"
    HAVIP_MASTER_HEALTHY = "havip_master_healthy"
    HAVIP_NO_MASTER = "havip_no_master"
    HAVIP_MASTER_NOT_MEMBER = "havip_master_not_member"
    HAVIP_MASTER_DOWN = "havip_master_down"


@dataclass(frozen=True, slots=True)
class ManualRequest:
    """An operator's request for a move; ``to`` ``None`` means the most preferred healthy standby. ``id`` becomes
    the failover's id, so that the requester can follow it."""

    to: str | None = None
    force: bool = False
    reason: str = ""
    id: str = ""
    requested_by: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the policy needs about a group at one instant. Times are monotonic seconds."""

    targets: tuple[str, ...]  # in preference order; the first is the primary
    health: Mapping[str, Health]
    placement: Placement
    active: str | None
    holders: tuple[str, ...] = ()  # targets holding at least one EIP, the most first
    last_active: str | None = None  # the target that last held every EIP
    adopt_foreign: bool = False  # take EIPs back from resources outside the group
    foreign: bool = False  # some EIP is on a resource outside the group (left out of placement and active)
    repair_hold_until: float | None = None  # after a failed repair, no other before this time
    maintenance: bool = False
    in_progress: bool = False
    last_move_at: float | None = None
    recent_moves: tuple[float, ...] = ()  # times of automatic moves, for the rate limit
    manual: ManualRequest | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: Reason
    target: str | None = None
    trigger: Trigger | None = field(default=None)
