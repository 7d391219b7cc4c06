"""``eipfailover eip``: an EIP's whole life from the command line, through the daemon's own drivers.

``list`` shows every EIP of a provider's account and region, where each is bound and which group manages it.
``associate`` is the daemon's move (on Alibaba two steps, never left detached: an EIP it detached goes back where
it was if the move fails), verified by describe. ``disassociate``, ``allocate`` and ``release`` do what they say.

Safety: a change to an EIP that a group of the config manages is refused unless that group is in maintenance (the
daemon is asked through its API) or ``--force`` is given; ``release`` of a managed EIP is refused even then.
A move onto a resource that holds a managed EIP (which it would displace or detach) is refused the same way.
``--dry-run`` prints the calls that would be made. Exit codes: 0 done, 1 refused or failed, 2 bad input, 130
interrupted (after the EIP is put back where it was).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from eipfailover import failover, providers, registry
from eipfailover.client import ApiCallError, ApiClient
from eipfailover.config import BindingConfig, Config, GroupConfig, binding_problems
from eipfailover.engine import binding_of
from eipfailover.errors import EipFailoverError, ProviderError
from eipfailover.model import Binding, EipState
from eipfailover.providers.base import Call, EipAdmin, EipRecord, Provider

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(EipFailoverError):
    """Bad input on the command line: exit 2."""


class Refused(EipFailoverError):
    """The safety rules forbid the change: exit 1."""


# --- the documented JSON of `eip list --json` (docs/eip-list.schema.json is generated from these) ---
class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class BoundTo(_Shape):
    """Where an EIP is bound, in the config's binding keys (``null`` where they do not apply)."""

    text: str
    """As the daemon's logs write it, e.g. ``i-123``, ``NetworkInterface eni-1/10.0.0.5 (NAT)``,
    ``ENI eni-1 on i-123 (BINDED)``."""
    instance_id: str | None
    network_interface_id: str | None
    private_ip: str | None
    instance_type: str | None
    mode: str | None


class EipEntry(_Shape):
    """One EIP (``eip allocate --json`` prints one too)."""

    allocation_id: str
    public_ip: str
    status: str
    """The cloud's own word: AWS ``associated``/``available``; Alibaba ``Associating``, ``InUse``, ``Unassociating``,
    ``Available``, ``Releasing``."""
    bound_to: BoundTo | None
    group: str | None
    """The group of the config that manages the EIP."""
    target: str | None
    """The group's target the EIP is on (``null`` if on none of them)."""
    tags: dict[str, str]


class EipListing(_Shape):
    """``eipfailover eip list --json``: every EIP of one provider's account and region."""

    provider: str
    """The provider's name in the config."""
    type: str
    """``aws`` or ``alibaba``."""
    region: str
    eips: list[EipEntry]


# --- what the commands act on ---
@dataclass
class Session:
    """One provider of the config, its driver, and what the command has sent."""

    config: Config
    name: str
    provider: Provider
    sent: list[str] = field(default_factory=list)

    @property
    def admin(self) -> EipAdmin:
        """The driver's ``eip`` operations (checked when the session is made)."""
        assert isinstance(self.provider, EipAdmin)
        return self.provider

    def managed_by(self, eip: str) -> GroupConfig | None:
        """The group that manages ``eip``, whichever provider entry names it (an EIP belongs to one group)."""
        return next((g for g in self.config.groups if eip in g.eips), None)

    def target_of(self, group: GroupConfig | None, where: Binding | None) -> str | None:
        if group is None or where is None:
            return None
        return next((t.name for t in group.targets if binding_of(t.binding, self.provider.kind).matches(where)), None)


