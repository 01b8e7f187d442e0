"""Two network namespaces joined by a veth pair, with the receiver -> sender direction cut.

The receiver's side (R) drops every packet it would send out of its veth (an nft rule with a
counter), has ARP off and IPv6 off on that veth, and the sender's side (S) knows R's MAC from a
static neighbour entry: so the count of packets leaving R's veth must be exactly zero, and any
packet R tries to send shows up only in the rule's counter.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

_COUNTER = itertools.count()


def sh(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class OneWayLink:
    sender_ns: str
    receiver_ns: str
    sender_dev: str
    receiver_dev: str
    sender_ip: str
    receiver_ip: str

    def counters(self, ns: str, dev: str) -> dict[str, int]:
        out = {}
        for name in ("tx_packets", "rx_packets"):
            out[name] = int(sh("cat", f"/sys/class/net/{dev}/statistics/{name}", ns=ns))
        return out

    def drop_counter(self) -> int:
        """Packets the receiver side tried to send out of its veth (all dropped)."""
        rules = json.loads(
            sh("nft", "-j", "list", "chain", "inet", "zgoneway", "out", ns=self.receiver_ns)
        )
        for item in rules["nftables"]:
            rule = item.get("rule")
            if rule:
                for expr in rule["expr"]:
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
        raise AssertionError("no counter rule in the receiver's namespace")

    def probe_towards_sender(self, count: int) -> None:
        """UDP datagrams from the receiver's side to the sender's: the rule must drop them."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for _ in range({count}):\n"
            "    try:\n"
            f"        s.sendto(b'probe',('{self.sender_ip}',9))\n"
            "    except OSError:\n"
            "        pass\n"
        )
        sh(sys.executable, "-c", code, ns=self.receiver_ns, check=False)

    def fetch(self, ns: str, url: str) -> str:
        code = (
            "import sys,urllib.request\n"
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())\n"
        )
        return sh(sys.executable, "-c", code, url, ns=ns)


@contextlib.contextmanager
def one_way_link(prefix: str = "zg") -> Iterator[OneWayLink]:
    """The two namespaces and the veth between them; removed (with every process still in
    them) however the block is left. bench/udp_compare.py uses it too."""
    tag = f"{os.getpid() % 100000}x{next(_COUNTER)}"
    s_ns, r_ns = f"{prefix}S{tag}", f"{prefix}R{tag}"
    s_dev, r_dev = f"{prefix[:2]}s{tag}"[:15], f"{prefix[:2]}r{tag}"[:15]
    octet = (os.getpid() + next(_COUNTER)) % 200 + 20
    s_ip, r_ip = f"10.{octet}.77.1", f"10.{octet}.77.2"
    try:
        sh("ip", "netns", "add", s_ns)
        sh("ip", "netns", "add", r_ns)
        sh("ip", "link", "add", s_dev, "type", "veth", "peer", "name", r_dev)
        sh("ip", "link", "set", s_dev, "netns", s_ns)
        sh("ip", "link", "set", r_dev, "netns", r_ns)
        for ns, dev in ((s_ns, s_dev), (r_ns, r_dev)):
            sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "addr", "add", f"{s_ip}/24", "brd", "+", "dev", s_dev, ns=s_ns)
        sh("ip", "addr", "add", f"{r_ip}/24", "brd", "+", "dev", r_dev, ns=r_ns)
        sh("ip", "link", "set", r_dev, "arp", "off", ns=r_ns)
        sh("ip", "link", "set", s_dev, "up", ns=s_ns)
        sh("ip", "link", "set", r_dev, "up", ns=r_ns)
        mac = sh("cat", f"/sys/class/net/{r_dev}/address", ns=r_ns).strip()
        sh("ip", "neigh", "replace", r_ip, "lladdr", mac, "dev", s_dev, "nud", "permanent", ns=s_ns)
        nft = (
            "table inet zgoneway {\n chain out {\n"
            "  type filter hook output priority 0; policy accept;\n"
            f'  oifname "{r_dev}" counter drop\n }}\n}}\n'
        )
        subprocess.run(
            ["ip", "netns", "exec", r_ns, "nft", "-f", "-"],
            input=nft,
            text=True,
            check=True,
            timeout=30,
        )
        yield OneWayLink(s_ns, r_ns, s_dev, r_dev, s_ip, r_ip)
    finally:
        for ns in (s_ns, r_ns):
            remove_namespace(ns)


def remove_namespace(ns: str) -> None:
    """Kill every process left in `ns`, then delete it (nothing if it does not exist)."""
    for pid in sh("ip", "netns", "pids", ns, check=False).split():
        subprocess.run(["kill", "-9", pid], check=False)
    sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def oneway() -> Iterator[OneWayLink]:
    with one_way_link() as link:
        yield link
