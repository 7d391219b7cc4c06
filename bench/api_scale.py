"""Steady-state API use vs number of groups (10 -> 1,000): describes per second, throttled responses.

Runs the real engine in-process (an :class:`~eipfailover.engine.Engine` of one
:class:`~eipfailover.engine.GroupRunner` per group, the real :class:`~eipfailover.providers.aws.AwsProvider` with
its default rate limits) against a moto EC2 server reached through the fault proxy enforcing EC2's documented
request-token buckets (``tests/fault_proxy.py`` with ``tests/ec2_buckets.py``). Each group has 1 EIP and 2 targets
(instances a and b; the EIP on a); each target has one in-memory check that always passes (the checks are not what
is measured here), everything is healthy, ``policy.interval`` is 1 s. For each number of groups, once the engine is
ready and every target is UP, the bench counts for ``--seconds`` (a window on whole intervals, its edges half-way
between two ticks of the read grid) the requests the proxy saw, and the daemon's CPU.

moto and the proxy run in a process of their own (:class:`CloudProcess`), so that the daemon's CPU is its own;
time stamps of both processes are ``time.monotonic()`` (CLOCK_MONOTONIC, shared by all processes). The world
(instances and EIPs) is made directly in moto, not through the proxy, so it takes no token.

Printed per number of groups: DescribeAddresses requests a second at the proxy, describes per interval, and per
interval per started 1,000 EIPs (target <= 1: one describe per provider per interval whatever the number of
groups), the EIPs each describe asks for, the throttled answers (target 0), the other requests a second, the
client-side describe latency, the CPU of the daemon and of the cloud process (one core = 100%), and how late the
daemon's event loop runs (the lateness of a 50 ms sleep, p99 / max).

    .venv/bin/python bench/api_scale.py                        # 10, 100, 300, 1000 groups, 30 s each (~3 min)
    .venv/bin/python bench/api_scale.py --quick                # 10 and 100 groups, 5 s each (< 60 s)
    .venv/bin/python bench/api_scale.py --groups 1000 --seconds 60 --json /tmp/api_scale.json

Exits 1 if a target is missed (more than one describe per interval per 1,000 EIPs, a throttled answer, a group
that cannot read the cloud).

:class:`CloudProcess` and :func:`build_world` are shared with ``bench/mass_failover.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing
import os
import resource
import statistics
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3

from eipfailover import log as eiplog
from eipfailover.checks.base import OK, Check
from eipfailover.config import AwsProviderConfig, parse_config
from eipfailover.engine import Engine, GroupRunner
from eipfailover.events import NullObserver, Observers
from eipfailover.model import CheckStatus, TargetState
from eipfailover.providers.aws import AwsProvider

REGION = "us-east-1"
INTERVAL = 1.0
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION,
               "AWS_EC2_METADATA_DISABLED": "true"}


# --- the cloud: moto and the bucket-enforcing proxy, in a process of their own -----------------------------------

class Request(NamedTuple):
    """One request the proxy saw (a picklable digest of :class:`tests.fault_proxy.Seen`)."""

    operation: str
    at: float
    """``time.monotonic()`` at arrival."""
    limited: bool
    """Refused by the request-token bucket (answered ``RequestLimitExceeded``)."""
    forwarded: bool
    allocation_id: str | None
    values: int | None
    """For DescribeAddresses: the allocation IDs it asked for (filter values, or ``AllocationId.N``); None: all."""


def _digest(seen: Any) -> Request:
    params: dict[str, str] = seen.params
    values = sum(1 for k in params if k.startswith(("Filter.1.Value.", "AllocationId.")))
    return Request(seen.operation, seen.at, seen.limited, seen.forwarded, params.get("AllocationId"),
                   values or None)


def _cloud_main(conn: Connection, scale: float) -> None:
    """The cloud process: a ThreadedMotoServer and, in front of it, the FaultProxy with EC2's buckets; it answers
    the parent's commands on ``conn`` until ``stop``."""
    from moto.server import ThreadedMotoServer

    from tests.ec2_buckets import Ec2Buckets
    from tests.fault_proxy import FaultProxy

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = f"http://{host}:{port}"

    async def main() -> None:
        buckets = Ec2Buckets(scale=scale)
        async with FaultProxy(moto, "ec2", buckets=buckets, log_limit=10**7) as proxy:
            conn.send((moto, proxy.url))
            loop = asyncio.get_running_loop()
            while True:
                command, arg = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    conn.send(None)
                    return
                if command == "fresh":  # a new run: every bucket full, counters and log cleared
                    buckets.refill()
                    buckets.reset_counters()
                    proxy.log.clear()
                    conn.send(None)
                elif command == "requests":
                    conn.send([_digest(s) for s in proxy.log if s.at >= arg])
                elif command == "cpu":
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    conn.send(usage.ru_utime + usage.ru_stime)
                else:
                    conn.send(ValueError(f"unknown command {command!r}"))

    try:
        asyncio.run(main())
    finally:
        server.stop()


