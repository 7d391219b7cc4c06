"""The YAML configuration: pydantic v2 models and :func:`load_config`.

Every model is frozen and forbids unknown keys. :func:`load_config` reports every problem at once, each with its key
path (``groups[0].targets[1].checks[0].port: ...``). Durations accept ``250ms``, ``1s``, ``2m``, ``1h``, ``7d`` or a
number of seconds.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from eipfailover.errors import ConfigError

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_T = TypeVar("_T")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def parse_duration(value: object) -> object:
    """Turn ``250ms``/``1s``/``2m``/``1h``/``7d``/a number into seconds; leave anything else to pydantic's float
    check."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 2s, 1m or a number of seconds")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"invalid duration {value!r}: use a number with ms, s, m, h or d (e.g. 500ms, 2s)")
        value = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("expected a finite duration")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""A strictly positive duration, in seconds."""
NonNegDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Name = Annotated[str, Field(pattern=_NAME)]


class _Problems(ValueError):
    """Several problems found by one validator, each with a key path relative to the validated model."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogConfig(_Model):
    format: Literal["auto", "json", "console"] = "auto"
    """``auto``: console when stdout is a terminal, JSON lines otherwise (as under systemd)."""
    level: Literal["debug", "info", "warning", "error"] = "info"


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9797), got {value!r}")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` as the address to bind (IPv6 without its brackets) and the port."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class ApiTlsConfig(_Model):
    cert_file: Path
    """PEM certificate chain the API presents."""
    key_file: Path
    ca_file: Path | None = None
    """For the CLI client on this host: the CA that signed ``cert_file`` (default: ``cert_file`` itself, which suits
    a self-signed certificate)."""


class ApiConfig(_Model):
    listen: HostPort = "127.0.0.1:9797"
    token_file: Path | None = None
    tls: ApiTlsConfig | None = None
    """Serve HTTPS instead of HTTP (on ``listen`` and ``metrics_listen``)."""
    metrics_listen: HostPort | None = None
    """A second listener with only ``GET /metrics``, ``/healthz`` and ``/readyz``: Prometheus can scrape it from
    another host while ``listen``, with the POSTs, stays on loopback."""

    @property
    def host(self) -> str:
        """The address to bind (IPv6 without its brackets)."""
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]

    @property
    def url(self) -> str:
        """The URL a local client uses to reach this API (a wildcard address is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"


class BucketConfig(_Model):
    """One token bucket of the client-side rate limit; an unset key takes the provider type's default."""

    requests_per_second: float | None = Field(None, gt=0, le=100_000)
    burst: int | None = Field(None, ge=1, le=1_000_000)


class RateLimitConfig(_Model):
    """The provider's client-side rate limits: one bucket for reads, one for mutating calls, each shared by every
    group on the provider and by every attempt of every call (retries included)."""

    reads: BucketConfig = BucketConfig()
    mutations: BucketConfig = BucketConfig()


class AwsProviderConfig(_Model):
    type: Literal["aws"]
    region: str = Field(min_length=1)
    endpoint_url: str | None = None
    """For VPC endpoints and tests (e.g. a moto server)."""
    profile: str | None = None
    connect_timeout: Duration = 2.0
    read_timeout: Duration = 5.0
    max_attempts: int = Field(3, ge=1, le=10)
    """Attempts per call (the driver's own retries of throttling and transient errors, each through the rate
    limit)."""
    max_concurrency: int = Field(4, ge=1, le=64)
    """Cloud calls in flight at once for this provider, of each kind (reads, mutations)."""
    rate_limit: RateLimitConfig = RateLimitConfig()
    """Default: reads 18/s with a burst of 90, mutations 4.5/s with a burst of 45 (EC2's buckets, less 10%)."""


