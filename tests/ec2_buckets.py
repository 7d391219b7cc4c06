"""EC2's request-token buckets, as documented, for the fault proxy (test and benchmark code, not shipped).

Source: "Request throttling for the Amazon EC2 API", Amazon EC2 Developer Guide,
https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html (formerly
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/throttling.html), section "Request token bucket sizes and
refill rates". What it says, and what is modelled here:

- EC2 throttles "for each AWS account on a per-Region basis", with the token bucket algorithm; "each API is
  evaluated individually": one bucket per action (and Region). "Each request that you make removes one token from
  the API's bucket"; without a token the request fails with ``RequestLimitExceeded``. Buckets refill at a set rate
  up to their maximum capacity; refill tokens arriving at a full bucket are discarded.
- Categories (bucket maximum capacity / refill rate, tokens a second):

  ================================================  ========  ======
  category                                          capacity  refill
  ================================================  ========  ======
  Non-mutating actions (``Describe*``, ``List*``,        100      20
  ``Search*``, ``Get*`` not in another category)
  Unfiltered and unpaginated non-mutating actions         50      10
  Mutating actions (all the others)                       50       5
  Resource-intensive actions                              50       5
  Console non-mutating actions                           100      10
  ================================================  ========  ======

  The unfiltered-and-unpaginated subset is exactly ``DescribeInstances``, ``DescribeInstanceStatus``,
  ``DescribeNetworkInterfaces``, ``DescribeSecurityGroups``, ``DescribeSnapshots``, ``DescribeSpotInstanceRequests``
  and ``DescribeVolumes``: "when requested without specifying either pagination or a filter, [they] use tokens from
  a smaller token bucket. It is recommended that you make use of pagination and filtering so that tokens are
  deducted from the standard (larger) token bucket." **DescribeAddresses is not in that subset**: filtered or not
  it uses the non-mutating bucket, 100 / 20 (and it has no pagination at all: no ``MaxResults``/``NextToken``).
- Our actions: ``AssociateAddress``, ``DisassociateAddress``, ``AllocateAddress``, ``ReleaseAddress``: mutating,
  50 / 5 (none is in the "Uncategorized actions" table, none is resource-intensive); ``DescribeAddresses``: 100 / 20;
  ``DescribeInstanceStatus``, ``DescribeNetworkInterfaces``: 100 / 20 filtered or paginated, 50 / 10 otherwise;
  ``CreateTags`` (IAM's check when ``AllocateAddress`` tags): uncategorized, 100 / 10.

Not modelled: the console category (no way to tell a console call), resource token buckets (``RunInstances``
1000 / 2 instances, ``TerminateInstances`` 1000 / 20, ...), per-account separation (one account: moto's), and the
uncategorized actions other than :data:`UNCATEGORIZED`'s few.

Our reading, where the document leaves it open:

- "Filter" covers IDs too: a request is *unfiltered and unpaginated* when it carries no indexed list parameter
  (``Filter.1.Name``, ``InstanceId.1``, ``NetworkInterfaceId.1``, ``AllocationId.1``, ``PublicIp.1``, ...; boto3
  sends an empty list as nothing) and neither ``MaxResults`` nor ``NextToken``. Such a request takes its token from
  the small bucket *only* (a bucket of its own per action, named ``"<Action>[unfiltered]"``), the others from the
  action's standard bucket.
- A bucket starts full; refill is continuous (tokens are fractional, computed from the clock at each request: no
  background task), which is the limit of "a set number of tokens is added back every second". A request needs one
  whole token (less :data:`EPSILON`, for float error).
- The Region is the SigV4 credential scope's (``Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/ec2/...``
  or a presigned ``X-Amz-Credential``); without one, ``default_region``.

Scaling (for tests and benchmarks): ``scale`` multiplies every capacity and refill rate (fewer requests, same
timing: a workload of ``n * scale`` requests here meets the throttling that ``n`` meet on EC2 over the same
seconds); ``speed`` multiplies refill rates only (time runs ``speed`` times faster: the same requests sent ``speed``
times faster get the same answers). Both apply to overrides too.

    buckets = Ec2Buckets(clock=ManualClock())                      # exact, deterministic
    buckets = Ec2Buckets(speed=10, actions={"AssociateAddress": Limit(5, 1)})
    async with FaultProxy(moto_endpoint, "ec2", buckets=buckets) as proxy: ...
    buckets.counts("AssociateAddress"), buckets.series("AssociateAddress"), buckets.until_token("AssociateAddress")
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

DOC_URL = "https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html"

Category = Literal["non-mutating", "unfiltered", "mutating", "resource-intensive", "uncategorized"]


@dataclass(frozen=True)
class Limit:
    """A bucket's maximum capacity (the burst) and refill rate (tokens a second)."""

    capacity: float
    refill: float

    def __post_init__(self) -> None:
        if self.capacity < 0 or self.refill < 0:
            raise ValueError(f"negative limit {self}")

    def scaled(self, scale: float, speed: float) -> Limit:
        return Limit(self.capacity * scale, self.refill * scale * speed)


