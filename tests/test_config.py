"""Config loading: the example is valid, every kind of mistake is reported with its key path, all at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from eipfailover.config import load_config, parse_config
from eipfailover.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "eipfailover.example.yaml"


def minimal(**group: Any) -> dict[str, Any]:
    g: dict[str, Any] = {
        "name": "web", "provider": "aws", "eips": ["eipalloc-1"],
        "targets": [
            {"name": "a", "binding": {"instance_id": "i-a"}, "checks": [{"type": "tcp", "host": "h", "port": 1}]},
            {"name": "b", "binding": {"instance_id": "i-b"}, "checks": [{"type": "tcp", "host": "h", "port": 2}]},
        ],
    }
    g.update(group)
    return {"providers": {"aws": {"type": "aws", "region": "us-east-1"}}, "groups": [g]}


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_example_is_valid_and_documents_every_key() -> None:
    config = load_config(EXAMPLE)
    group = config.groups[0]
    assert group.policy.detection_seconds == 3.0  # (fall-1) * fast_interval (1s: timeout, above interval/4) + timeout
    assert [t.name for t in group.targets] == ["web-a", "web-b"]
    assert [c.type for c in group.targets[0].checks] == ["http", "tcp", "instance"]
    text = EXAMPLE.read_text()
    for model in (type(config.log), type(config.api), type(config.providers["aws-main"]), type(group),
                  type(group.policy), type(group.hooks), type(group.targets[0].binding)):
        for key in model.model_fields:
            assert f"{key}:" in text, f"{model.__name__}.{key} is not documented in the example"


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    assert load_config(path).groups


def test_defaults_are_safe() -> None:
    policy = parse_config(minimal()).groups[0].policy
    assert (policy.interval, policy.timeout, policy.rise, policy.fall) == (2.0, 1.0, 3, 3)
    assert (policy.failback, policy.cooldown) == ("manual", 60.0)


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("1s", 1.0), ("2m", 120.0), ("1h", 3600.0),
                                               (3, 3.0), ("1.5s", 1.5), (0.5, 0.5)])
def test_durations(text: Any, seconds: float) -> None:
    cfg = parse_config(minimal(policy={"interval": "2h", "timeout": text}))
    assert cfg.groups[0].policy.timeout == seconds


@pytest.mark.parametrize(("group", "expected"), [
    ({"policy": {"interval": "1s", "timeout": "1s"}}, "groups[0].policy.timeout: must be below interval (1s >= 1s)"),
    ({"policy": {"interval": "fast"}}, "groups[0].policy.interval: invalid duration 'fast'"),
    ({"policy": {"interval": -1}}, "groups[0].policy.interval: Input should be greater than 0"),
    ({"policy": {"failback": "sometimes"}}, "groups[0].policy.failback: Input should be 'manual' or 'auto'"),
    ({"policy": {"rise": 0}}, "groups[0].policy.rise: Input should be greater than or equal to 1"),
    ({"provider": "gcp"}, "groups[0].provider: unknown provider 'gcp' (known: aws)"),
    ({"eips": []}, "groups[0].eips: List should have at least 1 item"),
    ({"eips": ["e", "e"]}, "groups[0].eips[1]: 'e' is listed twice"),
    ({"targets": []}, "groups[0].targets: List should have at least 2 items"),
    ({"colour": "red"}, "groups[0].colour: unknown key"),
    ({"name": "bad name!"}, "groups[0].name: String should match pattern"),
])
def test_group_errors(group: dict[str, Any], expected: str) -> None:
    found = problems(minimal(**group))
    assert any(p.startswith(expected) for p in found), found


def target(name: str, binding: dict[str, Any], *checks: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "binding": binding, "checks": list(checks) or [{"type": "tcp", "host": "h", "port": 1}]}


@pytest.mark.parametrize(("targets", "expected"), [
    ([target("a", {"instance_id": "i-a"}), target("a", {"instance_id": "i-b"})],
     "groups[0].targets[1].name: duplicate target name 'a'"),
    ([target("a", {"instance_id": "i-a"}), target("b", {})],
     "groups[0].targets[1].binding: an aws binding needs exactly one of instance_id or network_interface_id"),
    ([target("a", {"instance_id": "i-a", "network_interface_id": "eni-1"}), target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].binding: an aws binding needs exactly one"),
    ([target("a", {"instance_id": "i-a", "private_ip": "10.0.0.1"}), target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].binding.private_ip: private_ip goes with network_interface_id only"),
    ([target("a", {"network_interface_id": "eni-1", "private_ip": "10.0.0.300"}), target("b", {"instance_id": "i"})],
     "groups[0].targets[0].binding.private_ip: "),
    ([target("a", {"instance_id": "i-a"}, {"type": "tcp", "host": "h", "port": 70000}),
      target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[0].port: Input should be less than or equal to 65535"),
    ([target("a", {"instance_id": "i-a"}, {"type": "ping"}), target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[0]: Input tag 'ping' found using 'type' does not match any of the expected tags"),
    ([target("a", {"instance_id": "i-a"}, {"type": "http", "url": "ftp://x"}), target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[0].url: expected an http:// or https:// URL, got 'ftp://x'"),
    ([target("a", {"instance_id": "i-a"}, {"type": "http", "url": "http://x:99999/h"}),
      target("b", {"instance_id": "i"})],
     "groups[0].targets[0].checks[0].url: Port out of range 0-65535 in 'http://x:99999/h'"),
    ([target("a", {"instance_id": "i-a"}, {"type": "http", "url": "http://h", "headers": {"X": "a\r\nB: 1"}}),
      target("b", {"instance_id": "i"})],
     "groups[0].targets[0].checks[0].headers: the value of header 'X' holds a line break or NUL"),
    ([target("a", {"instance_id": "i-a"}, {"type": "http", "url": "http://h", "headers": {"Bad Name": "x"}}),
      target("b", {"instance_id": "i"})],
     "groups[0].targets[0].checks[0].headers: invalid header name 'Bad Name'"),
    ([target("a", {"instance_id": "i-a"}, {"type": "http", "url": "http://[::1/h"}), target("b", {"instance_id": "i"})],
     "groups[0].targets[0].checks[0].url: Invalid IPv6 URL in 'http://[::1/h'"),
    ([target("a", {"instance_id": "i-a"}, {"type": "http", "url": "http://x", "body_regex": "("}),
      target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[0].body_regex: invalid regular expression"),
    ([target("a", {"instance_id": "i-a"}, {"type": "exec", "argv": []}), target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[0].argv: List should have at least 1 item"),
    ([target("a", {"instance_id": "i-a"}, {"type": "tcp", "host": "h", "port": 1},
             {"type": "tcp", "host": "h", "port": 2}), target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[1].name: duplicate check name 'tcp'"),
    ([target("a", {"instance_id": "i-a"}, {"type": "tcp", "host": "h", "port": 1, "timeout": "5s"}),
      target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[0].timeout: must be below policy.interval"),
    ([target("a", {"instance_id": "i-a"}, {"type": "tcp", "host": "h", "port": 1, "bogus": True}),
      target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[0].bogus: unknown key"),
    ([target("a", {"instance_id": "i-a"}, {"type": "instance", "host": "h"}), target("b", {"instance_id": "i-b"})],
     "groups[0].targets[0].checks[0].host: unknown key"),
])
def test_target_errors(targets: list[dict[str, Any]], expected: str) -> None:
    found = problems(minimal(targets=targets))
    assert any(p.startswith(expected) for p in found), found


def test_top_level_errors_are_all_reported_at_once() -> None:
    data = minimal(provider="nope", eips=["e", "e"], policy={"interval": "1s", "timeout": "2s"})
    data["providers"]["other"] = {"type": "gcp", "region": "x"}
    data["groups"].append(dict(data["groups"][0]))
    data["api"] = {"listen": "localhost"}
    data["extra"] = 1
    found = problems(data)
    for expected in ("providers.other: Input tag 'gcp' found using 'type' does not match any of the expected tags: "
                     "'aws', 'alibaba'",
                     "api.listen: expected HOST:PORT",
                     "extra: unknown key",
                     "groups[0].provider: unknown provider 'nope'",
                     "groups[0].eips[1]: 'e' is listed twice",
                     "groups[0].policy.timeout: must be below interval",
                     "groups[1].provider: unknown provider 'nope'"):
        assert any(p.startswith(expected) for p in found), (expected, found)


def test_duplicate_group_names() -> None:
    data = minimal()
    data["groups"].append(dict(data["groups"][0]))
    assert problems(data) == ["groups[1].name: duplicate group name 'web'"]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_an_eip_in_two_groups_is_refused_naming_it_and_both_groups(tmp_path: Path, command: str) -> None:
    data = minimal(eips=["eipalloc-1", "eipalloc-2"])
    data["groups"].append({**data["groups"][0], "name": "api", "eips": ["eipalloc-3", "eipalloc-1"]})
    assert problems(data) == ["groups[1].eips[1]: 'eipalloc-1' is in groups 'web' and 'api': an EIP belongs to "
                              "one group"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    result = cli(command, "-c", str(path))
    assert result.returncode == 2
    assert "groups[1].eips[1]: 'eipalloc-1' is in groups 'web' and 'api'" in result.stderr


def test_program_environments_are_validated() -> None:
    data = minimal(hooks={"on_failover": ["/bin/true"], "env": {"BAD NAME": "x"}})
    assert problems(data)[0].startswith("groups[0].hooks.env.BAD NAME")


@pytest.mark.parametrize(("text", "expected"), [
    ("groups: [", "invalid YAML: line 1, column 10: expected the node content, but found '<stream end>'"),
    ("- just\n- a list\n", "(top level): expected a mapping of keys"),
    ("", "(top level): expected a mapping of keys"),
    ("providers: {}\ngroups: []\n", "providers: Dictionary should have at least 1 item"),
])
def test_file_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(expected), info.value.problems


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.problems == ["cannot read the file: No such file or directory"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eipfailover", *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **(env or {})})


def test_check_config_ok() -> None:
    result = cli("check-config", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "group web: 2 targets, 1 EIP(s), detection within 3s" in result.stdout
    assert result.stdout.rstrip().endswith(": OK")


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_broken_config_exits_2_naming_the_key(tmp_path: Path, command: str) -> None:
    data = minimal(targets=[target("a", {"instance_id": "i-a"}, {"type": "tcp", "host": "h", "port": "https"}),
                            target("b", {"instance_id": "i-b"})])
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    result = cli(command, "-c", str(path))
    assert result.returncode == 2
    assert "groups[0].targets[0].checks[0].port: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_usage_error_exits_2() -> None:
    result = cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def clustered(**cluster: Any) -> dict[str, Any]:
    return {**minimal(), "cluster": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"], **cluster}}


def test_cluster_defaults_and_every_key_documented() -> None:
    cluster = parse_config(clustered()).cluster
    assert cluster is not None
    assert (cluster.ttl, cluster.margin, cluster.prefix, cluster.quorum) == (10.0, 1.0, "/eipfailover", None)
    assert cluster.node  # the host name
    text = EXAMPLE.read_text()
    for key in type(cluster).model_fields:
        assert f"#   {key}:" in text or f"{key}:" in text, f"cluster.{key} is not documented in the example"


@pytest.mark.parametrize(("cluster", "expected"), [
    ({"endpoints": []}, "cluster.endpoints: List should have at least 1 item"),
    ({"endpoints": ["127.0.0.1:2379"]}, "cluster.endpoints[0]: invalid etcd endpoint '127.0.0.1:2379'"),
    ({"endpoints": ["http://h:99999"]}, "cluster.endpoints[0]: invalid etcd endpoint 'http://h:99999'"),
    ({"endpoints": ["http://h:2379/v3"]}, "no path, query or fragment"),
    ({"ttl": "1s"}, "cluster.ttl: Input should be greater than or equal to 2"),
    ({"ttl": "5s"}, "cluster.ttl: must exceed provider 'aws''s longest cloud call (7s: connect_timeout + "
                    "read_timeout)"),
    ({"quorum": 0}, "cluster.quorum: Input should be greater than or equal to 1"),
    ({"node": "a b"}, "cluster.node: String should match pattern"),
    ({"prefix": "eipfailover"}, "cluster.prefix: String should match pattern"),
    ({"username": "u"}, "cluster.username: username and password_file go together"),
    ({"tls": {"ca_file": "/ca", "cert_file": "/c"}}, "cluster.tls.cert_file: cert_file and key_file go together"),
    ({"advertise_api": "10.0.0.1:9797"}, "cluster.advertise_api: invalid API URL"),
    ({"type": "consul"}, "cluster.type: Input should be 'etcd'"),
    ({"tls": {"ca_file": "/ca"}}, "cluster.tls: no endpoint is https://: the TLS settings would go unused"),
])
def test_cluster_errors(cluster: dict[str, Any], expected: str) -> None:
    found = problems(clustered(**cluster))
    assert any(expected in line for line in found), found


def test_an_unknown_event_loop_in_the_environment_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    result = cli("run", "-c", str(path), env={"EIPFAILOVER_LOOP": "trio"})
    assert (result.returncode, result.stderr) == (2, "eipfailover: unknown event loop 'trio' (asyncio or uvloop)\n")
