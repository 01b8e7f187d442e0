"""What `zonegate status` shows: queue depths, oldest ages, and which agents are alive.

Also, per flow: queues by state (read from each message's metadata), the agents' counters and
link state (scraped from their own /metrics endpoints, the same numbers Prometheus sees), and,
given the previous sample (`--watch`), rates per second."""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..transfer.spool import STATES, Spool
from ..zones.config import GatewayConfig
from .agent import AgentContext
from .supervisor import agents_for

__all__ = ["flow_queues", "gateway_status", "render_status", "scrape_agent"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def flow_queues(spool: Spool, now: float) -> dict[str, dict[str, dict[str, float]]]:
    """{flow: {state: {depth, oldest_age_s}}} from each message's meta.json (unreadable: '?')."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for state in STATES:
        for msg_id in spool.ids(state):
            try:
                flow = spool.read_meta(state, msg_id).flow
                mtime = (spool.entry(state, msg_id)).stat().st_mtime
            except Exception:  # a damaged entry must not break the view
                flow, mtime = "?", now
            q = out.setdefault(flow, {}).setdefault(state, {"depth": 0, "oldest_age_s": 0.0})
            q["depth"] += 1
            q["oldest_age_s"] = round(max(q["oldest_age_s"], now - mtime), 3)
    return out


def scrape_agent(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """An agent's counters and link state from its /metrics: {messages, links}."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own agent
        text = resp.read().decode()
    messages: dict[str, float] = {}
    links: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "zonegate_messages_total":
                key = f"{labels['flow']}/{labels['stage']}/{labels['outcome']}"
                messages[key] = sample.value
            elif sample.name == "zonegate_link_up":
                links.setdefault(labels["flow"], {})["up"] = sample.value
            elif sample.name == "zonegate_link_last_heartbeat_timestamp_seconds":
                links.setdefault(labels["flow"], {})["last_heartbeat"] = sample.value
    return {"messages": messages, "links": links}


def _rates(data: dict[str, Any], previous: dict[str, Any]) -> dict[str, float]:
    """Messages per second per flow/stage/outcome since the previous sample."""
    seconds = data["time"] - previous.get("time", data["time"])
    if seconds <= 0:
        return {}
    rates: dict[str, float] = {}
    for agent, info in data["agents"].items():
        before = previous.get("agents", {}).get(agent, {}).get("messages", {})
        for key, value in info.get("messages", {}).items():
            if key in before and value >= before[key]:
                rates[key] = round((value - before[key]) / seconds, 3)
    return rates


def gateway_status(cfg: GatewayConfig, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gateway now; with `previous` (an earlier result), rates per second as well."""
    data = _gateway_status(cfg)
    data["time"] = time.time()
    data["flow_queues"] = flow_queues(Spool(cfg.spool), data["time"])
    links: dict[str, dict[str, Any]] = {}
    for info in data["agents"].values():
        if info.get("running") and info.get("metrics"):
            try:
                scraped = scrape_agent(info["metrics"])
            except (OSError, ValueError) as e:
                info["scrape_error"] = str(e)
                continue
            info["messages"] = scraped["messages"]
            for flow, link in scraped["links"].items():
                entry = links.setdefault(flow, {})
                if "up" in link:
                    entry["up"] = bool(link["up"])
                if "last_heartbeat" in link:
                    entry["heartbeat_age_s"] = round(
                        max(0.0, data["time"] - link["last_heartbeat"]), 3
                    )
    data["links"] = links
    data["rates"] = _rates(data, previous) if previous is not None else None
    return data


def _gateway_status(cfg: GatewayConfig) -> dict[str, Any]:
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
    if data.get("flow_queues"):
        lines.append("  queues per flow:")
        for flow, states in sorted(data["flow_queues"].items()):
            for state, q in states.items():
                lines.append(
                    f"    {flow:<12} {state:<12} {q['depth']:>6}   {q['oldest_age_s']:>7.1f}s"
                )
    if data.get("links"):
        lines.append("  links:")
        for flow, link in sorted(data["links"].items()):
            state = {True: "up", False: "DOWN"}.get(link.get("up"), "-")  # type: ignore[arg-type]
            age = link.get("heartbeat_age_s")
            beat = f"last heartbeat {age:.1f}s ago" if age is not None else "no heartbeat yet"
            lines.append(f"    {flow:<12} {state:<5} {beat}")
    if data.get("rates") is not None:
        lines.append("  rates (messages/s):")
        for key, rate in sorted(data["rates"].items()):
            lines.append(f"    {key:<36} {rate:>8.2f}")
    return "\n".join(lines)
