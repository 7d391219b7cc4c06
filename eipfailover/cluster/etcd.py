"""``cluster: {type: etcd}``: one leader on an etcd lease, every daemon's view shared, each move fenced.

Keys under ``prefix`` (``P``):

- ``P/leader``: the leader's ``{"node", "api"}``, on its lease. The election is a transaction *if the key does not
  exist, put it*; the term is the key's create revision.
- ``P/members/<node>``: each daemon's API URL and view of every target (``up|down|unknown``), on its own lease, so a
  daemon that dies drops out of the count within ``ttl``.
- ``P/maintenance/<group>``: the shared maintenance switch (present: on). No lease: it outlives every daemon.
- ``P/intents/<group>``: the leader's last fenced cloud call (failover id, operation, node, term), written in the
  fencing transaction.

Each daemon holds one lease of ``ttl`` seconds, renewed every ``ttl/3``. It counts the lease valid until the
monotonic time its last successful renewal was *sent* plus ``ttl`` (etcd never expires a lease earlier), and acts
only while that is more than ``margin`` away. A watch on the prefix brings changes at once; a full read every
renewal corrects whatever a lost watch missed (renewals make no watch events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from eipfailover import quorum
from eipfailover.cluster.base import ClusterStatus, CoordinationError, Coordinator, Member
from eipfailover.cluster.etcd_client import (
    Compare,
    EtcdClient,
    EtcdError,
    KeyValue,
    Op,
    WatchEvent,
    make_ssl_context,
)
from eipfailover.config import ClusterConfig
from eipfailover.errors import NotLeader
from eipfailover.events import GroupMemory
from eipfailover.model import TargetState

log = structlog.get_logger("eipfailover.cluster")

_STATES = {s.value: s for s in TargetState}
_NOT_YET = "not connected yet"
_BAD_VALUE = (ValueError, AttributeError, TypeError, KeyError, OverflowError, RecursionError)
"""What a value under the prefix that is not ours (hand-written, damaged) may raise while it is parsed."""


@dataclass(slots=True)
class _Peer:
    api: str | None
    views: dict[str, dict[str, str]]
    last_seen: float = field(default_factory=time.time)


def client_for(config: ClusterConfig) -> EtcdClient:
    """The etcd client of ``config`` (its TLS files and password read now: a problem is an :class:`EtcdError`)."""
    tls = config.tls
    context = make_ssl_context(tls.ca_file, tls.cert_file, tls.key_file) if tls is not None else None
    password = None
    if config.password_file is not None:
        try:
            password = config.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise EtcdError(f"cluster.password_file {config.password_file}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    return EtcdClient(config.endpoints, timeout=max(0.5, min(2.0, config.ttl / 4)), ssl_context=context,
                      username=config.username, password=password)


class EtcdCoordinator(Coordinator):
    def __init__(self, config: ClusterConfig, api: str | None, client: EtcdClient) -> None:
        self.config = config
        self.node = config.node
        self.api = api
        self.client = client
        self.ttl = config.ttl
        self.margin = config.margin
        self.prefix = config.prefix.rstrip("/") + "/"
        self.leader_key = self.prefix + "leader"
        self.members_prefix = self.prefix + "members/"
        self.maintenance_prefix = self.prefix + "maintenance/"
        self.memory_prefix = self.prefix + "memory/"
        self.member_key = self.members_prefix + self.node
        self._me = json.dumps({"node": self.node, "api": api}, sort_keys=True).encode()
        self._lease: int | None = None
        self._valid_until = 0.0
        """Monotonic time until which this daemon's lease is alive for sure."""
        self._term: int | None = None
        """The leader key's create revision while this daemon leads."""
        self._leader: tuple[str, str | None, int] | None = None
        """(node, api, term) of the leader as last read."""
        self._orphan: int | None = None
        """The mod revision of a leader key seen on no lease (it would never expire): removed before the campaign."""
        self._orphan_logged: int | None = None
        self._peers: dict[str, _Peer] = {}
        self._maintenance: dict[str, bool] | None = None
        self._memory: dict[str, GroupMemory] = {}
        self._unshared: dict[str, GroupMemory] = {}
        """Memories to store, sent by the publishing task."""
        self._with_proof: dict[str, tuple[str, GroupMemory]] = {}
        """Memories of moves' starts (with the failover's id), stored only with that failover's first fencing
        proof."""
        self._views: dict[str, dict[str, str]] = {}
        self._published: bytes | None = None
        self._revision = 0
        """The etcd revision the cluster view reflects (a read older than the watch's events is ignored)."""
        self._lost: str | None = _NOT_YET
        self._leases: set[int] = set()
        """Every lease this daemon has held: a member key on another one is another daemon's."""
        self._clash_until = 0.0
        self._renewing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._notify_pending = False
        self.on_leading: Callable[[], None] | None = None
        """Called when this daemon starts a new term as leader (before it acts: it must re-read the cloud)."""

    def set_api(self, api: str | None) -> None:
        """Where peers reach this daemon's API (known once it listens; before the first campaign)."""
        self.api = api
        self._me = json.dumps({"node": self.node, "api": api}, sort_keys=True).encode()

    # --- what the engine reads ---
    def acting(self) -> bool:
        return self._term is not None and self.available() and time.monotonic() < self._valid_until - self.margin

    def available(self) -> bool:
        now = time.monotonic()
        return self._lease is not None and now < self._valid_until and now >= self._clash_until

    def problem(self) -> str | None:
        if time.monotonic() < self._clash_until:
            return (f"another daemon uses the node name {self.node!r} (cluster.node must be unique): neither acts "
                    f"until one is renamed")
        if not self.available():
            return "the coordination store (etcd) cannot be reached, or this daemon's lease lapsed"
        return None

    def verdict(self, group: str, target: str, local: TargetState) -> TargetState:
        votes = [_STATES.get(view.get(target, ""), TargetState.UNKNOWN)
                 for view in (p.views.get(group, {}) for p in self._others().values())]
        own = self._views.get(group)
        votes.append(_STATES.get(own.get(target, ""), TargetState.UNKNOWN) if own is not None else local)
        return quorum.tally(votes, len(votes), self.config.quorum)

    def publish(self, group: str, views: Mapping[str, TargetState]) -> None:
        view = {target: state.value for target, state in views.items()}
        if self._views.get(group) != view:
            self._views[group] = view
            self._dirty.set()
            self._changed()  # our own vote counts at once

    def forget(self, group: str) -> None:
        if self._views.pop(group, None) is not None:
            self._dirty.set()

    def observers(self, group: str) -> dict[str, dict[str, str]]:
        seen = {node: dict(peer.views.get(group, {})) for node, peer in self._others().items()}
        seen[self.node] = dict(self._views.get(group, {}))
        return seen

    def maintenance(self, group: str) -> bool | None:
        return None if self._maintenance is None else self._maintenance.get(group, False)

    def memory(self, group: str) -> GroupMemory | None:
        return self._memory.get(group)

    def share_memory(self, group: str, memory: GroupMemory, *, proof_of: str | None = None) -> None:
        self._memory[group] = memory
        if proof_of is not None:
            self._with_proof[group] = (proof_of, memory)
            self._unshared.pop(group, None)  # this one is newer
        else:
            self._unshared[group] = memory
            self._with_proof.pop(group, None)
            self._dirty.set()

    def status(self) -> ClusterStatus:
        leader = self._leader
        members = [Member(node, peer.api, leader is not None and leader[0] == node, peer.last_seen)
                   for node, peer in sorted(self._others().items())]
        members.append(Member(self.node, self.api, self._term is not None, time.time()))
        return ClusterStatus(
            node=self.node, leader=leader[0] if leader else None, leader_api=leader[1] if leader else None,
            term=leader[2] if leader else None, members=tuple(sorted(members, key=lambda m: m.node)),
            coordination="ok" if self.available() else "lost", acting=self.acting())

    def members(self) -> int:
        return len(self._others()) + 1

    def _others(self) -> dict[str, _Peer]:
        return {node: peer for node, peer in self._peers.items() if node != self.node}

    # --- changes ---
    async def set_maintenance(self, group: str, enabled: bool) -> None:
        key = self.maintenance_prefix + group
        try:
            done = await self.client.txn([], [Op.put(key, b"on") if enabled else Op.delete(key)])
        except EtcdError as exc:
            raise CoordinationError(f"the maintenance switch could not be stored in etcd: {exc}") from None
        self._revision = max(self._revision, done.revision)  # a read from before the switch must not undo it
        if self._maintenance is not None:
            self._maintenance[group] = enabled

    def term(self) -> int | None:
        return self._term

    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        current = self._term
        if current is None or not self.acting():
            raise NotLeader(f"{operation} not sent: this daemon is not the cluster's leader (or its lease may lapse)")
        if term is not None and term != current:
            raise NotLeader(f"{operation} not sent: decided in term {term}, which is over (this daemon leads in term "
                            f"{current} now, and decides anew from a fresh read of the cloud)")
        term = current
        intent = json.dumps({"failover_id": failover_id, "operation": operation, "node": self.node, "term": term,
                             "at": time.time()}).encode()
        for _ in range(2):  # a slow proof may use up the time the call needs: renew, prove once more
            if not self._covers(seconds):
                try:
                    await self._renew()  # the lease must outlive the call: renew it now, not at the loop's turn
                except EtcdError as exc:
                    raise NotLeader(f"{operation} not sent: the lease cannot be renewed: {exc}") from None
                if self._term != term:
                    raise NotLeader(f"{operation} not sent: this daemon's lease expired (term {term} is over)")
                if not self._covers(seconds):
                    raise NotLeader(f"{operation} not sent: the lease ({self.ttl:g}s) cannot outlive a call of "
                                    f"{seconds:g}s with a {self.margin:g}s margin")
            start = self._with_proof.get(group)  # a move's start goes with its own first proof: the next leader has it
            memory = start[1] if start is not None and start[0] == failover_id else self._unshared.get(group)
            writes = [Op.put(self.prefix + "intents/" + group, intent)]
            if memory is not None:
                writes.append(Op.put(self.memory_prefix + group, _memory_json(memory)))
            try:
                proof = await self.client.txn(
                    [Compare.create_revision(self.leader_key, "=", term),
                     Compare.value(self.leader_key, "=", self._me),
                     Compare.lease(self.leader_key, "=", self._lease or 0)], writes)
            except EtcdError as exc:
                raise NotLeader(f"{operation} not sent: leadership cannot be proven: {exc}") from None
            if not proof.succeeded:
                self._step_down("the leader key changed (another daemon leads, or the lease expired)")
                raise NotLeader(f"{operation} not sent: this daemon no longer leads (term {term} is over)")
            if start is not None and start[1] is memory:
                del self._with_proof[group]
            if memory is not None and self._unshared.get(group) is memory:
                del self._unshared[group]
            if self._term == term and self._covers(seconds):
                return lambda: self._term == term and self._covers(seconds)
        raise NotLeader(f"{operation} not sent: etcd answers too slowly for the lease to outlive a call of "
                        f"{seconds:g}s")

    def _covers(self, seconds: float) -> bool:
        """The lease, less the margin, outlives a call of ``seconds`` sent now."""
        return time.monotonic() + seconds <= self._valid_until - self.margin

    # --- the loop ---
    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch(), name="cluster-watch")
        publisher = asyncio.create_task(self._publish_loop(), name="cluster-publish")
        try:
            while True:
                pause = self.ttl / 3
                try:
                    await self._cycle()
                except EtcdError as exc:
                    self._trouble(str(exc))
                    pause = self.ttl / 10  # retried sooner, but never hammered
                except Exception as exc:  # a bug must not end the coordination: the lease lapses loudly instead
                    log.exception("cluster_cycle_failed", node=self.node)
                    self._trouble(f"internal error: {type(exc).__name__}: {exc}")
                    pause = self.ttl / 10
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._wake.wait()
        finally:
            watcher.cancel()
            publisher.cancel()
            await asyncio.gather(watcher, publisher, return_exceptions=True)

    async def _cycle(self) -> None:
        await self._renew()
        if self._published is None:
            await self._put_member()
        if self._unshared:
            self._dirty.set()  # what the publishing task could not store yet
        await self._read()
        if self._leader is None:
            await self._campaign()
        if self._lost is not None and self.available():
            if self._lost is _NOT_YET:
                log.info("cluster_joined", node=self.node, members=self.members(),
                         leader=self._leader[0] if self._leader else None)
            else:
                log.info("coordination_restored", node=self.node, was=self._lost)
            self._lost = None
            self._changed()

    async def _renew(self) -> None:
        """Renew the lease (grant a new one if it is gone), and count it valid from the moment the renewal was
        sent. One at a time: the loop and a fence must not both grant a new lease."""
        async with self._renewing:
            await self._renew_now()

    async def _renew_now(self) -> None:
        sent = time.monotonic()
        if self._lease is not None:
            remaining = await self.client.keepalive(self._lease)
            if remaining > 0:
                self._valid_until = max(self._valid_until, sent + min(self.ttl, remaining))  # (etcd's whole seconds)
                return
            log.warning("lease_expired", node=self.node, detail="etcd forgot this daemon's lease: a new one")
            self._lease = None
            self._step_down("the lease expired")
            self._published = None
            self._revision = 0  # etcd may have been rebuilt from scratch, its revisions started again
        lease, granted = await self.client.grant(max(2, round(self.ttl)))
        self._lease, self._valid_until = lease, sent + min(self.ttl, granted)
        self._leases.add(lease)

    async def _put_member(self) -> None:
        value = json.dumps({"api": self.api, "views": self._views}, sort_keys=True).encode()
        await self.client.put(self.member_key, value, lease=self._lease or 0)
        self._published = value

    async def _publish_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                while self._unshared:
                    group, memory = next(iter(self._unshared.items()))
                    term = self._term
                    if term is not None:  # only the leader's memory, and only while it leads
                        await self.client.txn(
                            [Compare.create_revision(self.leader_key, "=", term),
                             Compare.lease(self.leader_key, "=", self._lease or 0)],
                            [Op.put(self.memory_prefix + group, _memory_json(memory))])
                    if self._unshared.get(group) is memory:
                        del self._unshared[group]
                if self._lease is not None:  # else the loop publishes once it has a lease
                    await self._put_member()
            except EtcdError as exc:
                self._published = None  # the next cycle publishes again
                self._trouble(str(exc))
            except Exception:
                log.exception("cluster_publish_failed", node=self.node)
                self._published = None

    async def _campaign(self) -> None:
        orphan, self._orphan = self._orphan, None
        if orphan is not None:  # only that very key: a leader elected meanwhile stays
            await self.client.txn([Compare.lease(self.leader_key, "=", 0),
                                   Compare.mod_revision(self.leader_key, "=", orphan)], [Op.delete(self.leader_key)])
        answer = await self.client.txn([Compare.create_revision(self.leader_key, "=", 0)],
                                       [Op.put(self.leader_key, self._me, lease=self._lease or 0)],
                                       [Op.get(self.leader_key)])
        if answer.succeeded:
            if self._term != answer.revision:  # (the watch may have brought our own put first)
                self._lead(answer.revision)
            self._leader = (self.node, self.api, answer.revision)
        else:
            held = answer.responses[0] if answer.responses else None
            if held:
                self._see_leader(held[0])

    async def _read(self) -> None:
        kvs, revision = await self.client.get_prefix(self.prefix)
        if revision < self._revision:
            return  # the watch has already brought newer news
        self._revision = revision
        peers: dict[str, _Peer] = {}
        maintenance: dict[str, bool] = {}
        memory: dict[str, GroupMemory] = {}
        leader: KeyValue | None = None
        own: KeyValue | None = None
        for kv in kvs:
            if kv.key == self.leader_key:
                leader = kv
            elif kv.key == self.member_key:
                own = kv
            elif kv.key.startswith(self.members_prefix):
                peer = _peer(kv.value) if kv.lease else None  # a key on no lease is nobody alive
                if peer is not None:
                    peers[kv.key[len(self.members_prefix):]] = peer
            elif kv.key.startswith(self.maintenance_prefix):
                maintenance[kv.key[len(self.maintenance_prefix):]] = True
            elif kv.key.startswith(self.memory_prefix):
                remembered = _memory(kv.value)
                if remembered is not None:
                    memory[kv.key[len(self.memory_prefix):]] = remembered
        self._peers, self._maintenance = peers, maintenance
        self._memory = {**memory, **self._unshared, **{g: m for g, (_, m) in self._with_proof.items()}}
        self._see_own(own)
        if leader is None:
            self._no_leader()
        else:
            self._see_leader(leader)
        self._changed()

    async def _watch(self) -> None:
        """Apply the prefix's changes as they come; after a broken stream, wait for the next read, watch again."""
        while True:
            start = self._revision
            if not start:
                await asyncio.sleep(self.ttl / 10)
                continue
            try:
                async with contextlib.aclosing(self.client.watch_prefix(self.prefix, start + 1)) as stream:
                    async for events in stream:
                        for event in events:
                            self._apply(event)
                        self._revision = max(self._revision, *(e.kv.mod_revision for e in events))
                        self._changed()
            except EtcdError as exc:
                log.debug("cluster_watch_ended", error=str(exc))
            except Exception:  # a bug: the periodic read keeps the view current meanwhile
                log.exception("cluster_watch_failed", node=self.node)
            await asyncio.sleep(self.ttl / 6)

    def _apply(self, event: WatchEvent) -> None:
        key = event.kv.key
        if key == self.leader_key:
            if event.type == "delete":
                self._no_leader()
                self._wake.set()  # campaign now
            else:
                self._see_leader(event.kv)
        elif key == self.member_key:
            self._see_own(event.kv if event.type == "put" else None)
        elif key.startswith(self.members_prefix):
            node = key[len(self.members_prefix):]
            peer = _peer(event.kv.value) if event.type == "put" and event.kv.lease else None
            if peer is None:
                self._peers.pop(node, None)
            else:
                self._peers[node] = peer
        elif key.startswith(self.maintenance_prefix) and self._maintenance is not None:
            self._maintenance[key[len(self.maintenance_prefix):]] = event.type == "put"
        elif key.startswith(self.memory_prefix):
            remembered = _memory(event.kv.value) if event.type == "put" else None
            if remembered is None:
                self._memory.pop(key[len(self.memory_prefix):], None)
            else:
                self._memory[key[len(self.memory_prefix):]] = remembered

    def _see_own(self, kv: KeyValue | None) -> None:
        """This daemon's member key as etcd has it: gone (deleted by hand): publish it again; on a lease that was
        never this daemon's: another daemon has the same node name."""
        if kv is None:
            if self._published is not None:
                self._published = None
                self._dirty.set()
        elif kv.lease not in self._leases:
            if time.monotonic() >= self._clash_until:
                log.error("node_name_conflict", node=self.node, detail="another daemon publishes under this node "
                          "name: cluster.node must be unique; neither acts until one is renamed")
            self._clash_until = time.monotonic() + 2 * self.ttl
            self._step_down("another daemon has the same node name")
            self._published = None
            self._dirty.set()
            self._changed()

    # --- leadership ---
    def _see_leader(self, kv: KeyValue) -> None:
        if not kv.lease:  # written by hand, or restored without its lease: it never expires, so nobody holds it
            if self._orphan_logged != kv.mod_revision:  # once per such key, however often it cannot be removed
                self._orphan_logged = kv.mod_revision
                log.error("leader_key_without_lease", node=self.node, key=self.leader_key,
                          detail="a leader key on no lease is nobody alive: it is removed and a leader elected")
            self._orphan = kv.mod_revision
            self._no_leader()
            self._wake.set()  # campaign now
            return
        try:
            holder = json.loads(kv.value)
            node, api = str(holder["node"]), holder.get("api")
        except _BAD_VALUE:
            node, api = "?", None
        mine = kv.value == self._me and kv.lease == self._lease
        if mine and self._term != kv.create_revision:
            self._lead(kv.create_revision)
        elif not mine and self._term is not None:
            self._step_down(f"{node} holds the leader key")
        before = self._leader
        self._leader = (node, api if isinstance(api, str) else None, kv.create_revision)
        if (before is None or before[2] != kv.create_revision) and not mine:
            log.info("leader_seen", node=self.node, leader=node, term=kv.create_revision)

    def _no_leader(self) -> None:
        if self._leader is not None:
            log.info("leader_gone", node=self.node, leader=self._leader[0], term=self._leader[2])
        self._leader = None
        if self._term is not None:
            self._step_down("the leader key is gone")

    def _lead(self, term: int) -> None:
        self._term = term
        log.info("leader_elected", node=self.node, term=term)
        if self.on_leading is not None:
            self.on_leading()
        self._changed()

    def _step_down(self, why: str) -> None:
        if self._term is not None:
            log.warning("leadership_lost", node=self.node, term=self._term, reason=why)
            self._term = None
            self._changed()

    def _trouble(self, error: str) -> None:
        """An etcd call failed: loud once the lease may have lapsed (until then a later renewal may save it)."""
        if self._lost is _NOT_YET:
            log.warning("cluster_unreachable", node=self.node, error=error, detail="retrying; nobody here acts")
            self._lost = error
        elif self._lost is None and not time.monotonic() < self._valid_until:
            self._lost = error
            log.error("coordination_lost", node=self.node, error=error,
                      detail="nobody moves anything until etcd answers again")
            self._step_down("etcd cannot be reached")
            self._changed()
        elif self._lost is not None:
            self._lost = error

    def _changed(self) -> None:
        """Tell the engine, once per turn of the event loop however many changes came in it."""
        if self.on_change is None or self._notify_pending:
            return
        self._notify_pending = True

        def notify() -> None:
            self._notify_pending = False
            if self.on_change is not None:
                self.on_change()
        asyncio.get_running_loop().call_soon(notify)

    async def close(self, release: bool = True) -> None:
        """Hand over at once: delete the leader key if it is still ours, revoke the lease (the member key goes with
        it), close the connections. Best effort: etcd may be gone. Not ``release``: a cloud call may still be under
        way, so the lease is left to expire (no new leader before then)."""
        self._term = None
        if not release:
            log.warning("lease_kept", node=self.node, detail="a cloud call may still be under way: the next leader "
                        "is elected when this daemon's lease expires")
        elif self._lease is not None:
            with contextlib.suppress(EtcdError):
                await self.client.txn([Compare.lease(self.leader_key, "=", self._lease)], [Op.delete(self.leader_key)])
                await self.client.revoke(self._lease)
        self._lease = None
        await self.client.close()


def _peer(value: bytes) -> _Peer | None:
    try:
        data: Any = json.loads(value)
        views = {str(g): {str(t): str(s) for t, s in v.items()} for g, v in data.get("views", {}).items()}
        api = data.get("api")
        return _Peer(api if isinstance(api, str) else None, views)
    except _BAD_VALUE:
        return None


def _memory_json(memory: GroupMemory) -> bytes:
    return json.dumps({"window_starts": list(memory.window_starts), "last_move_at": memory.last_move_at}).encode()


def _memory(value: bytes) -> GroupMemory | None:
    try:
        data: Any = json.loads(value)
        last = None if data.get("last_move_at") is None else float(data["last_move_at"])
        starts = tuple(float(t) for t in data.get("window_starts", []))
        if not all(math.isfinite(t) for t in (*starts, *([] if last is None else [last]))):
            return None
        return GroupMemory(False, starts, last)
    except _BAD_VALUE:
        return None
