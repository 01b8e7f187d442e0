"""Configs for a relayed flow across the three tiers: judicial office -> district -> bureau.

The `report` flow (government -> internal) starts at a tier-3 judicial office's government
gateway, is relayed by its tier-2 district bureau's government gateway, and ends at the tier-1
municipal bureau's internal gateway, as `zones.topology.route` gives it over the uplinks of
`configs/topology.yaml`. The same flow entry (with its `via`) is written into all three configs;
each gateway takes its own role from it (sender, relay, receiver). Each gateway has its own keys.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml

from ..transfer.keys import generate_gateway_keys

__all__ = ["BUREAU", "DISTRICT", "JUDICIAL", "REPORT", "write_relay_chain"]

JUDICIAL = "waitan-jo-gov-gw"  # tier 3: Waitan Sub-district Judicial Office
DISTRICT = "district-huangpu-gov-gw"  # tier 2: Huangpu District Bureau
BUREAU = "municipal-bureau-intra-gw"  # tier 1: the Municipal Bureau's internal network
NODES = {JUDICIAL: "waitan-jo", DISTRICT: "district-huangpu", BUREAU: "municipal-bureau"}
ZONES = {JUDICIAL: "government", DISTRICT: "government", BUREAU: "internal"}
REPORT = "report"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def report_flow(limit: int, into_district: int, into_bureau: int) -> dict[str, Any]:
    """The relayed flow: every link is named by the gateway that receives on it."""
    return {
        "name": REPORT,
        "from": "government",
        "to": "internal",
        "sender": JUDICIAL,
        "receiver": BUREAU,
        "via": [
            {
                "gateway": DISTRICT,
                "transport": {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{into_district}"},
            }
        ],
        "transport": {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{into_bureau}"},
        "policy": {"min_size": 0, "max_size": limit},
    }


def write_relay_chain(root: Path, limit: int = 64 * 1024**2) -> dict[str, Path]:
    """Keys and configs of the three gateways under `root`; returns name -> config path."""
    for name in NODES:
        generate_gateway_keys(root / "keys", name)
    flow = report_flow(limit, _free_port(), _free_port())
    agent = {JUDICIAL: ("ingest", "sender"), DISTRICT: ("relay",), BUREAU: ("receiver",)}
    configs = {}
    for name, node in NODES.items():
        d = root / name
        d.mkdir(parents=True)
        cfg = {
            "version": 1,
            "gateway": {"name": name, "zone": ZONES[name], "node": node},
            "zones": [
                {"name": "government", "level": "classified"},
                {"name": "internal", "level": "classified"},
            ],
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
                    "zone": ZONES[peer],
                    "signing_key": f"../keys/{peer}.sign.pub",
                    "encryption_key": f"../keys/{peer}.kem.pub",
                }
                for peer in NODES
                if peer != name
            ],
            "metrics": dict.fromkeys(agent[name], "127.0.0.1:0"),
            "flows": [flow],
        }
        path = d / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        configs[name] = path
    return configs
