"""The bureau's three-tier network: load `topology.yaml`, check it, and route across tiers.

Why a separate model from one gateway's config: an administrator reasons about the whole
network (which site reaches the municipal bureau through which district, which conference
terminal sits on which network), and mistakes there are security mistakes too: a conference
link or an uplink that joins two isolated zones is a bridge across an air gap, and a site with no
path to tier 1 silently loses its reports. So the loader refuses such a file with an error that
names the file, the line and the key, exactly like the gateway config loader (whose `_Reader`
and `ConfigError` it reuses).

Order of errors: YAML syntax, then duplicate keys, then the shape top-down in document order
(the first problem raised). Once the shape is right, every cross-reference problem is collected
and a `TopologyError` is raised carrying all of them, the one earliest in the file first, so
`zonegate topology check` can list them all.

Routing: a node reaches another by going up its uplinks to the nearest common ancestor and down
again (a judicial office's report reaches the municipal bureau through its district bureau).
`route()` gives that path; `routing_table()` gives one gateway's next hops, for relays.

Pure: reads the file; no sockets, no threads, nothing of ours outside `zones/`.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import LEVELS, ConfigError, _Reader, read_yaml_document
from .yamlpos import YamlPath

__all__ = [
    "CONFERENCE_KINDS",
    "DEFAULT_PORTS",
    "ENDPOINT_ROLES",
    "NODE_KINDS",
    "PROTOCOLS",
    "Conference",
    "Endpoint",
    "Gateway",
    "Node",
    "Tier",
    "Topology",
    "TopologyError",
    "TopologyFlow",
    "TopologyZone",
    "Uplink",
    "load_topology",
    "route",
    "routing_table",
]

#: What a site is; used for the views and to keep typos out (``prision``).
NODE_KINDS: tuple[str, ...] = (
    "municipal-bureau",
    "prison-bureau",
    "labour-bureau",
    "college",
    "district-bureau",
    "affiliated-unit",
    "prison",
    "labour-camp",
    "judicial-office",
    "notary-office",
    "legal-aid-centre",
)
#: Conference endpoint roles; a terminal registers with the bridge role of its kind.
ENDPOINT_ROLES: tuple[str, ...] = ("mcu", "video-terminal", "phone-bridge", "phone-terminal")
_BRIDGE_OF: Mapping[str, str] = {"video-terminal": "mcu", "phone-terminal": "phone-bridge"}
#: Signalling protocols the probes know: SIP (OPTIONS over UDP) and H.323 (TCP connect).
PROTOCOLS: tuple[str, ...] = ("sip", "h323")
#: The well-known signalling ports: SIP 5060 (RFC 3261), H.225 call signalling 1720.
DEFAULT_PORTS: Mapping[str, int] = {"sip": 5060, "h323": 1720}
CONFERENCE_KINDS: tuple[str, ...] = ("video", "telephone")
_CONFERENCE_BRIDGE: Mapping[str, str] = {"video": "mcu", "telephone": "phone-bridge"}


class TopologyError(ConfigError):
    """The first (earliest in the file) problem of a topology, carrying all that were found.

    Why all of them: a topology is edited by hand in one sitting, and fixing fifty sites one
    error per run is slow; `str()` stays the first error so it reads like any ConfigError.
    """

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        ordered = tuple(
            sorted(errors, key=lambda e: e.line if e.line is not None else float("inf"))
        )
        first = ordered[0]
        super().__init__(first.file, first.line, first.key, first.message)
        self.errors = ordered


@dataclass(frozen=True)
class TopologyZone:
    """An isolated network, with the names people use for it."""

    name: str
    level: str
    zh: str
    en: str


@dataclass(frozen=True)
class Tier:
    """One level of the network: 1 is the municipal bureau, 3 the prisons and offices."""

    number: int
    zh: str
    en: str


@dataclass(frozen=True)
class Gateway:
    """A node's gateway host in one zone; uplinks and flows attach to gateways."""

    name: str
    node: str
    zone: str
    address: str


@dataclass(frozen=True)
class Endpoint:
    """A conference endpoint (MCU, bridge or terminal) on one zone of its node."""

    name: str
    node: str
    role: str
    protocol: str
    address: str
    port: int
    zone: str
    #: the MCU or phone bridge a terminal registers with; None for bridges themselves
    bridge: str | None = None


