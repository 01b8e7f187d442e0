"""`zonegate demo`: the bureau's three-zone, three-tier exchange on one machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import EXIT_FAIL, EXIT_OK, CliError

#: the kinds of link (gateways.demo_links.KINDS; not imported here, to keep `--help` quick)
TRANSPORTS = ("zmq", "udp", "ferry", "sftp")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 1e6, got {text!r}")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    from ..gateways.demo import DemoError, run_demo

    try:
        summary = run_demo(
            files=[Path(p) for p in args.files] if args.files else None,
            workdir=Path(args.workdir) if args.workdir else None,
            json_output=args.json,
            timeout=args.timeout,
            transport=args.transport,
            topology=Path(args.topology) if args.topology else None,
        )
    except DemoError as e:
        raise CliError(str(e), e.code) from None
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    return EXIT_OK if summary["ok"] else EXIT_FAIL


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo",
        help="run the bureau's three-zone, three-tier exchange on this machine, no set-up",
        description="Start the municipal bureau's internet, internal and government gateways, "
        "a district bureau's and a judicial office's (each its own process, names and routes "
        "from configs/topology.yaml), send sample files (or yours, on 'import') over four "
        "flows (import, publish after review, report relayed up the tiers, dispatch relayed "
        "down) and print what arrived, what was refused and why, each relayed message's "
        "audit trail hop by hop, whether every audit log verifies, and the metrics. "
        "Exit 0 when every file is accounted for, every log verifies and every relayed "
        "message shows every hop; 1 otherwise; 2 for a usage error.",
    )
    d.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="zmq",
        help="kind of every link: zmq (CurveZMQ, default), udp (one-way, RaptorQ FEC), "
        "ferry (directories), sftp (push to SFTP drop points the demo starts)",
    )
    d.add_argument(
        "--files", nargs="+", metavar="PATH", help="send these files/directories on 'import'"
    )
    d.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep everything in DIR (new or empty; default: a temp dir)",
    )
    d.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    d.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="give up after SECONDS (default 600)",
    )
    d.add_argument(
        "--topology",
        metavar="FILE",
        help="the network to take names and routes from (default: configs/topology.yaml)",
    )
    d.set_defaults(func=cmd_demo)
