"""`zonegate config`: configuration tools."""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_FAIL, EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    from ..zones.config import ConfigError, load_gateway_config

    results = []
    for path in args.files:
        try:
            cfg = load_gateway_config(path)
            results.append({"file": path, "ok": True, "gateway": cfg.name, "flows": len(cfg.flows)})
        except ConfigError as e:
            results.append(
                {"file": path, "ok": False, "line": e.line, "key": e.key, "error": e.message}
            )
            if not args.json:
                print(f"{e}", file=sys.stderr)
    ok = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "results": results}, ensure_ascii=False, indent=2))
    else:
        for r in results:
            if r["ok"]:
                print(f"{r['file']}: ok (gateway {r['gateway']}, {r['flows']} flows)")
    return EXIT_OK if ok else EXIT_FAIL


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    cc = csub.add_parser(
        "check",
        help="validate gateway configs",
        description="Exit 0 when every file is valid; 1 naming file, line and key otherwise.",
    )
    cc.add_argument("files", nargs="+", metavar="FILE")
    cc.add_argument("--json", action="store_true")
    cc.set_defaults(func=cmd_config_check)
