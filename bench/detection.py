"""Detection and failover latency breakdown (death → first failed probe → DOWN → decision → first cloud call →
verified), p50/p99/max over N trials, at interval 1 s with and without ``fast_interval``; and a false-failover soak.

The real engine runs in-process: a :class:`~eipfailover.engine.GroupRunner` with the real checks (``http`` by default,
or ``tcp``) against two real HTTP servers on 127.0.0.1, and the real :class:`~eipfailover.providers.aws.AwsProvider`
against a moto EC2 server over HTTP on loopback. Policy: interval 1 s, timeout 250 ms, rise 2, fall 3, no cooldown,
``fast_interval`` 250 ms, or equal to the interval (which disables it: the behaviour before issue 12).

Each trial starts with the EIP on the primary, both targets UP and the group steady (no state changing); at a random
moment within one check interval the primary's server dies: its listening socket and its connections are closed, so
that its port refuses. The trial records, on the monotonic clock, the death, the end of the first check round that
saw the primary fail, its confirmed DOWN state, the decision to move, the start of the first ``AssociateAddress``
request and the end of the failover (verified by a describe). The dead server then comes back on the same port and
the roles swap for the next trial (failback is manual: the EIP stays where it went). The moments of death are
stratified: trial k of n dies at (slot + U(0, 1)) / n of an interval after a check round, the slots a random
permutation, so each death is uniform over the interval and the p50 of a few trials is not at the mercy of chance.

The issue's target (fast, full run): p50 under 1.2 s and max under 1.7 s from death to verified (before: p50 2.55 s,
max 2.72 s; the model says up to interval + (fall - 1) x interval = 3 s, for a death just after a round). The
trials that garbage collections (stop-the-world, 100 ms or more with moto's objects in the process) overlapped are
counted. The full run exits 1 if the fast configuration misses it; ``--quick`` (5 trials, for a loaded CI
machine) exits 1 only if the fast max exceeds 2.5 s or a failover fails.

``--false-failover SECONDS``: both targets healthy, each probe answered 503 with probability 5% (a seeded RNG per
server), interval 1 s, fall 3, fast_interval 250 ms; counts the probes (and why each failed), the confirmed DOWN
states and the failovers. The seconds are group-seconds of probing, run on ``--groups`` independent groups in
parallel (default 4, at most one per 150 s; each group is an independent trial: its own two servers, RNGs and EIP;
only the event loop and the provider are shared, neither of which couples the groups' check outcomes), so 600
group-seconds on 4 groups take 150 s of wall time. A failover needs ``fall`` consecutive failed probes of the
active target: at 5% that is 0.05^3 = 1.25e-4 per probe, so about 0.07 expected failovers in 600 probes of the
active target (and fast_interval does not raise it: it shortens the time between the failures of a run, not the
number of runs). Exits 1 on a failover that was not preceded by ``fall`` consecutive 503s of the target it left (a
real false failover), or, with ``--quick``, on any failover.

    .venv/bin/python bench/detection.py                        # 30 trials each way (about 4 min)
    .venv/bin/python bench/detection.py --quick                # 5 trials each way (under 1 min)
    .venv/bin/python bench/detection.py --false-failover 600   # 600 group-seconds on 4 groups (150 s)
    .venv/bin/python bench/detection.py --false-failover 600 --groups 1   # the issue's 10 minutes, on one group
    .venv/bin/python bench/detection.py --false-failover 20 --quick     # 20 s on one group
    .venv/bin/python bench/detection.py --json detection.json  # also per-trial timestamps, for plotting
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import boto3
from moto.server import ThreadedMotoServer

from eipfailover import log as eiplog
from eipfailover.config import AwsProviderConfig, parse_config
from eipfailover.daemon import build_checks
from eipfailover.engine import Engine, GroupRunner
from eipfailover.events import FailoverRecord, NullObserver, Observers
from eipfailover.model import Action, CheckResult, Decision, Health, TargetState
from eipfailover.providers.aws import AwsProvider

INTERVAL = 1.0
TIMEOUT = 0.25
FAST = 0.25
RISE, FALL = 2, 3
FAIL_RATE = 0.05
TRIAL_TIMEOUT = 15.0
"""Seconds a trial may take from the death to the verified move before it counts as failed."""


class Backend:
    """An HTTP health endpoint on 127.0.0.1 that can die (its port then refuses connections) and come back on the
    same port; it answers 503 instead of 200 with probability ``fail_rate`` (its own seeded RNG)."""

    def __init__(self, fail_rate: float = 0.0, seed: int = 0) -> None:
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.answers: collections.deque[bool] = collections.deque(maxlen=16)
        """The last answers, True for a 503."""
        self.served = collections.Counter[str]()
        """Answers given: ``ok`` and ``503``."""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    def kill(self) -> None:
        """Close the listening socket (new connections are refused from now on) and every open connection."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            failed = self.fail_rate > 0 and self.rng.random() < self.fail_rate
            self.answers.append(failed)
            self.served["503" if failed else "ok"] += 1
            status, body = (b"503 Service Unavailable", b"down") if failed else (b"200 OK", b"ok")
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a tcp check's connect-and-close, or the server dying
        finally:
            self.writers.discard(writer)
            writer.close()


