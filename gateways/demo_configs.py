"""Gateway configs for demos and tests: one writer for every layout the project runs on one host.

Why one writer: the two-gateway pair (the tests' and benchmarks' spine), the three-gateway relay
chain (tests/test_relay_e2e.py) and the three-zone demo all lay a gateway out the same way: its
directory `root/<name>/` holds `gateway.yaml`, its spool, audit log, outbox and inbox; every
key lives in `root/keys/` (one machine standing in for many hosts), named by the gateway. Only
the flows, peers and metrics differ, so those are the parameters.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from ..transfer.keys import generate_gateway_keys
from .demo_network import DemoFlow, DemoNetwork
from .demo_publish import PUBLISH, add_publish_flow, people_entries, release_rules, write_people

__all__ = [
    "BUREAU",
    "DISTRICT",
    "JUDICIAL",
    "REPORT",
    "free_port",
    "gateway_config",
    "write_config",
    "write_demo_configs",
    "write_gateway_pair",
    "write_relay_chain",
]

#: Zones as the two-gateway pair declares them (the bureau's internet and internal networks).
PAIR_ZONES = ({"name": "internet", "level": "public"}, {"name": "internal", "level": "classified"})
PAIR_FLOW = "import"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nobody holds right now (TCP by default, `SOCK_DGRAM` for UDP), below
    the kernel's ephemeral range.

    Why not the port a bind to 0 gives: that one comes from the ephemeral range, and once our
    probe socket is closed the kernel may hand it to any outgoing connection as its local port
    before the gateway binds it. Seen in CI: a relay that could never bind its endpoint, and a
    demo that waited for it until it was killed. Nothing takes a port below the range unless it
    binds it by number. Ports given out by this process are not given again.
    """
    low = _ephemeral_low()
    if low - _BELOW_EPHEMERAL < 1024:
        return _probe(kind, 0)  # no room below the range on this machine: take the kernel's
    for _ in range(500):
        port = _random.randrange(low - _BELOW_EPHEMERAL, low)
        if port in _given:
            continue
        with contextlib.suppress(OSError):
            _probe(kind, port)
            _given.add(port)
            return port
    raise OSError(f"no free loopback port in {low - _BELOW_EPHEMERAL}..{low - 1}")


#: How many ports below the ephemeral range `free_port` picks from.
_BELOW_EPHEMERAL = 12000
_given: set[int] = set()
_random = random.SystemRandom()


def _probe(kind: int, port: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", port))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 if it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def gateway_config(
    name: str,
    zone: str,
    node: str,
    zones: Iterable[dict[str, str]],
    peers: Iterable[tuple[str, str]],
    metrics: dict[str, str],
    flows: list[dict[str, Any]],
) -> dict[str, Any]:
    """One gateway's config as a YAML-ready mapping; `peers` are (name, zone) pairs."""
    return {
        "version": 1,
        "gateway": {"name": name, "zone": zone, "node": node},
        "zones": [dict(z) for z in zones],
        "paths": {
            "spool": "spool",
            "audit_log": "audit/audit.jsonl",
            "outbox": "outbox",
            "inbox": "inbox",
        },
        "keys": {
            "signing": f"../keys/{name}.sign.key",
            "encryption": f"../keys/{name}.kem.key",
            "audit": f"../keys/{name}.audit.key",
        },
        "peers": [
            {
                "name": peer,
                "zone": peer_zone,
                "signing_key": f"../keys/{peer}.sign.pub",
                "encryption_key": f"../keys/{peer}.kem.pub",
            }
            for peer, peer_zone in peers
        ],
        "metrics": metrics,
        "flows": flows,
    }


def write_config(root: Path, name: str, cfg: dict[str, Any]) -> Path:
    """Write `root/<name>/gateway.yaml` (the directory must not exist yet)."""
    d = root / name
    d.mkdir(parents=True)
    path = d / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


# -- the two-gateway pair: internet-gw -> internal-gw ------------------------------------------


def _pair_config(
    name: str, peer: str, port: int, limit: int, transport: dict | None, curve: bool, batch: bool
) -> dict[str, Any]:
    sender = name == "internet-gw"
    link: dict[str, Any] = {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}"}
    if curve:
        # CurveZMQ: the link is encrypted and only the peer's key gets in
        link |= {
            "curve_key": f"../keys/{name}.curve.key",
            "peer_curve_key": f"../keys/{peer}.curve.pub",
        }
    zone = "internet" if sender else "internal"
    peer_zone = "internal" if sender else "internet"
    metrics = (
        {"ingest": "127.0.0.1:0", "sender": "127.0.0.1:0"}
        if sender
        else {"receiver": "127.0.0.1:0"}
    )
    flow = {
        "name": PAIR_FLOW,
        "from": "internet",
        "to": "internal",
        "sender": "internet-gw",
        "receiver": "internal-gw",
        "transport": transport or link,
        "policy": {"min_size": 0, "max_size": limit},
    }
    if batch:
        flow["batch"] = True
    return gateway_config(
        name, zone, "municipal-bureau", PAIR_ZONES, [(peer, peer_zone)], metrics, [flow]
    )


