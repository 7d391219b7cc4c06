"""Cluster mode with the real AWS driver on moto and a real etcd: the fenced call as it really goes out, the
hand-over at a stop, a reload, the advertised API."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
import yaml

from eipfailover.cluster.etcd_client import EtcdClient
from eipfailover.config import AwsProviderConfig, load_config
from eipfailover.daemon import Daemon
from eipfailover.model import Binding
from eipfailover.providers.aws import AwsProvider
from eipfailover.providers.base import fenced

from .api_daemon import config_data
from .conftest import REGION, Ec2World, HealthServer, eventually
from .etcd_server import EtcdCluster
from .fault_proxy import Fault, FaultProxy
from .test_cluster_coordinator import Daemons, proxied


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


def clustered(ec2: Ec2World, servers: list[HealthServer], etcd: EtcdCluster) -> dict[str, Any]:
    """The API tests' config, alone on ``etcd`` (a prefix of its own, ttl 3 s, timeouts the lease covers)."""
    data = config_data(ec2, servers, None)
    data["state_directory"] = None
    data["providers"]["moto"].update(connect_timeout="500ms", read_timeout="1500ms")
    data["cluster"] = {"type": "etcd", "endpoints": etcd.client_urls, "prefix": f"/test/{uuid.uuid4().hex[:8]}",
                       "node": "solo", "ttl": "3s"}
    return data


async def test_a_fenced_call_that_waits_for_a_thread_is_checked_again_in_it(
        ec2: Ec2World, etcd: EtcdCluster) -> None:
    """The AWS driver runs calls in a thread pool: a mutating call that waits there behind a slow describe is
    checked again in the thread at the instant it goes out, so it never reaches the cloud after the lease that proved
    it may have expired (here the leader is cut off from etcd right after its proof)."""
    cloud = FaultProxy(ec2.endpoint, "ec2")
    await cloud.start()
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=cloud.url,
                                                    connect_timeout=0.5, read_timeout=1.5, max_concurrency=1))
    world = Daemons()
    try:
        async with proxied(etcd) as to_etcd:
            leader = world.make([to_etcd.url], f"/review/{uuid.uuid4().hex[:8]}", "a", ttl=3.0)
            world.start(leader)
            await eventually(leader.acting, timeout=30)

            cloud.script("DescribeAddresses", *[Fault("delay", delay=3.0)] * 3)  # each attempt times out (1.5 s)
            describe = asyncio.create_task(provider.describe([ec2.eip]))
            await eventually(lambda: bool(cloud.calls("DescribeAddresses")), timeout=10)

            proven = asyncio.Event()

            async def fence(operation: str, seconds: float):  # type: ignore[no-untyped-def]
                recheck = await leader.fence("web", "f1", operation, seconds)
                proven.set()
                return recheck

            with fenced(fence):
                move = asyncio.create_task(provider.move([ec2.eip], Binding(instance_id=ec2.instance_b)))
            await asyncio.wait_for(proven.wait(), 10)
            to_etcd.cut = True  # right after the proof, the leader is cut off from etcd: no renewal lands any more
            with contextlib.suppress(Exception):
                await asyncio.wait_for(move, 30)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(describe, 30)
            lease_end = leader._valid_until
            sent = [s.at for s in cloud.calls("AssociateAddress", forwarded=True)]
            late = [round(at - lease_end, 2) for at in sent if at >= lease_end]
            assert not late, f"AssociateAddress reached the cloud {late} s after the leader's lease may have expired"
    finally:
        await world.close()
        await provider.close()
        await cloud.stop()


