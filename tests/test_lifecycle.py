"""Stop and reload under way of a move: the daemon as a subprocess on the fake Alibaba API (two-step moves, slow
transitions), real signals. An EIP is never left detached by a stop; a reload never blocks other groups behind a
move, never hides the group that is moving, and a stop in that window ends cleanly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from eipfailover.demo import DaemonProcess

from .conftest import HealthServer, eventually
from .fake_aliyun import FakeAliyun, Fault, key_file


def world(fake: FakeAliyun, transition: float, groups: int = 1) -> None:
    """eip-1 on i-a (web-a; standby i-b); with 2 groups, eip-2 on i-c (api-a; standby i-d)."""
    fake.transition = transition
    for n, (active, standby) in enumerate((("i-a", "i-b"), ("i-c", "i-d"))[:groups], start=1):
        fake.add_eip(f"eip-{n}", f"47.1.1.{n}")
        fake.add_resource(active)
        fake.add_resource(standby)
        fake.bind(f"eip-{n}", active)


def config_data(fake: FakeAliyun, servers: list[HealthServer], tmp_path: Path, groups: int = 1,
                **top: Any) -> dict[str, Any]:
    group_list = []
    for n, (name, active, standby) in enumerate((("web", "i-a", "i-b"), ("api", "i-c", "i-d"))[:groups], start=1):
        group_list.append({
            "name": name, "provider": "ali", "eips": [f"eip-{n}"],
            "policy": {"interval": "500ms", "timeout": "250ms", "rise": 2, "fall": 2},
            "targets": [{"name": f"{name}-a", "binding": {"instance_id": active},
                         "checks": [{"type": "http", "url": servers[0].url}]},
                        {"name": f"{name}-b", "binding": {"instance_id": standby},
                         "checks": [{"type": "http", "url": servers[1].url}]}],
        })
    return {"log": {"format": "json"}, "api": {"listen": "127.0.0.1:0"}, **top,
            "providers": {"ali": {"type": "alibaba", "region": fake.region, "endpoint": fake.endpoint,
                                  "protocol": "http", "access_key_file": str(key_file(tmp_path)),
                                  "poll_interval": "100ms"}},
            "groups": group_list}


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def start(config: Path) -> DaemonProcess:
    return DaemonProcess(config, dict(os.environ), lambda at, event: None)


async def failing_over(proc: DaemonProcess, servers: list[HealthServer]) -> None:
    """Start, wait until both targets are UP, stop the primary's health endpoint, wait for the failover to start."""
    await proc.start_and_settle("web-a", "web-b")
    await servers[0].stop()
    await proc.wait_for("failover_started", 10)


def event(proc: DaemonProcess, at: float) -> dict[str, Any]:
    return next(e for t, e in proc.events if t == at)


def attached(fake: FakeAliyun, eip: str = "eip-1") -> bool:
    return fake.eips[eip].status == "InUse"


async def test_sigterm_during_a_failover_lets_it_finish(fake: FakeAliyun, health_servers: list[HealthServer],
                                                        tmp_path: Path) -> None:
    world(fake, transition=1.5)
    proc = start(write(tmp_path / "c.yaml", config_data(fake, health_servers, tmp_path)))
    await failing_over(proc, health_servers)
    await eventually(lambda: fake.eips["eip-1"].status == "Unassociating")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    assert await proc.wait(30) == 0
    print(f"\nSIGTERM during a failover: exit 0 after {time.monotonic() - stopping:.2f}s")
    assert proc.count("failover_verified") == 1
    assert proc.count("stop_timeout") == 0  # it finished within stop_timeout: nothing was aborted
    assert (fake.eips["eip-1"].instance_id, fake.eips["eip-1"].status) == ("i-b", "InUse")


