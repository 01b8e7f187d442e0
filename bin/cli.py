"""The `zonegate` command: one entry, thin sub-commands over the packages below it.

Exit codes mean the same everywhere: 0 done, 1 the thing checked is bad or the work failed,
2 a usage or configuration error, 3 stopped fail-closed (the audit log could not be written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_FAIL_CLOSED = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(text)


def _load_config(path: str):
    from ..zones.config import ConfigError, load_gateway_config

    try:
        return load_gateway_config(path)
    except ConfigError as e:
        hint = f"fix the config, then check it with: zonegate config check {path}"
        raise CliError(f"{e}\n  {hint}") from None


# -- config check -------------------------------------------------------------------------
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


# -- keys generate ------------------------------------------------------------------------
def cmd_keys_generate(args: argparse.Namespace) -> int:
    from ..transfer.keys import KeyFileError, generate_gateway_keys

    try:
        files = generate_gateway_keys(Path(args.dir), args.name)
    except KeyFileError as e:
        raise CliError(str(e), EXIT_FAIL) from None
    data = {k: str(v) for k, v in vars(files).items()}
    _emit(args, data, "\n".join(f"{k}: {v}" for k, v in data.items()))
    return EXIT_OK


# -- audit verify -------------------------------------------------------------------------
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


# -- run ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from ..gateways.supervisor import agents_for, run_agent, supervise

    cfg = _load_config(args.config)
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


# -- submit -------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    from ..gateways.submit import SubmitError, submit_files

    cfg = _load_config(args.config)
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
    _emit(args, data, f"submitted {len(placed)} file(s) to flow {flow.name}")
    return EXIT_OK


# -- status -------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from ..gateways.status import gateway_status, render_status

    cfg = _load_config(args.config)
    while True:
        data = gateway_status(cfg)
        if args.json:
            print(json.dumps(data, ensure_ascii=False, indent=2))
        else:
            if args.watch:
                print("\x1b[2J\x1b[H", end="")
            print(render_status(data))
        if not args.watch:
            return EXIT_OK
        time.sleep(args.interval)


# -- demo ---------------------------------------------------------------------------------
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


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zonegate",
        description="Move approved files through one-way, audited, encrypted channels between "
        "isolated network zones.",
        epilog="Exit codes: 0 ok, 1 check failed or work failed, 2 usage or config error, "
        "3 stopped fail-closed (audit log unwritable). Start with: zonegate demo",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

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

    r = sub.add_parser("run", help="run a gateway's agents", description="Run a gateway.")
    r.add_argument("--config", required=True, metavar="FILE", help="gateway config (YAML)")
    r.add_argument(
        "--agent",
        default="all",
        choices=["all", "ingest", "sender", "receiver"],
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

    k = sub.add_parser("keys", help="key management")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    kg = ksub.add_parser(
        "generate",
        help="generate a gateway's signing and encryption key pairs (private files 0600)",
    )
    kg.add_argument("--name", required=True, help="gateway name, e.g. internet-gw")
    kg.add_argument("--dir", required=True, metavar="DIR", help="where to write the key files")
    kg.add_argument("--json", action="store_true")
    kg.set_defaults(func=cmd_keys_generate)

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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"zonegate: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
