"""The API at its edges: half-sent and split requests, connection floods, malformed credentials, 405s, TLS, the
separate metrics listener, manual requests against an unreadable cloud, request bursts, the CLI and proxies, and
schemathesis against the live API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
import trustme
import yaml
from aiohttp import web
from schemathesis.engine import Status, events, from_schema

from eipfailover import api, serve
from eipfailover.cluster.base import ClusterStatus
from eipfailover.daemon import Daemon
from eipfailover.providers.aws import AwsProvider

from .api_daemon import TOKEN, Running, config_data, daemon_on, reload, running_daemon
from .conftest import Ec2World, HealthServer, eventually
from .ec2_faults import Faults

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def running(ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    monkeypatch.setattr(serve, "HEAD_TIMEOUT", 1.0)
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 8)
    monkeypatch.setattr(api, "BODY_TIMEOUT", 1.0)
    async with running_daemon(ec2, health_servers, tmp_path) as r:
        yield r


async def raw(running: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert running.daemon.api_port is not None
    return await asyncio.open_connection("127.0.0.1", running.daemon.api_port)


def head(method: str, path: str, *, length: int | None = None, auth: bytes = b"Bearer " + TOKEN.encode()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Authorization: " + auth]
    if length is not None:
        lines += [b"Content-Type: application/json", f"Content-Length: {length}".encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    data = await reader.read()
    return int(status_line.split()[1]), data


async def test_a_body_split_over_two_tcp_writes_is_read_whole(running: Running) -> None:
    body = b'{"enabled": true}'
    reader, writer = await raw(running)
    writer.write(head("POST", "/v1/groups/web/maintenance", length=len(body)) + body[:7])
    await writer.drain()
    await asyncio.sleep(0.2)  # the server reads the first part on its own before the rest is sent
    writer.write(body[7:])
    writer.write_eof()
    status, data = await answer(reader)
    writer.close()
    assert status == 200, data
    assert running.runner.state.maintenance is True


async def test_a_half_sent_request_head_is_closed_after_the_head_timeout(running: Running) -> None:
    reader, writer = await raw(running)
    writer.write(b"POST /v1/groups/web/maintenance HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server (HEAD_TIMEOUT is 1 s here)
    writer.close()


async def test_a_body_that_never_arrives_is_a_408(running: Running) -> None:
    reader, writer = await raw(running)
    writer.write(head("POST", "/v1/groups/web/maintenance", length=100) + b'{"enabled"')
    await writer.drain()
    status, data = await asyncio.wait_for(answer(reader), 5)
    writer.close()
    assert status == 408
    assert b'"error": "request_timeout"' in data


async def test_connections_beyond_the_cap_get_a_503_and_are_closed(running: Running) -> None:
    held = [await raw(running) for _ in range(8)]  # MAX_CONNECTIONS is 8 here; these send nothing yet
    reader, writer = await raw(running)
    status, data = await asyncio.wait_for(answer(reader), 5)
    assert (status, b'"too_many_connections"' in data) == (503, True)
    writer.close()
    for _, w in held:
        w.close()
    async def served() -> bool:
        return (await running.get("/healthz"))[0] == 200

    await eventually(served)


@pytest.mark.parametrize("auth", [b"Bearer \xff\xfe", b"Bearer " + TOKEN.encode() + b"\xc3", b"\x80", b""])
async def test_a_malformed_credential_is_a_401(running: Running, auth: bytes) -> None:
    body = b'{"enabled": true}'
    reader, writer = await raw(running)
    writer.write(head("POST", "/v1/groups/web/maintenance", length=len(body), auth=auth) + body)
    status, data = await asyncio.wait_for(answer(reader), 5)
    writer.close()
    assert status == 401, data
    assert b'"error": "unauthorized"' in data
    assert running.runner.state.maintenance is False


async def test_a_405_says_what_is_allowed(running: Running) -> None:
    async with running.session.delete(running.url + "/v1/groups/web") as response:
        assert response.status == 405
        assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
        assert (await response.json())["error"] == "method_not_allowed"


async def test_a_burst_of_requests_makes_the_engine_do_no_cloud_io(running: Running) -> None:
    """The API records intents and decides; it never makes the engine run checks or read the cloud."""
    before = await running.scrape()
    rounds, started = running.runner.ticks, asyncio.get_running_loop().time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=6)) as session:  # below the cap of 8
        burst = Running(running.daemon, running.url, running.ec2, running.servers, session, running.token_file)
        for round_ in range(5):
            replies = await asyncio.gather(*(burst.post("/v1/groups/web/maintenance", {"enabled": i % 2 == 0})
                                             for i in range(60)))
            assert {status for status, _ in replies} == {200}, round_
            assert (await burst.get("/healthz"))[0] == 200
    elapsed = asyncio.get_running_loop().time() - started
    after = await running.scrape()
    key = ("eipfailover_provider_requests_total", (("operation", "DescribeAddresses"), ("provider", "moto"),
                                                   ("result", "ok")))
    describes = after[key] - before[key]
    budget = elapsed / 0.5 + 2  # one read per interval (500 ms), whatever the requests
    assert describes <= budget, (describes, elapsed)
    assert running.runner.ticks - rounds <= budget


async def test_manual_failover_against_an_unreadable_cloud_needs_force(running: Running) -> None:
    provider = running.runner.provider
    assert isinstance(provider, AwsProvider)
    faults = Faults()
    faults.script["DescribeAddresses"] = [(403, "UnauthorizedOperation")] * 10_000
    provider.client.meta.events.register("before-send.ec2", faults)
    await eventually(lambda: running.runner.state.cloud.error is not None)
    status, body = await running.post("/v1/groups/web/failover", {"to": "web-b"})
    assert (status, body["error"]) == (409, "cloud_unknown")
    assert running.ec2.holder()["InstanceId"] == running.ec2.instance_a
    status, body = await running.post("/v1/groups/web/failover", {"to": "web-b", "force": True})
    assert status == 202, body
    await eventually(lambda: running.ec2.holder()["InstanceId"] == running.ec2.instance_b)
    # the daemon could not verify it (the cloud is unreadable): the EIP counts as at risk until a read shows it
    await eventually(lambda: running.runner.state.current is None)
    assert running.runner.state.left_detached == (running.ec2.eip,)
    faults.script.clear()
    await eventually(lambda: not running.runner.state.left_detached)
    assert running.runner.state.cloud.active == "web-b"


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = (tmp_path / "api.crt", tmp_path / "api.key", tmp_path / "ca.crt")
    cert.cert_chain_pems[0].write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[1]))
    ca.cert_pem.write_to_path(str(paths[2]))
    return paths


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eipfailover", *args], capture_output=True, text=True, timeout=60,
                          check=False, env=env)


async def test_the_api_over_tls_with_a_separate_metrics_listener(ec2: Ec2World, health_servers: list[HealthServer],
                                                                 tmp_path: Path,
                                                                 tls_files: tuple[Path, Path, Path]) -> None:
    cert, key, ca = tls_files

    def edit(data: dict[str, Any]) -> None:
        data["api"].update(tls={"cert_file": str(cert), "key_file": str(key), "ca_file": str(ca)},
                           metrics_listen="127.0.0.1:0")

    trust = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session, \
            running_daemon(ec2, health_servers, tmp_path, edit, session, scheme="https") as r:
        assert (await r.get("/v1/groups/web"))[0] == 200
        assert (await r.post("/v1/groups/web/maintenance", {"enabled": True}))[0] == 200
        metrics = f"https://127.0.0.1:{r.daemon.metrics_port}"
        async with session.get(metrics + "/metrics") as response:
            assert response.status == 200
            assert "eipfailover_target_up" in await response.text()
        async with session.get(metrics + "/readyz") as response:
            assert response.status == 200
        for method, path in (("POST", "/v1/groups/web/failover"), ("GET", "/v1/groups")):
            async with session.request(method, metrics + path) as response:
                assert response.status == 404  # the changes and the status stay on the main listener
        # the CLI takes the URL and the CA from the config
        data = config_data(ec2, health_servers, r.token_file)
        edit(data)
        data["api"]["listen"] = f"127.0.0.1:{r.daemon.api_port}"
        config = tmp_path / "cli.yaml"
        config.write_text(yaml.safe_dump(data))
        result = await asyncio.to_thread(cli, "status", "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert "MAINTENANCE" in result.stdout
        untrusted = await asyncio.to_thread(cli, "status", "--api", r.url)  # the system's CAs do not know it
        assert untrusted.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        assert "Traceback" not in untrusted.stderr


async def test_tls_files_that_cannot_be_used_stop_the_start(ec2: Ec2World, health_servers: list[HealthServer],
                                                            tmp_path: Path) -> None:
    data = config_data(ec2, health_servers, None)
    data["api"]["tls"] = {"cert_file": str(tmp_path / "missing.crt"), "key_file": str(tmp_path / "missing.key")}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    result = await asyncio.to_thread(cli, "run", "-c", str(config))
    assert result.returncode == 2
    assert "api.tls: No such file or directory" in result.stdout


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP proxy that records what it is asked and answers 502."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.url} {request.headers.get('Authorization', '')}")
        return web.Response(status=502, text="proxy says no")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


async def test_the_cli_never_sends_the_token_through_a_proxy_unless_told(running: Running,
                                                                        proxy: tuple[str, list[str]]) -> None:
    url, seen = proxy
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(http_proxy=url, HTTP_PROXY=url, https_proxy=url)
    args = ("maintenance", "web", "on", "--api", running.url, "--token-file", str(running.token_file))
    result = await asyncio.to_thread(cli, *args, env=env)
    assert result.returncode == 0, result.stderr
    assert seen == []
    told = await asyncio.to_thread(cli, *args, "--proxy", url, env=env)
    assert told.returncode == 1
    assert seen == [f"POST {running.url}/v1/groups/web/maintenance Bearer {TOKEN}"]


def openapi_run(token: str, seed: int) -> Any:
    """Schemathesis on docs/openapi.yaml, 25 examples per operation, sending ``token``."""
    return schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml", config=schemathesis.Config.from_dict({
        "seed": seed,
        "continue-on-failure": True,
        "generation": {"max-examples": 25, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "auth": {"openapi": {"bearer": {"bearer": token}}},
        "parameters": {"name": "web"},
    }))


SCHEMA = openapi_run(TOKEN, 1)


def fuzz(base_url: str, schema: Any = SCHEMA) -> list[str]:
    schema.config.update(base_url=base_url)
    found = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.status == Status.FAILURE:
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.failure_info is not None:
                        failure = node.failure_info.failure
                        found.append(f"[{event.phase}] {event.label}: {failure.code} {failure.title}: "
                                     f"{failure.message}\n    {node.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            found.append(f"error {event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return sorted(set(found))


async def test_schemathesis_finds_nothing_against_the_live_api(running: Running) -> None:
    failures = await asyncio.to_thread(fuzz, running.url)
    assert not failures, "\n".join(failures)


WRONG_TOKEN_SCHEMA = openapi_run("not-the-token", 2)


async def test_schemathesis_with_a_wrong_token_changes_nothing(running: Running) -> None:
    """Every generated request with a wrong token is answered as documented, and none changes anything: no
    maintenance, no failover, the EIP where it was."""
    before = running.ec2.holder()["InstanceId"]
    failures = await asyncio.to_thread(fuzz, running.url, WRONG_TOKEN_SCHEMA)
    assert not failures, "\n".join(failures)
    assert (running.runner.state.maintenance, running.runner.state.last_failover) == (False, None)
    _, history = await running.get("/v1/history")
    assert history["failovers"] == []
    assert running.ec2.holder()["InstanceId"] == before


async def test_a_refused_manual_request_is_recorded_as_skipped(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """A request the API refuses (409) is counted as skipped and kept in the history, like one the engine refuses."""
    async with running_daemon(ec2, health_servers, tmp_path) as r:
        status, body = await r.post("/v1/groups/web/failover", {"to": "web-a", "reason": "just checking"})
        assert (status, body["error"]) == (409, "manual_already_active")
        samples = await r.scrape()
        key = ("eipfailover_failovers_total", (("group", "web"), ("result", "skipped"), ("trigger", "manual")))
        assert samples[key] == 1.0, "a refused manual request is not counted as skipped"
        (record,) = (await r.get("/v1/history"))[1]["failovers"]
        assert (record["result"], record["error"], record["reason"]) == (
            "skipped", "refused: manual_already_active", "just checking")


@contextlib.asynccontextmanager
async def daemon_from_file(ec2: Ec2World, servers: list[HealthServer], tmp_path: Path,
                           ) -> AsyncIterator[tuple[Daemon, Path, dict[str, Any], str]]:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN)
    data = config_data(ec2, servers, token_file)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    async with daemon_on(path) as daemon:
        assert daemon.engine is not None
        engine = daemon.engine
        await eventually(lambda: all(t.health.state == "up" for t in engine.runners["web"].targets.values()))
        yield daemon, path, data, f"http://127.0.0.1:{daemon.api_port}"


async def slow_body(first: bytes, rest: bytes, gate: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await gate.wait()
    yield rest


async def post_across_a_reload(daemon: Daemon, path: Path, data: dict[str, Any], url: str, first: bytes,
                               rest: bytes) -> tuple[int, Any]:
    """POST ``first``, reload the config with web changed (so its runner is replaced) while the handler waits for
    the rest of the body, then send ``rest``: the answer."""
    assert daemon.engine is not None
    engine = daemon.engine
    gate = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        post = asyncio.create_task(session.post(
            url, data=slow_body(first, rest, gate),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}))
        await asyncio.sleep(0.3)  # the handler waits for the rest of the body
        old = engine.runners["web"]
        data["groups"][0]["policy"]["cooldown"] = "31s"
        await reload(daemon, path, data)
        await eventually(lambda: engine.runners["web"] is not old, 5)
        gate.set()
        async with await post as response:
            return response.status, await response.json()


async def test_maintenance_posted_across_a_reload_reaches_the_group_that_runs(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """A POST whose body is still arriving when a reload replaces the group acts on the group that runs then."""
    async with daemon_from_file(ec2, health_servers, tmp_path) as (daemon, path, data, url):
        answer = await post_across_a_reload(daemon, path, data, url + "/v1/groups/web/maintenance", b'{"enabled":',
                                            b" true}")
        assert answer == (200, {"group": "web", "maintenance": True})
        assert daemon.engine is not None
        assert daemon.engine.runners["web"].state.maintenance is True, \
            "the API said maintenance is on; the group runs off"


async def test_a_failover_posted_across_a_reload_is_decided_by_the_group_that_runs(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """The same for a manual failover: it is decided by the group that runs, and carried out."""
    async with daemon_from_file(ec2, health_servers, tmp_path) as (daemon, path, data, url):
        answer = await post_across_a_reload(daemon, path, data, url + "/v1/groups/web/failover", b'{"to":',
                                            b' "web-b"}')
        assert answer[0] == 202, answer
        await eventually(lambda: ec2.holder()["InstanceId"] == ec2.instance_b)


async def test_tls_connections_that_never_handshake_are_capped_and_timed_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With TLS, connections are counted and timed from their first byte: ones that never send a ClientHello are
    refused beyond the cap and closed after the head timeout, like silent plain-HTTP ones."""
    monkeypatch.setattr(serve, "HEAD_TIMEOUT", 1.0)
    ca = trustme.CA()
    pem, ca_file = tmp_path / "c.pem", tmp_path / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_file))
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = serve.app_runner(app)
    await runner.setup()
    site = serve.CappedSite(runner, "127.0.0.1", 0, ssl_context=serve.server_tls(pem, pem), max_connections=4)
    await site.start()
    port = runner.addresses[0][1]
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    try:
        await asyncio.sleep(3)  # three head timeouts
        still_open = 0
        for reader, _ in conns:
            try:
                await asyncio.wait_for(reader.read(), 0.05)
            except TimeoutError:
                still_open += 1
        assert still_open == 0, f"{still_open}/20 silent TLS connections open after 3 s (cap 4, head timeout 1 s)"
        async with aiohttp.ClientSession() as session:  # and the listener still serves
            trust = ssl.create_default_context(cafile=str(ca_file))
            async with session.get(f"https://127.0.0.1:{port}/", ssl=trust) as response:
                assert (response.status, await response.text()) == (200, "hi")
    finally:
        for _, writer in conns:
            writer.close()
        await runner.cleanup()


