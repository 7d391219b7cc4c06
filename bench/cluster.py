"""Cluster mode on etcd: leader hand-over after ``kill -9`` and ``SIGSTOP``, what the observer quorum adds to a
failover, and what the daemons cost etcd at rest.

The world is the tests' (``tests/cluster_world.py``): a moto EC2 server (two instances, one EIP on the first), a
one-member etcd (``tests/etcd_server.py``) and three daemons as subprocesses, each with its own recording proxy to
moto and its own health endpoints for the two instances; ``ttl`` 3 s, interval 500 ms, timeout 250 ms, rise 2,
fall 2, cooldown 1 s, failback manual, quorum the default (a majority: 2 of 3). Every config gets
``max_failovers: {count: 1000, window: 1h}`` (the default, 3 an hour, would hold the trials back as rate_limited;
``cluster_world(policy=...)``).

1. **kill -9 of the leader**, N runs on one world: from the signal to the moment a survivor's ``GET /v1/cluster``
   says ``acting: true`` (each survivor polled every 20 ms), against the TTL; also when the new leader logged
   ``leader_elected``. The killed daemon is restarted and all three agree on a leader before the next run.
2. **SIGSTOP of the leader**, the same; then SIGCONT, and the time until the old leader reports ``acting: false``
   and the new leader (and whether it ever said ``acting: true`` once awake).
3. **What the quorum adds to a failover**, M trials each: from stopping the primary's health endpoint (all three
   daemons' at once, in the cluster) to ``failover_verified`` in the acting daemon's log, for the three daemons on
   etcd and for one daemon with the same config and no ``cluster`` section (its own proxy and endpoints, same moto).
   ``detect`` is the part up to ``failover_started``. Between trials the primary's endpoints come back, every
   daemon sees the primary UP, the EIP is moved back with boto3 and the (acting) daemon reports target ``a``
   active and healthy.
4. **etcd requests at rest**: etcd's own counter ``grpc_server_handled_total`` (the JSON gateway's requests go
   through gRPC in etcd, so they count; ``/metrics`` itself does not) read before and after a quiet window with the
   three daemons settled, per second and per daemon; and the same etcd over the same window before any daemon
   started (0 daemons: its own baseline, subtracted). ``grpc_server_started_total`` is shown too: a watch stream
   counts as handled only when it ends. The single daemon of 3. (which does not use etcd) runs during the idle
   window, to save time.

Each hand-over run starts at a random phase of the leader's lease renewals (``ttl/3``), each failover trial at a
random phase of the check interval (``--seed``): right after the readiness poll saw a fresh check, a stop would
otherwise always fall at the worst phase.

    .venv/bin/python bench/cluster.py [--runs 20] [--trials 10] [--window 60] [--seed 1] [--json]
    .venv/bin/python bench/cluster.py --quick      # 3 runs, 2 trials, 10 s windows

With ``--json`` the tables go to stderr and one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eipfailover.config import parse_duration
from eipfailover.demo import DaemonProcess
from eipfailover.demo_cluster import free_port
from tests.cluster_world import POLICY, TOKEN, TTL, ClusterWorld, Node, _config, cluster_world
from tests.conftest import Ec2World, HealthServer, ec2_world, eventually
from tests.etcd_server import etcd_binary
from tests.fault_proxy import FaultProxy

POLL = 0.02
"""Seconds between two polls of the daemons' ``/v1/cluster`` while timing a hand-over."""
MAX_FAILOVERS = {"count": 1000, "window": 3600}
BENCH_POLICY = {**POLICY, "max_failovers": MAX_FAILOVERS}
"""The tests' policy, with ``max_failovers`` out of the way."""
INTERVAL = cast(float, parse_duration(POLICY["interval"]))
"""The check interval of the tests' policy: a failover trial starts at a random phase of it."""
RENEWAL = TTL / 3
"""How often a daemon renews its lease: a hand-over run starts at a random phase of it."""
HELD = frozenset({"cooldown", "rate_limited"})
METRIC = re.compile(r"^grpc_server_(handled|started)_total\{([^}]*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Handover:
    old: str
    new: str
    seconds: float
    """From the signal to a survivor's ``/v1/cluster`` saying ``acting: true``."""
    elected_in_log: float
    """From the signal to the new leader's ``leader_elected`` log line."""
    stepped_down: float | None = None
    """SIGSTOP only: from SIGCONT to the old leader reporting ``acting: false`` and the new leader."""
    acted_after_wake: bool = False
    """SIGSTOP only: the old leader said ``acting: true`` at some poll after SIGCONT."""


@dataclass
class Trial:
    actor: str
    detect: float
    """From stopping the primary's endpoint(s) to ``failover_started``."""
    total: float
    """From stopping the primary's endpoint(s) to ``failover_verified``."""
    held: int
    """Decisions held back by cooldown or rate limit meanwhile (should be 0: they would inflate the time)."""


# --- the world ---

async def move_back(ec2: Ec2World) -> None:
    await asyncio.to_thread(ec2.client.associate_address, AllocationId=ec2.eip, InstanceId=ec2.instance_a,
                            AllowReassociation=True)


async def get_json(world: ClusterWorld, url: str) -> dict[str, Any] | None:
    """``url``'s JSON object, or None when it does not answer 200 within a second."""
    assert world.session is not None
    try:
        async with world.session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
            if response.status != 200:
                return None
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None
    return body if isinstance(body, dict) else None


async def view(world: ClusterWorld, node: Node) -> dict[str, Any] | None:
    return await get_json(world, node.url + "/v1/cluster")


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Check ``condition`` every :data:`POLL` s until it holds; the monotonic time its answer came back."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        if await condition():
            return time.monotonic()
        if began > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(max(0.0, began + POLL - time.monotonic()))


async def settled(world: ClusterWorld, timeout: float = 60) -> Node:
    """Once every live daemon answers, counts all the live daemons as members and names one leader, which alone
    acts: that leader."""
    found: list[Node] = []

    async def agreed() -> bool:
        nodes = [n for n in world.nodes if n.alive()]
        leaders, acting = set(), []
        for node, seen in zip(nodes, await asyncio.gather(*(view(world, n) for n in nodes)), strict=True):
            if seen is None or seen["coordination"] != "ok" or len(seen["members"]) != len(nodes):
                return False
            leaders.add(seen["leader"])
            if seen["acting"]:
                acting.append(node)
        if len(leaders) == 1 and len(acting) == 1 and acting[0].name in leaders:
            found[:] = acting
            return True
        return False

    await eventually(agreed, timeout)
    return found[0]


def healthy_on_a(group: dict[str, Any] | None, observers: set[str] | None) -> bool:
    """The group (as its acting daemon reports it) has the EIP on target ``a``, healthy, both targets UP (and, in a
    cluster, UP for each of ``observers`` and by verdict)."""
    if group is None or group.get("active_target") != "a" or \
            (group.get("decision") or {}).get("reason") != "active_healthy":
        return False
    return all(target_up(group, t["name"], observers) for t in group["targets"])


def target_up(group: dict[str, Any] | None, name: str, observers: set[str] | None) -> bool:
    if group is None:
        return False
    target = next((t for t in group["targets"] if t["name"] == name), None)
    if target is None or target["state"] != "up":
        return False
    if observers is None:
        return True
    seen = {o["node"]: o["state"] for o in target.get("observers", [])}
    return target.get("verdict") == "up" and all(seen.get(n) == "up" for n in observers)


async def acting_group(world: ClusterWorld) -> dict[str, Any] | None:
    """``/v1/groups/web`` of the one daemon that says it acts (None if not exactly one does)."""
    nodes = [n for n in world.nodes if n.alive()]
    views = await asyncio.gather(*(view(world, n) for n in nodes))
    acting = [n for n, v in zip(nodes, views, strict=True) if v is not None and v["acting"]]
    if len(acting) != 1:
        return None
    return await get_json(world, acting[0].url + "/v1/groups/web")


# --- 1 and 2: hand-over ---

async def handover(world: ClusterWorld, sig: int, rng: random.Random) -> Handover:
    old = await settled(world)
    await asyncio.sleep(rng.uniform(0, RENEWAL))  # a random phase of the leader's renewals, not a wait
    survivors = [n for n in world.nodes if n is not old]
    found: list[Node] = []

    async def a_survivor_acts() -> bool:
        views = await asyncio.gather(*(view(world, n) for n in survivors))
        found[:] = [n for n, v in zip(survivors, views, strict=True) if v is not None and v["acting"]]
        return bool(found)

    signalled = time.monotonic()
    world.kill(old, sig)
    acts = await poll(a_survivor_acts, 30, f"a new leader after {signal.Signals(sig).name}")
    new = found[0]
    elected = await new.process.wait_for("leader_elected", 10, after=signalled)
    result = Handover(old.name, new.name, acts - signalled, elected - signalled)
    if sig == signal.SIGKILL:
        await old.process.wait()
        restarted = time.monotonic()
        await world.start(old)
        await old.process.wait_for("daemon_ready", 60, after=restarted)
    else:
        async def stepped_down() -> bool:
            seen = await view(world, old)
            if seen is not None and seen["acting"]:
                result.acted_after_wake = True
            return seen is not None and not seen["acting"] and seen["leader"] == new.name

        resumed = time.monotonic()
        world.kill(old, signal.SIGCONT)
        result.stepped_down = await poll(stepped_down, 30, "the old leader stepping down") - resumed
    await settled(world)
    return result


# --- 3: failovers ---

async def failover_trial(stop_primaries: Callable[[], Awaitable[None]], procs: dict[str, DaemonProcess],
                         rng: random.Random) -> Trial:
    """At a random phase of the checks, stop the primary's endpoint(s); the first daemon of ``procs`` to log
    ``failover_verified`` is the actor."""
    await asyncio.sleep(rng.uniform(0, INTERVAL))  # not a wait: right after a check the primary would fail late
    stopped = time.monotonic()
    await stop_primaries()
    tasks = {asyncio.create_task(p.wait_for("failover_verified", 30, after=stopped)): name
             for name, p in procs.items()}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        winners = [(task.result(), tasks[task]) for task in done if task.exception() is None]
        if not winners:
            raise RuntimeError("no daemon logged failover_verified within 30 s")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    verified, actor = min(winners)
    proc = procs[actor]
    started = await proc.wait_for("failover_started", 5, after=stopped)
    held = sum(1 for at, e in proc.events
               if stopped <= at <= started and e.get("event") == "decision" and e.get("reason") in HELD)
    return Trial(actor, started - stopped, verified - stopped, held)


async def cluster_trials(world: ClusterWorld, trials: int, rng: random.Random, out: TextIO) -> list[Trial]:
    names = {n.name for n in world.nodes}
    results = []

    async def ready() -> bool:
        return healthy_on_a(await acting_group(world), names)

    async def primary_up() -> bool:
        return target_up(await acting_group(world), "a", names)

    async def stop_all() -> None:
        await asyncio.gather(*(n.primary.stop() for n in world.nodes))

    for i in range(trials):
        await settled(world)
        await eventually(ready, 60)
        trial = await failover_trial(stop_all, {n.name: n.process for n in world.nodes}, rng)
        results.append(trial)
        print(f"  cluster trial {i + 1}/{trials}: detect {trial.detect:.2f}s, verified {trial.total:.2f}s "
              f"(actor {trial.actor})", file=out, flush=True)
        await asyncio.gather(*(n.primary.start() for n in world.nodes))
        await eventually(primary_up, 60)
        await move_back(world.ec2)
    await eventually(ready, 60)
    return results


async def solo_trials(world: ClusterWorld, tmp: Path, trials: int, rng: random.Random, out: TextIO) -> list[Trial]:
    """The same failover with one daemon and no ``cluster`` section."""
    ec2 = world.ec2
    proxy = FaultProxy(ec2.endpoint, "ec2", seed=99)
    await proxy.start()
    primary, standby = HealthServer(), HealthServer()
    for server in (primary, standby):
        await server.start()
    port = free_port()
    token = tmp / "solo-token"
    token.write_text(TOKEN)
    data = _config("solo", ec2, proxy, primary, standby, [], port, tmp / "state-solo", token, BENCH_POLICY)
    del data["cluster"]
    path = tmp / "solo.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = DaemonProcess(path, {**os.environ, "PYTHONUNBUFFERED": "1"}, lambda at, event: None)
    url = f"http://127.0.0.1:{port}/v1/groups/web"
    results = []

    async def ready() -> bool:
        return healthy_on_a(await get_json(world, url), None)

    async def primary_up() -> bool:
        return target_up(await get_json(world, url), "a", None)

    try:
        await proc.start()
        await proc.wait_for("daemon_ready", 60)
        for i in range(trials):
            await eventually(ready, 60)
            trial = await failover_trial(primary.stop, {"solo": proc}, rng)
            results.append(trial)
            print(f"  single-daemon trial {i + 1}/{trials}: detect {trial.detect:.2f}s, verified "
                  f"{trial.total:.2f}s", file=out, flush=True)
            await primary.start()
            await eventually(primary_up, 60)
            await move_back(ec2)
        await eventually(ready, 60)
    finally:
        if proc.proc is not None and proc.proc.returncode is None:
            await proc.stop()
        await proxy.stop()
        for server in (primary, standby):
            await server.stop()
    return results


# --- 4: etcd at rest ---

async def etcd_counters(world: ClusterWorld) -> dict[str, dict[str, float]]:
    """etcd's ``grpc_server_{handled,started}_total``, summed per gRPC method (over codes and services)."""
    assert world.session is not None
    async with world.session.get(world.etcd.client_urls[0] + "/metrics") as response:
        text = await response.text()
    counters: dict[str, dict[str, float]] = {"handled": {}, "started": {}}
    for line in text.splitlines():
        match = METRIC.match(line)
        if match:
            method = dict(LABEL.findall(match[2])).get("grpc_method", "?")
            counters[match[1]][method] = counters[match[1]].get(method, 0.0) + float(match[3])
    return counters


async def quiet_window(world: ClusterWorld, seconds: float) -> dict[str, Any]:
    """What etcd handled over a fixed window of ``seconds``: totals and per method."""
    before = await etcd_counters(world)
    began = time.monotonic()
    await asyncio.sleep(seconds)  # a fixed measuring window, not a wait for a condition
    after = await etcd_counters(world)
    elapsed = time.monotonic() - began
    delta = {kind: {m: after[kind][m] - before[kind].get(m, 0.0) for m in after[kind]
                    if after[kind][m] - before[kind].get(m, 0.0)} for kind in after}
    return {"seconds": elapsed, "handled": sum(delta["handled"].values()), "started": sum(delta["started"].values()),
            "handled_by_method": delta["handled"], "started_by_method": delta["started"]}


# --- the run ---

def machine() -> dict[str, Any]:
    binary = etcd_binary()
    etcd = "none"
    if binary is not None:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"etcd Version: (\S+)", version)
        etcd = match[1] if match else version.strip()
    return {"nproc": len(os.sched_getaffinity(0)), "python": platform.python_version(), "etcd": etcd,
            "command": shlex.join(sys.orig_argv)}


