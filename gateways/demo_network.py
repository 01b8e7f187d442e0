"""The demo's network, read from the bureau's topology: which gateways run, each flow's route.

Why from `configs/topology.yaml` and not a list written here: the demo is meant to be the
bureau's own network in miniature, so its gateway names, its zones and every hop of a relayed
route are what the topology says. A cross-zone step must be one of the topology's flows at that
node (`mb-import`, `mb-report`, ...); a step between tiers follows `zones.topology.routing_table`
(next-hop gateway per destination node), and the nodes visited must be `zones.topology.route`'s.

The demo runs the municipal bureau's three zones (internet, internal, government gateways), the
Huangpu district bureau (tier 2) and the Waitan judicial office (tier 3), and four flows:
`import` internet -> internal and `publish` internal -> internet at the bureau; `report` from
the judicial office up through the district bureau and the bureau's government gateway into its
internal network; `dispatch` the same way back down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..zones.topology import Topology, route, routing_table

__all__ = [
    "BUREAU_NODE",
    "DISTRICT_NODE",
    "OFFICE_NODE",
    "TOPOLOGY",
    "DemoFlow",
    "DemoGateway",
    "DemoNetwork",
    "NetworkError",
    "demo_network",
]

#: The topology the demo is built from: the repository's own (the package root is the repo root).
TOPOLOGY = Path(__file__).resolve().parent.parent / "configs" / "topology.yaml"
BUREAU_NODE = "municipal-bureau"  # tier 1
DISTRICT_NODE = "district-huangpu"  # tier 2
OFFICE_NODE = "waitan-jo"  # tier 3


class NetworkError(ValueError):
    """The topology lacks a node, gateway, uplink or flow the demo's network needs."""


@dataclass(frozen=True)
class DemoGateway:
    """One gateway the demo runs, with its site as the topology names it."""

    name: str
    node: str
    zone: str
    tier: int
    site: str  # the node's English name
    site_zh: str


@dataclass(frozen=True)
class DemoFlow:
    """One flow: zones it joins and the gateways it passes, originator first, receiver last."""

    name: str
    source: str
    destination: str
    route: tuple[str, ...]
    #: what the flow carries, for the screen
    what: str

    @property
    def sender(self) -> str:
        return self.route[0]

    @property
    def receiver(self) -> str:
        return self.route[-1]

    @property
    def relays(self) -> tuple[str, ...]:
        return self.route[1:-1]

    @property
    def hops(self) -> tuple[tuple[str, str], ...]:
        """(sending gateway, receiving gateway) of each link, in route order."""
        return tuple(zip(self.route, self.route[1:], strict=False))


@dataclass(frozen=True)
class DemoNetwork:
    gateways: tuple[DemoGateway, ...]
    flows: tuple[DemoFlow, ...]

    def gateway(self, name: str) -> DemoGateway:
        return next(g for g in self.gateways if g.name == name)

    def flow(self, name: str) -> DemoFlow:
        return next(f for f in self.flows if f.name == name)

    def flows_through(self, gateway: str) -> tuple[DemoFlow, ...]:
        """The flows whose route passes `gateway` (as sender, relay or receiver)."""
        return tuple(f for f in self.flows if gateway in f.route)

    def peers_of(self, gateway: str) -> tuple[str, ...]:
        """Every other gateway on a route `gateway` is on: whose keys its config must name."""
        on = {g for f in self.flows_through(gateway) for g in f.route}
        return tuple(g.name for g in self.gateways if g.name in on and g.name != gateway)


def _across(topology: Topology, node: str, source: str, destination: str) -> tuple[str, str]:
    """The gateways of `node` that carry its flow `source` -> `destination` (zones)."""
    if not any(
        f.node == node and f.source == source and f.destination == destination
        for f in topology.flows
    ):
        raise NetworkError(f"the topology has no flow {source} -> {destination} at node {node!r}")
    here = topology.node(node)
    ends = (here.gateway_in(source), here.gateway_in(destination))
    if ends[0] is None or ends[1] is None:
        raise NetworkError(f"node {node!r} has no gateway in zone {source!r} or {destination!r}")
    return ends[0].name, ends[1].name


def _over_uplinks(topology: Topology, start: str, to_node: str) -> tuple[str, ...]:
    """Gateways from `start` to `to_node`'s gateway, each next hop from the routing table.

    The nodes visited must be exactly `route`'s: the routing table and the route are two views
    of one network, and a demo that disagreed with either would not be the topology's network.
    """
    path = [start]
    while topology.gateway(path[-1]).node != to_node:
        table = routing_table(topology, path[-1])
        if to_node not in table or len(path) > 16:
            raise NetworkError(f"no route from {start!r} to node {to_node!r} over uplinks")
        path.append(table[to_node])
    nodes = tuple(topology.gateway(g).node for g in path)
    expected = tuple(n.name for n in route(topology, nodes[0], to_node))
    if nodes != expected:
        raise NetworkError(f"routing table gives {nodes}, route gives {expected}")
    return tuple(path)


def demo_network(topology: Topology) -> DemoNetwork:
    """The demo's gateways and flows, from `topology`; NetworkError names what is missing."""
    try:
        office_gw = topology.node(OFFICE_NODE).gateway_in("government")
        bureau_gov = topology.node(BUREAU_NODE).gateway_in("government")
        topology.node(DISTRICT_NODE)
    except KeyError as e:
        raise NetworkError(f"the topology has no node {e.args[0]!r}") from None
    if office_gw is None or bureau_gov is None:
        raise NetworkError(f"{OFFICE_NODE} and {BUREAU_NODE} need a government-zone gateway")
    inet, intra = _across(topology, BUREAU_NODE, "internet", "internal")
    up = _over_uplinks(topology, office_gw.name, BUREAU_NODE)
    down = _over_uplinks(topology, bureau_gov.name, OFFICE_NODE)
    gov_in, report_end = _across(topology, BUREAU_NODE, "government", "internal")
    dispatch_start, gov_out = _across(topology, BUREAU_NODE, "internal", "government")
    if up[-1] != gov_in or down[0] != gov_out or report_end != intra or dispatch_start != intra:
        raise NetworkError("the bureau's flows and uplinks do not meet at one government gateway")
    if DISTRICT_NODE not in {topology.gateway(g).node for g in up}:
        raise NetworkError(f"{OFFICE_NODE} does not reach {BUREAU_NODE} through {DISTRICT_NODE}")
    flows = (
        DemoFlow("import", "internet", "internal", (inet, intra), "citizens' submissions"),
        DemoFlow("publish", "internal", "internet", (intra, inet), "reviewed releases"),
        DemoFlow("report", "government", "internal", (*up, intra), "reports from below"),
        DemoFlow("dispatch", "internal", "government", (intra, *down), "notices down"),
    )
    names: list[str] = []
    for flow in flows:
        names += [g for g in flow.route if g not in names]
    names.sort(key=lambda g: topology.node(topology.gateway(g).node).tier)  # stable: tier 1 first
    gateways = []
    for name in names:
        g = topology.gateway(name)
        node = topology.node(g.node)
        gateways.append(DemoGateway(name, node.name, g.zone, node.tier, node.en, node.zh))
    return DemoNetwork(tuple(gateways), flows)