def provider_name(config: Config, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in config.providers:
            raise UsageError(f"no provider {wanted!r} in the config (known: {', '.join(sorted(config.providers))})")
        return wanted
    if len(config.providers) > 1:
        raise UsageError(f"the config has several providers: choose one with --provider "
                         f"({', '.join(sorted(config.providers))})")
    return next(iter(config.providers))


@contextmanager
def _recording(session: Session) -> Iterator[None]:
    def record(_: str, operation: str, result: str, seconds: float) -> None:
        session.sent.append(f"{operation} {result} {1000 * seconds:.0f}ms")

    session.provider.on_request = record
    try:
        yield
    finally:
        session.provider.on_request = None


def parse_spec(spec: str, provider_type: str) -> Binding:
    """``instance_id=i-1`` or ``network_interface_id=eni-1,private_ip=10.0.0.5`` (the config's binding keys)."""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--to {spec!r}: expected KEY=VALUE pairs separated by commas, e.g. instance_id=i-123 "
                             f"or network_interface_id=eni-1,private_ip=10.0.1.11")
        fields[key.strip()] = value.strip()
    try:
        binding = BindingConfig.model_validate(fields)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'binding'}: "
                           f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}" for e in exc.errors())
        raise UsageError(f"--to {spec!r}: {errors}") from None
    problems = binding_problems(provider_type, binding)
    if problems:
        raise UsageError(f"--to {spec!r}: " + "; ".join(f"{p.lstrip('.') or 'binding'}: {m}" for p, m in problems))
    return binding_of(binding, provider_type)


def target_binding(config: Config, spec: str) -> tuple[str, Binding]:
    """``GROUP/TARGET``: the group's provider and the target's binding."""
    group_name, sep, target_name = spec.partition("/")
    group = next((g for g in config.groups if g.name == group_name), None)
    if not sep or group is None:
        raise UsageError(f"--target {spec!r}: expected GROUP/TARGET with a group of the config "
                         f"({', '.join(g.name for g in config.groups)})")
    target = next((t for t in group.targets if t.name == target_name), None)
    if target is None:
        raise UsageError(f"--target {spec!r}: group {group.name} has no target {target_name!r} "
                         f"({', '.join(t.name for t in group.targets)})")
    return group.provider, binding_of(target.binding, config.providers[group.provider].type)


async def resolve(session: Session, eip: str) -> str:
    """An allocation ID, from one or from a public IP address."""
    try:
        ipaddress.ip_address(eip)
    except ValueError:
        return eip
    found = [r.allocation_id for r in await session.admin.list_eips() if r.public_ip == eip]
    if not found:
        raise UsageError(f"no EIP with the address {eip} in provider {session.name}")
    return found[0]


def guard(session: Session, eip: str, *, force: bool, maintenance: Callable[[str], bool]) -> None:
    """Refuse a change to a managed EIP unless its group is in maintenance (asked through ``maintenance``) or
    ``force``."""
    group = session.managed_by(eip)
    if group is None or force:
        return
    try:
        in_maintenance = maintenance(group.name)
    except Refused as exc:
        raise Refused(f"EIP {eip} is managed by group {group.name}, and {exc}") from None
    if not in_maintenance:
        raise Refused(f"EIP {eip} is managed by group {group.name}, which is not in maintenance: run "
                      f"`eipfailover maintenance {group.name} on` first, or give --force (the daemon may then move "
                      f"it back)")


def collides(held: Binding, to: Binding) -> bool:
    """Whether putting an EIP on ``to`` changes the EIP that is on ``held``: the same one-EIP resource (on AWS the
    new EIP displaces the old one; on Alibaba the cloud refuses), the same private IP of an ENI, or the same
    cut-through ENI (which is detached from its instance first). A NAT gateway or an ENI in MULTI_BINDED mode holds
    several EIPs: no collision."""
    if held.instance_type == "Nat" or held.mode == "MULTI_BINDED":
        return False
    if to.network_interface_id is not None and to.instance_type is not None:  # a cut-through ENI
        return held.network_interface_id == to.network_interface_id
    if held.network_interface_id is not None and held.instance_type is not None:
        return False  # an EIP on a cut-through ENI is not on the instance's own ENI
    if to.network_interface_id is not None:  # AWS: an ENI, and its primary IP unless told
        same = held.network_interface_id == to.network_interface_id
    else:
        same = held.instance_id == to.instance_id and held.instance_type == to.instance_type
    return same and (to.private_ip is None or held.private_ip in (None, to.private_ip))


async def guard_destination(session: Session, eip: str, to: Binding, *, force: bool,
                            maintenance: Callable[[str], bool]) -> None:
    """Refuse a move onto a resource that holds an EIP a group manages (see :func:`collides`), like a change to that
    EIP."""
    if force:
        return
    for record in await session.admin.list_eips():
        if record.allocation_id != eip and record.bound_to is not None and collides(record.bound_to, to):
            guard(session, record.allocation_id, force=False, maintenance=maintenance)