class AlibabaProviderConfig(_Model):
    type: Literal["alibaba"]
    region: str = Field(min_length=1)
    endpoint: str | None = None
    """The VPC API endpoint (``host[:port]``), for private endpoints and tests; default: the region's."""
    ecs_endpoint: str | None = None
    """The ECS API endpoint, used by ``instance`` checks; default: the region's."""
    protocol: Literal["https", "http"] = "https"
    ca_file: Path | None = None
    """CA bundle to verify the endpoints' certificates (default: the certifi bundle the SDK ships with)."""
    access_key_file: Path | None = None
    """JSON ``{"access_key_id": ..., "access_key_secret": ..., "security_token"?: ...}``, re-read whenever it changes;
    default: ``$CREDENTIALS_DIRECTORY/alibaba-access-key`` if present, else the default credential chain
    (environment, CLI profile, credentials file, OIDC, ECS RAM role, credentials URI)."""
    connect_timeout: Duration = 2.0
    read_timeout: Duration = 5.0
    max_concurrency: int = Field(4, ge=1, le=64)
    poll_interval: Duration = 0.5
    """How often an association in transition is re-read."""
    rate_limit: RateLimitConfig = RateLimitConfig()
    """Default: reads 8/s with a burst of 100, mutations 1.6/s with a burst of 20 (Alibaba's 600 and 120 calls a
    minute, with room to spare)."""


ProviderConfig = Annotated[AwsProviderConfig | AlibabaProviderConfig, Field(discriminator="type")]


def call_deadline(config: AwsProviderConfig | AlibabaProviderConfig) -> float:
    """The longest one attempt of a mutating cloud call can take before the driver gives up on it (in a cluster each
    attempt is fenced on its own: the AWS driver's retries and the failover module's alike)."""
    extra = 1.0 if config.type == "alibaba" else 0.0
    return config.connect_timeout + config.read_timeout + extra

AlibabaInstanceType = Literal["EcsInstance", "NetworkInterface", "HaVip", "Nat", "SlbInstance"]


class BindingConfig(_Model):
    """Where the EIPs go for a target. AWS: ``instance_id``, or ``network_interface_id`` and optionally
    ``private_ip``. Alibaba: ``instance_id`` with ``instance_type`` (default ``EcsInstance``); a
    ``NetworkInterface`` needs ``private_ip`` (NAT mode) unless ``mode`` is ``MULTI_BINDED``. Alibaba cut-through
    mode: ``network_interface_id`` (a secondary ENI holding the EIP in ``BINDED`` mode) with ``instance_id`` (the
    ECS instance it is attached to on this target): a failover moves the ENI, with its EIP, between instances."""

    instance_id: str | None = Field(None, min_length=1)
    network_interface_id: str | None = Field(None, min_length=1)
    private_ip: str | None = None
    instance_type: AlibabaInstanceType | None = None
    mode: Literal["NAT", "BINDED", "MULTI_BINDED"] | None = None

    @field_validator("private_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value


class _CheckBase(_Model):
    name: Name | None = None
    """Label for logs and metrics; defaults to the check's type."""
    timeout: Duration | None = None
    """Overrides the group's ``policy.timeout`` for this check; must stay below ``policy.interval``."""


class TcpCheckConfig(_CheckBase):
    type: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


class HttpCheckConfig(_CheckBase):
    type: Literal["http"]
    url: str
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(default=[200], min_length=1)
    body_contains: str | None = None
    body_regex: str | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    max_body_bytes: int = Field(65536, ge=1, le=10 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        try:
            urllib.parse.urlsplit(value).port  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            raise ValueError(f"{exc} in {value!r}") from None
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"invalid header name {name!r}")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} holds a line break or NUL")
        return value

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except (re.error, OverflowError, RecursionError) as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value


Argv = list[Annotated[str, Field(min_length=1)]]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Env = dict[EnvName, str]
"""Extra environment variables for a program we run. Programs get a minimal environment: ``PATH``, ``LANG``, the
documented ``EIPFAILOVER_*`` variables and these, never the daemon's own (which may hold cloud credentials)."""


class ExecCheckConfig(_CheckBase):
    type: Literal["exec"]
    argv: Argv = Field(min_length=1)
    """The program and its arguments; run without a shell. Exit 0 means healthy."""
    env: Env = Field(default_factory=dict)


class InstanceCheckConfig(_CheckBase):
    type: Literal["instance"]
    """The provider's view: the target's instance (or the ENI's instance) exists and is running."""


class HaVipCheckConfig(_CheckBase):
    type: Literal["havip"]
    """Alibaba: the HaVip is ``InUse`` and has a master instance."""
    havip_id: str | None = Field(None, min_length=1)
    """Default: the target's binding, when it is a HaVip."""


