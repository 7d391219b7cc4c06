"""The cluster benchmark (``bench/cluster.py``) in its quick form: it runs, and what it measures holds: every
hand-over within ``ttl`` plus a renewal, a frozen leader never acting after it wakes, and each daemon's etcd load at
rest ``6/ttl`` requests per second."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


async def test_the_quick_cluster_bench() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "cluster.py"), "--quick", "--json", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()[-3000:]
    document = json.loads(out)
    ttl = document["ttl"]
    for signal, runs in document["handovers"].items():
        assert len(runs) == 3, signal
        assert all(run["seconds"] <= ttl + ttl / 3 + 0.5 for run in runs), (signal, runs)
    assert all(not run["acted_after_wake"] for run in document["handovers"]["SIGSTOP"])
    assert document["cluster"]["etcd"]["per_daemon_per_s"] == pytest.approx(6 / ttl, rel=0.35)