def maintenance_from(client: Callable[[], ApiClient]) -> Callable[[str], bool]:
    """Ask the daemon (the client is made only then: a forced or unmanaged change never needs it)."""
    def ask(group: str) -> bool:
        try:
            answer = client().call("GET", f"/v1/groups/{group}")
        except ApiCallError as exc:
            if exc.status == 0:
                raise Refused(f"the daemon cannot be asked whether it is in maintenance ({exc}); if the daemon "
                              f"is stopped, give --force") from None
            raise Refused(f"the daemon does not confirm that it is in maintenance: {exc}") from None
        flag = answer.get("maintenance")
        if not isinstance(flag, bool):
            raise Refused(f"the daemon's answer has no maintenance flag (got {flag!r})")
        moving = answer.get("failover_in_progress")
        if flag and moving:  # maintenance stops automatic moves, not one under way (nor an operator's failover)
            detail = f"{moving.get('id', '?')} to {moving.get('to', '?')}" if isinstance(moving, dict) else "?"
            raise Refused(f"the daemon is moving its EIPs right now (failover {detail}): wait for it to end "
                          f"(eipfailover status)")
        return flag

    return ask


# --- the commands ---
async def cmd_list(session: Session, as_json: bool) -> int:
    records = await session.admin.list_eips()
    entries = [_entry(session, r) for r in records]
    region = getattr(session.config.providers[session.name], "region", "")
    listing = EipListing(provider=session.name, type=session.provider.kind, region=region, eips=entries)
    if as_json:
        print(listing.model_dump_json(indent=2))
    else:
        print(_table(listing))
    return EXIT_OK


def _entry(session: Session, r: EipRecord) -> EipEntry:
    group = session.managed_by(r.allocation_id)
    b = r.bound_to
    bound = None if b is None else BoundTo(text=str(b), instance_id=b.instance_id,
                                           network_interface_id=b.network_interface_id, private_ip=b.private_ip,
                                           instance_type=b.instance_type, mode=b.mode)
    return EipEntry(allocation_id=r.allocation_id, public_ip=r.public_ip, status=r.status, bound_to=bound,
                    group=group.name if group else None, target=session.target_of(group, b), tags=dict(r.tags))


def _table(listing: EipListing) -> str:
    rows = [("ALLOCATION ID", "PUBLIC IP", "STATUS", "BOUND TO", "GROUP/TARGET")]
    for e in listing.eips:
        managed = f"{e.group}/{e.target or '(none)'}" if e.group else "-"
        rows.append((e.allocation_id, e.public_ip, e.status, e.bound_to.text if e.bound_to else "nothing", managed))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    return "\n".join([*lines, f"{len(listing.eips)} EIP(s) in {listing.provider} ({listing.type} {listing.region})"])


def _print_calls(calls: Sequence[Call], what: str) -> int:
    if not calls:
        print(f"dry run: {what}: nothing to do")
    for call in calls:
        print(f"dry run: would call {call}")
    return EXIT_OK