async def test_a_stop_outlasting_stop_timeout_re_attaches_the_detached_eip(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    world(fake, transition=0.5)
    # the standby's associations are throttled: the move keeps retrying while the EIP sits detached
    fake.faults["AssociateEipAddress"] = [Fault(400, "Throttling.User") for _ in range(1000)]
    proc = start(write(tmp_path / "c.yaml", config_data(fake, health_servers, tmp_path, stop_timeout="3s")))
    await failing_over(proc, health_servers)
    await eventually(lambda: fake.eips["eip-1"].status == "Available", timeout=10)  # in the detached window
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    await proc.wait_for("stop_timeout", 5)  # the move could not finish in stop_timeout: it is aborted ...
    fake.faults["AssociateEipAddress"].clear()  # ... and the cloud lets the re-attachment through
    assert await proc.wait(20) == 0
    assert (fake.eips["eip-1"].status, fake.eips["eip-1"].instance_id) == ("InUse", "i-b")
    failed = event(proc, await proc.wait_for("failover_failed", 1))
    assert failed["error"] == "aborted: the daemon is stopping; re-attached eip-1 to EcsInstance i-b"
    assert proc.count("eips_may_be_detached") == 0


async def test_a_second_sigint_names_the_eips_at_risk_and_the_next_start_finishes_the_move(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    world(fake, transition=3.0)
    config = write(tmp_path / "c.yaml", config_data(fake, health_servers, tmp_path))
    proc = start(config)
    await failing_over(proc, health_servers)
    await eventually(lambda: fake.eips["eip-1"].status == "Unassociating")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGINT)
    await proc.wait_for("daemon_stopping", 5)
    interrupting = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    assert await proc.wait(10) == 130
    assert time.monotonic() - interrupting < 2  # at once, not after the move
    interrupted = event(proc, await proc.wait_for("daemon_interrupted", 1))
    assert interrupted["eips_may_be_detached"] == {"web": ["eip-1"]}
    assert fake.eips["eip-1"].status == "Unassociating"  # left on its way to detached

    again = start(config)  # the journal shows the move unfinished: it is finished before the engine starts
    try:
        await again.start()
        interrupted = event(again, await again.wait_for("failover_interrupted", 30))
        assert interrupted["detail"] == ("the daemon stopped during this failover; found eip-1 on nothing; "
                                         "re-attached eip-1 to web-b")
        assert (fake.eips["eip-1"].status, fake.eips["eip-1"].instance_id) == ("InUse", "i-b")
        await again.wait_for("daemon_ready", 10)
        assert not [e for _, e in again.events if e["event"] == "failover_started"]  # nothing moved twice
    finally:
        assert await again.stop() == 0


async def groups_view(proc: DaemonProcess) -> dict[str, Any]:
    address = next(e["address"] for _, e in proc.events if e["event"] == "api_listening")
    async with aiohttp.ClientSession() as session, session.get(f"http://{address}/v1/groups") as response:
        return {g["name"]: g for g in (await response.json())["groups"]}


async def test_a_reload_during_a_move_neither_waits_for_it_nor_hides_it(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    world(fake, transition=2.0, groups=2)
    data = config_data(fake, health_servers, tmp_path, groups=2)
    config = write(tmp_path / "c.yaml", data)
    proc = start(config)
    try:
        await proc.start_and_settle("web-a", "web-b", "api-a", "api-b")
        data["groups"][0]["targets"][0]["checks"] = [{"type": "http", "url": "http://127.0.0.1:9/down"}]
        data["groups"][1]["policy"]["cooldown"] = "9s"  # api changes too: it must not wait for web's move
        write(config, data)
        # web's primary fails (in its new config too); the move takes 2 transitions of 2 s
        await health_servers[0].stop()
        started = await proc.wait_for("failover_started", 10, group="web")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        done = await proc.wait_for("reload_done", 3)
        assert (event(proc, done)["changed"], proc.count("failover_verified")) == (["web", "api"], 0)
        assert done - started < 2.0  # not behind web's move
        await proc.wait_for("eips_located", 5, after=done, group="api")  # api's new runner is at work already
        groups = await groups_view(proc)
        assert set(groups) == {"web", "api"}  # web stays visible while it moves
        assert groups["web"]["failover_in_progress"] is not None
        verified = await proc.wait_for("failover_verified", 15, group="web")
        assert verified > done
        await proc.wait_for("eips_located", 5, after=verified, group="web")  # then web's new runner takes over
        assert attached(fake, "eip-1")
        assert fake.eips["eip-1"].instance_id == "i-b"
    finally:
        assert await proc.stop() == 0


async def test_a_stop_right_after_a_reload_during_a_move_ends_cleanly(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    world(fake, transition=1.0)
    data = config_data(fake, health_servers, tmp_path)
    config = write(tmp_path / "c.yaml", data)
    proc = start(config)
    await proc.start_and_settle("web-a", "web-b")
    data["groups"][0]["policy"]["cooldown"] = "9s"
    write(config, data)
    await health_servers[0].stop()
    await proc.wait_for("failover_started", 10)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    await proc.wait_for("reload_done", 3)
    proc.proc.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    assert await proc.wait(20) == 0
    assert time.monotonic() - stopping < 10
    stopped = await proc.wait_for("daemon_stopped", 1)
    assert [e["event"] for t, e in proc.events if t > stopped] == []  # nothing ran after the stop
    assert proc.count("failover_verified") == 1
    assert (fake.eips["eip-1"].status, fake.eips["eip-1"].instance_id) == ("InUse", "i-b")


async def test_sigterm_with_no_failover_but_a_slow_describe_exits_0_at_once(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """No failover runs; only a cloud read is slow (it answers after 4 s): the stop drops it and exits 0 at once."""
    world(fake, transition=0.3)
    proc = start(write(tmp_path / "c.yaml", config_data(fake, health_servers, tmp_path, stop_timeout="1s")))
    await proc.start_and_settle("web-a", "web-b")
    fake.faults["DescribeEipAddresses"] = [Fault(code=None, delay=4.0) for _ in range(100)]
    seen = len(fake.log)
    await eventually(lambda: any(e.action == "DescribeEipAddresses" for e in fake.log[seen:]), 5)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = await proc.wait(30)
    took = time.monotonic() - t0
    assert took < 3
    fake.faults.clear()
    logged = [e["event"] for _, e in proc.events if e["event"] in ("stop_timeout", "eips_may_be_detached")]
    assert (code, logged) == (0, []), f"exit {code} after {took:.1f}s, logged {logged}, no failover was running"


async def test_a_failed_reload_closes_the_provider_it_built(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """A reload that builds a new Alibaba provider, then is refused (an unreadable api.token_file), closes that
    provider: nothing is left open at exit (no unclosed pooled session)."""
    world(fake, transition=0.3)
    data = config_data(fake, health_servers, tmp_path)
    config = write(tmp_path / "c.yaml", data)
    proc = start(config)
    await proc.start_and_settle("web-a", "web-b")
    data["providers"]["ali"]["poll_interval"] = "200ms"  # a changed provider: a fresh AlibabaProvider is built
    data["api"]["token_file"] = str(tmp_path / "missing-token")  # ... then the build fails
    write(config, data)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    await proc.wait_for("reload_failed", 5)
    reads = len(fake.log)
    await eventually(lambda: len(fake.log) > reads + 3)  # a few cloud reads through the pooled session
    assert await proc.stop() == 0
    leaks = [e.get("event") for _, e in proc.events if "Unclosed" in str(e)]
    assert leaks == [], leaks


async def test_a_stop_that_cuts_a_move_waits_for_the_call_it_sent_then_secures_the_eip(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """stop_timeout shorter than one SDK call: the abort does not abandon the UnassociateEipAddress it sent (the
    cloud carries it out); the secure step waits for its answer, sees the EIP detaching, and re-attaches it before
    the process exits."""
    world(fake, transition=0.3)
    fake.faults["UnassociateEipAddress"] = [Fault(code=None, delay=3.0)]  # a slow answer; the call is carried out
    proc = start(write(tmp_path / "c.yaml", config_data(fake, health_servers, tmp_path, stop_timeout="1s")))
    await failing_over(proc, health_servers)
    await eventually(lambda: "UnassociateEipAddress" in fake.actions(), 5)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    code = await proc.wait(20)
    eip = fake.eips["eip-1"]
    warned = proc.count("eips_may_be_detached")
    failed = [e.get("error") for _, e in proc.events if e["event"] == "failover_failed"]
    assert (code, eip.status, eip.instance_id) == (0, "InUse", "i-b"), (
        f"exit {code}, eips_may_be_detached logged {warned}x, failover_failed {failed}; the EIP is now "
        f"{eip.status} on {eip.instance_id!r}")
    assert failed == ["aborted: the daemon is stopping; re-attached eip-1 to EcsInstance i-b"]
