"""Side by side in one run on the same moto server: the daemon's move+verify, the raw boto3 associate+describe
round-trips, and the classic notify-script way (``aws ec2 associate-address``, then ``aws ec2 describe-addresses``).

Each round moves one EIP to the other instance each way, the in-process ways in a rotating order and the CLI last
(so that a drift in the machine's load touches every way alike, and each in-process way comes right after a CLI
process, which slows the next few milliseconds down, equally often), each timed from the first request to the
moment the cloud reports the EIP on the new instance:

- daemon: ``eipfailover.failover.execute(AwsProvider, [eip], binding, deadline=30)``, the failover action the engine
  runs (associate with reassociation, then describe until the cloud reports the target), with the driver's default
  rate limits (the rounds are paced at 4 a second at most, so that they never wait for EC2's mutation bucket);
- raw: boto3 in the calling thread, ``associate_address(AllowReassociation=True)`` then ``describe_addresses`` (the
  same filter as the driver's) until it shows the new instance: the least any Python client can do;
- raw on a worker thread (a diagnostic): the same calls, each through ``loop.run_in_executor`` as the driver makes
  them, so that daemon / raw on a worker thread is the cost of the daemon's own logic (batching, rate limiter,
  tasks, verification scheduling) and raw on a worker thread / raw the cost of the thread hops;
- cli: ``aws ec2 associate-address --allow-reassociation``, then ``aws ec2 describe-addresses`` until it shows the new
  instance, each a new process (what a keepalived ``notify`` script does).

moto answers at once, so this compares client-side overheads, not AWS's propagation time. A second table splits each
in-process way into its AssociateAddress and DescribeAddresses requests (the daemon's as its ``on_request`` times
them, the thread hop included) and the time around them. The samples that a garbage collection stretched by 10 ms or
more are counted (a full collection of this process, moto's and boto3's objects, takes 100 to 400 ms and stops every
thread): they make the max column, not the p50.

The AWS CLI (v1, from PyPI) pins its own botocore, so it never goes into the project's venv: the bench creates a
throwaway venv for it on first use (``~/.cache/eipfailover-bench/awscli-venv``; ``--cli PATH`` names an existing
``aws`` instead). If it cannot be installed, the CLI column is skipped, with a note.

    .venv/bin/python bench/side_by_side.py                 # 50 rounds
    .venv/bin/python bench/side_by_side.py --quick         # 10 rounds
    .venv/bin/python bench/side_by_side.py --cli /usr/local/bin/aws --json side_by_side.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer

from eipfailover import failover
from eipfailover.config import AwsProviderConfig
from eipfailover.model import Binding
from eipfailover.providers.aws import AwsProvider

REGION = "us-east-1"
CLI_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eipfailover-bench" / "awscli-venv"
WARMUP = 2
ROUND_AT_LEAST = 0.25
"""Seconds a round takes at least (see :func:`measure`)."""
GC_NOTABLE = 0.010
LABELS = {"daemon": "daemon (failover.execute)", "raw": "raw boto3", "raw_thread": "raw boto3 on a worker thread",
          "cli": "aws CLI"}


class GcPauses:
    """The garbage collector's pauses (any thread's: a collection holds the GIL, every thread waits), so that a
    sample that a full collection of the process's objects (moto's and boto3's, some 300,000) stretched by 100 ms or
    more can be told apart."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started[threading.get_ident()] = now
        elif (began := self._started.pop(threading.get_ident(), None)) is not None:
            self.pauses.append((began, now, info["generation"]))

    def overlap(self, start: float, end: float) -> float:
        """Seconds of collection within ``[start, end]``."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b, _ in self.pauses if b > start and a < end)


GC = GcPauses()


def find_cli(path: str | None) -> tuple[str | None, str]:
    """The ``aws`` to run and how it was found, or None and why there is none."""
    if path is not None:
        found = shutil.which(path)
        return (found, f"--cli {path}") if found else (None, f"--cli {path}: not an executable")
    aws = CLI_VENV / "bin" / "aws"
    if aws.exists():
        return str(aws), f"throwaway venv {CLI_VENV}"
    print(f"installing the AWS CLI (awscli from PyPI) into a throwaway venv: {CLI_VENV}", file=sys.stderr, flush=True)
    try:
        CLI_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CLI_VENV)], check=True, capture_output=True,
                       timeout=300)
        subprocess.run([str(CLI_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                        "awscli"], check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] \
            if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else [str(exc)]
        shutil.rmtree(CLI_VENV, ignore_errors=True)
        return None, f"the AWS CLI could not be installed ({' '.join(detail)})"
    return (str(aws), f"throwaway venv {CLI_VENV} (just installed)") if aws.exists() else \
        (None, "pip installed awscli but left no bin/aws")


def cli_version(aws: str, env: dict[str, str]) -> str:
    out = subprocess.run([aws, "--version"], capture_output=True, text=True, env=env, timeout=60)
    return str(out.stdout or out.stderr).strip()


class World:
    def __init__(self, endpoint: str, aws: str | None) -> None:
        self.endpoint = endpoint
        self.aws = aws
        self.ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION,
                                config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 1}))
        reply = self.ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2)
        self.instances: list[str] = [i["InstanceId"] for i in reply["Instances"]]
        self.eip: str = self.ec2.allocate_address(Domain="vpc")["AllocationId"]
        self.ec2.associate_address(AllocationId=self.eip, InstanceId=self.instances[0])
        self.on = self.instances[0]
        self.provider = AwsProvider("bench", AwsProviderConfig(type="aws", region=REGION, endpoint_url=endpoint))
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="raw")
        self.requests: list[tuple[str, float]] = []
        self.provider.on_request = lambda _p, operation, _r, seconds: self.requests.append((operation, seconds))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_PAGER": "",
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }

    def other(self) -> str:
        return self.instances[1] if self.on == self.instances[0] else self.instances[0]

    async def daemon(self) -> dict[str, float]:
        to = self.other()
        self.requests.clear()
        start = time.perf_counter()
        outcome = await failover.execute(self.provider, [self.eip], Binding(instance_id=to), deadline=30)
        total = time.perf_counter() - start
        if not outcome.ok:
            raise SystemExit(f"the daemon's failover failed: {outcome.error}")
        self.on = to
        associate = sum(seconds for operation, seconds in self.requests if operation == "AssociateAddress")
        describe = sum(seconds for operation, seconds in self.requests if operation == "DescribeAddresses")
        return {"total": total, "requests": len(self.requests), "associate": associate, "describe": describe,
                "around": total - associate - describe}

    def raw(self) -> dict[str, float]:
        to = self.other()
        start = time.perf_counter()
        self.ec2.associate_address(AllocationId=self.eip, InstanceId=to, AllowReassociation=True)
        associated = time.perf_counter()
        requests = 1
        while True:
            reply = self.ec2.describe_addresses(Filters=[{"Name": "allocation-id", "Values": [self.eip]}])
            requests += 1
            if reply["Addresses"][0].get("InstanceId") == to:
                break
        end = time.perf_counter()
        self.on = to
        return {"total": end - start, "requests": requests, "associate": associated - start,
                "describe": end - associated}

    async def raw_thread(self) -> dict[str, float]:
        """The raw calls, each run on a worker thread as the driver runs its boto3 calls (the thread hop alone)."""
        loop = asyncio.get_running_loop()
        to = self.other()
        start = time.perf_counter()
        await loop.run_in_executor(self.pool, functools.partial(
            self.ec2.associate_address, AllocationId=self.eip, InstanceId=to, AllowReassociation=True))
        associated = time.perf_counter()
        requests = 1
        while True:
            reply = await loop.run_in_executor(self.pool, functools.partial(
                self.ec2.describe_addresses, Filters=[{"Name": "allocation-id", "Values": [self.eip]}]))
            requests += 1
            if reply["Addresses"][0].get("InstanceId") == to:
                break
        end = time.perf_counter()
        self.on = to
        return {"total": end - start, "requests": requests, "associate": associated - start,
                "describe": end - associated}

    def cli(self) -> dict[str, float]:
        assert self.aws is not None
        to = self.other()
        common = ["--endpoint-url", self.endpoint, "--region", REGION, "--output", "json"]
        start = time.perf_counter()
        self._run(["ec2", "associate-address", "--allocation-id", self.eip, "--instance-id", to,
                   "--allow-reassociation", *common])
        associated = time.perf_counter()
        requests = 1
        while True:
            out = self._run(["ec2", "describe-addresses", "--allocation-ids", self.eip, *common])
            requests += 1
            if json.loads(out)["Addresses"][0].get("InstanceId") == to:
                break
        end = time.perf_counter()
        self.on = to
        return {"total": end - start, "requests": requests, "associate": associated - start,
                "describe": end - associated}

    def _run(self, args: Sequence[str]) -> str:
        assert self.aws is not None
        done = subprocess.run([self.aws, *args], capture_output=True, text=True, env=self.env, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"aws {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout


async def measure(world: World, rounds: int) -> dict[str, list[dict[str, float]]]:
    local = ["daemon", "raw", "raw_thread"]
    cli = ["cli"] if world.aws is not None else []
    results: dict[str, list[dict[str, float]]] = {m: [] for m in local + cli}
    before = ""
    try:
        for n in range(rounds + WARMUP):
            began = time.monotonic()
            # the in-process ways in turn first, the CLI last: what runs right after a CLI process is slowed down
            # (by 2 to 4 ms: caches, the CPU's frequency), so each in-process way comes after it equally often
            order = local[n % len(local):] + local[:n % len(local)] + cli
            for method in order:
                start = time.perf_counter()
                if method == "daemon":
                    sample = await world.daemon()
                elif method == "raw_thread":
                    sample = await world.raw_thread()
                else:
                    sample = getattr(world, method)()
                sample["gc_pause"] = GC.overlap(start, time.perf_counter())
                sample["after_cli"] = float(before == "cli")
                before = method
                if n >= WARMUP:
                    results[method].append(sample)
            # the driver's own rate limit (EC2's mutation bucket: 4.5/s, a burst of 45) is left as deployed: paced
            # so, the rounds never wait for it (without the CLI's seconds, 52 moves back to back would)
            await asyncio.sleep(max(0.0, began + ROUND_AT_LEAST - time.monotonic()))
    finally:
        await world.provider.close()
        world.pool.shutdown()
    return results


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 rounds instead of 50")
    parser.add_argument("--rounds", type=int, help="rounds (default 50, 10 with --quick)")
    parser.add_argument("--cli", metavar="PATH", help="an existing aws executable (default: a throwaway venv's)")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI column")
    parser.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    args = parser.parse_args()
    rounds = args.rounds or (10 if args.quick else 50)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    aws, how = (None, "--no-cli") if args.no_cli else find_cli(args.cli)
    gc.callbacks.append(GC)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        world = World(f"http://{host}:{port}", aws)
        version = cli_version(aws, world.env) if aws is not None else ""
        load0 = os.getloadavg()
        results = asyncio.run(measure(world, rounds))
        load1 = os.getloadavg()
    finally:
        server.stop()

    totals = {m: [s["total"] for s in samples] for m, samples in results.items()}
    p50 = {m: percentile(v, 0.5) for m, v in totals.items()}
    print(f"{rounds} rounds (+{WARMUP} warm-up) on one moto server; CLI: "
          + (f"{version} ({how})" if aws else f"skipped: {how}"))
    print()
    print("| way | requests | p50 ms | p90 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for method, values in totals.items():
        requests = sorted(s["requests"] for s in results[method])
        print(f"| {LABELS[method]} | {requests[len(requests) // 2]:.0f} | {1000 * p50[method]:.1f} "
              f"| {1000 * percentile(values, 0.9):.1f} | {1000 * max(values):.1f} |")
    print()
    print(f"- daemon / raw (p50): **{p50['daemon'] / p50['raw']:.2f}x**; daemon / raw on a worker thread: "
          f"{p50['daemon'] / p50['raw_thread']:.2f}x")
    if "cli" in p50:
        print(f"- cli / daemon (p50): **{p50['cli'] / p50['daemon']:.0f}x** (the daemon is that much faster)")
    hit = {m: [s for s in samples if s["gc_pause"] >= GC_NOTABLE] for m, samples in results.items()}
    print(f"- samples stretched by a garbage collection of {1000 * GC_NOTABLE:.0f} ms or more: "
          + ", ".join(f"{m} {len(v)}" + (f" (max {1000 * max(s['gc_pause'] for s in v):.0f} ms)" if v else "")
                      for m, v in hit.items()))
    print(f"- load average (1 min) {load0[0]:.2f} -> {load1[0]:.2f}")
    print()
    ways = [m for m in ("daemon", "raw_thread", "raw") if m in results]
    print("| where the time goes (p50 ms) | " + " | ".join(LABELS[m] for m in ways) + " |")
    print("|---|" + "---:|" * len(ways))
    parts = [("AssociateAddress", "associate"), ("DescribeAddresses (until it shows the move)", "describe")]
    for label, key in parts:
        print(f"| {label} | " + " | ".join(f"{1000 * percentile([s[key] for s in results[m]], 0.5):.2f}"
                                          for m in ways) + " |")
    print("| around the requests (daemon: batching, limiter, tasks; from its on_request) | "
          + " | ".join(f"{1000 * percentile([s.get('around', 0.0) for s in results[m]], 0.5):.2f}" for m in ways)
          + " |")
    print("| total | " + " | ".join(f"{1000 * p50[m]:.2f}" for m in ways) + " |")
    if "cli" in results:
        cli = results["cli"]
        print(f"\n- cli p50: associate-address {1000 * percentile([s['associate'] for s in cli], 0.5):.0f} ms, "
              f"describe-addresses {1000 * percentile([s['describe'] for s in cli], 0.5):.0f} ms (a process each)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "cli": version, "load": [load0[0], load1[0]], "samples": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
