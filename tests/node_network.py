"""Network namespaces that make "nodes" of one machine, for the multi-node test cluster (tests/slurm_cluster.py).

A bridge in this (the root) network namespace holds the first address of a private /24; per node, a named
network namespace joined to the bridge by a veth pair, with the node's own address on its end (`eth0`).
Processes started through `enter(node)` live in the node's namespace: they see only its address (and its
own loopback) and reach the bridge's address, where slurmctld listens, and every other node. The filesystem,
the process ids and the kernel stay shared (a node's processes are ordinary processes of this machine).

Every name carries the tag (unique per cluster) so that several test sessions can each have their own
network on one machine; interface names stay within Linux's 15 characters. A namespace's name also
carries the PID of the process that made it: what a test session killed outright (SIGKILL, no teardown)
left behind is removed by the next `create()` on the machine (`remove_abandoned`), once no process lives
in it. The /24 is drawn at random
among 10.x.y.0/24 until it overlaps no address and no route of this namespace.

`remove()` deletes what `create()` made, whatever state it got to (idempotent, safe after a partial create);
a namespace's processes must be gone first (see `pids`), else the namespace lives on, unnamed, until they exit.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import subprocess
from pathlib import Path

import psutil

NETNS_DIR = Path("/run/netns")
NETNS_NAME = re.compile(r"shardrun-(?P<tag>[a-z0-9]{1,10})-(?P<owner>\d+)-(?P<node>.+)")
# Each try draws a /24 no other interface or route of the machine uses; collisions are rare, so a few do.
SUBNET_TRIES = 64


class NodeNetworkError(RuntimeError):
    """The namespaces, bridge or links could not be made (the message has `ip`'s own words and what to do)."""


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NodeNetworkError(f"ip {' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this namespace's addresses and routes cover (a subnet must overlap none of them)."""
    text = _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
    found = []
    for word in re.findall(r"(?<![\w.])(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", text):
        try:
            found.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    return found


def free_subnet(in_use: list[ipaddress.IPv4Network], draw=random.randrange) -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps none of `in_use` (a default route, 0.0.0.0/0, is no overlap)."""
    taken = [network for network in in_use if network.prefixlen > 0]
    for _ in range(SUBNET_TRIES):
        subnet = ipaddress.ip_network(f"10.{draw(1, 255)}.{draw(0, 256)}.0/24")
        if not any(subnet.overlaps(network) for network in taken):
            return subnet
    raise NodeNetworkError(f"no free 10.x.y.0/24 found in {SUBNET_TRIES} tries; this machine's networks: "
                           f"{', '.join(map(str, taken))}")


def remove_abandoned() -> list[str]:
    """Remove the networks that a process now gone made and in which no process lives: what a test session
    killed without a teardown left. Returns the namespaces removed."""
    namespaces: dict[str, list[Path]] = {}
    for path in NETNS_DIR.glob("shardrun-*"):
        if (match := NETNS_NAME.fullmatch(path.name)) is not None:
            namespaces.setdefault(match["tag"], []).append(path)
    removed = []
    for tag, paths in sorted(namespaces.items()):
        owners = {int(NETNS_NAME.fullmatch(path.name)["owner"]) for path in paths}
        if any(psutil.pid_exists(owner) for owner in owners) or any(processes_in(path) for path in paths):
            continue
        ports = re.findall(r"^\d+: ([^:@\s]+)", _ip("-o", "link", "show", "master", f"sr{tag}", check=False).stdout,
                           flags=re.MULTILINE)
        for name in ports:
            _delete_link(name)
        for path in paths:
            _ip("netns", "del", path.name, check=False)
            removed.append(path.name)
        _delete_link(f"sr{tag}")
    return removed


def _delete_link(name: str) -> list[str]:
    """Delete a link (a veth: both ends); [] when done or already gone, else `ip`'s complaint."""
    result = _ip("link", "del", name, check=False)
    if result.returncode == 0 or "Cannot find device" in result.stderr:
        return []
    return [result.stderr.strip()]


def processes_in(netns: Path) -> set[int]:
    """Every process living in a network namespace (given by its file under /run/netns) now."""
    inode = namespace_inode(netns)
    if inode is None:
        return set()
    return {process.pid for process in psutil.process_iter()
            if namespace_inode(Path(f"/proc/{process.pid}/ns/net")) == inode}


def namespace_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class NodeNetwork:
    """A bridge and one network namespace per node (see the module's docstring).

    tag: at most 10 characters of [a-z0-9], unique on this machine (interface names: 15 characters).
    """

    def __init__(self, tag: str, nodes: list[str]):
        if not re.fullmatch(r"[a-z0-9]{1,10}", tag) or len(nodes) > 10:
            raise ValueError(f"tag {tag!r} must be 1 to 10 of [a-z0-9], and at most 10 nodes ({len(nodes)} given)")
        self.tag = tag
        self.nodes = list(nodes)
        self.bridge = f"sr{tag}"
        self.netns = {node: f"shardrun-{tag}-{os.getpid()}-{node}" for node in self.nodes}
        self.veth = {node: f"sr{tag}v{index}" for index, node in enumerate(self.nodes)}
        self.subnet: ipaddress.IPv4Network | None = None
        self.addresses: dict[str, str] = {}
        self.gateway: str | None = None

    def create(self) -> NodeNetwork:
        """Make the bridge (holding the subnet's first address) and each node's namespace and veth."""
        if os.geteuid() != 0:
            raise NodeNetworkError("a multi-node test cluster needs root: it makes network namespaces, a bridge "
                                   "and veth links (CAP_NET_ADMIN). Run the tests as root (as CI does), or use "
                                   "the single-node cluster.")
        remove_abandoned()
        self.subnet = free_subnet(networks_in_use())
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self.addresses = {node: str(hosts[1 + index]) for index, node in enumerate(self.nodes)}
        prefix = self.subnet.prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for node in self.nodes:
            netns = self.netns[node]
            _ip("netns", "add", netns)
            _ip("link", "add", self.veth[node], "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("link", "set", self.veth[node], "master", self.bridge, "up")
            _ip("-n", netns, "addr", "add", f"{self.addresses[node]}/{prefix}", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
        return self

    def netns_path(self, node: str) -> Path:
        return NETNS_DIR / self.netns[node]

    def enter(self, node: str) -> list[str]:
        """The command prefix that runs a program in the node's network namespace. `nsenter`, not
        `ip netns exec`: the latter remounts /sys, and slurmd then finds no cgroup filesystem."""
        return ["nsenter", f"--net={self.netns_path(node)}"]

    def pids(self, node: str) -> set[int]:
        """Every process living in the node's network namespace now (its slurmd, its jobs, ...)."""
        return processes_in(self.netns_path(node))

    def leftovers(self) -> list[str]:
        """What of this network still exists (namespaces, links): [] once removed."""
        left = [f"netns {name}" for name in self.netns.values() if (NETNS_DIR / name).exists()]
        left += [f"link {name}" for name in [self.bridge, *self.veth.values()] if self._link_exists(name)]
        return left

    @staticmethod
    def _link_exists(name: str) -> bool:
        return _ip("link", "show", name, check=False).returncode == 0

    def remove(self) -> None:
        """Delete the veth pairs (at once: a namespace's own deletion, taking its veth ends along, finishes in
        the kernel's own time), the namespaces and the bridge. What is already gone is skipped."""
        problems = []
        for name in self.veth.values():
            problems += _delete_link(name)
        for node in self.nodes:
            if self.netns_path(node).exists():
                result = _ip("netns", "del", self.netns[node], check=False)
                if result.returncode != 0:
                    problems.append(result.stderr.strip())
        problems += _delete_link(self.bridge)
        if problems:
            raise NodeNetworkError("could not remove the test nodes' network: " + "; ".join(problems))
