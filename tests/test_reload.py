"""Reloads in-process: the state gauges show the carried-over state, removed groups' series go, HaVip guards keep
their state; and the HaVip check and takeover guard loaded from a config and run by the daemon."""

from __future__ import annotations

import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from eipfailover.config import load_config
from eipfailover.daemon import Daemon
from eipfailover.engine import GroupRunner

from .api_daemon import config_data, daemon_on, reload
from .conftest import Ec2World, HealthServer, eventually
from .fake_aliyun import FakeAliyun, key_file


async def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{daemon.api_port}/metrics") as response:
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_after_a_reload_the_gauges_show_the_carried_state_and_removed_groups_are_gone(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    data = config_data(ec2, health_servers, None)
    old = json.loads(json.dumps(data["groups"][0]))
    old["name"], old["eips"] = "old", [ec2.new_eip(on_instance=ec2.instance_b)]
    old["targets"].reverse()
    data["groups"].append(old)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    async with daemon_on(path) as daemon:
        assert daemon.engine is not None
        web = daemon.engine.runners["web"]
        await eventually(lambda: all(t.health.state == "up" for t in web.targets.values()))
        web.set_maintenance(True)
        assert any(labels == (("group", "old"),) for (_, labels) in await scrape(daemon))

        data["groups"][0]["policy"]["cooldown"] = "45s"  # web changes: it is rebuilt with its state
        del data["groups"][1]  # old goes
        await reload(daemon, path, data)
        assert daemon.engine.runners["web"] is not web
        metrics = await scrape(daemon)
        for target in ("web-a", "web-b"):
            assert metrics[("eipfailover_target_up", (("group", "web"), ("target", target)))] == 1
        assert metrics[("eipfailover_maintenance", (("group", "web"),))] == 1
        assert metrics[("eipfailover_eip_attached", (("group", "web"),))] == 1
        assert metrics[("eipfailover_active_target", (("group", "web"), ("target", "web-a")))] == 1
        assert [key for key in metrics if ("group", "old") in key[1]] == []


def havip_config(fake: FakeAliyun, servers: list[HealthServer], tmp_path: Path, hook_out: Path) -> dict[str, Any]:
    """Two zones, each a HaVip with an EIP-capable binding; zone-a's HaVip has a takeover guard over i-1/i-2."""
    hook = [sys.executable, "-c", f"import json, sys; json.dump(sys.argv[1:], open({str(hook_out)!r}, 'w'))",
            "{group}", "{target}", "{havip}", "{from}", "{to}"]
    return {
        "log": {"format": "json"}, "api": {"listen": "127.0.0.1:0"},
        "providers": {"ali": {"type": "alibaba", "region": fake.region, "endpoint": fake.endpoint,
                              "protocol": "http", "access_key_file": str(key_file(tmp_path)),
                              "poll_interval": "100ms"}},
        "groups": [{
            "name": "web", "provider": "ali", "eips": ["eip-1"],
            "policy": {"interval": "300ms", "timeout": "200ms", "rise": 2, "fall": 2, "cooldown": "30s"},
            "targets": [
                {"name": "zone-a", "binding": {"instance_id": "havip-a", "instance_type": "HaVip"},
                 "checks": [{"type": "havip"}],
                 "havip_takeover": {
                     "members": [{"instance_id": f"i-{n}", "checks": [{"type": "http", "url": s.url}]}
                                 for n, s in enumerate(servers, start=1)],
                     "on_takeover": hook, "cooldown": "60s"}},
                {"name": "zone-b", "binding": {"instance_id": "havip-b", "instance_type": "HaVip"},
                 "checks": [{"type": "havip", "havip_id": "havip-b"}]},
            ],
        }],
    }


async def test_the_havip_check_and_guard_run_from_the_config_and_survive_reloads(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    fake.add_eip("eip-1", "47.1.1.1")
    fake.add_havip("havip-a", "10.0.0.100", ["i-1", "i-2"], master="i-1")
    fake.add_havip("havip-b", "10.0.8.100", ["i-3", "i-4"], master="i-3")
    fake.bind("eip-1", "havip-a")
    hook_out = tmp_path / "hook.json"
    data = havip_config(fake, health_servers, tmp_path, hook_out)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    async with daemon_on(path) as daemon:
        assert daemon.engine is not None
        runner = daemon.engine.runners["web"]
        await eventually(lambda: all(t.health.state == "up" for t in runner.targets.values()))
        assert runner.state.cloud.active == "zone-a"
        guard = daemon.guards[("web", "zone-a")]
        await eventually(lambda: all(h.state == "up" for h in guard.health.values()))

        # zone-a's master dies (its service; the host still advertises): the guard forces it off the HaVip
        await health_servers[0].stop()
        await eventually(lambda: hook_out.exists(), timeout=10)
        assert json.loads(hook_out.read_text()) == ["web", "zone-a", "havip-a", "i-1", "i-2"]
        await eventually(lambda: fake.havips["havip-a"].master == "i-2", timeout=5)
        taken_at = guard.cooldown.since
        assert taken_at is not None
        assert runner.state.cloud.active == "zone-a"  # the EIP follows the HaVip: no EIP move was needed
        assert "AssociateEipAddress" not in fake.actions()

        # a reload that does not touch the guard keeps it as it is
        data["groups"][0]["policy"]["cooldown"] = "45s"
        await reload(daemon, path, data)
        assert daemon.guards[("web", "zone-a")] is guard
        # one that changes it rebuilds it with its cooldown and the health of unchanged members
        takeover = data["groups"][0]["targets"][0]["havip_takeover"]
        takeover["cooldown"] = "90s"
        await reload(daemon, path, data)
        rebuilt = daemon.guards[("web", "zone-a")]
        assert rebuilt is not guard
        assert rebuilt.cooldown.since == taken_at
        assert rebuilt.health["i-2"].state == "up"


def ecs_config(fake: FakeAliyun, servers: list[HealthServer], tmp_path: Path) -> dict[str, Any]:
    fake.add_eip("eip-1", "47.1.1.1")
    for instance in ("i-a", "i-b"):
        fake.add_resource(instance)
    fake.bind("eip-1", "i-a")
    return {
        "log": {"format": "json"}, "api": {"listen": "127.0.0.1:0"},
        "providers": {"ali": {"type": "alibaba", "region": fake.region, "endpoint": fake.endpoint,
                              "protocol": "http", "access_key_file": str(key_file(tmp_path)),
                              "poll_interval": "100ms"}},
        "groups": [{"name": "web", "provider": "ali", "eips": ["eip-1"],
                    "policy": {"interval": "300ms", "timeout": "200ms", "rise": 2, "fall": 2},
                    "targets": [{"name": n, "binding": {"instance_id": i}, "checks": [{"type": "http", "url": s.url}]}
                                for n, i, s in (("web-a", "i-a", servers[0]), ("web-b", "i-b", servers[1]))]}],
    }


async def test_a_stop_during_a_reload_hand_over_leaves_no_runner_behind(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    fake.transition = 1.0
    data = ecs_config(fake, health_servers, tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    daemon = Daemon(load_config(path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    await asyncio.wait_for(daemon.serving.wait(), 30)
    assert daemon.engine is not None
    engine = daemon.engine
    old = await moving(daemon, health_servers)
    data["groups"][0]["policy"]["cooldown"] = "9s"
    await reload(daemon, path, data)  # returns at once: web is handed over when its move ends
    assert engine.runners["web"] is old
    engine.request_stop()  # ... but the daemon stops first
    assert await asyncio.wait_for(task, 30) == 0
    assert engine.runners["web"] is old  # the replacement never started
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith(("group-", "failover-"))]
    assert leftovers == []
    assert (fake.eips["eip-1"].status, fake.eips["eip-1"].instance_id) == ("InUse", "i-b")


async def moving(daemon: Daemon, servers: list[HealthServer]) -> GroupRunner:
    """Once web's targets are UP, stop web-a's health endpoint; web's runner, once its move is under way."""
    assert daemon.engine is not None
    web = daemon.engine.runners["web"]
    await eventually(lambda: all(t.health.state == "up" for t in web.targets.values()))
    await servers[0].stop()
    await eventually(lambda: web.state.current is not None, timeout=10)
    return web


async def test_a_group_added_then_removed_while_it_waits_leaves_no_series_behind(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """web is moving; reload 1 renames it web2 (web2 waits for the move); reload 2 renames it back to web: web2
    never ran and is gone, and so are its series."""
    fake.transition = 2.0
    data = ecs_config(fake, health_servers, tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    async with daemon_on(path) as daemon:
        assert daemon.engine is not None
        engine = daemon.engine
        old = await moving(daemon, health_servers)
        renamed = copy.deepcopy(data)
        renamed["groups"][0]["name"] = "web2"
        await reload(daemon, path, renamed)
        await reload(daemon, path, data)
        await eventually(lambda: old.state.current is None and engine.runners["web"] is not old, timeout=15)
        series = await scrape(daemon)
        phantom = sorted({dict(labels).get("group") or "" for _, labels in series} - {"", "web"})
        assert phantom == [], f"series of groups that are not configured: {phantom}"


async def test_an_eip_handed_to_a_group_listed_first_waits_for_its_old_groups_move(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """web holds eip-1 and eip-2 on NAT gateway nat-a and is moving both to nat-b (2 s transitions). A reload gives
    eip-2 to a new group 'api' listed before 'web': 'api' starts only once web's move has ended."""
    fake.transition = 2.0
    data = ecs_config(fake, health_servers, tmp_path)
    fake.add_eip("eip-2", "47.1.1.2")
    for nat in ("nat-a", "nat-b"):
        fake.add_resource(nat, "Nat")
    fake.bind("eip-1", "nat-a")
    fake.bind("eip-2", "nat-a")
    data["groups"][0]["eips"] = ["eip-1", "eip-2"]
    for target, nat in zip(data["groups"][0]["targets"], ("nat-a", "nat-b"), strict=True):
        target["binding"] = {"instance_id": nat, "instance_type": "Nat"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    async with daemon_on(path) as daemon:
        assert daemon.engine is not None
        engine = daemon.engine
        web = await moving(daemon, health_servers)
        new = copy.deepcopy(data)
        api = copy.deepcopy(data["groups"][0])
        api["name"], api["eips"] = "api", ["eip-2"]
        new["groups"][0]["eips"] = ["eip-1"]
        new["groups"].insert(0, api)
        await reload(daemon, path, new)
        running_early = "api" in engine.runners and web.in_progress
        await eventually(lambda: not web.in_progress, timeout=15)
        await eventually(lambda: "api" in engine.runners, timeout=5)  # then api starts
        api_runner = engine.runners.get("api")
        history = [(r.reason, r.to_target, r.result, r.error) for r in await daemon.api.history("api", 5)] \
            if daemon.api is not None else []
        assert not running_early, (f"api ran while web still moved eip-2; web's last failover: "
                                   f"{(done := web.state.last_failover) and (done.result, done.error)}; "
                                   f"api's failovers: {history}; "
                                   f"api active: {api_runner and api_runner.state.cloud.active}")
