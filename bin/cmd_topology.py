"""`zonegate topology check | show | render`: the three-tier network an administrator lives in."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from .common import EXIT_FAIL, EXIT_OK, CliError

#: Fonts Graphviz is told to use; WenQuanYi (Debian fonts-wqy-microhei) carries the Chinese names.
FONTS = "WenQuanYi Micro Hei,Noto Sans CJK SC,sans-serif"


def _load(path: str):  # -> Topology; typed loosely to keep the CLI's imports lazy
    from ..zones.config import ConfigError
    from ..zones.topology import load_topology

    try:
        return load_topology(path)
    except ConfigError as e:
        raise CliError(f"{e}\n  check it with: zonegate topology check {path}") from None


def cmd_check(args: argparse.Namespace) -> int:
    from ..zones.config import ConfigError
    from ..zones.topology import TopologyError, load_topology

    results = []
    for path in args.files:
        try:
            topology = load_topology(path)
        except ConfigError as e:
            errors = e.errors if isinstance(e, TopologyError) else (e,)
            results.append(
                {
                    "file": path,
                    "ok": False,
                    "errors": [{"line": x.line, "key": x.key, "error": x.message} for x in errors],
                }
            )
            if not args.json:
                for x in errors:
                    print(x, file=sys.stderr)
            continue
        results.append(
            {
                "file": path,
                "ok": True,
                "nodes": len(topology.nodes),
                "gateways": len(topology.gateways()),
                "endpoints": len(topology.endpoints()),
                "flows": len(topology.flows),
            }
        )
    ok = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "results": results}, ensure_ascii=False, indent=2))
    else:
        for r in results:
            if r["ok"]:
                print(
                    f"{r['file']}: ok ({r['nodes']} nodes, {r['gateways']} gateways, "
                    f"{r['endpoints']} endpoints, {r['flows']} flows)"
                )
    return EXIT_OK if ok else EXIT_FAIL


def cmd_show(args: argparse.Namespace) -> int:
    from ..zones.topology_view import render_tree

    print(render_tree(_load(args.file)), end="")
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from ..zones.topology_view import to_dot

    topology = _load(args.file)
    dot_text = to_dot(topology).replace("Noto Sans CJK SC,sans-serif", FONTS)
    output = Path(args.output)
    if args.format == "dot":
        output.write_text(dot_text, encoding="utf-8")
        print(f"wrote {output}")
        return EXIT_OK
    dot = shutil.which("dot")
    if dot is None:
        raise CliError("Graphviz `dot` is not installed (Debian: apt-get install graphviz)")
    command = [dot, f"-T{args.format}", "-o", str(output)]
    if args.format == "png":
        command.insert(1, f"-Gdpi={args.dpi}")
    done = subprocess.run(
        command, input=dot_text.encode(), capture_output=True, timeout=120, check=False
    )
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()
        raise CliError(f"dot failed ({done.returncode}): {detail}", EXIT_FAIL)
    print(f"wrote {output}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("topology", help="the three-tier network: check, show, render")
    tsub = t.add_subparsers(dest="topology_command", metavar="ACTION")
    tsub.required = True

    c = tsub.add_parser(
        "check",
        help="validate topology files",
        description="Exit 0 when every file is valid; 1 listing each problem with file, line "
        "and key otherwise.",
    )
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)

    s = tsub.add_parser("show", help="tiers and nodes as a tree, with zones and endpoints")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(func=cmd_show)

    r = tsub.add_parser(
        "render",
        help="draw the network with Graphviz",
        description="Zones as clusters, tiers as columns, uplinks, flows and conference links.",
    )
    r.add_argument("file", metavar="FILE")
    r.add_argument("--format", choices=["dot", "svg", "png"], default="svg")
    r.add_argument("--output", required=True, metavar="OUT")
    r.add_argument("--dpi", type=int, default=96, help="resolution of a PNG (default 96)")
    r.set_defaults(func=cmd_render)
