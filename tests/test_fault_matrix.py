"""The fault matrix, short (bench/fault_matrix.py runs the full one): every fault kind at 30% on every call, a few
moves on each cloud through the fault proxy. Every move succeeds, no EIP is left detached, no association goes to
another target than the one decided, and on Alibaba the EIP is never detached for long between the two steps."""

from __future__ import annotations

import pytest

from bench.fault_matrix import FAULTS, TRANSITION, run_row


@pytest.mark.parametrize("cloud", ["aws", "alibaba"])
@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "none"])
async def test_moves_under_faults_end_attached_and_never_move_twice(cloud: str, fault: str) -> None:
    row = await run_row(cloud, fault, moves=3, p=0.3, seed=7)
    assert row.ok == row.moves, row.errors
    assert row.detached_at_end == 0
    assert row.double_moves == 0
    # a held-up association (3 s, and its backup too) or a describe that lies (2 s) stretches the window by that much
    limit = TRANSITION + 1.0 + (3.0 if fault == "delay" else 0.0) + (2.0 if fault == "late" else 0.0)
    assert row.detached_max <= limit, (row.detached_max, limit)