@dataclass(frozen=True)
class Node:
    """One site of the three-tier network, with its Chinese and English names."""

    name: str
    zh: str
    en: str
    tier: int
    kind: str
    zones: tuple[str, ...]
    gateways: tuple[Gateway, ...]
    endpoints: tuple[Endpoint, ...]

    def gateway_in(self, zone: str) -> Gateway | None:
        """This node's gateway in `zone` (the first, if several), or None."""
        return next((g for g in self.gateways if g.zone == zone), None)


@dataclass(frozen=True)
class Uplink:
    """A link from a lower tier's gateway up to a higher tier's gateway, in one zone."""

    source: str  # gateway name (YAML `from`)
    target: str  # gateway name (YAML `to`)


@dataclass(frozen=True)
class TopologyFlow:
    """A one-way route between two zones at one node (carried by that node's gateways)."""

    name: str
    node: str
    source: str  # zone (YAML `from`)
    destination: str  # zone (YAML `to`)


@dataclass(frozen=True)
class Conference:
    """A standing conference between nodes, served by one bridge (video MCU or phone bridge)."""

    name: str
    kind: str
    bridge: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    """The whole network, checked; look-ups by name raise KeyError for unknown names."""

    path: Path
    zones: tuple[TopologyZone, ...]
    tiers: tuple[Tier, ...]
    nodes: tuple[Node, ...]
    uplinks: tuple[Uplink, ...]
    flows: tuple[TopologyFlow, ...]
    conferences: tuple[Conference, ...]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def gateway(self, name: str) -> Gateway:
        for gateway in self.gateways():
            if gateway.name == name:
                return gateway
        raise KeyError(name)

    def endpoint(self, name: str) -> Endpoint:
        for endpoint in self.endpoints():
            if endpoint.name == name:
                return endpoint
        raise KeyError(name)

    def zone(self, name: str) -> TopologyZone:
        for zone in self.zones:
            if zone.name == name:
                return zone
        raise KeyError(name)

    def gateways(self) -> tuple[Gateway, ...]:
        return tuple(g for node in self.nodes for g in node.gateways)

    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for node in self.nodes for e in node.endpoints)

    def parent(self, name: str) -> Node | None:
        """The node `name`'s first uplink leads to (None at tier 1 or without uplinks)."""
        for uplink in self.uplinks:
            if self.gateway(uplink.source).node == name:
                return self.node(self.gateway(uplink.target).node)
        return None

    def children(self, name: str) -> tuple[Node, ...]:
        """Nodes whose uplinks lead to `name`, in document order of the uplinks."""
        seen: dict[str, Node] = {}
        for uplink in self.uplinks:
            if self.gateway(uplink.target).node == name:
                child = self.node(self.gateway(uplink.source).node)
                seen.setdefault(child.name, child)
        return tuple(seen.values())


# -- routing -----------------------------------------------------------------------------------


def _adjacency(topology: Topology) -> dict[str, list[str]]:
    """Neighbours of each node over uplinks (both directions), in document order."""
    adjacent: dict[str, list[str]] = {node.name: [] for node in topology.nodes}
    for uplink in topology.uplinks:
        a = topology.gateway(uplink.source).node
        b = topology.gateway(uplink.target).node
        if b not in adjacent[a]:
            adjacent[a].append(b)
        if a not in adjacent[b]:
            adjacent[b].append(a)
    return adjacent


def route(topology: Topology, from_node: str, to_node: str) -> tuple[Node, ...]:
    """The nodes a message passes from `from_node` to `to_node`, both ends included.

    Over uplinks only (the government network's tree): a tier-3 node reaches tier 1 through its
    tier-2 node. Shortest path, ties broken by document order, so it is deterministic. Raises
    KeyError for an unknown node and ValueError when there is no path (a checked topology
    always has one between any two nodes, since all of them reach tier 1 and tier 1 is one node
    or its nodes are linked).
    """
    topology.node(from_node)
    topology.node(to_node)
    adjacent = _adjacency(topology)
    previous: dict[str, str | None] = {from_node: None}
    queue = deque([from_node])
    while queue:
        here = queue.popleft()
        if here == to_node:
            break
        for there in adjacent[here]:
            if there not in previous:
                previous[there] = here
                queue.append(there)
    if to_node not in previous:
        raise ValueError(f"no path from {from_node!r} to {to_node!r} over uplinks")
    path: list[str] = []
    step: str | None = to_node
    while step is not None:
        path.append(step)
        step = previous[step]
    return tuple(topology.node(name) for name in reversed(path))