async def cmd_associate(session: Session, eip: str, to: Binding, *, dry_run: bool, timeout: float) -> int:
    if dry_run:
        return _print_calls(await session.admin.plan_move(eip, to), f"{eip} is already on {to}")
    states = await session.provider.describe([eip])
    before = states[eip].bound_to
    if before is not None and to.matches(before) and not states[eip].pending:
        print(f"{eip} ({states[eip].public_ip}) is already on {to}")
        return EXIT_OK
    home = await session.admin.home_of(to)  # a cut-through ENI goes back there if the move fails
    fallback = [b for b in (before, home) if b is not None]
    start = time.monotonic()
    with _recording(session), _interruptible() as abort:
        outcome = await failover.execute(session.provider, [eip], to, deadline=timeout, states=states,
                                         fallback=fallback, abort=abort, resume_on_abort=False)
        if abort.is_set() and (before is None or outcome.reattached_to != before):  # an operator's interrupt undoes
            outcome = await _undo(session, eip, before, timeout, outcome)
        if not outcome.ok and home is not None:
            await _send_home(session, home, timeout)
    took = time.monotonic() - start
    print(f"calls: {', '.join(session.sent)}")
    if outcome.ok:
        print(f"{eip} ({states[eip].public_ip}): {before or 'nothing'} -> {to}, verified in {took:.2f}s")
        return EXIT_OK
    print(f"eipfailover: moving {eip} to {to} failed after {took:.2f}s: {outcome.error}", file=sys.stderr)
    if outcome.reattached_to is not None:
        again = "again" if outcome.reattached_to == before else "(the ENI is back where it was)"
        print(f"{eip} is on {outcome.reattached_to} {again}", file=sys.stderr)
    elif outcome.detached:
        print(f"{eip} MAY BE DETACHED: check with `eipfailover eip list`", file=sys.stderr)
    if abort.is_set():
        return EXIT_INTERRUPTED
    return EXIT_USAGE if outcome.code is not None and outcome.code.endswith("NotFound") else EXIT_FAILED


async def _undo(session: Session, eip: str, before: Binding | None, timeout: float,
                interrupted: failover.Outcome) -> failover.Outcome:
    """After an interrupt: once the calls already sent have their answers, put the EIP back where it was (on
    ``before``, or on nothing) if the move took it anywhere else. An atomic move on AWS detaches nothing, so the
    secure step had nothing to do."""
    await session.provider.settle(timeout)
    error = f"{interrupted.error or 'interrupted'}"
    if before is None:
        try:
            await _until(session, eip, timeout, lambda r: r.status.lower() not in ("associating", "unassociating"),
                         "settled")  # the association already sent lands first
            if await session.admin.disassociate(eip):
                await _until(session, eip, timeout, _detached, "detached")
        except ProviderError as exc:
            return failover.Outcome(False, interrupted.attempts, f"{error}; detaching it again failed: {exc}")
        return failover.Outcome(False, interrupted.attempts, f"{error}; it is bound to nothing again")
    try:
        states: Mapping[str, EipState] | None = await session.provider.describe([eip])
    except ProviderError:
        states = None  # the move reads it again
    back = await failover.execute(session.provider, [eip], before, deadline=timeout, states=states,
                                  fallback=[before])
    if not back.ok:
        return failover.Outcome(False, interrupted.attempts, f"{error}; putting it back failed: {back.error}",
                                back.states, detached=back.detached or interrupted.detached)
    return failover.Outcome(False, interrupted.attempts, error, back.states, reattached_to=before)


async def _send_home(session: Session, home: Binding, timeout: float) -> None:
    """A failed move onto a resource that moves (a cut-through ENI) leaves it where it was: attached again."""
    try:
        async with asyncio.timeout(timeout):
            if await session.admin.send_home(home):
                _say(f"{home} again (the ENI is back where it was)")
                return
    except (ProviderError, TimeoutError) as exc:
        _say(f"eipfailover: putting the ENI back failed: {exc or 'no answer in time'}")
    _say(f"the ENI of {home} MAY BE ON NO INSTANCE: check with `eipfailover eip list`")


@contextmanager
def _interruptible() -> Iterator[asyncio.Event]:
    """SIGINT, SIGTERM and SIGHUP (a dropped SSH session) set the event: the move stops and what it detached goes
    back where it was before the command exits. A second signal exits at once."""
    abort = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def interrupted() -> None:
        if abort.is_set():
            _say("eipfailover: interrupted again: exiting now; the EIP MAY BE DETACHED (eipfailover eip list)")
            os._exit(EXIT_INTERRUPTED)
        _say("eipfailover: interrupted: stopping the move and putting the EIP back where it was "
             "(interrupt again to exit at once, leaving it wherever it is)")
        abort.set()

    for sig in signals:
        loop.add_signal_handler(sig, interrupted)
    try:
        yield abort
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _say(text: str) -> None:
    with suppress(OSError):  # the terminal may be gone (SIGHUP)
        print(text, file=sys.stderr, flush=True)


