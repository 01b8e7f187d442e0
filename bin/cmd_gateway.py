"""`zonegate run | submit | status`: running a gateway and using it."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .common import EXIT_FAIL, EXIT_OK, CliError, emit, load_config


def cmd_run(args: argparse.Namespace) -> int:
    from ..gateways.supervisor import agents_for, run_agent, supervise

    cfg = load_config(args.config)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"%(asctime)s {cfg.name} %(name)s %(levelname)s %(message)s",
    )
    needed = agents_for(cfg)
    if args.agent == "all":
        if not needed:
            raise CliError(f"{args.config}: this gateway has no flows; nothing to run")
        return supervise(Path(args.config), needed)
    if args.agent not in needed:
        raise CliError(
            f"gateway {cfg.name} needs no {args.agent} agent (it runs: {', '.join(needed)})"
        )
    try:
        return run_agent(cfg, args.agent)
    except Exception as e:
        from ..transfer.keys import KeyFileError

        if isinstance(e, KeyFileError | OSError):
            raise CliError(f"{args.agent}: cannot start: {e}", EXIT_FAIL) from None
        raise


def cmd_submit(args: argparse.Namespace) -> int:
    from ..gateways.submit import SubmitError, submit_files

    cfg = load_config(args.config)
    try:
        flow = cfg.flow(args.flow)
    except KeyError:
        names = ", ".join(f.name for f in cfg.outgoing_flows()) or "none"
        raise CliError(
            f"gateway {cfg.name} sends no flow {args.flow!r} (it sends: {names})"
        ) from None
    if flow.sender != cfg.name:
        raise CliError(f"flow {flow.name!r} is received here, not sent; submit on {flow.sender}")
    try:
        placed = submit_files(cfg.outbox, flow.name, [Path(p) for p in args.paths], args.wait)
    except SubmitError as e:
        raise CliError(str(e), EXIT_FAIL) from None
    data = [{"source": str(s), "outbox": str(d)} for s, d in placed]
    emit(args, data, f"submitted {len(placed)} file(s) to flow {flow.name}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from ..gateways.status import gateway_status, render_status

    cfg = load_config(args.config)
    data = None
    while True:
        data = gateway_status(cfg, previous=data)
        if args.json:
            print(json.dumps(data, ensure_ascii=False, indent=2))
        else:
            if args.watch:
                print("\x1b[2J\x1b[H", end="")
            print(render_status(data))
        if not args.watch:
            return EXIT_OK
        time.sleep(args.interval)


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run a gateway's agents", description="Run a gateway.")
    r.add_argument("--config", required=True, metavar="FILE", help="gateway config (YAML)")
    r.add_argument(
        "--agent",
        default="all",
        choices=["all", "ingest", "sender", "receiver", "sftp", "relay"],
        help="run one agent in the foreground (default: all, supervised)",
    )
    r.add_argument("-v", "--verbose", action="store_true", help="log each step")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "submit",
        help="drop files into a flow's outbox",
        description="Copy files (directories recursively) into a flow's outbox, complete "
        "files only (tmp/ then rename into new/), as any system may do by hand.",
    )
    s.add_argument("--config", required=True, metavar="FILE")
    s.add_argument("--flow", required=True)
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a name to free")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="queues and agents of a gateway")
    st.add_argument("--config", required=True, metavar="FILE")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", action="store_true", help="refresh until interrupted")
    st.add_argument("--interval", type=float, default=2.0)
    st.set_defaults(func=cmd_status)
