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
