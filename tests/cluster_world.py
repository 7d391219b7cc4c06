"""Several real daemons (subprocesses) on one etcd and one moto server, each with its own way to the cloud and to
the targets.

Each daemon reaches moto through its own recording :class:`FaultProxy` (so a test can tell which daemon called the
cloud), and checks each target on its own :class:`HealthServer` (so a test can cut one daemon off from a target and
not the others): ``primary[i]`` and ``standby[i]`` are what daemon ``i`` sees of the two instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from eipfailover.demo import DaemonProcess
from eipfailover.demo_cluster import free_port

from .conftest import Ec2World, HealthServer, eventually
from .etcd_server import EtcdCluster
from .fault_proxy import FaultProxy

TOKEN = "cluster-token"
TTL = 3.0
POLICY = {"interval": "500ms", "timeout": "250ms", "rise": 2, "fall": 2, "cooldown": "1s", "failback": "manual"}
MUTATIONS = frozenset({"AssociateAddress", "DisassociateAddress"})


@dataclass
class Node:
    name: str
    config: Path
    proxy: FaultProxy
    primary: HealthServer
    standby: HealthServer
    process: DaemonProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mutations(self) -> list[str]:
        """The mutating EC2 calls this daemon sent."""
        return [seen.operation for seen in self.proxy.log if seen.operation in MUTATIONS]

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.returncode is None


@dataclass
class ClusterWorld:
    ec2: Ec2World
    etcd: EtcdCluster
    nodes: list[Node] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None

    async def get(self, node: Node, path: str) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.get(node.url + path) as response:
            return response.status, await response.json(content_type=None)

    async def post(self, node: Node, path: str, body: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.post(node.url + path, json=body,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            return response.status, await response.json(content_type=None)

    async def cluster(self, node: Node) -> dict[str, Any] | None:
        try:
            status, body = await self.get(node, "/v1/cluster")
        except (aiohttp.ClientError, OSError):
            return None
        return body if status == 200 else None

    async def leader(self, among: list[Node] | None = None) -> Node:
        """The node every live daemon of ``among`` (default: all) agrees acts, once they do."""
        nodes = [n for n in (among or self.nodes) if n.alive()]
        found: list[Node] = []

        async def agreed() -> bool:
            views = [await self.cluster(n) for n in nodes]
            if any(v is None for v in views):
                return False
            leaders = {v["leader"] for v in views if v is not None}
            acting = [n for n, v in zip(nodes, views, strict=True) if v is not None and v["acting"]]
            if len(leaders) == 1 and len(acting) == 1 and acting[0].name in leaders:
                found[:] = acting
                return True
            return False

        await eventually(agreed, timeout=30)
        return found[0]

    def holder(self) -> str | None:
        """The instance the EIP is on, as moto says."""
        address = self.ec2.client.describe_addresses(AllocationIds=[self.ec2.eip])["Addresses"][0]
        holder = address.get("InstanceId")
        return str(holder) if holder else None

    async def start(self, node: Node) -> None:
        await node.process.start()
        await node.process.wait_for("daemon_ready", 60)

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        os.kill(node.pid, sig)


def _config(name: str, ec2: Ec2World, proxy: FaultProxy, primary: HealthServer, standby: HealthServer,
            etcd: list[str], port: int, state: Path, token: Path, policy: dict[str, Any],
            **cluster: Any) -> dict[str, Any]:
    def target(target_name: str, instance: str, server: HealthServer) -> dict[str, Any]:
        return {"name": target_name, "binding": {"instance_id": instance},
                "checks": [{"type": "http", "url": f"http://127.0.0.1:{server.port}/health"}]}

    return {
        "log": {"format": "json", "level": "info"},
        "api": {"listen": f"127.0.0.1:{port}", "token_file": str(token)},
        "state_directory": str(state),
        "stop_timeout": "5s",
        "providers": {"aws": {"type": "aws", "region": "us-east-1", "endpoint_url": proxy.url,
                              "connect_timeout": "500ms", "read_timeout": "1500ms"}},
        "groups": [{"name": "web", "provider": "aws", "eips": [ec2.eip], "policy": policy,
                    "targets": [target("a", ec2.instance_a, primary), target("b", ec2.instance_b, standby)]}],
        "cluster": {"type": "etcd", "endpoints": etcd, "prefix": "/eipfailover/test", "node": name, "ttl": f"{TTL}s",
                    **cluster},
    }


@contextlib.asynccontextmanager
async def cluster_world(ec2: Ec2World, tmp_path: Path, *, daemons: int = 3, etcd_members: int = 1,
                        start: bool = True, etcd: EtcdCluster | None = None, policy: dict[str, Any] | None = None,
                        **cluster: Any) -> AsyncIterator[ClusterWorld]:
    """``daemons`` daemons on an etcd of ``etcd_members`` members (or on ``etcd``, left running), started and ready
    (unless ``start`` is false); everything else is stopped on exit."""
    own = etcd is None
    if etcd is None:
        etcd = EtcdCluster(etcd_members, tmp_path / "etcd")
        await asyncio.to_thread(etcd.start)
    world = ClusterWorld(ec2, etcd)
    token = tmp_path / "token"
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    token.write_text(TOKEN)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    servers: list[HealthServer] = []
    try:
        for i in range(daemons):
            name = f"n{i + 1}"
            proxy = FaultProxy(ec2.endpoint, "ec2", seed=i)
            await proxy.start()
            primary, standby = HealthServer(), HealthServer()
            for server in (primary, standby):
                await server.start()
                servers.append(server)
            port = free_port()
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(_config(name, ec2, proxy, primary, standby, etcd.client_urls, port,
                                                   tmp_path / f"state-{name}", token, policy or POLICY,
                                                   **cluster)))
            world.nodes.append(Node(name, path, proxy, primary, standby,
                                    DaemonProcess(path, env, lambda at, event: None), port))
        world.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        if start:
            await asyncio.gather(*(world.start(n) for n in world.nodes))
        yield world
    finally:
        for node in world.nodes:
            if node.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGCONT)
                    node.process.proc.kill()  # type: ignore[union-attr]
                    await node.process.proc.wait()  # type: ignore[union-attr]
        for node in world.nodes:
            await node.proxy.stop()
        for server in servers:
            await server.stop()
        if world.session is not None:
            await world.session.close()
        if own:
            await asyncio.to_thread(etcd.stop)


def dump(node: Node) -> str:
    """A daemon's log, for an assertion's message."""
    return "\n".join(json.dumps(e) for _, e in node.process.events[-60:])
