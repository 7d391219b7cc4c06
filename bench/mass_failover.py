"""Mass failover vs number of groups (10 -> 500) under the bucket fake: time to all verified, against the floor.

Runs the real engine in-process (one :class:`~eipfailover.engine.GroupRunner` per group, the real
:class:`~eipfailover.providers.aws.AwsProvider` with its default rate limits: reads 18/s burst 90, mutations 4.5/s
burst 45) against moto behind the fault proxy enforcing EC2's documented request-token buckets
(``AssociateAddress``: 50 tokens, 5 a second; ``DescribeAddresses``: 100, 20 a second). N groups, each with 1 EIP
and 2 targets (instances a and b), every EIP on its a. Each target has one real ``http`` check against one lean HTTP
server (in a process of its own), a path per target (``/g<i>/a``, ``/g<i>/b``). Policy: interval 1 s, timeout
300 ms, rise 2, fall 2, ``fast_interval`` left to its default (max(interval / 4, timeout) = 300 ms),
``failover_deadline`` 300 s (``--deadline``: the moves queue at the rate limit), failback manual.

At t0 every primary dies at once: the server answers 503 on every ``/…/a`` path from then on. Measured from t0:

* detection: each group's first failed probe of a, and when a was confirmed DOWN (p50 / max); standbys confirmed
  DOWN meanwhile ("false DOWN": an overloaded daemon's probes time out);
* the time until every EIP is verified on its standby (the engine's ``on_failover_finished`` with ``success``);
* the floor, for EC2's bucket (50, 5/s) and for our own limiter's (45, 4.5/s): the brief's formula
  ``detection max + max(0, N - burst) / rate``, and the exact one: the time the last ``AssociateAddress`` could be
  admitted if each group sent its own at the instant its detection ended, through that bucket (first come, first
  served; never above the formula); and our ratio to each;
* at the proxy: ``AssociateAddress`` requests, admitted and throttled, and per EIP exactly one admitted (none moved
  twice); throttled ``DescribeAddresses``;
* at the end, in moto itself: every EIP on its b (none detached, none elsewhere);
* verification time (from a group's first ``AssociateAddress`` at the proxy to its verified end: no verification
  starved) and queueing time (from its detection to that ``AssociateAddress``), p50 / max;
* the daemon's CPU, the cloud process's, and how late the daemon's event loop runs (a 50 ms sleep's lateness);
* a per-second series (``AssociateAddress`` admitted and throttled, ``DescribeAddresses``, groups verified), and
  in the JSON file each group's timeline.

    .venv/bin/python bench/mass_failover.py                     # 10, 100, 300, 500 groups (~3.5 min)
    .venv/bin/python bench/mass_failover.py --quick             # 10 and 100 groups (< 90 s)
    .venv/bin/python bench/mass_failover.py --groups 500 --json /tmp/mass_failover.json
    .venv/bin/python bench/mass_failover.py --groups 500 --deadline 60     # the default failover_deadline

``--quick`` keeps EC2's real buckets: ``Ec2Buckets(scale=s)`` shrinks the buckets and their refill together (n*s
requests there meet the throttling n meet on EC2 in the same seconds), so it saves requests, not time. ``--scale``
is there all the same (the daemon's rate limits are then scaled alike, and so are the floors).

Exits 1 if a target is missed: for N = 100 and 500, all verified within 1.3x EC2's (formula) floor; for every N,
every EIP on its b, none moved twice, no throttled answer, no failed failover. ``--json PATH`` writes a list, one
object per N, with the keys groups, seconds_to_all_verified, floor_ec2, floor_limiter, ratio, throttled,
moved_twice, detached, series (and more: timeline, the exact floors, verification and queueing times).

Time stamps of the three processes (daemon, cloud, health server) are all ``time.monotonic()`` (CLOCK_MONOTONIC);
t0 is the health server's own instant of the flip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.api_scale import (
    CREDENTIALS,
    INTERVAL,
    CloudProcess,
    Pair,
    all_up,
    build_world,
    config_data,
    cpu_seconds,
    holders,
    lag_sampler,
    quiet_logs,
)
from eipfailover.config import AwsProviderConfig, parse_config
from eipfailover.daemon import build_checks
from eipfailover.engine import Engine, GroupRunner
from eipfailover.events import FailoverRecord, NullObserver, Observers
from eipfailover.model import CheckResult, CheckStatus, Health, TargetState
from eipfailover.providers.aws import AwsProvider

EC2_BUCKET = (50.0, 5.0)
"""EC2's ``AssociateAddress`` request bucket: (capacity, refill a second)."""
LIMITER = (45.0, 4.5)
"""The AWS driver's default mutation limit: (burst, requests a second)."""
TARGETED = (100, 500)
"""The group counts whose time is held to :data:`RATIO_TARGET` x EC2's floor."""
RATIO_TARGET = 1.3


