"""What `zonegate status` shows: queue depths, oldest ages, and which agents are alive."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from ..transfer.spool import STATES, Spool
from ..zones.config import GatewayConfig
from .agent import AgentContext
from .supervisor import agents_for

__all__ = ["gateway_status", "render_status"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gateway_status(cfg: GatewayConfig) -> dict[str, Any]:
    spool = Spool(cfg.spool)
    now = time.time()
    queues = {
        s: {"depth": spool.depth(s), "oldest_age_s": round(spool.oldest_age(s, now), 3)}
        for s in STATES
    }
    agents = {}
    for agent in agents_for(cfg):
        info: dict[str, Any] = {"running": False}
        with contextlib.suppress(FileNotFoundError, ValueError):
            runtime = json.loads(AgentContext.runtime_file(cfg.spool, agent).read_text())
            info = {
                "running": _alive(int(runtime["pid"])),
                "pid": runtime["pid"],
                "metrics": runtime.get("metrics"),
                "started": runtime.get("started"),
            }
        agents[agent] = info
    return {
        "gateway": cfg.name,
        "zone": cfg.zone,
        "flows": [
            {"name": f.name, "from": f.source, "to": f.destination, "side": _side(cfg, f.sender)}
            for f in cfg.flows
        ],
        "queues": queues,
        "agents": agents,
    }


def _side(cfg: GatewayConfig, sender: str) -> str:
    return "send" if sender == cfg.name else "receive"


def render_status(data: dict[str, Any]) -> str:
    lines = [f"gateway {data['gateway']} (zone {data['zone']})"]
    for f in data["flows"]:
        lines.append(f"  flow {f['name']:<10} {f['from']} -> {f['to']}  ({f['side']})")
    lines.append("  agents:")
    for name, a in data["agents"].items():
        state = "running" if a.get("running") else "stopped"
        lines.append(f"    {name:<9} {state:<8} pid {a.get('pid', '-')}  {a.get('metrics') or ''}")
    lines.append("  queues:          depth   oldest")
    for state, q in data["queues"].items():
        lines.append(f"    {state:<12} {q['depth']:>8}   {q['oldest_age_s']:>7.1f}s")
    return "\n".join(lines)