CATEGORY_LIMITS: dict[Category, Limit] = {
    "non-mutating": Limit(100, 20),
    "unfiltered": Limit(50, 10),
    "mutating": Limit(50, 5),
    "resource-intensive": Limit(50, 5),
}
"""The documented defaults per category ("uncategorized" actions each have their own: :data:`UNCATEGORIZED`)."""
NON_MUTATING_PREFIXES = ("Describe", "List", "Search", "Get")
UNFILTERED_ACTIONS = frozenset({
    "DescribeInstances", "DescribeInstanceStatus", "DescribeNetworkInterfaces", "DescribeSecurityGroups",
    "DescribeSnapshots", "DescribeSpotInstanceRequests", "DescribeVolumes",
})
"""The non-mutating actions with a smaller bucket for their unfiltered and unpaginated requests."""
RESOURCE_INTENSIVE_ACTIONS = frozenset({
    "AcceptVpcPeeringConnection", "AuthorizeSecurityGroupIngress", "CancelSpotInstanceRequests", "CreateKeyPair",
    "CreateVpcPeeringConnection", "DeleteVpcPeeringConnection", "RejectVpcPeeringConnection",
    "RevokeSecurityGroupIngress", "RequestSpotInstances",
})
UNCATEGORIZED: dict[str, Limit] = {
    "AssignPrivateIpAddresses": Limit(100, 5),
    "UnassignPrivateIpAddresses": Limit(100, 5),
    "CreateTags": Limit(100, 10),
    "DeleteTags": Limit(100, 10),
    "CreateNetworkInterface": Limit(100, 5),
    "DeleteNetworkInterface": Limit(100, 5),
    "ModifyNetworkInterfaceAttribute": Limit(100, 5),
    "MoveAddressToVpc": Limit(1, 1),
    "RestoreAddressToClassic": Limit(1, 1),
    "DescribeMovingAddresses": Limit(1, 1),
    "RunInstances": Limit(5, 2),
    "StartInstances": Limit(5, 2),
    "TerminateInstances": Limit(100, 5),
}
"""The few "Uncategorized actions" (own request bucket) near our use; the document lists many more."""
UNFILTERED_SUFFIX = "[unfiltered]"
PAGINATION = frozenset({"MaxResults", "NextToken"})
EPSILON = 1e-6
"""Tokens short of a whole one by at most this much count as one: the float error of ``clock.advance(until_token)``
(or of a timer that fires a clock tick early) must not cost a request."""
_INDEXED = re.compile(r"\.\d+(\.|$)")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/")

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def _pairs(params: Params) -> Iterable[tuple[str, str]]:
    return params.items() if isinstance(params, Mapping) else params