async def check_destination(session: Session, to: Binding) -> None:
    """Bad input, found before the first step: the instance, ENI or HaVip ``to`` names does not exist (or is an ENI
    the mode cannot use). A NAT gateway or a CLB is not checked (their APIs are not the driver's)."""
    problems = await session.provider.validate({"--to": to})
    if problems:
        raise UsageError("; ".join(problems))
    kind = to.instance_type
    if kind is None or kind == "EcsInstance":
        state = await session.provider.instance_state(to)
        if not state.exists:
            raise UsageError(f"--to: {state.detail}")
    elif kind == "HaVip":
        from eipfailover.providers.alibaba import AlibabaProvider

        if isinstance(session.provider, AlibabaProvider):
            await session.provider.describe_havip(to.instance_id or "")  # InvalidHaVipId.NotFound: exit 2


async def cmd_disassociate(session: Session, eip: str, *, dry_run: bool, timeout: float) -> int:
    if dry_run:
        return _print_calls(await session.admin.disassociate(eip, dry_run=True), f"{eip} is bound to nothing")
    before = await session.admin.record(eip)
    start = time.monotonic()
    with _recording(session):
        calls = await session.admin.disassociate(eip)
        if not calls:
            print(f"{eip} ({before.public_ip}) is bound to nothing")
            return EXIT_OK
        await _until(session, eip, timeout, _detached, "detached")
    print(f"calls: {', '.join(session.sent)}")
    print(f"{eip} ({before.public_ip}): {before.bound_to or 'nothing'} -> nothing, verified in "
          f"{time.monotonic() - start:.2f}s")
    return EXIT_OK


def _detached(record: EipRecord) -> bool:
    return record.bound_to is None and record.status.lower() == "available"


async def _until(session: Session, eip: str, timeout: float, done: Callable[[EipRecord], bool], what: str) -> None:
    """Poll the EIP's record until ``done``; a :class:`ProviderError` after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        record = await session.admin.record(eip)
        if done(record):
            return
        if time.monotonic() > end:
            raise ProviderError(f"{eip} not {what} after {timeout:g}s (last seen {record.status} on "
                                f"{record.bound_to or 'nothing'})", retryable=False)
        await asyncio.sleep(0.25)


async def cmd_allocate(session: Session, tags: dict[str, str], *, dry_run: bool, as_json: bool) -> int:
    record, calls = await session.admin.allocate(tags, dry_run=dry_run)
    if record is None:
        return _print_calls(calls, "allocate")
    if as_json:
        print(_entry(session, record).model_dump_json(indent=2))
    else:
        shown = " ".join(f"{k}={v}" for k, v in record.tags.items())
        print(f"allocated {record.allocation_id} {record.public_ip}" + (f" (tags: {shown})" if shown else ""))
    return EXIT_OK


async def cmd_release(session: Session, eip: str, *, dry_run: bool) -> int:
    group = session.managed_by(eip)
    if group is not None:
        raise Refused(f"EIP {eip} is managed by group {group.name}: remove it from the config first (release is "
                      f"refused even with --force)")
    record = await session.admin.record(eip)
    if record.bound_to is not None or record.status.lower() != "available":
        raise Refused(f"EIP {eip} ({record.public_ip}) is {record.status}, bound to {record.bound_to or 'nothing'}: "
                      f"disassociate it first")
    calls = await session.admin.release(eip, dry_run=dry_run)
    if dry_run:
        return _print_calls(calls, "release")
    print(f"released {eip} ({record.public_ip})")
    return EXIT_OK


# --- entry point ---
def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    """The ``eip`` command and its subcommands, under the CLI's subparsers (``client``: the API options)."""
    eip = sub.add_parser("eip", help="list, associate, disassociate, allocate or release EIPs by hand",
                         description=__doc__.split("\n\n")[1].replace("``", "'"))
    verbs = eip.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = argparse.ArgumentParser(add_help=False, parents=[client])
    common.add_argument("--provider", help="the config's provider to use (required if it has several)")
    change = argparse.ArgumentParser(add_help=False)
    change.add_argument("--dry-run", action="store_true", help="print the calls that would be made, make none")
    listing = verbs.add_parser("list", parents=[common], help="every EIP of the account in the region")
    listing.add_argument("--json", action="store_true", help="JSON (docs/eip-list.schema.json)")
    for verb, text in (("associate", "put an EIP on an instance, ENI, HaVip, NAT gateway or CLB, and verify"),
                       ("disassociate", "detach an EIP from what holds it, and verify")):
        cmd = verbs.add_parser(verb, parents=[common, change], help=text)
        cmd.add_argument("eip", help="allocation ID or public IP")
        cmd.add_argument("--force", action="store_true",
                         help="change an EIP a group manages even if the group is not in maintenance")
        cmd.add_argument("--timeout", type=_seconds, default=120.0,
                         help="seconds for the change and its verification (default 120); after a failure, putting "
                              "the EIP back may take as long again")
        if verb == "associate":
            where = cmd.add_mutually_exclusive_group(required=True)
            where.add_argument("--to", metavar="BINDING", help="the config's binding keys, e.g. instance_id=i-123 "
                                                               "or network_interface_id=eni-1,private_ip=10.0.1.11")
            where.add_argument("--target", metavar="GROUP/TARGET", help="a target of the config")
    allocate = verbs.add_parser("allocate", parents=[common, change], help="allocate a new EIP")
    allocate.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    allocate.add_argument("--json", action="store_true", help="print the new EIP as JSON")
    release = verbs.add_parser("release", parents=[common, change], help="release an EIP bound to nothing")
    release.add_argument("eip", help="allocation ID or public IP")