CheckConfig = Annotated[
    TcpCheckConfig | HttpCheckConfig | ExecCheckConfig | InstanceCheckConfig | HaVipCheckConfig,
    Field(discriminator="type"),
]
_TAGS = frozenset({"tcp", "http", "exec", "instance", "havip", "aws", "alibaba"})


def check_name(check: CheckConfig) -> str:
    """The check's label: its ``name`` or else its ``type``."""
    return check.name or check.type


class HaVipMemberConfig(_Model):
    instance_id: str = Field(min_length=1)
    checks: list[CheckConfig] = Field(min_length=1)


class HaVipTakeoverConfig(_Model):
    """Alibaba, on a target whose binding is a HaVip: when the HaVip's master instance fails its checks and another
    member passes them, unassociate the master from the HaVip (``Force=True``) so that keepalived on the healthy
    member takes over, then run ``on_takeover``."""

    members: list[HaVipMemberConfig] = Field(min_length=2)
    on_takeover: Argv | None = Field(None, min_length=1)
    """argv, no shell; ``{group} {target} {havip} {from} {to}`` are substituted."""
    env: Env = Field(default_factory=dict)
    hook_timeout: Duration = 30.0
    cooldown: NonNegDuration = 60.0

    @field_validator("members")
    @classmethod
    def _unique_members(cls, value: list[HaVipMemberConfig]) -> list[HaVipMemberConfig]:
        problems = [(f"[{i}].instance_id", f"{m!r} is listed twice")
                    for i, m in _duplicates(m.instance_id for m in value)]
        if problems:
            raise _Problems(problems)
        return value


class TargetConfig(_Model):
    name: Name
    binding: BindingConfig
    checks: list[CheckConfig] = Field(min_length=1)
    havip_takeover: HaVipTakeoverConfig | None = None

    @model_validator(mode="after")
    def _unique_check_names(self) -> TargetConfig:
        problems = [
            (f"checks[{i}].name", f"duplicate check name {name!r}: give each check of a target its own name")
            for i, name in _duplicates(check_name(c) for c in self.checks)
        ]
        if problems:
            raise _Problems(problems)
        return self


class MaxFailovers(_Model):
    count: int = Field(3, ge=1)
    window: Duration = 3600.0


class PolicyConfig(_Model):
    interval: Duration = 2.0
    timeout: Duration = 1.0
    rise: int = Field(3, ge=1, le=100)
    fall: int = Field(3, ge=1, le=100)
    failback: Literal["manual", "auto"] = "manual"
    failback_delay: NonNegDuration = 60.0
    cooldown: NonNegDuration = 60.0
    max_failovers: MaxFailovers = MaxFailovers()
    failover_deadline: Duration = 60.0
    """How long one failover may take, retries and verification included."""
    fast_interval: Duration | None = None
    """The interval of a group's checks while a target's state is changing (a failure not yet confirmed DOWN, a
    success not yet confirmed UP); default: a quarter of ``interval``, and never below ``timeout``."""

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> PolicyConfig:
        if self.timeout >= self.interval:
            raise _Problems([("timeout", f"must be below interval ({self.timeout:g}s >= {self.interval:g}s)")])
        if self.fast_interval is not None and not self.timeout <= self.fast_interval <= self.interval:
            raise _Problems([("fast_interval", f"must be between timeout and interval ({self.timeout:g}s to "
                                               f"{self.interval:g}s), not {self.fast_interval:g}s")])
        return self

    @property
    def fast(self) -> float:
        """The interval in force while a target's state is changing."""
        return self.fast_interval if self.fast_interval is not None else max(self.interval / 4, self.timeout)

    @property
    def detection_seconds(self) -> float:
        """Time from a target's first failed probe to its confirmed DOWN state, at worst."""
        return (self.fall - 1) * self.fast + self.timeout


