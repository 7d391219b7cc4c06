"""Alert rules (promtool), their runbook links, and the Grafana dashboard's metric names."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from eipfailover.cluster.solo import Solo
from eipfailover.config import parse_config
from eipfailover.engine import Engine
from eipfailover.metrics import Metrics

from .conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "eipfailover-alerts.yml"
TESTS = ROOT / "tests" / "prometheus"
RUNBOOK = ROOT / "docs" / "runbook.md"
DASHBOARD = ROOT / "config" / "grafana" / "eipfailover.json"


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


@pytest.fixture
def promtool() -> str:
    return require_tool("promtool", "prometheus")


def run(*argv: str, cwd: Path) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_check_rules(promtool: str) -> None:
    assert "SUCCESS: 16 rules found" in run(promtool, "check", "rules", str(RULES), cwd=ROOT)


def test_promtool_rule_tests(promtool: str, tmp_path: Path) -> None:
    # the label and timing cases run against the rules without annotations (promtool compares those in full)
    stripped = yaml.safe_load(RULES.read_text())
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / RULES.name).write_text(yaml.safe_dump(stripped))
    shutil.copy(TESTS / "alerts.test.yml", tmp_path)
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert "SUCCESS" in run(promtool, "test", "rules", "annotations.test.yml", cwd=TESTS)


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = [case for test in yaml.safe_load((TESTS / "alerts.test.yml").read_text())["tests"]
             for case in test["alert_rule_test"]]
    for rule in rules():
        fired = [c for c in cases if c["alertname"] == rule["alert"] and c["exp_alerts"]]
        silent = [c for c in cases if c["alertname"] == rule["alert"] and not c["exp_alerts"]]
        assert fired, f"{rule['alert']} has no case that fires"
        assert silent, f"{rule['alert']} has no case that stays silent"


def test_every_alert_is_documented_in_the_runbook() -> None:
    sections = set(re.findall(r"^## (\S+)$", RUNBOOK.read_text(), re.MULTILINE))
    alerts = {r["alert"] for r in rules()}
    assert sections == alerts
    for rule in rules():
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), rule["alert"]
        assert annotations["runbook"] == f"docs/runbook.md#{rule['alert'].lower()}"


def exported_names() -> set[str]:
    """Every series name the daemon can export (with histogram and counter suffixes)."""
    config = parse_config({
        "providers": {"aws": {"type": "aws", "region": "r"}},
        "groups": [{"name": "g", "provider": "aws", "eips": ["e"], "targets": [
            {"name": t, "binding": {"instance_id": t}, "checks": [{"type": "tcp", "host": "h", "port": 1}]}
            for t in ("a", "b")]}],
    })
    metrics = Metrics(config, {"aws": ("DescribeAddresses",)})
    metrics.watch(Engine([], coordinator=Solo()))  # a coordinator: the cluster's series too
    return {s.name for family in metrics.registry.collect() for s in family.samples} | {
        f.name for f in metrics.registry.collect()}


def queried_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\b(eipfailover_[a-z_]+)", expr)}


def test_alerts_query_only_exported_metrics() -> None:
    used = queried_names([r["expr"] for r in rules()])
    assert used
    assert used <= exported_names()


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    expressions += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = queried_names(expressions)
    assert used <= exported_names(), used - exported_names()
    # every family the daemon exports is on the dashboard
    families = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}
    assert families >= {"eipfailover_target_up", "eipfailover_active_target", "eipfailover_eip_attached",
                        "eipfailover_failovers", "eipfailover_failover_duration_seconds", "eipfailover_maintenance",
                        "eipfailover_checks", "eipfailover_check_duration_seconds", "eipfailover_build_info",
                        "eipfailover_provider_requests", "eipfailover_provider_request_duration_seconds",
                        "eipfailover_last_failover_timestamp_seconds"}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_a_missing_tool_is_said_loudly_at_the_end_of_the_run() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EIPFAILOVER_REQUIRE_TOOLS"}
    env["PATH"] = str(Path(sys.executable).parent)  # the venv only: no promtool on it
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                             "tests/test_prometheus.py::test_promtool_check_rules"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout
    assert "TESTS SKIPPED FOR MISSING TOOLS: NOT RUN" in result.stdout
    assert "test_promtool_check_rules: promtool not installed (Debian package prometheus)" in result.stdout