async def test_a_reload_is_refused_when_the_running_lease_cannot_cover_the_new_timeouts(
        ec2: Ec2World, health_servers: list[HealthServer], etcd: EtcdCluster, tmp_path: Path) -> None:
    """``cluster`` applies at a restart: a reload whose provider timeouts the *running* lease cannot outlive is
    refused (it would leave a leader that can never move anything), even when the new file raises ``ttl`` too."""
    data = clustered(ec2, health_servers, etcd)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    daemon = Daemon(load_config(path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await asyncio.wait_for(daemon.serving.wait(), 30)
        assert daemon.engine is not None
        assert daemon.coordinator is not None
        await asyncio.wait_for(daemon.engine.ready.wait(), 30)
        await eventually(daemon.coordinator.acting, timeout=30)

        data["cluster"]["ttl"] = "10s"  # applies at a restart
        data["providers"]["moto"]["read_timeout"] = "5s"  # would apply now: 5.5 s calls, on a 3 s lease
        before = daemon.config
        path.write_text(yaml.safe_dump(data))
        with structlog.testing.capture_logs() as logs:
            daemon.request_reload()
            await eventually(lambda: any(e.get("event") in ("reload_failed", "reload_done") for e in logs),
                             timeout=15)
        failed = [e for e in logs if e.get("event") == "reload_failed"]
        assert failed, logs
        assert "the running cluster.ttl" in failed[0]["error"]
        assert daemon.config is before
    finally:
        if daemon.engine is not None:
            daemon.engine.request_stop()
        await asyncio.wait_for(task, 60)


async def test_a_stopping_leader_hands_over_only_once_its_calls_are_answered(
        ec2: Ec2World, health_servers: list[HealthServer], etcd: EtcdCluster, tmp_path: Path) -> None:
    """On SIGTERM mid-failover, the leader gives its key up only after every mutating call it sent has been
    answered: a follower cannot lead, and move the EIP, while the old leader's AssociateAddress is still in flight."""
    cloud = FaultProxy(ec2.endpoint, "ec2")
    await cloud.start()
    data = clustered(ec2, health_servers, etcd)
    prefix = data["cluster"]["prefix"]
    data["stop_timeout"] = "300ms"
    data["providers"]["moto"]["endpoint_url"] = cloud.url
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    daemon = Daemon(load_config(path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    raw = EtcdClient(etcd.client_urls, timeout=5.0)
    handed_over: list[float] = []

    async def watch_leader_key(revision: int) -> None:
        async with contextlib.aclosing(raw.watch_prefix(prefix + "/leader", revision + 1)) as stream:
            async for events in stream:
                if any(e.type == "delete" for e in events):
                    handed_over.append(time.monotonic())
                    return

    watcher: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(daemon.serving.wait(), 30)
        assert daemon.engine is not None
        assert daemon.coordinator is not None
        await asyncio.wait_for(daemon.engine.ready.wait(), 30)
        await eventually(daemon.coordinator.acting, timeout=30)
        runner = daemon.engine.runners["web"]
        await eventually(lambda: all(t.health.state == "up" for t in runner.targets.values()), timeout=30)
        _, revision = await raw.get_prefix(prefix + "/")
        watcher = asyncio.create_task(watch_leader_key(revision))

        cloud.script("AssociateAddress", Fault("delay", delay=1.4))  # answered just under the read timeout
        health_servers[0].status = 500  # the primary dies: the leader fails over
        await eventually(lambda: bool(cloud.calls("AssociateAddress")), timeout=30)
        sent = cloud.calls("AssociateAddress")[0]
        daemon.engine.request_stop()  # SIGTERM, mid-failover
        assert await asyncio.wait_for(task, 60) in (0, 1)
        await asyncio.wait_for(watcher, 10)
        landed = sent.at + 1.4
        assert handed_over[0] >= landed, (
            f"the leader key was given up {landed - handed_over[0]:.2f}s before the old leader's AssociateAddress "
            f"reached the cloud")
    finally:
        if not task.done():
            if daemon.engine is not None:
                daemon.engine.request_stop()
            await asyncio.wait_for(task, 60)
        if watcher is not None:
            watcher.cancel()
        await raw.close()
        await cloud.stop()


async def test_an_api_other_hosts_cannot_reach_is_reported_at_start(
        ec2: Ec2World, health_servers: list[HealthServer], etcd: EtcdCluster, tmp_path: Path) -> None:
    """With ``api.listen`` on a wildcard (or loopback) and no ``cluster.advertise_api``, the API URL published
    to the other daemons is loopback: a warning naming ``advertise_api`` says so at start."""
    data = clustered(ec2, health_servers, etcd)
    data["api"]["listen"] = "0.0.0.0:0"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    daemon = Daemon(load_config(path), path)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(daemon.run(install_signals=False))
        try:
            await asyncio.wait_for(daemon.serving.wait(), 30)
            assert daemon.coordinator is not None
            await eventually(daemon.coordinator.acting, timeout=30)
            advertised = daemon.coordinator.status().leader_api
        finally:
            if daemon.engine is not None:
                daemon.engine.request_stop()
            await asyncio.wait_for(task, 60)
    assert (advertised or "").startswith("http://127.0.0.1:")
    warned = [e for e in logs if e.get("event") == "api_not_advertised"]
    assert warned
    assert "cluster.advertise_api" in warned[0]["detail"]
