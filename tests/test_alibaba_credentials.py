"""Alibaba credentials: the default chain (environment keys, STS keys with a token, a credentials URI) through the
daemon as a subprocess, a missing chain reported clearly, and a rotated key file picked up without a restart."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from eipfailover.demo import DaemonProcess
from eipfailover.model import Binding

from .conftest import HealthServer
from .fake_aliyun import ACCESS_KEY_ID, FakeAliyun, key_file, provider_for

CHAIN = ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN",
         "ALIBABA_CLOUD_CREDENTIALS_URI", "ALIBABA_CLOUD_CREDENTIALS_FILE", "ALIBABA_CLOUD_PROFILE",
         "ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
         "CREDENTIALS_DIRECTORY")


def chain_config(fake: FakeAliyun, servers: list[HealthServer], path: Path) -> Path:
    """A daemon config with no access_key_file: the credentials come from the default chain."""
    fake.add_eip("eip-1", "47.1.1.1")
    for instance in ("i-a", "i-b"):
        fake.add_resource(instance)
    fake.bind("eip-1", "i-a")
    path.write_text(yaml.safe_dump({
        "log": {"format": "json"}, "api": {"listen": "127.0.0.1:0"},
        "providers": {"ali": {"type": "alibaba", "region": fake.region, "endpoint": fake.endpoint,
                              "protocol": "http", "read_timeout": "1s", "connect_timeout": "1s"}},
        "groups": [{"name": "web", "provider": "ali", "eips": ["eip-1"],
                    "policy": {"interval": "500ms", "timeout": "250ms", "rise": 2, "fall": 2},
                    "targets": [{"name": n, "binding": {"instance_id": i}, "checks": [{"type": "http", "url": s.url}]}
                                for n, i, s in (("web-a", "i-a", servers[0]), ("web-b", "i-b", servers[1]))]}],
    }))
    return path


def chain_env(home: Path, **chain: str) -> dict[str, str]:
    """The test environment without any credential the chain could find, plus ``chain``."""
    env = {k: v for k, v in os.environ.items() if k not in CHAIN}
    home.mkdir(exist_ok=True)  # an empty HOME: no ~/.aliyun/config.json, no ~/.alibabacloud/credentials.ini
    return {**env, "HOME": str(home), "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true", **chain}


async def readyz(proc: DaemonProcess) -> tuple[int, dict[str, Any]]:
    address = next(e["address"] for _, e in proc.events if e["event"] == "api_listening")
    async with aiohttp.ClientSession() as session, session.get(f"http://{address}/readyz") as response:
        return response.status, await response.json()


async def reads_the_cloud(fake: FakeAliyun, config: Path, env: dict[str, str]) -> DaemonProcess:
    proc = DaemonProcess(config, env, lambda at, event: None)
    await proc.start()
    await proc.wait_for("eips_located", 30, placement="on_target", target="web-a")
    await proc.wait_for("daemon_ready", 10)
    return proc


async def test_keys_from_the_environment(fake: FakeAliyun, health_servers: list[HealthServer],
                                         tmp_path: Path) -> None:
    fake.add_key("LTAIenvironmentKey", "environment-secret")
    config = chain_config(fake, health_servers, tmp_path / "c.yaml")
    env = chain_env(tmp_path / "home", ALIBABA_CLOUD_ACCESS_KEY_ID="LTAIenvironmentKey",
                    ALIBABA_CLOUD_ACCESS_KEY_SECRET="environment-secret")
    proc = await reads_the_cloud(fake, config, env)
    try:
        assert (await readyz(proc))[0] == 200
        assert proc.count("cloud_read_failed") == 0
    finally:
        assert await proc.stop() == 0


@pytest.mark.parametrize("token", ["the-right-token", "a-stale-token"])
async def test_sts_keys_with_a_security_token(fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path,
                                              token: str) -> None:
    fake.add_key("STS.temporaryKey", "temporary-secret", token="the-right-token")
    config = chain_config(fake, health_servers, tmp_path / "c.yaml")
    env = chain_env(tmp_path / "home", ALIBABA_CLOUD_ACCESS_KEY_ID="STS.temporaryKey",
                    ALIBABA_CLOUD_ACCESS_KEY_SECRET="temporary-secret", ALIBABA_CLOUD_SECURITY_TOKEN=token)
    if token == "the-right-token":
        proc = await reads_the_cloud(fake, config, env)
        assert await proc.stop() == 0
        return
    proc = DaemonProcess(config, env, lambda at, event: None)
    await proc.start()
    try:  # the fake really checks the token: a wrong one is refused with the cloud's code
        await proc.wait_for("cloud_read_failed", 30, code="InvalidSecurityToken.MismatchWithAccessKey")
    finally:
        assert await proc.stop() == 0


@pytest.fixture
async def credentials_uri() -> AsyncIterator[tuple[str, list[str]]]:
    """A credentials endpoint (the chain's ALIBABA_CLOUD_CREDENTIALS_URI) serving STS keys, like a sidecar would."""
    served: list[str] = []

    async def credentials(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.json_response({"Code": "Success", "AccessKeyId": "STS.fromUri", "AccessKeySecret": "uri-secret",
                                  "SecurityToken": "uri-token", "Expiration": "2099-01-01T00:00:00Z"})

    app = web.Application()
    app.router.add_get("/credentials", credentials)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/credentials", served
    await runner.cleanup()


async def test_sts_keys_from_a_credentials_uri(fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path,
                                               credentials_uri: tuple[str, list[str]]) -> None:
    url, served = credentials_uri
    fake.add_key("STS.fromUri", "uri-secret", token="uri-token")
    config = chain_config(fake, health_servers, tmp_path / "c.yaml")
    proc = await reads_the_cloud(fake, config, chain_env(tmp_path / "home", ALIBABA_CLOUD_CREDENTIALS_URI=url))
    try:
        assert served  # the keys came from the endpoint
    finally:
        assert await proc.stop() == 0


async def test_no_credentials_anywhere_is_a_clear_and_loud_error(fake: FakeAliyun,
                                                                  health_servers: list[HealthServer],
                                                                  tmp_path: Path) -> None:
    config = chain_config(fake, health_servers, tmp_path / "c.yaml")
    proc = DaemonProcess(config, chain_env(tmp_path / "home"), lambda at, event: None)
    await proc.start()
    try:
        failed_at = await proc.wait_for("cloud_read_failed", 30, code="NoCredentials")
        event = next(e for at, e in proc.events if at == failed_at)
        assert event["error"].startswith("Alibaba DescribeEipAddresses in cn-hangzhou: no usable Alibaba Cloud "
                                         "credentials: unable to load credentials from any of the providers")
        await proc.wait_for("daemon_ready", 10)  # READY=1 goes out (a restart loop helps nobody) ...
        status, body = await readyz(proc)  # ... but the daemon says it cannot do its job
        assert (status, body["error"]) == (503, "not_ready")
        assert body["groups"][0]["reason"].startswith("no successful cloud read yet: Alibaba DescribeEipAddresses "
                                                      "in cn-hangzhou: no usable Alibaba Cloud credentials")
        assert fake.log == []  # nothing unsigned was ever sent
    finally:
        assert await proc.stop() == 0
    assert not any("Traceback" in json.dumps(e) for _, e in proc.events)


async def test_a_rotated_key_file_is_used_without_a_restart(fake: FakeAliyun, tmp_path: Path) -> None:
    fake.add_eip("eip-1", "47.1.1.1")
    keys = key_file(tmp_path)
    provider = provider_for(fake, tmp_path, access_key_file=keys)
    assert (await provider.describe(["eip-1"]))["eip-1"].bound_to is None
    # the key is rotated: the old one is revoked, the file rewritten in place with the new one
    del fake.keys[ACCESS_KEY_ID]
    fake.add_key("LTAIrotatedKey", "rotated-secret")
    keys.write_text(json.dumps({"access_key_id": "LTAIrotatedKey", "access_key_secret": "rotated-secret"}))
    fake.add_resource("i-a")
    fake.bind("eip-1", "i-a")
    assert (await provider.describe(["eip-1"]))["eip-1"].bound_to == Binding(instance_id="i-a",
                                                                            instance_type="EcsInstance")
    assert fake.log[-1].action == "DescribeEipAddresses"
    # a half-written file keeps the last good key
    keys.write_text("{")
    assert (await provider.describe(["eip-1"]))["eip-1"].bound_to is not None
