"""`zonegate demo`: the two-zone exchange on one machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import EXIT_FAIL, EXIT_OK, CliError


def cmd_demo(args: argparse.Namespace) -> int:
    from ..gateways.demo import DemoError, run_demo

    try:
        summary = run_demo(
            files=[Path(p) for p in args.files] if args.files else None,
            workdir=Path(args.workdir) if args.workdir else None,
            json_output=args.json,
            timeout=args.timeout,
        )
    except DemoError as e:
        raise CliError(str(e), EXIT_FAIL) from None
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    return EXIT_OK if summary["ok"] else EXIT_FAIL


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo",
        help="run the internet -> internal exchange on this machine, no set-up",
        description="Start an internet-side and an internal-side gateway on loopback, send "
        "sample files (or yours) through them and print what arrived, what was refused and why.",
    )
    d.add_argument("--files", nargs="+", metavar="PATH", help="send these files/directories")
    d.add_argument("--workdir", metavar="DIR", help="keep everything in DIR (default: temp dir)")
    d.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    d.add_argument("--timeout", type=float, default=600.0, help="give up after SECONDS")
    d.set_defaults(func=cmd_demo)
