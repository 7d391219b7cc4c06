"""Malformed configs, generated (hypothesis) and hand-made (deep nesting, alias bombs, huge and non-UTF-8 files):
every one is a :class:`ConfigError` whose problems each name a key path, never another exception, and never a
hang. The CLI exits 2 on them with no traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eipfailover.config import MAX_CONFIG_BYTES, load_config, parse_config
from eipfailover.errors import ConfigError

from .test_config import EXAMPLE, minimal

EXAMPLE_DATA: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                    st.sampled_from(["250ms", "1s", "-1s", "1x", "nan", "inf", "1e999", "0", "", "0.0.0.0:0",
                                     "10.0.0.1", "eni-1", "BINDED", "alibaba", "aws"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a parsed YAML document."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


EXAMPLE_PATHS = [p for p in paths(EXAMPLE_DATA) if p]


def mutate(data: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    """``data`` with the node at ``path`` replaced by ``value``, deleted, or given an extra ``value`` key."""
    data = copy.deepcopy(data)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "extra" and isinstance(parent[last], dict):
        parent[last]["unexpected_key"] = value
    else:
        parent[last] = value
    return data


def assert_clean(problems: list[str]) -> None:
    assert problems
    for line in problems:
        assert ": " in line, line  # "key.path: message"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(EXAMPLE_PATHS), action=st.sampled_from(["replace", "delete", "extra"]), value=VALUES)
def test_a_mutated_example_is_valid_or_a_config_error_naming_keys(path: tuple[Any, ...], action: str,
                                                                 value: Any) -> None:
    data = mutate(EXAMPLE_DATA, path, action, value)
    try:
        parse_config(data)
    except ConfigError as exc:
        assert_clean(exc.problems)


@settings(max_examples=200, deadline=None)
@given(document=VALUES)
def test_any_document_is_valid_or_a_config_error(document: Any) -> None:
    try:
        parse_config(document)
    except ConfigError as exc:
        assert_clean(exc.problems)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_file_is_valid_or_a_config_error(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_bytes(raw)
    try:
        load_config(path)
    except ConfigError as exc:
        assert_clean(exc.problems)


BOMB = "".join(f"{n}: &{n} [{', '.join([f'*{p}' if p else 'x' for _ in range(9)])}]\n"
               for n, p in zip("abcdefghi", ["", *"abcdefgh"], strict=True))


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("nested lists", "groups: " + "[" * 20000 + "]" * 20000, "nested too deeply"),
    ("nested maps", "groups: " + "{a: " * 5000 + "1" + "}" * 5000, "nested too deeply"),
    ("alias bomb", BOMB + "providers: *i\ngroups: *i\napi: {listen: *i}\n", "providers: Input should be"),
    ("python tag", "!!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ("NUL", "groups: \x00\n", "invalid YAML"),
])
def test_hostile_documents_are_config_errors_quickly(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - start < 5, name
    assert any(expected in line for line in info.value.problems), info.value.problems


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    with path.open("wb") as f:
        f.write(yaml.safe_dump(minimal()).encode())
        f.write(b"# " + b"x" * (MAX_CONFIG_BYTES + 1) + b"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"the file is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: not a config"]


def test_a_deeply_nested_config_is_exit_2_from_the_cli_with_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("groups: " + "[" * 20000 + "]" * 20000)
    result = subprocess.run([sys.executable, "-m", "eipfailover", "check-config", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "nested too deeply" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# --- what PyYAML's constructors and the validators raise on their own ---

BASE = yaml.safe_dump(minimal())
INT_KEY_PROVIDER = """\
providers:
  123: {type: aws, region: us-east-1}
groups:
  - name: web
    provider: aws
    eips: [eipalloc-1]
    targets:
      - {name: a, binding: {instance_id: i-a}, checks: [{type: tcp, host: h, port: 1}]}
      - {name: b, binding: {instance_id: i-b}, checks: [{type: tcp, host: h, port: 2}]}
"""
HUGE_REPEAT = BASE.replace("- host: h\n      port: 1\n      type: tcp",
                           "- type: http\n      url: http://h/\n      body_regex: 'a{99999999999}'")
HOSTILE = {
    "impossible date": BASE + "stop_timeout: 2024-13-45\n",
    "impossible date as a key": BASE.replace("providers:\n", "providers:\n  2024-02-30: {type: aws, region: x}\n"),
    "impossible time": BASE + "stop_timeout: 2024-01-01T25:00:00\n",
    "5000-digit integer": BASE + "stop_timeout: " + "1" * 5000 + "\n",
    "!!int on a word": BASE + "stop_timeout: !!int abc\n",
    "!!float on a word": BASE + "stop_timeout: !!float abc\n",
    "numeric provider name": INT_KEY_PROVIDER,
    "huge regex repetition": HUGE_REPEAT,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_any_file_is_a_config_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HOSTILE[name])
    assert HOSTILE[name] != BASE
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert all(": " in line for line in info.value.problems), info.value.problems


@pytest.mark.parametrize("name", ["impossible date", "numeric provider name", "huge regex repetition"])
def test_run_on_such_a_file_is_exit_2_without_a_traceback(tmp_path: Path, name: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HOSTILE[name])
    result = subprocess.run([sys.executable, "-m", "eipfailover", "run", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-600:]
    assert result.returncode == 2


def test_a_key_given_twice_is_a_config_error_naming_its_line(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys without a word; a config refuses it (a second ``policy:`` block would
    silently replace the first)."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal()) + "providers: {aws: {type: aws, region: eu-west-1}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith("invalid YAML: line "), problem
    assert problem.endswith("duplicate key 'providers'"), problem


@pytest.mark.parametrize(("line", "expected"), [
    ("stop_timeout: .inf\n", "stop_timeout: expected a finite duration"),
    ("stop_timeout: .nan\n", "stop_timeout: expected a finite duration"),
    ("stop_timeout: \u0661s\n", "stop_timeout: invalid duration '\u0661s'"),  # an Arabic-Indic digit one
    ("api: {listen: 'h:\u0663'}\n", "api.listen: expected HOST:PORT"),
])
def test_infinite_durations_and_non_ascii_digits_are_refused(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + line, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
