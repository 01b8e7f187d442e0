"""Views of a topology as text: the tree `zonegate topology show` prints, and Graphviz DOT.

Why text and not pictures here: `zones/` stays pure (no processes, no files), and DOT is the
stable interface to Graphviz; the command line runs `dot` to turn it into SVG or PNG.

The picture: one cluster per zone (the isolated networks), each holding the gateways and
conference endpoints that sit in it; columns by tier, left to right (tier 1 on the left);
solid arrows are uplinks, dashed lines join terminals to their MCU or phone bridge, and thin
grey arrows are the flows that cross between a node's zones.
"""

from __future__ import annotations

from .topology import Node, Topology

__all__ = ["render_tree", "to_dot"]

_ZONE_COLOURS = {
    "internal": ("#fde0dd", "#c51b8a"),
    "government": ("#deebf7", "#3182bd"),
    "internet": ("#e5f5e0", "#31a354"),
}
_DEFAULT_COLOURS = ("#f0f0f0", "#636363")
_ROLE_LABEL = {
    "mcu": "video MCU",
    "video-terminal": "video terminal",
    "phone-bridge": "phone bridge",
    "phone-terminal": "phone terminal",
}
_PROTOCOL_LABEL = {"sip": "SIP", "h323": "H.323"}


def _endpoint_line(node: Node) -> list[str]:
    lines = []
    for e in node.endpoints:
        bridge = f" -> {e.bridge}" if e.bridge else ""
        lines.append(
            f"{e.name}: {_ROLE_LABEL[e.role]}, {_PROTOCOL_LABEL[e.protocol]} "
            f"{e.address}:{e.port} ({e.zone}){bridge}"
        )
    return lines


def render_tree(topology: Topology) -> str:
    """Tiers, then each node under its parent, with zones, gateways and endpoints."""
    out: list[str] = []
    tiers = {tier.number: tier for tier in topology.tiers}

    def show(node: Node, depth: int) -> None:
        pad = "  " * depth
        tier = tiers[node.tier]
        out.append(f"{pad}{node.name}  {node.zh} / {node.en}  [tier {tier.number}, {node.kind}]")
        out.append(f"{pad}  zones: {', '.join(node.zones)}")
        for gateway in node.gateways:
            out.append(f"{pad}  gateway {gateway.name} ({gateway.zone}) {gateway.address}")
        for line in _endpoint_line(node):
            out.append(f"{pad}  endpoint {line}")
        for child in topology.children(node.name):
            show(child, depth + 1)

    out.append(f"topology {topology.path}")
    for tier in topology.tiers:
        count = sum(1 for n in topology.nodes if n.tier == tier.number)
        out.append(f"  tier {tier.number}: {tier.zh} / {tier.en} ({count} nodes)")
    out.append("  zones: " + ", ".join(f"{z.name} ({z.zh}, {z.level})" for z in topology.zones))
    out.append("")
    for node in topology.nodes:
        if topology.parent(node.name) is None:
            show(node, 0)
    if topology.conferences:
        out.append("")
        out.append("conferences:")
        for c in topology.conferences:
            out.append(f"  {c.name} ({c.kind}, bridge {c.bridge}): {', '.join(c.nodes)}")
    if topology.flows:
        out.append("")
        out.append("flows:")
        for f in topology.flows:
            out.append(f"  {f.name}: {f.source} -> {f.destination} at {f.node}")
    return "\n".join(out) + "\n"