class HooksConfig(_Model):
    on_failover: Argv | None = Field(None, min_length=1)
    """argv run (no shell) after every failover; ``{group} {from} {to} {result} {reason} {trigger}
    {failover_id}`` are substituted."""
    env: Env = Field(default_factory=dict)
    timeout: Duration = 30.0
    before_failover: Argv | None = Field(None, min_length=1)
    """The fencing hook: argv run (no shell) before a move takes the EIPs off a target, before any cloud call, with
    the same placeholders (``{result}`` is ``running``). Exit 0 lets the move go ahead; any other exit, or the
    timeout, vetoes it (a failed failover, with the hook's output), unless ``before_failover_required`` is false.
    Not run before re-attaching detached EIPs (nothing to fence)."""
    before_failover_timeout: Duration = 10.0
    before_failover_required: bool = True
    on_target_down: Argv | None = Field(None, min_length=1)
    """argv run (no shell) when a target is confirmed DOWN (after ``fall`` failures); ``{group} {target} {state}
    {previous} {detail}`` are substituted. Queued with ``on_failover`` in event order, under the same ``timeout``."""
    on_target_up: Argv | None = Field(None, min_length=1)
    """The same, when a target is confirmed UP (after ``rise`` passes; also the first time, at start)."""


class GroupConfig(_Model):
    name: Name
    provider: str
    eips: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    targets: list[TargetConfig] = Field(min_length=2)
    policy: PolicyConfig = PolicyConfig()
    hooks: HooksConfig = HooksConfig()
    adopt_foreign: bool = False
    """An EIP found on a resource that is none of the group's targets (moved by hand, or an allocation ID that
    belongs to another service) is reported and left alone; ``true`` takes it back."""
    dry_run: bool = False
    """Check, decide and report ("would move": logs, history, metrics, status) but make no change: no mutating
    cloud call, no fencing hook, no HaVip takeover. For rolling the daemon out next to the tool it replaces."""

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str, info: ValidationInfo) -> str:
        provider_types: Mapping[str, str] = (info.context or {}).get("provider_types", {})
        if value not in provider_types:
            known = ", ".join(sorted(map(str, provider_types))) or "none defined"
            raise ValueError(f"unknown provider {value!r} (known: {known})")
        return value

    @field_validator("eips")
    @classmethod
    def _unique_eips(cls, value: list[str]) -> list[str]:
        problems = [(f"[{i}]", f"{eip!r} is listed twice") for i, eip in _duplicates(value)]
        if problems:
            raise _Problems(problems)
        return value

    @field_validator("targets", mode="before")
    @classmethod
    def _unique_targets(cls, value: object) -> object:
        if isinstance(value, list):
            names = [t.get("name") if isinstance(t, dict) and isinstance(t.get("name"), str) else None
                     for t in value]
            problems = [
                (f"[{i}].name", f"duplicate target name {name!r}")
                for i, name in _duplicates(names)
                if isinstance(name, str)
            ]
            if problems:
                raise _Problems(problems)
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> GroupConfig:
        problems: list[tuple[str, str]] = []
        for ti, target in enumerate(self.targets):
            for ci, check in enumerate(target.checks):
                if check.timeout is not None and check.timeout >= self.policy.interval:
                    problems.append((f"targets[{ti}].checks[{ci}].timeout", "must be below policy.interval"))
        provider_type = (info.context or {}).get("provider_types", {})[self.provider]
        problems += _moving_eni_problems(self) + _one_eip_problems(self) if provider_type == "alibaba" else []
        for ti, target in enumerate(self.targets):
            problems += [
                (f"targets[{ti}].binding{sub}", msg)
                for sub, msg in binding_problems(provider_type, target.binding)
            ]
            if target.havip_takeover is not None and (
                    provider_type != "alibaba" or target.binding.instance_type != "HaVip"):
                problems.append((f"targets[{ti}].havip_takeover", "needs an alibaba provider and a binding with "
                                                                  "instance_type HaVip"))
            for ci, check in enumerate(target.checks):
                if isinstance(check, HaVipCheckConfig):
                    if provider_type != "alibaba":
                        problems.append((f"targets[{ti}].checks[{ci}]", "a havip check needs an alibaba provider"))
                    elif check.havip_id is None and target.binding.instance_type != "HaVip":
                        problems.append((f"targets[{ti}].checks[{ci}].havip_id",
                                         "required unless the target's binding is a HaVip"))
        if problems:
            raise _Problems(problems)
        return self


