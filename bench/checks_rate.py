"""Checks per second per core: what the daemon's health checks cost, with and without uvloop.

Runs the real engine (Engine, GroupRunner, the tcp and http checks, health, policy, an in-memory provider) for
``--targets`` targets (groups of 2), each with a tcp and an http check (``--mix``), at the interval that makes
``--rate`` checks per second (2,000 targets x 2 checks at 0.8 s: 5,000 a second; the timeout is half the interval),
for ``--seconds`` after a warm-up. The daemon runs in a process of its own, pinned to one core; the probed HTTP
servers (lean ``asyncio.Protocol`` servers, on uvloop when it is installed) run in other processes pinned to the
other core(s), so that their CPU is not counted as the daemon's. ``--checks-only`` runs the same checks without the
engine (a slice of them every 10 ms), to tell what the checks cost from what the engine adds. Prints, per event loop:

* checks/s achieved (and asked), and the checks that did not pass (there should be none);
* the daemon's CPU (user + sys over wall time, from ``getrusage``; one core = 100%), and so CPU microseconds per
  check (the whole daemon's CPU, the engine's rounds, decisions and cloud reads included, divided by the checks);
* checks/s per core: the rate the same cost per check would reach at 100% of one core;
* the peak RSS (``ru_maxrss``);
* how late the check rounds start against the deadline their schedule waited for (p50/p99/max ms), and how long a
  round takes;
* the garbage collector: its full collections (each one a pause of the whole loop: the usual cause of a late round),
  the longest, and the share of the time it took (``--gc-freeze``: with the daemon's long-lived objects frozen);
* the servers' CPU (whether they kept up), and the other processes' (a machine shared with other work makes every
  figure but the CPU per check unreliable: the daemon then waits for its core; ``--nice -10`` puts the daemon and
  the servers ahead of the rest).

On loopback the kernel's network work for both ends is partly charged to the daemon (the receive path runs in the
sender's context): its ``sys`` share is higher here than against remote targets.

    .venv/bin/python bench/checks_rate.py                  # 2,000 targets, 5,000 checks/s, 20 s, both loops
    .venv/bin/python bench/checks_rate.py --quick          # 400 targets, 1,000 checks/s, 2 s (CI)
    .venv/bin/python bench/checks_rate.py --uvloop --targets 2000 --rate 5000 --seconds 30
    .venv/bin/python bench/checks_rate.py --checks-only    # the checks alone, without the engine
    .venv/bin/python bench/checks_rate.py --loop asyncio --profile /tmp/checks.prof   # cProfile of the window
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from eipfailover.checks.base import Check

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
MIXES = {"both": ("tcp", "http"), "http": ("http",), "tcp": ("tcp",)}


def have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run_on(loop_kind: str, main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` on a fresh event loop: asyncio's own, or uvloop's (imported by name: an optional extra)."""
    factory = importlib.import_module("uvloop").new_event_loop if loop_kind == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def pin(cpus: set[int] | None) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def prioritize(nice: int) -> None:
    """Lower this process's niceness by ``nice`` (negative: ahead of the rest). Where the kernel groups processes by
    session (autogroup), niceness counts only within the group: the process then starts a session of its own and
    gives that group the niceness."""
    if not nice:
        return
    os.nice(nice)
    if Path("/proc/self/autogroup").exists():
        with contextlib.suppress(OSError):
            os.setsid()
            Path("/proc/self/autogroup").write_text(str(nice))


def cpus_for(args: argparse.Namespace) -> tuple[set[int] | None, set[int] | None]:
    """The daemon's core and the servers' cores (None: not pinned)."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.no_pin or len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


# --- the probed servers ----------------------------------------------------------------------------------------------

class Answer(asyncio.Protocol):
    """Answers the first request head with :data:`RESPONSE` and closes; a bare connection (the tcp check) is closed
    when the client closes it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head and self.transport is not None:
            self.transport.write(RESPONSE)
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too


def serve(sock: socket.socket, cpus: set[int] | None, loop_kind: str, nice: int = 0) -> None:
    """One server process: accept on the shared listening socket until killed."""
    pin(cpus)
    prioritize(nice)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Answer, sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        run_on(loop_kind, main())