class CloudProcess:
    """moto EC2 behind the bucket-enforcing fault proxy, in a child process. ``moto``: the server itself (for
    setting up and checking the world, taking no token); ``url``: the proxy (the daemon's ``endpoint_url``).
    ``scale`` scales EC2's buckets (:class:`tests.ec2_buckets.Ec2Buckets`)."""

    def __init__(self, scale: float = 1.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_cloud_main, args=(child, scale), daemon=True, name="cloud")
        self._process.start()
        child.close()  # the child's end is the child's: its death is then an EOF here, not a hang
        self.moto, self.url = self._conn.recv()

    def _ask(self, command: str, arg: Any = None) -> Any:
        self._conn.send((command, arg))
        if not self._conn.poll(120):
            raise RuntimeError(f"the cloud process gave no answer to {command!r} within 120 s")
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def fresh(self) -> None:
        """Empty moto, every bucket full, the proxy's log and counters cleared."""
        with urllib.request.urlopen(urllib.request.Request(f"{self.moto}/moto-api/reset", method="POST"),
                                    timeout=30) as reply:
            reply.read()
        self._ask("fresh")

    def requests(self, since: float = 0.0) -> list[Request]:
        """The requests the proxy received at or after ``since`` (monotonic seconds)."""
        result: list[Request] = self._ask("requests", since)
        return result

    def cpu(self) -> float:
        """The cloud process's CPU seconds (user + system, every thread: moto's included)."""
        return float(self._ask("cpu"))

    def stop(self) -> None:
        if self._process.is_alive():
            self._ask("stop")
        self._process.join(10)


@dataclass(frozen=True)
class Pair:
    """One group's world: its EIP, on instance ``a``; ``b`` the standby."""

    eip: str
    a: str
    b: str


def ec2_client(endpoint: str) -> Any:
    return boto3.client("ec2", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bench",
                        aws_secret_access_key="bench")


def build_world(cloud: CloudProcess, groups: int) -> list[Pair]:
    """A fresh moto holding ``2 * groups`` running instances and ``groups`` EIPs, the i-th on instance 2i."""
    cloud.fresh()
    ec2 = ec2_client(cloud.moto)
    reply = ec2.run_instances(ImageId="ami-12345678", MinCount=2 * groups, MaxCount=2 * groups,
                              InstanceType="t3.micro")
    instances = [i["InstanceId"] for i in reply["Instances"]]
    pairs = []
    for i in range(groups):
        eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
        ec2.associate_address(AllocationId=eip, InstanceId=instances[2 * i], AllowReassociation=True)
        pairs.append(Pair(eip, instances[2 * i], instances[2 * i + 1]))
    return pairs


def holders(cloud: CloudProcess) -> dict[str, str | None]:
    """Every EIP's instance, as moto has it now (read directly: no token)."""
    addresses = ec2_client(cloud.moto).describe_addresses()["Addresses"]
    return {a["AllocationId"]: a.get("InstanceId") or None for a in addresses}


