"""The demo's links: one per hop of every flow, all of the kind `zonegate demo --transport` names.

Every link is named by the gateway that receives on it (docs/relay.md), and each gateway's config
says how it sends on the links out of it and how it receives on the links into it:

- ``zmq``: CurveZMQ on loopback TCP; the receiver binds, the sender connects with its own Curve
  key and admits only the peer's.
- ``udp``: one-way datagrams with RaptorQ FEC; the receiver binds and never sends.
- ``ferry``: a directory the sender writes (write, fsync, rename) and the receiver only reads.
- ``sftp``: the sender pushes to the receiving site's SFTP drop point (demo_sftpdrop.py, its
  own process) with its own key, checking the drop point's host key against its known_hosts;
  the receiver reads the drop directory as a ferry directory.

Why a gateway's config names secrets only for its own links: a flow entry lists every hop's
transport (the relays need the whole route), but a gateway only ever opens the link into it and
the link out of it; for the other hops it gets the endpoint alone, never another gateway's keys.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .demo_configs import free_port
from .demo_network import DemoFlow, DemoNetwork

__all__ = [
    "KINDS",
    "UDP_HEARTBEAT",
    "DropPoint",
    "Link",
    "LinkPlan",
    "plan_links",
    "udp_ports_bound",
]

KINDS = ("zmq", "udp", "ferry", "sftp")
#: seconds between a udp sender's heartbeats
UDP_HEARTBEAT = 0.5
#: UDP settings of every demo link: loopback loses nothing, but the rate keeps the receiver's
#: socket buffer from overflowing while a busy machine decodes
UDP_SETTINGS = {
    "bandwidth": "64 MiB",
    "redundancy": 0.25,
    "repeats": 1,
    "heartbeat": f"{UDP_HEARTBEAT}s",
    "packet_size": 1400,
}


@dataclass(frozen=True)
class Link:
    """One hop of one flow: who sends, who receives, where."""

    flow: str
    hop: int  # 1 for the link out of the originator
    sender: str
    receiver: str
    port: int | None = None  # zmq, udp: the receiver's port; sftp: its drop point's
    directory: Path | None = None  # ferry: the directory; sftp: the drop directory


@dataclass
class DropPoint:
    """The SFTP server of one receiving gateway: accounts are the gateways that push to it."""

    gateway: str
    port: int
    directory: Path  # its host key, config, listen file and log
    #: sending gateway -> {directory name the account sees: drop directory on disk}
    accounts: dict[str, dict[str, Path]] = field(default_factory=dict)


@dataclass
class LinkPlan:
    kind: str
    root: Path
    links: list[Link]
    drop_points: dict[str, DropPoint] = field(default_factory=dict)

    def link(self, flow: str, hop: int) -> Link:
        return next(x for x in self.links if x.flow == flow and x.hop == hop)

    def transport(self, flow: DemoFlow, index: int, gateway: str) -> dict[str, Any]:
        """Hop `index` (0-based) of `flow` as written into `gateway`'s config."""
        link = self.link(flow.name, index + 1)
        role = (
            "sender" if gateway == link.sender else "receiver" if gateway == link.receiver else ""
        )
        if self.kind == "zmq":
            t: dict[str, Any] = {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{link.port}"}
            if role:
                peer = link.receiver if role == "sender" else link.sender
                t |= {
                    "curve_key": f"../keys/{gateway}.curve.key",
                    "peer_curve_key": f"../keys/{peer}.curve.pub",
                }
            return t
        if self.kind == "udp":
            return {"kind": "udp", "endpoint": f"udp://127.0.0.1:{link.port}", **UDP_SETTINGS}
        if self.kind == "ferry":
            return {"kind": "ferry", "endpoint": str(link.directory)}
        endpoint = f"sftp://{link.sender}@127.0.0.1:{link.port}/{link.flow}"
        t = {"kind": "sftp", "endpoint": endpoint}
        if role == "sender":
            t |= {
                "identity": f"../keys/{gateway}.ssh_id_ed25519",
                "known_hosts": f"../keys/{gateway}.known_hosts",
            }
        elif role == "receiver":
            t["drop_dir"] = str(link.directory)
        return t

    def udp_ports(self) -> list[int]:
        return [x.port for x in self.links if self.kind == "udp" and x.port is not None]

    def directories(self, flow: str) -> list[Path]:
        """The directories a flow's envelopes lie in on the way (ferry, sftp): scanned too when
        the demo looks for plaintext outside the final receiver."""
        return [x.directory for x in self.links if x.flow == flow and x.directory is not None]


def plan_links(kind: str, network: DemoNetwork, root: Path) -> LinkPlan:
    """Ports, directories and drop points of every hop of every flow, for transport `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown transport {kind!r} (expected one of: {', '.join(KINDS)})")
    plan = LinkPlan(kind, root, [])
    for flow in network.flows:
        for hop, (sender, receiver) in enumerate(flow.hops, start=1):
            port = directory = None
            if kind == "zmq":
                port = free_port()
            elif kind == "udp":
                port = free_port(socket.SOCK_DGRAM)
            elif kind == "ferry":
                directory = root / "links" / f"{flow.name}-hop{hop}-to-{receiver}"
                directory.mkdir(parents=True)
            else:
                point = plan.drop_points.get(receiver)
                if point is None:
                    point = DropPoint(receiver, free_port(), root / "sftp" / receiver)
                    plan.drop_points[receiver] = point
                directory = point.directory / "drop" / f"{flow.name}-from-{sender}"
                directory.mkdir(parents=True)
                point.accounts.setdefault(sender, {})[flow.name] = directory
                port = point.port
            plan.links.append(Link(flow.name, hop, sender, receiver, port, directory))
    return plan


def udp_ports_bound(ports: list[int]) -> bool:
    """Whether a socket is bound to each UDP port on this host (read from /proc/net/udp*).

    Why wait for it: a datagram sent before the receiver binds its port is gone (nothing on a
    one-way link can ask for it again), so the demo drops no file before every receiver is up.
    """
    bound: set[int] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1 and ":" in fields[1]:
                bound.add(int(fields[1].rsplit(":", 1)[1], 16))
    return set(ports) <= bound