# --- the health server: one process, a path per target; /control/down fails every target a --------------------

class _Health(asyncio.Protocol):
    down = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" not in self.head or self.transport is None:
            return
        path = self.head.split(b" ", 2)[1]
        body = b"ok"
        if path in (b"/control/down", b"/control/up"):
            _Health.down = path == b"/control/down"
            body = repr(time.monotonic()).encode()  # when it flipped
        status = b"503 Service Unavailable" if _Health.down and path.endswith(b"/a") else b"200 OK"
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        self.transport.close()

    def eof_received(self) -> bool:
        return False


def _health_main(conn: Connection) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Health, "127.0.0.1", 0, backlog=4096)
        conn.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class HealthProcess:
    """The probed endpoint, in a process of its own (its CPU is not the daemon's)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_health_main, args=(child,), daemon=True, name="health")
        self._process.start()
        child.close()
        self.port: int = parent.recv()

    def url(self, group: int, target: str) -> str:
        return f"http://127.0.0.1:{self.port}/g{group}/{target}"

    async def control(self, what: str) -> float:
        """``down``: every target a fails from now on; ``up``: all pass. Returns when the server flipped
        (``time.monotonic()``, shared by all processes)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET /control/{what} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return float(answer.split(b"\r\n\r\n", 1)[1])

    def stop(self) -> None:
        self._process.terminate()  # the process this object started, by its handle
        self._process.join(10)


# --- the run -----------------------------------------------------------------------------------------------------

class Recorder(NullObserver):
    """What the engine reports, with ``time.monotonic()`` stamps."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.all_verified = asyncio.Event()
        self.verified: dict[str, float] = {}
        """Group -> the end of its first successful failover."""
        self.armed = False
        self.failing: dict[str, float] = {}
        """Group -> its target a's first failed probe (after t0)."""
        self.down: dict[str, float] = {}
        """Group -> when its target a was confirmed DOWN (after t0)."""
        self.false_down: list[tuple[str, str]] = []
        """Targets other than a confirmed DOWN after t0 (an overloaded daemon or server)."""
        self.started: Counter[str] = Counter()
        self.finished: dict[str, list[tuple[float, str, str]]] = {}

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None:
        if self.armed and target == "a" and result.status is not CheckStatus.OK:
            self.failing.setdefault(group, time.monotonic())

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        if self.armed and after.state is TargetState.DOWN:
            if target == "a":
                self.down.setdefault(group, time.monotonic())
            else:
                self.false_down.append((group, target))

    def on_failover_started(self, record: FailoverRecord) -> None:
        self.started[record.group] += 1

    def on_failover_finished(self, record: FailoverRecord) -> None:
        now = time.monotonic()
        self.finished.setdefault(record.group, []).append((now, record.result, record.error))
        if record.result == "success":
            self.verified.setdefault(record.group, now)
            if len(self.verified) >= self.groups:
                self.all_verified.set()


@dataclass
class Result:
    groups: int
    first_failure_p50: float
    first_failure_max: float
    detection_p50: float
    detection_max: float
    seconds_to_all_verified: float | None
    verified: int
    floor_ec2: float
    floor_limiter: float
    floor_ec2_exact: float
    floor_limiter_exact: float
    ratio: float | None
    ratio_limiter: float | None
    ratio_exact: float | None
    associate_requests: int
    associate_admitted: int
    throttled: int
    throttled_describes: int
    moved_twice: int
    never_moved: int
    failovers_started: int
    failed_failovers: int
    detached: int
    not_on_b: int
    false_down: int
    verification_p50: float
    verification_max: float
    queue_p50: float
    queue_max: float
    describes: int
    describe_eips_max: str
    daemon_cpu: float
    cloud_cpu: float
    loop_lag_p99: float
    loop_lag_max: float
    load: tuple[float, float, float]
    errors: list[str] = field(default_factory=list)
    series: list[dict[str, int]] = field(default_factory=list)
    timeline: list[dict[str, float | None]] = field(default_factory=list)
    """Per group, seconds from t0: first failed probe of a, a confirmed DOWN, first AssociateAddress admitted at
    the proxy, verified."""

    def missed(self) -> list[str]:
        """The targets this run missed."""
        out = []
        if self.groups in TARGETED and (self.ratio is None or self.ratio > RATIO_TARGET):
            out.append(f"ratio {self.ratio} > {RATIO_TARGET}")
        if self.verified != self.groups or self.failed_failovers:
            out.append(f"{self.verified}/{self.groups} verified, {self.failed_failovers} failed failovers")
        if self.detached or self.not_on_b:
            out.append(f"{self.detached} detached, {self.not_on_b} not on b")
        if self.moved_twice or self.never_moved:
            out.append(f"{self.moved_twice} moved twice, {self.never_moved} never moved")
        if self.throttled or self.throttled_describes:
            out.append(f"{self.throttled} AssociateAddress and {self.throttled_describes} describes throttled")
        return out