def _moving_eni_problems(group: GroupConfig) -> list[tuple[str, str]]:
    """A group in cut-through mode moves one ENI: every target names it, and it carries the group's one EIP (the
    ENI's primary private IP takes one EIP in that mode)."""
    enis = {t.binding.network_interface_id for t in group.targets}
    if enis == {None}:
        return []
    first = group.targets[0].binding.network_interface_id
    problems = [(f"targets[{ti}].binding.network_interface_id",
                 f"every target of a cut-through group names the same ENI ({first or 'none'} on the first target, "
                 f"{t.binding.network_interface_id or 'none'} here)")
                for ti, t in enumerate(group.targets) if t.binding.network_interface_id != first]
    if len(group.eips) != 1:
        problems.append(("eips", "a cut-through (BINDED) ENI holds one EIP, on its primary private IP: give the "
                                 "group exactly one"))
    return problems


MULTI_BINDED_MAX = 10
"""EIPs on one secondary ENI in Alibaba's MULTI_BINDED mode."""


def _one_eip_problems(group: GroupConfig) -> list[tuple[str, str]]:
    """Alibaba: an ECS instance, a HaVip, a CLB and one private IP of an ENI (NAT mode) each take one EIP, and an
    ENI in MULTI_BINDED mode ten, so a group of more EIPs cannot move onto one of them."""
    problems = []
    if len(group.eips) > MULTI_BINDED_MAX and any(t.binding.mode == "MULTI_BINDED" for t in group.targets):
        problems.append(("eips", f"{len(group.eips)} EIPs: an ENI in MULTI_BINDED mode takes at most "
                                 f"{MULTI_BINDED_MAX}"))
    if len(group.eips) < 2:
        return problems
    single = [(t.name, t.binding.instance_type or "EcsInstance") for t in group.targets
              if t.binding.network_interface_id is None and (t.binding.instance_type or "EcsInstance") != "Nat"
              and t.binding.mode != "MULTI_BINDED"]
    return problems + [
        ("eips", f"{len(group.eips)} EIPs cannot all go to target {name}: "
                 f"{'a private IP of an ENI' if kind == 'NetworkInterface' else 'a ' + kind} takes one EIP (a NAT "
                 f"gateway or an ENI in MULTI_BINDED mode takes several; or give each EIP its own group)")
        for name, kind in single]


def binding_problems(provider_type: str, b: BindingConfig) -> list[tuple[str, str]]:
    """What is wrong with a binding for a provider type, as ``(sub-path, message)`` pairs."""
    if provider_type == "aws":
        if b.instance_type is not None or b.mode is not None:
            return [("", "instance_type and mode are for alibaba bindings; aws takes instance_id or "
                         "network_interface_id")]
        if (b.instance_id is None) == (b.network_interface_id is None):
            return [("", "an aws binding needs exactly one of instance_id or network_interface_id")]
        if b.private_ip is not None and b.network_interface_id is None:
            return [(".private_ip", "private_ip goes with network_interface_id only")]
    if provider_type == "alibaba":
        if b.instance_id is None:
            return [(".instance_id", "an alibaba binding needs instance_id")]
        if b.network_interface_id is not None:
            if b.instance_type not in (None, "EcsInstance") or b.mode not in (None, "BINDED") or b.private_ip:
                return [("", "network_interface_id names an ENI in cut-through mode (BINDED) that moves between "
                             "ECS instances: give it with instance_id (the instance) only; an EIP on an ENI in NAT "
                             "or MULTI_BINDED mode is instance_id: ENI-ID with instance_type NetworkInterface")]
            return []
        if b.instance_type == "NetworkInterface" and b.mode == "BINDED":
            return [(".mode", "an EIP in cut-through mode (BINDED) is associated before its ENI is attached, so a "
                              "failover cannot re-associate it: give the ENI as network_interface_id and the ECS "
                              "instance as instance_id, and the ENI moves with its EIP")]
        if b.instance_type == "NetworkInterface" and b.private_ip is None and b.mode != "MULTI_BINDED":
            return [(".private_ip", "required for instance_type NetworkInterface (unless mode is MULTI_BINDED)")]
        if b.instance_type != "NetworkInterface" and (b.private_ip is not None or b.mode is not None):
            return [("", "private_ip and mode go with instance_type NetworkInterface only")]
    return []


def default_state_directory() -> Path:
    """``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; the first if it lists several), else
    ``/var/lib/eipfailover``."""
    return Path(os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "/var/lib/eipfailover")


class JournalConfig(_Model):
    max_age: Duration = 90 * 86400.0
    """Finished failovers older than this are pruned from the journal."""
    max_records: int = Field(default=10000, ge=1, le=10_000_000)
    """At most this many finished failovers are kept (the newest)."""