def write_gateway_pair(
    root: Path,
    limit: int,
    port: int | None = None,
    transports: dict[str, dict] | None = None,
    *,
    publish: bool = False,
    publish_port: int | None = None,
    review_expires: str = "1h",
    curve: bool = False,
    batch: bool = False,
) -> dict[str, Path]:
    """Keys and configs of two gateways under `root`; returns name -> config path.

    internet-gw (ingest + sender) and internal-gw (receiver) with the `import` flow: the spine
    the tests and benchmarks run on. `transports` maps a gateway name to its flow's transport
    mapping (default: zmq on loopback). With `curve`, the import link is CurveZMQ-encrypted with
    the gateways' Curve keys. With `batch`, small messages of the import flow cross in
    containers (docs/batch.md). With `publish`, both also get the demo people (keys under
    `root/people`) and the `publish` flow (internal -> internet, two officers' approvals, signed
    delivery); see demo_publish.py.
    """
    for name in ("internet-gw", "internal-gw"):
        generate_gateway_keys(root / "keys", name)
    port = port or free_port()
    if publish:
        write_people(root / "people")
        publish_port = publish_port or free_port()
    configs = {}
    for name, peer in (("internet-gw", "internal-gw"), ("internal-gw", "internet-gw")):
        transport = (transports or {}).get(name)
        cfg = _pair_config(name, peer, port, limit, transport, curve, batch)
        if publish:
            add_publish_flow(cfg, name, publish_port or 0, limit, review_expires)
        configs[name] = write_config(root, name, cfg)
    return configs


# -- the relay chain: judicial office -> district bureau -> municipal bureau -------------------

JUDICIAL = "waitan-jo-gov-gw"  # tier 3: Waitan Sub-district Judicial Office
DISTRICT = "district-huangpu-gov-gw"  # tier 2: Huangpu District Bureau
BUREAU = "municipal-bureau-intra-gw"  # tier 1: the Municipal Bureau's internal network
REPORT = "report"
_CHAIN_NODES = {JUDICIAL: "waitan-jo", DISTRICT: "district-huangpu", BUREAU: "municipal-bureau"}
_CHAIN_ZONES = {JUDICIAL: "government", DISTRICT: "government", BUREAU: "internal"}


def write_relay_chain(root: Path, limit: int = 64 * 1024**2) -> dict[str, Path]:
    """Keys and configs of a three-gateway `report` chain under `root`; name -> config path.

    The judicial office's government gateway seals for the bureau's internal gateway, and its
    district bureau's government gateway relays (`via`), as `zones.topology.route` gives the
    nodes over the uplinks of `configs/topology.yaml`. The same flow entry (with its `via`) goes
    into all three configs; each gateway takes its own role from it. The demo's own network
    (demo_network.py) adds the bureau's government gateway as a second relay; this chain is the
    shortest relayed route, for the relay's tests.
    """
    for name in _CHAIN_NODES:
        generate_gateway_keys(root / "keys", name)
    flow = {
        "name": REPORT,
        "from": "government",
        "to": "internal",
        "sender": JUDICIAL,
        "receiver": BUREAU,
        "via": [
            {
                "gateway": DISTRICT,
                "transport": {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{free_port()}"},
            }
        ],
        "transport": {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "policy": {"min_size": 0, "max_size": limit},
    }
    agents = {JUDICIAL: ("ingest", "sender"), DISTRICT: ("relay",), BUREAU: ("receiver",)}
    zones = (
        {"name": "government", "level": "classified"},
        {"name": "internal", "level": "classified"},
    )
    configs = {}
    for name, node in _CHAIN_NODES.items():
        peers = [(p, _CHAIN_ZONES[p]) for p in _CHAIN_NODES if p != name]
        metrics = dict.fromkeys(agents[name], "127.0.0.1:0")
        cfg = gateway_config(name, _CHAIN_ZONES[name], node, zones, peers, metrics, [flow])
        configs[name] = write_config(root, name, cfg)
    return configs


# -- the three-zone demo: every gateway of demo_network.py -------------------------------------

#: transport_for(flow, hop index, gateway) -> the hop's transport as that gateway's config has it
TransportFor = Callable[[DemoFlow, int, str], dict[str, Any]]


def write_demo_configs(
    root: Path,
    network: DemoNetwork,
    zones: Iterable[dict[str, str]],
    transport_for: TransportFor,
    limits: dict[str, int],
    review_expires: str = "1h",
) -> dict[str, Path]:
    """Keys and configs of every gateway of `network` under `root`; name -> config path.

    Each config holds the flows whose route passes that gateway (the same entry, `via` and all,
    in every config on the route, each hop's transport as `transport_for` renders it for this
    gateway), its peers (every gateway it shares a route with), the people when it takes part
    in the reviewed `publish` flow, and a metrics endpoint for each agent it runs.
    """
    zones = [dict(z) for z in zones]
    for g in network.gateways:
        generate_gateway_keys(root / "keys", g.name)
    write_people(root / "people")
    configs = {}
    for g in network.gateways:
        flows = []
        agents: list[str] = []
        for flow in network.flows_through(g.name):
            entry: dict[str, Any] = {
                "name": flow.name,
                "from": flow.source,
                "to": flow.destination,
                "sender": flow.sender,
                "receiver": flow.receiver,
            }
            last = len(flow.hops) - 1
            if flow.relays:
                entry["via"] = [
                    {"gateway": relay, "transport": transport_for(flow, i, g.name)}
                    for i, relay in enumerate(flow.relays)
                ]
            entry["transport"] = transport_for(flow, last, g.name)
            entry["policy"] = {"min_size": 0, "max_size": limits[flow.name]}
            if flow.name == PUBLISH:
                entry |= release_rules(review_expires)
            flows.append(entry)
            roles = ["ingest", "sender"] if g.name == flow.sender else []
            roles += ["receiver"] if g.name == flow.receiver else []
            roles += ["relay"] if g.name in flow.relays else []
            agents += [a for a in roles if a not in agents]
        peers = [(p, network.gateway(p).zone) for p in network.peers_of(g.name)]
        metrics = dict.fromkeys(agents, "127.0.0.1:0")
        cfg = gateway_config(g.name, g.zone, g.node, zones, peers, metrics, flows)
        if any(f.name == PUBLISH for f in network.flows_through(g.name)):
            cfg["people"] = people_entries()
        configs[g.name] = write_config(root, g.name, cfg)
    return configs