async def test_a_repair_refused_by_the_cloud_is_not_retried_as_fast_as_the_cloud_answers(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """The EIP is detached and the preferred target's instance ID has a typo (its health endpoint answers, so it
    is UP): repairs to it fail for good. They neither hammer the cloud nor leave the EIP detached: each failed
    repair tries the other healthy target, and the next one waits (repair_backoff)."""
    ec2.client.disassociate_address(AssociationId=ec2.holder()["AssociationId"])

    def edit(data: dict[str, Any]) -> None:
        data["groups"][0]["targets"][0]["binding"]["instance_id"] = "i-0123456789abcdef0"  # a typo

    async with aiohttp.ClientSession() as session, running_daemon(ec2, health_servers, tmp_path, edit, session) as r:
        await asyncio.sleep(3.0)
        metrics = await r.scrape()
        calls = sum(v for (name, labels), v in metrics.items()
                    if name == "eipfailover_provider_requests_total" and ("operation", "AssociateAddress") in labels)
        failures = sum(v for (name, labels), v in metrics.items()
                       if name == "eipfailover_failovers_total" and ("result", "failure") in labels)
        _, history = await r.get("/v1/history?limit=1000")
    assert calls <= 6, (f"{calls:.0f} AssociateAddress calls and {failures:.0f} failed failovers in ~3 s (interval "
                        f"500 ms); history holds {len(history['failovers'])} records")
    assert ec2.holder().get("InstanceId") == ec2.instance_b


async def test_a_detached_eip_whose_repair_target_refuses_it_goes_to_the_other_healthy_target(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """The same world: the repair to web-a fails, and the EIP goes to web-b (healthy) in the same failover."""
    ec2.client.disassociate_address(AssociationId=ec2.holder()["AssociationId"])

    def edit(data: dict[str, Any]) -> None:
        data["groups"][0]["targets"][0]["binding"]["instance_id"] = "i-0123456789abcdef0"

    async with aiohttp.ClientSession() as session, running_daemon(ec2, health_servers, tmp_path, edit, session) as r:
        await eventually(lambda: ec2.holder().get("InstanceId") == ec2.instance_b, 10)
        (record, *_) = (await r.get("/v1/history"))[1]["failovers"]
    assert record["result"] == "failure"
    assert record["error"].endswith(f"re-attached {ec2.eip} to {ec2.instance_b}")


async def test_the_leader_that_cannot_act_this_instant_answers_503_not_a_409_naming_itself(running: Running) -> None:
    """In a cluster, a change sent to the leader while it cannot act (its lease within the margin of lapsing, being
    renewed) is a 503 ``not_acting`` to retry; a 409 ``not_leader`` naming this very daemon would send the CLI back
    here. Another daemon leading: 409 naming it."""
    from .test_coordination import ScriptedCoordinator

    engine = running.daemon.engine
    assert engine is not None
    coordinator = engine.coordinator = ScriptedCoordinator()
    coordinator.leading = False  # it leads (status says so) but acting() is false
    for path, body in (("/v1/groups/web/failover", {}), ("/v1/groups/web/maintenance", {"enabled": True})):
        status, answer = await running.post(path, body)
        assert (status, answer["error"]) == (503, "not_acting"), (path, answer)
    assert running.runner.state.maintenance is False
    other = ClusterStatus("n1", "n2", "http://n2.example:9797", 7, (), "ok", False)
    coordinator.status = lambda: other  # type: ignore[method-assign]  # another daemon leads
    status, answer = await running.post("/v1/groups/web/failover", {})
    assert (status, answer["error"], answer["leader"]) == (409, "not_leader", "n2")