class ClusterTlsConfig(_Model):
    ca_file: Path
    """The CA that signed the etcd members' certificates."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """A client certificate and its key, for etcd's ``--client-cert-auth``."""

    @model_validator(mode="after")
    def _pair(self) -> ClusterTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise _Problems([("cert_file", "cert_file and key_file go together")])
        return self


def _etcd_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid etcd endpoint {value!r}: expected http(s)://host:port")
    try:
        parts.port  # noqa: B018 - raises on an invalid port
    except ValueError as exc:
        raise ValueError(f"invalid etcd endpoint {value!r}: {exc}") from None
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"invalid etcd endpoint {value!r}: no path, query or fragment")
    return value.rstrip("/")


def _api_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid API URL {value!r}: expected http(s)://host:port")
    return value.rstrip("/")


def _default_node() -> str:
    """The host name (all of it: short names repeat across zones), made a valid node name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-._")[:63]
    return name or "node"


class ClusterConfig(_Model):
    """Several daemons, one actor (see docs/multi-node.md)."""

    type: Literal["etcd"]
    endpoints: list[Annotated[str, AfterValidator(_etcd_url)]] = Field(min_length=1)
    prefix: str = Field(default="/eipfailover", pattern=r"^/[A-Za-z0-9_./-]*$", max_length=200)
    """Every daemon of one deployment shares it; nothing else may write under it."""
    node: Name = Field(default_factory=_default_node)
    """Unique per daemon; default: the host name."""
    ttl: Annotated[float, BeforeValidator(parse_duration), Field(ge=2.0, le=300.0)] = 10.0
    """The lease of each daemon (and so of the leader key): a dead leader is replaced within ``ttl`` plus one
    check interval."""
    quorum: int | None = Field(default=None, ge=1, le=100)
    """Observers that must see a target DOWN; default: a majority of the live members."""
    advertise_api: Annotated[str, AfterValidator(_api_url)] | None = None
    """Where peers and clients reach this daemon's API (default: ``api.listen`` as a URL)."""
    tls: ClusterTlsConfig | None = None
    username: str | None = Field(default=None, min_length=1)
    password_file: Path | None = None

    @model_validator(mode="after")
    def _credentials(self) -> ClusterConfig:
        problems = []
        if (self.username is None) != (self.password_file is None):
            problems.append(("username", "username and password_file go together"))
        if self.tls is not None and not any(e.lower().startswith("https:") for e in self.endpoints):
            problems.append(("tls", "no endpoint is https://: the TLS settings would go unused"))
        if problems:
            raise _Problems(problems)
        return self

    @property
    def margin(self) -> float:
        """How long before its lease could expire the leader stops acting."""
        return max(0.5, self.ttl / 10)


class Config(_Model):
    log: LogConfig = LogConfig()
    api: ApiConfig = ApiConfig()
    state_directory: Path | None = Field(default_factory=default_state_directory)
    """Where the journal (``journal.db``, SQLite) lives; ``null`` runs without one (history in memory only)."""
    journal: JournalConfig = JournalConfig()
    stop_timeout: Duration = 20.0
    """On SIGTERM or SIGINT, how long a running failover may take to finish. Then it is aborted: it makes no further
    move, and any EIP it has detached is re-attached (within the group's ``failover_deadline``) before the daemon
    exits (status 1 if that failed). The unit's ``TimeoutStopSec`` must exceed this plus ``failover_deadline``."""
    providers: dict[Name, ProviderConfig] = Field(min_length=1)
    groups: list[GroupConfig] = Field(min_length=1)
    cluster: ClusterConfig | None = None
    """Absent: this daemon acts alone."""

    @model_validator(mode="after")
    def _unique_groups(self) -> Config:
        problems = [
            (f"groups[{i}].name", f"duplicate group name {name!r}")
            for i, name in _duplicates(g.name for g in self.groups)
        ]
        mover: dict[str, str] = {}
        for gi, group in enumerate(self.groups):  # a cut-through ENI moves with one group's EIP
            if self.providers[group.provider].type != "alibaba":
                continue
            for eni in sorted({e for t in group.targets if (e := t.binding.network_interface_id) is not None}):
                if eni in mover and mover[eni] != group.name:
                    problems.append((f"groups[{gi}].targets", f"ENI {eni} is moved by groups {mover[eni]!r} and "
                                                              f"{group.name!r}: a cut-through ENI has one group"))
                mover.setdefault(eni, group.name)
        owner: dict[str, str] = {}
        for gi, group in enumerate(self.groups):
            for ei, eip in enumerate(group.eips):
                if eip in owner and owner[eip] != group.name:
                    problems.append((f"groups[{gi}].eips[{ei}]", f"{eip!r} is in groups {owner[eip]!r} and "
                                                                 f"{group.name!r}: an EIP belongs to one group"))
                owner.setdefault(eip, group.name)
        if problems:
            raise _Problems(problems)
        return self

    @model_validator(mode="after")
    def _lease_covers_calls(self) -> Config:
        if self.cluster is not None:
            problems = lease_problems(self.providers, self.cluster)
            if problems:
                raise _Problems(problems)
        return self