def is_unfiltered(params: Params) -> bool:
    """No filter, no ID list (no indexed list parameter at all), no ``MaxResults``/``NextToken``."""
    return not any(k in PAGINATION or _INDEXED.search(k) for k, _ in _pairs(params))


def category(action: str, params: Params = ()) -> Category:
    """The documented category of a request: ``action`` with its query/form ``params``."""
    if action in UNCATEGORIZED:
        return "uncategorized"
    if action in RESOURCE_INTENSIVE_ACTIONS:
        return "resource-intensive"
    if action.startswith(NON_MUTATING_PREFIXES):
        return "unfiltered" if action in UNFILTERED_ACTIONS and is_unfiltered(params) else "non-mutating"
    return "mutating"


def region_of(authorization: str | None, params: Params = ()) -> str | None:
    """The SigV4 credential scope's Region: from an ``Authorization`` header, or a presigned ``X-Amz-Credential``."""
    if authorization:
        found = _CREDENTIAL.search(authorization)
        if found:
            return found.group(3)
    for key, value in _pairs(params):
        if key == "X-Amz-Credential":
            parts = value.split("/")
            if len(parts) >= 3:
                return parts[2]
    return None


class ManualClock:
    """A clock for :class:`Ec2Buckets` that moves only when told: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self.now += seconds


class TokenBucket:
    """One token bucket: starts full, refills continuously at ``limit.refill`` up to ``limit.capacity``."""

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self._tokens = float(limit.capacity)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.limit.capacity, self._tokens + (now - self._at) * self.limit.refill)
            self._at = now

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= 1 - EPSILON:
            self._tokens = max(self._tokens - 1, 0.0)
            return True
        return False

    def until_token(self, now: float) -> float:
        """Seconds until a token is there (0: there is one; inf: never, no refill or capacity below one)."""
        tokens = self.tokens(now)
        if tokens >= 1 - EPSILON:
            return 0.0
        if self.limit.refill <= 0 or self.limit.capacity < 1:
            return math.inf
        return (1 - tokens) / self.limit.refill


@dataclass
class Counts:
    """Requests a bucket saw: ``requests == admitted + throttled``."""

    requests: int = 0
    admitted: int = 0
    throttled: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.requests += other.requests
        self.admitted += other.admitted
        self.throttled += other.throttled
        return self


class Second(NamedTuple):
    """One second of a bucket's time series: seconds since the counters started (real, not scaled, time)."""

    second: int
    admitted: int
    throttled: int