def _quote(text: str) -> str:
    """A DOT string; newlines become centred line breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def to_dot(topology: Topology) -> str:
    """The topology as a DOT digraph (UTF-8; Chinese names need a CJK font at render time).

    Why so few edges: with fifty sites, one line per flow hides the tree. So conference
    terminals are written into their site's box and linked to their bridge with one dashed line,
    and only tier 1's flows (import, publish, report, dispatch) are drawn; every flow is listed by
    `zonegate topology show`.
    """
    lines = [
        "digraph topology {",
        '  graph [rankdir=LR, newrank=true, fontname="Noto Sans CJK SC,sans-serif", '
        "fontsize=22, nodesep=0.1, ranksep=0.9, labelloc=t, "
        'label="zonegate: the three-tier network (tier 1 left, tier 3 right)\\n'
        "solid: uplinks, dashed: conference links (purple video, orange telephone), "
        'grey: tier-1 flows"];',
        '  node [shape=box, style="rounded,filled", fontname="Noto Sans CJK SC,sans-serif", '
        'fontsize=12, margin="0.08,0.03"];',
        '  edge [fontname="Noto Sans CJK SC,sans-serif", fontsize=10];',
    ]
    by_tier: dict[int, list[str]] = {}
    for zone in topology.zones:
        fill, line = _ZONE_COLOURS.get(zone.name, _DEFAULT_COLOURS)
        lines.append(f"  subgraph {_quote('cluster_' + zone.name)} {{")
        lines.append(
            f"    label={_quote(f'{zone.zh}  {zone.en} ({zone.name}, {zone.level})')}; "
            f'style="filled,rounded"; fillcolor="{fill}"; color="{line}"; fontsize=18;'
        )
        for node in topology.nodes:
            for gateway in node.gateways:
                if gateway.zone != zone.name:
                    continue
                label = f"{node.zh}\n{node.name}"
                for e in node.endpoints:
                    if e.zone == zone.name and e.bridge is not None:
                        label += f"\n({_ROLE_LABEL[e.role]}, {_PROTOCOL_LABEL[e.protocol]})"
                lines.append(
                    f"    {_quote(gateway.name)} [label={_quote(label)}, "
                    f'fillcolor="white", color="{line}"];'
                )
                by_tier.setdefault(node.tier, []).append(gateway.name)
            for e in node.endpoints:
                if e.zone != zone.name or e.bridge is not None:
                    continue
                label = f"{_ROLE_LABEL[e.role]} {e.name}\n{_PROTOCOL_LABEL[e.protocol]}"
                lines.append(
                    f"    {_quote(e.name)} [label={_quote(label)}, shape=doubleoctagon, "
                    f'fillcolor="#fff7bc"];'
                )
                by_tier.setdefault(node.tier, []).append(e.name)
        lines.append("  }")
    for tier, names in sorted(by_tier.items()):
        members = "; ".join(_quote(n) for n in names)
        lines.append(f"  {{ rank=same; {members}; }}  // tier {tier}")
    for uplink in topology.uplinks:
        colour = _ZONE_COLOURS.get(topology.gateway(uplink.source).zone, _DEFAULT_COLOURS)[1]
        lines.append(
            f"  {_quote(uplink.target)} -> {_quote(uplink.source)} "
            f'[dir=back, color="{colour}", penwidth=1.4];'
        )
    for node in topology.nodes:
        for e in node.endpoints:
            gateway = node.gateway_in(e.zone)
            if gateway is None:
                continue
            if e.bridge is None:
                lines.append(
                    f"  {_quote(gateway.name)} -> {_quote(e.name)} "
                    "[arrowhead=none, color=gray, style=dotted];"
                )
            else:
                colour = "#756bb1" if e.role == "video-terminal" else "#e6550d"
                lines.append(
                    f"  {_quote(e.bridge)} -> {_quote(gateway.name)} "
                    f'[style=dashed, color="{colour}", arrowhead=none, constraint=false];'
                )
    pairs: dict[tuple[str, str], list[str]] = {}
    for flow in topology.flows:
        node = topology.node(flow.node)
        source, destination = node.gateway_in(flow.source), node.gateway_in(flow.destination)
        if source is None or destination is None or node.tier != 1:
            continue
        a, b = sorted((source.name, destination.name))
        arrow = "->" if (a, b) == (source.name, destination.name) else "<-"
        pairs.setdefault((a, b), []).append(f"{arrow} {flow.name}")
    for (a, b), names in pairs.items():
        both = any(n.startswith("->") for n in names) and any(n.startswith("<-") for n in names)
        direction = "both" if both else ("forward" if names[0].startswith("->") else "back")
        lines.append(
            f'  {_quote(a)} -> {_quote(b)} [color="#737373", dir={direction}, '
            f'label={_quote(chr(10).join(names))}, fontcolor="#525252"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"
