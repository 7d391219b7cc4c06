"""Command line: ``run``, ``check-config``, ``demo``, ``version``. Exit codes: 0 ok, 1 runtime failure, 2 bad
config or usage."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from eipfailover import __version__
from eipfailover.errors import ConfigError

DEFAULT_CONFIG = os.environ.get("EIPFAILOVER_CONFIG", "/etc/eipfailover/eipfailover.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eipfailover", description="Failover daemon for cloud Elastic IPs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("run", "run the daemon in the foreground"),
                       ("check-config", "validate a config file: exit 0, or 2 with every problem on stderr")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                         help=f"config file (default: $EIPFAILOVER_CONFIG or {DEFAULT_CONFIG})")
    sub.add_parser("demo", help="fail an EIP over on a local moto EC2 server, no cloud account needed")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"eipfailover {__version__}")
        return 0
    if args.command == "demo":
        from eipfailover.demo import main as demo_main

        return demo_main()

    from eipfailover.config import load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"eipfailover: invalid config {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        for group in config.groups:
            p = group.policy
            print(f"group {group.name}: {len(group.targets)} targets, {len(group.eips)} EIP(s), detection within "
                  f"{p.detection_seconds:g}s ((fall-1)*interval + timeout), failback {p.failback}")
        print(f"{args.config}: OK")
        return 0

    from eipfailover import log
    from eipfailover.daemon import Daemon

    log.configure(config.log.format, config.log.level)
    try:
        return asyncio.run(Daemon(config).run())
    except KeyboardInterrupt:
        return 130