class Ec2Buckets:
    """EC2's request-token buckets, one per (Region, action[, unfiltered]), consulted by the fault proxy (or
    directly with :meth:`admit`). ``categories`` and ``actions`` override the documented limits (``actions`` keys:
    an action for its standard bucket, ``"<Action>[unfiltered]"`` for its small one); ``scale`` and ``speed``: the
    module's docstring. Thread-safe."""

    def __init__(self, *, scale: float = 1.0, speed: float = 1.0, categories: Mapping[Category, Limit] | None = None,
                 actions: Mapping[str, Limit] | None = None, unfiltered_actions: Iterable[str] = UNFILTERED_ACTIONS,
                 clock: Callable[[], float] = time.monotonic, default_region: str = "us-east-1") -> None:
        if scale <= 0 or speed <= 0:
            raise ValueError("scale and speed must be positive")
        self.scale = scale
        self.speed = speed
        self.categories: dict[Category, Limit] = {**CATEGORY_LIMITS, **(categories or {})}
        self.actions: dict[str, Limit] = {**UNCATEGORIZED, **(actions or {})}
        self.unfiltered_actions = frozenset(unfiltered_actions)
        self.clock = clock
        self.default_region = default_region
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._counts: dict[tuple[str, str], Counts] = defaultdict(Counts)
        self._series: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        self.epoch = clock()
        """When the counters started (construction or :meth:`reset_counters`): second 0 of :meth:`series`."""

    # --- classification ---
    def bucket_name(self, action: str, params: Params = ()) -> str:
        """The bucket a request takes its token from: ``action``, or ``"<action>[unfiltered]"``."""
        if action in self.unfiltered_actions and is_unfiltered(params):
            return action + UNFILTERED_SUFFIX
        return action

    def limit(self, name: str) -> Limit:
        """The limit (scaled) of the bucket named ``name`` (:meth:`bucket_name`)."""
        return self._documented(name).scaled(self.scale, self.speed)

    def _documented(self, name: str) -> Limit:
        if name in self.actions:
            return self.actions[name]
        if name.endswith(UNFILTERED_SUFFIX):
            return self.categories["unfiltered"]
        if name in RESOURCE_INTENSIVE_ACTIONS:
            return self.categories["resource-intensive"]
        if name.startswith(NON_MUTATING_PREFIXES):
            return self.categories["non-mutating"]
        return self.categories["mutating"]

    # --- admission ---
    def admit(self, action: str, params: Params = (), region: str | None = None) -> bool:
        """One request: take a token from its bucket (True) or count it throttled (False)."""
        return self.admit_named(self.bucket_name(action, params), region)

    def admit_named(self, name: str, region: str | None = None) -> bool:
        """One request on the bucket named ``name``."""
        key = (region or self.default_region, name)
        with self._lock:
            now = self.clock()
            bucket = self._bucket(key, now)
            ok = bucket.take(now)
            counts = self._counts[key]
            counts.requests += 1
            counts.admitted += ok
            counts.throttled += not ok
            self._series[key][math.floor(now - self.epoch)][0 if ok else 1] += 1
            return ok

    def _bucket(self, key: tuple[str, str], now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.limit(key[1]), now)
        return bucket

    # --- looking ---
    def tokens(self, name: str, region: str | None = None) -> float:
        """The tokens in a bucket now (a bucket never used is full)."""
        with self._lock:
            now = self.clock()
            return self._bucket((region or self.default_region, name), now).tokens(now)

    def until_token(self, name: str, region: str | None = None) -> float:
        """Seconds (on :attr:`clock`) until the bucket has a token: 0 if it has one now."""
        with self._lock:
            now = self.clock()
            return self._bucket((region or self.default_region, name), now).until_token(now)

    def counts(self, name: str | None = None, region: str | None = None) -> Counts:
        """Counts of one bucket (``name``) or of all, in one Region or all (``region`` None)."""
        total = Counts()
        with self._lock:
            for (r, n), counts in self._counts.items():
                if (name is None or n == name) and (region is None or r == region):
                    total += counts
        return total

    def stats(self) -> dict[str, Counts]:
        """Counts per bucket name, all Regions together."""
        out: dict[str, Counts] = defaultdict(Counts)
        with self._lock:
            for (_, name), counts in self._counts.items():
                out[name] += counts
        return dict(out)

    def series(self, name: str, region: str | None = None) -> list[Second]:
        """Admitted and throttled requests per second since :attr:`epoch`, every second up to the last request's
        (the ones without requests as zeros), all Regions together unless ``region``."""
        merged: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        with self._lock:
            for (r, n), seconds in self._series.items():
                if n == name and (region is None or r == region):
                    for second, (admitted, throttled) in seconds.items():
                        merged[second][0] += admitted
                        merged[second][1] += throttled
        if not merged:
            return []
        return [Second(s, *merged.get(s, (0, 0))) for s in range(max(merged) + 1)]

    def reset_counters(self) -> None:
        """Forget the counts and series (second 0 becomes now); the buckets keep their tokens."""
        with self._lock:
            self._counts.clear()
            self._series.clear()
            self.epoch = self.clock()

    def refill(self) -> None:
        """Every bucket full again (the limits re-read: overrides changed since apply)."""
        with self._lock:
            self._buckets.clear()
