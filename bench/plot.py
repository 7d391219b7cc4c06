"""The figures of docs/benchmarks.md, drawn from the JSON the benches write (``--json``), kept in docs/data/.

    .venv/bin/pip install matplotlib   # not a dependency of the daemon or its tests
    .venv/bin/python bench/plot.py     # docs/data/*.json -> docs/img/*.png

Each figure is drawn only if its data file is there.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
DATA, IMG = ROOT / "docs" / "data", ROOT / "docs" / "img"


def detection(data: dict[str, Any]) -> None:
    """Death to verified, per trial, with and without fast_interval: the empirical distribution."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, trials in data["trials"].items():
        totals = sorted(t["verified"] - t["death"] for t in trials if t["result"] == "success")
        ax.step(totals, [(i + 1) / len(totals) for i in range(len(totals))], where="post",
                label=f"{name} (p50 {statistics.median(totals):.2f} s)")
    ax.axvline(1.2, color="grey", linestyle=":", label="target p50 1.2 s")
    ax.axvline(1.7, color="grey", linestyle="--", label="target max 1.7 s")
    ax.set_xlabel("seconds from the primary's death to the EIP verified on the standby")
    ax.set_ylabel("share of trials")
    ax.set_title(f"interval {data['interval']:g} s, timeout {data['timeout']:g} s, fall {data['fall']}, "
                 f"{len(next(iter(data['trials'].values())))} trials each (moto)")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "detection.png")


def side_by_side(data: dict[str, Any]) -> None:
    """A move and its verification, three ways, on one moto server (log scale)."""
    labels = {"daemon": "daemon\n(failover.execute)", "raw": "raw boto3", "raw_thread": "raw boto3\non a thread",
              "cli": "aws CLI\n(notify script)"}
    names = [n for n in labels if data["samples"].get(n)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([[1000 * s["total"] for s in data["samples"][n]] for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), [labels[n] for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("ms, associate + describe until it shows the move")
    ax.set_title(f"{data['rounds']} rounds on the same moto server")
    save(fig, "side_by_side.png")


def api_scale(data: list[dict[str, Any]]) -> None:
    """Steady-state describes per interval, and throttled answers, against the number of groups."""
    runs = data
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = [r["groups"] for r in runs]
    ax.plot(groups, [r["describes_per_interval"] for r in runs], marker="o", label="DescribeAddresses per interval")
    ax.plot(groups, [r["throttled"] for r in runs], marker="x", label="throttled answers (whole run)")
    ax.set_xscale("log")
    ax.set_xlabel("groups (1 EIP each), one AWS provider")
    ax.set_ylabel("requests")
    ax.set_title("Steady state, interval 1 s, behind EC2's request-token buckets")
    ax.legend(fontsize=8)
    save(fig, "api_scale.png")


def mass_failover(data: list[dict[str, Any]]) -> None:
    """Time until every EIP is verified on its standby, against the floors the buckets set."""
    runs = data
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    groups = [r["groups"] for r in runs]
    left.plot(groups, [r["seconds_to_all_verified"] for r in runs], marker="o", label="all verified")
    left.plot(groups, [r["floor_ec2"] for r in runs], linestyle="--", label="floor: EC2's bucket (50, then 5/s)")
    left.plot(groups, [r["floor_limiter"] for r in runs], linestyle=":", label="floor: our default limit")
    left.plot(groups, [1.3 * r["floor_ec2"] for r in runs], color="grey", linewidth=0.8, label="1.3 x EC2's floor")
    left.set_xlabel("groups whose primaries die at once")
    left.set_ylabel("seconds from the deaths")
    left.legend(fontsize=8)
    biggest = max(runs, key=lambda r: r["groups"])
    series = biggest.get("series") or []
    right.bar([p["second"] for p in series], [p["associate_admitted"] for p in series],
              label="AssociateAddress admitted")
    right.plot([p["second"] for p in series], [p["describes"] for p in series], color="black", linewidth=0.8,
               label="DescribeAddresses")
    right.bar([p["second"] for p in series], [p["associate_throttled"] for p in series], color="red",
              label="throttled")
    right.set_xlabel("second after the deaths")
    right.set_ylabel("requests")
    right.set_title(f"{biggest['groups']} groups")
    right.legend(fontsize=8)
    save(fig, "mass_failover.png")


def checks_rate(data: dict[str, Any]) -> None:
    """CPU per check on asyncio's loop and on uvloop."""
    runs = data["runs"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for loop in sorted({r["loop"] for r in runs}):
        mine = sorted((r for r in runs if r["loop"] == loop), key=lambda r: r["checks_per_second"])
        ax.plot([r["checks_per_second"] for r in mine], [r["cpu_percent"] for r in mine], marker="o", label=loop)
    ax.axhline(60, color="grey", linestyle=":", label="target: 5,000/s under 60%")
    ax.set_xlabel("checks per second")
    ax.set_ylabel("daemon CPU, % of one core")
    ax.legend(fontsize=8)
    save(fig, "checks_rate.png")


def save(fig: Any, name: str) -> None:
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)
    print(f"docs/img/{name}")


FIGURES: dict[str, Callable[[Any], None]] = {
    "detection.json": detection, "side_by_side.json": side_by_side, "api_scale.json": api_scale,
    "mass_failover.json": mass_failover, "checks_rate.json": checks_rate,
}


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        path = DATA / name
        if path.exists():
            draw(json.loads(path.read_text()))


if __name__ == "__main__":
    main()
