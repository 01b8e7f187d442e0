"""`zonegate audit`: audit log tools."""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_FAIL, EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from ..audit.verify import verify

    results = []
    for path in args.logs:
        r = verify(path)
        results.append(
            {
                "log": path,
                "ok": r.ok,
                "records": r.records,
                "first_bad_line": r.first_bad_line,
                "problem": r.problem,
            }
        )
    ok = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "results": results}, ensure_ascii=False, indent=2))
    else:
        for r in results:
            if r["ok"]:
                print(f"{r['log']}: ok, {r['records']} records, chain intact")
            else:
                print(f"{r['log']}: TAMPERED or damaged: {r['problem']}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAIL


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audit", help="audit log tools")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True
    av = asub.add_parser(
        "verify",
        help="check an audit log's hash chain",
        description="Exit 0 when every log is intact; 1 naming the first bad line otherwise.",
    )
    av.add_argument("logs", nargs="+", metavar="LOG")
    av.add_argument("--json", action="store_true")
    av.set_defaults(func=cmd_audit_verify)