def run(args: argparse.Namespace, config: Config, client: Callable[[], ApiClient]) -> int:
    """Run ``eip VERB``; errors are printed, never raised."""
    try:
        return asyncio.run(_run(args, config, client))
    except KeyboardInterrupt:
        _say("eipfailover: interrupted")
        return EXIT_INTERRUPTED
    except (UsageError, ValidationError) as exc:
        print(f"eipfailover: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"eipfailover: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ProviderError as exc:
        print(f"eipfailover: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.code is not None and exc.code.endswith("NotFound") else EXIT_FAILED
    except EipFailoverError as exc:
        print(f"eipfailover: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _run(args: argparse.Namespace, config: Config, client: Callable[[], ApiClient]) -> int:
    to: Binding | None = None
    wanted = args.provider
    if getattr(args, "target", None):
        target_provider, to = target_binding(config, args.target)
        if wanted is not None and wanted != target_provider:
            raise UsageError(f"--target {args.target} is on provider {target_provider}, not {wanted}")
        wanted = target_provider
    name = provider_name(config, wanted)
    cfg = config.providers[name]
    provider = registry.load(providers.REGISTRY, cfg.type, Provider).from_config(name, cfg)
    try:
        if not isinstance(provider, EipAdmin):
            raise UsageError(f"provider {name} ({cfg.type}) has no eip commands")
        session = Session(config, name, provider)
        return await _dispatch(session, args, to, client)
    finally:
        await provider.close()


async def _dispatch(session: Session, args: argparse.Namespace, to: Binding | None,
                    client: Callable[[], ApiClient]) -> int:
    if args.verb == "list":
        return await cmd_list(session, args.json)
    if args.verb == "allocate":
        return await cmd_allocate(session, _tags(args.tag), dry_run=args.dry_run, as_json=args.json)
    eip = await resolve(session, args.eip)
    if args.verb == "release":
        return await cmd_release(session, eip, dry_run=args.dry_run)
    if args.verb == "associate" and to is None:
        to = parse_spec(args.to, session.provider.kind)
    await session.provider.describe([eip])  # an unknown EIP is a clear error before anything else
    maintenance = maintenance_from(client)
    guard(session, eip, force=args.force, maintenance=maintenance)
    if to is None:
        return await cmd_disassociate(session, eip, dry_run=args.dry_run, timeout=args.timeout)
    await check_destination(session, to)
    await guard_destination(session, eip, to, force=args.force, maintenance=maintenance)
    return await cmd_associate(session, eip, to, dry_run=args.dry_run, timeout=args.timeout)


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


_seconds.__name__ = "number of seconds"  # argparse names the type in its error: "invalid number of seconds value"


def _tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {pair!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


def schema() -> str:
    """The JSON Schema of ``eip list --json`` (docs/eip-list.schema.json)."""
    return json.dumps(EipListing.model_json_schema(), indent=2) + "\n"
