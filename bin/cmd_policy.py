"""`zonegate policy test`: run a flow's content policy on files, send nothing.

A system owner learns why a file would be refused before dropping it. Exit 0 when every file
is accepted, 1 when any is refused, 2 for a usage or config error (as everywhere).
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from .common import EXIT_FAIL, EXIT_OK, CliError, emit, load_config


def cmd_policy_test(args: argparse.Namespace) -> int:
    from ..transfer.policy import Candidate, check

    config = load_config(args.config)
    try:
        flow = config.flow(args.flow)
    except KeyError:
        names = ", ".join(f.name for f in config.flows) or "none"
        raise CliError(f"{args.config}: no flow {args.flow!r} (flows: {names})") from None
    results = []
    for text in args.paths:
        path = Path(text)
        try:
            info = os.lstat(path)
        except OSError as e:
            raise CliError(f"{path}: {e.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise CliError(f"{path}: not a regular file (links and devices are never accepted)")
        refusal = check(Candidate(path.name, info.st_size, str(path)), flow.policy)
        if refusal is None:
            results.append({"path": text, "verdict": "accepted", "reason": None, "rule": None,
                            "terms": []})  # fmt: skip
        else:
            results.append({"path": text, "verdict": "refused", "reason": refusal.code,
                            "rule": refusal.rule, "terms": list(refusal.terms),
                            "detail": refusal.reason})  # fmt: skip
    lines = []
    for r in results:
        if r["verdict"] == "accepted":
            lines.append(f"{r['path']}: accepted")
        else:
            terms = f" [{', '.join(r['terms'])}]" if r["terms"] else ""
            lines.append(f"{r['path']}: refused {r['reason']} ({r['rule']}){terms}: {r['detail']}")
    emit(args, results, "\n".join(lines))
    return EXIT_FAIL if any(r["verdict"] == "refused" for r in results) else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="content policy tools")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION")
    psub.required = True
    t = psub.add_parser(
        "test",
        help="check files against a flow's content policy without sending anything",
        description="Exit 0: all accepted; 1: any refused; 2: usage or config error.",
    )
    t.add_argument("--config", required=True, metavar="FILE")
    t.add_argument("--flow", required=True)
    t.add_argument("paths", nargs="+", metavar="PATH")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_policy_test)
