"""The HTTP API against the real daemon (in-process), the moto-backed AWS driver and real health endpoints."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .api_daemon import TOKEN, Running, config_data, running_daemon, start
from .conftest import Ec2World, HealthServer, eventually
from .fakes import SwallowingCheck

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def running(ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> AsyncIterator[Running]:
    async with running_daemon(ec2, health_servers, tmp_path) as r:
        yield r


async def test_probes_and_reads(running: Running) -> None:
    assert gc.get_freeze_count() > 10_000  # what start-up made is out of the collector's way
    assert await running.get("/healthz") == (200, {"status": "ok"})
    assert await running.get("/readyz") == (200, {"status": "ready"})
    status, body = await running.get("/v1/groups")
    assert status == 200
    (group,) = body["groups"]
    assert (group["name"], group["active_target"], group["placement"]) == ("web", "web-a", "on_target")
    assert group["eips"] == [{"allocation_id": running.ec2.eip, "public_ip": running.ec2.public_ip,
                              "bound_to": f"{running.ec2.instance_a} ({running.ec2.eni_a}/{running.ec2.ip_a})"}]
    assert group["decision"] == {"action": "none", "reason": "active_healthy", "target": "web-a"}
    assert [(t["name"], t["state"], t["checks"][0]["result"]) for t in group["targets"]] == [
        ("web-a", "up", "ok"), ("web-b", "up", "ok")]
    assert group["policy"]["fast_interval"] == 0.25  # interval/4 is below the timeout: the timeout
    assert group["policy"]["detection_seconds"] == 0.5  # (fall-1) * fast_interval + timeout
    assert (await running.get("/v1/groups/web"))[1]["name"] == "web"
    assert await running.get("/v1/history") == (200, {"failovers": []})


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/groups/nope", 404, "unknown_group"),
    ("GET", "/v1/history?group=nope", 404, "unknown_group"),
    ("GET", "/v1/history?limit=0", 400, "invalid_request"),
    ("GET", "/v1/history?limit=x", 400, "invalid_request"),
    ("GET", "/nope", 404, "not_found"),
    ("DELETE", "/v1/groups/web", 405, "method_not_allowed"),
    ("POST", "/v1/groups/nope/failover", 404, "unknown_group"),
])
async def test_read_errors_are_json(running: Running, method: str, path: str, status: int, code: str) -> None:
    async with running.session.request(method, running.url + path,
                                       headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        body = await r.json()
    assert (r.status, body["error"]) == (status, code)
    assert body["message"]


@pytest.mark.parametrize(("token", "code"), [(None, "unauthorized"), ("wrong", "unauthorized"),
                                             (TOKEN + "x", "unauthorized")])
async def test_changes_need_the_token(running: Running, token: str | None, code: str) -> None:
    assert await running.post("/v1/groups/web/failover", {"to": "web-b"}, token=token) == (
        401, {"error": code, "message": "missing, malformed or wrong bearer token"})
    status, _ = await running.post("/v1/groups/web/maintenance", {"enabled": True}, token=token)
    assert status == 401
    await asyncio.sleep(1.2)  # a few ticks: nothing was recorded, nothing moves
    assert running.runner.state.maintenance is False
    assert running.ec2.holder()["InstanceId"] == running.ec2.instance_a
    assert (await running.get("/v1/history"))[1] == {"failovers": []}


@pytest.mark.parametrize(("raw", "status", "code", "fragment"), [
    (b"{not json", 400, "invalid_json", "the body is not JSON"),
    (b"[1, 2]", 400, "invalid_request", "the body must be a JSON object"),
    (b'{"force": "yes"}', 400, "invalid_request", "force: Input should be a valid boolean"),
    (b'{"to": 7}', 400, "invalid_request", "to: Input should be a valid string"),
    (b'{"target": "web-b"}', 400, "invalid_request", "target: unknown field"),
    (b'{"reason": "' + b"x" * 70_000 + b'"}', 413, "body_too_large", "the body is over 65536 bytes"),
])
async def test_malformed_failover_requests(running: Running, raw: bytes, status: int, code: str,
                                           fragment: str) -> None:
    got, body = await running.post("/v1/groups/web/failover", raw=raw)
    assert (got, body["error"]) == (status, code)
    assert fragment in body["message"]


async def test_malformed_maintenance_request(running: Running) -> None:
    status, body = await running.post("/v1/groups/web/maintenance", {})
    assert (status, body["error"]) == (400, "invalid_request")
    assert body["message"] == "enabled: Field required"
    status, body = await running.post("/v1/groups/web/maintenance", {"enabled": 1})
    assert (status, body["message"]) == (400, "enabled: Input should be a valid boolean")


async def test_manual_failover_moves_the_eip_and_is_recorded(running: Running) -> None:
    status, body = await running.post("/v1/groups/web/failover", {"to": "web-b", "reason": "patch web-a"})
    assert status == 202
    assert (body["group"], body["to"], body["status"]) == ("web", "web-b", "accepted")
    failover_id = body["failover_id"]

    async def done() -> bool:
        records = (await running.get("/v1/history?group=web"))[1]["failovers"]
        return bool(records) and records[0]["result"] == "success"

    await eventually(done)
    assert running.ec2.holder()["InstanceId"] == running.ec2.instance_b
    (record,) = (await running.get("/v1/history?group=web&limit=5"))[1]["failovers"]
    assert (record["id"], record["trigger"], record["from"], record["to"], record["reason"]) == (
        failover_id, "manual", "web-a", "web-b", "patch web-a")
    assert record["requested_by"].startswith("api@127.0.0.1")
    assert record["duration_seconds"] > 0
    await eventually(lambda: running.runner.state.cloud.active == "web-b")

    metrics = await running.scrape()
    assert metrics[("eipfailover_failovers_total", (("group", "web"), ("result", "success"),
                                                     ("trigger", "manual")))] == 1
    assert metrics[("eipfailover_failovers_total", (("group", "web"), ("result", "success"),
                                                     ("trigger", "auto")))] == 0
    assert metrics[("eipfailover_active_target", (("group", "web"), ("target", "web-b")))] == 1
    assert metrics[("eipfailover_active_target", (("group", "web"), ("target", "web-a")))] == 0
    assert metrics[("eipfailover_eip_attached", (("group", "web"),))] == 1
    assert metrics[("eipfailover_failover_duration_seconds_count", (("group", "web"),))] == 1
    assert abs(metrics[("eipfailover_last_failover_timestamp_seconds", (("group", "web"),))] - time.time()) < 30
    assert metrics[("eipfailover_provider_requests_total", (("operation", "AssociateAddress"),
                                                             ("provider", "moto"), ("result", "ok")))] == 1
    assert metrics[("eipfailover_provider_requests_total", (("operation", "DescribeAddresses"),
                                                             ("provider", "moto"), ("result", "ok")))] >= 2


async def test_manual_failover_conflicts(running: Running) -> None:
    status, body = await running.post("/v1/groups/web/failover", {"to": "web-x"})
    assert (status, body["error"]) == (404, "unknown_target")
    status, body = await running.post("/v1/groups/web/failover", {"to": "web-a"})
    assert (status, body["error"]) == (409, "manual_already_active")

    await running.servers[1].stop()
    await eventually(lambda: running.runner.targets["web-b"].health.state == "down")
    status, body = await running.post("/v1/groups/web/failover", {"to": "web-b"})
    assert (status, body["error"]) == (409, "manual_target_unhealthy")
    assert body["message"] == "the target is not confirmed healthy; use force to move anyway"
    status, body = await running.post("/v1/groups/web/failover", {})
    assert (status, body["error"]) == (409, "manual_target_unhealthy")

    # a slow cloud: the first request is running when the second arrives
    release = threading.Event()
    running.runner.provider.client.meta.events.register(  # type: ignore[attr-defined]
        "before-send.ec2.AssociateAddress", lambda **_: release.wait(5) and None)
    status, body = await running.post("/v1/groups/web/failover", {"to": "web-b", "force": True})
    assert status == 202
    await eventually(lambda: running.runner.state.current is not None)
    status, second = await running.post("/v1/groups/web/failover", {"to": "web-b", "force": True})
    assert (status, second["error"]) == (409, "failover_in_progress")
    release.set()
    await eventually(lambda: running.ec2.holder()["InstanceId"] == running.ec2.instance_b)


async def test_maintenance_pauses_automatic_failover(running: Running) -> None:
    assert await running.post("/v1/groups/web/maintenance", {"enabled": True}) == (
        200, {"group": "web", "maintenance": True})
    assert (await running.scrape())[("eipfailover_maintenance", (("group", "web"),))] == 1
    await running.servers[0].stop()
    await eventually(lambda: running.runner.targets["web-a"].health.state == "down")
    await asyncio.sleep(1.5)  # three more ticks
    assert running.ec2.holder()["InstanceId"] == running.ec2.instance_a
    assert (await running.get("/v1/groups/web"))[1]["decision"]["reason"] == "maintenance"

    assert (await running.post("/v1/groups/web/maintenance", {"enabled": False}))[0] == 200
    await eventually(lambda: running.ec2.holder()["InstanceId"] == running.ec2.instance_b)
    metrics = await running.scrape()
    assert metrics[("eipfailover_maintenance", (("group", "web"),))] == 0
    assert metrics[("eipfailover_target_up", (("group", "web"), ("target", "web-a")))] == 0
    await eventually(lambda: running.runner.state.last_failover is not None)
    assert (await running.scrape())[("eipfailover_failovers_total", (("group", "web"), ("result", "success"),
                                                                     ("trigger", "auto")))] == 1


async def test_a_hanging_cloud_makes_the_daemon_unready_not_stalled(running: Running) -> None:
    release = threading.Event()
    running.runner.provider.client.meta.events.register(  # type: ignore[attr-defined]
        "before-send.ec2.DescribeAddresses", lambda **_: release.wait(10) and None)
    rounds = running.runner.ticks
    try:
        async def unready() -> bool:
            return (await running.get("/readyz"))[0] == 503

        await eventually(unready, timeout=5)
        _, body = await running.get("/readyz")
        assert body["error"] == "not_ready"
        (group,) = body["groups"]
        assert group["name"] == "web"
        assert group["reason"].startswith("last successful cloud read ")
        assert group["reason"].endswith("s ago (over 3 intervals)")
        # the checks go on at their own pace: the engine is not stalled
        assert await running.get("/healthz") == (200, {"status": "ok"})
        await eventually(lambda: running.runner.ticks >= rounds + 3, timeout=5)  # while the cloud still hangs
    finally:
        release.set()

    async def ready() -> bool:
        return (await running.get("/readyz"))[0] == 200

    await eventually(ready)


async def test_healthz_reports_a_stalled_engine(running: Running) -> None:
    wedged = asyncio.Event()
    checks = running.runner.targets["web-a"].checks
    assert isinstance(checks, list)
    checks.append(SwallowingCheck(wedged))
    try:
        async def stalled() -> bool:
            return (await running.get("/healthz"))[0] == 503

        await eventually(stalled, timeout=5)
        assert await running.get("/healthz") == (
            503, {"error": "engine_stalled", "message": "no completed check round for 3 intervals: web"})
    finally:
        wedged.set()
        checks.pop()


async def test_without_a_token_changes_are_refused(ec2: Ec2World, health_servers: list[HealthServer]) -> None:
    daemon, task = await start(ec2, health_servers, None)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{daemon.api_port}"
            async with session.post(url + "/v1/groups/web/failover", json={},
                                    headers={"Authorization": "Bearer anything"}) as r:
                assert r.status == 403
                assert (await r.json())["error"] == "changes_disabled"
            async with session.get(url + "/v1/groups/web") as r:
                assert r.status == 200
    finally:
        assert daemon.engine is not None
        daemon.engine.request_stop()
        assert await task == 0


async def test_metric_families_and_initial_label_sets(running: Running) -> None:
    _, text = await running.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {"eipfailover_build_info", "eipfailover_target_up", "eipfailover_active_target",
                "eipfailover_checks", "eipfailover_check_duration_seconds", "eipfailover_failovers",
                "eipfailover_failover_duration_seconds", "eipfailover_last_failover_timestamp_seconds",
                "eipfailover_maintenance", "eipfailover_eip_attached", "eipfailover_provider_requests",
                "eipfailover_provider_request_duration_seconds", "eipfailover_config_reloads",
                "eipfailover_eips_foreign", "eipfailover_cloud_read_age_seconds", "eipfailover_journal_up",
                "eipfailover_last_interrupted_failover_timestamp_seconds", "eipfailover_provider_rate_limit",
                "eipfailover_provider_rate_limit_wait_seconds"}
    assert expected <= set(families)
    assert {n for n in families if n.startswith("eipfailover_")} == expected
    failovers = {(s.labels["trigger"], s.labels["result"]) for s in families["eipfailover_failovers"].samples
                 if s.name.endswith("_total")}
    assert failovers == {(t, r) for t in ("auto", "manual", "failback")
                         for r in ("success", "failure", "skipped", "dry_run", "interrupted")}
    checks = {(s.labels["target"], s.labels["result"]) for s in families["eipfailover_checks"].samples
              if s.name.endswith("_total")}
    assert checks == {(t, r) for t in ("web-a", "web-b") for r in ("ok", "fail", "timeout", "error", "unknown")}
    operations = {s.labels["operation"] for s in families["eipfailover_provider_requests"].samples}
    assert operations == {"DescribeAddresses", "AssociateAddress", "DescribeInstanceStatus",
                          "DescribeNetworkInterfaces"}
    limits = {(s.labels["provider"], s.labels["kind"]): s.value for s in
              families["eipfailover_provider_rate_limit"].samples}
    assert limits == {("moto", "reads"): 18.0, ("moto", "mutations"): 4.5}  # the defaults; nothing throttled


async def test_openapi_document_matches_the_routes(running: Running) -> None:
    status, served = await running.get("/v1/openapi.yaml")
    assert status == 200
    document = yaml.safe_load(served)
    assert served == (ROOT / "docs" / "openapi.yaml").read_text()
    documented = {(m.upper(), p) for p, item in document["paths"].items() for m in item if m != "parameters"}
    assert running.daemon.api is not None
    app = running.daemon.api.app
    routed = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"
              and r.resource is not None}
    assert documented == routed


async def test_responses_carry_every_documented_field(running: Running) -> None:
    await running.post("/v1/groups/web/failover", {"to": "web-b"})
    await eventually(lambda: running.runner.state.last_failover is not None)
    document = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    schemas = document["components"]["schemas"]
    group = (await running.get("/v1/groups/web"))[1]
    record = (await running.get("/v1/history"))[1]["failovers"][0]
    for name, value in (("Group", group), ("Failover", record), ("Target", group["targets"][0]),
                        ("Check", group["targets"][0]["checks"][0]), ("Eip", group["eips"][0]),
                        ("Policy", group["policy"]), ("Decision", group["decision"])):
        assert set(value) == set(schemas[name]["properties"]), name
        assert set(schemas[name]["required"]) <= set(value), name


async def test_cli_clients(running: Running, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    data = config_data(running.ec2, running.servers, running.token_file)
    data["api"]["listen"] = f"127.0.0.1:{running.daemon.api_port}"
    config.write_text(yaml.safe_dump(data))

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "eipfailover", *args, "-c", str(config),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await cli("status")
    assert code == 0
    assert out.splitlines()[0] == "web: active web-a (on_target); decision none (active_healthy)"
    assert " *web-a  up " in out
    code, out, _ = await cli("status", "--json")
    assert json.loads(out)[0]["active_target"] == "web-a"

    code, out, _ = await cli("maintenance", "web", "on")
    assert (code, out.strip()) == (0, "web: maintenance on")
    assert (await running.get("/v1/groups/web"))[1]["maintenance"] is True
    code, out, _ = await cli("maintenance", "web", "off")
    assert (code, out.strip()) == (0, "web: maintenance off")
    assert (await running.get("/v1/groups/web"))[1]["maintenance"] is False

    code, out, err = await cli("failover", "web", "--to", "web-b", "--reason", "drill")
    assert code == 0, err
    assert " manual web-a -> web-b: success in " in out.splitlines()[-1]
    assert running.ec2.holder()["InstanceId"] == running.ec2.instance_b

    code, _, err = await cli("failover", "web", "--to", "web-b")
    assert code == 1
    assert "the EIPs are already on that target (manual_already_active, HTTP 409)" in err
    code, _, err = await cli("failover", "nope")
    assert code == 2
    assert "no group named 'nope' (unknown_group, HTTP 404)" in err
    code, _, err = await cli("status", "--api", "http://127.0.0.1:9")
    assert code == 1
    assert "cannot reach the daemon at http://127.0.0.1:9" in err