def busy_ticks() -> int:
    """The machine's busy time over all cores in clock ticks (from /proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _, _, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def cpu_ticks(pid: int) -> int:
    """A process's user + system time in clock ticks (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


# --- the daemon ------------------------------------------------------------------------------------------------------

@dataclass
class Window:
    """What the timed check rounds saw during the measurement window."""

    measuring: bool = False
    checks: int = 0
    failed: int = 0
    lateness: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)
    details: dict[str, int] = field(default_factory=dict)
    gc_pauses: list[float] = field(default_factory=list)
    """The full (generation 2) collections' durations."""
    gc_seconds: float = 0.0
    """All the garbage collector's collections, added up."""
    gc_started: float = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` entry: time every collection in the window."""
        if phase == "start":
            self.gc_started = time.perf_counter()
        elif self.measuring:
            pause = time.perf_counter() - self.gc_started
            self.gc_seconds += pause
            if info["generation"] == 2:
                self.gc_pauses.append(pause)


WINDOW = Window()
SLOT = 0.01
"""``--checks-only``: how often a slice of the checks starts."""


DEADLINES: dict[asyncio.Task[Any], float] = {}
"""Per task, the deadline of the last ``asyncio.timeout`` the engine's code entered in it."""


def watch_engine_timers() -> None:
    """Record the deadline of every ``asyncio.timeout`` the engine's module enters (its schedule loops wait for the
    next round with one): a check round's lateness is then measured against the very deadline its loop waited for,
    whatever arithmetic the schedule uses. The engine's code is not changed, only the ``asyncio`` it sees."""
    from eipfailover import engine

    def timeout(delay: float | None) -> asyncio.Timeout:
        task = asyncio.current_task()
        if task is not None and delay is not None:
            DEADLINES[task] = asyncio.get_running_loop().time() + delay
        return asyncio.timeout(delay)

    clocked = types.ModuleType("asyncio")
    clocked.__dict__.update(asyncio.__dict__)
    clocked.timeout = timeout  # type: ignore[attr-defined]
    engine.asyncio = clocked  # type: ignore[attr-defined]


def config_data(targets: int, rate: float, mix: str, port: int) -> tuple[dict[str, Any], float, float]:
    kinds = MIXES[mix]
    interval = targets * len(kinds) / rate
    timeout = round(min(1.0, interval / 2), 3)
    url = f"http://127.0.0.1:{port}/healthz"
    check = {"tcp": {"type": "tcp", "host": "127.0.0.1", "port": port}, "http": {"type": "http", "url": url}}
    data = {
        "providers": {"static": {"type": "aws", "region": "r"}},
        "groups": [{
            "name": f"g{i}", "provider": "static", "eips": [f"e{i}"],
            "policy": {"interval": interval, "timeout": timeout, "rise": 2, "fall": 3},
            "targets": [{"name": t, "binding": {"instance_id": f"i-e{i}-{t}"},
                         "checks": [check[kind] for kind in kinds]} for t in ("a", "b")],
        } for i in range(targets // 2)],
    }
    return data, interval, timeout


async def daemon(params: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from bench.engine_scale import StaticCloud
    from eipfailover.config import parse_config
    from eipfailover.daemon import build_checks
    from eipfailover.engine import Engine, GroupRunner
    from eipfailover.events import NullObserver, Observer, Observers
    from eipfailover.log import LogObserver
    from eipfailover.metrics import Metrics

    class TimedRunner(GroupRunner):
        """Counts the checks of each round in the window, with the round's lateness and duration."""

        async def check_round(self) -> None:
            start = time.monotonic()
            task = asyncio.current_task()
            deadline = DEADLINES.get(task) if task is not None else None
            await super().check_round()
            if not WINDOW.measuring:
                return
            if deadline is not None:
                WINDOW.lateness.append(start - deadline)
            WINDOW.rounds.append(time.monotonic() - start)
            for target in self.targets.values():
                WINDOW.checks += len(target.checks)
                for result in target.last_results.values():
                    if not result.ok:
                        WINDOW.failed += 1
                        WINDOW.details[result.detail] = WINDOW.details.get(result.detail, 0) + 1

    watch_engine_timers()
    data, interval, timeout = config_data(params["targets"], params["rate"], params["mix"], params["port"])
    config = parse_config(data)
    cloud = StaticCloud("static")
    observer: Observer = NullObserver()
    if params["observers"] == "daemon":  # the daemon's per-check observers: logs and Prometheus metrics
        observer = Observers([LogObserver(), Metrics(config, {})])
    profile = None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as http:
        if params["engine"]:
            engine = Engine(TimedRunner(g, cloud, build_checks(g, cloud, http), observer) for g in config.groups)
            task = asyncio.create_task(engine.run())
        else:
            checks = [c for g in config.groups for cs in build_checks(g, cloud, http).values() for c in cs]
            stop = asyncio.Event()
            task = asyncio.create_task(checks_alone(checks, interval, stop))
        await asyncio.sleep(params["warmup"] + interval)  # every group started (phases spread over an interval)
        print("window-start", flush=True)
        if params["profile"]:
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        if params["gc_freeze"]:  # what a daemon can do once started: its long-lived objects out of the collections
            gc.collect()
            gc.freeze()
        gc.callbacks.append(WINDOW.on_gc)
        WINDOW.measuring = True
        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(params["seconds"])
        cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        WINDOW.measuring = False
        gc.callbacks.remove(WINDOW.on_gc)
        if profile is not None:
            profile.disable()
        print("window-end", flush=True)
        if params["engine"]:
            engine.request_stop()
            up = f"{sum(1 for r in engine.runners.values() for t in r.targets.values() if t.health.state == 'up')}"
        else:
            stop.set()
            up = "-"
        await task
    if profile is not None:
        import pstats

        profile.dump_stats(params["profile"])
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    return {
        "interval": interval, "timeout": timeout, "wall": wall1 - wall0,
        "user": cpu1.ru_utime - cpu0.ru_utime, "sys": cpu1.ru_stime - cpu0.ru_stime,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "up": up,
        **asdict(WINDOW),
    }


async def checks_alone(checks: Sequence[Check], interval: float, stop: asyncio.Event) -> None:
    """The checks without the engine: every :data:`SLOT` s, the next slice of them at once, so that each runs once
    per ``interval`` (the rate the engine would give them); lateness: how late each slice starts."""
    from eipfailover.model import CheckResult

    loop = asyncio.get_running_loop()
    slots = max(1, round(interval / SLOT))
    slices = [checks[i::slots] for i in range(slots)]
    running: set[asyncio.Task[None]] = set()

    async def run(batch: Sequence[Check], started: float) -> None:
        results: list[CheckResult] = await asyncio.gather(*(c.run() for c in batch))
        if WINDOW.measuring:
            WINDOW.rounds.append(time.monotonic() - started)
            WINDOW.checks += len(results)
            for result in results:
                if not result.ok:
                    WINDOW.failed += 1
                    WINDOW.details[result.detail] = WINDOW.details.get(result.detail, 0) + 1

    start, n = loop.time(), 0
    while not stop.is_set():
        due = start + n * interval / slots
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(due - loop.time()):
                await stop.wait()
        now = time.monotonic()
        if WINDOW.measuring:
            WINDOW.lateness.append(now - due)
        task = asyncio.create_task(run(slices[n % slots], now))
        running.add(task)
        task.add_done_callback(running.discard)
        n += 1
    await asyncio.gather(*running)


def worker(params: dict[str, Any]) -> None:
    pin(set(params["cpus"]) if params["cpus"] else None)
    prioritize(params["nice"])
    result = run_on(params["loop"], daemon(params))
    Path(params["result"]).write_text(json.dumps(result))


# --- the driver ------------------------------------------------------------------------------------------------------

@dataclass
class Row:
    loop: str
    asked: float
    rate: float
    cpu: float
    user: float
    sys: float
    us_per_check: float
    per_core: float
    rss_mb: float
    late_p50: float
    late_p99: float
    late_max: float
    round_p50: float
    round_p99: float
    server_cpu: float
    other_cpu: float
    gc_full: int
    gc_max: float
    gc_cpu: float
    failed: int
    up: str
    interval: float
    failures: dict[str, int]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def measure(args: argparse.Namespace, loop_kind: str, port: int, servers: Sequence[int],
            daemon_cpus: set[int] | None) -> Row:
    params = {"loop": loop_kind, "targets": args.targets, "rate": args.rate, "mix": args.mix, "port": port,
              "seconds": args.seconds, "warmup": args.warmup, "observers": args.observers,
              "engine": not args.checks_only, "gc_freeze": args.gc_freeze, "profile": args.profile, "nice": args.nice,
              "cpus": sorted(daemon_cpus) if daemon_cpus else None}
    with tempfile.TemporaryDirectory() as scratch:
        params["result"] = str(Path(scratch) / "result.json")
        return _measure(args, loop_kind, params, servers)


def _measure(args: argparse.Namespace, loop_kind: str, params: dict[str, Any], servers: Sequence[int]) -> Row:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(params)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ticks0 = ticks1 = busy0 = busy1 = own0 = own1 = 0
    wall0 = wall1 = 0.0
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        if line.startswith("window-start"):
            ticks0, own0, busy0 = sum(cpu_ticks(pid) for pid in servers), cpu_ticks(proc.pid), busy_ticks()
            wall0 = time.monotonic()
        elif line.startswith("window-end"):
            ticks1, own1, busy1 = sum(cpu_ticks(pid) for pid in servers), cpu_ticks(proc.pid), busy_ticks()
            wall1 = time.monotonic()
        else:
            sys.stderr.write(line)  # the daemon's logs
    if proc.wait() == 0:
        result = json.loads(Path(params["result"]).read_text())
    if result is None:
        raise SystemExit(f"the daemon process failed (exit status {proc.returncode})")
    wall = result["wall"]
    cpu = result["user"] + result["sys"]
    rate = result["checks"] / wall
    lateness = [1000 * x for x in result["lateness"]]
    rounds = [1000 * x for x in result["rounds"]]
    return Row(
        loop=loop_kind + (", checks only" if args.checks_only else ""), asked=args.rate, rate=rate,
        cpu=100 * cpu / wall, user=100 * result["user"] / wall,
        sys=100 * result["sys"] / wall, us_per_check=1e6 * cpu / max(1, result["checks"]),
        per_core=rate / (cpu / wall) if cpu else float("inf"), rss_mb=result["maxrss_mb"],
        late_p50=percentile(lateness, 0.5), late_p99=percentile(lateness, 0.99), late_max=max(lateness, default=0),
        round_p50=percentile(rounds, 0.5), round_p99=percentile(rounds, 0.99),
        server_cpu=100 * (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") / max(1e-9, wall1 - wall0),
        other_cpu=100 * ((busy1 - busy0) - (ticks1 - ticks0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK")
        / max(1e-9, wall1 - wall0),
        gc_full=len(result["gc_pauses"]), gc_max=1000 * max(result["gc_pauses"], default=0.0),
        gc_cpu=100 * result["gc_seconds"] / wall,
        failed=result["failed"], up=f"{result['up']}/{args.targets}" if result["up"] != "-" else "-",
        interval=result["interval"],
        failures=result["details"])


def table(rows: Sequence[Row], args: argparse.Namespace) -> str:
    lines = [
        f"{args.targets} targets x {len(MIXES[args.mix])} checks ({'+'.join(MIXES[args.mix])}), "
        f"interval {rows[0].interval:.3g}s, {args.seconds:g}s measured, observers: {args.observers}, "
        f"{args.servers} server process(es){', gc.freeze()' if args.gc_freeze else ''}"
        f"{f', nice {args.nice}' if args.nice else ''}",
        "| loop | checks/s (asked) | daemon CPU, 1 core = 100% (user+sys) | us CPU/check | checks/s per core "
        "| RSS peak MB | tick late p50/p99/max ms | round p50/p99 ms | GC: full collections, longest ms, % of wall "
        "| servers CPU | other processes' CPU | not ok | targets up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.loop} | {r.rate:,.0f} ({r.asked:,.0f}) | {r.cpu:.1f}% ({r.user:.1f}+{r.sys:.1f}) "
            f"| {r.us_per_check:.0f} | {r.per_core:,.0f} | {r.rss_mb:.0f} "
            f"| {r.late_p50:.1f} / {r.late_p99:.1f} / {r.late_max:.1f} | {r.round_p50:.1f} / {r.round_p99:.1f} "
            f"| {r.gc_full}, {r.gc_max:.0f}, {r.gc_cpu:.1f}% | {r.server_cpu:.0f}% | {r.other_cpu:.0f}% | {r.failed} "
            f"| {r.up} |")
    for r in rows:
        for detail, count in sorted(r.failures.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"  {r.loop}: {count} x {detail}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--targets", type=int, default=2000, help="targets, in groups of 2 (default 2000)")
    parser.add_argument("--rate", type=float, default=5000.0, help="checks per second asked (default 5000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="the measurement window (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the window, after a first "
                        "interval (default 2)")
    parser.add_argument("--mix", choices=sorted(MIXES), default="both", help="checks per target: tcp and http "
                        "(default), or one of them")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default=None,
                        help="the daemon's event loop (default: both if uvloop is installed)")
    parser.add_argument("--uvloop", action="store_true", help="same as --loop uvloop")
    parser.add_argument("--checks-only", action="store_true", help="the checks alone, without the engine (a slice "
                        f"of them every {SLOT * 1000:g} ms): what the checks cost, and so what the engine adds")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the engine has started (before "
                        "the window): the full collections then skip the daemon's long-lived objects")
    parser.add_argument("--observers", choices=("null", "daemon"), default="null", help="null: none (the checks "
                        "and the engine alone); daemon: the daemon's logs and Prometheus metrics too")
    parser.add_argument("--servers", type=int, default=1, help="HTTP server processes (default 1)")
    parser.add_argument("--server-loop", choices=("asyncio", "uvloop"), default=None,
                        help="the servers' event loop (default: uvloop if installed)")
    parser.add_argument("--nice", type=int, default=0, help="the daemon's and the servers' niceness increment "
                        "(negative: ahead of the other processes of a shared machine; needs root)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the daemon and the servers to cores")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the window into FILE (and print the top); "
                        "the CPU figures then include the profiler's cost")
    parser.add_argument("--quick", action="store_true", help="400 targets, 1,000 checks/s, 2 s (a few seconds "
                        "per loop): the CI's run")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout, the table on stderr")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.quick:
        args.targets, args.rate, args.seconds, args.warmup = 400, 1000.0, 2.0, 0.5
    if args.targets < 2 or args.targets % 2:
        parser.error("--targets must be an even number (groups of 2)")
    loops = ["uvloop"] if args.uvloop else [args.loop] if args.loop not in (None, "both") else (
        ["asyncio", "uvloop"] if args.loop == "both" or have_uvloop() else ["asyncio"])
    if "uvloop" in loops and not have_uvloop():
        parser.error("uvloop is not installed (pip install 'eipfailover[fast]')")
    server_loop = args.server_loop or ("uvloop" if have_uvloop() else "asyncio")
    daemon_cpus, server_cpus = cpus_for(args)

    import multiprocessing

    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    context = multiprocessing.get_context("fork")
    servers = [context.Process(target=serve, args=(listener, server_cpus, server_loop, args.nice),
                                 daemon=True)
               for _ in range(args.servers)]
    for server in servers:
        server.start()
    listener.close()
    try:
        rows = [measure(args, kind, port, [s.pid for s in servers if s.pid is not None], daemon_cpus)
                for kind in loops]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.join(5)
    text = table(rows, args)
    print(text, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"targets": args.targets, "rate": args.rate, "mix": args.mix, "seconds": args.seconds,
                          "rows": [asdict(r) for r in rows]}))
    if any(r.failed or r.rate < 0.9 * r.asked for r in rows):
        raise SystemExit("some checks did not pass, or the rate fell short of the asked one: see above")


if __name__ == "__main__":
    main()