def routing_table(topology: Topology, gateway: str) -> Mapping[str, str]:
    """Destination node -> next-hop gateway, for every node `gateway` can forward to directly.

    A destination is in the table when the first hop of its route leaves this gateway's node
    over an uplink that this gateway terminates; the value is the gateway at the other end.
    Gateways without uplinks (an internal-zone host) get an empty table.
    """
    here = topology.gateway(gateway)
    hops: dict[str, str] = {}
    for uplink in topology.uplinks:
        if uplink.source == gateway:
            hops.setdefault(topology.gateway(uplink.target).node, uplink.target)
        elif uplink.target == gateway:
            hops.setdefault(topology.gateway(uplink.source).node, uplink.source)
    table: dict[str, str] = {}
    for node in topology.nodes:
        if node.name == here.node:
            continue
        try:
            path = route(topology, here.node, node.name)
        except ValueError:
            continue
        next_node = path[1].name
        if next_node in hops:
            table[node.name] = hops[next_node]
    return table


# -- loading -----------------------------------------------------------------------------------

_TOP_REQUIRED = ("version", "zones", "tiers", "nodes")
_TOP_OPTIONAL = ("uplinks", "flows", "conferences")


class _TopologyReader(_Reader):
    """The gateway config's validating reads, plus the topology's sections."""

    def label(self, value: object, path: YamlPath) -> str:
        text = self.string(value, path).strip()
        if not text:
            raise self.at_value(path, "expected a non-empty name")
        return text

    def ip(self, value: object, path: YamlPath) -> str:
        text = self.string(value, path)
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise self.at_value(path, f"{text!r} is not an IPv4 or IPv6 address") from None

    def port(self, value: object, path: YamlPath) -> int:
        number = self.integer(value, path)
        if not 1 <= number <= 65535:
            raise self.at_value(path, f"port {number} is out of range (expected 1..65535)")
        return number

    def names(self, value: object, path: YamlPath) -> tuple[str, ...]:
        items = self.sequence(value, path)
        return tuple(self.name(item, (*path, index)) for index, item in enumerate(items))

    def version(self, value: object, path: YamlPath) -> int:
        number = self.integer(value, path)
        if number != 1:
            raise self.at_value(path, f"unsupported version {number} (expected 1)")
        return number

    def topology_zones(self, value: object, path: YamlPath) -> tuple[TopologyZone, ...]:
        items = self.sequence(value, path)
        if not items:
            raise self.at_value(path, "expected at least one zone, got an empty list")
        parsed = []
        for index, item in enumerate(items):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("name", "level", "zh", "en"))
            parsed.append(
                self.fields(
                    raw,
                    item_path,
                    {
                        "name": self.name,
                        "level": lambda v, p: self.choice(v, p, "level", LEVELS),
                        "zh": self.label,
                        "en": self.label,
                    },
                )
            )
        self.unique(parsed, path, "zone")
        return tuple(TopologyZone(**zone) for zone in parsed)

    def tiers(self, value: object, path: YamlPath) -> tuple[Tier, ...]:
        items = self.sequence(value, path)
        if not items:
            raise self.at_value(path, "expected at least one tier, got an empty list")
        tiers = []
        for index, item in enumerate(items):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("tier", "zh", "en"))
            read = self.fields(
                raw, item_path, {"tier": self.integer, "zh": self.label, "en": self.label}
            )
            if read["tier"] != index + 1:
                raise self.at_value(
                    (*item_path, "tier"),
                    f"tiers are numbered 1, 2, 3... in order; expected {index + 1}, "
                    f"got {read['tier']}",
                )
            tiers.append(Tier(number=read["tier"], zh=read["zh"], en=read["en"]))
        return tuple(tiers)

    def gateways(self, value: object, path: YamlPath, node: str) -> tuple[Gateway, ...]:
        parsed = []
        for index, item in enumerate(self.sequence(value, path)):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("name", "zone", "address"))
            read = self.fields(
                raw, item_path, {"name": self.name, "zone": self.name, "address": self.ip}
            )
            parsed.append(Gateway(node=node, **read))
        return tuple(parsed)

    def endpoints(self, value: object, path: YamlPath, node: str) -> tuple[Endpoint, ...]:
        parsed = []
        readers = {
            "name": self.name,
            "role": lambda v, p: self.choice(v, p, "endpoint role", ENDPOINT_ROLES),
            "protocol": lambda v, p: self.choice(v, p, "protocol", PROTOCOLS),
            "address": self.ip,
            "port": self.port,
            "zone": self.name,
            "bridge": self.name,
        }
        for index, item in enumerate(self.sequence(value, path)):
            item_path = (*path, index)
            raw = self.mapping(
                item, item_path, ("name", "role", "protocol", "address", "zone"), ("port", "bridge")
            )
            read = self.fields(raw, item_path, readers)
            read.setdefault("port", DEFAULT_PORTS[read["protocol"]])
            parsed.append(Endpoint(node=node, **read))
        return tuple(parsed)

    def nodes(self, value: object, path: YamlPath) -> tuple[Node, ...]:
        items = self.sequence(value, path)
        if not items:
            raise self.at_value(path, "expected at least one node, got an empty list")
        nodes = []
        for index, item in enumerate(items):
            item_path = (*path, index)
            raw = self.mapping(
                item,
                item_path,
                ("name", "zh", "en", "tier", "kind", "zones"),
                ("gateways", "endpoints"),
            )
            name = self.name(raw["name"], (*item_path, "name"))
            read = {"gateways": (), "endpoints": ()} | self.fields(
                raw,
                item_path,
                {
                    "name": self.name,
                    "zh": self.label,
                    "en": self.label,
                    "tier": self.integer,
                    "kind": lambda v, p: self.choice(v, p, "node kind", NODE_KINDS),
                    "zones": self.names,
                    "gateways": lambda v, p, name=name: self.gateways(v, p, name),
                    "endpoints": lambda v, p, name=name: self.endpoints(v, p, name),
                },
            )
            nodes.append(Node(**read))
        return tuple(nodes)

    def uplinks(self, value: object, path: YamlPath) -> tuple[Uplink, ...]:
        parsed = []
        for index, item in enumerate(self.sequence(value, path)):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("from", "to"))
            read = self.fields(raw, item_path, {"from": self.name, "to": self.name})
            parsed.append(Uplink(source=read["from"], target=read["to"]))
        return tuple(parsed)

    def topology_flows(self, value: object, path: YamlPath) -> tuple[TopologyFlow, ...]:
        parsed = []
        for index, item in enumerate(self.sequence(value, path)):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("name", "node", "from", "to"))
            parsed.append(self.fields(raw, item_path, dict.fromkeys(raw, self.name)))
        self.unique(parsed, path, "flow")
        return tuple(
            TopologyFlow(name=f["name"], node=f["node"], source=f["from"], destination=f["to"])
            for f in parsed
        )

    def conferences(self, value: object, path: YamlPath) -> tuple[Conference, ...]:
        parsed = []
        for index, item in enumerate(self.sequence(value, path)):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("name", "kind", "bridge", "nodes"))
            parsed.append(
                self.fields(
                    raw,
                    item_path,
                    {
                        "name": self.name,
                        "kind": lambda v, p: self.choice(v, p, "conference kind", CONFERENCE_KINDS),
                        "bridge": self.name,
                        "nodes": self.names,
                    },
                )
            )
        self.unique(parsed, path, "conference")
        return tuple(Conference(**c) for c in parsed)