def config_data(world: Sequence[Pair], endpoint: str, policy: dict[str, Any],
                checks: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The config of one group per pair (``checks``: per target name; default a tcp check, replaced)."""
    default = [{"type": "tcp", "host": "127.0.0.1", "port": 9}]
    return {
        "providers": {"aws": {"type": "aws", "region": REGION, "endpoint_url": endpoint}},
        "groups": [{
            "name": f"g{i}", "provider": "aws", "eips": [p.eip], "policy": policy,
            "targets": [{"name": name, "binding": {"instance_id": instance},
                         "checks": (checks or {}).get(f"g{i}/{name}", default)}
                        for name, instance in (("a", p.a), ("b", p.b))],
        } for i, p in enumerate(world)],
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def quiet_logs() -> None:
    """The engine's warnings and errors on stderr (as JSON lines); nothing below."""
    eiplog.configure("json", "warning", sys.stderr)


async def all_up(engine: Engine, timeout: float) -> None:
    end = time.monotonic() + timeout
    while any(t.health.state is not TargetState.UP for r in engine.runners.values() for t in r.targets.values()):
        if time.monotonic() > end:
            raise SystemExit("not every target came UP in time")
        await asyncio.sleep(0.1)


async def lag_sampler(lags: list[float], every: float = 0.05) -> None:
    """How late the event loop wakes a task (seconds past a ``sleep(every)``), into ``lags``."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(every)
        lags.append(loop.time() - before - every)


# --- the steady-state measurement --------------------------------------------------------------------------------

class Steady(Check):
    """A check that always passes, in memory."""

    def __init__(self) -> None:
        super().__init__("steady", 0.5)

    @classmethod
    def from_config(cls, config: object, name: str, timeout: float, ctx: object) -> Steady:
        raise NotImplementedError

    async def probe(self) -> tuple[CheckStatus, str]:
        return OK


@dataclass
class Row:
    groups: int
    seconds: float
    describes: int
    describes_per_second: float
    describes_per_interval: float
    describes_per_interval_per_1000_eips: float
    eips_per_describe: str
    throttled: int
    throttled_client: int
    other_per_second: float
    other: dict[str, int]
    describe_ms_p50: float
    describe_ms_max: float
    daemon_cpu: float
    cloud_cpu: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    blind_groups: int
    setup_seconds: float
    load: tuple[float, float, float]

    @property
    def ok(self) -> bool:
        return (self.describes_per_interval_per_1000_eips <= 1.0 and self.throttled == 0
                and self.throttled_client == 0 and self.blind_groups == 0 and self.describes > 0)


async def measure(cloud: CloudProcess, world: list[Pair], seconds: float, setup: float) -> Row:
    config = parse_config(config_data(world, cloud.url, {"interval": f"{INTERVAL}s", "timeout": "500ms", "rise": 2,
                                                         "fall": 3}))
    provider_config = config.providers["aws"]
    assert isinstance(provider_config, AwsProviderConfig)
    provider = AwsProvider.from_config("aws", provider_config)
    client: Counter[tuple[str, str]] = Counter()
    latencies: list[float] = []
    counting = False

    def on_request(_: str, operation: str, result: str, took: float) -> None:
        if counting:
            client[operation, result] += 1
            if operation == "DescribeAddresses":
                latencies.append(took)

    provider.on_request = on_request
    observers = Observers([NullObserver()])
    engine = Engine(GroupRunner(g, provider, {t.name: [Steady()] for t in g.targets}, observers)
                    for g in config.groups)
    task = asyncio.create_task(engine.run())
    try:
        await asyncio.wait_for(engine.ready.wait(), 120)
        await all_up(engine, 60)
        # the window: whole intervals, from half-way between two ticks of the read grid (multiples of INTERVAL)
        loop = asyncio.get_running_loop()
        start = (math.floor(loop.time() / INTERVAL) + 1.5) * INTERVAL
        await asyncio.sleep(start - loop.time())
        counting = True
        cpu0, cloud0, wall0 = cpu_seconds(), cloud.cpu(), loop.time()
        lags: list[float] = []
        sampler = asyncio.create_task(lag_sampler(lags))
        await asyncio.sleep(start + seconds - loop.time())
        cpu1, cloud1, wall1 = cpu_seconds(), cloud.cpu(), loop.time()
        sampler.cancel()
        counting = False
        blind = len(engine.blind(time.monotonic()))
    finally:
        engine.request_stop()
        await task
        await provider.close()
    seen = [r for r in cloud.requests(start) if r.at < start + seconds]
    describes = [r for r in seen if r.operation == "DescribeAddresses"]
    other = Counter(r.operation for r in seen if r.operation != "DescribeAddresses")
    values = sorted("all" if r.values is None else str(r.values) for r in describes)
    per_interval = len(describes) * INTERVAL / seconds
    wall = wall1 - wall0
    return Row(
        groups=len(world), seconds=seconds, describes=len(describes), describes_per_second=len(describes) / seconds,
        describes_per_interval=per_interval,
        describes_per_interval_per_1000_eips=per_interval / math.ceil(len(world) / 1000),
        eips_per_describe=", ".join(f"{v} x{n}" for v, n in Counter(values).most_common()) or "-",
        throttled=sum(r.limited for r in seen),
        throttled_client=sum(n for (_, result), n in client.items() if result == "throttled"),
        other_per_second=sum(other.values()) / seconds, other=dict(other),
        describe_ms_p50=1000 * statistics.median(latencies) if latencies else math.nan,
        describe_ms_max=1000 * max(latencies) if latencies else math.nan,
        daemon_cpu=100 * (cpu1 - cpu0) / wall, cloud_cpu=100 * (cloud1 - cloud0) / wall,
        loop_lag_p99_ms=1000 * sorted(lags)[int(0.99 * (len(lags) - 1))], loop_lag_max_ms=1000 * max(lags),
        blind_groups=blind,
        setup_seconds=setup, load=os.getloadavg(),
    )


def print_rows(rows: list[Row]) -> None:
    print("| groups | DescribeAddresses/s | describes per interval | per interval per 1,000 EIPs | EIPs per describe "
          "| throttled (proxy / client) | other calls/s | describe ms p50 / max | daemon CPU | cloud CPU | "
          "loop lag ms p99 / max | blind groups | load 1 min |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        other = f"{r.other_per_second:.2f}" + (f" ({', '.join(f'{k} {v}' for k, v in r.other.items())})"
                                               if r.other else "")
        print(f"| {r.groups} | {r.describes_per_second:.2f} | {r.describes_per_interval:.2f} "
              f"| {r.describes_per_interval_per_1000_eips:.2f} | {r.eips_per_describe} "
              f"| {r.throttled} / {r.throttled_client} | {other} | {r.describe_ms_p50:.0f} / {r.describe_ms_max:.0f} "
              f"| {r.daemon_cpu:.1f}% | {r.cloud_cpu:.1f}% | {r.loop_lag_p99_ms:.0f} / {r.loop_lag_max_ms:.0f} "
              f"| {r.blind_groups} | {r.load[0]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 100, 300, 1000])
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window (whole seconds)")
    parser.add_argument("--quick", action="store_true", help="10 and 100 groups, 5 s each")
    parser.add_argument("--json", type=Path, help="write the rows to this file as JSON")
    args = parser.parse_args()
    if args.quick:
        args.groups, args.seconds = [10, 100], 5.0
    args.seconds = float(max(1, round(args.seconds)))
    os.environ.update(CREDENTIALS)
    quiet_logs()
    began = time.monotonic()
    cloud = CloudProcess()
    rows = []
    try:
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; interval {INTERVAL:g}s, "
              f"window {args.seconds:g}s; AWS default rate limits (reads 18/s burst 90, mutations 4.5/s burst 45); "
              "EC2 buckets: DescribeAddresses 100 / 20 per s")
        for groups in args.groups:
            setup = time.monotonic()
            world = build_world(cloud, groups)
            rows.append(asyncio.run(measure(cloud, world, args.seconds, time.monotonic() - setup)))
            print(f"  {groups} groups: set-up {rows[-1].setup_seconds:.1f}s", file=sys.stderr)
    finally:
        cloud.stop()
    print()
    print_rows(rows)
    missed = [r.groups for r in rows if not r.ok]
    print(f"\ntarget (<= 1 describe per provider per interval per 1,000 EIPs, 0 throttled, no blind group): "
          f"{'met' if not missed else f'MISSED at {missed} groups'}; {time.monotonic() - began:.0f}s in all")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) | {"ok": r.ok} for r in rows], indent=2) + "\n")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