def lease_problems(providers: Mapping[str, AwsProviderConfig | AlibabaProviderConfig],
                   cluster: ClusterConfig) -> list[tuple[str, str]]:
    """The providers whose longest cloud call the cluster's lease, less its margin, cannot outlive: a leader proves
    before each move that its lease outlives the call."""
    return [
        ("cluster.ttl", f"must exceed provider {name!r}'s longest cloud call ({call_deadline(cfg):g}s: "
                        f"connect_timeout + read_timeout{' + 1s' if cfg.type == 'alibaba' else ''}) plus the "
                        f"leader's safety margin ({cluster.margin:g}s): a leader proves before each move that its "
                        f"lease outlives the call; raise ttl or lower the timeouts")
        for name, cfg in providers.items() if call_deadline(cfg) + cluster.margin >= cluster.ttl
    ]


def dry(config: Config) -> Config:
    """``config`` with every group in dry run (``eipfailover run --dry-run``)."""
    return config.model_copy(update={"groups": [g.model_copy(update={"dry_run": True}) for g in config.groups]})


def _duplicates(names: Iterable[_T]) -> list[tuple[int, _T]]:
    seen: set[_T] = set()
    dups = []
    for i, name in enumerate(names):
        if name in seen:
            dups.append((i, name))
        seen.add(name)
    return dups


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS and i > 0 and (isinstance(loc[i - 1], int) or loc[i - 2 : i - 1] == ("providers",)):
            continue  # the discriminated union's tag, which pydantic inserts into the location
        else:
            out += f".{part}" if out else str(part)
    return out


def _join(base: str, sub: str) -> str:
    if not sub:
        return base or "(top level)"
    if not base:
        return sub
    return base + (sub if sub.startswith(("[", ".")) else "." + sub)


def _problem_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        base = _format_loc(tuple(err["loc"]))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            lines += [f"{_join(base, path)}: {msg}" for path, msg in cause.problems]
        elif err["type"] == "extra_forbidden":
            lines.append(f"{base}: unknown key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{_join(base, '')}: {msg}")
    return lines


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate already-parsed YAML data; raise :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of keys (log, api, providers, groups)"])
    raw_providers = data.get("providers")
    provider_types = (
        {name: p.get("type") for name, p in raw_providers.items() if isinstance(p, dict)}
        if isinstance(raw_providers, dict)
        else {}
    )
    try:
        return Config.model_validate(data, context={"provider_types": provider_types})
    except ValidationError as exc:
        raise ConfigError(source, _problem_lines(exc)) from None
    except RecursionError:
        raise ConfigError(source, ["(top level): nested too deeply to be a config"]) from None


MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""A config is a few kilobytes; a file beyond this is not one (and is not parsed)."""


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raise :class:`ConfigError` with every problem and its key path."""
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [f"the file is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: not a config"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader that refuses duplicate keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"invalid YAML: {where}{problem}"]) from None
    except RecursionError:  # the parser and the constructor recurse: thousands of nested [ or {
        raise ConfigError(source, ["invalid YAML: nested too deeply to be a config"]) from None
    except (ValueError, OverflowError) as exc:  # a constructor's: 2024-13-45, !!int abc, a 5000-digit integer
        raise ConfigError(source, [f"invalid YAML: {exc}"]) from None
    return parse_config(data, source)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last one silently: a second
    ``policy:`` block would replace the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict | set):
                continue  # unhashable: the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
