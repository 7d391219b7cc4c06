"""Command line: ``run``, ``check-config``, ``status``, ``failover``, ``maintenance``, ``eip``, ``demo``,
``version``.

Exit codes: 0 ok, 1 runtime failure (including a failed or refused failover), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from eipfailover import __version__
from eipfailover.errors import ConfigError

if TYPE_CHECKING:
    from eipfailover.client import ApiClient
    from eipfailover.config import Config

DEFAULT_CONFIG = os.environ.get("EIPFAILOVER_CONFIG", "/etc/eipfailover/eipfailover.yaml")
DEFAULT_API = "http://127.0.0.1:9797"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eipfailover", description="Failover daemon for cloud Elastic IPs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("run", "run the daemon in the foreground"),
                       ("check-config", "validate a config file: exit 0, or 2 with every problem on stderr")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                         help=f"config file (default: $EIPFAILOVER_CONFIG or {DEFAULT_CONFIG})")
        if name == "run":
            cmd.add_argument("--dry-run", action="store_true",
                             help="every group in dry run: check, decide and report, change nothing in the cloud")
            cmd.add_argument("--loop", choices=("asyncio", "uvloop"), default=os.environ.get("EIPFAILOVER_LOOP",
                                                                                             "asyncio"),
                             help="the event loop: uvloop (the 'fast' extra) spends less CPU per check (default: "
                                  "$EIPFAILOVER_LOOP or asyncio)")
        if name == "check-config":
            cmd.add_argument("--cloud", action="store_true",
                             help="also read the cloud: the groups' EIPs and the targets' instances exist, the ENIs "
                                  "the bindings name exist and suit their mode (as the daemon checks at start-up)")

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("-c", "--config", help=f"the config: its providers (eip commands), --api and --token-file "
                                               f"(default: {DEFAULT_CONFIG} if it exists)")
    client.add_argument("--api", help=f"the daemon's API URL (default: from the config, else {DEFAULT_API})")
    client.add_argument("--token-file", type=Path, help="file holding the API token (default: api.token_file)")
    client.add_argument("--ca-file", type=Path, help="CA to verify an HTTPS API with (default: api.tls.ca_file, "
                                                     "else api.tls.cert_file, else the system's)")
    client.add_argument("--proxy", help="HTTP proxy to reach the API through (default: none; http_proxy and "
                                        "https_proxy are ignored, so that no proxy sees the token)")
    status = sub.add_parser("status", parents=[client], help="show every group, its targets and EIPs")
    status.add_argument("--json", action="store_true", help="print the API's JSON")
    failover = sub.add_parser("failover", parents=[client], help="move a group's EIPs now and wait for the result")
    failover.add_argument("group")
    failover.add_argument("--to", help="target name (default: the most preferred healthy standby)")
    failover.add_argument("--force", action="store_true", help="move even if the target is not healthy")
    failover.add_argument("--reason", default="", help="recorded in the history")
    failover.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the result")
    maintenance = sub.add_parser("maintenance", parents=[client],
                                 help="pause (on) or resume (off) automatic failover of a group")
    maintenance.add_argument("group")
    maintenance.add_argument("state", choices=["on", "off"])

    from eipfailover.eipcmd import add_parser as add_eip_parser

    add_eip_parser(sub, client)
    demo = sub.add_parser("demo", help="fail an EIP over on a local moto EC2 server, no cloud account needed")
    demo.add_argument("--cluster", action="store_true",
                      help="three daemons on a local etcd: kill the leader, watch the hand-over and the failover")
    sub.add_parser("version", help="print the version")
    return parser


def _config_path(args: argparse.Namespace) -> str | None:
    return args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)


def _client(args: argparse.Namespace, config: Config | None = None) -> ApiClient:
    from eipfailover.client import ApiClient
    from eipfailover.config import load_config

    url, token_file, ca_file = DEFAULT_API, None, None
    path = _config_path(args)
    if config is None and path is not None:
        config = load_config(path)
    if config is not None:
        url, token_file = config.api.url, config.api.token_file
        if config.api.tls is not None:
            ca_file = config.api.tls.ca_file or config.api.tls.cert_file
    return ApiClient(args.api or url, args.token_file or token_file, ca_file=args.ca_file or ca_file,
                     proxy=args.proxy)


def _eip_command(args: argparse.Namespace) -> int:
    from eipfailover import eipcmd
    from eipfailover.config import load_config

    path = _config_path(args)
    if path is None:
        print(f"eipfailover: the eip commands use the config's providers: give -c (no {DEFAULT_CONFIG})",
              file=sys.stderr)
        return 2
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"eipfailover: invalid config {exc}", file=sys.stderr)
        return 2
    return eipcmd.run(args, config, lambda: _client(args, config))


async def _check_cloud(config: Config) -> int:
    """``check-config --cloud``: the daemon's start-up check of the bindings against the cloud."""
    from eipfailover import preflight, providers, registry
    from eipfailover.errors import EipFailoverError
    from eipfailover.providers.base import Provider

    built: dict[str, Provider] = {}
    try:
        for name, cfg in config.providers.items():
            built[name] = registry.load(providers.REGISTRY, cfg.type, Provider).from_config(name, cfg)
        problems, unchecked = await preflight.binding_problems(config, built, existence=True)
    except EipFailoverError as exc:
        print(f"eipfailover: {exc}", file=sys.stderr)
        return 2
    finally:
        for provider in built.values():
            await provider.close()
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    for line in unchecked:
        print(f"  cannot check: {line}", file=sys.stderr)
    if problems:
        print(f"eipfailover: {len(problems)} binding problem(s) found in the cloud", file=sys.stderr)
        return 2
    return 1 if unchecked else 0


