"""The fencing hook (``hooks.before_failover``), a real program run before a move takes the EIPs off a target: exit 0
lets the move go ahead, anything else vetoes it before any cloud call (a failed failover with the hook's output)
unless ``before_failover_required`` is false; it is not run before a repair; a stop while it runs kills it and
moves nothing. And dry run: a move decided and reported, not made."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from eipfailover.config import AwsProviderConfig, parse_config
from eipfailover.demo import DaemonProcess
from eipfailover.engine import GroupRunner
from eipfailover.errors import ProviderError
from eipfailover.events import Observers
from eipfailover.model import Binding, CheckStatus, ManualRequest
from eipfailover.providers.aws import AwsProvider

from .api_daemon import config_data
from .conftest import REGION, Ec2World, HealthServer, eventually
from .fakes import FakeProvider, ScriptedCheck

A, B = Binding(instance_id="i-a"), Binding(instance_id="i-b")
SCRIPT = """
import json, os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "group": os.environ.get("EIPFAILOVER_GROUP")}) + "\\n")
print("fencing web-a: " + sys.argv[2])
time.sleep(float(sys.argv[3]))
sys.exit(int(sys.argv[2]))
"""


def world(tmp_path: Path, exit_code: int = 0, sleep: float = 0.0, required: bool = True,
          placement: Binding | None = A,
          dry_run: bool = False) -> tuple[GroupRunner, FakeProvider, dict[str, ScriptedCheck], Path]:
    calls = tmp_path / "calls.jsonl"
    data: dict[str, Any] = {
        "providers": {"fake": {"type": "aws", "region": "r"}},
        "groups": [{
            "name": "web", "provider": "fake", "eips": ["e1"], "dry_run": dry_run,
            "policy": {"interval": 1, "timeout": 0.5, "rise": 1, "fall": 1, "cooldown": 0 if not dry_run else 60},
            "hooks": {"before_failover": [sys.executable, "-c", SCRIPT, str(calls), str(exit_code), str(sleep),
                                          "{group}", "{from}", "{to}", "{result}", "{failover_id}"],
                      "before_failover_timeout": "1s", "before_failover_required": required},
            "targets": [{"name": n, "binding": {"instance_id": f"i-{n[-1]}"},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in ("web-a", "web-b")],
        }],
    }
    cloud = FakeProvider({"e1": placement})
    checks = {"web-a": ScriptedCheck(), "web-b": ScriptedCheck()}
    runner = GroupRunner(parse_config(data).groups[0], cloud, {n: [c] for n, c in checks.items()}, Observers([]))
    return runner, cloud, checks, calls


async def fail_primary(runner: GroupRunner, checks: dict[str, ScriptedCheck]) -> None:
    await runner.read_cloud()
    await runner.check_round()
    checks["web-a"].status = CheckStatus.FAIL
    await runner.check_round()


def hook_calls(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_a_hook_that_exits_0_lets_the_move_go_ahead_with_the_placeholders(tmp_path: Path) -> None:
    runner, cloud, checks, calls = world(tmp_path)
    await fail_primary(runner, checks)
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.result == "success", runner.state.last_failover.error
    assert cloud.moves() == [(("e1",), B)]
    (call,) = hook_calls(calls)
    assert call == {"argv": ["0", "0.0", "web", "web-a", "web-b", "running", runner.state.last_failover.id],
                    "group": "web"}


async def test_a_hook_that_fails_vetoes_the_move_before_any_cloud_call(tmp_path: Path) -> None:
    runner, cloud, checks, calls = world(tmp_path, exit_code=3)
    await fail_primary(runner, checks)
    before = len(cloud.calls)
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.result == "failure"
    assert runner.state.last_failover.error == ("vetoed by the before_failover hook (exit status 3: fencing web-a: 3): "
                                          "no cloud call made")
    assert cloud.moves() == []
    assert [c for c in cloud.calls[before:] if c[0] != "describe"] == []
    assert len(hook_calls(calls)) == 1


async def test_a_hook_that_hangs_is_killed_at_its_timeout_and_vetoes(tmp_path: Path) -> None:
    runner, cloud, checks, _ = world(tmp_path, sleep=30)
    await fail_primary(runner, checks)
    await asyncio.wait_for(runner.wait_idle(), 10)
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.error == \
        "vetoed by the before_failover hook (killed after 1s): no cloud call made"
    assert cloud.moves() == []


async def test_a_failing_hook_that_is_not_required_does_not_stop_the_move(tmp_path: Path) -> None:
    runner, cloud, checks, calls = world(tmp_path, exit_code=1, required=False)
    await fail_primary(runner, checks)
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.result == "success"
    assert cloud.moves() == [(("e1",), B)]
    assert len(hook_calls(calls)) == 1


async def test_a_repair_of_a_detached_eip_is_not_fenced(tmp_path: Path) -> None:
    runner, cloud, _, calls = world(tmp_path, exit_code=1, placement=None)
    await runner.check_round()
    await runner.read_cloud()
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert (runner.state.last_failover.reason, runner.state.last_failover.result) == ("repair_detached", "success")
    assert cloud.moves() == [(("e1",), A)]
    assert hook_calls(calls) == []


async def test_a_stop_while_the_hook_runs_kills_it_and_moves_nothing(tmp_path: Path) -> None:
    runner, cloud, checks, calls = world(tmp_path, sleep=30)
    await fail_primary(runner, checks)
    await eventually(lambda: len(hook_calls(calls)) == 1)
    runner.abort()
    await asyncio.wait_for(runner.wait_idle(), 10)
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.error == ("aborted before the move (the daemon is stopping): the before_failover "
                                          "hook was killed")
    assert cloud.moves() == []


# --- dry run: decided and reported, not made ---
async def test_a_group_in_dry_run_reports_the_move_and_makes_none(tmp_path: Path) -> None:
    """A failover a group in dry run would make is recorded (result ``dry_run``, "would move ...") with no cloud
    call and no fencing hook; the cooldown then applies as after a real move."""
    runner, cloud, checks, calls = world(tmp_path, dry_run=True)
    await fail_primary(runner, checks)
    before = len(cloud.calls)
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert (runner.state.last_failover.result, runner.state.last_failover.error) == (
        "dry_run", "would move e1 from web-a to web-b; no cloud call made")
    assert [c for c in cloud.calls[before:] if c[0] != "describe"] == []
    assert hook_calls(calls) == []
    await runner.read_cloud()
    await runner.check_round()
    await runner.wait_idle()
    assert runner.decision is not None
    assert runner.decision.reason.value == "cooldown"  # not a "would move" every interval


async def test_a_read_only_driver_refuses_a_mutating_call_before_sending_it(ec2: Ec2World) -> None:
    """Under ``run --dry-run`` every driver is read-only: a mutating request is refused, never sent; reads work."""
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region=REGION, endpoint_url=ec2.endpoint))
    provider.read_only = True
    sent: list[str] = []
    provider.client.meta.events.register("before-send.ec2", lambda request, **_: sent.append(str(request.body)))
    try:
        with pytest.raises(ProviderError) as err:
            await provider.move([ec2.eip], Binding(instance_id=ec2.instance_b))
        assert (err.value.code, err.value.retryable) == ("DryRun", False)
        assert (await provider.describe([ec2.eip]))[ec2.eip].bound_to is not None
    finally:
        await provider.close()
    assert not [b for b in sent if "AssociateAddress" in b]
    assert ec2.holder()["InstanceId"] == ec2.instance_a


async def test_run_dry_run_decides_and_reports_but_never_moves(ec2: Ec2World, health_servers: list[HealthServer],
                                                               tmp_path: Path) -> None:
    """``eipfailover run --dry-run`` (a process): the primary dies, the daemon logs ``failover_dry_run`` and records
    it in the history, and the EIP stays where it was; it exits 0 on SIGTERM."""
    data = config_data(ec2, health_servers, None)
    data["log"] = {"format": "json"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY")}
    proc = DaemonProcess(path, env, lambda at, event: None, "--dry-run")
    try:
        await proc.start_and_settle("web-a", "web-b")
        await health_servers[0].stop()
        await proc.wait_for("failover_dry_run", 30)
        event = next(e for _, e in proc.events if e.get("event") == "failover_dry_run")
        assert (event["from_target"], event["target"]) == ("web-a", "web-b")
        assert event["detail"] == f"would move {ec2.eip} from web-a to web-b; no cloud call made"
        assert ec2.holder()["InstanceId"] == ec2.instance_a
    finally:
        assert await proc.stop() == 0
    assert proc.count("failover_started") == 1  # decided once, then the cooldown
    assert proc.count("failover_verified") == 0


# --- every move that takes EIPs off a target is fenced ---
FENCE = """
import sys
open(sys.argv[1], "a").write(" ".join(sys.argv[3:]) + "\\n")
print("cannot reach the old primary")
sys.exit(int(sys.argv[2]))
"""


def fenced(tmp_path: Path, placement: dict[str, Binding | None], exit_code: int = 3,
           ) -> tuple[GroupRunner, FakeProvider, dict[str, ScriptedCheck], Path]:
    calls = tmp_path / "fence.log"
    data: dict[str, Any] = {
        "providers": {"fake": {"type": "aws", "region": "r"}},
        "groups": [{
            "name": "web", "provider": "fake", "eips": sorted(placement),
            "policy": {"interval": 1, "timeout": 0.5, "rise": 1, "fall": 1, "cooldown": 0},
            "hooks": {"before_failover": [sys.executable, "-c", FENCE, str(calls), str(exit_code), "{from}", "{to}"],
                      "before_failover_timeout": "5s"},
            "targets": [{"name": n, "binding": {"instance_id": f"i-{n[-1]}"},
                         "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in ("web-a", "web-b")],
        }],
    }
    cloud = FakeProvider(placement)
    checks = {"web-a": ScriptedCheck(), "web-b": ScriptedCheck()}
    runner = GroupRunner(parse_config(data).groups[0], cloud, {n: [c] for n, c in checks.items()}, Observers([]))
    return runner, cloud, checks, calls


async def test_a_manual_move_of_split_eips_is_fenced(tmp_path: Path) -> None:
    """e1 on web-a, e2 on web-b (split); the operator moves the group to web-b, which takes e1 off web-a: the
    fencing hook runs first, and its failure vetoes the move."""
    runner, cloud, _, calls = fenced(tmp_path, {"e1": A, "e2": B})
    runner.set_maintenance(True)  # no automatic adoption meanwhile
    await runner.check_round()
    await runner.read_cloud()
    runner.request_failover(ManualRequest(to="web-b", id="m1"))
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert calls.exists(), f"no fencing before taking e1 off web-a: {runner.state.last_failover}"
    assert cloud.moves() == []


async def test_an_adoption_of_split_eips_is_fenced(tmp_path: Path) -> None:
    """The automatic adoption of split EIPs takes e2 off web-b: fenced like any other move off a target."""
    runner, cloud, _, calls = fenced(tmp_path, {"e1": A, "e2": B})
    await runner.check_round()
    await runner.read_cloud()
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert runner.state.last_failover.reason == "adopt"
    assert calls.exists(), f"no fencing before taking e2 off web-b: {runner.state.last_failover}"
    assert cloud.moves() == []


async def test_a_forced_move_while_the_cloud_is_unreadable_is_fenced(tmp_path: Path) -> None:
    """The EIP was last seen on web-a; the cloud cannot be read; a forced manual move to web-b takes it off web-a:
    the fencing hook runs first (``{from}`` the last active target), and its failure vetoes the move."""
    runner, cloud, _, calls = fenced(tmp_path, {"e1": A})
    await runner.check_round()
    await runner.read_cloud()
    assert runner.state.cloud.active == "web-a"
    runner.set_maintenance(True)
    cloud.faults["describe"] = [ProviderError("throttled", retryable=True)] * 5
    await runner.read_cloud()
    runner.request_failover(ManualRequest(to="web-b", force=True, id="m1"))
    await runner.wait_idle()
    assert runner.state.last_failover is not None
    assert calls.exists(), f"no fencing before a forced move off web-a: {runner.state.last_failover}"
    assert cloud.moves() == []