class _Checker:
    """The cross-reference checks; each problem is collected with its file, line and key."""

    def __init__(self, reader: _TopologyReader, topology: Topology) -> None:
        self.reader = reader
        self.topology = topology
        self.errors: list[ConfigError] = []
        self.node_index = {node.name: i for i, node in enumerate(topology.nodes)}
        self.gateways: dict[str, tuple[Gateway, YamlPath]] = {}
        self.endpoints: dict[str, tuple[Endpoint, YamlPath]] = {}
        self.zone_names = [zone.name for zone in topology.zones]
        #: nodes with an uplink refused above: their path is not reported again (no cascade)
        self.broken_uplink: set[str] = set()
        #: endpoints in a zone their node lacks: their bridge's zone is not compared again
        self.misplaced: set[str] = set()

    def error(self, path: YamlPath, message: str) -> None:
        self.errors.append(self.reader.at_value(path, message))

    def line(self, path: YamlPath) -> int:
        return self.reader.positions.value_line(path) or 0

    def run(self) -> list[ConfigError]:
        self.nodes()
        self.uplinks()
        self.paths_to_tier_one()
        self.flows()
        self.endpoint_bridges()
        self.conferences()
        return self.errors

    def known_zone(self, name: str, path: YamlPath) -> bool:
        if name in self.zone_names:
            return True
        self.error(path, f"unknown zone {name!r} (expected one of: {', '.join(self.zone_names)})")
        return False

    def known_node(self, name: str, path: YamlPath) -> bool:
        if name in self.node_index:
            return True
        self.error(path, f"unknown node {name!r}")
        return False

    def nodes(self) -> None:
        """Names, tiers, zones and unique names and addresses of nodes, gateways, endpoints."""
        tiers = len(self.topology.tiers)
        first_names: dict[tuple[str, str], int] = {}
        # A gateway owns its whole address; an endpoint owns its address and port, so a SIP
        # and an H.323 service may share a host, but never a gateway's address.
        hosts: dict[str, tuple[str, int, bool]] = {}  # address -> (what, line, is a gateway)
        sockets: dict[tuple[str, int], tuple[str, int]] = {}

        def unique_name(kind: str, value: str, path: YamlPath) -> None:
            if (kind, value) in first_names:
                self.error(
                    path,
                    f"duplicate {kind} {value!r} (first at line {first_names[(kind, value)]})",
                )
            else:
                first_names[(kind, value)] = self.line(path)

        def unique_address(address: str, port: int | None, what: str, path: YamlPath) -> None:
            clash: tuple[str, int] | None = None
            host = hosts.get(address)
            if host is not None and (port is None or host[2]):
                clash = host[:2]
            elif port is not None and (address, port) in sockets:
                clash = sockets[(address, port)]
            if clash is not None:
                shown = address if port is None else f"{address} port {port}"
                self.error(
                    path, f"duplicate address {shown} (already {clash[0]} at line {clash[1]})"
                )
                return
            hosts.setdefault(address, (what, self.line(path), port is None))
            if port is not None:
                sockets[(address, port)] = (what, self.line(path))

        for i, node in enumerate(self.topology.nodes):
            base: YamlPath = ("nodes", i)
            unique_name("node name", node.name, (*base, "name"))
            unique_name("Chinese node name", node.zh, (*base, "zh"))
            unique_name("English node name", node.en, (*base, "en"))
            if not 1 <= node.tier <= tiers:
                self.error((*base, "tier"), f"unknown tier {node.tier} (expected 1..{tiers})")
            for j, zone in enumerate(node.zones):
                zpath = (*base, "zones", j)
                if self.known_zone(zone, zpath) and node.zones.index(zone) != j:
                    self.error(zpath, f"zone {zone!r} is listed twice")
            for j, gateway in enumerate(node.gateways):
                gpath = (*base, "gateways", j)
                unique_name("gateway name", gateway.name, (*gpath, "name"))
                self.gateways.setdefault(gateway.name, (gateway, gpath))
                if gateway.zone not in node.zones:
                    self.error(
                        (*gpath, "zone"),
                        f"gateway {gateway.name} is in zone {gateway.zone!r}, which node "
                        f"{node.name} does not have (its zones: {', '.join(node.zones)})",
                    )
                unique_address(
                    gateway.address, None, f"gateway {gateway.name}", (*gpath, "address")
                )
            for j, endpoint in enumerate(node.endpoints):
                epath = (*base, "endpoints", j)
                unique_name("endpoint name", endpoint.name, (*epath, "name"))
                self.endpoints.setdefault(endpoint.name, (endpoint, epath))
                if endpoint.zone not in node.zones:
                    self.misplaced.add(endpoint.name)
                    self.error(
                        (*epath, "zone"),
                        f"endpoint {endpoint.name} is in zone {endpoint.zone!r}, which node "
                        f"{node.name} does not have (its zones: {', '.join(node.zones)})",
                    )
                unique_address(
                    endpoint.address,
                    endpoint.port,
                    f"endpoint {endpoint.name}",
                    (*epath, "address"),
                )
        tier_one = [n for n in self.topology.nodes if n.tier == 1]
        if not tier_one:
            self.error(("nodes",), "no node is in tier 1: every report needs somewhere to go")

    def uplinks(self) -> None:
        """Each uplink joins two known gateways of one zone, going up a tier."""
        seen: dict[tuple[str, str], int] = {}
        for i, uplink in enumerate(self.topology.uplinks):
            base: YamlPath = ("uplinks", i)
            ends = []
            for key, name in (("from", uplink.source), ("to", uplink.target)):
                if name in self.gateways:
                    ends.append(self.gateways[name][0])
                else:
                    self.error((*base, key), f"unknown gateway {name!r}")
            if len(ends) != 2:
                if uplink.source in self.gateways:
                    self.broken_uplink.add(self.gateways[uplink.source][0].node)
                continue
            lower, upper = ends
            if lower.zone != upper.zone or lower.node == upper.node:
                self.broken_uplink.add(lower.node)
            if lower.zone != upper.zone:
                self.error(
                    (*base, "to"),
                    f"uplink joins two zones: {lower.name} is in {lower.zone!r}, "
                    f"{upper.name} is in {upper.zone!r} (zones are isolated; a link stays in one)",
                )
                continue
            if lower.node == upper.node:
                self.error((*base, "to"), f"uplink joins node {lower.node} to itself")
                continue
            low_tier = self.topology.node(lower.node).tier
            high_tier = self.topology.node(upper.node).tier
            if high_tier >= low_tier:
                self.error(
                    (*base, "to"),
                    f"an uplink goes up a tier: {lower.node} is tier {low_tier}, "
                    f"{upper.node} is tier {high_tier}",
                )
            pair = (uplink.source, uplink.target)
            if pair in seen:
                self.error(base, f"duplicate uplink (first at line {seen[pair]})")
            else:
                seen[pair] = self.line(base)

    def paths_to_tier_one(self) -> None:
        """Every node reaches tier 1 by going up uplinks that passed the checks above."""
        up: dict[str, list[str]] = {node.name: [] for node in self.topology.nodes}
        for uplink in self.topology.uplinks:
            if uplink.source not in self.gateways or uplink.target not in self.gateways:
                continue
            lower, upper = self.gateways[uplink.source][0], self.gateways[uplink.target][0]
            if lower.zone == upper.zone and lower.node != upper.node:
                up[lower.node].append(upper.node)
        reaches: dict[str, bool] = {}

        def reach(name: str, visiting: frozenset[str]) -> bool:
            if name in reaches:
                return reaches[name]
            if self.topology.node(name).tier == 1 or name in self.broken_uplink:
                return True
            ok = any(reach(n, visiting | {name}) for n in up[name] if n not in visiting)
            if not visiting:
                reaches[name] = ok
            return ok

        for i, node in enumerate(self.topology.nodes):
            if node.tier == 1 or reach(node.name, frozenset()):
                continue
            if up[node.name]:
                why = f"its uplinks lead to {', '.join(up[node.name])}, which do not reach it"
            else:
                why = "it has no uplink (add one under `uplinks:` from one of its gateways)"
            self.error(("nodes", i, "name"), f"node {node.name} has no path to tier 1: {why}")

    def flows(self) -> None:
        """A flow crosses between two zones at a node that has a gateway in each."""
        for i, flow in enumerate(self.topology.flows):
            base: YamlPath = ("flows", i)
            if not self.known_node(flow.node, (*base, "node")):
                continue
            node = self.topology.node(flow.node)
            for key, zone in (("from", flow.source), ("to", flow.destination)):
                if not self.known_zone(zone, (*base, key)):
                    continue
                if node.gateway_in(zone) is None:
                    self.error(
                        (*base, key),
                        f"flow {flow.name} crosses zone {zone!r} at node {node.name}, "
                        f"which has no gateway in that zone",
                    )
            if flow.source == flow.destination:
                self.error((*base, "to"), "a flow cannot go from a zone to itself")

    def endpoint_bridges(self) -> None:
        """A terminal registers with a bridge of its kind, in its own zone."""
        for endpoint, path in self.endpoints.values():
            wanted = _BRIDGE_OF.get(endpoint.role)
            if wanted is None:
                if endpoint.bridge is not None:
                    self.error(
                        (*path, "bridge"), f"a {endpoint.role} is a bridge; it has no bridge"
                    )
                continue
            if endpoint.bridge is None:
                self.error(path, f"a {endpoint.role} needs `bridge:` (the {wanted} it uses)")
                continue
            if endpoint.bridge not in self.endpoints:
                self.error((*path, "bridge"), f"unknown endpoint {endpoint.bridge!r}")
                continue
            bridge = self.endpoints[endpoint.bridge][0]
            if bridge.role != wanted:
                self.error(
                    (*path, "bridge"),
                    f"a {endpoint.role} registers with a {wanted}; "
                    f"{bridge.name} is a {bridge.role}",
                )
            elif bridge.zone != endpoint.zone and endpoint.name not in self.misplaced:
                self.error(
                    (*path, "bridge"),
                    f"endpoint joins two zones: {endpoint.name} is in {endpoint.zone!r}, "
                    f"its bridge {bridge.name} is in {bridge.zone!r}",
                )

    def conferences(self) -> None:
        """A conference uses a bridge of its kind, between nodes that share a zone."""
        for i, conference in enumerate(self.topology.conferences):
            base: YamlPath = ("conferences", i)
            if conference.bridge not in self.endpoints:
                self.error((*base, "bridge"), f"unknown endpoint {conference.bridge!r}")
            else:
                bridge = self.endpoints[conference.bridge][0]
                wanted = _CONFERENCE_BRIDGE[conference.kind]
                if bridge.role != wanted:
                    self.error(
                        (*base, "bridge"),
                        f"a {conference.kind} conference needs a {wanted}; "
                        f"{bridge.name} is a {bridge.role}",
                    )
            known = [
                self.topology.node(name)
                for j, name in enumerate(conference.nodes)
                if self.known_node(name, (*base, "nodes", j))
            ]
            if len(known) != len(conference.nodes):
                continue
            if len(known) < 2:
                self.error((*base, "nodes"), "a conference needs at least two nodes")
                continue
            shared = set(known[0].zones).intersection(*(n.zones for n in known[1:]))
            if not shared:
                listing = "; ".join(f"{n.name}: {', '.join(n.zones)}" for n in known)
                self.error(
                    (*base, "nodes"),
                    f"a {conference.kind} conference between nodes that share no zone "
                    f"({listing}); it would have to cross an air gap",
                )