class GcPauses:
    """The garbage collector's pauses in any thread, as ``(start, end)`` monotonic times (a collection holds the GIL:
    every thread, the engine's loop and the servers' alike, waits for it)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started[threading.get_ident()] = now
        elif (began := self._started.pop(threading.get_ident(), None)) is not None:
            self.pauses.append((began, now))

    def overlap(self, start: float, end: float) -> float:
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.pauses if b > start and a < end)


GC = GcPauses()


class Runner(GroupRunner):
    """The engine's runner, telling the bench when each check round has been folded in (and decided on)."""

    round_done: Callable[[GroupRunner], None] | None = None

    async def check_round(self) -> None:
        await super().check_round()
        if self.round_done is not None:
            self.round_done(self)


@dataclass
class Trial:
    primary: str
    offset: float
    """The death's place in the check interval (0..1)."""
    death: float = 0.0
    disturbed: str = ""
    """Not empty if the primary was not steady at its death (a failure already counted)."""
    first_fail: float | None = None
    down: float | None = None
    decision: float | None = None
    started: float | None = None
    associate_sent: float | None = None
    associate_answered: float | None = None
    verified: float | None = None
    result: str = ""
    error: str = ""
    load: float = 0.0
    gc_pause: float = 0.0
    """Seconds of garbage collection between the death and the end of the failover."""

    def relative(self) -> dict[str, Any]:
        """The trial, every time relative to the death (seconds)."""
        data = asdict(self)
        for key in ("first_fail", "down", "decision", "started", "associate_sent", "associate_answered", "verified"):
            if data[key] is not None:
                data[key] = data[key] - self.death
        data["death"] = 0.0
        return data


@dataclass
class Timeline(NullObserver):
    """Records the events of the trial under way, on the monotonic clock."""

    trial: Trial | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None:
        t = self.trial
        if t is not None and t.death and target == t.primary and not result.ok and t.first_fail is None:
            t.first_fail = time.monotonic()

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        t = self.trial
        if t is not None and t.death and target == t.primary and after.state is TargetState.DOWN and t.down is None:
            t.down = time.monotonic()

    def on_decision(self, group: str, decision: Decision) -> None:
        t = self.trial
        if t is not None and t.death and decision.action is not Action.NONE and t.decision is None:
            t.decision = time.monotonic()

    def on_failover_started(self, record: FailoverRecord) -> None:
        t = self.trial
        if t is not None and t.death and t.started is None:
            t.started = time.monotonic()

    def on_failover_finished(self, record: FailoverRecord) -> None:
        t = self.trial
        if t is not None and t.death and t.verified is None:
            t.verified = time.monotonic()
            t.result, t.error = record.result, record.error
            self.finished.set()

    def on_request(self, provider: str, operation: str, result: str, seconds: float) -> None:
        t = self.trial
        if t is not None and t.death and operation == "AssociateAddress" and t.associate_sent is None:
            now = time.monotonic()
            t.associate_sent, t.associate_answered = now - seconds, now


