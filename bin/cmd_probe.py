"""`zonegate probe`: probe the topology's conference endpoints (SIP OPTIONS, H.323 connect)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_FAIL, EXIT_OK, CliError


def _print_round(results: list, as_json: bool) -> None:  # list[ProbeResult]
    if as_json:
        print(json.dumps([r.as_dict() for r in results], ensure_ascii=False), flush=True)
        return
    for r in results:
        state = "up" if r.up else "DOWN"
        print(
            f"{r.endpoint:<24} {r.node:<24} {r.protocol:<5} {r.address}:{r.port:<6} "
            f"{state:<5} {r.seconds * 1000:8.1f} ms  {r.detail}",
            flush=True,
        )


def cmd_probe(args: argparse.Namespace) -> int:
    from ..gateways.probe import ProbeAgent, ProbeMetrics
    from ..zones.config import ConfigError, _parse_hostport
    from ..zones.topology import load_topology

    try:
        topology = load_topology(args.topology)
    except ConfigError as e:
        raise CliError(f"{e}\n  check it with: zonegate topology check {args.topology}") from None
    endpoints = topology.endpoints()
    if args.endpoint:
        known = {e.name for e in endpoints}
        unknown = [name for name in args.endpoint if name not in known]
        if unknown:
            raise CliError(f"no endpoint {', '.join(unknown)} in {args.topology}")
        endpoints = tuple(e for e in endpoints if e.name in args.endpoint)
    if not endpoints:
        raise CliError(f"{args.topology} has no conference endpoints to probe")
    if args.interval <= 0 or args.timeout <= 0:
        raise CliError("--interval and --timeout must be positive")
    try:
        agent = ProbeAgent(endpoints, args.interval, args.timeout, ProbeMetrics())
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.metrics:
        try:
            address = _parse_hostport(args.metrics, min_port=0)
        except ValueError as e:
            raise CliError(f"--metrics {args.metrics}: {e}") from None
        port = agent.metrics.serve(address)
        host = f"[{address.host}]" if ":" in address.host else address.host
        print(f"metrics on http://{host}:{port}/metrics", file=sys.stderr, flush=True)
    try:
        if args.once:
            results = agent.probe_all()
            _print_round(results, args.json)
            return EXIT_OK if all(r.up for r in results) else EXIT_FAIL

        from ..gateways.agent import stop_on_signals

        stop_on_signals(agent.stop)
        agent.run(lambda results: _print_round(results, args.json))
        return EXIT_OK
    finally:
        agent.close()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="probe conference endpoints (SIP OPTIONS, H.323 TCP connect)",
        description="Probe every conference endpoint of a topology on a schedule and export "
        "up/down, response time and last-seen as Prometheus metrics. With --once, probe each "
        "endpoint once and exit 0 if all answered, 1 otherwise.",
    )
    p.add_argument("--topology", required=True, metavar="FILE")
    p.add_argument("--once", action="store_true", help="one round, then exit")
    p.add_argument("--json", action="store_true", help="one JSON list per round")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between rounds")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    p.add_argument("--endpoint", action="append", metavar="NAME", help="only this endpoint")
    p.set_defaults(func=cmd_probe)