async def run(args: argparse.Namespace, out: TextIO) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    began = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        """Note how long phase ``name`` took; now."""
        now = time.monotonic()
        phases[name] = now - since
        print(f"  [{name}: {phases[name]:.0f}s; {now - began:.0f}s in all]", file=out, flush=True)
        return now

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    ec2 = ec2_world(f"http://{host}:{port}")
    try:
        with tempfile.TemporaryDirectory(prefix="eipfailover-cluster-bench-") as directory:
            tmp = Path(directory)
            async with cluster_world(ec2, tmp, start=False, policy=BENCH_POLICY) as world:
                since = phase("setup", began)

                print(f"etcd idle ({args.window:g}s, no daemon); meanwhile {args.trials} failovers of a single daemon "
                      "without cluster", file=out, flush=True)
                async with asyncio.TaskGroup() as group:
                    idle_task = group.create_task(quiet_window(world, args.window))
                    solo_task = group.create_task(solo_trials(world, tmp, args.trials, random.Random(args.seed), out))
                idle, solo = idle_task.result(), solo_task.result()
                since = phase("etcd idle, single daemon", since)

                await asyncio.gather(*(world.start(n) for n in world.nodes))
                await settled(world)
                await eventually(lambda: acting_group_healthy(world), 60)
                since = phase("3 daemons started and settled", since)
                print(f"etcd at rest ({args.window:g}s)", file=out, flush=True)
                rest = await quiet_window(world, args.window)
                since = phase("etcd at rest", since)

                handovers: dict[str, list[Handover]] = {"kill -9": [], "SIGSTOP": []}
                rng = random.Random(args.seed + 1)
                for label, sig in (("kill -9", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
                    for i in range(args.runs):
                        h = await handover(world, sig, rng)
                        handovers[label].append(h)
                        extra = "" if h.stepped_down is None else \
                            f"; the old one stepped down {h.stepped_down:.2f}s after SIGCONT"
                        print(f"  {label} {i + 1}/{args.runs}: {h.old} -> {h.new} acting after {h.seconds:.2f}s "
                              f"(leader_elected logged at {h.elected_in_log:.2f}s){extra}", file=out, flush=True)
                    since = phase(f"{label} runs", since)

                print(f"{args.trials} failovers of the 3-daemon cluster", file=out, flush=True)
                clustered = await cluster_trials(world, args.trials, random.Random(args.seed), out)
                phase("cluster failovers", since)
    finally:
        moto.stop()
    phases["all"] = time.monotonic() - began
    return {"machine": machine(), "ttl": TTL, "poll_seconds": POLL, "handovers": handovers, "solo": solo,
            "cluster": clustered, "etcd_idle": idle, "etcd_rest": rest, "daemons": 3, "phases": phases}


async def acting_group_healthy(world: ClusterWorld) -> bool:
    return healthy_on_a(await acting_group(world), {n.name for n in world.nodes})


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    ttl = raw["ttl"]
    handover: dict[str, Any] = {}
    for label, runs in raw["handovers"].items():
        seconds = [h.seconds for h in runs]
        p50, top = statistics.median(seconds), max(seconds)
        row = {"runs": len(runs), "p50": p50, "max": top, "p50_over_ttl": p50 / ttl, "max_over_ttl": top / ttl,
               "within_ttl": sum(s <= ttl for s in seconds), "within_ttl_and_a_renewal":
               sum(s <= ttl * 4 / 3 for s in seconds),
               "elected_in_log_p50": statistics.median(h.elected_in_log for h in runs)}
        stepped = [h.stepped_down for h in runs if h.stepped_down is not None]
        if stepped:
            row |= {"stepped_down_p50": statistics.median(stepped), "stepped_down_max": max(stepped),
                    "acted_after_wake": sum(h.acted_after_wake for h in runs)}
        handover[label] = row
    failover = {}
    for label, trials in (("single", raw["solo"]), ("cluster", raw["cluster"])):
        failover[label] = {"trials": len(trials), "detect_p50": statistics.median(t.detect for t in trials),
                           "p50": statistics.median(t.total for t in trials), "max": max(t.total for t in trials),
                           "held": sum(t.held for t in trials)}
    failover["quorum_adds_p50"] = failover["cluster"]["p50"] - failover["single"]["p50"]
    idle, rest, daemons = raw["etcd_idle"], raw["etcd_rest"], raw["daemons"]
    idle_rate = idle["handled"] / idle["seconds"]
    rest_rate = rest["handled"] / rest["seconds"]
    etcd = {"window": rest["seconds"], "idle_per_s": idle_rate, "rest_per_s": rest_rate,
            "per_daemon_per_s": (rest_rate - idle_rate) / daemons,
            "started_per_daemon_per_s": (rest["started"] / rest["seconds"] - idle["started"] / idle["seconds"])
            / daemons,
            "per_daemon_per_s_by_method": {m: n / rest["seconds"] / daemons
                                           for m, n in sorted(rest["handled_by_method"].items())}}
    return {"handover": handover, "failover": failover, "etcd": etcd}


def report(raw: dict[str, Any], summary: dict[str, Any], out: TextIO) -> None:
    m, ttl = raw["machine"], raw["ttl"]
    print(f"\nmachine: nproc {m['nproc']}, Python {m['python']}, etcd {m['etcd']}", file=out)
    print(f"command: {m['command']}", file=out)
    print(f"wall time: {raw['phases']['all']:.0f}s", file=out)

    print(f"\nLeader hand-over, 3 daemons, ttl {ttl:g}s: from the signal to a survivor's /v1/cluster saying "
          f"acting: true (polled every {raw['poll_seconds'] * 1000:g} ms)\n", file=out)
    print("| failure | runs | p50 s | max s | p50 / ttl | max / ttl | <= ttl | <= ttl + ttl/3 | "
          "leader_elected logged, p50 s |", file=out)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
    for label, h in summary["handover"].items():
        print(f"| {label} of the leader | {h['runs']} | {h['p50']:.2f} | {h['max']:.2f} | {h['p50_over_ttl']:.2f} | "
              f"{h['max_over_ttl']:.2f} | {h['within_ttl']}/{h['runs']} | {h['within_ttl_and_a_renewal']}/{h['runs']} "
              f"| {h['elected_in_log_p50']:.2f} |", file=out)
    stop = summary["handover"]["SIGSTOP"]
    print(f"\nSIGSTOP, then SIGCONT once the new leader acts: the old leader reports acting: false and the new leader "
          f"after p50 {stop['stepped_down_p50']:.2f}s, max {stop['stepped_down_max']:.2f}s; it said acting: true "
          f"after waking in {stop['acted_after_wake']}/{stop['runs']} runs", file=out)

    f = summary["failover"]
    print("\nFailover: from stopping the primary's health endpoint to failover_verified in the acting daemon's log\n",
          file=out)
    print("| world | trials | detect p50 s | verified p50 s | verified max s | held by cooldown/limit |", file=out)
    print("|---|---:|---:|---:|---:|---:|", file=out)
    for label, name in (("single", "1 daemon, no cluster"), ("cluster", "3 daemons on etcd, quorum 2 of 3")):
        row = f[label]
        print(f"| {name} | {row['trials']} | {row['detect_p50']:.2f} | {row['p50']:.2f} | {row['max']:.2f} | "
              f"{row['held']} |", file=out)
    print(f"\nthe quorum adds {f['quorum_adds_p50']:+.2f}s at p50 (cluster p50 - single p50)", file=out)

    e = summary["etcd"]
    idle, rest = raw["etcd_idle"], raw["etcd_rest"]
    print(f"\netcd requests (grpc_server_handled_total, all methods and codes) over a quiet window of "
          f"{e['window']:.0f}s\n", file=out)
    print("| etcd | requests handled | per s | per s per daemon | calls started per s (streams too) |", file=out)
    print("|---|---:|---:|---:|---:|", file=out)
    print(f"| idle, 0 daemons | {idle['handled']:.0f} | {e['idle_per_s']:.2f} | - | "
          f"{idle['started'] / idle['seconds']:.2f} |", file=out)
    print(f"| 3 daemons settled | {rest['handled']:.0f} | {e['rest_per_s']:.2f} | {e['per_daemon_per_s']:.2f} | "
          f"{rest['started'] / rest['seconds']:.2f} |", file=out)
    methods = ", ".join(f"{k} {v:.2f}" for k, v in e["per_daemon_per_s_by_method"].items()) or "none"
    print(f"\nper daemon per second, net of the idle baseline: {e['per_daemon_per_s']:.2f} handled "
          f"({e['started_per_daemon_per_s']:.2f} started); by method: {methods}", file=out)


async def main(args: argparse.Namespace) -> int:
    out = sys.stderr if args.json else sys.stdout
    print(f"command: {shlex.join(sys.orig_argv)}", file=out, flush=True)
    raw = await run(args, out)
    summary = summarize(raw)
    report(raw, summary, out)
    if args.json:
        document = {"cluster": summary, "machine": raw["machine"], "ttl": raw["ttl"],
                    "handovers": {k: [asdict(h) for h in v] for k, v in raw["handovers"].items()},
                    "failovers": {"single": [asdict(t) for t in raw["solo"]],
                                  "cluster": [asdict(t) for t in raw["cluster"]]},
                    "etcd_idle": raw["etcd_idle"], "etcd_rest": raw["etcd_rest"], "phase_seconds": raw["phases"]}
        print(json.dumps(document))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="hand-overs per signal (default 20)")
    parser.add_argument("--trials", type=int, default=10, help="failovers per world (default 10)")
    parser.add_argument("--window", type=float, default=60, help="quiet window in seconds (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="of the random phases (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout, the tables on stderr")
    parser.add_argument("--quick", action="store_true", help="3 runs, 2 trials, 10 s windows")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.runs, arguments.trials, arguments.window = 3, 2, 10
    sys.exit(asyncio.run(main(arguments)))