def exact_floor(arrivals: Sequence[float], burst: float, rate: float) -> float:
    """When the last of ``arrivals`` (seconds, one request each) gets a token from a bucket full at 0 (``burst``,
    ``rate`` a second), first come, first served."""
    tokens, clock, last = burst, 0.0, 0.0
    for arrival in sorted(arrivals):
        t = max(arrival, last)
        tokens, clock = min(burst, tokens + (t - clock) * rate), t
        if tokens < 1.0:
            t += (1.0 - tokens) / rate
            tokens, clock = 1.0, t
        tokens -= 1.0
        last = t
    return last


def quantiles(values: Sequence[float]) -> tuple[float, float]:
    return (statistics.median(values), max(values)) if values else (math.nan, math.nan)


async def run(cloud: CloudProcess, health: HealthProcess, world: list[Pair], deadline: float,
              scale: float) -> Result:
    n = len(world)
    policy = {"interval": f"{INTERVAL:g}s", "timeout": "300ms", "rise": 2, "fall": 2,
              "failover_deadline": f"{deadline:g}s"}
    checks = {f"g{i}/{t}": [{"type": "http", "url": health.url(i, t)}] for i in range(n) for t in ("a", "b")}
    data = config_data(world, cloud.url, policy, checks)
    ec2_burst, ec2_rate = EC2_BUCKET[0] * scale, EC2_BUCKET[1] * scale
    lim_burst, lim_rate = LIMITER[0] * scale, LIMITER[1] * scale
    if scale != 1.0:
        data["providers"]["aws"]["rate_limit"] = {
            "reads": {"requests_per_second": 18 * scale, "burst": max(1, round(90 * scale))},
            "mutations": {"requests_per_second": lim_rate, "burst": max(1, round(lim_burst))}}
    config = parse_config(data)
    provider_config = config.providers["aws"]
    assert isinstance(provider_config, AwsProviderConfig)
    provider = AwsProvider.from_config("aws", provider_config)
    recorder = Recorder(n)
    observers = Observers([recorder])
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        engine = Engine(GroupRunner(g, provider, build_checks(g, provider, http), observers) for g in config.groups)
        task = asyncio.create_task(engine.run())
        try:
            await asyncio.wait_for(engine.ready.wait(), 120)
            await all_up(engine, 60)
            await asyncio.sleep(2 * INTERVAL)  # a steady state first
            recorder.armed = True
            cpu0, cloud0 = cpu_seconds(), cloud.cpu()
            lags: list[float] = []
            sampler = asyncio.create_task(lag_sampler(lags))
            t0 = await health.control("down")
            wait_for = deadline + 60 + max(0.0, n - lim_burst) / lim_rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorder.all_verified.wait(), wait_for)
            wall = loop.time() - t0
            cpu1, cloud1 = cpu_seconds(), cloud.cpu()
            sampler.cancel()
        finally:
            engine.request_stop()
            await task
            await provider.close()
            await health.control("up")
    names = {f"g{i}": p for i, p in enumerate(world)}
    seen = cloud.requests(t0)
    on = holders(cloud)

    detection = sorted(t - t0 for t in recorder.down.values())
    fail_p50, fail_max = quantiles([t - t0 for t in recorder.failing.values()])
    lags.sort()
    det_p50, det_max = quantiles(detection)
    ends = {g: t - t0 for g, t in recorder.verified.items()}
    failed = {g: error for g, f in recorder.finished.items() for _, result, error in f if result != "success"}
    everything = max(ends.values()) if len(ends) == n else None
    floor_ec2 = det_max + max(0.0, n - ec2_burst) / ec2_rate
    floor_lim = det_max + max(0.0, n - lim_burst) / lim_rate
    exact_ec2 = exact_floor(detection, ec2_burst, ec2_rate) if detection else math.nan
    exact_lim = exact_floor(detection, lim_burst, lim_rate) if detection else math.nan

    associates = [r for r in seen if r.operation == "AssociateAddress"]
    admitted = Counter(r.allocation_id for r in associates if not r.limited)
    first: dict[str, float] = {}
    for r in associates:
        if not r.limited and r.allocation_id is not None:
            first.setdefault(r.allocation_id, r.at)
    verification = [ends[g] + t0 - first[p.eip] for g, p in names.items() if g in ends and p.eip in first]
    queued = [first[p.eip] - recorder.down[g] for g, p in names.items() if g in recorder.down and p.eip in first]
    describes = [r for r in seen if r.operation == "DescribeAddresses"]
    largest = max((r.values or 10**9 for r in describes), default=0)

    seconds = math.ceil(max([wall, *(r.at - t0 for r in seen)])) if seen else math.ceil(wall)
    series = [{"second": s, "associate_admitted": 0, "associate_throttled": 0, "describes": 0,
               "describes_throttled": 0, "verified": 0} for s in range(seconds + 1)]
    for r in seen:
        row = series[min(int(r.at - t0), seconds)]
        if r.operation == "AssociateAddress":
            row["associate_throttled" if r.limited else "associate_admitted"] += 1
        elif r.operation == "DescribeAddresses":
            row["describes_throttled" if r.limited else "describes"] += 1
    for end in ends.values():
        series[min(int(end), seconds)]["verified"] += 1

    def since(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 4)

    timeline = [{"fail": since(recorder.failing.get(g)), "down": since(recorder.down.get(g)),
                 "associate": since(first.get(p.eip)), "verified": None if g not in ends else round(ends[g], 4)}
                for g, p in names.items()]

    def ratio(floor: float) -> float | None:
        return everything / floor if everything is not None and floor > 0 else None

    verify_p50, verify_max = quantiles(verification)
    queue_p50, queue_max = quantiles(queued)
    return Result(
        groups=n, first_failure_p50=fail_p50, first_failure_max=fail_max, detection_p50=det_p50,
        detection_max=det_max, seconds_to_all_verified=everything,
        verified=len(ends), floor_ec2=floor_ec2, floor_limiter=floor_lim, floor_ec2_exact=exact_ec2,
        floor_limiter_exact=exact_lim, ratio=ratio(floor_ec2), ratio_limiter=ratio(floor_lim),
        ratio_exact=ratio(exact_ec2), associate_requests=len(associates), associate_admitted=sum(admitted.values()),
        throttled=sum(r.limited for r in associates), throttled_describes=sum(r.limited for r in describes),
        moved_twice=sum(1 for p in world if admitted[p.eip] > 1),
        never_moved=sum(1 for p in world if admitted[p.eip] == 0),
        failovers_started=sum(recorder.started.values()), failed_failovers=len(failed),
        detached=sum(1 for p in world if on.get(p.eip) is None),
        not_on_b=sum(1 for p in world if on.get(p.eip) != p.b), false_down=len(recorder.false_down),
        verification_p50=verify_p50, verification_max=verify_max, queue_p50=queue_p50, queue_max=queue_max,
        describes=len(describes), describe_eips_max="all" if largest == 10**9 else str(largest),
        daemon_cpu=100 * (cpu1 - cpu0) / wall, cloud_cpu=100 * (cloud1 - cloud0) / wall,
        loop_lag_p99=lags[int(0.99 * (len(lags) - 1))] if lags else math.nan,
        loop_lag_max=lags[-1] if lags else math.nan,
        load=os.getloadavg(),
        errors=sorted(Counter(failed.values()).keys())[:5], series=series, timeline=timeline,
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def print_results(results: list[Result]) -> None:
    print("| groups | first failed probe p50 / max s | detection p50 / max s | all verified s "
          "| floor EC2 s (formula; exact) | ratio (formula; exact) "
          "| floor limiter s (formula; exact) | ratio to limiter | AssociateAddress sent / admitted / throttled "
          "| moved twice | detached / not on b | failovers started / groups with a failed one "
          "| verification p50 / max s "
          "| queued p50 / max s | describes (throttled) | false DOWN | daemon CPU | cloud CPU | loop lag p99 / max ms "
          "| load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.groups} | {fmt(r.first_failure_p50, 2)} / {fmt(r.first_failure_max, 2)} "
              f"| {fmt(r.detection_p50, 2)} / {fmt(r.detection_max, 2)} "
              f"| {fmt(r.seconds_to_all_verified)} ({r.verified}/{r.groups}) "
              f"| {fmt(r.floor_ec2)}; {fmt(r.floor_ec2_exact)} | {fmt(r.ratio, 2)}; {fmt(r.ratio_exact, 2)} "
              f"| {fmt(r.floor_limiter)}; {fmt(r.floor_limiter_exact)} | {fmt(r.ratio_limiter, 2)} "
              f"| {r.associate_requests} / {r.associate_admitted} / {r.throttled} | {r.moved_twice} "
              f"| {r.detached} / {r.not_on_b} | {r.failovers_started} / {r.failed_failovers} "
              f"| {fmt(r.verification_p50, 2)} / {fmt(r.verification_max, 2)} "
              f"| {fmt(r.queue_p50)} / {fmt(r.queue_max)} | {r.describes} ({r.throttled_describes}) "
              f"| {r.false_down} | {r.daemon_cpu:.0f}% | {r.cloud_cpu:.0f}% "
              f"| {fmt(1000 * r.loop_lag_p99, 0)} / {fmt(1000 * r.loop_lag_max, 0)} | {r.load[0]:.2f} |")
    for r in results:
        if r.errors:
            print(f"\n{r.groups} groups, failed failovers: " + "; ".join(r.errors))


def print_series(results: list[Result]) -> None:
    for r in results:
        print(f"\nPer second from t0, {r.groups} groups: AssociateAddress admitted / throttled at the proxy, "
              "DescribeAddresses (throttled), groups verified in that second (cumulative)")
        print("\n| s | associate admitted | associate throttled | describes (throttled) | verified (total) |")
        print("|---:|---:|---:|---:|---:|")
        total = 0
        for row in r.series:
            total += row["verified"]
            print(f"| {row['second']} | {row['associate_admitted']} | {row['associate_throttled']} "
                  f"| {row['describes']} ({row['describes_throttled']}) | {row['verified']} ({total}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 100, 300, 500])
    parser.add_argument("--quick", action="store_true", help="10 and 100 groups")
    parser.add_argument("--deadline", type=float, default=300.0, help="policy.failover_deadline, seconds")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Ec2Buckets(scale=...), the daemon's rate limits scaled alike")
    parser.add_argument("--no-series", action="store_true", help="leave the per-second tables out")
    parser.add_argument("--json", type=Path, help="write the results (series included) to this file")
    args = parser.parse_args()
    if args.quick:
        args.groups = [10, 100]
    os.environ.update(CREDENTIALS)
    quiet_logs()
    began = time.monotonic()
    cloud = CloudProcess(args.scale)
    health = HealthProcess()
    results = []
    try:
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; policy: interval {INTERVAL:g}s, "
              f"timeout 300ms, rise 2, fall 2, fast_interval default (300ms), failover_deadline {args.deadline:g}s; "
              f"one http check per target; EC2 buckets x{args.scale:g}: AssociateAddress "
              f"{EC2_BUCKET[0] * args.scale:g} / {EC2_BUCKET[1] * args.scale:g} per s; our mutation limit "
              f"{LIMITER[0] * args.scale:g} / {LIMITER[1] * args.scale:g} per s")
        for groups in args.groups:
            setup = time.monotonic()
            world = build_world(cloud, groups)
            print(f"  {groups} groups: set-up {time.monotonic() - setup:.1f}s", file=sys.stderr)
            results.append(asyncio.run(run(cloud, health, world, args.deadline, args.scale)))
            print(f"  {groups} groups: {fmt(results[-1].seconds_to_all_verified)}s to all verified",
                  file=sys.stderr)
    finally:
        health.stop()
        cloud.stop()
    print()
    print_results(results)
    if not args.no_series:
        print_series(results)
    missed = {r.groups: r.missed() for r in results if r.missed()}
    print(f"\ntargets (<= {RATIO_TARGET}x EC2's floor at {' and '.join(map(str, TARGETED))} groups; every EIP "
          f"verified on b, none moved twice, none throttled): "
          f"{'met' if not missed else f'MISSED: {missed}'}; {time.monotonic() - began:.0f}s in all")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
