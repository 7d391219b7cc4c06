"""The scale and speed benches (bench/, issue 12) in their quick forms: they run, and what they measure holds, with
margins for a loaded CI machine (the full runs and their figures: docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


async def bench(script: str, tmp_path: Path, *args: str, timeout: float = 300, strict: bool = True) -> Any:
    """Run ``bench/<script> --quick --json``; its exit status must be 0 (if ``strict``); its JSON document."""
    out = tmp_path / "out.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / script), "--quick", "--json", str(out), *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    printed, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0 or not strict, printed.decode()[-4000:]
    assert out.exists(), printed.decode()[-4000:]
    return json.loads(out.read_text())


async def test_detection_with_the_fast_interval(tmp_path: Path) -> None:
    """Death to verified stays within the model's bound (a wait of up to one interval, then (fall-1) fast
    intervals, then the move) and well under the old (fall-1) * interval."""
    document = await bench("detection.py", tmp_path)
    fast = [t for t in document["trials"]["fast 250 ms"] if t["result"] == "success"]
    assert len(fast) == 5
    assert max(t["down"] - t["first_fail"] for t in fast) < 1.0  # (fall-1) * 250 ms, not (fall-1) * 1 s


async def test_no_false_failover_at_five_percent_failed_probes(tmp_path: Path) -> None:
    document = await bench("detection.py", tmp_path, "--false-failover", "20")
    assert document["failovers"] == []


async def test_the_daemons_move_beside_raw_boto3(tmp_path: Path) -> None:
    """The daemon's move and verification cost what raw boto3 calls cost, give or take the noise of a loaded
    machine (the CLI column, which installs the AWS CLI, is for the full run)."""
    document = await bench("side_by_side.py", tmp_path, "--no-cli")
    p50 = {way: sorted(s["total"] for s in samples)[len(samples) // 2]
           for way, samples in document["samples"].items() if samples}
    assert p50["daemon"] < 2 * p50["raw"], p50


async def test_one_describe_an_interval_whatever_the_number_of_groups(tmp_path: Path) -> None:
    """10 and 100 groups behind EC2's buckets: about one DescribeAddresses an interval for all of them, nothing
    throttled (the bench's own verdict is exactly one: a loaded CI machine may add a stray read)."""
    runs = await bench("api_scale.py", tmp_path, strict=False)
    assert [r["groups"] for r in runs] == [10, 100]
    for run in runs:
        assert run["describes_per_interval"] <= 1.5, run
        assert (run["throttled"], run["blind_groups"]) == (0, 0), run


async def test_a_mass_failover_within_the_buckets(tmp_path: Path) -> None:
    """10 and 100 groups whose primaries die at once: each EIP moved once, none detached, nothing throttled, all
    verified near the floor the buckets set."""
    runs = await bench("mass_failover.py", tmp_path, strict=False)
    for run in runs:
        assert (run["moved_twice"], run["detached"], run["not_on_b"], run["throttled"]) == (0, 0, 0, 0), run
        assert run["verified"] == run["groups"], run
        assert run["seconds_to_all_verified"] <= 2 * run["floor_ec2"] + 2, run
