"""Hosts as network namespaces on a bridge of the harness's own, and the network faults.

Each run gets a random token; every namespace, veth and the bridge carry it in their names
(``p2pnem-TOKEN-PID-hN`` for namespaces, ``nmTOKENbr`` / ``nmTOKENhN`` for links, which must fit
15 characters), and the bridge's alias names the owning process, so that leftovers of a run
that died without cleaning up are recognised and removed by the next run, while a run going
on in parallel (its owner still alive) is left alone.

The bridge lives in the root namespace with the address .254 of the run's /24, so the harness
(the SIP clients, the admin calls) reaches every host directly; partitions are blackhole
routes inside the hosts' namespaces between node addresses only, which cut node-to-node
traffic and leave the clients' paths alone. Isolating a host takes its link down instead,
which cuts its clients too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NS_PREFIX = "p2pnem-"
LINK_PREFIX = "nm"
ALIAS_PREFIX = "p2preg-nemesis pid="
SUBNET_BASE = "10.77"


class NetError(RuntimeError):
    pass


def ip_binary() -> str | None:
    return shutil.which("ip") or (os.path.exists("/usr/sbin/ip") and "/usr/sbin/ip") or None


def ip(*args: str, check: bool = True) -> str:
    binary = ip_binary()
    if binary is None:
        raise NetError("iproute2 ('ip') is not installed")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def netns_usable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs and a bridge)"
    if ip_binary() is None:
        return "needs iproute2 ('ip')"
    probe = f"{NS_PREFIX}probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except NetError as exc:
        return f"'ip netns add' fails here: {exc}"
    ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A killed harness whose parent has not reaped it yet is a zombie: dead for us.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remove_stale() -> list[str]:
    """Remove namespaces and bridges of earlier runs whose owner is gone; what was removed."""
    removed: list[str] = []
    dead_tokens: set[str] = set()
    live_tokens: set[str] = set()
    for line in ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{NS_PREFIX}([0-9a-f]+)-(\d+)-h\d+", name)
        if match is None:
            if name.startswith(f"{NS_PREFIX}probe-"):
                ip("netns", "del", name, check=False)
            continue
        token, pid = match.group(1), int(match.group(2))
        if _pid_alive(pid):
            live_tokens.add(token)
            continue
        dead_tokens.add(token)
        _kill_namespace_processes(name)
        ip("netns", "del", name, check=False)
        removed.append(name)
    for line in ip("-o", "link", "show", "type", "bridge", check=False).splitlines():
        match = re.match(rf"\d+: ({LINK_PREFIX}([0-9a-f]+)br)[:@]", line)
        if match is None:
            continue
        name, token = match.group(1), match.group(2)
        alias = re.search(rf"alias {re.escape(ALIAS_PREFIX)}(\d+)", line)
        owner_alive = alias is not None and _pid_alive(int(alias.group(1)))
        if owner_alive and token not in dead_tokens:
            live_tokens.add(token)
        else:
            ip("link", "del", name, check=False)
            removed.append(name)
    # Host ends of veth pairs whose namespace is gone, or going slowly (the kernel dismantles a
    # namespace only once nothing refers to it any more).
    for line in ip("-o", "link", "show", "type", "veth", check=False).splitlines():
        match = re.match(rf"\d+: ({LINK_PREFIX}([0-9a-f]+)(?:h\d+|p))[:@]", line)
        if match is not None and match.group(2) not in live_tokens:
            ip("link", "del", match.group(1), check=False)
            removed.append(match.group(1))
    return removed


def _kill_namespace_processes(ns: str) -> None:
    # A namespace with processes in it outlives 'ip netns del' (and keeps its veth).
    for pid in ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _free_subnet(rng: random.Random) -> int:
    used = ip("-4", "-o", "addr", "show", check=False) + ip("-4", "route", "show", check=False)
    taken = {int(m) for m in re.findall(rf"{re.escape(SUBNET_BASE)}\.(\d+)\.", used)}
    free = [x for x in range(1, 255) if x not in taken]
    if not free:
        raise NetError(f"no free {SUBNET_BASE}.X.0/24 subnet")
    return rng.choice(free)


@dataclass
class Network:
    token: str
    third_octet: int
    hosts: set[int] = field(default_factory=set)
    blocked: set[tuple[int, int]] = field(default_factory=set)
    links_down: set[int] = field(default_factory=set)

    @classmethod
    def create(cls) -> Network:
        rng = random.Random()
        token = f"{rng.getrandbits(24):06x}"
        net = cls(token, _free_subnet(rng))
        bridge = net.bridge
        ip("link", "add", bridge, "type", "bridge")
        try:
            ip("link", "set", bridge, "alias", f"{ALIAS_PREFIX}{os.getpid()}")
            ip("addr", "add", f"{net.gateway}/24", "dev", bridge)
            ip("link", "set", bridge, "up")
        except NetError:
            ip("link", "del", bridge, check=False)
            raise
        return net

    @property
    def bridge(self) -> str:
        return f"{LINK_PREFIX}{self.token}br"

    @property
    def gateway(self) -> str:
        """The harness's own address on the bridge (clients and admin calls come from it)."""
        return f"{SUBNET_BASE}.{self.third_octet}.254"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{SUBNET_BASE}.{self.third_octet}.0/24")

    def namespace(self, index: int) -> str:
        return f"{NS_PREFIX}{self.token}-{os.getpid()}-h{index}"

    def address(self, index: int) -> str:
        return f"{SUBNET_BASE}.{self.third_octet}.{index + 1}"

    def _veth(self, index: int) -> str:
        return f"{LINK_PREFIX}{self.token}h{index}"

    def add_host(self, index: int) -> str:
        """Create host ``index`` (its namespace, its link to the bridge); its namespace name."""
        if not 0 <= index < 250:
            raise NetError(f"host index {index} out of range")
        ns, veth, peer = self.namespace(index), self._veth(index), f"{LINK_PREFIX}{self.token}p"
        ip("netns", "add", ns)
        self.hosts.add(index)
        ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns)
        ip("link", "set", veth, "master", self.bridge, "up")
        ip("-n", ns, "link", "set", peer, "name", "eth0")
        ip("-n", ns, "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        for other in self.hosts - {index}:
            if (index, other) in self.blocked:
                self._route("add", index, other)
        return ns

    def remove_host(self, index: int) -> None:
        if index not in self.hosts:
            return
        ns = self.namespace(index)
        _kill_namespace_processes(ns)
        ip("netns", "del", ns, check=False)
        ip("link", "del", self._veth(index), check=False)
        self.hosts.discard(index)
        self.links_down.discard(index)
        self.blocked = {pair for pair in self.blocked if index not in pair}

    # --- faults ---------------------------------------------------------------------------

    def _route(self, verb: str, src: int, dst: int) -> None:
        ip("-n", self.namespace(src), "route", verb, "blackhole", f"{self.address(dst)}/32")

    def block(self, a: int, b: int) -> None:
        """Drop everything between hosts ``a`` and ``b``, both ways."""
        for src, dst in ((a, b), (b, a)):
            if (src, dst) not in self.blocked and src in self.hosts:
                self._route("add", src, dst)
            self.blocked.add((src, dst))

    def partition(self, *groups: set[int] | frozenset[int]) -> None:
        """Cut every pair of hosts that share no group (a host in two groups is a bridge)."""
        members = set().union(*groups)
        for a in members:
            for b in members:
                if a < b and not any(a in g and b in g for g in groups):
                    self.block(a, b)

    def unblock_all(self) -> None:
        for src, dst in sorted(self.blocked):
            if src in self.hosts:
                with contextlib.suppress(NetError):
                    self._route("del", src, dst)
        self.blocked.clear()

    def link_down(self, index: int) -> None:
        ip("link", "set", self._veth(index), "down")
        self.links_down.add(index)

    def link_up(self, index: int) -> None:
        ip("link", "set", self._veth(index), "up")
        self.links_down.discard(index)

    def heal(self) -> None:
        self.unblock_all()
        for index in sorted(self.links_down):
            self.link_up(index)

    def destroy(self) -> None:
        for index in sorted(self.hosts):
            self.remove_host(index)
        ip("link", "del", self.bridge, check=False)