def _read_document(file: str, path: Path) -> tuple[Any, _TopologyReader]:
    """Text -> (safe_load'ed document, reader with positions); ConfigError on any problem."""
    document, positions = read_yaml_document(file, path, _TOP_REQUIRED)
    return document, _TopologyReader(file, path.parent, positions)


def load_topology(path: str | Path) -> Topology:
    """Read, validate and return a topology; ConfigError (or TopologyError) on problems."""
    file = str(path)
    topo_path = Path(path).absolute()
    document, reader = _read_document(file, topo_path)
    raw = reader.mapping(document, (), _TOP_REQUIRED, _TOP_OPTIONAL)
    sections = {"uplinks": (), "flows": (), "conferences": ()} | reader.fields(
        raw,
        (),
        {
            "version": reader.version,
            "zones": reader.topology_zones,
            "tiers": reader.tiers,
            "nodes": reader.nodes,
            "uplinks": reader.uplinks,
            "flows": reader.topology_flows,
            "conferences": reader.conferences,
        },
    )
    topology = Topology(
        path=topo_path,
        zones=sections["zones"],
        tiers=sections["tiers"],
        nodes=sections["nodes"],
        uplinks=sections["uplinks"],
        flows=sections["flows"],
        conferences=sections["conferences"],
    )
    errors = _Checker(reader, topology).run()
    if errors:
        raise TopologyError(errors)
    return topology