def _client_command(args: argparse.Namespace) -> int:
    from eipfailover.client import ApiCallError, describe_failover, format_status

    try:
        client = _client(args)
        if args.command == "status":
            groups = client.call("GET", "/v1/groups")["groups"]
            print(json.dumps(groups, indent=2) if args.json else format_status(groups))
            return 0
        if args.command == "maintenance":
            state = client.call("POST", f"/v1/groups/{args.group}/maintenance", {"enabled": args.state == "on"})
            if client.followed:
                print(f"sent to the cluster's leader at {client.followed}")
            print(f"{state['group']}: maintenance {'on' if state['maintenance'] else 'off'}")
            return 0
        body: dict[str, object] = {"force": args.force, "reason": args.reason}
        if args.to:
            body["to"] = args.to
        accepted = client.call("POST", f"/v1/groups/{args.group}/failover", body)
        if client.followed:
            print(f"sent to the cluster's leader at {client.followed}")
        print(f"failover {accepted['failover_id']} of {accepted['group']} to {accepted['to']} accepted; waiting")
        record = client.wait_for_failover(args.group, accepted["failover_id"], args.timeout)
        print(describe_failover(record))
        return 0 if record["result"] == "success" else 1
    except ConfigError as exc:
        print(f"eipfailover: invalid config {exc}", file=sys.stderr)
        return 2
    except ApiCallError as exc:
        print(f"eipfailover: {exc}", file=sys.stderr)
        return 2 if exc.status in (400, 404) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"eipfailover {__version__}")
        return 0
    if args.command == "demo":
        if args.cluster:
            from eipfailover.demo_cluster import main as cluster_demo_main

            return cluster_demo_main()
        from eipfailover.demo import main as demo_main

        return demo_main()
    if args.command in ("status", "failover", "maintenance"):
        return _client_command(args)
    if args.command == "eip":
        return _eip_command(args)

    from eipfailover.config import load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"eipfailover: invalid config {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        for group in config.groups:
            p = group.policy
            print(f"group {group.name}: {len(group.targets)} targets, {len(group.eips)} EIP(s), "
                  f"detection within {p.detection_seconds:g}s ((fall-1)*fast_interval + timeout), "
                  f"failback {p.failback}")
        if args.cloud:
            code = asyncio.run(_check_cloud(config))
            if code:
                return code
            print("cloud: every EIP, instance and ENI found, as the bindings describe them")
        print(f"{args.config}: OK")
        return 0

    from eipfailover import log
    from eipfailover.daemon import Daemon

    log.configure(config.log.format, config.log.level)
    if args.loop not in ("asyncio", "uvloop"):  # from the environment: argparse checks only the flag
        print(f"eipfailover: unknown event loop {args.loop!r} (asyncio or uvloop)", file=sys.stderr)
        return 2
    factory = None
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("eipfailover: --loop uvloop: uvloop is not installed (pip install 'eipfailover[fast]')",
                  file=sys.stderr)
            return 2
        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(Daemon(config, args.config, dry_run=args.dry_run).run())
    except KeyboardInterrupt:
        return 130