class Moto:
    """A moto EC2 server on 127.0.0.1 (a free port) and a boto3 client to set the world up."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_EC2_METADATA_DISABLED": "true"})
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.ec2 = boto3.client("ec2", endpoint_url=self.endpoint, region_name="us-east-1")

    def pair(self) -> tuple[str, tuple[str, str]]:
        """A new EIP on the first of two new instances."""
        reply = self.ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2)
        a, b = (i["InstanceId"] for i in reply["Instances"])
        eip = self.ec2.allocate_address(Domain="vpc")["AllocationId"]
        self.ec2.associate_address(AllocationId=eip, InstanceId=a)
        return eip, (a, b)

    def stop(self) -> None:
        self.server.stop()


def group_data(name: str, eip: str, instances: Sequence[str], ports: Sequence[int], fast: float,
               check: str) -> dict[str, Any]:
    def probe(port: int) -> dict[str, Any]:
        if check == "tcp":
            return {"type": "tcp", "host": "127.0.0.1", "port": port}
        return {"type": "http", "url": f"http://127.0.0.1:{port}/healthz"}

    return {
        "name": name, "provider": "moto", "eips": [eip],
        "policy": {"interval": INTERVAL, "timeout": TIMEOUT, "rise": RISE, "fall": FALL, "fast_interval": fast,
                   "cooldown": 0, "max_failovers": {"count": 1_000_000, "window": 1}, "failover_deadline": 30},
        "targets": [{"name": t, "binding": {"instance_id": i}, "checks": [probe(p)]}
                    for t, i, p in zip(("a", "b"), instances, ports, strict=True)],
    }


def config_of(endpoint: str, groups: list[dict[str, Any]]) -> Any:
    return parse_config({
        "state_directory": None,
        "providers": {"moto": {"type": "aws", "region": "us-east-1", "endpoint_url": endpoint}},
        "groups": groups,
    })


def provider_of(endpoint: str) -> AwsProvider:
    return AwsProvider("moto", AwsProviderConfig(type="aws", region="us-east-1", endpoint_url=endpoint))


# --- detection ---

async def detection(moto: Moto, fast: float, trials: int, check: str, rng: random.Random) -> list[Trial]:
    eip, instances = moto.pair()
    backends = {"a": Backend(), "b": Backend()}
    for backend in backends.values():
        await backend.start()
    config = config_of(moto.endpoint, [group_data("g", eip, instances, [b.port for b in backends.values()], fast,
                                                  check)])
    group = config.groups[0]
    provider = provider_of(moto.endpoint)
    timeline = Timeline()
    provider.on_request = timeline.on_request
    steady: asyncio.Queue[float] = asyncio.Queue()
    primary = "a"

    def round_done(runner: GroupRunner) -> None:
        targets = runner.targets.values()
        if (runner.state.cloud.active == primary and not runner.in_progress
                and all(t.health.state is TargetState.UP and not t.health.changing for t in targets)):
            steady.put_nowait(time.monotonic())

    slots = list(range(trials))
    rng.shuffle(slots)
    results = []
    async with aiohttp.ClientSession() as http:
        runner = Runner(group, provider, build_checks(group, provider, http), Observers([timeline]))
        runner.round_done = round_done
        loop = asyncio.create_task(runner.run())
        try:
            for k in range(trials):
                while not steady.empty():
                    steady.get_nowait()
                trial = Trial(primary, (slots[k] + rng.random()) / trials)
                try:
                    async with asyncio.timeout(TRIAL_TIMEOUT):
                        await steady.get()
                except TimeoutError:
                    trial.result, trial.error = "not steady", f"the group was not steady within {TRIAL_TIMEOUT:g}s"
                    results.append(trial)
                    break
                await asyncio.sleep(trial.offset * INTERVAL)
                health = runner.targets[primary].health
                if health.failures or health.state is not TargetState.UP:
                    trial.disturbed = f"{primary} had {health.failures} failure(s), state {health.state.value}"
                timeline.trial, timeline.finished = trial, asyncio.Event()
                trial.load = os.getloadavg()[0]
                backends[primary].kill()
                trial.death = time.monotonic()
                try:
                    async with asyncio.timeout(TRIAL_TIMEOUT):
                        await timeline.finished.wait()
                except TimeoutError:
                    trial.result, trial.error = "timeout", f"no failover finished within {TRIAL_TIMEOUT:g}s"
                timeline.trial = None
                trial.gc_pause = GC.overlap(trial.death, trial.verified or time.monotonic())
                results.append(trial)
                if trial.result != "success":
                    break
                await backends[primary].start()  # back on the same port; it is the standby now
                primary = "b" if primary == "a" else "a"
        finally:
            runner.request_stop()
            await loop
            await runner.wait_idle()
            await provider.close()
            for backend in backends.values():
                if backend.server is not None:
                    backend.kill()
    return results


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


STAGES: list[tuple[str, str, str]] = [
    ("death → first failed probe", "death", "first_fail"),
    ("first failed probe → DOWN", "first_fail", "down"),
    ("DOWN → decision", "down", "decision"),
    ("decision → AssociateAddress sent", "decision", "associate_sent"),
    ("AssociateAddress round trip", "associate_sent", "associate_answered"),
    ("AssociateAddress answered → verified", "associate_answered", "verified"),
    ("**death → DOWN (detection)**", "death", "down"),
    ("**death → verified (total)**", "death", "verified"),
]


def stage_values(trials: Sequence[Trial], start: str, end: str) -> list[float]:
    out = []
    for t in trials:
        a, b = getattr(t, start), getattr(t, end)
        if a is not None and b is not None:
            out.append(b - a)
    return out


def report(runs: Mapping[str, list[Trial]], configs: Mapping[str, float]) -> None:
    names = list(runs)
    print("| stage (ms) | " + " | ".join(f"{n} p50 | {n} p99 | {n} max" for n in names) + " |")
    print("|---|" + "---:|" * (3 * len(names)))
    for label, start, end in STAGES:
        cells = []
        for name in names:
            values = stage_values([t for t in runs[name] if t.result == "success"], start, end)
            cells += [f"{1000 * percentile(values, q):.1f}" for q in (0.5, 0.99)] + [f"{1000 * max(values):.1f}"] \
                if values else ["-"] * 3
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for name, fast in configs.items():
        print(f"- {name}: the model says death → DOWN = U(0, interval) + (fall - 1) x {fast:g} s = "
              f"{INTERVAL / 2 + (FALL - 1) * fast:.2f} s p50, {INTERVAL + (FALL - 1) * fast:.2f} s max; then the "
              f"move and its verification (two requests)")
    for name, trials in runs.items():
        ok = sum(t.result == "success" for t in trials)
        disturbed = [t for t in trials if t.disturbed]
        loads = [t.load for t in trials]
        paused = [t.gc_pause for t in trials if t.gc_pause >= 0.01]
        print(f"- {name}: {ok}/{len(trials)} failovers verified; 1-min load average {min(loads):.2f}-{max(loads):.2f}"
              f"; {len(paused)} trial(s) with 10 ms or more of garbage collection"
              + (f" (max {1000 * max(paused):.0f} ms)" if paused else "")
              + (f"; {len(disturbed)} trial(s) disturbed: " + "; ".join(t.disturbed for t in disturbed)
                 if disturbed else ""))
        for t in trials:
            if t.result != "success":
                print(f"  - trial with primary {t.primary} at offset {t.offset:.2f}: {t.result}: {t.error}")


# --- false failovers ---

@dataclass
class SoakCounts(NullObserver):
    backends: dict[tuple[str, str], Backend] = field(default_factory=dict)
    probes: collections.Counter[str] = field(default_factory=collections.Counter)
    """ok / failed probes (after every target was first UP)."""
    downs: list[dict[str, Any]] = field(default_factory=list)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    counting: bool = False

    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    """The failed probes by status and detail."""

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None:
        if self.counting:
            self.probes["ok" if result.ok else "failed"] += 1
            if not result.ok:
                self.kinds[f"{result.status.value}: {result.detail}"] += 1

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        if self.counting and after.state is TargetState.DOWN:
            self.downs.append({"at": time.monotonic(), "group": group, "target": target, "detail": cause.detail})

    def on_failover_started(self, record: FailoverRecord) -> None:
        source = record.from_target
        answers = list(self.backends[(record.group, source)].answers) if source is not None else []
        self.failovers.append({
            "at": time.monotonic(), "group": record.group, "from": source, "to": record.to_target,
            "reason": record.reason, "last_answers_503": answers[-FALL:],
            "justified": len(answers) >= FALL and all(answers[-FALL:]),
        })


async def soak(moto: Moto, group_seconds: float, groups: int, seed: int, check: str) -> dict[str, Any]:
    counts = SoakCounts()
    datas = []
    for g in range(groups):
        eip, instances = moto.pair()
        pair = [Backend(FAIL_RATE, seed * 1000 + 2 * g + i) for i in range(2)]
        for name, backend in zip(("a", "b"), pair, strict=True):
            await backend.start()
            counts.backends[(f"g{g}", name)] = backend
        datas.append(group_data(f"g{g}", eip, instances, [b.port for b in pair], FAST, check))
    config = config_of(moto.endpoint, datas)
    provider = provider_of(moto.endpoint)
    wall = group_seconds / groups
    async with aiohttp.ClientSession() as http:
        runners = [Runner(g, provider, build_checks(g, provider, http), Observers([counts])) for g in config.groups]
        all_up = asyncio.Event()

        def round_done(_: GroupRunner) -> None:
            if all(t.health.state is TargetState.UP for r in runners for t in r.targets.values()):
                all_up.set()

        for runner in runners:
            runner.round_done = round_done
        engine = Engine(runners)
        task = asyncio.create_task(engine.run())
        await all_up.wait()
        counts.counting = True
        served0 = sum((b.served for b in counts.backends.values()), collections.Counter[str]())
        load0 = os.getloadavg()[0]
        started = time.monotonic()
        await asyncio.sleep(wall)
        counts.counting = False
        served = sum((b.served for b in counts.backends.values()), collections.Counter[str]()) - served0
        elapsed = time.monotonic() - started
        engine.request_stop()
        await task
    await provider.close()
    for backend in counts.backends.values():
        backend.kill()
    probes = counts.probes["ok"] + counts.probes["failed"]
    per_probe = FAIL_RATE ** FALL
    expected_downs = probes * (1 - FAIL_RATE) * per_probe
    return {
        "group_seconds": elapsed * groups, "groups": groups, "wall_seconds": elapsed, "seed": seed, "check": check,
        "fail_rate": FAIL_RATE, "probes": probes, "failed_probes": counts.probes["failed"],
        "observed_fail_rate": counts.probes["failed"] / probes if probes else 0.0,
        "served": dict(served), "failure_kinds": dict(counts.kinds),
        "gc_pauses_ms": [round(1000 * (b - a)) for a, b in GC.pauses if a >= started and b - a >= 0.05],
        "downs": counts.downs, "failovers": counts.failovers,
        "unjustified_failovers": sum(not f["justified"] for f in counts.failovers),
        "p_fall_per_probe": per_probe, "expected_downs": expected_downs,
        "p_any_failover": 1 - math.exp(-expected_downs / 2),  # about half the probes are of the active target
        "load": [load0, os.getloadavg()[0]],
    }


def print_soak(r: dict[str, Any]) -> None:
    print("| group-seconds | groups x wall s | probes | failed (rate) | confirmed DOWN (expected) | failovers "
          "| unjustified | P(≥1 failover) | load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {r['group_seconds']:.0f} | {r['groups']} x {r['wall_seconds']:.0f} | {r['probes']} "
          f"| {r['failed_probes']} ({100 * r['observed_fail_rate']:.1f}%) | {len(r['downs'])} "
          f"({r['expected_downs']:.3f}) | {len(r['failovers'])} | {r['unjustified_failovers']} "
          f"| {100 * r['p_any_failover']:.1f}% | {r['load'][0]:.2f} → {r['load'][1]:.2f} |")
    print()
    print(f"- the servers answered {r['served'].get('ok', 0)} x 200 and {r['served'].get('503', 0)} x 503 meanwhile; "
          "failed probes: " + "; ".join(f"{n} x {kind}" for kind, n in r["failure_kinds"].items()))
    if r["gc_pauses_ms"]:
        print(f"- garbage collections of 50 ms or more (they stop the whole process, the servers' side too): "
              f"{r['gc_pauses_ms']} ms")
    print(f"- p(fall={FALL} consecutive failures) = {FAIL_RATE:g}^{FALL} = {r['p_fall_per_probe']:.3g} per probe; "
          f"expected confirmed DOWN ≈ probes x (1 - p) x p^{FALL} = {r['expected_downs']:.3f}")
    for f in r["failovers"]:
        print(f"- failover {f['group']} {f['from']} → {f['to']} ({f['reason']}): last {FALL} answers of {f['from']}"
              f" 503: {f['last_answers_503']} ({'justified' if f['justified'] else 'FALSE FAILOVER'})")


# --- main ---

def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 trials each way; tolerant thresholds (for CI)")
    parser.add_argument("--trials", type=int, help="trials per configuration (default 30, 5 with --quick)")
    parser.add_argument("--check", choices=("http", "tcp"), default="http")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--false-failover", type=float, metavar="SECONDS",
                        help="soak instead: SECONDS group-seconds of 5%% random check failures")
    parser.add_argument("--groups", type=int, default=4, help="--false-failover: independent groups in parallel")
    parser.add_argument("--json", metavar="PATH", help="also write the results (per-trial timestamps) to PATH")
    args = parser.parse_args()
    eiplog.configure(fmt="json", level="warning", stream=sys.stderr)
    gc.callbacks.append(GC)
    moto = Moto()
    try:
        if args.false_failover is not None:
            sys.exit(run_soak(moto, args))
        sys.exit(run_detection(moto, args))
    finally:
        moto.stop()


def run_detection(moto: Moto, args: argparse.Namespace) -> int:
    trials = args.trials or (5 if args.quick else 30)
    rng = random.Random(args.seed)
    configs = {f"fast {1000 * FAST:.0f} ms": FAST, "no fast": INTERVAL}
    print(f"interval {INTERVAL:g} s, timeout {1000 * TIMEOUT:.0f} ms, rise {RISE}, fall {FALL}, {args.check} check, "
          f"{trials} trials each; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    runs = {}
    for name, fast in configs.items():
        runs[name] = asyncio.run(detection(moto, fast, trials, args.check, rng))
    print()
    report(runs, configs)
    fast_runs = [t for t in runs[next(iter(configs))] if t.result == "success"]
    totals = stage_values(fast_runs, "death", "verified")
    failed = sum(t.result != "success" for r in runs.values() for t in r)
    p50, top = (percentile(totals, 0.5), max(totals)) if totals else (math.inf, math.inf)
    if args.quick:
        ok = not failed and top <= 2.5
        rule = "quick: fast max ≤ 2.5 s (tolerant of a loaded machine), every failover verified"
    else:
        ok = not failed and p50 < 1.2 and top < 1.7
        rule = "the issue's target: fast p50 < 1.2 s and max < 1.7 s, every failover verified"
    print(f"\n{'PASS' if ok else 'FAIL'} ({rule}): fast p50 {p50:.3f} s, max {top:.3f} s; "
          f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "detection", "interval": INTERVAL, "timeout": TIMEOUT, "rise": RISE, "fall": FALL,
                       "check": args.check, "configs": configs,
                       "trials": {n: [t.relative() for t in r] for n, r in runs.items()}}, f, indent=1)
    return 0 if ok else 1


def run_soak(moto: Moto, args: argparse.Namespace) -> int:
    groups = max(1, min(args.groups, int(args.false_failover // 150)))  # at least 150 s for each group
    print(f"interval {INTERVAL:g} s, timeout {1000 * TIMEOUT:.0f} ms, rise {RISE}, fall {FALL}, fast_interval "
          f"{1000 * FAST:.0f} ms, {args.check} check, each probe 503 with p={FAIL_RATE:g}; "
          f"{args.false_failover:g} group-seconds on {groups} group(s)", flush=True)
    result = asyncio.run(soak(moto, args.false_failover, groups, args.seed, args.check))
    print()
    print_soak(result)
    bad = result["unjustified_failovers"] > 0 or (args.quick and result["failovers"])
    verdict = "no false failover" if not result["failovers"] else (
        "FALSE FAILOVER" if result["unjustified_failovers"] else "failover(s) after fall consecutive 503s")
    print(f"\n{'FAIL' if bad else 'PASS'}: {len(result['failovers'])} failover(s): {verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "false_failover", **result}, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    main()
